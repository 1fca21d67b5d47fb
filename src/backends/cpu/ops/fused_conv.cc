// CPU reference of the optimizer's kiln.FusedConv (domain "kiln"): Y = activation(Conv(X, W) + B + Z), in
// the ONNX layout (channels_last = 0) or NHWC / KRSC (channels_last = 1), then, with attribute `pool` (channels
// last only; made by fuse_conv_pool), that pool of Y ("max": MaxPool with pool_kernel_shape, pool_strides,
// pool_pads). The activation is "" (none), Relu,
// Clip (bounds activation_min / activation_max, default unbounded), LeakyRelu (activation_alpha, default
// 0.01), Sigmoid, Silu (x * sigmoid(x)) or HardSwish, each as the ONNX op of that name computes it. It is the oracle of the CUDA layer
// and of the fusion passes, so it is built from the Conv reference itself: channels-last tensors are moved
// to channels-first, convolved, and moved back; Z and the activation are applied in float32 (for half
// types), before the one rounding back to X's dtype, as the fused CUDA kernel does.
//
// Also kiln.FusedConvPair (made by fuse_conv_pair): two channels-last 1x1 convs, Y = activation(X W^T + B + Z)
// and Y2 = second_activation(Y W2^T + B2), the second reading Y as rounded to X's dtype. It runs the same
// steps as two kiln.FusedConv nodes, so that it agrees with the pair it replaces to the last bit. With its
// optional input X2 (fuse_conv_pair folds the channel Concat that fed X), the first conv reads
// Concat(X, X2) along the channels, X's first: the concatenation is made here, exactly, in X's dtype. Its
// attribute output_strides (sample_pair_output) keeps Y's pixels at those strides only; output_channels and
// output_channel_offset (write_concat_in_place) place Y's channels in a wider Y, zeros around them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <utility>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"
#include "backends/cpu/ops/conv_util.h"
#include "backends/cpu/ops/elementwise_util.h"
#include "backends/cpu/ops/gemm_util.h"
#include "backends/cpu/ops/movement_util.h"

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

// A channels-last conv (X [N, D..., C], W [M, k..., C/group]) by the Conv reference with the attributes of
// ctx's node: X and W moved to channels-first, convolved with the bias B (may be null) added, and the result
// moved back, [N, O..., M], in float32 for half types (float64 stays float64).
Result<Tensor> channels_last_conv(const KernelContext& ctx, const Tensor& x0, const Tensor& w0, const Tensor* b) {
  Tensor x = move_channels(widen_to_float32(x0), true), w = move_channels(widen_to_float32(w0), true);
  KILN_ASSIGN_OR_RETURN(Tensor y_first, conv_reference(ctx, x, w, b));
  return move_channels(y_first, false);
}

// The fused epilogue on a conv's float32/float64 output y: + Z (may be null; y's shape, checked by the
// caller), then the activation, in y's type, before the one rounding back to `dtype`.
Tensor finish(Tensor y, const Tensor* z0, const Activation& activation, DType dtype) {
  const Tensor z = z0 != nullptr ? widen_to_float32(*z0) : Tensor();
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yd = y.data<T>();
    const T* zd = z.defined() ? z.data<T>() : nullptr;
    for (int64_t i = 0; i < y.numel(); ++i) {
      yd[i] = activation.apply(zd ? yd[i] + zd[i] : yd[i]);
    }
  });
  return narrow_back(y, dtype);
}

bool is_reference_float(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
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
  if (!is_reference_float(x0.dtype())) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");

  const Tensor* b = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  Tensor y;
  if (channels_last) {
    KILN_ASSIGN_OR_RETURN(y, channels_last_conv(ctx, x0, w0, b));
  } else {
    KILN_ASSIGN_OR_RETURN(y, conv_reference(ctx, x0, w0, b));
  }
  if (ctx.has_input(3) && ctx.input(3).shape() != y.shape())
    return ctx.error("Z " + ctx.input(3).description() + " must have Y's shape " + shape_to_string(y.shape()));
  Tensor out = finish(std::move(y), ctx.has_input(3) ? &ctx.input(3) : nullptr, activation, x0.dtype());
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

// kiln.FusedConvPair's inputs, in order: X [N, H, W, C0a], W [C1, 1, 1, C0], B [C1], Z [N, H, W, C1],
// W2 [C2, 1, 1, C1], B2 [C2], X2 [N, H, W, C0b]; B, Z, B2 and X2 optional; C0 = C0a + C0b (C0a without X2).
constexpr size_t kPairX = 0, kPairW = 1, kPairB = 2, kPairZ = 3, kPairW2 = 4, kPairB2 = 5, kPairX2 = 6;
const char* const kPairInputs[] = {"X", "W", "B", "Z", "W2", "B2", "X2"};

// [N, H, W, a] and [N, H, W, b] of one dtype -> [N, H, W, a + b], pixel by pixel: the Concat the pass folded.
Tensor concat_channels(const Tensor& x, const Tensor& x2) {
  Tensor out(x.dtype(), {x.dim(0), x.dim(1), x.dim(2), x.dim(3) + x2.dim(3)});
  mv::write_channels(out, x, 0);
  mv::write_channels(out, x2, x.dim(3));
  return out;
}

// [N, H, W, C] -> [N, ceil(H / sh), ceil(W / sw), C]: the pixels (h, w) with h % sh == 0 and w % sw == 0.
Tensor sample_pixels(const Tensor& y, int64_t sh, int64_t sw) {
  const int64_t n = y.dim(0), h = y.dim(1), w = y.dim(2), c = y.dim(3);
  const int64_t ho = (h + sh - 1) / sh, wo = (w + sw - 1) / sw;
  Tensor out(y.dtype(), {n, ho, wo, c});
  const size_t pixel = c * dtype_size(y.dtype());
  auto* dst = static_cast<unsigned char*>(out.raw_data());
  const auto* src = static_cast<const unsigned char*>(y.raw_data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t a = 0; a < ho; ++a)
      for (int64_t b = 0; b < wo; ++b)
        std::memcpy(dst + ((i * ho + a) * wo + b) * pixel, src + ((i * h + a * sh) * w + b * sw) * pixel, pixel);
  return out;
}

// The pair's attribute `name`: "" or "Relu" (what the CUDA kernel applies).
Result<Activation> read_pair_activation(const KernelContext& ctx, const char* name) {
  Activation a;
  a.name = ctx.attr_string(name, "");
  if (!a.name.empty() && a.name != "Relu") return ctx.error(std::string(name) + " '" + a.name + "' is not \"\" (none) or Relu");
  return a;
}

Status fused_conv_pair_kernel(KernelContext& ctx) {
  if (!ctx.has_input(kPairX) || !ctx.has_input(kPairW) || !ctx.has_input(kPairW2))
    return ctx.error("inputs X, W and W2 are required");
  for (size_t i = 7; i < ctx.num_inputs(); ++i)  // rather than ignored: the result would be something else
    if (ctx.has_input(i)) return ctx.error("has 7 inputs (X, W, B, Z, W2, B2, X2), got input " + std::to_string(i));
  KILN_ASSIGN_OR_RETURN(const Activation activation, read_pair_activation(ctx, "activation"));
  KILN_ASSIGN_OR_RETURN(const Activation second, read_pair_activation(ctx, "second_activation"));
  // The Conv reference reads these from the node: the pair's convs have none of them.
  for (const char* a : {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
    if (ctx.has_attr(a)) return ctx.error(std::string("attribute '") + a + "' is not accepted: both convs are 1x1, stride 1, unpadded, one group");
  // sample_pair_output's: Y written at the pixels (h, w) with h % sh == 0 and w % sw == 0 only.
  const std::vector<int64_t> y_strides = ctx.attr_ints("output_strides", {1, 1});
  if (y_strides.size() != 2 || y_strides[0] < 1 || y_strides[1] < 1)
    return ctx.error("output_strides must be two strides >= 1, got " + shape_to_string(y_strides));
  const Tensor& x1 = ctx.input(kPairX);
  const Tensor& w = ctx.input(kPairW);
  const Tensor& w2 = ctx.input(kPairW2);
  const bool has_x2 = ctx.has_input(kPairX2);
  if (x1.rank() != 4) return ctx.error("X must be [N, H, W, C0], got " + x1.description());
  const DType dt = x1.dtype();
  if (!is_reference_float(dt)) return ctx.unsupported("dtype " + dtype_name(dt) + " is not supported");
  for (size_t i : {kPairW, kPairB, kPairZ, kPairW2, kPairB2, kPairX2})
    if (ctx.has_input(i) && ctx.input(i).dtype() != dt)
      return ctx.error(std::string(kPairInputs[i]) + " " + ctx.input(i).description() + " must have X's dtype " + dtype_name(dt));
  if (has_x2) {
    const Tensor& x2 = ctx.input(kPairX2);
    if (x2.rank() != 4 || x2.dim(0) != x1.dim(0) || x2.dim(1) != x1.dim(1) || x2.dim(2) != x1.dim(2))
      return ctx.error("X2 " + x2.description() + " must be [" + std::to_string(x1.dim(0)) + ", " + std::to_string(x1.dim(1)) +
                       ", " + std::to_string(x1.dim(2)) + ", C] (X's N, H and W)");
  }
  // What the first conv reads: X, or X and X2 concatenated along the channels.
  const Tensor joined = has_x2 ? concat_channels(x1, ctx.input(kPairX2)) : Tensor();
  const Tensor& x = has_x2 ? joined : x1;
  const int64_t c0 = x.dim(3);
  if (w.rank() != 4 || w.dim(1) != 1 || w.dim(2) != 1 || w.dim(3) != c0)
    return ctx.error("W " + w.description() + " must be [C1, 1, 1, " + std::to_string(c0) + "] (1x1, " +
                     (has_x2 ? "X's and X2's channels together" : "X's channels") + ")");
  const int64_t c1 = w.dim(0);
  if (w2.rank() != 4 || w2.dim(1) != 1 || w2.dim(2) != 1 || w2.dim(3) != c1)
    return ctx.error("W2 " + w2.description() + " must be [C2, 1, 1, " + std::to_string(c1) + "] (1x1, W's output channels)");
  const int64_t c2 = w2.dim(0);
  const Shape y_shape = {x.dim(0), x.dim(1), x.dim(2), c1};
  const std::pair<size_t, Shape> wanted[] = {{kPairB, {c1}}, {kPairZ, y_shape}, {kPairB2, {c2}}};
  for (const auto& [i, shape] : wanted)
    if (ctx.has_input(i) && ctx.input(i).shape() != shape)
      return ctx.error(std::string(kPairInputs[i]) + " " + ctx.input(i).description() + " must be " + shape_to_string(shape));

  // As kiln.FusedConv computes each: the second conv reads Y as rounded.
  auto optional = [&](size_t i) { return ctx.has_input(i) ? &ctx.input(i) : nullptr; };
  KILN_ASSIGN_OR_RETURN(Tensor y_acc, channels_last_conv(ctx, x, w, optional(kPairB)));
  Tensor y = finish(std::move(y_acc), optional(kPairZ), activation, dt);
  KILN_ASSIGN_OR_RETURN(Tensor y2_acc, channels_last_conv(ctx, y, w2, optional(kPairB2)));
  ctx.set_output(1, finish(std::move(y2_acc), nullptr, second, dt));
  if (y_strides[0] > 1 || y_strides[1] > 1) y = sample_pixels(y, y_strides[0], y_strides[1]);
  // write_concat_in_place's: Y is channels [offset, offset + C1) of a wider tensor, the rest zero here (the
  // GPU leaves them as they are: the kiln.WriteChannels that alone reads Y fills them).
  const int64_t y_channels = ctx.attr_int("output_channels", c1), y_offset = ctx.attr_int("output_channel_offset", 0);
  if (y_offset < 0 || y_channels < c1 || y_offset > y_channels - c1)
    return ctx.error("output_channels " + std::to_string(y_channels) + " and output_channel_offset " + std::to_string(y_offset) +
                     " must hold Y's " + std::to_string(c1) + " channels");
  if (y_channels != c1) {  // y at channels [y_offset, y_offset + C1) of a zeroed wider tensor
    Tensor wide(dt, {y.dim(0), y.dim(1), y.dim(2), y_channels});
    mv::write_channels(wide, y, y_offset);
    y = std::move(wide);
  }
  ctx.set_output(0, std::move(y));
  return OkStatus();
}

}  // namespace

void register_fused_conv_ops(ir::OpRegistry& r) {
  r.add(e2::domain_schema("kiln", "FusedConv", 1, fused_conv_kernel));
  r.add(e2::domain_schema("kiln", "FusedConvPair", 1, fused_conv_pair_kernel));
}

}  // namespace kiln::cpu
