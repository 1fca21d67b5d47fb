// The backend interface (DESIGN.md principle 1): what a device can run, with which kernels (tactics),
// and how to hold and move its memory. The builder asks every backend whether it supports a node and
// assigns the node to the first one that does, in the order of preference for the target; what the GPU
// cannot run falls back to the CPU, which supports every op of the op table.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "ir/op_registry.h"
#include "kiln/status.h"

namespace kiln::backends {

// One way of running a node on a backend ("cpu.reference.conv", "cuda.cudnn.conv.algo3", ...).
struct Tactic {
  std::string name;
};

// A tactic's time at the build shapes; ms -1 when it could not run (then `error` says why).
struct TacticTime {
  std::string tactic;
  double ms = -1;
  std::string error;
  double setup_ms = -1;  // wall time to make the tactic ready (a cuDNN plan may compile kernels): build time
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu", "cuda"
  virtual std::string device_name() const = 0;  // "x86_64 CPU", "NVIDIA H100 80GB HBM3 (sm_90)"

  // Whether this backend can run `node` (of a graph whose value types are inferred); when it cannot,
  // *why_not says why, for the build report.
  virtual bool supports(const ir::Node& node, const ir::Graph& graph, int opset, std::string* why_not) const = 0;
  // The kernels that can run `node`, best guess first; the builder times them where it can.
  virtual std::vector<Tactic> tactics(const ir::Node& node, const ir::Graph& graph, int opset) const = 0;

  // Whether `node`, which this backend supports, may compute in float16/bfloat16 (--fp16, --bf16).
  virtual bool can_lower_precision(const ir::Node& node) const { return false; }
  // Times each tactic of `node` at its static build shapes on the device (the builder picks the fastest).
  virtual Result<std::vector<TacticTime>> time_tactics(const ir::Node& node, const ir::Graph& graph, int opset,
                                                       bool allow_tf32, const std::vector<std::string>& tactics) {
    return Unsupported(name() + " backend does not time tactics");
  }

  // Device memory. The CPU backend's is host memory.
  virtual Result<void*> allocate(size_t bytes) = 0;
  virtual void free(void* ptr) = 0;
  virtual Status copy_to_device(void* dst, const void* src, size_t bytes) = 0;
  virtual Status copy_to_host(void* dst, const void* src, size_t bytes) = 0;
};

// The CPU backend: the reference kernels of the op table, one per op.
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace kiln::backends
