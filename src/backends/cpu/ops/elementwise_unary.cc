// CPU reference kernels: elementwise unary math (Abs, Neg, Exp, Sin, Round, ...), IsNaN, IsInf, Not,
// BitwiseNot. Floating-point types are computed in their own precision (float16 / bfloat16 in float32);
// integer types, where the op allows them, in their own type.
#include <cmath>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/elementwise_util.h"

namespace kiln::cpu {
namespace {

using elementwise::map_float;
using elementwise::map_numeric;
using elementwise::required_input;

// A kernel computing a float-only function: KILN_FLOAT_UNARY(exp_kernel, std::exp(v)).
#define KILN_FLOAT_UNARY(NAME, EXPR)                               \
  Status NAME(KernelContext& ctx) {                                \
    KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));       \
    return map_float(ctx, x, [](auto v) -> decltype(v) { return EXPR; }); \
  }

KILN_FLOAT_UNARY(reciprocal_kernel, decltype(v)(1) / v)
KILN_FLOAT_UNARY(floor_kernel, std::floor(v))
KILN_FLOAT_UNARY(ceil_kernel, std::ceil(v))
// std::nearbyint rounds half to even in the default rounding mode, like numpy.round.
KILN_FLOAT_UNARY(round_kernel, std::nearbyint(v))
KILN_FLOAT_UNARY(sqrt_kernel, std::sqrt(v))
KILN_FLOAT_UNARY(exp_kernel, std::exp(v))
KILN_FLOAT_UNARY(log_kernel, std::log(v))
KILN_FLOAT_UNARY(sin_kernel, std::sin(v))
KILN_FLOAT_UNARY(cos_kernel, std::cos(v))
KILN_FLOAT_UNARY(tan_kernel, std::tan(v))
KILN_FLOAT_UNARY(asin_kernel, std::asin(v))
KILN_FLOAT_UNARY(acos_kernel, std::acos(v))
KILN_FLOAT_UNARY(atan_kernel, std::atan(v))
KILN_FLOAT_UNARY(sinh_kernel, std::sinh(v))
KILN_FLOAT_UNARY(cosh_kernel, std::cosh(v))
KILN_FLOAT_UNARY(asinh_kernel, std::asinh(v))
KILN_FLOAT_UNARY(acosh_kernel, std::acosh(v))
KILN_FLOAT_UNARY(atanh_kernel, std::atanh(v))
#undef KILN_FLOAT_UNARY

Status erf_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  // ONNX allows integer Erf: the result is erf() truncated back to the integer type.
  return map_numeric(ctx, x, [](auto v) -> decltype(v) {
    using T = decltype(v);
    if constexpr (std::is_integral_v<T>) return static_cast<T>(std::erf(static_cast<double>(v)));
    else return std::erf(v);
  });
}

Status abs_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_numeric(ctx, x, [](auto v) -> decltype(v) {
    using T = decltype(v);
    if constexpr (std::is_unsigned_v<T>) return v;
    else if constexpr (std::is_floating_point_v<T>) return std::fabs(v);
    else return static_cast<T>(v < 0 ? -v : v);  // wraps for the minimum value, like numpy
  });
}

Status neg_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  if (dtype_is_unsigned_int(x.dtype())) return ctx.error("Neg does not accept unsigned " + dtype_name(x.dtype()));
  return map_numeric(ctx, x, [](auto v) -> decltype(v) {
    using T = decltype(v);
    if constexpr (std::is_integral_v<T>) {
      // Negate in unsigned arithmetic so that the minimum value wraps instead of overflowing.
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(U(0) - static_cast<U>(v));
    } else {
      return -v;
    }
  });
}

Status sign_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_numeric(ctx, x, [](auto v) -> decltype(v) {
    using T = decltype(v);
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(v)) return v;
    }
    return static_cast<T>(v > T(0) ? 1 : (v < T(0) ? -1 : 0));
  });
}

// IsNaN / IsInf: float input of any precision, bool output.
template <class Pred>
Status float_predicate(KernelContext& ctx, Pred pred) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  if (!dtype_is_float(x.dtype())) return ctx.error("expects a floating-point input, got " + dtype_name(x.dtype()));
  Tensor in = x.dtype() == DType::kFloat64 ? x : widen_to_float32(x);
  Tensor out(DType::kBool, x.shape());
  dispatch_float(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* src = in.data<T>();
    for (int64_t i = 0, n = in.numel(); i < n; ++i) out.data<bool>()[i] = pred(src[i]);
  });
  ctx.set_output(0, out);
  return OkStatus();
}

Status isnan_kernel(KernelContext& ctx) {
  return float_predicate(ctx, [](auto v) { return std::isnan(v); });
}

Status isinf_kernel(KernelContext& ctx) {
  const bool positive = ctx.attr_int("detect_positive", 1) != 0;
  const bool negative = ctx.attr_int("detect_negative", 1) != 0;
  return float_predicate(ctx, [&](auto v) { return std::isinf(v) && (v > 0 ? positive : negative); });
}

Status not_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  if (x.dtype() != DType::kBool) return ctx.error("Not expects a bool input, got " + dtype_name(x.dtype()));
  Tensor out(DType::kBool, x.shape());
  for (int64_t i = 0, n = x.numel(); i < n; ++i) out.data<bool>()[i] = !x.data<bool>()[i];
  ctx.set_output(0, out);
  return OkStatus();
}

Status bitwise_not_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  Tensor out(x.dtype(), x.shape());
  bool ok = dispatch_int(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0, n = x.numel(); i < n; ++i) out.data<T>()[i] = static_cast<T>(~x.data<T>()[i]);
  });
  if (!ok) return ctx.error("BitwiseNot expects an integer input, got " + dtype_name(x.dtype()));
  ctx.set_output(0, out);
  return OkStatus();
}

}  // namespace

void register_elementwise_unary_ops(ir::OpRegistry& r) {
  r.add("Abs", 6, abs_kernel);
  r.add("Neg", 6, neg_kernel);
  r.add("Reciprocal", 6, reciprocal_kernel);
  r.add("Floor", 6, floor_kernel);
  r.add("Ceil", 6, ceil_kernel);
  r.add("Round", 11, round_kernel);
  r.add("Sqrt", 6, sqrt_kernel);
  r.add("Exp", 6, exp_kernel);
  r.add("Log", 6, log_kernel);
  r.add("Sin", 7, sin_kernel);
  r.add("Cos", 7, cos_kernel);
  r.add("Tan", 7, tan_kernel);
  r.add("Asin", 7, asin_kernel);
  r.add("Acos", 7, acos_kernel);
  r.add("Atan", 7, atan_kernel);
  r.add("Sinh", 9, sinh_kernel);
  r.add("Cosh", 9, cosh_kernel);
  r.add("Asinh", 9, asinh_kernel);
  r.add("Acosh", 9, acosh_kernel);
  r.add("Atanh", 9, atanh_kernel);
  r.add("Erf", 9, erf_kernel);
  r.add("Sign", 9, sign_kernel);
  r.add("IsNaN", 9, isnan_kernel);
  r.add("IsInf", 10, isinf_kernel);
  r.add("Not", 1, not_kernel);
  r.add("BitwiseNot", 18, bitwise_not_kernel);
}

}  // namespace kiln::cpu
