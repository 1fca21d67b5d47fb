// CPU reference of the optimizer's kiln.FusedConv (domain "kiln"): Y = activation(Conv(X, W) + B + Z), in
// the ONNX layout (channels_last = 0) or NHWC / KRSC (channels_last = 1), then, with attribute `pool` (channels
// last only; made by fuse_conv_pool), that pool of Y ("max": MaxPool with pool_kernel_shape, pool_strides,
// pool_pads). The activation is "" (none), Relu,
// Clip (bounds activation_min / activation_max, default unbounded), LeakyRelu (activation_alpha, default
// 0.01), Sigmoid, Silu (x * sigmoid(x)) or HardSwish, each as the ONNX op of that name computes it. It is the oracle of the CUDA layer
// and of the fusion passes, so it is built from the Conv reference itself: channels-last tensors are moved
// to channels-first, convolved, and moved back; Z and the activation are applied in float32 (for half
// types), before the one rounding back to X's dtype, as the fused CUDA kernel does.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"
#include "backends/cpu/ops/conv_util.h"
#include "backends/cpu/ops/elementwise_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

// Moves the channel axis of a float32/float64 tensor between position 1 ([N, C, S...]) and the last
// position ([N, S..., C]): a transpose of [N, A, B] to [N, B, A] with A, B the channels and the spatial size.
Tensor move_channels(const Tensor& t, bool to_first) {
  const Shape& s = t.shape();
  const size_t r = s.size();
  const int64_t n = s[0], c = to_first ? s[r - 1] : s[1];
  Shape spatial = to_first ? Shape(s.begin() + 1, s.end() - 1) : Shape(s.begin() + 2, s.end());
  const int64_t sp = shape_numel(spatial);
  Shape out_shape = {n};
  if (to_first) out_shape.push_back(c);
  out_shape.insert(out_shape.end(), spatial.begin(), spatial.end());
  if (!to_first) out_shape.push_back(c);
  const int64_t a = to_first ? sp : c, b = to_first ? c : sp;  // the input is [n, a, b]
  Tensor out(t.dtype(), out_shape);
  dispatch_float(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* src = t.data<T>();
    T* dst = out.data<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < a; ++j)
        for (int64_t k = 0; k < b; ++k) dst[(i * b + k) * a + j] = src[(i * a + j) * b + k];
  });
  return out;
}

// The activation and its parameters, read once from the node's attributes.
struct Activation {
  std::string name;
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  float alpha = 0.01f;

  // As activation.cc's references compute them, in T (float or double), so that a fused node and the
  // nodes it replaced agree to the last bit.
  template <class T>
  T apply(T v) const {
    using elementwise::sigmoid;
    if (name == "Relu") return v < T(0) ? T(0) : v;  // NaN stays NaN, as in Relu
    if (name == "Clip") {
      const T c = v < static_cast<T>(lo) ? static_cast<T>(lo) : v;  // lo > hi gives hi everywhere, as Clip
      return c > static_cast<T>(hi) ? static_cast<T>(hi) : c;
    }
    if (name == "LeakyRelu") return v < T(0) ? v * static_cast<T>(alpha) : v;
    if (name == "Sigmoid") return sigmoid(v);
    if (name == "Silu") return v * sigmoid(v);
    if (name == "HardSwish") return v * std::max(T(0), std::min(T(1), v / T(6) + T(0.5)));
    return v;
  }
};

Result<Activation> read_activation(const KernelContext& ctx) {
  Activation a;
  a.name = ctx.attr_string("activation", "");
  static const char* const kNames[] = {"", "Relu", "Clip", "LeakyRelu", "Sigmoid", "Silu", "HardSwish"};
  if (std::find(std::begin(kNames), std::end(kNames), a.name) == std::end(kNames))
    return ctx.error("activation '" + a.name + "' is not one of \"\" (none), Relu, Clip, LeakyRelu, Sigmoid, Silu or HardSwish");
  a.lo = ctx.attr_float("activation_min", a.lo);
  a.hi = ctx.attr_float("activation_max", a.hi);
  a.alpha = ctx.attr_float("activation_alpha", a.alpha);
  if (std::isnan(a.lo) || std::isnan(a.hi) || std::isnan(a.alpha))
    return ctx.error("activation_min, activation_max and activation_alpha must not be NaN");
  return a;
}

Status fused_conv_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs X and W are required");
  const Tensor& x0 = ctx.input(0);
  const Tensor& w0 = ctx.input(1);
  KILN_ASSIGN_OR_RETURN(const Activation activation, read_activation(ctx));
  const int64_t channels_last = ctx.attr_int("channels_last", 0);
  if (channels_last != 0 && channels_last != 1)
    return ctx.error("channels_last " + std::to_string(channels_last) + " must be 0 or 1");
  const char* layout = channels_last ? "[N, D1, ..., C]" : "[N, C, D1, ...]";
  if (x0.rank() < 3) return ctx.error(std::string("X must be ") + layout + ", got " + x0.description());
  if (w0.rank() != x0.rank()) return ctx.error("W " + w0.description() + " must have X's rank " + std::to_string(x0.rank()));
  for (size_t i : {2, 3})
    if (ctx.has_input(i) && ctx.input(i).dtype() != x0.dtype())
      return ctx.error(std::string(i == 2 ? "B " : "Z ") + ctx.input(i).description() + " must have X's dtype " +
                       dtype_name(x0.dtype()));
  const DType t = x0.dtype();
  if (t != DType::kFloat32 && t != DType::kFloat64 && t != DType::kFloat16 && t != DType::kBFloat16)
    return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");

  const Tensor* b = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  Tensor y;
  if (channels_last) {
    Tensor x = move_channels(widen_to_float32(x0), true), w = move_channels(widen_to_float32(w0), true);
    KILN_ASSIGN_OR_RETURN(Tensor y_first, conv_reference(ctx, x, w, b));
    y = move_channels(y_first, false);
  } else {
    KILN_ASSIGN_OR_RETURN(y, conv_reference(ctx, x0, w0, b));
  }
  if (ctx.has_input(3) && ctx.input(3).shape() != y.shape())
    return ctx.error("Z " + ctx.input(3).description() + " must have Y's shape " + shape_to_string(y.shape()));
  const Tensor z = ctx.has_input(3) ? widen_to_float32(ctx.input(3)) : Tensor();
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yd = y.data<T>();
    const T* zd = z.defined() ? z.data<T>() : nullptr;
    for (int64_t i = 0; i < y.numel(); ++i) {
      yd[i] = activation.apply(zd ? yd[i] + zd[i] : yd[i]);
    }
  });
  Tensor out = narrow_back(y, x0.dtype());
  // The optional max pool of fuse_conv_pool, on the rounded output, as the separate pool node computed it.
  if (ctx.node().attr("pool") != nullptr) {
    if (!channels_last) return ctx.error("a pool needs channels_last = 1");
    std::map<std::string, ir::Attribute> attrs;
    for (const char* name : {"kernel_shape", "strides", "pads"})
      if (const ir::Attribute* a = ctx.node().attr(std::string("pool_") + name)) attrs[name] = *a;
    KILN_ASSIGN_OR_RETURN(out, channels_last_pool(ctx, out, ctx.attr_string("pool", ""), std::move(attrs)));
  }
  ctx.set_output(0, std::move(out));
  return OkStatus();
}

}  // namespace

void register_fused_conv_ops(ir::OpRegistry& r) { r.add(e2::domain_schema("kiln", "FusedConv", 1, fused_conv_kernel)); }

}  // namespace kiln::cpu
