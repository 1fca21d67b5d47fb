// CPU reference kernels: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
// RMSNormalization, LRN, LpNormalization, MeanVarianceNormalization.
//
// Statistics (means, variances, norms) are accumulated in double; float16/bfloat16 inputs are computed in
// float32 and narrowed back at the end.
#include <cmath>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

// Widens every present input to float32 (float64 stays); `required` inputs must be present. Fails on
// non-float types. `out` has at least 3 entries, undefined for absent inputs.
Status float_inputs(const KernelContext& ctx, std::initializer_list<size_t> required, std::vector<Tensor>* out) {
  out->assign(std::max<size_t>(ctx.num_inputs(), 3), Tensor());
  for (size_t i : required)
    if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is required");
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    const Tensor& t = ctx.input(i);
    if (!dtype_is_float(t.dtype())) return ctx.error("input " + std::to_string(i) + " must be a float tensor, got " + t.description());
    Tensor w = widen_to_float32(t);
    (*out)[i] = w;
  }
  return OkStatus();
}

// Values of a per-channel (or other small) parameter as double, whatever its float type.
std::vector<double> as_doubles(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.scalar_as_double(i);
  return v;
}

// Runs f.template operator()<T>() for the float type of `t` (float or double after widening).
template <class F>
bool dispatch_computable(const Tensor& t, F&& f) {
  return dispatch_float(t.dtype(), f);
}

// ---------------------------------------------------------------------------------------------------------

Status check_channel_param(const KernelContext& ctx, const Tensor& t, int64_t channels, const char* name) {
  if (t.numel() != channels || t.rank() > 1)
    return ctx.error(std::string(name) + " must be a 1-D tensor of " + std::to_string(channels) + " channels, got " + t.description());
  return OkStatus();
}

Status batch_norm_kernel(KernelContext& ctx) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0, 1, 2, 3, 4}, &in));
  const Tensor& x = in[0];
  if (x.rank() < 1) return ctx.error("X must have rank >= 1");
  int64_t N = x.dim(0), C = x.rank() > 1 ? x.dim(1) : 1;
  int64_t spatial = C == 0 || N == 0 ? 0 : x.numel() / (N * C);
  const char* names[] = {"X", "scale", "B", "input_mean", "input_var"};
  for (size_t i = 1; i <= 4; ++i) KILN_RETURN_IF_ERROR(check_channel_param(ctx, in[i], C, names[i]));
  double eps = ctx.attr_float("epsilon", 1e-5f);
  double momentum = ctx.attr_float("momentum", 0.9f);
  bool training = ctx.attr_int("training_mode", 0) != 0;
  std::vector<double> scale = as_doubles(in[1]), bias = as_doubles(in[2]), mean = as_doubles(in[3]), var = as_doubles(in[4]);
  std::vector<double> run_mean = mean, run_var = var;
  Tensor y(x.dtype(), x.shape());
  bool ok = dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    if (training) {
      // Batch statistics over every axis but the channel one (population variance), as the reference does.
      double count = static_cast<double>(N * spatial);
      for (int64_t c = 0; c < C; ++c) {
        double s = 0, ss = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < spatial; ++k) s += xd[(n * C + c) * spatial + k];
        double m = count > 0 ? s / count : 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < spatial; ++k) { double d = xd[(n * C + c) * spatial + k] - m; ss += d * d; }
        double v = count > 0 ? ss / count : 0;
        run_mean[c] = mean[c] * momentum + m * (1 - momentum);
        run_var[c] = var[c] * momentum + v * (1 - momentum);
        mean[c] = m;
        var[c] = v;
      }
    }
    T* yd = y.data<T>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        double a = scale[c] / std::sqrt(var[c] + eps), b = bias[c] - mean[c] * a;
        const T* xs = xd + (n * C + c) * spatial;
        T* ys = yd + (n * C + c) * spatial;
        for (int64_t k = 0; k < spatial; ++k) ys[k] = static_cast<T>(xs[k] * a + b);
      }
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(ctx.input(0).dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  if (training) {
    DType mdt = ctx.input(3).dtype();
    Tensor rm(DType::kFloat64, {C}), rv(DType::kFloat64, {C});
    for (int64_t c = 0; c < C; ++c) { rm.data<double>()[c] = run_mean[c]; rv.data<double>()[c] = run_var[c]; }
    ctx.set_output(1, cast_tensor(rm, mdt).value());
    ctx.set_output(2, cast_tensor(rv, mdt).value());
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Normalization over contiguous blocks: `groups` blocks of `size` elements each; block g uses
// scale/bias entries given by the per-element parameter maps.

Status instance_norm_kernel(KernelContext& ctx) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0, 1, 2}, &in));
  const Tensor& x = in[0];
  if (x.rank() < 3) return ctx.error("input must be [N, C, D1, ...], got " + x.description());
  int64_t N = x.dim(0), C = x.dim(1), spatial = 1;
  for (int64_t d = 2; d < x.rank(); ++d) spatial *= x.dim(d);
  KILN_RETURN_IF_ERROR(check_channel_param(ctx, in[1], C, "scale"));
  KILN_RETURN_IF_ERROR(check_channel_param(ctx, in[2], C, "B"));
  double eps = ctx.attr_float("epsilon", 1e-5f);
  std::vector<double> scale = as_doubles(in[1]), bias = as_doubles(in[2]);
  Tensor y(x.dtype(), x.shape());
  dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t b = 0; b < N * C; ++b) {
      const T* xs = x.data<T>() + b * spatial;
      T* ys = y.data<T>() + b * spatial;
      double s = 0, ss = 0;
      for (int64_t k = 0; k < spatial; ++k) s += xs[k];
      double m = spatial ? s / spatial : 0;
      for (int64_t k = 0; k < spatial; ++k) ss += (xs[k] - m) * (xs[k] - m);
      double inv = 1.0 / std::sqrt((spatial ? ss / spatial : 0) + eps);
      int64_t c = b % C;
      for (int64_t k = 0; k < spatial; ++k) ys[k] = static_cast<T>((xs[k] - m) * inv * scale[c] + bias[c]);
    }
  });
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

// LayerNormalization and RMSNormalization: statistics over the axes from `axis` to the end.
Status layer_or_rms_norm(KernelContext& ctx, bool rms) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0, 1}, &in));
  const Tensor& x = in[0];
  if (x.rank() < 1) return ctx.error("X must have rank >= 1");
  KILN_ASSIGN_OR_RETURN(int64_t axis, node_axis(ctx, ctx.attr_int("axis", -1), x.rank()));
  double eps = ctx.attr_float("epsilon", 1e-5f);
  Shape norm_shape(x.shape().begin() + axis, x.shape().end());
  int64_t outer = 1, size = shape_numel(norm_shape);
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  // Scale and bias broadcast (unidirectionally) to the normalized shape.
  auto param_map = [&](const Tensor& p, const char* name, std::vector<int64_t>* map) -> Status {
    auto s = broadcast_shapes(p.shape(), norm_shape);
    if (!s.ok() || *s != norm_shape)
      return ctx.error(std::string(name) + " " + shape_to_string(p.shape()) + " does not broadcast to the normalized shape " +
                       shape_to_string(norm_shape));
    *map = broadcast_index_map(p.shape(), norm_shape);
    return OkStatus();
  };
  std::vector<int64_t> scale_map, bias_map;
  KILN_RETURN_IF_ERROR(param_map(in[1], "Scale", &scale_map));
  bool has_bias = !rms && in.size() > 2 && in[2].defined();
  if (has_bias) KILN_RETURN_IF_ERROR(param_map(in[2], "B", &bias_map));
  std::vector<double> scale = as_doubles(in[1]), bias = has_bias ? as_doubles(in[2]) : std::vector<double>();
  Tensor y(x.dtype(), x.shape());
  Shape stat_shape(x.shape().begin(), x.shape().begin() + axis);
  for (int64_t d = axis; d < x.rank(); ++d) stat_shape.push_back(1);
  Tensor mean_out(DType::kFloat32, stat_shape), inv_out(DType::kFloat32, stat_shape);
  dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t o = 0; o < outer; ++o) {
      const T* xs = x.data<T>() + o * size;
      T* ys = y.data<T>() + o * size;
      double m = 0, v = 0;
      if (!rms) {
        for (int64_t k = 0; k < size; ++k) m += xs[k];
        m = size ? m / size : 0;
      }
      for (int64_t k = 0; k < size; ++k) v += (xs[k] - m) * (xs[k] - m);
      v = size ? v / size : 0;
      double inv = 1.0 / std::sqrt(v + eps);
      mean_out.data<float>()[o] = static_cast<float>(m);
      inv_out.data<float>()[o] = static_cast<float>(inv);
      for (int64_t k = 0; k < size; ++k) {
        double r = (xs[k] - m) * inv * scale[scale_map[k]];
        if (has_bias) r += bias[bias_map[k]];
        ys[k] = static_cast<T>(r);
      }
    }
  });
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  if (!rms) {
    // Mean and InvStdDev are in the stash type (float32 by default).
    int64_t stash = ctx.attr_int("stash_type", 1);
    DType sdt = stash == 11 ? DType::kFloat64 : DType::kFloat32;
    ctx.set_output(1, sdt == DType::kFloat32 ? mean_out : cast_tensor(mean_out, sdt).value());
    ctx.set_output(2, sdt == DType::kFloat32 ? inv_out : cast_tensor(inv_out, sdt).value());
  }
  return OkStatus();
}

Status layer_norm_kernel(KernelContext& ctx) { return layer_or_rms_norm(ctx, false); }
Status rms_norm_kernel(KernelContext& ctx) { return layer_or_rms_norm(ctx, true); }

// GroupNormalization: opset 18 has one scale/bias per group, opset 21 one per channel.
Status group_norm_kernel(KernelContext& ctx) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0, 1, 2}, &in));
  const Tensor& x = in[0];
  if (x.rank() < 2) return ctx.error("X must be [N, C, ...], got " + x.description());
  if (!ctx.has_attr("num_groups")) return ctx.error("attribute 'num_groups' is required");
  int64_t G = ctx.attr_int("num_groups", 1);
  int64_t N = x.dim(0), C = x.dim(1), spatial = 1;
  for (int64_t d = 2; d < x.rank(); ++d) spatial *= x.dim(d);
  if (G <= 0 || C % G != 0) return ctx.error("num_groups " + std::to_string(G) + " must be positive and divide the channel count " + std::to_string(C));
  bool per_channel = ctx.opset() >= 21;
  int64_t want = per_channel ? C : G;
  KILN_RETURN_IF_ERROR(check_channel_param(ctx, in[1], want, "scale"));
  KILN_RETURN_IF_ERROR(check_channel_param(ctx, in[2], want, "bias"));
  double eps = ctx.attr_float("epsilon", 1e-5f);
  std::vector<double> scale = as_doubles(in[1]), bias = as_doubles(in[2]);
  int64_t cpg = C / G, size = cpg * spatial;
  Tensor y(x.dtype(), x.shape());
  dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t b = 0; b < N * G; ++b) {
      const T* xs = x.data<T>() + b * size;
      T* ys = y.data<T>() + b * size;
      double m = 0, v = 0;
      for (int64_t k = 0; k < size; ++k) m += xs[k];
      m = size ? m / size : 0;
      for (int64_t k = 0; k < size; ++k) v += (xs[k] - m) * (xs[k] - m);
      v = size ? v / size : 0;
      double inv = 1.0 / std::sqrt(v + eps);
      int64_t g = b % G;
      for (int64_t k = 0; k < size; ++k) {
        int64_t p = per_channel ? g * cpg + k / spatial : g;
        ys[k] = static_cast<T>((xs[k] - m) * inv * scale[p] + bias[p]);
      }
    }
  });
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------

Status lrn_kernel(KernelContext& ctx) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0}, &in));
  const Tensor& x = in[0];
  if (x.rank() < 3) return ctx.error("input must be [N, C, D1, ...], got " + x.description());
  if (!ctx.has_attr("size")) return ctx.error("attribute 'size' is required");
  int64_t size = ctx.attr_int("size", 1);
  if (size <= 0) return ctx.error("attribute 'size' must be positive, got " + std::to_string(size));
  double alpha = ctx.attr_float("alpha", 1e-4f), beta = ctx.attr_float("beta", 0.75f), bias = ctx.attr_float("bias", 1.0f);
  int64_t N = x.dim(0), C = x.dim(1), spatial = 1;
  for (int64_t d = 2; d < x.rank(); ++d) spatial *= x.dim(d);
  int64_t before = (size - 1) / 2, after = (size - 1 + 1) / 2;  // floor and ceil of (size-1)/2
  Tensor y(x.dtype(), x.shape());
  dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t k = 0; k < spatial; ++k) {
          double sq = 0;
          for (int64_t j = std::max<int64_t>(0, c - before); j <= std::min(C - 1, c + after); ++j) {
            double v = xd[(n * C + j) * spatial + k];
            sq += v * v;
          }
          int64_t i = (n * C + c) * spatial + k;
          yd[i] = static_cast<T>(xd[i] / std::pow(bias + alpha / size * sq, beta));
        }
  });
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

Status lp_norm_kernel(KernelContext& ctx) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0}, &in));
  const Tensor& x = in[0];
  KILN_ASSIGN_OR_RETURN(int64_t axis, node_axis(ctx, ctx.attr_int("axis", -1), x.rank()));
  int64_t p = ctx.attr_int("p", 2);
  if (p != 1 && p != 2) return ctx.error("attribute 'p' must be 1 or 2, got " + std::to_string(p));
  int64_t outer = 1, n = x.rank() ? x.dim(axis) : 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  Tensor y(x.dtype(), x.shape());
  dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        const T* xs = x.data<T>() + o * n * inner + i;
        T* ys = y.data<T>() + o * n * inner + i;
        double norm = 0;
        for (int64_t k = 0; k < n; ++k) norm += p == 1 ? std::fabs(static_cast<double>(xs[k * inner])) : static_cast<double>(xs[k * inner]) * xs[k * inner];
        if (p == 2) norm = std::sqrt(norm);
        for (int64_t k = 0; k < n; ++k) ys[k * inner] = norm == 0 ? T(0) : static_cast<T>(xs[k * inner] / norm);
      }
  });
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

// MeanVarianceNormalization: (X - mean) / (sqrt(var) + 1e-9) over `axes` (default [0, 2, 3]), as the op's
// function body defines it.
Status mvn_kernel(KernelContext& ctx) {
  std::vector<Tensor> in;
  KILN_RETURN_IF_ERROR(float_inputs(ctx, {0}, &in));
  const Tensor& x = in[0];
  int64_t rank = x.rank();
  std::vector<int64_t> axes = ctx.attr_ints("axes", {0, 2, 3});
  std::vector<bool> reduced(static_cast<size_t>(rank), false);
  for (int64_t a : axes) {
    KILN_ASSIGN_OR_RETURN(int64_t n, node_axis(ctx, a, rank, "axes entry"));
    reduced[n] = true;
  }
  // Group index (the keepdims-reduced position) of every element.
  Shape keep = x.shape();
  for (int64_t d = 0; d < rank; ++d) if (reduced[d]) keep[d] = 1;
  std::vector<int64_t> kstr = strides_of(keep), xstr = strides_of(x.shape());
  int64_t total = x.numel(), groups = shape_numel(keep), count = groups ? total / groups : 0;
  std::vector<int64_t> gidx(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    int64_t g = 0, rem = i;
    for (int64_t d = 0; d < rank; ++d) {
      int64_t c = rem / xstr[d];
      rem %= xstr[d];
      if (!reduced[d]) g += c * kstr[d];
    }
    gidx[i] = g;
  }
  Tensor y(x.dtype(), x.shape());
  dispatch_computable(x, [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    std::vector<double> mean(static_cast<size_t>(groups), 0), var(static_cast<size_t>(groups), 0);
    for (int64_t i = 0; i < total; ++i) mean[gidx[i]] += xd[i];
    for (auto& m : mean) m /= count;
    for (int64_t i = 0; i < total; ++i) var[gidx[i]] += (xd[i] - mean[gidx[i]]) * (xd[i] - mean[gidx[i]]);
    for (auto& v : var) v /= count;
    for (int64_t i = 0; i < total; ++i)
      y.data<T>()[i] = static_cast<T>((xd[i] - mean[gidx[i]]) / (std::sqrt(var[gidx[i]]) + 1e-9));
  });
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

}  // namespace

void register_normalization_ops(ir::OpRegistry& r) {
  r.add("BatchNormalization", 1, batch_norm_kernel);
  r.add("InstanceNormalization", 1, instance_norm_kernel);
  r.add("LayerNormalization", 17, layer_norm_kernel);
  r.add("GroupNormalization", 18, group_norm_kernel);
  r.add("RMSNormalization", 23, rms_norm_kernel);
  r.add("LRN", 1, lrn_kernel);
  r.add("LpNormalization", 1, lp_norm_kernel);
  r.add("MeanVarianceNormalization", 1, mvn_kernel);
}

}  // namespace kiln::cpu
