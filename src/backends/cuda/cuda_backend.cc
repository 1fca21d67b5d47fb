// The CUDA backend: which nodes the CUDA kernels can run, and device memory. Every CUDA runtime call's
// error becomes a Status that names the call.
#include "backends/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <string>

#include "backends/cuda/kernels.h"

namespace kiln::backends {

namespace {

Status cuda_status(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return OkStatus();
  return Internal(std::string(call) + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
#define KILN_CUDA_RETURN_IF_ERROR(call) KILN_RETURN_IF_ERROR(cuda_status((call), #call))

DType input_dtype(const ir::Node& node, const ir::Graph& graph, size_t i) {
  if (i >= node.inputs.size() || node.inputs[i].empty()) return DType::kUndefined;
  const ir::TypeInfo* t = graph.type_of(node.inputs[i]);
  return t == nullptr ? DType::kUndefined : t->dtype;
}

bool float_type(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

bool fail(std::string* why_not, std::string message) {
  if (why_not) *why_not = std::move(message);
  return false;
}

class CudaBackend : public Backend {
 public:
  CudaBackend(int device, std::string device_name) : device_(device), device_name_(std::move(device_name)) {}

  std::string name() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }

  bool supports(const ir::Node& node, const ir::Graph& graph, int opset, std::string* why_not) const override {
    if (!node.domain.empty() && node.domain != "ai.onnx")
      return fail(why_not, "no CUDA kernel for domain '" + node.domain + "'");
    const std::string& op = node.op_type;
    const DType dt = input_dtype(node, graph, 0);
    cuda::UnaryOp u;
    cuda::BinaryOp b;
    if (op == "Cast") {
      const ir::Attribute* to = node.attr("to");
      if (to == nullptr) return fail(why_not, "Cast without 'to'");
      const DType target = static_cast<DType>(to->i);
      if (!cuda::cast_supports(dt, target))
        return fail(why_not, "CUDA Cast from " + dtype_name(dt) + " to " + dtype_name(target) + " is not implemented");
      return true;
    }
    if (op == "Where") {
      if (input_dtype(node, graph, 0) != DType::kBool) return fail(why_not, "CUDA Where needs a bool condition");
      const DType xt = input_dtype(node, graph, 1);
      if (!float_type(xt) || input_dtype(node, graph, 2) != xt)
        return fail(why_not, "CUDA Where supports float32, float16 and bfloat16 values, got " + dtype_name(xt));
      return true;
    }
    if (op != "GeluTanh" && cuda::unary_op_from_name(op.c_str(), &u)) {
      if (!float_type(dt)) return fail(why_not, "CUDA " + op + " supports float32, float16 and bfloat16, got " + dtype_name(dt));
      if (op == "Gelu") {
        const ir::Attribute* a = node.attr("approximate");
        if (a != nullptr && a->s != "none" && a->s != "tanh")
          return fail(why_not, "CUDA Gelu: approximate '" + a->s + "'");
      }
      if (op == "Clip") {
        for (size_t i = 1; i < node.inputs.size(); ++i) {
          if (node.inputs[i].empty()) continue;
          if (graph.initializers.count(node.inputs[i]) == 0)
            return fail(why_not, "CUDA Clip needs constant min and max");
        }
      }
      return true;
    }
    if (cuda::binary_op_from_name(op.c_str(), &b)) {
      if (node.inputs.size() != 2)
        return fail(why_not, "CUDA " + op + " takes exactly two inputs, got " + std::to_string(node.inputs.size()));
      if (opset < 7) return fail(why_not, "CUDA " + op + ": opset " + std::to_string(opset) + " broadcasting (axis) is not implemented");
      const DType bt = input_dtype(node, graph, 1);
      if (!float_type(dt) || bt != dt)
        return fail(why_not, "CUDA " + op + " supports float32, float16 and bfloat16 (both inputs alike), got " +
                                 dtype_name(dt) + " and " + dtype_name(bt));
      return true;
    }
    return fail(why_not, "no CUDA kernel for " + op);
  }

  std::vector<Tactic> tactics(const ir::Node& node, const ir::Graph& graph, int opset) const override {
    if (!supports(node, graph, opset, nullptr)) return {};
    return {Tactic{"cuda.elementwise." + node.op_type}};
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
