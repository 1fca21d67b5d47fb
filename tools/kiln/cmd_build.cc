// kiln build: ONNX model -> optimized engine file.
#include <fstream>
#include <iostream>

#include "kiln/commands.h"
#include "kiln/common.h"

namespace kiln::tools {

namespace {
struct BuildOptions {
  std::string model, output;
  BuildFlags flags;
  bool verbose = false;
};

int run_build(const BuildOptions& o) {
  Logger logger(o.verbose ? Severity::kInfo : Severity::kWarning);
  auto config_or = make_builder_config(o.flags);
  if (!config_or.ok()) return report(config_or.status());
  const BuilderConfig& config = *config_or;
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
  add_build_flags(cmd, &o->flags);
  cmd->add_flag("-v,--verbose", o->verbose, "Print what the optimizer did");
  cmd->callback([o, run] { *run = [o] { return run_build(*o); }; });
}

}  // namespace kiln::tools
