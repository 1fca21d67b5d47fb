// CUDA layers with bool results: the comparisons (Equal, Greater, GreaterOrEqual, Less, LessOrEqual) and the
// logical ops (And, Or, Xor) with numpy broadcasting, Not, IsNaN and IsInf. Exporters build attention masks
// from them (BERT's padding mask: Cast, Equal, And, Where, IsNaN), so without them a transformer's every
// layer would cross to the CPU and back. bool is one byte per element, 0 or 1, as on the host.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "backends/cuda/broadcast.cuh"
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

enum class CompareOp { kEqual, kGreater, kGreaterOrEqual, kLess, kLessOrEqual, kAnd, kOr, kXor };

struct CompareName {
  const char* name;
  CompareOp op;
};
constexpr CompareName kCompareNames[] = {
    {"Equal", CompareOp::kEqual}, {"Greater", CompareOp::kGreater},     {"GreaterOrEqual", CompareOp::kGreaterOrEqual},
    {"Less", CompareOp::kLess},   {"LessOrEqual", CompareOp::kLessOrEqual}, {"And", CompareOp::kAnd},
    {"Or", CompareOp::kOr},       {"Xor", CompareOp::kXor},
};

bool is_logical(CompareOp op) { return op == CompareOp::kAnd || op == CompareOp::kOr || op == CompareOp::kXor; }

// Values compared in their own type (int64 beyond 2^24 must not go through float); half types widen exactly.
template <class T>
__device__ __forceinline__ auto widen(T v) {
  if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) return to_f(v);
  else return v;
}

template <CompareOp OP, class T>
__device__ __forceinline__ bool compare_fn(T a, T b) {
  const auto x = widen(a);
  const auto y = widen(b);
  if constexpr (OP == CompareOp::kEqual) return x == y;
  else if constexpr (OP == CompareOp::kGreater) return x > y;
  else if constexpr (OP == CompareOp::kGreaterOrEqual) return x >= y;
  else if constexpr (OP == CompareOp::kLess) return x < y;
  else if constexpr (OP == CompareOp::kLessOrEqual) return x <= y;
  else if constexpr (OP == CompareOp::kAnd) return (x != 0) && (y != 0);
  else if constexpr (OP == CompareOp::kOr) return (x != 0) || (y != 0);
  else return (x != 0) != (y != 0);
}

template <CompareOp OP, class T>
__global__ void compare_kernel(const T* __restrict__ a, const T* __restrict__ b, bool* __restrict__ y, int64_t n,
                               Broadcast<2> bc) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    broadcast_offsets<2>(i, bc, off);
    y[i] = compare_fn<OP>(a[off[0]], b[off[1]]);
  }
}

// The element types a comparison reads: float32/16/bf16, int32, int64, bool (as uint8).
template <class F>
bool dispatch_compare_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(Tag<float>{}); return true;
    case DType::kFloat16: f(Tag<__half>{}); return true;
    case DType::kBFloat16: f(Tag<__nv_bfloat16>{}); return true;
    case DType::kInt32: f(Tag<int32_t>{}); return true;
    case DType::kInt64: f(Tag<int64_t>{}); return true;
    case DType::kBool: f(Tag<uint8_t>{}); return true;
    default: return false;
  }
}

template <CompareOp OP>
Status launch_compare_op(DType dtype, const void* a, const void* b, bool* y, int64_t n, const Broadcast<2>& bc,
                         cudaStream_t s) {
  const bool ok = dispatch_compare_type(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    compare_kernel<OP, T><<<grid_for(n), kThreads, 0, s>>>(static_cast<const T*>(a), static_cast<const T*>(b), y, n, bc);
  });
  if (!ok) return Unsupported("CUDA comparison: dtype " + dtype_name(dtype));
  return launch_status("compare_kernel");
}

class CompareLayer final : public Layer {
 public:
  explicit CompareLayer(CompareOp op) : op_(op) {}
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    const int64_t n = shape_numel(out[0].shape);
    if (n == 0) return OkStatus();
    Broadcast<2> bc;
    const Shape shapes[2] = {in[0].shape, in[1].shape};
    if (!make_broadcast<2>(shapes, out[0].shape, &bc))
      return InvalidArgument("CUDA comparison: " + shape_to_string(in[0].shape) + " and " +
                             shape_to_string(in[1].shape) + " do not broadcast to " + shape_to_string(out[0].shape));
    bool* y = static_cast<bool*>(out[0].data);
    const DType t = in[0].dtype;
    switch (op_) {
      case CompareOp::kEqual: return launch_compare_op<CompareOp::kEqual>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kGreater: return launch_compare_op<CompareOp::kGreater>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kGreaterOrEqual:
        return launch_compare_op<CompareOp::kGreaterOrEqual>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kLess: return launch_compare_op<CompareOp::kLess>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kLessOrEqual:
        return launch_compare_op<CompareOp::kLessOrEqual>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kAnd: return launch_compare_op<CompareOp::kAnd>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kOr: return launch_compare_op<CompareOp::kOr>(t, in[0].data, in[1].data, y, n, bc, h.stream);
      case CompareOp::kXor: return launch_compare_op<CompareOp::kXor>(t, in[0].data, in[1].data, y, n, bc, h.stream);
    }
    return Internal("CUDA comparison: unknown op");
  }

 private:
  CompareOp op_;
};

// Not, IsNaN, IsInf: one input, a bool per element.
enum class TestOp { kNot, kIsNaN, kIsInf };

template <TestOp OP, class T>
__global__ void test_kernel(const T* __restrict__ x, bool* __restrict__ y, int64_t n, bool pos, bool neg) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if constexpr (OP == TestOp::kNot) {
      y[i] = x[i] == 0;
    } else {
      const float v = to_f(x[i]);
      if constexpr (OP == TestOp::kIsNaN) y[i] = v != v;
      else y[i] = (pos && v == INFINITY) || (neg && v == -INFINITY);
    }
  }
}

class TestLayer final : public Layer {
 public:
  TestLayer(TestOp op, bool pos, bool neg) : op_(op), pos_(pos), neg_(neg) {}
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    const int64_t n = in[0].numel();
    if (n == 0) return OkStatus();
    bool* y = static_cast<bool*>(out[0].data);
    if (op_ == TestOp::kNot) {
      test_kernel<TestOp::kNot, uint8_t><<<grid_for(n), kThreads, 0, h.stream>>>(static_cast<const uint8_t*>(in[0].data), y, n, false, false);
      return launch_status("Not");
    }
    const bool ok = dispatch_float(in[0].dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* x = static_cast<const T*>(in[0].data);
      if (op_ == TestOp::kIsNaN) test_kernel<TestOp::kIsNaN, T><<<grid_for(n), kThreads, 0, h.stream>>>(x, y, n, pos_, neg_);
      else test_kernel<TestOp::kIsInf, T><<<grid_for(n), kThreads, 0, h.stream>>>(x, y, n, pos_, neg_);
    });
    if (!ok) return Unsupported("CUDA IsNaN/IsInf: dtype " + dtype_name(in[0].dtype));
    return launch_status(op_ == TestOp::kIsNaN ? "IsNaN" : "IsInf");
  }

 private:
  TestOp op_;
  bool pos_, neg_;
};

bool float_type(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

std::string check_compare(const LayerSpec& spec, CompareOp op) {
  const std::string& type = spec.node->op_type;
  if (spec.inputs.size() != 2) return "CUDA " + type + " takes exactly two inputs";
  if (spec.opset < 7) return "CUDA " + type + ": opset " + std::to_string(spec.opset) + " broadcasting (axis) is not implemented";
  const DType a = spec.inputs[0].dtype, b = spec.inputs[1].dtype;
  if (a != b) return "CUDA " + type + ": inputs are " + dtype_name(a) + " and " + dtype_name(b);
  if (is_logical(op) && a != DType::kBool) return "CUDA " + type + " takes bool inputs, got " + dtype_name(a);
  if (!is_logical(op) && !float_type(a) && a != DType::kInt32 && a != DType::kInt64 && a != DType::kBool)
    return "CUDA " + type + " supports float32, float16, bfloat16, int32, int64 and bool, got " + dtype_name(a);
  if (spec.inputs[0].has_rank && spec.inputs[1].has_rank &&
      std::max(spec.inputs[0].shape.size(), spec.inputs[1].shape.size()) > static_cast<size_t>(kMaxRank))
    return "CUDA " + type + ": more than " + std::to_string(kMaxRank) + " dims";
  return "";
}

std::string check_test(const LayerSpec& spec, TestOp op) {
  const std::string& type = spec.node->op_type;
  if (spec.inputs.size() != 1) return "CUDA " + type + " takes one input";
  const DType t = spec.inputs[0].dtype;
  if (op == TestOp::kNot) return t == DType::kBool ? "" : "CUDA Not takes a bool input, got " + dtype_name(t);
  return float_type(t) ? "" : "CUDA " + type + " supports float32, float16 and bfloat16, got " + dtype_name(t);
}

}  // namespace

void register_logical_layers(LayerTable& table) {
  for (const CompareName& c : kCompareNames) {
    LayerKind k;
    k.op_type = c.name;
    const CompareOp op = c.op;
    k.check = [op](const LayerSpec& spec) { return check_compare(spec, op); };
    k.create = [op](const LayerSpec&, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      return std::unique_ptr<Layer>(std::make_unique<CompareLayer>(op));
    };
    // A comparison stays in the model's precision: rounding both sides to float16 can change its answer.
    k.lowers_to_fp16 = false;
    table.add(std::move(k));
  }
  const struct {
    const char* name;
    TestOp op;
  } tests[] = {{"Not", TestOp::kNot}, {"IsNaN", TestOp::kIsNaN}, {"IsInf", TestOp::kIsInf}};
  for (const auto& t : tests) {
    LayerKind k;
    k.op_type = t.name;
    const TestOp op = t.op;
    k.check = [op](const LayerSpec& spec) { return check_test(spec, op); };
    k.create = [op](const LayerSpec& spec, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      const bool pos = spec.attr_int("detect_positive", 1) != 0, neg = spec.attr_int("detect_negative", 1) != 0;
      return std::unique_ptr<Layer>(std::make_unique<TestLayer>(op, pos, neg));
    };
    k.lowers_to_fp16 = op != TestOp::kNot;
    table.add(std::move(k));
  }
}

}  // namespace kiln::cuda
