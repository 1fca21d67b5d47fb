// kiln run: runs an engine (or an ONNX model) on inputs from .npy / .pb files.
#include <cmath>
#include <filesystem>
#include <iostream>

#include "core/cast.h"
#include "kiln/commands.h"
#include "kiln/common.h"
#include "kiln/npy.h"
#include "onnx/tensor_proto.h"

namespace kiln::tools {

namespace {
struct RunOptions {
  std::string model, output_dir = ".";
  BuildFlags flags;
  bool cuda_graph = false;
  int optimization_profile = 0;
  std::vector<std::string> inputs;  // NAME=FILE
};

std::string ends(const std::string& s) { return s.substr(s.find_last_of('.') == std::string::npos ? s.size() : s.find_last_of('.')); }

Result<Tensor> read_input(const std::string& file) {
  if (ends(file) == ".npy") return read_npy(file);
  return onnx_io::read_tensor_file(file);
}

// "float32[1,10] min -3.2 max 7.9 mean 0.41" (first values for small tensors).
std::string summarize(const Tensor& t) {
  std::string s = t.description();
  if (t.dtype() == DType::kString || t.numel() == 0) return s;
  auto d = cast_tensor(t, DType::kFloat64);
  if (!d.ok()) return s;
  double lo = INFINITY, hi = -INFINITY, sum = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    double v = d->data<double>()[i];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, " min %.6g max %.6g mean %.6g", lo, hi, sum / t.numel());
  s += buf;
  if (t.numel() <= 10) {
    s += " values [";
    for (int64_t i = 0; i < t.numel(); ++i) {
      std::snprintf(buf, sizeof buf, "%s%.6g", i ? ", " : "", d->data<double>()[i]);
      s += buf;
    }
    s += "]";
  }
  return s;
}

std::string safe_file_name(std::string name) {
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') c = '_';
  return name;
}

int run_run(const RunOptions& o) {
  Logger logger(Severity::kWarning);
  auto config = make_builder_config(o.flags, /*shapes_run_in_profile=*/true);
  if (!config.ok()) return report(config.status());
  std::map<std::string, Tensor> feeds;
  for (const auto& spec : o.inputs) {
    size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0) return report(InvalidArgument("--input '" + spec + "' is not NAME=FILE"));
    auto t = read_input(spec.substr(eq + 1));
    if (!t.ok()) return report(t.status());
    feeds[spec.substr(0, eq)] = std::move(t).value();
  }
  auto engine = load_or_build(o.model, *config, logger);
  if (!engine.ok()) return report(engine.status());
  auto context = (*engine)->create_execution_context();
  context->set_cuda_graph(o.cuda_graph);
  if (Status st = context->set_optimization_profile(o.optimization_profile); !st.ok()) return report(st);
  if ((*engine)->num_optimization_profiles() > 0 && !o.flags.shapes.empty()) {
    // The inputs' files give the shapes; --shapes, where given, must agree with them and lie in the profile.
    auto shapes = parse_shapes(o.flags.shapes);
    if (!shapes.ok()) return report(shapes.status());
    for (const auto& [name, shape] : *shapes) {
      if (Status st = context->set_input_shape(name, shape); !st.ok()) return report(st);
      if (auto f = feeds.find(name); f != feeds.end() && f->second.shape() != shape)
        return report(InvalidArgument("input '" + name + "': --shapes gives " + shape_to_string(shape) +
                                      ", its file holds " + shape_to_string(f->second.shape())));
    }
  }
  auto outputs = context->execute(feeds);
  if (!outputs.ok()) return report(outputs.status());
  std::error_code ec;
  std::filesystem::create_directories(o.output_dir, ec);
  if (ec) return report(IoError("cannot create output folder '" + o.output_dir + "': " + ec.message()));
  for (int i = 0; i < (*engine)->num_io_tensors(); ++i) {
    std::string name = (*engine)->io_tensor_name(i);
    if ((*engine)->tensor_io_mode(name) != TensorIOMode::kOutput) continue;
    const Tensor& t = outputs->at(name);
    std::string base = o.output_dir + "/" + safe_file_name(name);
    if (Status st = onnx_io::write_tensor_file(t, name, base + ".pb"); !st.ok()) return report(st);
    std::string npy_note;
    if (Status st = write_npy(t, base + ".npy"); !st.ok()) npy_note = " (no .npy: " + st.message() + ")";
    std::cout << name << ": " << summarize(t) << " -> " << base << ".pb" << npy_note << std::endl;
  }
  return 0;
}
}  // namespace

void add_run_command(CLI::App& app, Action* run) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Run an engine or ONNX model on inputs from .npy or .pb files");
  cmd->add_option("model", o->model, "A .kiln engine or an ONNX model")->required();
  cmd->add_option("-i,--input", o->inputs, "NAME=FILE (.npy or TensorProto .pb), once per input");
  cmd->add_option("--output-dir", o->output_dir, "Where to write each output as NAME.pb and NAME.npy")->capture_default_str();
  add_build_flags(cmd, &o->flags);  // when MODEL is ONNX
  cmd->add_flag("--cuda-graph", o->cuda_graph, "Capture the GPU work into a CUDA graph and replay it");
  cmd->add_option("--optimization-profile", o->optimization_profile,
                  "The optimization profile to run in (the inputs' shapes must lie in it)")->capture_default_str();
  cmd->callback([o, run] { *run = [o] { return run_run(*o); }; });
}

}  // namespace kiln::tools
