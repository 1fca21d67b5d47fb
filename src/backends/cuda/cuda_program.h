// Running an engine's graph on the GPU. A CudaProgram is one execution context's executable form of the
// graph at concrete input shapes: every node assigned to CUDA becomes a layer of the CUDA op table; nodes
// the GPU cannot run (or whose shapes are only known from data) run on the CPU reference kernels, with
// explicit copies between the two; device tensors live in one arena planned by liveness (the program's own,
// or memory its caller lends it: an execution context's programs share one); weights are the
// engine's, uploaded once (DeviceWeights) and shared by every context. No cudaMalloc happens during a run.
//
// This header names no CUDA type, so that the runtime and the API can use it without the CUDA headers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/value.h"
#include "ir/graph.h"
#include "kiln/logger.h"
#include "kiln/status.h"

namespace kiln::cuda {

// An engine's initializers in device memory (those that CUDA layers read), shared by all its contexts.
class DeviceWeights {
 public:
  static Result<std::shared_ptr<DeviceWeights>> upload(const ir::Graph& graph, const std::set<std::string>& names);
  ~DeviceWeights();
  const void* find(const std::string& name) const;
  size_t bytes() const { return bytes_; }

 private:
  DeviceWeights() = default;
  std::map<std::string, void*> ptrs_;
  size_t bytes_ = 0;
};

// How a node of the engine's graph runs, from the plan (by node name).
struct NodePlacement {
  std::string backend;    // "cuda" or "cpu"
  std::string tactic;
  bool allow_tf32 = true;
};

// Device memory freed with its owner: what an execution context lends its programs (ProgramOptions).
class DeviceAllocation {
 public:
  // OutOfRange, naming `what` and the size, when the device has not that much free.
  static Result<std::unique_ptr<DeviceAllocation>> allocate(size_t bytes, const std::string& what);
  ~DeviceAllocation();
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  DeviceAllocation() = default;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Device memory a program uses without owning it (ProgramOptions::lend_memory).
struct LentMemory {
  void* arena = nullptr;      // the activation arena: at least the arena bytes asked for
  void* workspace = nullptr;  // the layers' shared scratch: at least the workspace bytes asked for
};

struct ProgramOptions {
  bool cuda_graph = false;  // capture the GPU launches once and replay them (only when no CPU step sits between)
  void* stream = nullptr;   // a cudaStream_t to run on (the caller's); nullptr: a stream of the program's own
  // Shape-tensor inputs' values (optimization profiles with values): bound as constants before folding, so
  // that what they decide (Reshape targets) is fixed for the GPU; the inputs are no longer read at run time.
  std::map<std::string, std::vector<int64_t>> input_values;
  // Where the activation arena and the workspace come from. Unset: the program allocates its own. Set:
  // called once, when planning knows both sizes and before any address is bound into a layer or a CUDA
  // graph; what it returns must stay valid, at those addresses, for the program's whole life, and must not
  // be written by anything else while the program's work may be in flight. An execution context lends all
  // its programs the same memory, since it runs one at a time.
  std::function<Result<LentMemory>(size_t arena_bytes, size_t workspace_bytes)> lend_memory;
};

// Times of the last run, from CUDA events on the stream (milliseconds).
struct RunTimes {
  float h2d_ms = 0, compute_ms = 0, d2h_ms = 0;
  double enqueue_ms = 0;  // host time from the start of upload() to the return of download()
};

// One step's time in a profiled run.
struct StepTime {
  std::string layer;    // node name
  std::string op_type;
  std::string where;    // "cuda", "cpu", "upload", "download"
  double ms = 0;        // GPU time (CUDA events) for GPU steps and copies, host time for CPU steps
};

class CudaProgram {
 public:
  static Result<std::unique_ptr<CudaProgram>> create(const ir::Model& model,
                                                     const std::map<std::string, NodePlacement>& placement,
                                                     std::shared_ptr<const DeviceWeights> weights,
                                                     const std::map<std::string, Shape>& input_shapes,
                                                     const ProgramOptions& options, Logger* logger);
  ~CudaProgram();

  const std::map<std::string, Shape>& input_shapes() const;
  // Host inputs in, host outputs out (graph order); the copies go through pinned buffers.
  Result<std::vector<Value>> run(const std::map<std::string, Value>& inputs);
  // For benchmarks: the pieces of run() without host-side waits. upload() copies host inputs to the
  // device, launch() enqueues the computation, download() the outputs, synchronize() waits.
  Status upload(const std::map<std::string, Value>& inputs);
  Status launch();
  Status download();
  Status synchronize();
  // Device inputs in, device outputs out, on the program's stream, without waiting: copies each input
  // from `inputs` (device pointers, at the planned shapes) into the arena, launches, copies each output to
  // `outputs`. Only for programs with every layer on the GPU.
  Status enqueue_device(const std::map<std::string, const void*>& inputs, const std::map<std::string, void*>& outputs);
  // The shape planned for a graph input or output, empty for another name.
  Shape planned_shape(const std::string& name) const;
  RunTimes last_run_times() const;

  size_t activation_bytes() const;  // the arena this program needs (its own, or a part of lent memory)
  size_t workspace_bytes() const;
  int gpu_steps() const;
  int cpu_steps() const;
  bool uses_cuda_graph() const;
  // With profiling on, runs time every step (CUDA events around each GPU step; no CUDA graph) and
  // last_profile() returns the times of the last run, in step order.
  void set_profiling(bool on);
  std::vector<StepTime> last_profile() const;

 private:
  CudaProgram();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::cuda
