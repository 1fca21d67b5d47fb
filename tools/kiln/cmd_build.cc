// kiln build: ONNX model -> optimized engine file.
#include <fstream>
#include <iostream>

#include "kiln/commands.h"
#include "kiln/common.h"

namespace kiln::tools {

namespace {
struct BuildOptions {
  std::string model, output, shapes, device = "auto";
  int opt_level = 3;
  bool verbose = false;
};

int run_build(const BuildOptions& o) {
  Logger logger(o.verbose ? Severity::kInfo : Severity::kWarning);
  BuilderConfig config;
  config.set_device(o.device);
  config.set_opt_level(o.opt_level);
  if (!o.shapes.empty()) {
    auto shapes = parse_shapes(o.shapes);
    if (!shapes.ok()) return report(shapes.status());
    for (const auto& [name, s] : *shapes) config.set_input_shape(name, s);
  }
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  if (Status st = parser.parse_from_file(o.model); !st.ok()) {
    std::cerr << "error: cannot import '" << o.model << "':\n";
    for (const auto& e : parser.errors()) std::cerr << "  " << e.to_string() << "\n";
    return 1;
  }
  Builder builder(logger);
  auto plan = builder.build_serialized_network(network, config);
  if (!plan.ok()) return report(plan.status());
  // Write to a temporary name first so a failed write never leaves a half engine under the real name.
  std::string tmp = o.output + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(reinterpret_cast<const char*>(plan->data()), static_cast<std::streamsize>(plan->size()));
    if (!out) {
      std::remove(tmp.c_str());
      return report(IoError("cannot write '" + o.output + "'"));
    }
  }
  if (std::rename(tmp.c_str(), o.output.c_str()) != 0) return report(IoError("cannot write '" + o.output + "'"));
  std::cout << "built " << o.output << " (" << plan->size() << " bytes, " << network.num_layers()
            << " nodes imported)" << std::endl;
  return 0;
}
}  // namespace

void add_build_command(CLI::App& app, Action* run) {
  auto o = std::make_shared<BuildOptions>();
  CLI::App* cmd = app.add_subcommand("build", "Build an optimized engine (.kiln) from an ONNX model");
  cmd->add_option("model", o->model, "The ONNX model")->required();
  cmd->add_option("-o,--output", o->output, "Where to write the engine")->required();
  cmd->add_option("--shapes", o->shapes, "Fixed input shapes: name:1x3x224x224,...");
  cmd->add_option("--device", o->device, "auto (GPU where present, else CPU) or cpu")->capture_default_str();
  cmd->add_option("--opt-level", o->opt_level, "Optimization level 0-3")->capture_default_str()->check(CLI::Range(0, 3));
  cmd->add_flag("-v,--verbose", o->verbose, "Print what the optimizer did");
  cmd->callback([o, run] { *run = [o] { return run_build(*o); }; });
}

}  // namespace kiln::tools
