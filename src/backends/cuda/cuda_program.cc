// CudaProgram: plans and runs an engine's graph on the GPU at concrete input shapes (see cuda_program.h).
//
// Planning, once per context and input shapes:
//  1. The graph is specialized to the shapes: shapes inferred, shape subgraphs folded, so that every layer
//     sees concrete shapes and its attribute-like inputs as constants.
//  2. Each node becomes a step: a CUDA layer (or a view, which costs nothing) where the plan put it on the
//     GPU and its shapes are known; the CPU reference kernel otherwise. Where a value crosses between the
//     two, an upload or download step is inserted, so the copies are explicit and counted.
//  3. Device tensors get offsets in one arena by liveness (a dead tensor's memory is reused), largest first.
// Running is then a walk over the steps with fixed pointers, which is what makes CUDA graph capture possible.
#include "backends/cuda/cuda_program.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "backends/cuda/layer.h"
#include "ir/op_registry.h"
#include "passes/passes.h"
#include "runtime/executor.h"

namespace kiln::cuda {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

// ---- DeviceWeights ----

Result<std::shared_ptr<DeviceWeights>> DeviceWeights::upload(const ir::Graph& graph,
                                                              const std::set<std::string>& names) {
  std::shared_ptr<DeviceWeights> w(new DeviceWeights());
  for (const std::string& name : names) {
    auto it = graph.initializers.find(name);
    if (it == graph.initializers.end() || it->second.dtype() == DType::kString) continue;
    const Tensor& t = it->second;
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(t.nbytes(), 1));
    if (e != cudaSuccess) {
      cudaGetLastError();
      return OutOfRange("uploading weight '" + name + "' (" + std::to_string(t.nbytes()) +
                        " bytes): cudaMalloc failed: " + cudaGetErrorString(e));
    }
    w->ptrs_[name] = p;
    w->bytes_ += t.nbytes();
    KILN_CUDA_TRY(cudaMemcpy(p, t.raw_data(), t.nbytes(), cudaMemcpyHostToDevice));
  }
  KILN_CUDA_TRY(cudaDeviceSynchronize());  // a pageable copy may return before its DMA lands
  return w;
}

DeviceWeights::~DeviceWeights() {
  for (auto& [name, p] : ptrs_) cudaFree(p);
}

const void* DeviceWeights::find(const std::string& name) const {
  auto it = ptrs_.find(name);
  return it == ptrs_.end() ? nullptr : it->second;
}

// ---- DeviceAllocation ----

Result<std::unique_ptr<DeviceAllocation>> DeviceAllocation::allocate(size_t bytes, const std::string& what) {
  std::unique_ptr<DeviceAllocation> a(new DeviceAllocation());
  cudaError_t e = cudaMalloc(&a->ptr_, std::max<size_t>(bytes, 1));
  if (e != cudaSuccess) {
    cudaGetLastError();
    a->ptr_ = nullptr;
    return OutOfRange(what + " (" + std::to_string(bytes) + " bytes) does not fit: " + cudaGetErrorString(e));
  }
  a->bytes_ = bytes;
  return a;
}

DeviceAllocation::~DeviceAllocation() {
  if (ptr_) cudaFree(ptr_);
}

// ---- CudaProgram ----

struct CudaProgram::Impl {
  struct Slot {
    std::string name;
    DType dtype = DType::kUndefined;
    Shape shape;
    size_t bytes = 0;
    enum class Kind { kArena, kConstant, kAlias } kind = Kind::kArena;
    const void* constant = nullptr;  // kConstant: an engine weight or a program-owned constant
    int alias_of = -1;               // kAlias: the slot whose memory this one views
    int64_t offset = -1;             // kArena
    int first = -1, last = -1;       // steps between which the memory must stay (kArena)
    void* ptr = nullptr;
  };
  enum class StepKind { kGpu, kView, kCpu, kUpload, kDownload };
  struct Step {
    StepKind kind;
    const ir::Node* node = nullptr;
    std::unique_ptr<Layer> layer;
    const ir::OpSchema* schema = nullptr;
    int opset = 0;
    std::vector<int> in_slots, out_slots;  // kGpu: per node input/output (-1 when omitted)
    int slot = -1;                          // kUpload / kDownload
    std::vector<DeviceTensor> ins, outs;    // kGpu, resolved once the arena exists
    std::vector<std::string> outer_constants;  // kCpu: initializers its subgraphs read from the outer scope
  };

  ir::Model model;
  std::map<std::string, Shape> input_shapes;
  std::shared_ptr<const DeviceWeights> weights;
  std::shared_ptr<HandleSet> handles;
  ProgramOptions options;
  Logger* logger = nullptr;

  std::vector<Slot> slots;
  std::map<std::string, int> slot_of;
  std::vector<Step> steps;
  std::map<std::string, Value> host;  // host-resident values during a run

  void* arena = nullptr;
  size_t arena_bytes = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool memory_lent = false;  // arena and workspace belong to the caller (ProgramOptions::lend_memory)
  std::vector<void*> owned_constants;
  std::map<std::string, void*> pinned;  // staging for graph inputs and outputs that live on the device
  // h2d start, h2d end, compute start, compute end, d2h end
  cudaEvent_t events[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  cudaGraphExec_t graph_exec = nullptr;
  bool graph_capturable = false;
  int gpu_steps = 0, cpu_steps = 0;
  double enqueue_ms = 0;
  bool profiling = false;
  std::vector<cudaEvent_t> step_events;  // two per step while profiling
  std::vector<double> cpu_step_ms;       // host time per step (CPU steps) while profiling

  ~Impl() {
    for (cudaEvent_t e : step_events) cudaEventDestroy(e);
    if (graph_exec) cudaGraphExecDestroy(graph_exec);
    for (cudaEvent_t e : events)
      if (e) cudaEventDestroy(e);
    for (auto& [n, p] : pinned) cudaFreeHost(p);
    for (void* p : owned_constants) cudaFree(p);
    if (arena && !memory_lent) cudaFree(arena);
    if (workspace && !memory_lent) cudaFree(workspace);
    steps.clear();  // layers before the handles they may use
  }

  cudaStream_t stream() const { return handles->handles().stream; }

  int add_slot(const std::string& name, DType dtype, const Shape& shape) {
    Slot s;
    s.name = name;
    s.dtype = dtype;
    s.shape = shape;
    s.bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    slots.push_back(s);
    slot_of[name] = static_cast<int>(slots.size()) - 1;
    return static_cast<int>(slots.size()) - 1;
  }
  int root_of(int s) const {
    while (slots[s].kind == Slot::Kind::kAlias) s = slots[s].alias_of;
    return s;
  }
  void use(int s, int step) {
    s = root_of(s);
    if (slots[s].kind != Slot::Kind::kArena) return;
    // Uses arrive out of order (graph inputs are marked live from step 0 after the steps are walked).
    slots[s].first = slots[s].first < 0 ? step : std::min(slots[s].first, step);
    slots[s].last = std::max(slots[s].last, step);
  }

  void log(Severity sev, const std::string& m) const {
    if (logger) logger->log(sev, m);
  }

  Status specialize(const ir::Model& engine_model);
  Status plan_steps(const std::map<std::string, NodePlacement>& placement);
  Status plan_memory();
  Status run_steps();
  Status run_step(Step& st, const CudaHandles& h, runtime::Scope& scope);
};

Status CudaProgram::Impl::specialize(const ir::Model& engine_model) {
  model = engine_model;
  return passes::specialize_to_inputs(model, input_shapes, options.input_values);
}

Status CudaProgram::Impl::plan_steps(const std::map<std::string, NodePlacement>& placement) {
  ir::Graph& g = model.graph;
  std::map<std::string, bool> on_device;  // where each value is produced: true device, false host
  std::set<std::string> downloaded;       // device values that also have a host copy
  std::set<std::string> graph_inputs;
  for (const auto& in : g.inputs) {
    on_device[in.name] = false;
    graph_inputs.insert(in.name);
  }
  // For the layers that may update their input 0 in place (kiln.WriteChannels): they may where that input is
  // memory of its own that a GPU kernel wrote (not a view, a constant or an upload), which no other node reads
  // (subgraphs included) and which is not a graph output.
  std::map<std::string, int> readers;
  for (const ir::Node& n : g.nodes)
    for (const auto& v : runtime::node_reads(n)) ++readers[v];
  std::set<std::string> graph_outputs, gpu_written;
  for (const auto& out : g.outputs) graph_outputs.insert(out.name);
  auto may_overwrite = [&](const ir::Node& n, int slot) {
    const std::string& v = n.inputs[0];
    if (slot < 0 || slots[slot].kind != Slot::Kind::kArena || !gpu_written.count(v) || graph_outputs.count(v) ||
        readers[v] != 1)
      return false;
    return std::count(n.inputs.begin(), n.inputs.end(), v) == 1;
  };

  // A device slot for a value a GPU step reads: constants are uploaded once, host values per run.
  auto device_input = [&](const std::string& name) -> Result<int> {
    if (auto it = slot_of.find(name); it != slot_of.end()) return it->second;
    TensorDesc d = describe_value(g, name);
    if (d.constant != nullptr) {
      int s = add_slot(name, d.dtype, d.shape);
      slots[s].kind = Slot::Kind::kConstant;
      slots[s].constant = weights ? weights->find(name) : nullptr;
      if (slots[s].constant == nullptr) {  // made by folding at these shapes: the program owns a copy
        void* p = nullptr;
        KILN_CUDA_TRY(cudaMalloc(&p, std::max<size_t>(d.constant->nbytes(), 1)));
        owned_constants.push_back(p);
        KILN_CUDA_TRY(cudaMemcpy(p, d.constant->raw_data(), d.constant->nbytes(), cudaMemcpyHostToDevice));
        slots[s].constant = p;
      }
      return s;
    }
    if (!d.is_static()) return Internal("value '" + name + "' has no static shape for the GPU");
    int s = add_slot(name, d.dtype, d.shape);
    if (graph_inputs.count(name)) return s;  // copied by upload(), through pinned memory
    Step up;
    up.kind = StepKind::kUpload;
    up.slot = s;
    steps.push_back(std::move(up));
    return s;
  };

  for (const ir::Node& n : g.nodes) {
    auto pit = placement.find(n.name);
    const NodePlacement* p = pit == placement.end() ? nullptr : &pit->second;
    const LayerKind* kind = nullptr;
    LayerSpec spec;
    std::string why_cpu;
    if (p != nullptr && p->backend == "cuda") {
      kind = layer_table().find_for(n);
      spec = make_layer_spec(n, g, model.opset_of(n), p->allow_tf32);
      for (size_t i = 0; i < spec.inputs.size() && why_cpu.empty(); ++i)
        if (!n.inputs[i].empty() && !spec.inputs[i].is_static())
          why_cpu = "input '" + n.inputs[i] + "' has a shape known only from data";
      for (size_t i = 0; i < spec.outputs.size() && why_cpu.empty(); ++i)
        if (!n.outputs[i].empty() && !spec.outputs[i].is_static())
          why_cpu = "output '" + n.outputs[i] + "' has a shape known only from data";
      if (kind == nullptr) why_cpu = "no CUDA layer";
      else if (why_cpu.empty()) why_cpu = kind->check(spec);
      if (!why_cpu.empty()) {
        log(Severity::kWarning, n.describe() + " runs on the CPU at these shapes: " + why_cpu);
        kind = nullptr;
      }
    }

    if (kind != nullptr) {
      Step st;
      st.kind = kind->output_is_view_of_input0 ? StepKind::kView : StepKind::kGpu;
      st.node = &n;
      for (const auto& in : n.inputs) {
        if (in.empty()) {
          st.in_slots.push_back(-1);
          continue;
        }
        if (!on_device.count(in) && !g.initializers.count(in))
          return Internal(n.describe() + ": input '" + in + "' is not produced before it");
        KILN_ASSIGN_OR_RETURN(int s, device_input(in));
        st.in_slots.push_back(s);
      }
      const bool in_place = kind->may_update_input0_in_place && !st.in_slots.empty() && may_overwrite(n, st.in_slots[0]);
      for (size_t i = 0; i < n.outputs.size(); ++i) {
        if (n.outputs[i].empty()) {
          st.out_slots.push_back(-1);
          continue;
        }
        int s = add_slot(n.outputs[i], spec.outputs[i].dtype, spec.outputs[i].shape);
        if ((st.kind == StepKind::kView || in_place) && i == 0) {
          slots[s].kind = Slot::Kind::kAlias;
          slots[s].alias_of = st.in_slots[0];
        }
        st.out_slots.push_back(s);
        on_device[n.outputs[i]] = true;
        if (st.kind == StepKind::kGpu && slots[s].kind == Slot::Kind::kArena) gpu_written.insert(n.outputs[i]);
      }
      if (st.kind == StepKind::kGpu) {
        auto layer = kind->create(spec, p->tactic, handles->handles());
        if (!layer.ok() && layer.status().code() == StatusCode::kUnsupported) {
          // A tactic chosen at a profile's opt shapes may not exist at these (cuBLASLt's heuristic lists
          // fewer algorithms for some sizes): the layer's first tactic, its general kernel, runs instead.
          const std::vector<std::string> here = kind->tactics ? kind->tactics(spec) : std::vector<std::string>{"default"};
          if (!here.empty() && here.front() != p->tactic) {
            log(Severity::kInfo, n.describe() + ": tactic " + p->tactic + " does not run at these shapes (" +
                                     layer.status().message() + "); " + here.front() + " runs instead");
            layer = kind->create(spec, here.front(), handles->handles());
          }
        }
        if (!layer.ok()) return layer.status();
        st.layer = std::move(layer).value();
        workspace_bytes = std::max(workspace_bytes, st.layer->workspace_bytes());
        ++gpu_steps;
      }
      steps.push_back(std::move(st));
      continue;
    }

    // A CPU step: every value it reads (its subgraphs' outer-scope reads too) must be on the host.
    const std::vector<std::string> reads = runtime::node_reads(n);
    for (const auto& r : reads) {
      if (r.empty() || !on_device.count(r) || !on_device[r] || downloaded.count(r)) continue;
      Step down;
      down.kind = StepKind::kDownload;
      down.slot = slot_of.at(r);
      steps.push_back(std::move(down));
      downloaded.insert(r);
    }
    Step st;
    st.kind = StepKind::kCpu;
    st.node = &n;
    for (const auto& r : reads)
      if (g.initializers.count(r) && std::find(n.inputs.begin(), n.inputs.end(), r) == n.inputs.end())
        st.outer_constants.push_back(r);
    st.schema = ir::OpRegistry::global().find(n.domain, n.op_type);
    if (st.schema == nullptr || st.schema->cpu_kernel == nullptr)
      return Unsupported(n.describe() + ": no CPU kernel for this op");
    st.opset = model.opset_of(n);
    for (const auto& out : n.outputs)
      if (!out.empty()) on_device[out] = false;
    steps.push_back(std::move(st));
    ++cpu_steps;
  }
  // Graph outputs made on the device are downloaded at the end (download()), from pinned buffers.
  graph_capturable = cpu_steps == 0;
  for (const Step& st : steps)
    if (st.kind == StepKind::kUpload || st.kind == StepKind::kDownload) graph_capturable = false;
  return OkStatus();
}

Status CudaProgram::Impl::plan_memory() {
  // Lifetimes: from the step that writes a slot to the last that reads it; graph outputs to the end.
  const int end = static_cast<int>(steps.size());
  for (int i = 0; i < end; ++i) {
    const Step& st = steps[i];
    if (st.kind == StepKind::kUpload || st.kind == StepKind::kDownload) use(st.slot, i);
    for (int s : st.in_slots)
      if (s >= 0) use(s, i);
    for (int s : st.out_slots)
      if (s >= 0) use(s, i);
  }
  for (const auto& in : model.graph.inputs)
    if (auto it = slot_of.find(in.name); it != slot_of.end()) use(it->second, 0);
  for (const auto& out : model.graph.outputs)
    if (auto it = slot_of.find(out.name); it != slot_of.end()) use(it->second, end);

  // Greedy placement, largest first, at the lowest offset that overlaps no live neighbour.
  std::vector<int> order;
  for (int s = 0; s < static_cast<int>(slots.size()); ++s)
    if (slots[s].kind == Slot::Kind::kArena && slots[s].first >= 0) order.push_back(s);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return slots[a].bytes > slots[b].bytes; });
  std::vector<int> placed;
  for (int s : order) {
    Slot& cur = slots[s];
    std::vector<std::pair<size_t, size_t>> busy;
    for (int o : placed) {
      const Slot& other = slots[o];
      if (other.last < cur.first || cur.last < other.first) continue;
      busy.push_back({static_cast<size_t>(other.offset), static_cast<size_t>(other.offset) + align_up(other.bytes)});
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& [b, e] : busy) {
      if (offset + align_up(cur.bytes) <= b) break;
      offset = std::max(offset, e);
    }
    cur.offset = static_cast<int64_t>(offset);
    arena_bytes = std::max(arena_bytes, offset + align_up(cur.bytes));
    placed.push_back(s);
  }
  if (options.lend_memory) {
    // The caller's memory (an execution context's, shared by its programs): the addresses bound below, in
    // the layers' tensors and in a captured CUDA graph, are only valid while the caller keeps it.
    KILN_ASSIGN_OR_RETURN(const LentMemory lent, options.lend_memory(arena_bytes, workspace_bytes));
    if ((arena_bytes > 0 && lent.arena == nullptr) || (workspace_bytes > 0 && lent.workspace == nullptr))
      return Internal("the lent device memory is missing the arena or the workspace");
    memory_lent = true;
    arena = arena_bytes > 0 ? lent.arena : nullptr;
    workspace = workspace_bytes > 0 ? lent.workspace : nullptr;
  } else {
    if (arena_bytes > 0) {
      cudaError_t e = cudaMalloc(&arena, arena_bytes);
      if (e != cudaSuccess) {
        cudaGetLastError();
        return OutOfRange("the activation arena (" + std::to_string(arena_bytes) + " bytes) does not fit: " +
                          cudaGetErrorString(e));
      }
    }
    if (workspace_bytes > 0) KILN_CUDA_TRY(cudaMalloc(&workspace, workspace_bytes));
  }
  for (Slot& s : slots) {
    if (s.kind == Slot::Kind::kArena) s.ptr = s.offset >= 0 ? static_cast<char*>(arena) + s.offset : nullptr;
    else if (s.kind == Slot::Kind::kConstant) s.ptr = const_cast<void*>(s.constant);
  }
  for (Slot& s : slots)
    if (s.kind == Slot::Kind::kAlias) s.ptr = slots[root_of(s.alias_of)].ptr;
  for (Step& st : steps) {
    for (int s : st.in_slots)
      st.ins.push_back(s < 0 ? DeviceTensor{} : DeviceTensor{slots[s].ptr, slots[s].dtype, slots[s].shape});
    for (int s : st.out_slots)
      st.outs.push_back(s < 0 ? DeviceTensor{} : DeviceTensor{slots[s].ptr, slots[s].dtype, slots[s].shape});
  }
  // Pinned staging for the graph's device-side inputs and outputs.
  for (const auto& in : model.graph.inputs)
    if (auto it = slot_of.find(in.name); it != slot_of.end()) {
      void* p = nullptr;
      KILN_CUDA_TRY(cudaMallocHost(&p, std::max<size_t>(slots[it->second].bytes, 1)));
      pinned[in.name] = p;
    }
  for (const auto& out : model.graph.outputs)
    if (auto it = slot_of.find(out.name); it != slot_of.end() && !pinned.count(out.name)) {
      void* p = nullptr;
      KILN_CUDA_TRY(cudaMallocHost(&p, std::max<size_t>(slots[it->second].bytes, 1)));
      pinned[out.name] = p;
    }
  for (cudaEvent_t& e : events) KILN_CUDA_TRY(cudaEventCreate(&e));
  return OkStatus();
}

Status CudaProgram::Impl::run_steps() {
  const CudaHandles& h = handles->handles();
  runtime::Scope scope{&host, nullptr};
  for (size_t i = 0; i < steps.size(); ++i) {
    Step& st = steps[i];
    const auto host_start = std::chrono::steady_clock::now();
    if (profiling) KILN_CUDA_TRY(cudaEventRecord(step_events[2 * i], h.stream));
    KILN_RETURN_IF_ERROR(run_step(st, h, scope));
    if (profiling) {
      KILN_CUDA_TRY(cudaEventRecord(step_events[2 * i + 1], h.stream));
      cpu_step_ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_start).count();
    }
  }
  return OkStatus();
}

Status CudaProgram::Impl::run_step(Step& st, const CudaHandles& h, runtime::Scope& scope) {
  {
    switch (st.kind) {
      case StepKind::kGpu: {
        Status s = st.layer->run(st.ins, st.outs, workspace, h);
        if (!s.ok()) return s.with_context(st.node->describe());
        break;
      }
      case StepKind::kView: break;
      case StepKind::kUpload: {
        const Slot& slot = slots[st.slot];
        auto it = host.find(slot.name);
        if (it == host.end() || !it->second.is_tensor()) return Internal("upload of '" + slot.name + "': no host value");
        const Tensor& t = it->second.tensor();
        if (t.shape() != slot.shape || t.dtype() != slot.dtype)
          return Internal("upload of '" + slot.name + "': the CPU produced " + dtype_name(t.dtype()) +
                          shape_to_string(t.shape()) + ", planned " + dtype_name(slot.dtype) + shape_to_string(slot.shape));
        KILN_CUDA_TRY(cudaMemcpyAsync(slot.ptr, t.raw_data(), slot.bytes, cudaMemcpyHostToDevice, h.stream));
        KILN_CUDA_TRY(cudaStreamSynchronize(h.stream));  // the host tensor may be released by a later step
        break;
      }
      case StepKind::kDownload: {
        const Slot& slot = slots[st.slot];
        Tensor t(slot.dtype, slot.shape);
        KILN_CUDA_TRY(cudaMemcpyAsync(t.raw_data(), slots[root_of(st.slot)].ptr, slot.bytes, cudaMemcpyDeviceToHost, h.stream));
        KILN_CUDA_TRY(cudaStreamSynchronize(h.stream));
        host[slot.name] = Value(std::move(t));
        break;
      }
      case StepKind::kCpu: {
        const ir::Node& node = *st.node;
        for (const auto& name : st.outer_constants)
          if (!host.count(name)) host[name] = Value(model.graph.initializers.at(name));
        std::vector<const Value*> ins;
        for (const auto& name : node.inputs) {
          if (name.empty()) {
            ins.push_back(nullptr);
            continue;
          }
          auto it = host.find(name);
          if (it == host.end()) {
            auto w = model.graph.initializers.find(name);
            if (w == model.graph.initializers.end()) return Internal(node.describe() + ": input '" + name + "' has no host value");
            host[name] = Value(w->second);
            it = host.find(name);
          }
          ins.push_back(&it->second);
        }
        std::vector<Value> outs(node.outputs.size());
        KILN_RETURN_IF_ERROR(runtime::run_cpu_node(node, *st.schema, st.opset, model.opsets, std::move(ins), &outs, &scope));
        for (size_t i = 0; i < node.outputs.size(); ++i)
          if (!node.outputs[i].empty()) host[node.outputs[i]] = std::move(outs[i]);
        break;
      }
    }
  }
  return OkStatus();
}

CudaProgram::CudaProgram() : impl_(std::make_unique<Impl>()) {}
CudaProgram::~CudaProgram() = default;

Result<std::unique_ptr<CudaProgram>> CudaProgram::create(const ir::Model& model,
                                                         const std::map<std::string, NodePlacement>& placement,
                                                         std::shared_ptr<const DeviceWeights> weights,
                                                         const std::map<std::string, Shape>& input_shapes,
                                                         const ProgramOptions& options, Logger* logger) {
  std::unique_ptr<CudaProgram> p(new CudaProgram());
  Impl& m = *p->impl_;
  m.input_shapes = input_shapes;
  m.weights = std::move(weights);
  m.options = options;
  m.logger = logger;
  if (options.stream != nullptr) {
    KILN_ASSIGN_OR_RETURN(m.handles, HandleSet::create(static_cast<cudaStream_t>(options.stream)));
  } else {
    KILN_ASSIGN_OR_RETURN(m.handles, HandleSet::acquire());
  }
  KILN_RETURN_IF_ERROR(m.specialize(model));
  KILN_RETURN_IF_ERROR(m.plan_steps(placement));
  KILN_RETURN_IF_ERROR(m.plan_memory());
  m.options.lend_memory = nullptr;  // used once; it may refer to its caller's state
  // Layers and constants were set up with synchronous copies on the legacy default stream, which our
  // non-blocking stream does not wait for; a pageable cudaMemcpy may return before its DMA lands. Only that
  // stream is waited for: cudaDeviceSynchronize would also wait for (and so break) a CUDA graph that another
  // context is capturing on its own stream at this moment.
  KILN_CUDA_TRY(cudaStreamSynchronize(cudaStreamLegacy));
  if (options.cuda_graph && !m.graph_capturable)
    m.log(Severity::kWarning, "CUDA graph not used: " + std::to_string(m.cpu_steps) +
                                  " layers run on the CPU between GPU layers");
  return p;
}

const std::map<std::string, Shape>& CudaProgram::input_shapes() const { return impl_->input_shapes; }

Status CudaProgram::upload(const std::map<std::string, Value>& inputs) {
  Impl& m = *impl_;
  m.host.clear();
  KILN_CUDA_TRY(cudaEventRecord(m.events[0], m.stream()));
  for (const auto& in : m.model.graph.inputs) {
    auto it = inputs.find(in.name);
    if (it == inputs.end()) continue;  // checked by the caller
    m.host[in.name] = it->second;
    auto slot = m.slot_of.find(in.name);
    if (slot == m.slot_of.end()) continue;
    const Impl::Slot& s = m.slots[slot->second];
    const Tensor& t = it->second.tensor();
    if (t.dtype() != s.dtype || t.shape() != s.shape)
      return InvalidArgument("input '" + in.name + "': got " + dtype_name(t.dtype()) + shape_to_string(t.shape()) +
                             ", the context was prepared for " + dtype_name(s.dtype) + shape_to_string(s.shape));
    std::memcpy(m.pinned.at(in.name), t.raw_data(), s.bytes);
    KILN_CUDA_TRY(cudaMemcpyAsync(s.ptr, m.pinned.at(in.name), s.bytes, cudaMemcpyHostToDevice, m.stream()));
  }
  KILN_CUDA_TRY(cudaEventRecord(m.events[1], m.stream()));
  return OkStatus();
}

Status CudaProgram::launch() {
  Impl& m = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  KILN_CUDA_TRY(cudaEventRecord(m.events[2], m.stream()));
  if (m.options.cuda_graph && m.graph_capturable && !m.profiling) {
    if (m.graph_exec == nullptr) {
      cudaGraph_t graph = nullptr;
      KILN_CUDA_TRY(cudaStreamBeginCapture(m.stream(), cudaStreamCaptureModeThreadLocal));
      Status s = m.run_steps();
      cudaError_t e = cudaStreamEndCapture(m.stream(), &graph);
      KILN_RETURN_IF_ERROR(s);
      KILN_CUDA_TRY(e);
      e = cudaGraphInstantiate(&m.graph_exec, graph, 0);
      cudaGraphDestroy(graph);
      KILN_CUDA_TRY(e);
    }
    KILN_CUDA_TRY(cudaGraphLaunch(m.graph_exec, m.stream()));
  } else {
    KILN_RETURN_IF_ERROR(m.run_steps());
  }
  KILN_CUDA_TRY(cudaEventRecord(m.events[3], m.stream()));
  // Enqueue time of a launch on its own (run() overwrites it with the whole run's).
  m.enqueue_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return OkStatus();
}

Status CudaProgram::download() {
  Impl& m = *impl_;
  for (const auto& out : m.model.graph.outputs) {
    auto slot = m.slot_of.find(out.name);
    if (slot == m.slot_of.end() || m.host.count(out.name)) continue;
    const Impl::Slot& s = m.slots[slot->second];
    KILN_CUDA_TRY(cudaMemcpyAsync(m.pinned.at(out.name), s.ptr, s.bytes, cudaMemcpyDeviceToHost, m.stream()));
  }
  KILN_CUDA_TRY(cudaEventRecord(m.events[4], m.stream()));
  return OkStatus();
}

Status CudaProgram::synchronize() {
  KILN_CUDA_TRY(cudaStreamSynchronize(impl_->stream()));
  return OkStatus();
}

Status CudaProgram::enqueue_device(const std::map<std::string, const void*>& inputs,
                                   const std::map<std::string, void*>& outputs) {
  Impl& m = *impl_;
  if (m.cpu_steps > 0)
    return Unsupported("enqueue on device buffers needs every layer on the GPU, and " + std::to_string(m.cpu_steps) +
                       " run on the CPU: use execute()");
  for (const auto& in : m.model.graph.inputs) {
    auto slot = m.slot_of.find(in.name);
    if (slot == m.slot_of.end()) continue;  // no GPU layer reads it
    auto it = inputs.find(in.name);
    if (it == inputs.end() || it->second == nullptr)
      return InvalidArgument("input '" + in.name + "' has no device address: call set_tensor_address");
    const Impl::Slot& s = m.slots[slot->second];
    KILN_CUDA_TRY(cudaMemcpyAsync(s.ptr, it->second, s.bytes, cudaMemcpyDeviceToDevice, m.stream()));
  }
  KILN_RETURN_IF_ERROR(launch());
  for (const auto& out : m.model.graph.outputs) {
    auto it = outputs.find(out.name);
    if (it == outputs.end() || it->second == nullptr)
      return InvalidArgument("output '" + out.name + "' has no device address: call set_tensor_address");
    if (auto slot = m.slot_of.find(out.name); slot != m.slot_of.end()) {
      const Impl::Slot& s = m.slots[slot->second];
      KILN_CUDA_TRY(cudaMemcpyAsync(it->second, s.ptr, s.bytes, cudaMemcpyDeviceToDevice, m.stream()));
    } else if (auto w = m.model.graph.initializers.find(out.name); w != m.model.graph.initializers.end()) {
      KILN_CUDA_TRY(cudaMemcpyAsync(it->second, w->second.raw_data(), w->second.nbytes(), cudaMemcpyHostToDevice, m.stream()));
    } else {
      return Internal("graph output '" + out.name + "' is not on the device");
    }
  }
  return OkStatus();
}

Shape CudaProgram::planned_shape(const std::string& name) const {
  auto it = impl_->slot_of.find(name);
  if (it != impl_->slot_of.end()) return impl_->slots[it->second].shape;
  auto w = impl_->model.graph.initializers.find(name);
  if (w != impl_->model.graph.initializers.end()) return w->second.shape();
  return {};
}

Result<std::vector<Value>> CudaProgram::run(const std::map<std::string, Value>& inputs) {
  const auto t0 = std::chrono::steady_clock::now();
  KILN_RETURN_IF_ERROR(upload(inputs));
  KILN_RETURN_IF_ERROR(launch());
  KILN_RETURN_IF_ERROR(download());
  impl_->enqueue_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  KILN_RETURN_IF_ERROR(synchronize());
  Impl& m = *impl_;
  std::vector<Value> results;
  for (const auto& out : m.model.graph.outputs) {
    if (auto h = m.host.find(out.name); h != m.host.end()) {
      results.push_back(h->second);
    } else if (auto slot = m.slot_of.find(out.name); slot != m.slot_of.end()) {
      const Impl::Slot& s = m.slots[slot->second];
      Tensor t(s.dtype, s.shape);
      std::memcpy(t.raw_data(), m.pinned.at(out.name), s.bytes);
      results.emplace_back(std::move(t));
    } else if (auto w = m.model.graph.initializers.find(out.name); w != m.model.graph.initializers.end()) {
      results.emplace_back(w->second);
    } else {
      return Internal("graph output '" + out.name + "' was not computed");
    }
  }
  // Keep only the graph inputs: a compute-only launch (kiln bench --no-data-transfers) reruns the CPU steps
  // on the inputs of the last run.
  for (auto it = m.host.begin(); it != m.host.end();) {
    bool is_input = false;
    for (const auto& in : m.model.graph.inputs) is_input = is_input || in.name == it->first;
    it = is_input ? std::next(it) : m.host.erase(it);
  }
  return results;
}

RunTimes CudaProgram::last_run_times() const {
  RunTimes t;
  t.enqueue_ms = impl_->enqueue_ms;
  cudaEventElapsedTime(&t.h2d_ms, impl_->events[0], impl_->events[1]);
  cudaEventElapsedTime(&t.compute_ms, impl_->events[2], impl_->events[3]);
  cudaEventElapsedTime(&t.d2h_ms, impl_->events[3], impl_->events[4]);
  cudaGetLastError();  // an event never recorded (a step skipped) reports an error that is not sticky
  return t;
}

size_t CudaProgram::activation_bytes() const { return impl_->arena_bytes; }
size_t CudaProgram::workspace_bytes() const { return impl_->workspace_bytes; }
int CudaProgram::gpu_steps() const { return impl_->gpu_steps; }
int CudaProgram::cpu_steps() const { return impl_->cpu_steps; }
void CudaProgram::set_profiling(bool on) {
  Impl& m = *impl_;
  m.profiling = on;
  if (on && m.step_events.empty()) {
    m.step_events.resize(2 * m.steps.size());
    for (cudaEvent_t& e : m.step_events) cudaEventCreate(&e);
    m.cpu_step_ms.assign(m.steps.size(), 0.0);
  }
}

std::vector<StepTime> CudaProgram::last_profile() const {
  const Impl& m = *impl_;
  std::vector<StepTime> out;
  if (!m.profiling) return out;
  cudaEventSynchronize(m.step_events.back());
  for (size_t i = 0; i < m.steps.size(); ++i) {
    const Impl::Step& st = m.steps[i];
    StepTime t;
    if (st.node != nullptr) {
      t.layer = st.node->name;
      t.op_type = st.node->op_type;
    } else {
      t.layer = m.slots[st.slot].name;
    }
    switch (st.kind) {
      case Impl::StepKind::kGpu: case Impl::StepKind::kView: t.where = "cuda"; break;
      case Impl::StepKind::kCpu: t.where = "cpu"; break;
      case Impl::StepKind::kUpload: t.where = "upload"; break;
      case Impl::StepKind::kDownload: t.where = "download"; break;
    }
    if (st.kind == Impl::StepKind::kCpu) {
      t.ms = m.cpu_step_ms[i];
    } else {
      float ms = 0;
      cudaEventElapsedTime(&ms, m.step_events[2 * i], m.step_events[2 * i + 1]);
      t.ms = ms;
    }
    out.push_back(std::move(t));
  }
  cudaGetLastError();
  return out;
}

bool CudaProgram::uses_cuda_graph() const { return impl_->options.cuda_graph && impl_->graph_capturable; }

}  // namespace kiln::cuda
