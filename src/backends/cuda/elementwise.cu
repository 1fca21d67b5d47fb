// CUDA kernels for elementwise ops: unary math and activations, binary ops with numpy broadcasting, Where,
// and Cast. Memory-bound: where the operands are contiguous and 16-byte aligned each thread moves 16 bytes
// at a time (4 floats, 8 halves); broadcast shapes are collapsed to the fewest dims before launch, so the
// per-element index arithmetic runs over as few dims as the broadcast pattern allows.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <string>
#include <type_traits>

#include "backends/cuda/broadcast.cuh"
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/kernels.h"

namespace kiln::cuda {
namespace {

// Not the shared launch_status (layer.cc, "launch of X failed: ..."): the elementwise kernels' errors have
// always read "CUDA kernel X: ...", and are kept so.
Status kernel_status(const char* kernel) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return OkStatus();
  return Internal(std::string("CUDA kernel ") + kernel + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

template <class F>
bool dispatch_cast_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kInt32: f(Tag<int32_t>{}); return true;
    case DType::kInt64: f(Tag<int64_t>{}); return true;
    case DType::kBool: f(Tag<bool>{}); return true;  // to bool: v != 0; from bool: 0 or 1
    default: return dispatch_float(dtype, f);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Unary

__device__ __forceinline__ float sigmoid_f(float x) {
  if (x >= 0) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}
__device__ __forceinline__ float softplus_f(float x) {
  if (x > 0) return x + log1pf(expf(-x));
  return log1pf(expf(x));
}

template <UnaryOp OP>
__device__ __forceinline__ float unary_fn(float x, const UnaryParams& p) {
  if constexpr (OP == UnaryOp::kAbs) return fabsf(x);
  else if constexpr (OP == UnaryOp::kNeg) return -x;
  else if constexpr (OP == UnaryOp::kExp) return expf(x);
  else if constexpr (OP == UnaryOp::kLog) return logf(x);
  else if constexpr (OP == UnaryOp::kSqrt) return sqrtf(x);
  else if constexpr (OP == UnaryOp::kReciprocal) return 1.0f / x;
  else if constexpr (OP == UnaryOp::kSin) return sinf(x);
  else if constexpr (OP == UnaryOp::kCos) return cosf(x);
  else if constexpr (OP == UnaryOp::kTanh) return tanhf(x);
  else if constexpr (OP == UnaryOp::kErf) return erff(x);
  else if constexpr (OP == UnaryOp::kFloor) return floorf(x);
  else if constexpr (OP == UnaryOp::kCeil) return ceilf(x);
  else if constexpr (OP == UnaryOp::kRelu) return x < 0.0f ? 0.0f : x;  // NaN stays NaN
  else if constexpr (OP == UnaryOp::kLeakyRelu) return x < 0.0f ? x * p.alpha : x;
  else if constexpr (OP == UnaryOp::kElu) return x < 0.0f ? p.alpha * (expf(x) - 1.0f) : x;
  else if constexpr (OP == UnaryOp::kSigmoid) return sigmoid_f(x);
  else if constexpr (OP == UnaryOp::kHardSigmoid) return fmaxf(0.0f, fminf(1.0f, p.alpha * x + p.beta));
  else if constexpr (OP == UnaryOp::kHardSwish) return x * fmaxf(0.0f, fminf(1.0f, x / 6.0f + 0.5f));
  else if constexpr (OP == UnaryOp::kGeluErf) return 0.5f * x * (1.0f + erff(x / 1.41421356237309504880f));
  else if constexpr (OP == UnaryOp::kGeluTanh) {
    const float k = 0.79788456080286535588f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
  } else if constexpr (OP == UnaryOp::kSwish) return x * sigmoid_f(p.alpha * x);
  else if constexpr (OP == UnaryOp::kSoftplus) return softplus_f(x);
  else if constexpr (OP == UnaryOp::kClip) {
    const float v = x < p.lo ? p.lo : x;
    return v > p.hi ? p.hi : v;
  }
}

template <class T, UnaryOp OP>
__global__ void unary_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, UnaryParams p, bool vec) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t start = 0;
  if (vec) {
    constexpr int V = Pack<T>::kN;
    const int64_t nv = n / V;
    const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
    Pack<T>* yp = reinterpret_cast<Pack<T>*>(y);
    for (int64_t i = tid; i < nv; i += stride) {
      const Pack<T> a = xp[i];
      Pack<T> r;
#pragma unroll
      for (int k = 0; k < V; ++k) r.v[k] = from_f<T>(unary_fn<OP>(to_f(a.v[k]), p));
      yp[i] = r;
    }
    start = nv * V;
  }
  for (int64_t i = start + tid; i < n; i += stride) y[i] = from_f<T>(unary_fn<OP>(to_f(x[i]), p));
}

template <class T, UnaryOp OP>
void launch_unary_t(const void* x, void* y, int64_t n, const UnaryParams& p, cudaStream_t s) {
  const bool vec = aligned16(x) && aligned16(y);
  const int64_t items = vec ? (n / Pack<T>::kN + n % Pack<T>::kN) : n;
  unary_kernel<T, OP><<<grid_for(items), kThreads, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(y), n, p, vec);
}

template <class T>
void launch_unary_dispatch(UnaryOp op, const void* x, void* y, int64_t n, const UnaryParams& p, cudaStream_t s) {
  switch (op) {
#define KILN_UNARY_CASE(OP) \
  case UnaryOp::OP: launch_unary_t<T, UnaryOp::OP>(x, y, n, p, s); break;
    KILN_UNARY_CASE(kAbs) KILN_UNARY_CASE(kNeg) KILN_UNARY_CASE(kExp) KILN_UNARY_CASE(kLog)
    KILN_UNARY_CASE(kSqrt) KILN_UNARY_CASE(kReciprocal) KILN_UNARY_CASE(kSin) KILN_UNARY_CASE(kCos)
    KILN_UNARY_CASE(kTanh) KILN_UNARY_CASE(kErf) KILN_UNARY_CASE(kFloor) KILN_UNARY_CASE(kCeil)
    KILN_UNARY_CASE(kRelu) KILN_UNARY_CASE(kLeakyRelu) KILN_UNARY_CASE(kElu) KILN_UNARY_CASE(kSigmoid)
    KILN_UNARY_CASE(kHardSigmoid) KILN_UNARY_CASE(kHardSwish) KILN_UNARY_CASE(kGeluErf)
    KILN_UNARY_CASE(kGeluTanh) KILN_UNARY_CASE(kSwish) KILN_UNARY_CASE(kSoftplus) KILN_UNARY_CASE(kClip)
#undef KILN_UNARY_CASE
  }
}

struct UnaryName {
  const char* name;
  UnaryOp op;
};
constexpr UnaryName kUnaryNames[] = {
    {"Abs", UnaryOp::kAbs},         {"Neg", UnaryOp::kNeg},
    {"Exp", UnaryOp::kExp},         {"Log", UnaryOp::kLog},
    {"Sqrt", UnaryOp::kSqrt},       {"Reciprocal", UnaryOp::kReciprocal},
    {"Sin", UnaryOp::kSin},         {"Cos", UnaryOp::kCos},
    {"Tanh", UnaryOp::kTanh},       {"Erf", UnaryOp::kErf},
    {"Floor", UnaryOp::kFloor},     {"Ceil", UnaryOp::kCeil},
    {"Relu", UnaryOp::kRelu},       {"LeakyRelu", UnaryOp::kLeakyRelu},
    {"Elu", UnaryOp::kElu},         {"Sigmoid", UnaryOp::kSigmoid},
    {"HardSigmoid", UnaryOp::kHardSigmoid}, {"HardSwish", UnaryOp::kHardSwish},
    {"Gelu", UnaryOp::kGeluErf},    {"GeluTanh", UnaryOp::kGeluTanh},
    {"Swish", UnaryOp::kSwish},     {"Softplus", UnaryOp::kSoftplus},
    {"Clip", UnaryOp::kClip},
};

// ---------------------------------------------------------------------------------------------------------
// Binary

template <BinaryOp OP>
__device__ __forceinline__ float binary_fn(float a, float b) {
  if constexpr (OP == BinaryOp::kAdd) return a + b;
  else if constexpr (OP == BinaryOp::kSub) return a - b;
  else if constexpr (OP == BinaryOp::kMul) return a * b;
  else if constexpr (OP == BinaryOp::kDiv) return a / b;
  else if constexpr (OP == BinaryOp::kPow) return powf(a, b);
  // NaN propagates, like numpy's maximum and minimum.
  else if constexpr (OP == BinaryOp::kMax) return (a != a || b != b) ? a + b : fmaxf(a, b);
  else if constexpr (OP == BinaryOp::kMin) return (a != a || b != b) ? a + b : fminf(a, b);
}

// Both operands either the output's shape or a single element: contiguous, vectorized where aligned.
template <class T, BinaryOp OP>
__global__ void binary_flat_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n,
                                   bool a_scalar, bool b_scalar, bool vec) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t start = 0;
  if (vec) {
    constexpr int V = Pack<T>::kN;
    const int64_t nv = n / V;
    const float as = to_f(a[0]), bs = to_f(b[0]);
    for (int64_t i = tid; i < nv; i += stride) {
      Pack<T> pa, pb, r;
      if (!a_scalar) pa = reinterpret_cast<const Pack<T>*>(a)[i];
      if (!b_scalar) pb = reinterpret_cast<const Pack<T>*>(b)[i];
#pragma unroll
      for (int k = 0; k < V; ++k)
        r.v[k] = from_f<T>(binary_fn<OP>(a_scalar ? as : to_f(pa.v[k]), b_scalar ? bs : to_f(pb.v[k])));
      reinterpret_cast<Pack<T>*>(y)[i] = r;
    }
    start = nv * V;
  }
  for (int64_t i = start + tid; i < n; i += stride)
    y[i] = from_f<T>(binary_fn<OP>(to_f(a[a_scalar ? 0 : i]), to_f(b[b_scalar ? 0 : i])));
}

template <class T, BinaryOp OP>
__global__ void binary_broadcast_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                        int64_t n, Broadcast<2> bc) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    broadcast_offsets<2>(i, bc, off);
    y[i] = from_f<T>(binary_fn<OP>(to_f(a[off[0]]), to_f(b[off[1]])));
  }
}

template <class T, BinaryOp OP>
void launch_binary_t(const void* a, const Shape& as, const void* b, const Shape& bs, void* y, const Shape& out,
                     int64_t n, const Broadcast<2>& bc, cudaStream_t s) {
  const bool a_flat = as == out || shape_numel(as) == 1;
  const bool b_flat = bs == out || shape_numel(bs) == 1;
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  T* py = static_cast<T*>(y);
  if (a_flat && b_flat) {
    const bool a_scalar = shape_numel(as) == 1 && n != 1;
    const bool b_scalar = shape_numel(bs) == 1 && n != 1;
    const bool vec = (a_scalar || aligned16(a)) && (b_scalar || aligned16(b)) && aligned16(y);
    const int64_t items = vec ? (n / Pack<T>::kN + n % Pack<T>::kN) : n;
    binary_flat_kernel<T, OP><<<grid_for(items), kThreads, 0, s>>>(pa, pb, py, n, a_scalar, b_scalar, vec);
  } else {
    binary_broadcast_kernel<T, OP><<<grid_for(n), kThreads, 0, s>>>(pa, pb, py, n, bc);
  }
}

struct BinaryName {
  const char* name;
  BinaryOp op;
};
constexpr BinaryName kBinaryNames[] = {
    {"Add", BinaryOp::kAdd}, {"Sub", BinaryOp::kSub}, {"Mul", BinaryOp::kMul}, {"Div", BinaryOp::kDiv},
    {"Pow", BinaryOp::kPow}, {"Max", BinaryOp::kMax}, {"Min", BinaryOp::kMin},
};

// ---------------------------------------------------------------------------------------------------------
// Where

template <class T>
__global__ void where_kernel(const bool* __restrict__ c, const T* __restrict__ x, const T* __restrict__ y,
                             T* __restrict__ out, int64_t n, Broadcast<3> bc) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[3];
    broadcast_offsets<3>(i, bc, off);
    out[i] = c[off[0]] ? x[off[1]] : y[off[2]];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Cast

template <class To, class From>
__device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<To, From>) return v;
  else if constexpr (std::is_integral_v<To>) {
    if constexpr (std::is_integral_v<From>) return static_cast<To>(v);
    else return static_cast<To>(to_f(v));  // truncates toward zero
  } else {
    if constexpr (std::is_integral_v<From>) return from_f<To>(static_cast<float>(v));
    else return from_f<To>(to_f(v));
  }
}

template <class From, class To>
__global__ void cast_kernel(const From* __restrict__ x, To* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = convert<To>(x[i]);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Public API

bool broadcast_shape(const Shape& a, const Shape& b, Shape* out) {
  const size_t r = a.size() > b.size() ? a.size() : b.size();
  Shape s(r, 1);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1) return false;
    s[i] = da == 1 ? db : da;
  }
  *out = s;
  return true;
}

bool unary_op_from_name(const char* op_type, UnaryOp* op) {
  for (const auto& u : kUnaryNames) {
    if (std::strcmp(u.name, op_type) == 0) {
      *op = u.op;
      return true;
    }
  }
  return false;
}
const char* unary_op_name(UnaryOp op) {
  for (const auto& u : kUnaryNames)
    if (u.op == op) return u.name;
  return "?";
}
bool unary_supports(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

Status launch_unary(UnaryOp op, DType dtype, const void* x, void* y, int64_t n, const UnaryParams& params,
                    cudaStream_t stream) {
  if (n < 0) return InvalidArgument("unary kernel: negative element count");
  if (n == 0) return OkStatus();
  const bool ok = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_unary_dispatch<T>(op, x, y, n, params, stream);
  });
  if (!ok) return Unsupported(std::string("CUDA ") + unary_op_name(op) + ": dtype " + dtype_name(dtype));
  return kernel_status(unary_op_name(op));
}

bool binary_op_from_name(const char* op_type, BinaryOp* op) {
  for (const auto& b : kBinaryNames) {
    if (std::strcmp(b.name, op_type) == 0) {
      *op = b.op;
      return true;
    }
  }
  return false;
}
const char* binary_op_name(BinaryOp op) {
  for (const auto& b : kBinaryNames)
    if (b.op == op) return b.name;
  return "?";
}
bool binary_supports(DType dtype) { return unary_supports(dtype); }

Status launch_binary(BinaryOp op, DType dtype, const void* a, const Shape& a_shape, const void* b,
                     const Shape& b_shape, void* y, const Shape& out_shape, cudaStream_t stream) {
  Shape expect;
  if (!broadcast_shape(a_shape, b_shape, &expect) || expect != out_shape) {
    return InvalidArgument(std::string("CUDA ") + binary_op_name(op) + ": shapes " + shape_to_string(a_shape) +
                           " and " + shape_to_string(b_shape) + " do not broadcast to " + shape_to_string(out_shape));
  }
  const int64_t n = shape_numel(out_shape);
  if (n == 0) return OkStatus();
  Broadcast<2> bc;
  const Shape shapes[2] = {a_shape, b_shape};
  if (!make_broadcast<2>(shapes, out_shape, &bc))
    return Unsupported(std::string("CUDA ") + binary_op_name(op) + ": more than 8 dims after collapsing");
  const bool ok = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (op) {
#define KILN_BINARY_CASE(OP) \
  case BinaryOp::OP: launch_binary_t<T, BinaryOp::OP>(a, a_shape, b, b_shape, y, out_shape, n, bc, stream); break;
      KILN_BINARY_CASE(kAdd) KILN_BINARY_CASE(kSub) KILN_BINARY_CASE(kMul) KILN_BINARY_CASE(kDiv)
      KILN_BINARY_CASE(kPow) KILN_BINARY_CASE(kMax) KILN_BINARY_CASE(kMin)
#undef KILN_BINARY_CASE
    }
  });
  if (!ok) return Unsupported(std::string("CUDA ") + binary_op_name(op) + ": dtype " + dtype_name(dtype));
  return kernel_status(binary_op_name(op));
}

Status launch_where(DType dtype, const void* cond, const Shape& cond_shape, const void* x, const Shape& x_shape,
                    const void* y, const Shape& y_shape, void* out, const Shape& out_shape, cudaStream_t stream) {
  Shape s1, s2;
  if (!broadcast_shape(cond_shape, x_shape, &s1) || !broadcast_shape(s1, y_shape, &s2) || s2 != out_shape) {
    return InvalidArgument("CUDA Where: shapes " + shape_to_string(cond_shape) + ", " + shape_to_string(x_shape) +
                           " and " + shape_to_string(y_shape) + " do not broadcast to " + shape_to_string(out_shape));
  }
  const int64_t n = shape_numel(out_shape);
  if (n == 0) return OkStatus();
  Broadcast<3> bc;
  const Shape shapes[3] = {cond_shape, x_shape, y_shape};
  if (!make_broadcast<3>(shapes, out_shape, &bc)) return Unsupported("CUDA Where: more than 8 dims after collapsing");
  const bool ok = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    where_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const bool*>(cond), static_cast<const T*>(x),
                                                           static_cast<const T*>(y), static_cast<T*>(out), n, bc);
  });
  if (!ok) return Unsupported("CUDA Where: dtype " + dtype_name(dtype));
  return kernel_status("Where");
}

bool cast_supports(DType from, DType to) {
  auto ok = [](DType t) {
    return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kInt32 ||
           t == DType::kInt64 || t == DType::kBool;
  };
  return ok(from) && ok(to);
}

Status launch_cast(DType from, const void* x, DType to, void* y, int64_t n, cudaStream_t stream) {
  if (!cast_supports(from, to))
    return Unsupported("CUDA Cast: " + dtype_name(from) + " to " + dtype_name(to) + " is not implemented");
  if (n <= 0) return OkStatus();
  dispatch_cast_type(from, [&](auto ftag) {
    using F = typename decltype(ftag)::type;
    dispatch_cast_type(to, [&](auto ttag) {
      using T = typename decltype(ttag)::type;
      cast_kernel<F, T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const F*>(x), static_cast<T*>(y), n);
    });
  });
  return kernel_status("Cast");
}

}  // namespace kiln::cuda
