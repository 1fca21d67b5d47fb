// Helpers shared by the elementwise kernels (elementwise_unary.cc, elementwise_binary.cc, activation.cc,
// logical.cc): map a function over a tensor, and over two broadcast tensors.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu::elementwise {

// Logistic function, written so that exp never overflows (Sigmoid, Swish, and the activations fused into
// kiln.FusedConv all compute it this way, so that a fused node and the nodes it replaced agree to the bit).
template <class T>
T sigmoid(T x) {
  if (x >= 0) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

inline bool is_low_precision_float(DType t) {
  return t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat8E4M3FN ||
         t == DType::kFloat8E4M3FNUZ || t == DType::kFloat8E5M2 || t == DType::kFloat8E5M2FNUZ ||
         t == DType::kFloat4E2M1 || t == DType::kFloat8E8M0;
}

// Input i, which must be present and a tensor.
inline Result<Tensor> required_input(const KernelContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is missing");
  if (!ctx.input_value(i).is_tensor()) return ctx.error("input " + std::to_string(i) + " must be a tensor");
  return ctx.input(i);
}

// Before opset 7, binary ops did not broadcast like numpy: with broadcast=1, B matched A's dimensions
// starting at `axis` (default: A's trailing dimensions); without it, shapes had to be equal. Returns B
// reshaped so that numpy broadcasting gives that meaning.
inline Result<Tensor> legacy_broadcast(const KernelContext& ctx, const Tensor& a, const Tensor& b) {
  if (ctx.opset() >= 7) return b;
  if (ctx.attr_int("broadcast", 0) == 0) {
    if (a.shape() != b.shape())
      return ctx.error("inputs of shapes " + shape_to_string(a.shape()) + " and " + shape_to_string(b.shape()) +
                       " differ and the broadcast attribute is not set (opset " + std::to_string(ctx.opset()) + ")");
    return b;
  }
  if (!ctx.has_attr("axis")) return b;
  int64_t axis = ctx.attr_int("axis", 0);
  if (axis < 0) axis += a.rank();
  if (axis < 0 || axis + b.rank() > a.rank())
    return ctx.error("axis " + std::to_string(ctx.attr_int("axis", 0)) + " does not place B " +
                     shape_to_string(b.shape()) + " inside A " + shape_to_string(a.shape()));
  Shape aligned = b.shape();
  aligned.resize(static_cast<size_t>(a.rank() - axis), 1);
  return b.reshaped(aligned);
}

inline Status unsupported_dtype(const KernelContext& ctx, const Tensor& t, size_t input = 0) {
  return ctx.error("unsupported dtype " + dtype_name(t.dtype()) + " for input " + std::to_string(input));
}

// y = f(x) for a floating-point x: float and double are computed in their own type, float16, bfloat16
// and fp8 in float32 and narrowed back. `f` is a generic lambda taking and returning T.
template <class F>
Status map_float(KernelContext& ctx, const Tensor& x, F&& f) {
  const DType dtype = x.dtype();
  Tensor in = is_low_precision_float(dtype) ? widen_to_float32(x) : x;
  Tensor out;
  bool ok = dispatch_float(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    out = Tensor(in.dtype(), in.shape());
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    for (int64_t i = 0, n = in.numel(); i < n; ++i) dst[i] = static_cast<T>(f(src[i]));
  });
  if (!ok) return unsupported_dtype(ctx, x);
  ctx.set_output(0, is_low_precision_float(dtype) ? narrow_from_float32(out, dtype) : out);
  return OkStatus();
}

// Like map_float but integers too (computed in their own type).
template <class F>
Status map_numeric(KernelContext& ctx, const Tensor& x, F&& f) {
  if (dtype_is_integer(x.dtype()) && !dtype_is_sub_byte(x.dtype())) {
    Tensor out(x.dtype(), x.shape());
    dispatch_int(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* src = x.data<T>();
      T* dst = out.data<T>();
      for (int64_t i = 0, n = x.numel(); i < n; ++i) dst[i] = static_cast<T>(f(src[i]));
    });
    ctx.set_output(0, out);
    return OkStatus();
  }
  return map_float(ctx, x, f);
}

// out[i] = f(a[ia], b[ib]) with numpy broadcasting. TA, TB, TO are the storage types of a, b, out.
template <class TA, class TB, class TO, class F>
Result<Tensor> broadcast_map(const KernelContext& ctx, const Tensor& a, const Tensor& b, DType out_dtype, F&& f) {
  auto shape = broadcast_shapes(a.shape(), b.shape());
  if (!shape.ok()) return ctx.error(shape.status().message());
  Tensor out(out_dtype, *shape);
  const int64_t n = out.numel();
  const TA* pa = a.data<TA>();
  const TB* pb = b.data<TB>();
  TO* po = out.data<TO>();
  if (a.shape() == *shape && b.shape() == *shape) {
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i]);
  } else {
    const std::vector<int64_t> ia = broadcast_index_map(a.shape(), *shape);
    const std::vector<int64_t> ib = broadcast_index_map(b.shape(), *shape);
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[ia[i]], pb[ib[i]]);
  }
  return out;
}

}  // namespace kiln::cpu::elementwise
