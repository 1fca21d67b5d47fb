// The build pipeline: target resolution, optimization passes, assignment of every node to a backend (the
// GPU first where the engine targets one, the CPU for what it cannot run, reported), lower precision,
// and tactic selection by timing on the device, with a timing cache.
#include "builder/build_plan.h"

#include <unistd.h>

#include <chrono>
#include <iostream>
#include <sstream>

#include "backends/backend.h"
#include "builder/timing_cache.h"
#include "ir/op_registry.h"
#include "passes/passes.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace kiln::builder {

std::string cpu_device_name() {
#if defined(__x86_64__)
  const char* arch = "x86_64";
#elif defined(__aarch64__)
  const char* arch = "aarch64";
#else
  const char* arch = "unknown";
#endif
  return std::string(arch) + " CPU";
}

namespace {

int opset_of(const ir::Model& m, const ir::Node& n) {
  auto it = m.opsets.find(n.domain);
  return it == m.opsets.end() ? 0 : it->second;
}

// The GPU backend for a target of "auto" or "cuda"; null (and the CPU) for "auto" without a GPU.
Result<std::unique_ptr<backends::Backend>> gpu_backend_for(const std::string& device) {
  if (device == "cpu") return std::unique_ptr<backends::Backend>();
  if (device != "auto" && device != "cuda")
    return InvalidArgument("unknown device '" + device + "': use auto, cuda or cpu");
#ifdef KILN_HAVE_CUDA
  auto be = backends::make_cuda_backend();
  if (be.ok()) return std::move(be).value();
  if (device == "auto") return std::unique_ptr<backends::Backend>();
  return Unsupported("--device cuda: " + be.status().message());
#else
  if (device == "auto") return std::unique_ptr<backends::Backend>();
  return Unsupported("--device cuda: this Kiln was built without the CUDA backend (no CUDA toolkit at build time)");
#endif
}

// "[=====>      ] 120/300 layers timed", redrawn in place on a terminal.
class Progress {
 public:
  Progress(int total, bool enabled) : total_(total), enabled_(enabled && isatty(2)) {}
  void update(int done) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30, filled = total_ ? width * done / total_ : width;
    std::cerr << "\r[" << std::string(filled, '=') << (filled < width ? ">" : "")
              << std::string(width - filled - (filled < width ? 1 : 0), ' ') << "] " << done << "/" << total_
              << " layers timed" << (done == total_ ? "\n" : "") << std::flush;
  }

 private:
  int total_;
  bool enabled_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace

Result<engine::Plan> build_plan(const ir::Model& model, const engine::BuildSettings& settings, Logger& logger) {
  KILN_ASSIGN_OR_RETURN(std::unique_ptr<backends::Backend> gpu, gpu_backend_for(settings.device));
  std::unique_ptr<backends::Backend> cpu = backends::make_cpu_backend();
  for (const auto& [name, p] : settings.layer_precisions)
    if (p != "fp32" && p != "fp16" && p != "bf16")
      return InvalidArgument("layer precision for '" + name + "': '" + p + "' is not fp32, fp16 or bf16");
  if (settings.fp16 && settings.bf16) return InvalidArgument("--fp16 and --bf16 exclude each other: choose one");

  engine::Plan plan;
  plan.kiln_version = KILN_VERSION;
  plan.target_backend = gpu ? gpu->name() : "cpu";
  plan.target_device = gpu ? gpu->device_name() : cpu_device_name();
  plan.settings = settings;
  plan.settings.device = plan.target_backend;
  plan.settings.strict_gpu = false;
  plan.settings.timing_cache.clear();
  plan.model = model;
  ir::Model& m = plan.model;

  KILN_RETURN_IF_ERROR(passes::apply_input_shapes(m, settings.input_shapes));
  if (settings.opt_level > 0) {
    int folded = 0, merged = 0, noops = 0, removed = 0;
    KILN_RETURN_IF_ERROR(passes::fold_constants_to_fixpoint(m, &folded));
    std::set<std::string> pinned;  // pinned layers keep their identity (their pin is honored)
    for (const auto& [name, p] : settings.layer_precisions) pinned.insert(name);
    KILN_RETURN_IF_ERROR(passes::eliminate_common_subexpressions(m, &merged, pinned));  // folded constants compare too
    KILN_RETURN_IF_ERROR(passes::remove_noops(m, &noops));
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    logger.log(Severity::kInfo, "optimizer: folded " + std::to_string(folded) + " constant nodes, merged " +
                                    std::to_string(merged) + " common subexpressions, bypassed " +
                                    std::to_string(noops) + " no-ops, removed " + std::to_string(removed) +
                                    " dead nodes");
  }
  KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
  // Fusions into the optimizer's kiln.* ops, for GPU engines: each saves a kernel launch and a round trip of
  // the intermediate through memory there (the CPU reference gains nothing from them).
  if (gpu && settings.opt_level >= 2) {
    int gelus = 0, matmuls = 0, convs = 0, softmaxes = 0, attentions = 0, removed = 0;
    KILN_RETURN_IF_ERROR(passes::recognize_gelu(m, &gelus));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    KILN_RETURN_IF_ERROR(passes::fuse_matmul_bias(m, &matmuls));  // after recognize_gelu: absorbs a tanh GELU
    KILN_RETURN_IF_ERROR(passes::fuse_conv_activation(m, &convs));
    KILN_RETURN_IF_ERROR(passes::fuse_masked_softmax(m, &softmaxes));
    KILN_RETURN_IF_ERROR(passes::fuse_attention(m, &attentions));  // after fuse_masked_softmax: absorbs its node
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    logger.log(Severity::kInfo, "optimizer: " + std::to_string(gelus) + " GELU recognized, " +
                                    std::to_string(matmuls) + " MatMul + bias and " + std::to_string(convs) +
                                    " Conv + activation fused, " + std::to_string(softmaxes) +
                                    " masked softmax, " + std::to_string(attentions) + " attention");
  }
  // A fused layer ("conv1 + add1 + relu1") answers to the names of the layers it was made from, and carries
  // their pins.
  auto parts_of = [](const std::string& name) {
    std::vector<std::string> parts;
    for (size_t at = 0;;) {
      const size_t plus = name.find(" + ", at);
      parts.push_back(name.substr(at, plus == std::string::npos ? std::string::npos : plus - at));
      if (plus == std::string::npos) return parts;
      at = plus + 3;
    }
  };
  auto layer_named = [&](const std::string& name) -> const ir::Node* {
    for (const auto& n : m.graph.nodes)
      if (n.name == name) return &n;
    for (const auto& n : m.graph.nodes)
      for (const auto& part : parts_of(n.name))
        if (part == name) return &n;
    return nullptr;
  };
  for (const auto& [name, p] : settings.layer_precisions)
    if (layer_named(name) == nullptr)
      return InvalidArgument("--layer-precision: no layer named '" + name + "' in the optimized graph");

  // Lower precision first (it changes the types the backends are asked about): the nodes the GPU runs,
  // whose layers take half types, unless pinned to fp32; nodes pinned to fp16/bf16 always.
  std::set<std::string> lowered;
  auto pin_of = [&](const ir::Node& n) -> std::string {
    for (const auto& part : parts_of(n.name))
      if (auto it = settings.layer_precisions.find(part); it != settings.layer_precisions.end()) return it->second;
    return "";
  };
  for (const DType low : {DType::kFloat16, DType::kBFloat16}) {
    const std::string tag = low == DType::kFloat16 ? "fp16" : "bf16";
    const bool global = low == DType::kFloat16 ? settings.fp16 : settings.bf16;
    bool any_pin = false;
    for (const auto& [name, p] : settings.layer_precisions) any_pin = any_pin || p == tag;
    if (!global && !any_pin) continue;
    if (!gpu) {
      if (any_pin) return Unsupported("--layer-precision " + tag + ": the CPU target computes in the model's types");
      logger.log(Severity::kWarning, "--" + tag + ": the engine targets the CPU, which keeps the model's float32");
      continue;
    }
    std::set<std::string> pinned_here;
    auto lower = [&](const ir::Node& n) {
      const std::string pin = pin_of(n);
      if (pin == "fp32" || (pin.empty() && !global) || (!pin.empty() && pin != tag)) return false;
      if (!gpu->supports(n, m.graph, opset_of(m, n), nullptr) || !gpu->can_lower_precision(n)) return false;
      if (pin == tag) pinned_here.insert(n.name);
      return true;
    };
    KILN_RETURN_IF_ERROR(passes::lower_precision(m, low, lower, &lowered));
    for (const auto& [name, p] : settings.layer_precisions)
      if (p == tag && !lowered.count(layer_named(name)->name))
        return Unsupported("--layer-precision " + name + ":" + tag + " cannot be honored: the GPU has no " + tag +
                           " kernel for that layer");
  }
  if (!lowered.empty()) {
    int removed = 0;
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // float32 weights now unused
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
  }
  // Channels-last convolutions where cuDNN's tensor-core kernels want them (half types, channels multiples of
  // 8), decided once the precisions are: the transposes between consecutive convs cancel.
  if (gpu && settings.opt_level >= 2) {
    int converted = 0, removed = 0;
    auto eligible = [&](const ir::Node& n) {
      const std::string pin = pin_of(n);
      return passes::conv_suits_channels_last(m.graph, n) && (pin.empty() || lowered.count(n.name));
    };
    KILN_RETURN_IF_ERROR(passes::convert_conv_layout(m, eligible, &converted));
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    if (converted > 0)
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(converted) + " convolutions made channels-last");
  }

  // Assign every node: the GPU where it has a layer for the node, the CPU (which runs every op) otherwise.
  std::vector<std::string> fallbacks;
  for (const ir::Node& n : m.graph.nodes) {
    const int opset = opset_of(m, n);
    engine::LayerInfo layer;
    layer.name = n.name;
    layer.op_type = (n.domain.empty() ? "" : n.domain + ".") + n.op_type;
    std::string why_not;
    if (gpu && gpu->supports(n, m.graph, opset, &why_not)) {
      layer.backend = gpu->name();
      layer.tactic = gpu->tactics(n, m.graph, opset).front().name;
    } else {
      if (!cpu->supports(n, m.graph, opset, &why_not))
        return Unsupported(n.describe() + ": no backend runs it (" + why_not + ")");
      layer.backend = cpu->name();
      layer.tactic = cpu->tactics(n, m.graph, opset).front().name;
      if (gpu) {
        layer.fallback_reason = why_not;
        fallbacks.push_back(n.describe() + ": " + why_not);
      }
    }
    const std::string pin = pin_of(n);
    if (lowered.count(n.name)) layer.precision = settings.fp16 || pin == "fp16" ? "fp16" : "bf16";
    else if (layer.backend == "cuda" && settings.tf32 && pin != "fp32") layer.precision = "tf32";
    else layer.precision = "fp32";
    if (pin == "fp32" && layer.backend == "cpu" && gpu)
      logger.log(Severity::kInfo, n.describe() + ": pinned to fp32, runs on the CPU");
    plan.layers.push_back(std::move(layer));
  }
  if (gpu) {
    std::ostringstream report;
    report << (m.graph.nodes.size() - fallbacks.size()) << " of " << m.graph.nodes.size() << " layers run on "
           << gpu->name();
    if (!fallbacks.empty()) {
      report << "; " << fallbacks.size() << " fall back to the CPU:";
      for (const auto& f : fallbacks) report << "\n  " << f;
    }
    if (!fallbacks.empty() && settings.strict_gpu)
      return Unsupported("--strict-gpu: " + std::to_string(fallbacks.size()) + " layers cannot run on the GPU:" +
                         report.str().substr(report.str().find(':') + 1));
    logger.log(fallbacks.empty() ? Severity::kInfo : Severity::kWarning, "build: " + report.str());
  }

  // Tactic selection: time every candidate of a GPU layer that has more than one, at the build shapes.
  if (gpu) {
    TimingCache cache;
    if (!settings.timing_cache.empty()) {
      KILN_ASSIGN_OR_RETURN(cache, TimingCache::load(settings.timing_cache));
    }
    std::vector<std::pair<size_t, std::vector<std::string>>> to_time;  // layer, its candidate tactics
    for (size_t i = 0; i < m.graph.nodes.size(); ++i) {
      if (plan.layers[i].backend != gpu->name()) continue;
      std::vector<std::string> names;
      for (const auto& t : gpu->tactics(m.graph.nodes[i], m.graph, opset_of(m, m.graph.nodes[i]))) names.push_back(t.name);
      if (names.size() > 1) to_time.emplace_back(i, std::move(names));
    }
    Progress progress(static_cast<int>(to_time.size()), to_time.size() > 8);
    int timed = 0, cached = 0;
    for (size_t k = 0; k < to_time.size(); ++k) {
      const auto& [index, names] = to_time[k];
      const ir::Node& n = m.graph.nodes[index];
      engine::LayerInfo& layer = plan.layers[index];
      const int opset = opset_of(m, n);
      const bool tf32 = layer.precision == "tf32";
      const std::string key = problem_key(n, m.graph, opset, tf32, gpu->device_name());
      if (const backends::TacticTime* hit = cache.find(key)) {
        layer.tactic = hit->tactic;
        layer.time_ms = hit->ms;
        ++cached;
        progress.update(static_cast<int>(k + 1));
        continue;
      }
      auto times = gpu->time_tactics(n, m.graph, opset, tf32, names);
      if (!times.ok()) {
        logger.log(Severity::kInfo, n.describe() + ": tactics not timed (" + times.status().message() + ")");
      } else {
        const backends::TacticTime* best = nullptr;
        for (const auto& t : *times)
          if (t.ms >= 0 && (best == nullptr || t.ms < best->ms)) best = &t;  // strict <: ties keep the earlier
        if (best == nullptr)
          return Internal(n.describe() + ": none of its " + std::to_string(names.size()) +
                          " tactics ran at the build shapes (first: " + times->front().error + ")");
        layer.tactic = best->tactic;
        layer.time_ms = best->ms;
        cache.put(key, *best);
        ++timed;
      }
      progress.update(static_cast<int>(k + 1));
    }
    if (!to_time.empty())
      logger.log(Severity::kInfo, "tactics: " + std::to_string(timed) + " layers timed, " + std::to_string(cached) +
                                      " from the timing cache");
    if (!settings.timing_cache.empty()) KILN_RETURN_IF_ERROR(cache.save(settings.timing_cache));
  }
  return plan;
}

}  // namespace kiln::builder
