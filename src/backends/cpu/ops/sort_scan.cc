// CPU reference kernels: ordering and scans (TopK, ArgMax, ArgMin, Unique, CumSum, CumProd).
// Values are compared in their own type (float16/bfloat16 widened to float32); outputs copy the original
// elements, so no precision is lost.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"

namespace kiln::cpu {
namespace {

// A three-way comparison of elements i and j of one tensor (-1, 0, 1); NaN sorts after every number and
// equals NaN, so sorting and grouping stay well defined.
using ElemCompare = std::function<int(int64_t, int64_t)>;

Result<ElemCompare> element_compare(const KernelContext& ctx, const Tensor& t) {
  if (t.dtype() == DType::kString) {
    const std::string* s = t.strings();
    return ElemCompare([s](int64_t i, int64_t j) { return s[i] < s[j] ? -1 : (s[j] < s[i] ? 1 : 0); });
  }
  // Holding the widened tensor inside the closure keeps its storage alive.
  Tensor w = widen_to_float32(t);
  ElemCompare cmp;
  bool ok = dispatch_numeric_or_bool(w.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cmp = [w](int64_t i, int64_t j) {
      const T a = w.data<T>()[i], b = w.data<T>()[j];
      if constexpr (std::is_floating_point_v<T>) {
        const bool na = std::isnan(a), nb = std::isnan(b);
        if (na || nb) return na == nb ? 0 : (na ? 1 : -1);
      }
      return a < b ? -1 : (b < a ? 1 : 0);
    };
  });
  if (!ok) {
    if (dtype_size(t.dtype()) != 1) return ctx.unsupported("cannot compare elements of " + t.description());
    // Sub-byte integers: one per byte, signed ones as int8.
    const bool is_signed = dtype_is_signed_int(t.dtype());
    cmp = [t, is_signed](int64_t i, int64_t j) {
      const int a = is_signed ? t.data<int8_t>()[i] : t.data<uint8_t>()[i];
      const int b = is_signed ? t.data<int8_t>()[j] : t.data<uint8_t>()[j];
      return a < b ? -1 : (b < a ? 1 : 0);
    };
  }
  return cmp;
}

// Splits a shape around `axis` into outer * dim * inner.
struct AxisSplit {
  int64_t outer = 1, dim = 1, inner = 1;
};
AxisSplit split_at(const Shape& s, int64_t axis) {
  AxisSplit r;
  for (int64_t a = 0; a < axis; ++a) r.outer *= s[a];
  r.dim = s.empty() ? 1 : s[axis];
  for (size_t a = axis + 1; a < s.size(); ++a) r.inner *= s[a];
  return r;
}

Status topk_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() == 0) return ctx.error("input must have rank >= 1");
  int64_t k = 0;
  if (ctx.has_input(1)) {
    const Tensor& kt = ctx.input(1);
    if (kt.numel() != 1 || !dtype_is_integer(kt.dtype())) return ctx.error("K must be one integer, got " + kt.description());
    k = kt.scalar_as_int(0);
  } else {
    k = ctx.attr_int("k", -1);
  }
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", -1), x.rank()));
  if (k < 0 || k > x.dim(axis))
    return ctx.error("k " + std::to_string(k) + " is outside [0, " + std::to_string(x.dim(axis)) + "] for input " +
                     x.description());
  const bool largest = ctx.attr_int("largest", 1) != 0;
  KILN_ASSIGN_OR_RETURN(ElemCompare cmp, element_compare(ctx, x));
  const AxisSplit s = split_at(x.shape(), axis);
  Shape out_shape = x.shape();
  out_shape[axis] = k;
  Tensor values(x.dtype(), out_shape), indices(DType::kInt64, out_shape);
  std::vector<int64_t> order(static_cast<size_t>(s.dim));
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t in = 0; in < s.inner; ++in) {
      const int64_t base = o * s.dim * s.inner + in;
      std::iota(order.begin(), order.end(), 0);
      // Stable sort keeps equal values in index order: ties go to the lower index.
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        const int c = cmp(base + a * s.inner, base + b * s.inner);
        return largest ? c > 0 : c < 0;
      });
      for (int64_t j = 0; j < k; ++j) {
        const int64_t dst = (o * k + j) * s.inner + in;
        copy_element(x, base + order[j] * s.inner, values, dst);
        indices.data<int64_t>()[dst] = order[j];
      }
    }
  ctx.set_output(0, values);
  ctx.set_output(1, indices);
  return OkStatus();
}

// ArgMax (sign 1) and ArgMin (sign -1).
Status arg_extreme(KernelContext& ctx, int sign) {
  const Tensor& x = ctx.input(0);
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), x.rank()));
  const bool keepdims = ctx.attr_int("keepdims", 1) != 0;
  const bool last = ctx.attr_int("select_last_index", 0) != 0;
  KILN_ASSIGN_OR_RETURN(ElemCompare cmp, element_compare(ctx, x));
  const AxisSplit s = split_at(x.shape(), axis);
  if (s.dim == 0) return ctx.error("cannot take the arg of an empty axis of " + x.description());
  Shape out_shape = x.shape();
  if (x.rank() > 0) {
    if (keepdims) out_shape[axis] = 1;
    else out_shape.erase(out_shape.begin() + axis);
  }
  Tensor out(DType::kInt64, out_shape);
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t in = 0; in < s.inner; ++in) {
      const int64_t base = o * s.dim * s.inner + in;
      int64_t best = 0;
      for (int64_t j = 1; j < s.dim; ++j) {
        const int c = cmp(base + j * s.inner, base + best * s.inner) * sign;
        if (c > 0 || (c == 0 && last)) best = j;
      }
      out.data<int64_t>()[o * s.inner + in] = best;
    }
  ctx.set_output(0, out);
  return OkStatus();
}
Status argmax_kernel(KernelContext& ctx) { return arg_extreme(ctx, 1); }
Status argmin_kernel(KernelContext& ctx) { return arg_extreme(ctx, -1); }

Status unique_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const bool sorted = ctx.attr_int("sorted", 1) != 0;
  // Without an axis, Unique works on the flattened input; with one, on slices along it.
  Tensor src = x;
  int64_t axis = 0;
  const bool has_axis = ctx.has_attr("axis");
  if (has_axis) {
    if (x.rank() == 0) return ctx.error("axis given for a scalar input");
    KILN_ASSIGN_OR_RETURN(axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), x.rank()));
  } else {
    src = x.reshaped({x.numel()});
  }
  KILN_ASSIGN_OR_RETURN(ElemCompare cmp, element_compare(ctx, src));
  const AxisSplit s = split_at(src.shape(), axis);
  auto compare_items = [&](int64_t a, int64_t b) {
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t in = 0; in < s.inner; ++in) {
        const int c = cmp((o * s.dim + a) * s.inner + in, (o * s.dim + b) * s.inner + in);
        if (c != 0) return c;
      }
    return 0;
  };
  std::vector<int64_t> order(static_cast<size_t>(s.dim));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return compare_items(a, b) < 0; });
  // Group equal items; stable sorting puts each group's first occurrence first.
  std::vector<int64_t> firsts, counts, group_of(static_cast<size_t>(s.dim));
  for (size_t i = 0; i < order.size(); ++i) {
    if (i == 0 || compare_items(order[i - 1], order[i]) != 0) {
      firsts.push_back(order[i]);
      counts.push_back(0);
    }
    group_of[order[i]] = static_cast<int64_t>(firsts.size()) - 1;
    counts.back()++;
  }
  // Output order of the groups: sorted by value, or by first occurrence.
  std::vector<int64_t> groups(firsts.size());
  std::iota(groups.begin(), groups.end(), 0);
  if (!sorted) std::sort(groups.begin(), groups.end(), [&](int64_t a, int64_t b) { return firsts[a] < firsts[b]; });
  std::vector<int64_t> rank_of_group(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) rank_of_group[groups[i]] = static_cast<int64_t>(i);
  const int64_t n = static_cast<int64_t>(groups.size());
  Shape y_shape = src.shape();
  y_shape[axis] = n;
  Tensor y(x.dtype(), y_shape);
  Tensor indices(DType::kInt64, {n}), inverse(DType::kInt64, {s.dim}), count_t(DType::kInt64, {n});
  for (int64_t g = 0; g < n; ++g) {
    const int64_t item = firsts[groups[g]];
    for (int64_t o = 0; o < s.outer; ++o)
      mv::copy_block(src, (o * s.dim + item) * s.inner, y, (o * n + g) * s.inner, s.inner);
    indices.data<int64_t>()[g] = item;
    count_t.data<int64_t>()[g] = counts[groups[g]];
  }
  for (int64_t i = 0; i < s.dim; ++i) inverse.data<int64_t>()[i] = rank_of_group[group_of[i]];
  ctx.set_output(0, y);
  ctx.set_output(1, indices);
  ctx.set_output(2, inverse);
  ctx.set_output(3, count_t);
  return OkStatus();
}

// CumSum (product false) and CumProd (product true), with exclusive and reverse.
Status cumulative(KernelContext& ctx, bool product) {
  const Tensor& x = ctx.input(0);
  const Tensor& axis_t = ctx.input(1);
  if (axis_t.numel() != 1 || !dtype_is_integer(axis_t.dtype()))
    return ctx.error("axis must be one integer, got " + axis_t.description());
  if (x.rank() == 0) return ctx.error("input must have rank >= 1");
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, axis_t.scalar_as_int(0), x.rank()));
  const bool exclusive = ctx.attr_int("exclusive", 0) != 0;
  const bool reverse = ctx.attr_int("reverse", 0) != 0;
  const AxisSplit s = split_at(x.shape(), axis);
  Tensor w = widen_to_float32(x);
  Tensor out(w.dtype(), x.shape());
  bool ok = dispatch_numeric(w.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = w.data<T>();
    T* o = out.data<T>();
    for (int64_t a = 0; a < s.outer; ++a)
      for (int64_t b = 0; b < s.inner; ++b) {
        T acc = product ? T(1) : T(0);
        for (int64_t step = 0; step < s.dim; ++step) {
          const int64_t j = reverse ? s.dim - 1 - step : step;
          const int64_t p = (a * s.dim + j) * s.inner + b;
          if (exclusive) o[p] = acc;
          acc = product ? static_cast<T>(acc * in[p]) : static_cast<T>(acc + in[p]);
          if (!exclusive) o[p] = acc;
        }
      }
  });
  if (!ok) return ctx.unsupported("does not support " + x.description());
  ctx.set_output(0, narrow_from_float32(out, x.dtype()));
  return OkStatus();
}
Status cumsum_kernel(KernelContext& ctx) { return cumulative(ctx, false); }
Status cumprod_kernel(KernelContext& ctx) { return cumulative(ctx, true); }

}  // namespace

void register_sort_scan_ops(ir::OpRegistry& r) {
  r.add("TopK", 1, topk_kernel);
  r.add("ArgMax", 1, argmax_kernel);
  r.add("ArgMin", 1, argmin_kernel);
  ir::OpSchema unique;
  unique.op_type = "Unique";
  unique.since_version = 11;
  unique.cpu_kernel = unique_kernel;
  unique.data_dependent_shape = true;
  r.add(unique);
  r.add("CumSum", 11, cumsum_kernel);
  r.add("CumProd", 26, cumprod_kernel);
}

}  // namespace kiln::cpu
