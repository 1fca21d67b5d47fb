// The build pipeline: target resolution, optimization passes (optimize_graph.cc, lower precision included),
// assignment of every node to a backend (the GPU first where the engine targets one, the CPU for what it
// cannot run, reported), and tactic selection by timing on the device, with a timing cache.
#include "builder/build_plan.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

#include "backends/backend.h"
#include "builder/optimize_graph.h"
#include "builder/timing_cache.h"
#include "ir/op_registry.h"
#include "passes/passes.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/pointwise_codegen.h"
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

#ifdef KILN_HAVE_CUDA
// Each kiln.Pointwise the GPU runs gets its kernel now, compiled by NVRTC into the node's `cubin` and
// `kernel` attributes, so that the engine carries it and the runtime needs no compiler. The kernel depends
// on the program, the dtypes and the output rank only (its name hashes them): nodes alike share one
// compilation.
Status attach_pointwise_kernels(ir::Graph& g, const std::vector<engine::LayerInfo>& layers) {
  std::map<std::string, cuda::CompiledPointwise> compiled;  // by kernel name
  std::string arch;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    ir::Node& n = g.nodes[i];
    if (layers[i].backend != "cuda" || n.domain != "kiln" || n.op_type != "Pointwise") continue;
    std::vector<DType> dtypes;
    size_t rank = 0;
    for (const std::string& in : n.inputs) {
      auto init = g.initializers.find(in);
      const ir::TypeInfo* t = init == g.initializers.end() ? g.type_of(in) : nullptr;
      if (init == g.initializers.end() && (t == nullptr || !t->has_shape))
        return Internal(n.describe() + ": the type of input '" + in + "' is not known");
      dtypes.push_back(t ? t->dtype : init->second.dtype());
      rank = std::max(rank, t ? t->dims.size() : init->second.shape().size());
    }
    KILN_ASSIGN_OR_RETURN(cuda::PointwiseKernelSpec spec, cuda::pointwise_kernel_spec(n, dtypes, rank));
    auto it = compiled.find(cuda::pointwise_kernel_name(spec));
    if (it == compiled.end()) {
      if (arch.empty()) {
        KILN_ASSIGN_OR_RETURN(arch, cuda::current_device_arch());
      }
      KILN_ASSIGN_OR_RETURN(cuda::CompiledPointwise k, cuda::compile_pointwise(spec, arch, n.describe()));
      it = compiled.emplace(k.kernel, std::move(k)).first;
    }
    ir::Attribute kernel, cubin;
    kernel.type = cubin.type = ir::Attribute::Type::kString;
    kernel.s = it->second.kernel;
    cubin.s = it->second.cubin;
    n.attributes["kernel"] = std::move(kernel);
    n.attributes["cubin"] = std::move(cubin);
  }
  return OkStatus();
}
#endif

Status check_precisions(const engine::BuildSettings& settings) {
  for (const auto& [name, p] : settings.layer_precisions)
    if (p != "fp32" && p != "fp16" && p != "bf16")
      return InvalidArgument("layer precision for '" + name + "': '" + p + "' is not fp32, fp16 or bf16");
  if (settings.fp16 && settings.bf16) return InvalidArgument("--fp16 and --bf16 exclude each other: choose one");
  return OkStatus();
}

// The optimizer's options for a build with these settings (its can_run_in_half is the caller's).
OptimizeOptions optimize_options(const engine::BuildSettings& settings, bool for_gpu) {
  OptimizeOptions options;
  options.for_gpu = for_gpu;
  options.opt_level = settings.opt_level;
  options.precision = settings.fp16 ? Precision::kFloat16 : settings.bf16 ? Precision::kBFloat16 : Precision::kFloat32;
  options.input_shapes = settings.input_shapes;
  options.layer_precisions = settings.layer_precisions;
  return options;
}

}  // namespace

Result<ir::Model> plan_graph(ir::Model model, const engine::BuildSettings& settings, Logger& logger) {
  const bool for_gpu = settings.device == "cuda";
  if (!for_gpu && settings.device != "cpu")
    return InvalidArgument("planning a graph without a device needs device cpu or cuda, not '" + settings.device + "'");
  KILN_RETURN_IF_ERROR(check_precisions(settings));
  OptimizeOptions options = optimize_options(settings, for_gpu);
#ifdef KILN_HAVE_CUDA
  if (for_gpu) options.can_run_in_half = backends::cuda_runs_in_half;
#else
  if (for_gpu) return Unsupported("this Kiln was built without the CUDA backend");
#endif
  KILN_RETURN_IF_ERROR(optimize_graph(model, options, logger));
  return model;
}

Result<engine::Plan> build_plan(const ir::Model& model, const engine::BuildSettings& settings, Logger& logger) {
  KILN_ASSIGN_OR_RETURN(std::unique_ptr<backends::Backend> gpu, gpu_backend_for(settings.device));
  std::unique_ptr<backends::Backend> cpu = backends::make_cpu_backend();
  KILN_RETURN_IF_ERROR(check_precisions(settings));

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

  // The graph: everything the optimizer decides without timing on the device (optimize_graph.cc).
  OptimizeOptions options = optimize_options(settings, gpu != nullptr);
  if (gpu)
    options.can_run_in_half = [&gpu](const ir::Model& model, const ir::Node& n) {
      return gpu->supports(n, model.graph, opset_of(model, n), nullptr) && gpu->can_lower_precision(n);
    };
  std::set<std::string> lowered;
  KILN_RETURN_IF_ERROR(optimize_graph(m, options, logger, &lowered));
  auto pin_of = [&](const ir::Node& n) { return layer_pin(n, settings.layer_precisions); };

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
#ifdef KILN_HAVE_CUDA
    KILN_RETURN_IF_ERROR(attach_pointwise_kernels(m.graph, plan.layers));
#endif
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
    const auto tactics_start = std::chrono::steady_clock::now();
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
      const auto timing_start = std::chrono::steady_clock::now();
      auto times = gpu->time_tactics(n, m.graph, opset, tf32, names);
      const double timing_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - timing_start).count();
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
        // Where build time goes (kiln build --verbose): the slowest tactic to set up, and all of them.
        const backends::TacticTime* slowest = &times->front();
        double setup = 0;
        for (const auto& t : *times) {
          setup += std::max(t.setup_ms, 0.0);
          if (t.setup_ms > slowest->setup_ms) slowest = &t;
        }
        char line[200];
        std::snprintf(line, sizeof(line), ": %s at %.4f ms; %zu tactics timed in %.0f ms, set up in %.0f ms (slowest %s, %.0f ms)",
                      best->tactic.c_str(), best->ms, times->size(), timing_ms, setup, slowest->tactic.c_str(),
                      slowest->setup_ms);
        logger.log(Severity::kInfo, "tactics of " + n.name + line);
      }
      progress.update(static_cast<int>(k + 1));
    }
    if (!to_time.empty())
      logger.log(Severity::kInfo, "tactics: " + std::to_string(timed) + " layers timed, " + std::to_string(cached) +
                                      " from the timing cache, in " +
                                      std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                                                   tactics_start).count()) + " s");
    if (!settings.timing_cache.empty()) KILN_RETURN_IF_ERROR(cache.save(settings.timing_cache));
  }
  return plan;
}

}  // namespace kiln::builder
