#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/status.h"
#include "kiln/tensor.h"
#include "kiln/value.h"

namespace kiln {

namespace engine {
struct Plan;
}
class ExecutionContext;

enum class TensorIOMode { kNone, kInput, kOutput };

// Where execute() puts an output whose size is known only after the run (TensorRT's IOutputAllocator):
// the outputs of NonZero, Unique, NonMaxSuppression, TopK with a run-time k, and anything computed from
// them. Set one per output with ExecutionContext::set_output_allocator; one object may serve many outputs
// and contexts, so on many threads it must be thread-safe.
class OutputAllocator {
 public:
  virtual ~OutputAllocator() = default;
  // Called after the run with the output's exact size in bytes: returns memory of at least `size` bytes
  // aligned to `alignment`, or null to fail the run (then nothing is written). `current` is the memory this
  // output was last given (by this allocator, else by set_tensor_address), or null: return it when it is
  // large enough. A size of 0 may get null back.
  virtual void* reallocate_output(const std::string& name, void* current, size_t size, size_t alignment) = 0;
  // Called once the output's data is in that memory: its shape in this run.
  virtual void notify_shape(const std::string& name, const Shape& shape) = 0;
};

// One input's range in an optimization profile: a context of that profile accepts any shape with
// min[i] <= shape[i] <= max[i] in every dimension; opt is the shape the build tunes for. With `values`, the
// input is a shape tensor (an integer input of rank 0 or 1 whose values decide shapes, as Reshape's target;
// OptimizationProfile::set_shape_values) and min/opt/max bound its values elementwise, not its shape.
struct ProfileShapes {
  Shape min, opt, max;
  bool values = false;
  bool operator==(const ProfileShapes&) const = default;
};

// An optimized model, immutable once built or deserialized: one engine serves many execution contexts,
// on many threads at once.
class Engine : public std::enable_shared_from_this<Engine> {
 public:
  ~Engine();

  int num_io_tensors() const;
  std::string io_tensor_name(int index) const;  // inputs first, then outputs
  TensorIOMode tensor_io_mode(const std::string& name) const;
  DType tensor_dtype(const std::string& name) const;
  // The shape as built, with -1 for a dynamic dimension; empty for an unknown name or unknown rank.
  Shape tensor_shape(const std::string& name) const;

  // Optimization profiles the engine was built with (BuilderConfig::add_optimization_profile); 0 for an
  // engine built without, whose dynamic inputs take any shape.
  int num_optimization_profiles() const;
  // An input's min/opt/max in a profile; a static input the profile does not name has its one shape three
  // times. NotFound for a name that is not an input, InvalidArgument for a profile out of range.
  Result<ProfileShapes> get_profile_shape(const std::string& name, int profile) const;
  // A shape-tensor input's min/opt/max values in a profile (its `values` is true). NotFound for a name that
  // is not an input or that the profile gives no values, InvalidArgument for a profile out of range.
  Result<ProfileShapes> get_profile_shape_values(const std::string& name, int profile) const;

  Result<std::vector<uint8_t>> serialize() const;
  std::unique_ptr<ExecutionContext> create_execution_context();

  // A readable description: I/O tensors, layers with backend and kernel, weight and activation memory.
  std::string inspect() const;
  const engine::Plan& plan() const { return *plan_; }

  // Used by Builder and Runtime.
  static Result<std::shared_ptr<Engine>> create(engine::Plan plan);

 private:
  Engine() = default;
  friend class ExecutionContext;
  friend class Builder;  // measures each optimization profile's memory at its max shapes
  struct State;
  std::unique_ptr<engine::Plan> plan_;
  std::unique_ptr<State> state_;
};

// Per-request state for one engine (shapes, bound buffers, results). Use one per thread.
class ExecutionContext {
 public:
  explicit ExecutionContext(std::shared_ptr<Engine> engine);
  ~ExecutionContext();

  // Selects the optimization profile whose ranges this context's input shapes must lie in (0 by default).
  // InvalidArgument when out of range; an engine without profiles has only profile 0.
  Status set_optimization_profile(int profile);
  int optimization_profile() const { return profile_; }
  // Sets the shape of an input whose shape is dynamic (also accepted for static inputs when equal). In an
  // engine with profiles the shape must lie inside the context's profile (execute() checks it again).
  Status set_input_shape(const std::string& name, const Shape& shape);
  // The values of a shape-tensor input (one the context's profile gives values) for enqueue(), which
  // cannot read them from device memory: required before enqueue for such inputs, and they must lie inside
  // the profile. execute() takes the values from the input's data instead.
  Status set_input_values(const std::string& name, std::vector<int64_t> values);
  // Binds a host buffer: an input's data, or where an output is written after execute(). The buffer must
  // stay valid until execute() returns; an output buffer must be large enough for the output's shape as
  // output_shape() gives it.
  Status set_tensor_address(const std::string& name, void* data);
  // Gives an output an allocator (not owned; it must outlive the context's runs), which execute() asks for
  // the output's memory once its size is known; null clears it. Needed for a bound output whose shape
  // depends on the data. NotFound for a name that is not an output.
  Status set_output_allocator(const std::string& name, OutputAllocator* allocator);
  // An output's shape for the input shapes set (set_input_shape, or static), before any run; InvalidArgument
  // when an input's shape is missing, Unsupported when the output's shape depends on the data (or shape
  // inference cannot fix it): such an output needs an OutputAllocator to be bound.
  Result<Shape> output_shape(const std::string& name);
  // Runs the engine on the bound inputs, writing each output to its bound buffer or allocator's memory:
  // outputs whose shape depends on the data need an allocator (else an error before anything runs); an
  // output with an allocator and a bound buffer offers that buffer to the allocator first.
  Status execute();
  // Runs on named input tensors and returns every output by name (no binding needed).
  Result<std::map<std::string, Tensor>> execute(const std::map<std::string, Tensor>& inputs);

  // Runs on named input values (tensors, sequences, optionals) and returns the outputs in graph order.
  Result<std::vector<Value>> execute_values(const std::map<std::string, Value>& inputs);

  // GPU engines, TensorRT's enqueue: runs on the caller's CUDA stream (a cudaStream_t; nullptr: the
  // context's own) with every input and output bound by set_device_address, and returns without waiting for
  // the GPU. Input shapes come from set_input_shape (or are static). Every layer must be on the GPU.
  Status set_device_address(const std::string& name, void* device_ptr);
  Status enqueue(void* cuda_stream);
  // GPU engines: capture the GPU work of a run into a CUDA graph once and replay it (lower launch cost).
  // Takes effect at the next run; ignored on the CPU.
  void set_cuda_graph(bool on);
  // GPU engines: the times of the last run, from CUDA events (milliseconds; zero on the CPU).
  struct RunTimes {
    double h2d_ms = 0, compute_ms = 0, d2h_ms = 0;
    double enqueue_ms = 0;  // host time to enqueue the whole run (before waiting for it)
  };
  RunTimes last_run_times() const;
  // GPU engines: runs the computation again on the inputs of the last run, without copying inputs or
  // outputs (what `kiln bench --no-data-transfers` times). Fails if nothing ran yet.
  Status execute_compute_only();
  // GPU engines: time every step of the next runs (CUDA events around each layer; no CUDA graph), and
  // the times of the last run, in execution order (empty on the CPU or without profiling).
  struct LayerTime {
    std::string layer, op_type, where;  // where: "cuda", "cpu", "upload" or "download"
    double ms = 0;
  };
  void set_profiling(bool on);
  std::vector<LayerTime> last_layer_times() const;
  // GPU engines: the device memory this context holds beyond the engine's weights and its I/O (after the
  // first run), else 0: activation_bytes() = its activation arena + the layers' shared scratch workspace
  // (cuBLASLt split-K and cuDNN algorithms' scratch), each also on its own. Every program of the context
  // (one per input shapes seen) uses the same arena and workspace, sized for the largest of them, or for the
  // profile's max shapes when the engine measured them.
  size_t activation_bytes() const;
  size_t arena_bytes() const;
  size_t workspace_bytes() const;

  // GPU engines: the context keeps the programs it planned, one per input shapes, CUDA graph setting and
  // stream it ran with (each with its captured CUDA graph), in a cache of the most recently used: a shape
  // seen again runs without planning or capturing again. Capacity >= 1 (8 by default), else
  // InvalidArgument; a smaller capacity drops the least recently used at once. A change of optimization
  // profile empties the cache.
  Status set_shape_cache_capacity(int capacity);
  struct ShapeCacheStats {
    uint64_t hits = 0;    // GPU runs that found their program in the cache
    uint64_t misses = 0;  // GPU runs that planned one
    int size = 0;         // programs held now
    int capacity = 8;
  };
  ShapeCacheStats shape_cache_stats() const;

  // After execute(): an output's shape (or an input's, as set).
  Shape tensor_shape(const std::string& name) const;
  // After execute(): the output tensor (owned by the context until the next execute()).
  const Tensor* output(const std::string& name) const;

 private:
  friend class Builder;  // prepares a program at each profile's max shapes to measure its memory
  std::shared_ptr<Engine> engine_;
  std::map<std::string, Shape> input_shapes_;
  std::map<std::string, std::vector<int64_t>> input_values_;  // set_input_values
  std::map<std::string, void*> addresses_;
  std::map<std::string, void*> device_addresses_;
  std::map<std::string, Tensor> outputs_;
  // Per output with an allocator: the allocator, and the memory it last returned (null before).
  struct AllocatedOutput {
    OutputAllocator* allocator = nullptr;
    void* memory = nullptr;
  };
  std::map<std::string, AllocatedOutput> allocators_;
  // Each output's shape as shape inference fixes it for the input shapes in `for_inputs` (not fixed: it
  // depends on the data, or inference cannot tell; `inferred` says what inference found, for messages).
  // output_shape and execute() reuse them while the input shapes stay the same.
  struct PredictedShape {
    bool fixed = false;
    Shape shape;
    std::string inferred;
  };
  struct PredictedShapes {
    bool valid = false;
    std::map<std::string, Shape> for_inputs;
    std::map<std::string, std::vector<int64_t>> for_values;  // shape-tensor inputs' values, bound as constants
    std::map<std::string, PredictedShape> outputs;
  };
  PredictedShapes predicted_;
  Status predict_output_shapes(const std::map<std::string, Shape>& input_shapes,
                               const std::map<std::string, std::vector<int64_t>>& values);
  struct DeviceState;  // the GPU programs of a CUDA engine and their memory (api/engine.cc)
  // `values`: the shape-tensor inputs' values, bound into the program as constants.
  Status prepare_device_program(const std::map<std::string, Shape>& shapes,
                                const std::map<std::string, std::vector<int64_t>>& values, void* stream);
  std::unique_ptr<DeviceState> device_;
  bool cuda_graph_ = false;
  bool profiling_ = false;
  int profile_ = 0;
};

}  // namespace kiln
