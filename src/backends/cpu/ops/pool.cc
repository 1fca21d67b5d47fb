// CPU reference kernels: pooling (MaxPool, AveragePool, LpPool, the Global* forms, MaxUnpool, MaxRoiPool).
//
// Windowed pools precompute, once per node, the input offsets that each output position reads (shared by all
// N x C planes): a window position is real (inside the input), padding (inside the pads: counted by
// count_include_pad), or beyond the end padding (only in ceil_mode: never counted).
#include <cmath>
#include <limits>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/conv_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

struct WindowPlan {
  int64_t out_size = 0;  // output spatial positions per plane
  int64_t in_size = 0;   // input spatial positions per plane
  std::vector<int64_t> begin;       // per output position: first entry in `offsets`
  std::vector<int64_t> offsets;     // flat spatial input offsets of the real window elements
  std::vector<int64_t> padded_count;  // per output position: real + padding elements
};

WindowPlan plan_windows(const WindowGeometry& g) {
  WindowPlan p;
  size_t nd = g.nd;
  p.out_size = shape_numel(g.out);
  p.in_size = shape_numel(g.in);
  std::vector<int64_t> in_strides = strides_of(g.in);
  // Per dim and output index: real positions and the count including padding.
  std::vector<std::vector<std::vector<int64_t>>> real(nd);
  std::vector<std::vector<int64_t>> counted(nd);
  for (size_t d = 0; d < nd; ++d) {
    real[d].resize(static_cast<size_t>(g.out[d]));
    counted[d].resize(static_cast<size_t>(g.out[d]));
    for (int64_t o = 0; o < g.out[d]; ++o) {
      int64_t start = o * g.strides[d] - g.pad_begin(d);
      for (int64_t k = 0; k < g.kernel[d]; ++k) {
        int64_t pos = start + k * g.dilations[d];
        if (pos >= g.in[d] + g.pad_end(d)) break;
        counted[d][o]++;
        if (pos >= 0 && pos < g.in[d]) real[d][o].push_back(pos);
      }
    }
  }
  p.begin.reserve(static_cast<size_t>(p.out_size) + 1);
  std::vector<int64_t> oidx(nd, 0);
  for (int64_t o = 0; o < p.out_size; ++o) {
    p.begin.push_back(static_cast<int64_t>(p.offsets.size()));
    int64_t cnt = 1;
    bool empty = false;
    for (size_t d = 0; d < nd; ++d) {
      cnt *= counted[d][oidx[d]];
      empty |= real[d][oidx[d]].empty();
    }
    p.padded_count.push_back(cnt);
    if (!empty) {
      std::vector<size_t> k(nd, 0);
      while (true) {
        int64_t off = 0;
        for (size_t d = 0; d < nd; ++d) off += real[d][oidx[d]][k[d]] * in_strides[d];
        p.offsets.push_back(off);
        int64_t d = static_cast<int64_t>(nd) - 1;
        for (; d >= 0; --d) {
          if (++k[d] < real[d][oidx[d]].size()) break;
          k[d] = 0;
        }
        if (d < 0) break;
      }
    }
    for (int64_t d = static_cast<int64_t>(nd) - 1; d >= 0; --d) {
      if (++oidx[d] < g.out[d]) break;
      oidx[d] = 0;
    }
  }
  p.begin.push_back(static_cast<int64_t>(p.offsets.size()));
  return p;
}

enum class PoolKind { kMax, kAverage, kLp };

Status pool_kernel(KernelContext& ctx, PoolKind kind) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  const Tensor& x0 = ctx.input(0);
  if (x0.rank() < 3) return ctx.error("input must be [N, C, D1, ...], got " + x0.description());
  if (!ctx.has_attr("kernel_shape")) return ctx.error("attribute 'kernel_shape' is required");
  Shape in_spatial(x0.shape().begin() + 2, x0.shape().end());
  WindowGeometry g;
  KILN_RETURN_IF_ERROR(window_geometry(ctx, in_spatial, ctx.attr_ints("kernel_shape"), ctx.attr_int("ceil_mode", 0) != 0, &g));
  bool include_pad = ctx.attr_int("count_include_pad", 0) != 0;
  int64_t p_norm = ctx.attr_int("p", 2);
  if (kind == PoolKind::kLp && p_norm <= 0) return ctx.error("attribute 'p' must be positive, got " + std::to_string(p_norm));
  int64_t storage_order = ctx.attr_int("storage_order", 0);
  if (storage_order != 0 && storage_order != 1) return ctx.error("storage_order must be 0 or 1, got " + std::to_string(storage_order));
  double window_elems = static_cast<double>(shape_numel(g.out));
  for (int64_t k : g.kernel) window_elems *= static_cast<double>(k);
  if (window_elems > double(int64_t(1) << 31)) return ctx.error("output size times kernel size is unreasonably large");
  WindowPlan plan = plan_windows(g);
  int64_t planes = x0.dim(0) * x0.dim(1);
  Shape out_shape = {x0.dim(0), x0.dim(1)};
  out_shape.insert(out_shape.end(), g.out.begin(), g.out.end());
  Tensor x = widen_to_float32(x0);
  Tensor y(x.dtype(), out_shape);
  Tensor indices(DType::kInt64, out_shape);
  // Column-major index of a row-major spatial offset, for storage_order = 1.
  std::vector<int64_t> rm_strides = strides_of(g.in), cm_strides(g.nd, 1);
  for (size_t d = 1; d < g.nd; ++d) cm_strides[d] = cm_strides[d - 1] * g.in[d - 1];
  auto column_major = [&](int64_t off) {
    int64_t r = 0;
    for (size_t d = 0; d < g.nd; ++d) {
      r += (off / rm_strides[d]) * cm_strides[d];
      off %= rm_strides[d];
    }
    return r;
  };
  bool ok = dispatch_numeric(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_floating_point_v<T>) {
      if (kind != PoolKind::kMax) return;  // only MaxPool takes integers (checked below)
    }
    for (int64_t pl = 0; pl < planes; ++pl) {
      const T* xs = x.data<T>() + pl * plan.in_size;
      T* ys = y.data<T>() + pl * plan.out_size;
      int64_t* is = indices.data<int64_t>() + pl * plan.out_size;
      for (int64_t o = 0; o < plan.out_size; ++o) {
        int64_t b = plan.begin[o], e = plan.begin[o + 1];
        if (kind == PoolKind::kMax) {
          T best = std::numeric_limits<T>::lowest();
          if constexpr (std::is_floating_point_v<T>) best = -std::numeric_limits<T>::infinity();
          int64_t arg = b < e ? plan.offsets[b] : 0;
          for (int64_t i = b; i < e; ++i) {
            if (xs[plan.offsets[i]] > best) {
              best = xs[plan.offsets[i]];
              arg = plan.offsets[i];
            }
          }
          ys[o] = best;
          is[o] = pl * plan.in_size + (storage_order == 1 ? column_major(arg) : arg);
        } else if (kind == PoolKind::kAverage) {
          double sum = 0;
          for (int64_t i = b; i < e; ++i) sum += xs[plan.offsets[i]];
          int64_t count = include_pad ? plan.padded_count[o] : e - b;
          ys[o] = static_cast<T>(count > 0 ? sum / static_cast<double>(count) : 0.0);
        } else {
          double sum = 0;
          for (int64_t i = b; i < e; ++i) sum += std::pow(std::fabs(static_cast<double>(xs[plan.offsets[i]])), static_cast<double>(p_norm));
          ys[o] = static_cast<T>(std::pow(sum, 1.0 / static_cast<double>(p_norm)));
        }
      }
    }
  });
  if (!ok || (kind != PoolKind::kMax && !dtype_is_float(x.dtype())))
    return ctx.unsupported("input dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  if (kind == PoolKind::kMax) ctx.set_output(1, indices);
  return OkStatus();
}

Status max_pool(KernelContext& ctx) { return pool_kernel(ctx, PoolKind::kMax); }
Status average_pool(KernelContext& ctx) { return pool_kernel(ctx, PoolKind::kAverage); }
Status lp_pool(KernelContext& ctx) { return pool_kernel(ctx, PoolKind::kLp); }

// Global pools: one window covering every spatial position.
Status global_pool(KernelContext& ctx, PoolKind kind) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  const Tensor& x0 = ctx.input(0);
  if (x0.rank() < 2) return ctx.error("input must be [N, C, ...], got " + x0.description());
  int64_t planes = x0.dim(0) * x0.dim(1);
  int64_t size = 1;
  Shape out_shape = {x0.dim(0), x0.dim(1)};
  for (int64_t d = 2; d < x0.rank(); ++d) {
    size *= x0.dim(d);
    out_shape.push_back(1);
  }
  double p = static_cast<double>(ctx.attr_int("p", 2));
  if (kind == PoolKind::kLp && p <= 0) return ctx.error("attribute 'p' must be positive");
  Tensor x = widen_to_float32(x0);
  Tensor y(x.dtype(), out_shape);
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t pl = 0; pl < planes; ++pl) {
      const T* xs = x.data<T>() + pl * size;
      double acc = kind == PoolKind::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
      for (int64_t i = 0; i < size; ++i) {
        if (kind == PoolKind::kMax) acc = std::max(acc, static_cast<double>(xs[i]));
        else if (kind == PoolKind::kAverage) acc += xs[i];
        else acc += std::pow(std::fabs(static_cast<double>(xs[i])), p);
      }
      if (kind == PoolKind::kAverage) acc = size ? acc / size : 0;
      if (kind == PoolKind::kLp) acc = std::pow(acc, 1.0 / p);
      y.data<T>()[pl] = static_cast<T>(acc);
    }
  });
  if (!ok) return ctx.unsupported("input dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

Status global_max_pool(KernelContext& ctx) { return global_pool(ctx, PoolKind::kMax); }
Status global_average_pool(KernelContext& ctx) { return global_pool(ctx, PoolKind::kAverage); }
Status global_lp_pool(KernelContext& ctx) { return global_pool(ctx, PoolKind::kLp); }

// MaxUnpool: scatters X into zeros at the flat positions given by I (as MaxPool produced them). As in the
// reference, the indices address a tensor of the inferred (unpadded) shape; an explicit output_shape input
// places that tensor at the origin of a possibly larger output.
Status max_unpool(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs X and I are required");
  const Tensor& x0 = ctx.input(0);
  const Tensor& ind = ctx.input(1);
  if (x0.rank() < 3) return ctx.error("X must be [N, C, D1, ...], got " + x0.description());
  if (ind.shape() != x0.shape() || !dtype_is_integer(ind.dtype()))
    return ctx.error("I must be an integer tensor of X's shape " + shape_to_string(x0.shape()) + ", got " + ind.description());
  size_t nd = static_cast<size_t>(x0.rank() - 2);
  std::vector<int64_t> kernel = ctx.attr_ints("kernel_shape");
  std::vector<int64_t> strides = ctx.attr_ints("strides", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * nd, 0));
  if (kernel.size() != nd || strides.size() != nd || pads.size() != 2 * nd)
    return ctx.error("kernel_shape, strides and pads must have " + std::to_string(nd) + ", " + std::to_string(nd) + " and " +
                     std::to_string(2 * nd) + " entries");
  Shape inferred = {x0.dim(0), x0.dim(1)};
  for (size_t d = 0; d < nd; ++d) {
    if (strides[d] <= 0 || kernel[d] <= 0 || strides[d] > (int64_t(1) << 31) || kernel[d] > (int64_t(1) << 31) ||
        pads[d] < 0 || pads[nd + d] < 0 || pads[d] > (int64_t(1) << 31) || pads[nd + d] > (int64_t(1) << 31))
      return ctx.error("invalid kernel_shape/strides/pads for input " + x0.description());
    int64_t v = (x0.dim(2 + d) - 1) * strides[d] - (pads[d] + pads[nd + d]) + kernel[d];
    if (v <= 0 || v > (int64_t(1) << 31)) return ctx.error("invalid kernel_shape/strides/pads for input " + x0.description());
    inferred.push_back(v);
  }
  double inferred_elems = 1;
  for (int64_t v : inferred) inferred_elems *= static_cast<double>(v);
  if (inferred_elems > double(int64_t(1) << 32)) return ctx.error("the unpooled shape " + shape_to_string(inferred) + " is unreasonably large");
  Shape out_shape = inferred;
  if (ctx.has_input(2)) {
    out_shape = ctx.input(2).to_int64_vector();
    if (out_shape.size() != inferred.size()) return ctx.error("output_shape " + shape_to_string(out_shape) + " must have rank " + std::to_string(inferred.size()));
    double elems = 1;
    for (int64_t v : out_shape) elems *= static_cast<double>(v);
    if (elems > double(int64_t(1) << 32)) return ctx.error("output_shape " + shape_to_string(out_shape) + " is unreasonably large");
    for (size_t d = 0; d < out_shape.size(); ++d)
      if (out_shape[d] < inferred[d]) return ctx.error("output_shape " + shape_to_string(out_shape) + " is smaller than the inferred shape " + shape_to_string(inferred));
  }
  Tensor small(x0.dtype(), inferred);
  int64_t total = small.numel();
  std::vector<int64_t> idx = ind.to_int64_vector();
  bool ok = dispatch_by_size(x0.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x0.raw_data());
    T* ys = static_cast<T*>(small.raw_data());
    for (int64_t i = 0; i < x0.numel(); ++i)
      if (idx[i] >= 0 && idx[i] < total) ys[idx[i]] = xs[i];
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  for (int64_t i : idx)
    if (i < 0 || i >= total) return ctx.error("index " + std::to_string(i) + " in I is out of range [0, " + std::to_string(total) + ")");
  if (out_shape == inferred) {
    ctx.set_output(0, small);
    return OkStatus();
  }
  Tensor y(x0.dtype(), out_shape);
  std::vector<int64_t> sstr = strides_of(inferred), ostr = strides_of(out_shape);
  for (int64_t i = 0; i < total; ++i) {
    int64_t rem = i, o = 0;
    for (size_t d = 0; d < inferred.size(); ++d) {
      o += (rem / sstr[d]) * ostr[d];
      rem %= sstr[d];
    }
    copy_element(small, i, y, o);
  }
  ctx.set_output(0, y);
  return OkStatus();
}

// MaxRoiPool (Caffe's ROIPooling): rois are [batch_index, x1, y1, x2, y2] in input coordinates before
// spatial_scale; each region is split into pooled_shape bins, each bin's maximum (0 for an empty bin).
Status max_roi_pool(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs X and rois are required");
  const Tensor& x0 = ctx.input(0);
  const Tensor& rois0 = ctx.input(1);
  if (x0.rank() != 4) return ctx.error("X must be [N, C, H, W], got " + x0.description());
  if (rois0.rank() != 2 || rois0.dim(1) != 5) return ctx.error("rois must be [num_rois, 5], got " + rois0.description());
  std::vector<int64_t> pooled = ctx.attr_ints("pooled_shape");
  if (pooled.size() != 2 || pooled[0] <= 0 || pooled[1] <= 0) return ctx.error("pooled_shape must be 2 positive ints, got " + shape_to_string(pooled));
  double scale = ctx.attr_float("spatial_scale", 1.0f);
  int64_t N = x0.dim(0), C = x0.dim(1), H = x0.dim(2), W = x0.dim(3), R = rois0.dim(0);
  Tensor x = widen_to_float32(x0), rois = widen_to_float32(rois0);
  Tensor y(x.dtype(), {R, C, pooled[0], pooled[1]});
  Status st;
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t r = 0; r < R && st.ok(); ++r) {
      double bd = rois.scalar_as_double(r * 5);
      int64_t b = bd >= 0 && bd < static_cast<double>(N) ? static_cast<int64_t>(bd) : -1;
      if (b < 0 || b >= N) { st = ctx.error("roi " + std::to_string(r) + " has batch index " + std::to_string(b) + " out of range"); return; }
      for (int64_t k = 1; k < 5; ++k) {
        double v = rois.scalar_as_double(r * 5 + k) * scale;
        if (!(std::fabs(v) < 1e12)) { st = ctx.error("roi " + std::to_string(r) + " has a non-finite or huge coordinate"); return; }
      }
      int64_t x1 = std::llround(rois.scalar_as_double(r * 5 + 1) * scale), y1 = std::llround(rois.scalar_as_double(r * 5 + 2) * scale);
      int64_t x2 = std::llround(rois.scalar_as_double(r * 5 + 3) * scale), y2 = std::llround(rois.scalar_as_double(r * 5 + 4) * scale);
      double rh = static_cast<double>(std::max<int64_t>(y2 - y1 + 1, 1)), rw = static_cast<double>(std::max<int64_t>(x2 - x1 + 1, 1));
      double bh = rh / pooled[0], bw = rw / pooled[1];
      for (int64_t c = 0; c < C; ++c) {
        const T* plane = x.data<T>() + (b * C + c) * H * W;
        for (int64_t ph = 0; ph < pooled[0]; ++ph)
          for (int64_t pw = 0; pw < pooled[1]; ++pw) {
            int64_t hs = std::clamp<int64_t>(static_cast<int64_t>(std::floor(ph * bh)) + y1, 0, H);
            int64_t he = std::clamp<int64_t>(static_cast<int64_t>(std::ceil((ph + 1) * bh)) + y1, 0, H);
            int64_t ws = std::clamp<int64_t>(static_cast<int64_t>(std::floor(pw * bw)) + x1, 0, W);
            int64_t we = std::clamp<int64_t>(static_cast<int64_t>(std::ceil((pw + 1) * bw)) + x1, 0, W);
            bool empty = he <= hs || we <= ws;
            T best = empty ? T(0) : -std::numeric_limits<T>::infinity();
            for (int64_t h = hs; h < he; ++h)
              for (int64_t w = ws; w < we; ++w) best = std::max(best, plane[h * W + w]);
            y.data<T>()[((r * C + c) * pooled[0] + ph) * pooled[1] + pw] = best;
          }
      }
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  KILN_RETURN_IF_ERROR(st);
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

}  // namespace

void register_pool_ops(ir::OpRegistry& r) {
  r.add("MaxPool", 1, max_pool);
  r.add("AveragePool", 1, average_pool);
  r.add("LpPool", 1, lp_pool);
  r.add("GlobalMaxPool", 1, global_max_pool);
  r.add("GlobalAveragePool", 1, global_average_pool);
  r.add("GlobalLpPool", 1, global_lp_pool);
  r.add("MaxUnpool", 9, max_unpool);
  r.add("MaxRoiPool", 1, max_roi_pool);
}

}  // namespace kiln::cpu
