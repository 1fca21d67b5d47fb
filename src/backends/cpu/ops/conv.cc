// CPU reference kernels: Conv, ConvTranspose, ConvInteger, QLinearConv, DeformConv, Col2Im.
//
// Conv is im2col + GEMM per (image, group); ConvTranspose is GEMM + col2im; the integer forms run the same
// code on int32 values with their zero points removed. im2col/col2im are N-D: tables give, per spatial dim,
// kernel tap and output index, the input coordinate (or -1 where it falls in the padding).
#include <cmath>
#include <limits>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/conv_util.h"
#include "backends/cpu/ops/gemm_util.h"
#include "core/float_formats.h"

namespace kiln::cpu {
namespace {

// coord[d][k * out[d] + o]: input coordinate read by kernel tap k at output index o, -1 if outside.
std::vector<std::vector<int64_t>> coordinate_tables(const WindowGeometry& g) {
  std::vector<std::vector<int64_t>> t(g.nd);
  for (size_t d = 0; d < g.nd; ++d) {
    t[d].resize(static_cast<size_t>(g.kernel[d] * g.out[d]));
    for (int64_t k = 0; k < g.kernel[d]; ++k)
      for (int64_t o = 0; o < g.out[d]; ++o) {
        int64_t pos = o * g.strides[d] - g.pad_begin(d) + k * g.dilations[d];
        t[d][k * g.out[d] + o] = pos >= 0 && pos < g.in[d] ? pos : -1;
      }
  }
  return t;
}

// Visits every (column row, output position) pair: f(row, out_index, in_offset or -1). Rows are
// channel-major then kernel taps in row-major order, as W is laid out.
template <class F>
void for_each_tap(const WindowGeometry& g, int64_t channels, const std::vector<std::vector<int64_t>>& tab, F f) {
  size_t nd = g.nd;
  int64_t kprod = shape_numel(g.kernel), out_size = shape_numel(g.out), in_size = shape_numel(g.in);
  std::vector<int64_t> in_strides = strides_of(g.in);
  int64_t out_last = g.out[nd - 1];
  int64_t outer_count = out_last == 0 ? 0 : out_size / out_last;
  std::vector<int64_t> kk(nd, 0), oo(nd, 0);
  for (int64_t c = 0; c < channels; ++c) {
    std::fill(kk.begin(), kk.end(), 0);
    for (int64_t kidx = 0; kidx < kprod; ++kidx) {
      int64_t row = c * kprod + kidx;
      std::fill(oo.begin(), oo.end(), 0);
      const int64_t* last = tab[nd - 1].data() + kk[nd - 1] * out_last;
      for (int64_t outer = 0; outer < outer_count; ++outer) {
        bool valid = true;
        int64_t base = c * in_size;
        for (size_t d = 0; d + 1 < nd; ++d) {
          int64_t p = tab[d][kk[d] * g.out[d] + oo[d]];
          if (p < 0) valid = false;
          base += p * in_strides[d];
        }
        int64_t o0 = outer * out_last;
        for (int64_t ol = 0; ol < out_last; ++ol) f(row, o0 + ol, valid && last[ol] >= 0 ? base + last[ol] : -1);
        for (int64_t d = static_cast<int64_t>(nd) - 2; d >= 0; --d) {
          if (++oo[d] < g.out[d]) break;
          oo[d] = 0;
        }
      }
      for (int64_t d = static_cast<int64_t>(nd) - 1; d >= 0; --d) {
        if (++kk[d] < g.kernel[d]) break;
        kk[d] = 0;
      }
    }
  }
}

template <class T>
void im2col(const T* x, int64_t channels, const WindowGeometry& g, const std::vector<std::vector<int64_t>>& tab, T* col) {
  int64_t out_size = shape_numel(g.out);
  for_each_tap(g, channels, tab, [&](int64_t row, int64_t o, int64_t in) { col[row * out_size + o] = in >= 0 ? x[in] : T(0); });
}

// The adjoint of im2col: adds each column entry into the image position it came from.
template <class T>
void col2im(const T* col, int64_t channels, const WindowGeometry& g, const std::vector<std::vector<int64_t>>& tab, T* x) {
  int64_t out_size = shape_numel(g.out);
  for_each_tap(g, channels, tab, [&](int64_t row, int64_t o, int64_t in) { if (in >= 0) x[in] += col[row * out_size + o]; });
}

// Validated shapes of a convolution.
struct ConvSetup {
  int64_t N = 0, C = 0, M = 0, group = 1;
  WindowGeometry g;
  Shape out_shape;
};

Result<ConvSetup> conv_setup(const KernelContext& ctx, const Tensor& x, const Tensor& w) {
  ConvSetup s;
  if (x.rank() < 3) return ctx.error("X must be [N, C, D1, ...], got " + x.description());
  if (w.rank() != x.rank()) return ctx.error("W " + w.description() + " must have X's rank " + std::to_string(x.rank()));
  s.N = x.dim(0);
  s.C = x.dim(1);
  s.M = w.dim(0);
  s.group = ctx.attr_int("group", 1);
  if (s.group <= 0 || s.C % s.group != 0 || s.M % s.group != 0)
    return ctx.error("group " + std::to_string(s.group) + " must divide the input channels " + std::to_string(s.C) +
                     " and output channels " + std::to_string(s.M));
  if (w.dim(1) != s.C / s.group)
    return ctx.error("W " + w.description() + " must have C/group = " + std::to_string(s.C / s.group) + " input channels");
  Shape kernel(w.shape().begin() + 2, w.shape().end());
  if (ctx.has_attr("kernel_shape") && ctx.attr_ints("kernel_shape") != kernel)
    return ctx.error("kernel_shape " + shape_to_string(ctx.attr_ints("kernel_shape")) + " does not match W " + w.description());
  Shape in(x.shape().begin() + 2, x.shape().end());
  KILN_RETURN_IF_ERROR(window_geometry(ctx, in, kernel, false, &s.g));
  s.out_shape = {s.N, s.M};
  s.out_shape.insert(s.out_shape.end(), s.g.out.begin(), s.g.out.end());
  return s;
}

// y[N, M, out...] = conv(x, w): im2col + GEMM per image and group. y must be zero-initialised.
template <class T>
void conv_forward(const ConvSetup& s, const T* x, const T* w, T* y) {
  const WindowGeometry& g = s.g;
  int64_t Cg = s.C / s.group, Mg = s.M / s.group;
  int64_t kprod = shape_numel(g.kernel), out_size = shape_numel(g.out), in_size = shape_numel(g.in);
  int64_t rows = Cg * kprod;
  // A 1x1 kernel with unit strides and no padding reads the input as it is: skip im2col.
  bool direct = kprod == 1 && g.in == g.out;
  for (size_t d = 0; d < g.nd; ++d) direct = direct && g.strides[d] == 1 && g.pads[d] == 0;
  std::vector<std::vector<int64_t>> tab = coordinate_tables(g);
  std::vector<T> col(direct ? 0 : static_cast<size_t>(rows * out_size));
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t gi = 0; gi < s.group; ++gi) {
      const T* xg = x + (n * s.C + gi * Cg) * in_size;
      const T* cols = xg;
      if (!direct) {
        im2col(xg, Cg, g, tab, col.data());
        cols = col.data();
      }
      gemm<T>(false, false, Mg, out_size, rows, T(1), w + gi * Mg * rows, rows, cols, out_size, T(0),
              y + (n * s.M + gi * Mg) * out_size, out_size);
    }
  }
}

}  // namespace

Result<Tensor> conv_reference(const KernelContext& ctx, const Tensor& x0, const Tensor& w0, const Tensor* b) {
  if (x0.dtype() != w0.dtype()) return ctx.error("X and W must have the same dtype, got " + x0.description() + " and " + w0.description());
  KILN_ASSIGN_OR_RETURN(ConvSetup s, conv_setup(ctx, x0, w0));
  if (b != nullptr && (b->numel() != s.M || b->rank() != 1))
    return ctx.error("B must be a 1-D tensor of " + std::to_string(s.M) + " output channels, got " + b->description());
  Tensor x = widen_to_float32(x0), w = widen_to_float32(w0);
  Tensor y(x.dtype(), s.out_shape);
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    conv_forward<T>(s, x.data<T>(), w.data<T>(), y.data<T>());
    if (b != nullptr) {
      int64_t out_size = shape_numel(s.g.out);
      T* yd = y.data<T>();
      for (int64_t n = 0; n < s.N; ++n)
        for (int64_t m = 0; m < s.M; ++m) {
          T bias = static_cast<T>(b->scalar_as_double(m));
          for (int64_t i = 0; i < out_size; ++i) yd[(n * s.M + m) * out_size + i] += bias;
        }
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  return y;
}

namespace {

Status conv_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs X and W are required");
  KILN_ASSIGN_OR_RETURN(Tensor y, conv_reference(ctx, ctx.input(0), ctx.input(1), ctx.has_input(2) ? &ctx.input(2) : nullptr));
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Integer convolutions.

// int8/uint8 tensor as int32 minus its zero point: a scalar, or (per_channel_dim >= 0) one per index of
// that axis.
Result<std::vector<int32_t>> centered_int(const KernelContext& ctx, const Tensor& t, const Tensor* zp, const char* name) {
  if (t.dtype() != DType::kInt8 && t.dtype() != DType::kUInt8)
    return ctx.error(std::string(name) + " must be int8 or uint8, got " + t.description());
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.dtype() == DType::kInt8 ? t.data<int8_t>()[i] : t.data<uint8_t>()[i];
  if (zp == nullptr) return v;
  if (zp->dtype() != t.dtype()) return ctx.error(std::string(name) + " zero point must have its dtype, got " + zp->description());
  std::vector<int64_t> z = zp->to_int64_vector();
  if (z.size() == 1) {
    for (auto& e : v) e -= static_cast<int32_t>(z[0]);
    return v;
  }
  // Per output channel (axis 0) of a weight tensor.
  int64_t channels = t.rank() > 0 ? t.dim(0) : 1;
  if (static_cast<int64_t>(z.size()) != channels)
    return ctx.error(std::string(name) + " zero point " + zp->description() + " must have 1 or " + std::to_string(channels) + " elements");
  int64_t per = channels ? t.numel() / channels : 0;
  for (int64_t i = 0; i < t.numel(); ++i) v[i] -= static_cast<int32_t>(z[i / per]);
  return v;
}

// A zero point of X must be a scalar (padding is then zero after centering).
Status check_scalar_zp(const KernelContext& ctx, size_t i, const char* name) {
  if (ctx.has_input(i) && ctx.input(i).numel() != 1) return ctx.error(std::string(name) + " must be a scalar, got " + ctx.input(i).description());
  return OkStatus();
}

Status conv_integer_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs x and w are required");
  KILN_ASSIGN_OR_RETURN(ConvSetup s, conv_setup(ctx, ctx.input(0), ctx.input(1)));
  KILN_RETURN_IF_ERROR(check_scalar_zp(ctx, 2, "x_zero_point"));
  KILN_ASSIGN_OR_RETURN(auto x, centered_int(ctx, ctx.input(0), ctx.has_input(2) ? &ctx.input(2) : nullptr, "x"));
  KILN_ASSIGN_OR_RETURN(auto w, centered_int(ctx, ctx.input(1), ctx.has_input(3) ? &ctx.input(3) : nullptr, "w"));
  Tensor y(DType::kInt32, s.out_shape);
  conv_forward<int32_t>(s, x.data(), w.data(), y.data<int32_t>());
  ctx.set_output(0, y);
  return OkStatus();
}

std::vector<float> float_values(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = static_cast<float>(t.scalar_as_double(i));
  return v;
}

Status qlinear_conv_kernel(KernelContext& ctx) {
  for (size_t i : {0, 1, 3, 4, 6})
    if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is required");
  KILN_ASSIGN_OR_RETURN(ConvSetup s, conv_setup(ctx, ctx.input(0), ctx.input(3)));
  KILN_RETURN_IF_ERROR(check_scalar_zp(ctx, 2, "x_zero_point"));
  KILN_ASSIGN_OR_RETURN(auto x, centered_int(ctx, ctx.input(0), ctx.has_input(2) ? &ctx.input(2) : nullptr, "x"));
  KILN_ASSIGN_OR_RETURN(auto w, centered_int(ctx, ctx.input(3), ctx.has_input(5) ? &ctx.input(5) : nullptr, "w"));
  std::vector<float> xs = float_values(ctx.input(1)), ws = float_values(ctx.input(4)), ys = float_values(ctx.input(6));
  if (xs.size() != 1 || ys.size() != 1) return ctx.error("x_scale and y_scale must be scalars");
  if (ws.size() != 1 && static_cast<int64_t>(ws.size()) != s.M)
    return ctx.error("w_scale must have 1 or " + std::to_string(s.M) + " elements, got " + ctx.input(4).description());
  DType out_type = ctx.has_input(7) ? ctx.input(7).dtype() : ctx.input(0).dtype();
  if (out_type != DType::kInt8 && out_type != DType::kUInt8) return ctx.error("y_zero_point must be int8 or uint8");
  int64_t yzp = ctx.has_input(7) ? ctx.input(7).scalar_as_int(0) : 0;
  std::vector<int64_t> bias;
  if (ctx.has_input(8)) {
    const Tensor& b = ctx.input(8);
    if (b.dtype() != DType::kInt32 || b.numel() != s.M) return ctx.error("B must be int32 with " + std::to_string(s.M) + " elements, got " + b.description());
    bias = b.to_int64_vector();
  }
  std::vector<int32_t> acc(static_cast<size_t>(shape_numel(s.out_shape)), 0);
  conv_forward<int32_t>(s, x.data(), w.data(), acc.data());
  Tensor y(out_type, s.out_shape);
  int64_t out_size = shape_numel(s.g.out);
  double lo = out_type == DType::kInt8 ? -128 : 0, hi = out_type == DType::kInt8 ? 127 : 255;
  for (int64_t i = 0; i < static_cast<int64_t>(acc.size()); ++i) {
    int64_t m = out_size ? (i / out_size) % s.M : 0;
    double a = static_cast<double>(acc[i]) + (bias.empty() ? 0 : static_cast<double>(bias[m]));
    double scale = static_cast<double>(xs[0] * ws[ws.size() == 1 ? 0 : m]) / ys[0];
    double v = std::min(hi, std::max(lo, std::nearbyint(a * scale) + static_cast<double>(yzp)));
    if (out_type == DType::kInt8) y.data<int8_t>()[i] = static_cast<int8_t>(v);
    else y.data<uint8_t>()[i] = static_cast<uint8_t>(v);
  }
  ctx.set_output(0, y);
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// ConvTranspose: per image and group, cols = W_g^T * X_g, then col2im into the output.

Status conv_transpose_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs X and W are required");
  const Tensor& x0 = ctx.input(0);
  const Tensor& w0 = ctx.input(1);
  if (x0.dtype() != w0.dtype()) return ctx.error("X and W must have the same dtype");
  if (x0.rank() < 3 || w0.rank() != x0.rank()) return ctx.error("X must be [N, C, D1, ...] and W of the same rank, got " + x0.description() + " and " + w0.description());
  size_t nd = static_cast<size_t>(x0.rank() - 2);
  int64_t N = x0.dim(0), C = x0.dim(1), group = ctx.attr_int("group", 1);
  if (group <= 0 || C % group != 0 || w0.dim(0) != C)
    return ctx.error("W " + w0.description() + " must have C = " + std::to_string(C) + " input channels, divisible by group " + std::to_string(group));
  int64_t Mg = w0.dim(1), M = Mg * group;
  Shape kernel(w0.shape().begin() + 2, w0.shape().end());
  if (ctx.has_attr("kernel_shape") && ctx.attr_ints("kernel_shape") != kernel)
    return ctx.error("kernel_shape does not match W " + w0.description());
  Shape in(x0.shape().begin() + 2, x0.shape().end());
  std::vector<int64_t> strides = ctx.attr_ints("strides", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> dil = ctx.attr_ints("dilations", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> out_pad = ctx.attr_ints("output_padding", std::vector<int64_t>(nd, 0));
  std::string auto_pad = ctx.attr_string("auto_pad", "NOTSET");
  if (strides.size() != nd || dil.size() != nd || out_pad.size() != nd)
    return ctx.error("strides, dilations and output_padding must have " + std::to_string(nd) + " entries");
  for (size_t d = 0; d < nd; ++d)
    if (strides[d] <= 0 || dil[d] <= 0 || out_pad[d] < 0 || kernel[d] <= 0 || out_pad[d] > (int64_t(1) << 31) ||
        dil[d] > (int64_t(1) << 31) || strides[d] > (int64_t(1) << 31))
      return ctx.error("strides and dilations must be positive, output_padding non-negative");
  std::vector<int64_t> pads;
  Shape out;
  bool same = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER";
  std::vector<int64_t> full(nd);  // output size with no padding at all
  for (size_t d = 0; d < nd; ++d) full[d] = strides[d] * (in[d] - 1) + out_pad[d] + dil[d] * (kernel[d] - 1) + 1;
  if (!ctx.has_attr("pads") && (same || ctx.has_attr("output_shape"))) {
    // Pads follow from the requested output shape (by default in * stride for SAME).
    std::vector<int64_t> want = ctx.attr_ints("output_shape");
    if (want.size() == nd + 2) want.erase(want.begin(), want.begin() + 2);
    if (want.empty()) for (size_t d = 0; d < nd; ++d) want.push_back(in[d] * strides[d]);
    if (want.size() != nd) return ctx.error("output_shape " + shape_to_string(want) + " must have " + std::to_string(nd) + " entries");
    pads.assign(2 * nd, 0);
    for (size_t d = 0; d < nd; ++d) {
      if (want[d] <= 0 || want[d] > (int64_t(1) << 31)) return ctx.error("output_shape " + shape_to_string(want) + " is invalid");
      int64_t total = full[d] - want[d];
      int64_t half = total >= 0 ? total / 2 : -((-total + 1) / 2);  // floor division, as the reference
      pads[d] = auto_pad == "SAME_UPPER" ? half : total - half;
      pads[nd + d] = auto_pad == "SAME_UPPER" ? total - half : half;
    }
    out = want;
  } else {
    pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * nd, 0));
    if (pads.size() != 2 * nd) return ctx.error("pads must have " + std::to_string(2 * nd) + " entries");
    if (ctx.has_attr("output_shape")) {
      out = ctx.attr_ints("output_shape");
      if (out.size() == nd + 2) out.erase(out.begin(), out.begin() + 2);
      if (out.size() != nd) return ctx.error("output_shape must have " + std::to_string(nd) + " entries");
    } else {
      for (size_t d = 0; d < nd; ++d) out.push_back(full[d] - pads[d] - pads[nd + d]);
    }
  }
  for (size_t d = 0; d < nd; ++d)
    if (out[d] <= 0 || out[d] > (int64_t(1) << 31)) return ctx.error("computed output shape " + shape_to_string(out) + " is invalid");
  // In col2im terms the output is the "image" and X's spatial grid the "columns" grid.
  WindowGeometry g;
  g.nd = nd;
  g.in = out;
  g.kernel = kernel;
  g.out = in;
  g.strides = strides;
  g.dilations = dil;
  g.pads = pads;
  Shape out_shape = {N, M};
  out_shape.insert(out_shape.end(), out.begin(), out.end());
  if (shape_numel(out_shape) > (int64_t(1) << 32)) return ctx.error("output shape " + shape_to_string(out_shape) + " is unreasonably large");
  if (ctx.has_input(2) && ctx.input(2).numel() != M) return ctx.error("B must have " + std::to_string(M) + " elements, got " + ctx.input(2).description());
  Tensor x = widen_to_float32(x0), w = widen_to_float32(w0);
  Tensor y(x.dtype(), out_shape);
  int64_t Cg = C / group, kprod = shape_numel(kernel), in_size = shape_numel(in), out_size = shape_numel(out);
  int64_t rows = Mg * kprod;
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<std::vector<int64_t>> tab = coordinate_tables(g);
    std::vector<T> col(static_cast<size_t>(rows * in_size));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t gi = 0; gi < group; ++gi) {
        // W_g is [Cg, Mg * kprod]; cols[Mg * kprod, in_size] = W_g^T * X_g[Cg, in_size].
        gemm<T>(true, false, rows, in_size, Cg, T(1), w.data<T>() + gi * Cg * rows, rows,
                x.data<T>() + (n * C + gi * Cg) * in_size, in_size, T(0), col.data(), in_size);
        col2im(col.data(), Mg, g, tab, y.data<T>() + (n * M + gi * Mg) * out_size);
      }
    if (ctx.has_input(2)) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
          T b = static_cast<T>(ctx.input(2).scalar_as_double(m));
          T* ys = y.data<T>() + (n * M + m) * out_size;
          for (int64_t i = 0; i < out_size; ++i) ys[i] += b;
        }
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

// Col2Im: input [N, C * prod(block_shape), L] back to [N, C, image_shape...], summing overlaps.
Status col2im_kernel(KernelContext& ctx) {
  for (size_t i : {0, 1, 2})
    if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is required");
  const Tensor& x0 = ctx.input(0);
  Shape image = ctx.input(1).to_int64_vector(), block = ctx.input(2).to_int64_vector();
  if (image.size() != block.size() || image.empty())
    return ctx.error("image_shape " + shape_to_string(image) + " and block_shape " + shape_to_string(block) + " must have the same, non-zero length");
  if (x0.rank() != 3) return ctx.error("input must be [N, C * prod(block_shape), L], got " + x0.description());
  for (int64_t v : image) if (v <= 0 || v > (int64_t(1) << 31)) return ctx.error("image_shape " + shape_to_string(image) + " must be positive");
  WindowGeometry g;
  KILN_RETURN_IF_ERROR(window_geometry(ctx, image, block, false, &g));
  int64_t kprod = shape_numel(block), L = shape_numel(g.out);
  if (kprod == 0 || x0.dim(1) % kprod != 0) return ctx.error("dim 1 of " + x0.description() + " is not a multiple of prod(block_shape) = " + std::to_string(kprod));
  if (x0.dim(2) != L) return ctx.error("dim 2 of " + x0.description() + " must be the number of blocks " + std::to_string(L));
  int64_t N = x0.dim(0), C = x0.dim(1) / kprod;
  double img_elems = 1;
  for (int64_t v : image) img_elems *= static_cast<double>(v);
  if (img_elems * static_cast<double>(N * C) > double(int64_t(1) << 32))
    return ctx.error("image_shape " + shape_to_string(image) + " gives an unreasonably large output");
  int64_t img = shape_numel(image);
  Shape out_shape = {N, C};
  out_shape.insert(out_shape.end(), image.begin(), image.end());
  Tensor x = widen_to_float32(x0);
  Tensor y(x.dtype(), out_shape);
  bool ok = dispatch_numeric(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<std::vector<int64_t>> tab = coordinate_tables(g);
    for (int64_t n = 0; n < N; ++n) col2im(x.data<T>() + n * C * kprod * L, C, g, tab, y.data<T>() + n * C * img);
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// DeformConv (2-D): im2col where each tap samples X bilinearly at its offset position (zero outside),
// scaled by the mask; then the same GEMM as Conv.

Status deform_conv_kernel(KernelContext& ctx) {
  for (size_t i : {0, 1, 2})
    if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is required");
  const Tensor& x0 = ctx.input(0);
  if (x0.rank() != 4) return ctx.unsupported("only 2-D DeformConv is supported, got X " + x0.description());
  KILN_ASSIGN_OR_RETURN(ConvSetup s, conv_setup(ctx, x0, ctx.input(1)));
  int64_t og = ctx.attr_int("offset_group", 1);
  if (og <= 0 || s.C % og != 0) return ctx.error("offset_group " + std::to_string(og) + " must divide the channels " + std::to_string(s.C));
  int64_t kh = s.g.kernel[0], kw = s.g.kernel[1], oh = s.g.out[0], ow = s.g.out[1], H = s.g.in[0], W = s.g.in[1];
  int64_t kprod = kh * kw, out_size = oh * ow;
  Shape off_shape = {s.N, og * kprod * 2, oh, ow}, mask_shape = {s.N, og * kprod, oh, ow};
  if (ctx.input(2).shape() != off_shape) return ctx.error("offset must be " + shape_to_string(off_shape) + ", got " + ctx.input(2).description());
  if (ctx.has_input(4) && ctx.input(4).shape() != mask_shape) return ctx.error("mask must be " + shape_to_string(mask_shape) + ", got " + ctx.input(4).description());
  if (ctx.has_input(3) && ctx.input(3).numel() != s.M) return ctx.error("B must have " + std::to_string(s.M) + " elements");
  Tensor x = widen_to_float32(x0), w = widen_to_float32(ctx.input(1)), off = widen_to_float32(ctx.input(2));
  Tensor mask = ctx.has_input(4) ? widen_to_float32(ctx.input(4)) : Tensor();
  if (off.dtype() != x.dtype() || w.dtype() != x.dtype() || (mask.defined() && mask.dtype() != x.dtype()))
    return ctx.error("X, W, offset and mask must have the same dtype");
  Tensor y(x.dtype(), s.out_shape);
  int64_t Cg = s.C / s.group, Mg = s.M / s.group, cpog = s.C / og;
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> col(static_cast<size_t>(s.C * kprod * out_size));
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t c = 0; c < s.C; ++c) {
        int64_t gi = c / cpog;
        const T* plane = x.data<T>() + (n * s.C + c) * H * W;
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j)
            for (int64_t ph = 0; ph < oh; ++ph)
              for (int64_t pw = 0; pw < ow; ++pw) {
                int64_t tap = i * kw + j, o = ph * ow + pw;
                const T* offs = off.data<T>() + ((n * og + gi) * kprod + tap) * 2 * out_size;
                double hpos = ph * s.g.strides[0] - s.g.pad_begin(0) + i * s.g.dilations[0] + offs[o];
                double wpos = pw * s.g.strides[1] - s.g.pad_begin(1) + j * s.g.dilations[1] + offs[out_size + o];
                double m = mask.defined() ? mask.data<T>()[((n * og + gi) * kprod + tap) * out_size + o] : 1.0;
                double h0 = std::floor(hpos), w0 = std::floor(wpos);
                double v = 0;
                for (int dh = 0; dh < 2; ++dh)
                  for (int dw = 0; dw < 2; ++dw) {
                    double hh = h0 + dh, ww = w0 + dw;
                    // Written so that NaN positions (from NaN offsets) are skipped too.
                    if (!(hh >= 0 && hh < H && ww >= 0 && ww < W)) continue;
                    double wt = (dh ? hpos - h0 : 1 - (hpos - h0)) * (dw ? wpos - w0 : 1 - (wpos - w0));
                    v += wt * plane[static_cast<int64_t>(hh) * W + static_cast<int64_t>(ww)];
                  }
                col[(c * kprod + tap) * out_size + o] = static_cast<T>(v * m);
              }
      }
      for (int64_t gi = 0; gi < s.group; ++gi)
        gemm<T>(false, false, Mg, out_size, Cg * kprod, T(1), w.data<T>() + gi * Mg * Cg * kprod, Cg * kprod,
                col.data() + gi * Cg * kprod * out_size, out_size, T(0), y.data<T>() + (n * s.M + gi * Mg) * out_size, out_size);
      if (ctx.has_input(3))
        for (int64_t m = 0; m < s.M; ++m) {
          T b = static_cast<T>(ctx.input(3).scalar_as_double(m));
          for (int64_t o = 0; o < out_size; ++o) y.data<T>()[(n * s.M + m) * out_size + o] += b;
        }
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

}  // namespace

void register_conv_ops(ir::OpRegistry& r) {
  r.add("Conv", 1, conv_kernel);
  r.add("ConvTranspose", 1, conv_transpose_kernel);
  r.add("ConvInteger", 10, conv_integer_kernel);
  r.add("QLinearConv", 10, qlinear_conv_kernel);
  r.add("DeformConv", 19, deform_conv_kernel);
  r.add("Col2Im", 18, col2im_kernel);
}

}  // namespace kiln::cpu
