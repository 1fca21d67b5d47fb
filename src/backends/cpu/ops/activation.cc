// CPU reference kernels: activations (Relu, LeakyRelu, PRelu, Elu, Selu, Celu, Sigmoid, HardSigmoid,
// HardSwish, Tanh, Softplus, Softsign, ThresholdedRelu, Shrink, Gelu, Mish, Swish) and Clip.
// float and double compute in their own type; float16 / bfloat16 in float32.
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/elementwise_util.h"
#include "backends/cpu/ops/fused_matmul.h"

namespace kiln::cpu {
namespace {

using elementwise::broadcast_map;
using elementwise::is_low_precision_float;
using elementwise::map_float;
using elementwise::map_numeric;
using elementwise::required_input;
using elementwise::sigmoid;


// log(1 + exp(x)) without overflow for large x.
template <class T>
T softplus(T x) {
  if (x > 0) return x + std::log1p(std::exp(-x));
  return std::log1p(std::exp(x));
}

Status relu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_numeric(ctx, x, [](auto v) -> decltype(v) {
    using T = decltype(v);
    return v < T(0) ? T(0) : v;  // NaN stays NaN, like numpy's maximum
  });
}

Status leaky_relu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 0.01f);
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    return v < T(0) ? v * static_cast<T>(alpha) : v;
  });
}

// PRelu: slope broadcasts to the shape of X (unidirectionally).
Status prelu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(Tensor slope, required_input(ctx, 1));
  if (x.dtype() != slope.dtype()) {
    return ctx.error("X and slope must have the same dtype, got " + dtype_name(x.dtype()) + " and " +
                     dtype_name(slope.dtype()));
  }
  // Before opset 7 a 1-D slope of C values was per channel (axis 1), not numpy-broadcast.
  if (ctx.opset() < 7 && slope.rank() == 1 && x.rank() >= 2 && slope.dim(0) == x.dim(1) && slope.dim(0) != 1) {
    Shape per_channel(static_cast<size_t>(x.rank() - 1), 1);
    per_channel[0] = slope.dim(0);
    slope = slope.reshaped(per_channel);
  }
  auto shape = broadcast_shapes(x.shape(), slope.shape());
  if (!shape.ok() || *shape != x.shape()) {
    return ctx.error("slope of shape " + shape_to_string(slope.shape()) + " does not broadcast to X's shape " +
                     shape_to_string(x.shape()));
  }
  const DType dtype = x.dtype();
  const bool narrow = is_low_precision_float(dtype);
  if (narrow) {
    x = widen_to_float32(x);
    slope = widen_to_float32(slope);
  }
  Result<Tensor> out = Tensor();
  bool ok = dispatch_numeric(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    out = broadcast_map<T, T, T>(ctx, x, slope, x.dtype(),
                                 [](T v, T s) -> T { return v < T(0) ? static_cast<T>(v * s) : v; });
  });
  if (!ok || dtype_is_sub_byte(dtype)) return ctx.error("unsupported dtype " + dtype_name(dtype));
  if (!out.ok()) return out.status();
  ctx.set_output(0, narrow ? narrow_from_float32(*out, dtype) : *out);
  return OkStatus();
}

Status elu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 1.0f);
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    return v < T(0) ? static_cast<T>(alpha) * (std::exp(v) - T(1)) : v;
  });
}

Status selu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 1.67326319217681884765625f);
  const float gamma = ctx.attr_float("gamma", 1.05070102519683105468750f);
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    const T a = static_cast<T>(alpha), g = static_cast<T>(gamma);
    return v > T(0) ? g * v : g * (a * std::exp(v) - a);
  });
}

Status celu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 1.0f);
  if (alpha == 0) return ctx.error("alpha must not be 0");
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    const T a = static_cast<T>(alpha);
    return std::max(T(0), v) + std::min(T(0), a * (std::exp(v / a) - T(1)));
  });
}

Status sigmoid_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_float(ctx, x, [](auto v) { return sigmoid(v); });
}

Status hard_sigmoid_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 0.2f);
  const float beta = ctx.attr_float("beta", 0.5f);
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    return std::max(T(0), std::min(T(1), static_cast<T>(alpha) * v + static_cast<T>(beta)));
  });
}

Status hard_swish_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_float(ctx, x, [](auto v) -> decltype(v) {
    using T = decltype(v);
    return v * std::max(T(0), std::min(T(1), v / T(6) + T(0.5)));
  });
}

Status tanh_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_float(ctx, x, [](auto v) { return std::tanh(v); });
}

Status softplus_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_float(ctx, x, [](auto v) { return softplus(v); });
}

Status softsign_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_float(ctx, x, [](auto v) -> decltype(v) { return v / (decltype(v)(1) + std::fabs(v)); });
}

Status thresholded_relu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 1.0f);
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    return v > static_cast<T>(alpha) ? v : T(0);
  });
}

// Shrink accepts integers too; the arithmetic is done in double and converted back.
Status shrink_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const double bias = ctx.attr_float("bias", 0.0f);
  const double lambd = ctx.attr_float("lambd", 0.5f);
  return map_numeric(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    const double d = static_cast<double>(v);
    if (d < -lambd) return static_cast<T>(d + bias);
    if (d > lambd) return static_cast<T>(d - bias);
    return T(0);
  });
}

}  // namespace

Status gelu_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, elementwise::required_input(ctx, 0));
  const std::string approximate = ctx.attr_string("approximate", "none");
  if (approximate == "none") return elementwise::map_float(ctx, x, [](auto v) { return gelu_erf(v); });
  if (approximate == "tanh") return elementwise::map_float(ctx, x, [](auto v) { return gelu_tanh(v); });
  return ctx.error("approximate must be 'none' or 'tanh', got '" + approximate + "'");
}

// kiln.Swish (fused_matmul.cc) runs this kernel too.
Status swish_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const float alpha = ctx.attr_float("alpha", 1.0f);
  return map_float(ctx, x, [=](auto v) -> decltype(v) {
    using T = decltype(v);
    return v * sigmoid(static_cast<T>(alpha) * v);
  });
}

namespace {

Status mish_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  return map_float(ctx, x, [](auto v) { return v * std::tanh(softplus(v)); });
}

// Clip: bounds are attributes before opset 11 and optional scalar inputs from opset 11. If min > max
// every element becomes max (ONNX spec).
Status clip_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 0));
  const DType dtype = x.dtype();
  if (!(dtype_is_float(dtype) || (dtype_is_integer(dtype) && !dtype_is_sub_byte(dtype))))
    return ctx.error("unsupported dtype " + dtype_name(dtype));
  const bool narrow = is_low_precision_float(dtype);
  if (narrow) x = widen_to_float32(x);
  Tensor bounds[2];
  for (size_t i = 1; i <= 2; ++i) {
    if (!ctx.has_input(i)) continue;
    KILN_ASSIGN_OR_RETURN(Tensor b, required_input(ctx, i));
    if (b.dtype() != dtype)
      return ctx.error("input " + std::to_string(i) + " has dtype " + dtype_name(b.dtype()) + ", expected " + dtype_name(dtype));
    if (b.numel() != 1)
      return ctx.error("input " + std::to_string(i) + " must be a scalar, got shape " + shape_to_string(b.shape()));
    bounds[i - 1] = narrow ? widen_to_float32(b) : b;
  }
  const bool old_style = ctx.opset() < 11;
  Tensor out(x.dtype(), x.shape());
  dispatch_numeric(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T lo = std::numeric_limits<T>::lowest();
    T hi = std::numeric_limits<T>::max();
    if constexpr (std::is_floating_point_v<T>) {
      lo = -std::numeric_limits<T>::infinity();
      hi = std::numeric_limits<T>::infinity();
      if (old_style) {
        lo = static_cast<T>(ctx.attr_float("min", -std::numeric_limits<float>::infinity()));
        hi = static_cast<T>(ctx.attr_float("max", std::numeric_limits<float>::infinity()));
      }
    }
    if (bounds[0].defined()) lo = bounds[0].data<T>()[0];
    if (bounds[1].defined()) hi = bounds[1].data<T>()[0];
    const T* src = x.data<T>();
    T* dst = out.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) {
      T v = src[i] < lo ? lo : src[i];
      dst[i] = v > hi ? hi : v;
    }
  });
  ctx.set_output(0, narrow ? narrow_from_float32(out, dtype) : out);
  return OkStatus();
}

}  // namespace

void register_activation_ops(ir::OpRegistry& r) {
  r.add("Relu", 6, relu_kernel);
  r.add("LeakyRelu", 6, leaky_relu_kernel);
  r.add("PRelu", 1, prelu_kernel);
  r.add("Elu", 6, elu_kernel);
  r.add("Selu", 6, selu_kernel);
  r.add("Celu", 12, celu_kernel);
  r.add("Sigmoid", 6, sigmoid_kernel);
  r.add("HardSigmoid", 6, hard_sigmoid_kernel);
  r.add("HardSwish", 14, hard_swish_kernel);
  r.add("Tanh", 6, tanh_kernel);
  r.add("Softplus", 1, softplus_kernel);
  r.add("Softsign", 1, softsign_kernel);
  r.add("ThresholdedRelu", 10, thresholded_relu_kernel);
  r.add("Shrink", 9, shrink_kernel);
  r.add("Gelu", 20, gelu_kernel);
  r.add("Mish", 18, mish_kernel);
  r.add("Swish", 24, swish_kernel);
  r.add("Clip", 6, clip_kernel);
}

}  // namespace kiln::cpu
