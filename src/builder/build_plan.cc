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
#include "builder/choose_tactics.h"
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

// A profile's graphs as a context runs them: specialized to its opt, min and max shapes and values.
struct ProfileGraphs {
  ir::Model opt;
  std::vector<ir::Model> ends;  // min, max
};

Result<ProfileGraphs> specialize_profile(const ir::Model& m, const engine::Profile& profile, size_t k) {
  std::map<std::string, Shape> shapes[3];  // min, opt, max
  std::map<std::string, std::vector<int64_t>> values[3];
  for (const auto& [name, r] : profile) {
    const Shape* at[3] = {&r.min, &r.opt, &r.max};
    for (int i = 0; i < 3; ++i) (r.values ? values[i] : shapes[i])[name] = *at[i];
  }
  const std::string which = "optimization profile " + std::to_string(k);
  const char* names[3] = {" at its min shapes", " at its opt shapes", " at its max shapes"};
  ProfileGraphs graphs;
  for (int i : {1, 0, 2}) {
    auto at = specialize_to_shapes(m, shapes[i], values[i]);
    if (!at.ok()) return at.status().with_context(which + names[i]);
    if (i == 1) graphs.opt = std::move(at).value();
    else graphs.ends.push_back(std::move(at).value());
  }
  return graphs;
}

// A node the GPU cannot run in the profile-generic graph (a Reshape whose target is a shape-tensor input has
// no known output there) but can in every specialization that still has it, as each context's program is:
// its first tactic there, else empty.
std::string gpu_tactic_when_specialized(backends::Backend& gpu, const std::vector<ProfileGraphs>& profiles,
                                        const std::string& name) {
  std::string tactic;
  bool present = false;
  for (const ProfileGraphs& p : profiles)
    for (const ir::Model* m : {&p.opt, &p.ends[0], &p.ends[1]}) {
      const ir::Node* n = m->graph.node_named(name);
      if (n == nullptr) continue;  // folded away there: nothing runs
      const int opset = m->opset_of(*n);
      if (!gpu.supports(*n, m->graph, opset, nullptr)) return "";
      if (!present) tactic = gpu.tactics(*n, m->graph, opset).front().name;
      present = true;
    }
  return tactic;
}

bool has_shape_tensors(const std::vector<engine::Profile>& profiles) {
  for (const auto& p : profiles)
    for (const auto& [name, r] : p)
      if (r.values) return true;
  return false;
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
      return gpu->supports(n, model.graph, model.opset_of(n), nullptr) && gpu->can_lower_precision(n);
    };
  std::set<std::string> lowered;
  KILN_RETURN_IF_ERROR(optimize_graph(m, options, logger, &lowered));
  auto pin_of = [&](const ir::Node& n) { return layer_pin(n, settings.layer_precisions); };

  // Assign every node: the GPU where it has a layer for the node, the CPU (which runs every op) otherwise.
  // With shape-tensor inputs, a node is judged also in the profiles' specialized graphs (made only then).
  std::vector<ProfileGraphs> specialized;
  bool made = false;
  auto specialize_all = [&]() -> Status {
    for (size_t k = 0; !made && k < settings.profiles.size(); ++k) {
      KILN_ASSIGN_OR_RETURN(ProfileGraphs graphs, specialize_profile(m, settings.profiles[k], k));
      specialized.push_back(std::move(graphs));
    }
    made = true;
    return OkStatus();
  };
  const bool shape_tensors = has_shape_tensors(settings.profiles);
  std::vector<std::string> fallbacks;
  for (const ir::Node& n : m.graph.nodes) {
    const int opset = m.opset_of(n);
    engine::LayerInfo layer;
    layer.name = n.name;
    layer.op_type = (n.domain.empty() ? "" : n.domain + ".") + n.op_type;
    std::string why_not, specialized_tactic;
    const bool here = gpu && gpu->supports(n, m.graph, opset, &why_not);
    if (gpu && !here && shape_tensors) {
      KILN_RETURN_IF_ERROR(specialize_all());
      specialized_tactic = gpu_tactic_when_specialized(*gpu, specialized, n.name);
    }
    if (here) {
      layer.backend = gpu->name();
      layer.tactic = gpu->tactics(n, m.graph, opset).front().name;
    } else if (!specialized_tactic.empty()) {
      layer.backend = gpu->name();
      layer.tactic = specialized_tactic;
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

  // Tactic selection: every candidate of a GPU layer that has more than one is timed (choose_tactics.cc):
  // at the build shapes, or, with optimization profiles, at each profile's opt shapes (valid at its min and
  // max), the engine's graph keeping the model's dynamic dims.
  if (gpu) {
    TimingCache cache;
    if (!settings.timing_cache.empty()) {
      KILN_ASSIGN_OR_RETURN(cache, TimingCache::load(settings.timing_cache));
    }
    std::map<std::string, bool> gpu_layers;  // node name -> TF32 allowed
    for (size_t i = 0; i < m.graph.nodes.size(); ++i)
      if (plan.layers[i].backend == gpu->name()) gpu_layers[m.graph.nodes[i].name] = plan.layers[i].precision == "tf32";
    auto apply = [&](const std::map<std::string, TacticChoice>& chosen) {
      for (size_t i = 0; i < m.graph.nodes.size(); ++i)
        if (auto c = chosen.find(m.graph.nodes[i].name); c != chosen.end()) {
          plan.layers[i].tactic = c->second.tactic;
          plan.layers[i].time_ms = c->second.ms;
        }
    };
    if (settings.profiles.empty()) {
      KILN_ASSIGN_OR_RETURN(auto chosen, choose_tactics(*gpu, m, {}, gpu_layers, cache, logger));
      apply(chosen);
    }
    specialized.clear();  // the graph changed since (pointwise kernels attached)
    for (size_t k = 0; k < settings.profiles.size(); ++k) {
      const std::string which = "optimization profile " + std::to_string(k);
      KILN_ASSIGN_OR_RETURN(ProfileGraphs graphs, specialize_profile(m, settings.profiles[k], k));
      logger.log(Severity::kInfo, "tactics of " + which + ", timed at its opt shapes");
      auto chosen = choose_tactics(*gpu, graphs.opt, graphs.ends, gpu_layers, cache, logger);
      if (!chosen.ok()) return chosen.status().with_context(which);
      engine::ProfilePlan pp;
      for (const auto& [name, c] : *chosen) pp.tactics[name] = c.tactic;
      if (k == 0) apply(*chosen);  // what kiln inspect shows; each context runs its own profile's
      plan.profile_plans.push_back(std::move(pp));
    }
    if (!settings.timing_cache.empty()) KILN_RETURN_IF_ERROR(cache.save(settings.timing_cache));
  }
  return plan;
}

}  // namespace kiln::builder
