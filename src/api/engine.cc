#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include "builder/build_plan.h"
#include "builder/graph_dump.h"
#include "engine/plan.h"
#include "engine/profiles.h"
#include "kiln/kiln.h"
#include "onnx/tensor_proto.h"
#include "passes/passes.h"
#include "runtime/executor.h"
#include "runtime/lru_cache.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/cuda_program.h"
#endif

namespace kiln {

struct Engine::State {
  runtime::PreparedGraph graph;
  std::vector<std::string> io_names;  // inputs, then outputs
#ifdef KILN_HAVE_CUDA
  // GPU engines: where each node runs, and the weights in device memory, shared by every context. One
  // placement per optimization profile when the plan has profile plans (each profile's tactics over the
  // layers' own), else one for every profile.
  std::vector<std::map<std::string, cuda::NodePlacement>> placements;
  std::shared_ptr<const cuda::DeviceWeights> weights;
  const std::map<std::string, cuda::NodePlacement>& placement(int profile) const {
    return placements[profile >= 0 && static_cast<size_t>(profile) < placements.size() ? profile : 0];
  }
#endif
};

namespace {
constexpr int kDefaultShapeCacheCapacity = 8;
}  // namespace

// A context's GPU programs, one per (input shapes, CUDA graph flag, stream), in a bounded LRU cache, and the
// device memory they share. Invariants:
//  - Every program's activation arena and workspace are `arena` and `workspace` (lent through
//    ProgramOptions::lend_memory): the context runs one program at a time, so they never overlap.
//  - At most one program may have work in flight: `program`, the last one run (execute() waits for its run,
//    enqueue() does not). Before another program runs on a different stream, or before `program` is
//    destroyed, it is waited for.
//  - The cached programs hold the memory's addresses (in their layers' tensors and captured CUDA graphs):
//    the memory is only reallocated (grown) after the cache is emptied.
// The workspace a context of an engine with profiles takes at once: cuBLASLt's limit (matmul.cc asks its
// heuristic for algorithms within 32 MiB), so that no shape of the profile makes it grow and empty the cache.
constexpr size_t kProfileWorkspaceFloor = size_t{32} << 20;

struct ExecutionContext::DeviceState {
  int capacity = kDefaultShapeCacheCapacity;  // the cache's, kept here too for a build without CUDA
#ifdef KILN_HAVE_CUDA
  struct ProgramKey {
    std::map<std::string, Shape> shapes;
    std::map<std::string, std::vector<int64_t>> values;  // shape-tensor inputs' values, constants in the program
    bool cuda_graph = false;
    void* stream = nullptr;  // the caller's stream (enqueue), or null: the program's own
    bool operator<(const ProgramKey& o) const {
      return std::tie(shapes, values, cuda_graph, stream) < std::tie(o.shapes, o.values, o.cuda_graph, o.stream);
    }
  };
  // Declared before the cache, so destroyed after every program that uses them.
  std::unique_ptr<cuda::DeviceAllocation> arena, workspace;
  runtime::LruCache<ProgramKey, std::unique_ptr<cuda::CudaProgram>> programs{kDefaultShapeCacheCapacity};
  cuda::CudaProgram* program = nullptr;  // the program last run (in `programs`), or null
  void* program_stream = nullptr;        // its key's stream
  std::map<std::string, Value> last_inputs;

  // The program's own stream is waited for; a caller's stream (enqueue) is the caller's to keep alive and
  // may already be destroyed (cudaFree of the arena then waits for the device anyway).
  ~DeviceState() {
    if (program_stream == nullptr) (void)wait();
  }

  Status wait() { return program ? program->synchronize() : OkStatus(); }

  // Empties the cache, once the program in flight (if any) is done.
  Status clear() {
    KILN_RETURN_IF_ERROR(wait());
    program = nullptr;
    programs.clear();
    return OkStatus();
  }

  // Destroys programs the cache let go, waiting first when the program in flight is among them.
  Status drop(std::vector<std::pair<ProgramKey, std::unique_ptr<cuda::CudaProgram>>> evicted) {
    for (const auto& entry : evicted)
      if (entry.second.get() == program) {
        KILN_RETURN_IF_ERROR(wait());
        program = nullptr;
      }
    return OkStatus();
  }

  // ProgramOptions::lend_memory: the shared arena and workspace, grown (after emptying the cache) when a
  // new program needs more. Growing empties the cache, so each is made large enough not to grow again: the
  // arena at least `floors.arena` bytes (the profile's max shapes' need, when the engine measured it), the
  // workspace at least `floors.workspace` (an engine with profiles: what cuBLASLt may ask for, its largest
  // user; per-shape needs differ from shape to shape, not only with size), and either at least twice its
  // old size when it does grow.
  struct Floors {
    size_t arena = 0, workspace = 0;
  };
  Result<cuda::LentMemory> lend(size_t arena_bytes, size_t workspace_bytes, Floors floors) {
    const bool grow_arena = arena_bytes > 0 && (!arena || arena->bytes() < arena_bytes);
    const bool grow_workspace = workspace_bytes > 0 && (!workspace || workspace->bytes() < workspace_bytes);
    if (grow_arena || grow_workspace) KILN_RETURN_IF_ERROR(clear());
    auto grown = [](const std::unique_ptr<cuda::DeviceAllocation>& now, size_t need, size_t floor) {
      return std::max({need, floor, now ? 2 * now->bytes() : 0});
    };
    if (grow_arena) {
      const size_t bytes = grown(arena, arena_bytes, floors.arena);
      arena.reset();  // freed before the larger one is made
      KILN_ASSIGN_OR_RETURN(arena, cuda::DeviceAllocation::allocate(bytes, "the execution context's activation arena"));
    }
    if (grow_workspace) {
      const size_t bytes = grown(workspace, workspace_bytes, floors.workspace);
      workspace.reset();
      KILN_ASSIGN_OR_RETURN(workspace, cuda::DeviceAllocation::allocate(bytes, "the execution context's layer workspace"));
    }
    return cuda::LentMemory{arena ? arena->data() : nullptr, workspace ? workspace->data() : nullptr};
  }
#endif
};

Engine::~Engine() = default;

Result<std::shared_ptr<Engine>> Engine::create(engine::Plan plan) {
  std::shared_ptr<Engine> e(new Engine());
  e->plan_ = std::make_unique<engine::Plan>(std::move(plan));
  KILN_ASSIGN_OR_RETURN(runtime::PreparedGraph pg,
                        runtime::PreparedGraph::prepare(e->plan_->model.graph, e->plan_->model.opsets));
  e->state_ = std::make_unique<State>();
  e->state_->graph = std::move(pg);
  for (const auto& in : e->plan_->model.graph.inputs) e->state_->io_names.push_back(in.name);
  for (const auto& out : e->plan_->model.graph.outputs) e->state_->io_names.push_back(out.name);
  if (e->plan_->target_backend == "cuda") {
#ifdef KILN_HAVE_CUDA
    auto gpu = backends::make_cuda_backend();
    if (!gpu.ok())
      return Unsupported("the engine targets " + e->plan_->target_device + ", and this machine has no usable GPU (" +
                         gpu.status().message() + "): rebuild it with --device cpu");
    if ((*gpu)->device_name() != e->plan_->target_device)
      return InvalidEngine("the engine was built for " + e->plan_->target_device + ", this GPU is " +
                           (*gpu)->device_name() + ": rebuild it here with kiln build");
    const ir::Graph& g = e->plan_->model.graph;
    std::set<std::string> device_weights;
    std::map<std::string, cuda::NodePlacement> base;
    for (size_t i = 0; i < g.nodes.size() && i < e->plan_->layers.size(); ++i) {
      const engine::LayerInfo& l = e->plan_->layers[i];
      base[g.nodes[i].name] = cuda::NodePlacement{l.backend, l.tactic, l.precision == "tf32"};
      if (l.backend == "cuda")
        for (const auto& in : g.nodes[i].inputs)
          if (g.initializers.count(in)) device_weights.insert(in);
    }
    const std::vector<engine::ProfilePlan>& profile_plans = e->plan_->profile_plans;
    if (!profile_plans.empty() && profile_plans.size() != e->plan_->settings.profiles.size())
      return InvalidEngine("the engine has " + std::to_string(e->plan_->settings.profiles.size()) +
                           " optimization profiles and tactics for " + std::to_string(profile_plans.size()) +
                           ": rebuild it with kiln build");
    for (size_t k = 0; k < profile_plans.size(); ++k) {
      std::map<std::string, cuda::NodePlacement> placement = base;
      for (const auto& [node, tactic] : profile_plans[k].tactics) {
        auto it = placement.find(node);
        if (it == placement.end())
          return InvalidEngine("optimization profile " + std::to_string(k) + " gives tactic '" + tactic +
                               "' to node '" + node + "', which is not a layer of the engine: rebuild it with kiln build");
        it->second.tactic = tactic;
      }
      e->state_->placements.push_back(std::move(placement));
    }
    if (e->state_->placements.empty()) e->state_->placements.push_back(std::move(base));
    KILN_ASSIGN_OR_RETURN(e->state_->weights, cuda::DeviceWeights::upload(g, device_weights));
#else
    return Unsupported("the engine targets " + e->plan_->target_device +
                       ", and this Kiln was built without the CUDA backend: rebuild the engine with --device cpu");
#endif
  }
  return e;
}

int Engine::num_io_tensors() const { return static_cast<int>(state_->io_names.size()); }

std::string Engine::io_tensor_name(int index) const {
  return index >= 0 && index < num_io_tensors() ? state_->io_names[index] : "";
}

namespace {
const ir::ValueInfo* find_io(const ir::Graph& g, const std::string& name, TensorIOMode* mode) {
  for (const auto& v : g.inputs)
    if (v.name == name) {
      if (mode) *mode = TensorIOMode::kInput;
      return &v;
    }
  for (const auto& v : g.outputs)
    if (v.name == name) {
      if (mode) *mode = TensorIOMode::kOutput;
      return &v;
    }
  return nullptr;
}
}  // namespace

TensorIOMode Engine::tensor_io_mode(const std::string& name) const {
  TensorIOMode mode = TensorIOMode::kNone;
  find_io(plan_->model.graph, name, &mode);
  return mode;
}

DType Engine::tensor_dtype(const std::string& name) const {
  const ir::ValueInfo* v = find_io(plan_->model.graph, name, nullptr);
  if (v == nullptr) return DType::kUndefined;
  if (v->type.kind != ir::TypeInfo::Kind::kUnknown) return v->type.dtype;
  const ir::TypeInfo* t = plan_->model.graph.type_of(name);
  return t ? t->dtype : DType::kUndefined;
}

Shape Engine::tensor_shape(const std::string& name) const {
  const ir::ValueInfo* v = find_io(plan_->model.graph, name, nullptr);
  if (v == nullptr) return {};
  const ir::TypeInfo* t = plan_->model.graph.type_of(name);  // inferred, else declared
  if (t == nullptr || !t->has_shape) t = &v->type;
  if (!t->has_shape) return {};
  Shape s;
  for (const auto& d : t->dims) s.push_back(d.known() ? d.value : -1);
  return s;
}

int Engine::num_optimization_profiles() const { return static_cast<int>(plan_->settings.profiles.size()); }

namespace {

// Optimization profile `profile`'s entry for the engine input `name`: null where the profile gives it none.
Result<const ProfileShapes*> profile_entry(const engine::Plan& plan, const std::string& name, int profile) {
  TensorIOMode mode = TensorIOMode::kNone;
  if (find_io(plan.model.graph, name, &mode) == nullptr || mode != TensorIOMode::kInput)
    return NotFound("'" + name + "' is not an input of the engine");
  const int n = static_cast<int>(plan.settings.profiles.size());
  if (profile < 0 || profile >= n)
    return InvalidArgument("optimization profile " + std::to_string(profile) + " is out of range: the engine has " +
                           std::to_string(n) + " profile" + (n == 1 ? "" : "s"));
  const engine::Profile& p = plan.settings.profiles[profile];
  auto it = p.find(name);
  return it == p.end() ? nullptr : &it->second;
}

}  // namespace

Result<ProfileShapes> Engine::get_profile_shape(const std::string& name, int profile) const {
  KILN_ASSIGN_OR_RETURN(const ProfileShapes* entry, profile_entry(*plan_, name, profile));
  if (entry != nullptr && !entry->values) return *entry;
  const ir::TypeInfo& type = find_io(plan_->model.graph, name, nullptr)->type;  // an input: profile_entry checked
  if (!type.is_static())
    return NotFound("input '" + name + "' (" + type.to_string() + ") has no range in optimization profile " +
                    std::to_string(profile));
  const Shape s = type.static_shape();
  return ProfileShapes{s, s, s};
}

Result<ProfileShapes> Engine::get_profile_shape_values(const std::string& name, int profile) const {
  KILN_ASSIGN_OR_RETURN(const ProfileShapes* entry, profile_entry(*plan_, name, profile));
  if (entry != nullptr && entry->values) return *entry;
  return NotFound("input '" + name + "' has no values in optimization profile " + std::to_string(profile) +
                  " (it is not a shape tensor there)");
}

Result<std::vector<uint8_t>> Engine::serialize() const {
  KILN_ASSIGN_OR_RETURN(std::string bytes, engine::serialize_plan(*plan_));
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

std::unique_ptr<ExecutionContext> Engine::create_execution_context() {
  return std::make_unique<ExecutionContext>(shared_from_this());
}

std::string Engine::inspect() const {
  const ir::Graph& g = plan_->model.graph;
  std::ostringstream os;
  os << "Kiln engine (built by Kiln " << plan_->kiln_version << ")\n";
  os << "target: " << plan_->target_backend << " (" << plan_->target_device << "), opt level "
     << plan_->settings.opt_level << "\n\n";
  auto type_text = [&](const ir::ValueInfo& v) {
    const ir::TypeInfo* t = v.type.kind != ir::TypeInfo::Kind::kUnknown ? &v.type : g.type_of(v.name);
    return t ? t->to_string() : std::string("unknown");
  };
  os << "inputs:\n";
  for (const auto& v : g.inputs) os << "  " << v.name << ": " << type_text(v) << "\n";
  os << "outputs:\n";
  for (const auto& v : g.outputs) os << "  " << v.name << ": " << type_text(v) << "\n";
  const auto& profiles = plan_->settings.profiles;
  if (!profiles.empty()) os << "optimization profiles (" << profiles.size() << "):\n";
  for (size_t k = 0; k < profiles.size(); ++k)
    for (const auto& [name, r] : profiles[k])
      os << "  profile " << k << ": " << name << (r.values ? " values" : "") << " min " << shape_to_string(r.min) << " opt "
         << shape_to_string(r.opt) << " max " << shape_to_string(r.max) << "\n";
  // A GPU engine's choices per profile (the layers below show profile 0's kernels).
  for (size_t k = 0; k < plan_->profile_plans.size(); ++k) {
    const engine::ProfilePlan& p = plan_->profile_plans[k];
    const std::map<std::string, std::string>& first = plan_->profile_plans[0].tactics;
    size_t differ = 0;
    for (const auto& [node, tactic] : p.tactics)
      if (auto f = first.find(node); f != first.end() && f->second != tactic) ++differ;
    os << "  profile " << k << " plan: " << p.tactics.size() << " layers' kernels chosen at its opt shapes";
    if (k > 0) os << " (" << differ << " differ from profile 0's)";
    os << ", activation memory at its max shapes " << p.max_activation_bytes << " bytes\n";
  }
  os << "\nlayers (" << plan_->layers.size() << "):\n";
  for (size_t i = 0; i < plan_->layers.size(); ++i) {
    const engine::LayerInfo& l = plan_->layers[i];
    os << "  #" << i << " " << l.name << " [" << l.op_type << "] backend=" << l.backend << " kernel=" << l.tactic;
    if (!l.precision.empty() && l.backend != "cpu") os << " precision=" << l.precision;
    if (l.time_ms >= 0) os << " time=" << l.time_ms << "ms";
    if (!l.fallback_reason.empty()) os << " (not on the GPU: " << l.fallback_reason << ")";
    if (i < g.nodes.size()) {  // what the layer makes, as the build inferred it
      os << " ->";
      for (const auto& o : g.nodes[i].outputs) {
        const ir::TypeInfo* t = o.empty() ? nullptr : g.type_of(o);
        os << " " << (t ? t->to_string() : std::string("unknown"));
      }
    }
    os << "\n";
  }
  size_t weight_bytes = 0;
  for (const auto& [name, t] : g.initializers) weight_bytes += t.nbytes();
  // Activation memory: the peak of live intermediate tensors (a dead tensor's memory is reused), where
  // shapes are known statically; the GPU arena of a context comes close to it.
  std::map<std::string, size_t> last_use;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const auto& in : g.nodes[i].inputs) last_use[in] = i;
  for (const auto& o : g.outputs) last_use[o.name] = g.nodes.size();
  int64_t live = 0, peak = 0, unknown = 0;
  std::map<std::string, int64_t> live_bytes;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    for (const auto& o : g.nodes[i].outputs) {
      const ir::TypeInfo* t = g.type_of(o);
      if (o.empty()) continue;
      if (!t || !t->is_static()) {
        ++unknown;
        continue;
      }
      live_bytes[o] = shape_numel(t->static_shape()) * static_cast<int64_t>(dtype_size(t->dtype));
      live += live_bytes[o];
    }
    peak = std::max(peak, live);
    for (const auto& in : g.nodes[i].inputs)
      if (auto it = live_bytes.find(in); it != live_bytes.end() && last_use[in] == i) {
        live -= it->second;
        live_bytes.erase(it);
      }
  }
  os << "\nmemory:\n  weights: " << weight_bytes << " bytes in " << g.initializers.size() << " tensors\n";
  os << "  activations: " << peak << " bytes at peak (live intermediate tensors";
  if (unknown) os << "; " << unknown << " more with shapes known only at run time";
  os << ")\n";
  return os.str();
}

// ---- OptimizationProfile ----

Status OptimizationProfile::set_shape(const std::string& input, Shape min, Shape opt, Shape max) {
  ProfileShapes range{std::move(min), std::move(opt), std::move(max)};
  KILN_RETURN_IF_ERROR(engine::check_profile_range(input, range).with_context("optimization profile"));
  shapes_[input] = std::move(range);
  return OkStatus();
}

Status OptimizationProfile::set_shape_values(const std::string& input, std::vector<int64_t> min,
                                             std::vector<int64_t> opt, std::vector<int64_t> max) {
  ProfileShapes range{std::move(min), std::move(opt), std::move(max), /*values=*/true};
  KILN_RETURN_IF_ERROR(engine::check_profile_range(input, range).with_context("optimization profile"));
  shapes_[input] = std::move(range);
  return OkStatus();
}

// ---- ExecutionContext ----

ExecutionContext::ExecutionContext(std::shared_ptr<Engine> engine)
    : engine_(std::move(engine)), device_(std::make_unique<DeviceState>()) {}
ExecutionContext::~ExecutionContext() = default;

namespace {
// Checks a shape against an input's declared type: rank and every known dimension.
Status check_input_shape(const ir::ValueInfo& in, const Shape& shape) {
  const ir::TypeInfo& t = in.type;
  if (!t.has_shape) return OkStatus();
  bool ok = t.dims.size() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i)
    if (shape[i] < 0 || (t.dims[i].known() && t.dims[i].value != shape[i])) ok = false;
  if (!ok)
    return InvalidArgument("input '" + in.name + "': shape " + shape_to_string(shape) +
                           " does not match the engine's " + t.to_string());
  return OkStatus();
}

// The context's profile's check of an input shape (none for an engine without profiles).
Status check_in_profile(const engine::Plan& plan, int profile, const std::string& name, const Shape& shape) {
  if (plan.settings.profiles.empty()) return OkStatus();
  return engine::check_shape_in_profile(name, shape, plan.settings.profiles[profile], profile);
}

// The context's profile's entry of a shape-tensor input, or null (not one in this profile).
const ProfileShapes* values_range(const engine::Plan& plan, int profile, const std::string& name) {
  if (plan.settings.profiles.empty()) return nullptr;
  const engine::Profile& p = plan.settings.profiles[profile];
  auto it = p.find(name);
  return it != p.end() && it->second.values ? &it->second : nullptr;
}

// Where input `name` is a shape tensor in the profile: its values, read from `t` and checked against the
// profile's range, into (*values)[name]. Nothing for another input.
Status read_shape_values(const engine::Plan& plan, int profile, const std::string& name, const Tensor& t,
                         std::map<std::string, std::vector<int64_t>>* values) {
  if (values_range(plan, profile, name) == nullptr) return OkStatus();
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> v, engine::shape_tensor_values(name, t));
  KILN_RETURN_IF_ERROR(engine::check_values_in_profile(name, v, plan.settings.profiles[profile], profile));
  (*values)[name] = std::move(v);
  return OkStatus();
}
}  // namespace

Status ExecutionContext::set_optimization_profile(int profile) {
  const int n = engine_->num_optimization_profiles();
  if (profile < 0 || profile >= std::max(n, 1))
    return InvalidArgument("optimization profile " + std::to_string(profile) + " is out of range: the engine has " +
                           (n == 0 ? std::string("no profiles (only profile 0)")
                                   : std::to_string(n) + " profile" + (n == 1 ? "" : "s") + " (0 to " +
                                         std::to_string(n - 1) + ")"));
  if (profile != profile_) {
    // The cached programs were planned with the old profile's tactics and memory.
#ifdef KILN_HAVE_CUDA
    KILN_RETURN_IF_ERROR(device_->clear());
#endif
    profile_ = profile;
  }
  return OkStatus();
}

Status ExecutionContext::set_input_shape(const std::string& name, const Shape& shape) {
  TensorIOMode mode = TensorIOMode::kNone;
  const ir::ValueInfo* v = find_io(engine_->plan_->model.graph, name, &mode);
  if (v == nullptr || mode != TensorIOMode::kInput) return NotFound("'" + name + "' is not an input of the engine");
  KILN_RETURN_IF_ERROR(check_input_shape(*v, shape));
  KILN_RETURN_IF_ERROR(check_in_profile(*engine_->plan_, profile_, name, shape));
  input_shapes_[name] = shape;
  return OkStatus();
}

Status ExecutionContext::set_input_values(const std::string& name, std::vector<int64_t> values) {
  TensorIOMode mode = TensorIOMode::kNone;
  if (find_io(engine_->plan_->model.graph, name, &mode) == nullptr || mode != TensorIOMode::kInput)
    return NotFound("'" + name + "' is not an input of the engine");
  if (values_range(*engine_->plan_, profile_, name) == nullptr)
    return InvalidArgument("input '" + name + "' is not a shape tensor: optimization profile " +
                           std::to_string(profile_) + " gives it no values (set_shape_values)");
  KILN_RETURN_IF_ERROR(
      engine::check_values_in_profile(name, values, engine_->plan_->settings.profiles[profile_], profile_));
  input_values_[name] = std::move(values);
  return OkStatus();
}

Status ExecutionContext::set_tensor_address(const std::string& name, void* data) {
  if (engine_->tensor_io_mode(name) == TensorIOMode::kNone)
    return NotFound("'" + name + "' is not an input or output of the engine");
  if (data == nullptr) return InvalidArgument("tensor '" + name + "': address is null");
  addresses_[name] = data;
  // A newly bound buffer is what the output's allocator is offered next, not the memory it gave before.
  if (auto a = allocators_.find(name); a != allocators_.end()) a->second.memory = nullptr;
  return OkStatus();
}

namespace {
// What execute() asks an output allocator for: enough for any vector load (TensorRT asks for 256 on the GPU).
constexpr size_t kOutputAlignment = 64;

// An input's shape for a run on bound buffers: as set, else its static shape.
Result<Shape> run_shape(const ir::ValueInfo& in, const std::map<std::string, Shape>& set) {
  if (auto s = set.find(in.name); s != set.end()) return s->second;
  if (in.type.is_static()) return in.type.static_shape();
  return InvalidArgument("input '" + in.name + "' has dynamic shape " + in.type.to_string() +
                         ": call set_input_shape first");
}

Status data_dependent(const std::string& name, const std::string& inferred) {
  return Unsupported("output '" + name + "' has a data-dependent shape: set an output allocator "
                     "(set_output_allocator); for these input shapes shape inference gives " + inferred);
}

// Copies an output's data to memory of at least t.nbytes() bytes.
void copy_out(const Tensor& t, void* to) {
  if (t.nbytes() > 0) std::memcpy(to, t.raw_data(), t.nbytes());
}
}  // namespace

Status ExecutionContext::set_output_allocator(const std::string& name, OutputAllocator* allocator) {
  if (engine_->tensor_io_mode(name) != TensorIOMode::kOutput)
    return NotFound("'" + name + "' is not an output of the engine");
  if (allocator == nullptr) allocators_.erase(name);
  else if (allocators_[name].allocator != allocator) allocators_[name] = AllocatedOutput{allocator, nullptr};
  return OkStatus();
}

Status ExecutionContext::predict_output_shapes(const std::map<std::string, Shape>& input_shapes,
                                               const std::map<std::string, std::vector<int64_t>>& values) {
  if (predicted_.valid && predicted_.for_inputs == input_shapes && predicted_.for_values == values) return OkStatus();
  predicted_ = PredictedShapes{};
  // Shape inference of a copy of the engine's graph (its tensors share their data) with the inputs' dims
  // fixed. Values inference does not know keep the types the build gave them, which hold for every input
  // shape. Shape arithmetic (Shape -> Gather -> Concat -> Reshape) needs folding too: only when plain
  // inference leaves an output open.
  ir::Model model = engine_->plan_->model;
  KILN_RETURN_IF_ERROR(passes::apply_input_shapes(model, input_shapes));
  KILN_RETURN_IF_ERROR(passes::apply_input_values(model, values));
  auto collect = [&]() {
    bool all_fixed = true;
    for (const auto& out : model.graph.outputs) {
      PredictedShape& p = predicted_.outputs[out.name];
      const ir::TypeInfo* t = model.graph.type_of(out.name);
      p.fixed = t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor && t->is_static();
      p.shape = p.fixed ? t->static_shape() : Shape{};
      p.inferred = t ? t->to_string() : std::string("no shape");
      all_fixed = all_fixed && p.fixed;
    }
    return all_fixed;
  };
  KILN_RETURN_IF_ERROR(passes::infer_shapes(model).with_context("output shapes"));
  if (!collect()) {
    KILN_RETURN_IF_ERROR(passes::fold_constants_to_fixpoint(model).with_context("output shapes"));
    collect();
  }
  predicted_.for_inputs = input_shapes;
  predicted_.for_values = values;
  predicted_.valid = true;
  return OkStatus();
}

Result<Shape> ExecutionContext::output_shape(const std::string& name) {
  if (engine_->tensor_io_mode(name) != TensorIOMode::kOutput)
    return NotFound("'" + name + "' is not an output of the engine");
  std::map<std::string, Shape> shapes;
  for (const auto& in : engine_->plan_->model.graph.inputs) {
    KILN_ASSIGN_OR_RETURN(shapes[in.name], run_shape(in, input_shapes_));
    KILN_RETURN_IF_ERROR(check_in_profile(*engine_->plan_, profile_, in.name, shapes[in.name]));
  }
  // Shape tensors' values, where set_input_values gave them, fix what they decide.
  std::map<std::string, std::vector<int64_t>> values;
  for (const auto& [name, v] : input_values_)
    if (values_range(*engine_->plan_, profile_, name) != nullptr) values[name] = v;
  KILN_RETURN_IF_ERROR(predict_output_shapes(shapes, values));
  const PredictedShape& p = predicted_.outputs.at(name);
  if (!p.fixed) return data_dependent(name, p.inferred);
  return p.shape;
}

Status ExecutionContext::execute() {
  const ir::Graph& g = engine_->plan_->model.graph;
  std::map<std::string, Tensor> inputs;
  std::map<std::string, Shape> shapes;
  std::map<std::string, std::vector<int64_t>> values;  // shape tensors' values: they fix the outputs' shapes
  for (const auto& in : g.inputs) {
    auto addr = addresses_.find(in.name);
    if (addr == addresses_.end()) continue;  // missing inputs are reported by execute(map)
    KILN_ASSIGN_OR_RETURN(shapes[in.name], run_shape(in, input_shapes_));
    inputs[in.name] = Tensor::view(in.type.dtype, shapes[in.name], addr->second);
    KILN_RETURN_IF_ERROR(read_shape_values(*engine_->plan_, profile_, in.name, inputs[in.name], &values));
  }
  // Before running: every bound output without an allocator must have a shape the input shapes fix, the
  // size its buffer was made for.
  bool predicted = false;
  for (const auto& out : g.outputs) {
    if (!addresses_.count(out.name) || allocators_.count(out.name)) continue;
    if (!predicted) KILN_RETURN_IF_ERROR(predict_output_shapes(shapes, values));
    predicted = true;
    const PredictedShape& p = predicted_.outputs.at(out.name);
    if (!p.fixed) return data_dependent(out.name, p.inferred);
  }
  KILN_ASSIGN_OR_RETURN(auto outputs, execute(inputs));
  // Where each output goes, all decided (allocators asked) before anything is written.
  std::vector<std::pair<const Tensor*, void*>> copies;
  std::vector<std::pair<std::string, OutputAllocator*>> notify;
  for (const auto& out : g.outputs) {
    auto addr = addresses_.find(out.name);
    auto alloc = allocators_.find(out.name);
    if (addr == addresses_.end() && alloc == allocators_.end()) continue;
    const Tensor& t = outputs[out.name];
    if (t.dtype() == DType::kString) return Unsupported("output '" + out.name + "' holds strings: use output()");
    if (alloc == allocators_.end()) {
      const Shape& want = predicted_.outputs.at(out.name).shape;
      if (t.shape() != want)
        return Internal("output '" + out.name + "' has shape " + shape_to_string(t.shape()) +
                        ", not the " + shape_to_string(want) + " shape inference gave its buffer: not written");
      copies.emplace_back(&t, addr->second);
      continue;
    }
    AllocatedOutput& a = alloc->second;
    void* current = a.memory ? a.memory : addr != addresses_.end() ? addr->second : nullptr;
    void* memory = a.allocator->reallocate_output(out.name, current, t.nbytes(), kOutputAlignment);
    if (memory == nullptr && t.nbytes() > 0)
      return InvalidArgument("output '" + out.name + "': the output allocator returned no memory for " +
                             std::to_string(t.nbytes()) + " bytes (" + t.description() + "): nothing written");
    a.memory = memory;
    copies.emplace_back(&t, memory);
    notify.emplace_back(out.name, a.allocator);
  }
  for (const auto& [t, to] : copies) copy_out(*t, to);
  for (const auto& [name, allocator] : notify) allocator->notify_shape(name, outputs[name].shape());
  return OkStatus();
}

Result<std::vector<Value>> ExecutionContext::execute_values(const std::map<std::string, Value>& inputs) {
  const ir::Graph& g = engine_->plan_->model.graph;
  std::map<std::string, std::vector<int64_t>> values;  // of the shape-tensor inputs
  for (const auto& [name, v] : inputs) {
    TensorIOMode mode = TensorIOMode::kNone;
    const ir::ValueInfo* info = find_io(g, name, &mode);
    if (info == nullptr || mode != TensorIOMode::kInput) return NotFound("'" + name + "' is not an input of the engine");
    if (info->type.kind != ir::TypeInfo::Kind::kTensor || !v.is_tensor()) continue;
    if (info->type.dtype != v.tensor().dtype())
      return InvalidArgument("input '" + name + "': dtype " + dtype_name(v.tensor().dtype()) +
                             " does not match the engine's " + dtype_name(info->type.dtype));
    KILN_RETURN_IF_ERROR(check_input_shape(*info, v.tensor().shape()));
    KILN_RETURN_IF_ERROR(check_in_profile(*engine_->plan_, profile_, name, v.tensor().shape()));
    KILN_RETURN_IF_ERROR(read_shape_values(*engine_->plan_, profile_, name, v.tensor(), &values));
  }
  for (const auto& in : g.inputs)
    if (!inputs.count(in.name) && !g.initializers.count(in.name) && in.type.kind != ir::TypeInfo::Kind::kOptional)
      return InvalidArgument("input '" + in.name + "' (" + in.type.to_string() + ") was not given");
  if (engine_->plan_->target_backend != "cuda") return engine_->state_->graph.run(inputs);
#ifdef KILN_HAVE_CUDA
  // The GPU program is planned for the input shapes; a change of shapes (or of --cuda-graph) re-plans it.
  std::map<std::string, Shape> shapes;
  for (const auto& [name, v] : inputs)
    if (v.is_tensor()) shapes[name] = v.tensor().shape();
  DeviceState& d = *device_;
  KILN_RETURN_IF_ERROR(prepare_device_program(shapes, values, nullptr));
  d.last_inputs = inputs;
  return d.program->run(inputs);
#else
  return Internal("a CUDA engine in a Kiln without the CUDA backend");
#endif
}

// Makes device_->program the program for these shapes and shape-tensor values, the CUDA graph setting and
// the stream: the cached
// one (with its captured CUDA graph), else a new one planned with the profile's placement.
Status ExecutionContext::prepare_device_program(const std::map<std::string, Shape>& shapes,
                                                const std::map<std::string, std::vector<int64_t>>& values,
                                                void* stream) {
#ifdef KILN_HAVE_CUDA
  DeviceState& d = *device_;
  DeviceState::ProgramKey key{shapes, values, cuda_graph_, stream};
  std::unique_ptr<cuda::CudaProgram>* cached = d.programs.find(key);
  cuda::CudaProgram* next = cached ? cached->get() : nullptr;
  // Another program reuses the arena: the last one's work must be done, unless both run on the caller's
  // same stream, which orders them.
  if (d.program != nullptr && d.program != next && (stream == nullptr || stream != d.program_stream))
    KILN_RETURN_IF_ERROR(d.wait());
  if (next == nullptr) {
    static Logger quiet(Severity::kWarning);
    cuda::ProgramOptions options;
    options.cuda_graph = cuda_graph_;
    options.stream = stream;
    options.input_values = values;
    const std::vector<engine::ProfilePlan>& profile_plans = engine_->plan_->profile_plans;
    DeviceState::Floors floors;
    if (static_cast<size_t>(profile_) < profile_plans.size()) {
      floors.arena = profile_plans[profile_].max_activation_bytes;
      floors.workspace = kProfileWorkspaceFloor;
    }
    options.lend_memory = [&d, floors](size_t arena_bytes, size_t workspace_bytes) {
      return d.lend(arena_bytes, workspace_bytes, floors);
    };
    KILN_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaProgram> program,
                          cuda::CudaProgram::create(engine_->plan_->model, engine_->state_->placement(profile_),
                                                    engine_->state_->weights, shapes, options, &quiet));
    next = program.get();
    KILN_RETURN_IF_ERROR(d.drop(d.programs.insert(std::move(key), std::move(program))));
  }
  d.program = next;
  d.program_stream = stream;
  d.program->set_profiling(profiling_);
  return OkStatus();
#else
  return Unsupported("this Kiln was built without the CUDA backend");
#endif
}

Status ExecutionContext::set_device_address(const std::string& name, void* device_ptr) {
  if (engine_->tensor_io_mode(name) == TensorIOMode::kNone)
    return NotFound("'" + name + "' is not an input or output of the engine");
  if (device_ptr == nullptr) return InvalidArgument("tensor '" + name + "': device address is null");
  device_addresses_[name] = device_ptr;
  return OkStatus();
}

Status ExecutionContext::enqueue(void* cuda_stream) {
  if (engine_->plan_->target_backend != "cuda")
    return Unsupported("enqueue: the engine targets the CPU; use execute()");
#ifdef KILN_HAVE_CUDA
  const ir::Graph& g = engine_->plan_->model.graph;
  std::map<std::string, Shape> shapes;
  std::map<std::string, const void*> ins;
  std::map<std::string, void*> outs;
  std::map<std::string, std::vector<int64_t>> values;
  for (const auto& in : g.inputs) {
    if (auto s = input_shapes_.find(in.name); s != input_shapes_.end()) shapes[in.name] = s->second;
    else if (in.type.is_static()) shapes[in.name] = in.type.static_shape();
    else return InvalidArgument("input '" + in.name + "' has dynamic shape " + in.type.to_string() + ": call set_input_shape first");
    KILN_RETURN_IF_ERROR(check_in_profile(*engine_->plan_, profile_, in.name, shapes[in.name]));
    if (values_range(*engine_->plan_, profile_, in.name) != nullptr) {
      // Its values decide shapes, fixed when the program is made: they cannot wait in device memory.
      auto v = input_values_.find(in.name);
      if (v == input_values_.end())
        return InvalidArgument("input '" + in.name + "' is a shape tensor in optimization profile " +
                               std::to_string(profile_) + ": call set_input_values before enqueue");
      KILN_RETURN_IF_ERROR(
          engine::check_values_in_profile(in.name, v->second, engine_->plan_->settings.profiles[profile_], profile_));
      values[in.name] = v->second;
    }
    if (auto a = device_addresses_.find(in.name); a != device_addresses_.end()) ins[in.name] = a->second;
  }
  for (const auto& out : g.outputs)
    if (auto a = device_addresses_.find(out.name); a != device_addresses_.end()) outs[out.name] = a->second;
  KILN_RETURN_IF_ERROR(prepare_device_program(shapes, values, cuda_stream));
  return device_->program->enqueue_device(ins, outs);
#else
  return Internal("a CUDA engine in a Kiln without the CUDA backend");
#endif
}

void ExecutionContext::set_cuda_graph(bool on) { cuda_graph_ = on; }

void ExecutionContext::set_profiling(bool on) {
  profiling_ = on;  // the other cached programs take it when they run next (prepare_device_program)
#ifdef KILN_HAVE_CUDA
  if (device_->program) device_->program->set_profiling(on);
#endif
}

Status ExecutionContext::set_shape_cache_capacity(int capacity) {
  if (capacity < 1)
    return InvalidArgument("shape cache capacity must be at least 1, got " + std::to_string(capacity));
  device_->capacity = capacity;
#ifdef KILN_HAVE_CUDA
  KILN_RETURN_IF_ERROR(device_->drop(device_->programs.set_capacity(static_cast<size_t>(capacity))));
#endif
  return OkStatus();
}

ExecutionContext::ShapeCacheStats ExecutionContext::shape_cache_stats() const {
  ShapeCacheStats s;
  s.capacity = device_->capacity;
#ifdef KILN_HAVE_CUDA
  s.hits = device_->programs.hits();
  s.misses = device_->programs.misses();
  s.size = static_cast<int>(device_->programs.size());
#endif
  return s;
}

std::vector<ExecutionContext::LayerTime> ExecutionContext::last_layer_times() const {
  std::vector<LayerTime> out;
#ifdef KILN_HAVE_CUDA
  if (device_->program)
    for (const auto& t : device_->program->last_profile()) out.push_back(LayerTime{t.layer, t.op_type, t.where, t.ms});
#endif
  return out;
}

ExecutionContext::RunTimes ExecutionContext::last_run_times() const {
  RunTimes t;
#ifdef KILN_HAVE_CUDA
  if (device_->program) {
    const cuda::RunTimes r = device_->program->last_run_times();
    t.h2d_ms = r.h2d_ms;
    t.compute_ms = r.compute_ms;
    t.d2h_ms = r.d2h_ms;
    t.enqueue_ms = r.enqueue_ms;
  }
#endif
  return t;
}

Status ExecutionContext::execute_compute_only() {
#ifdef KILN_HAVE_CUDA
  if (device_->program) {
    KILN_RETURN_IF_ERROR(device_->program->launch());
    return device_->program->synchronize();
  }
#endif
  return InvalidArgument("execute_compute_only: run the context once first (a GPU engine only)");
}

size_t ExecutionContext::activation_bytes() const { return arena_bytes() + workspace_bytes(); }

size_t ExecutionContext::arena_bytes() const {
#ifdef KILN_HAVE_CUDA
  if (device_->arena) return device_->arena->bytes();
#endif
  return 0;
}

size_t ExecutionContext::workspace_bytes() const {
#ifdef KILN_HAVE_CUDA
  if (device_->workspace) return device_->workspace->bytes();
#endif
  return 0;
}

Result<std::map<std::string, Tensor>> ExecutionContext::execute(const std::map<std::string, Tensor>& inputs) {
  const ir::Graph& g = engine_->plan_->model.graph;
  std::map<std::string, Value> feeds;
  for (const auto& [name, t] : inputs) feeds[name] = Value(t);
  KILN_ASSIGN_OR_RETURN(std::vector<Value> results, execute_values(feeds));
  outputs_.clear();
  for (size_t i = 0; i < g.outputs.size(); ++i) {
    if (!results[i].is_tensor())
      return Unsupported("output '" + g.outputs[i].name + "' is a " + results[i].description() +
                         ", not a tensor: use execute_values");
    outputs_[g.outputs[i].name] = results[i].tensor();
  }
  return outputs_;
}

Shape ExecutionContext::tensor_shape(const std::string& name) const {
  if (auto it = outputs_.find(name); it != outputs_.end()) return it->second.shape();
  if (auto it = input_shapes_.find(name); it != input_shapes_.end()) return it->second;
  return engine_->tensor_shape(name);
}

const Tensor* ExecutionContext::output(const std::string& name) const {
  auto it = outputs_.find(name);
  return it == outputs_.end() ? nullptr : &it->second;
}

// ---- Builder and Runtime ----

namespace {

Result<engine::BuildSettings> settings_of(const BuilderConfig& config) {
  engine::BuildSettings settings;
  settings.device = config.device();
  settings.input_shapes = config.input_shapes();
  for (const OptimizationProfile& p : config.optimization_profiles()) settings.profiles.push_back(p.shapes());
  if (!settings.profiles.empty() && !settings.input_shapes.empty())
    return InvalidArgument("fixed input shapes (--shapes) and optimization profiles exclude each other: give a "
                           "profile with min = opt = max instead");
  settings.tf32 = config.tf32();
  settings.fp16 = config.fp16();
  settings.bf16 = config.bf16();
  settings.layer_precisions = config.layer_precisions();
  settings.strict_gpu = config.strict_gpu();
  settings.timing_cache = config.timing_cache();
  settings.opt_level = config.opt_level();
  if (settings.opt_level < 0 || settings.opt_level > 3)
    return InvalidArgument("opt level must be 0 to 3, got " + std::to_string(settings.opt_level));
  return settings;
}

// "auto" as the build resolves it: the GPU where there is one, else the CPU.
std::string resolved_device(const std::string& device) {
  if (device != "auto") return device;
#ifdef KILN_HAVE_CUDA
  return backends::cuda_device_available() ? "cuda" : "cpu";
#else
  return "cpu";
#endif
}

}  // namespace

Result<std::shared_ptr<Engine>> Builder::build_engine(const NetworkDefinition& network, const BuilderConfig& config) {
  if (network.empty()) return InvalidArgument("the network is empty: parse a model into it first");
  KILN_ASSIGN_OR_RETURN(const engine::BuildSettings settings, settings_of(config));
  // Both engines keep the model's dynamic dims and run any shape inside a profile: the CPU's as they are, the
  // GPU's specialized to each shape a context sees, with the tactics timed at its profile's opt shapes.
  if (!settings.profiles.empty()) KILN_RETURN_IF_ERROR(engine::check_profiles(network.model().graph, settings.profiles));
  KILN_ASSIGN_OR_RETURN(engine::Plan plan, builder::build_plan(network.model(), settings, logger_));
  KILN_ASSIGN_OR_RETURN(std::shared_ptr<Engine> e, Engine::create(std::move(plan)));
  // Memory is planned for each profile's max shapes: a program made there, as a context would make it, says
  // how much its activations need, and each context then takes that much at once (and the engine is known to
  // run at its max shapes before it is handed out).
  for (size_t k = 0; k < e->plan_->profile_plans.size(); ++k) {
    std::map<std::string, Shape> max;
    std::map<std::string, std::vector<int64_t>> max_values;  // shape tensors at their max values
    for (const auto& [name, r] : e->plan_->settings.profiles[k]) (r.values ? max_values : max)[name] = r.max;
    std::unique_ptr<ExecutionContext> c = e->create_execution_context();
    KILN_RETURN_IF_ERROR(c->set_optimization_profile(static_cast<int>(k)));
    const Status s = c->prepare_device_program(max, max_values, nullptr);
    if (!s.ok()) return s.with_context("optimization profile " + std::to_string(k) + " at its max shapes");
    e->plan_->profile_plans[k].max_activation_bytes = c->arena_bytes();
  }
  return e;
}

Result<std::string> Builder::optimized_graph(const NetworkDefinition& network, const BuilderConfig& config) {
  if (network.empty()) return InvalidArgument("the network is empty: parse a model into it first");
  KILN_ASSIGN_OR_RETURN(engine::BuildSettings settings, settings_of(config));
  settings.device = resolved_device(settings.device);
  KILN_ASSIGN_OR_RETURN(const ir::Model model, builder::plan_graph(network.model(), settings, logger_));
  return builder::dump_graph(model);
}

Result<std::vector<uint8_t>> Builder::build_serialized_network(const NetworkDefinition& network,
                                                              const BuilderConfig& config) {
  KILN_ASSIGN_OR_RETURN(std::shared_ptr<Engine> e, build_engine(network, config));
  return e->serialize();
}

Result<std::shared_ptr<Engine>> Runtime::deserialize_engine(const void* data, size_t size) {
  if (data == nullptr || size == 0) return InvalidEngine("the engine data is empty");
  KILN_ASSIGN_OR_RETURN(engine::Plan plan,
                        engine::deserialize_plan(std::string(static_cast<const char*>(data), size)));
  if (plan.target_backend != "cpu" && plan.target_backend != "cuda")
    return InvalidEngine("the engine targets '" + plan.target_backend + " (" + plan.target_device +
                         ")', which this Kiln does not know: rebuild it here with kiln build");
  return Engine::create(std::move(plan));
}

Result<std::shared_ptr<Engine>> Runtime::deserialize_engine_file(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string bytes, onnx_io::read_file(path));
  auto e = deserialize_engine(bytes.data(), bytes.size());
  if (!e.ok()) return e.status().with_context(path);
  return e;
}

}  // namespace kiln
