// The CUDA backend: which nodes the CUDA kernels can run, and device memory. Every CUDA runtime call's
// error becomes a Status that names the call.
#include "backends/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <string>

#include "backends/cuda/layer.h"
#include "backends/cuda/tactic_timer.h"

namespace kiln::backends {

namespace {

using cuda::cuda_status;
#define KILN_CUDA_RETURN_IF_ERROR(call) KILN_CUDA_TRY(call)

class CudaBackend : public Backend {
 public:
  CudaBackend(int device, std::string device_name) : device_(device), device_name_(std::move(device_name)) {}

  std::string name() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }

  bool supports(const ir::Node& node, const ir::Graph& graph, int opset, std::string* why_not) const override {
    std::string why = cuda_layer_refusal(node, graph, opset);
    if (why_not) *why_not = why;
    return why.empty();
  }

  std::vector<Tactic> tactics(const ir::Node& node, const ir::Graph& graph, int opset) const override {
    if (!supports(node, graph, opset, nullptr)) return {};
    const cuda::LayerKind* kind = cuda::layer_table().find_for(node);
    if (kind->output_is_view_of_input0) return {Tactic{"cuda.view"}};
    std::vector<Tactic> out;
    if (kind->tactics) {
      for (auto& name : kind->tactics(cuda::make_layer_spec(node, graph, opset))) out.push_back(Tactic{name});
    }
    if (out.empty()) out.push_back(Tactic{"default"});
    return out;
  }

  bool can_lower_precision(const ir::Node& node) const override {
    const cuda::LayerKind* kind = cuda::layer_table().find_for(node);
    return kind != nullptr && kind->lowers_to_fp16;
  }

  Result<std::vector<TacticTime>> time_tactics(const ir::Node& node, const ir::Graph& graph, int opset,
                                               bool allow_tf32, const std::vector<std::string>& tactics) override {
    return cuda::time_tactics(node, graph, opset, allow_tf32, tactics);
  }

  Result<void*> allocate(size_t bytes) override {
    KILN_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // an out-of-memory error is not sticky: clear it so later launches do not report it
      return cuda_status(e, ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
    }
    return p;
  }
  void free(void* ptr) override {
    if (ptr != nullptr) cudaFree(ptr);
  }
  Status copy_to_device(void* dst, const void* src, size_t bytes) override {
    KILN_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return OkStatus();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    KILN_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return OkStatus();
  }

 private:
  int device_;
  std::string device_name_;
};

}  // namespace

bool cuda_device_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::string cuda_layer_refusal(const ir::Node& node, const ir::Graph& graph, int opset) {
  const cuda::LayerKind* kind = cuda::layer_table().find_for(node);
  if (kind == nullptr)
    return "no CUDA kernel for " + (node.domain.empty() || node.domain == "ai.onnx" ? "" : node.domain + ".") +
           node.op_type;
  cuda::LayerSpec spec = cuda::make_layer_spec(node, graph, opset);
  for (size_t i = 0; i < node.inputs.size(); ++i)
    if (!node.inputs[i].empty() && !spec.inputs[i].present())
      return "the type of input '" + node.inputs[i] + "' is not known";
  return kind->check(spec);
}

bool cuda_runs_in_half(const ir::Model& model, const ir::Node& node) {
  const cuda::LayerKind* kind = cuda::layer_table().find_for(node);
  if (kind == nullptr || !kind->lowers_to_fp16) return false;
  return cuda_layer_refusal(node, model.graph, model.opset_of(node)).empty();
}

Result<std::unique_ptr<Backend>> make_cuda_backend() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Unsupported(std::string("no CUDA device: cudaGetDeviceCount failed: ") + cudaGetErrorName(e) + ": " +
                       cudaGetErrorString(e));
  }
  if (n == 0) return Unsupported("no CUDA device: cudaGetDeviceCount found none");
  cudaDeviceProp prop;
  KILN_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  KILN_CUDA_RETURN_IF_ERROR(cudaSetDevice(0));
  std::string name = std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(0, std::move(name)));
}

}  // namespace kiln::backends
