// CPU reference kernels: reductions (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1,
// ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceSumSquare).
//
// One generic kernel: the axes become a per-input-axis "reduced" flag; each input element is folded into
// the accumulator of its output element (found with an odometer, so no index arrays are built).
#include <cmath>
#include <limits>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

enum class ReduceKind { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kLogSum, kLogSumExp, kSumSquare };

// The opset from which the op takes `axes` as an input instead of an attribute.
int axes_input_since(ReduceKind kind) { return kind == ReduceKind::kSum ? 13 : 18; }

// Accumulator type: double for floats (more accurate than summing in float32), 64-bit for integers.
template <class T>
using AccOf = std::conditional_t<std::is_same_v<T, bool>, uint8_t,  // not bool: std::vector<bool> is packed
              std::conditional_t<std::is_floating_point_v<T>, double,
              std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>>>;

// For each input element, folds f(acc[out], value) in place. `out_strides` has, per input axis, the stride
// of that axis in the output (0 for reduced axes).
template <class T, class A, class F>
void fold(const T* in, const Shape& in_shape, const std::vector<int64_t>& out_strides, std::vector<A>& acc, F f) {
  int64_t n = shape_numel(in_shape);
  size_t rank = in_shape.size();
  std::vector<int64_t> idx(rank, 0);
  int64_t out = 0;
  for (int64_t i = 0; i < n; ++i) {
    f(acc[out], in[i]);
    for (int64_t ax = static_cast<int64_t>(rank) - 1; ax >= 0; --ax) {
      if (++idx[ax] < in_shape[ax]) {
        out += out_strides[ax];
        break;
      }
      out -= out_strides[ax] * (idx[ax] - 1);
      idx[ax] = 0;
    }
  }
}

template <class T>
Status reduce_typed(KernelContext& ctx, ReduceKind kind, const Tensor& x, const std::vector<bool>& reduced,
                    bool keepdims, Tensor* result) {
  using A = AccOf<T>;
  const Shape& in_shape = x.shape();
  Shape keep_shape = in_shape, out_shape;
  int64_t count = 1;  // elements folded into each output
  for (size_t d = 0; d < in_shape.size(); ++d) {
    if (reduced[d]) {
      keep_shape[d] = 1;
      count *= in_shape[d];
      if (keepdims) out_shape.push_back(1);
    } else {
      out_shape.push_back(in_shape[d]);
    }
  }
  std::vector<int64_t> keep_strides = strides_of(keep_shape);
  std::vector<int64_t> out_strides(in_shape.size());
  for (size_t d = 0; d < in_shape.size(); ++d) out_strides[d] = reduced[d] ? 0 : keep_strides[d];
  int64_t out_n = shape_numel(keep_shape);
  const T* in = x.data<T>();

  std::vector<A> acc(static_cast<size_t>(out_n));
  std::vector<double> maxes;  // LogSumExp: per-output maximum, for a stable exp-sum
  auto lowest = [] {
    if constexpr (std::is_floating_point_v<A>) return -std::numeric_limits<A>::infinity();
    else return std::numeric_limits<T>::lowest();
  };
  auto highest = [] {
    if constexpr (std::is_floating_point_v<A>) return std::numeric_limits<A>::infinity();
    else return std::numeric_limits<T>::max();
  };

  if constexpr (std::is_same_v<T, bool>) {
    if (kind != ReduceKind::kMax && kind != ReduceKind::kMin) return ctx.unsupported("bool input is only supported by ReduceMax and ReduceMin");
  }
  switch (kind) {
    case ReduceKind::kMax:
      std::fill(acc.begin(), acc.end(), static_cast<A>(lowest()));
      fold(in, in_shape, out_strides, acc, [](A& a, T v) {
        if constexpr (std::is_floating_point_v<A>) { if (std::isnan(static_cast<A>(v)) || v > a) a = static_cast<A>(v); }
        else if (static_cast<A>(v) > a) a = static_cast<A>(v);
      });
      break;
    case ReduceKind::kMin:
      std::fill(acc.begin(), acc.end(), static_cast<A>(highest()));
      fold(in, in_shape, out_strides, acc, [](A& a, T v) {
        if constexpr (std::is_floating_point_v<A>) { if (std::isnan(static_cast<A>(v)) || v < a) a = static_cast<A>(v); }
        else if (static_cast<A>(v) < a) a = static_cast<A>(v);
      });
      break;
    case ReduceKind::kProd:
      if constexpr (!std::is_same_v<T, bool>) {
        std::fill(acc.begin(), acc.end(), A(1));
        fold(in, in_shape, out_strides, acc, [](A& a, T v) { a *= static_cast<A>(v); });
      }
      break;
    case ReduceKind::kSum:
    case ReduceKind::kMean:
    case ReduceKind::kLogSum:
      if constexpr (!std::is_same_v<T, bool>) fold(in, in_shape, out_strides, acc, [](A& a, T v) { a += static_cast<A>(v); });
      break;
    case ReduceKind::kL1:
      if constexpr (!std::is_same_v<T, bool>) {
        fold(in, in_shape, out_strides, acc, [](A& a, T v) {
          if constexpr (std::is_signed_v<A>) a += v < 0 ? -static_cast<A>(v) : static_cast<A>(v);
          else a += static_cast<A>(v);
        });
      }
      break;
    case ReduceKind::kL2:
    case ReduceKind::kSumSquare:
      if constexpr (!std::is_same_v<T, bool>) fold(in, in_shape, out_strides, acc, [](A& a, T v) { a += static_cast<A>(v) * static_cast<A>(v); });
      break;
    case ReduceKind::kLogSumExp:
      if constexpr (!std::is_same_v<T, bool>) {
        maxes.assign(static_cast<size_t>(out_n), -std::numeric_limits<double>::infinity());
        fold(in, in_shape, out_strides, maxes, [](double& a, T v) { if (static_cast<double>(v) > a) a = static_cast<double>(v); });
        // Second pass: sum of exp(v - max) per output. `acc` is indexed like `maxes`.
        std::vector<double> sums(static_cast<size_t>(out_n), 0.0);
        std::vector<int64_t> idx(in_shape.size(), 0);
        int64_t n = x.numel(), out = 0;
        for (int64_t i = 0; i < n; ++i) {
          double m = std::isinf(maxes[out]) ? 0.0 : maxes[out];
          sums[out] += std::exp(static_cast<double>(in[i]) - m);
          for (int64_t ax = static_cast<int64_t>(in_shape.size()) - 1; ax >= 0; --ax) {
            if (++idx[ax] < in_shape[ax]) { out += out_strides[ax]; break; }
            out -= out_strides[ax] * (idx[ax] - 1);
            idx[ax] = 0;
          }
        }
        for (int64_t o = 0; o < out_n; ++o) {
          double m = std::isinf(maxes[o]) ? 0.0 : maxes[o];
          acc[o] = static_cast<A>(std::log(sums[o]) + m);
        }
      }
      break;
  }

  Tensor y(x.dtype(), keepdims ? keep_shape : out_shape);
  T* out = y.data<T>();
  for (int64_t o = 0; o < out_n; ++o) {
    A a = acc[o];
    if constexpr (std::is_same_v<T, bool>) {
      out[o] = a != 0;
    } else {
      switch (kind) {
        case ReduceKind::kMean:
          if constexpr (std::is_floating_point_v<A>) out[o] = static_cast<T>(a / static_cast<double>(count));
          else out[o] = count == 0 ? T(0) : static_cast<T>(a / static_cast<A>(count));
          break;
        case ReduceKind::kL2: out[o] = static_cast<T>(std::sqrt(static_cast<double>(a))); break;
        case ReduceKind::kLogSum: out[o] = static_cast<T>(std::log(static_cast<double>(a))); break;
        default: out[o] = static_cast<T>(a); break;
      }
    }
  }
  *result = y;
  return OkStatus();
}

Status reduce_kernel(KernelContext& ctx, ReduceKind kind) {
  if (!ctx.has_input(0)) return ctx.error("missing input 'data'");
  const Tensor& x0 = ctx.input(0);
  int64_t rank = x0.rank();
  bool keepdims = ctx.attr_int("keepdims", 1) != 0;
  bool noop_with_empty_axes = ctx.attr_int("noop_with_empty_axes", 0) != 0;

  std::vector<int64_t> axes;
  if (ctx.opset() >= axes_input_since(kind)) {
    if (ctx.has_input(1)) {
      const Tensor& a = ctx.input(1);
      if (!dtype_is_integer(a.dtype()) || a.rank() > 1) return ctx.error("input 'axes' must be a 1-D integer tensor, got " + a.description());
      axes = a.to_int64_vector();
    }
  } else {
    axes = ctx.attr_ints("axes", {});
  }

  std::vector<bool> reduced(static_cast<size_t>(rank), false);
  if (axes.empty()) {
    if (!noop_with_empty_axes) std::fill(reduced.begin(), reduced.end(), true);
  } else {
    for (int64_t a : axes) {
      if (a < -rank || a >= rank) return ctx.error("axis " + std::to_string(a) + " is out of range for rank " + std::to_string(rank));
      int64_t n = a < 0 ? a + rank : a;
      if (reduced[n]) return ctx.error("axis " + std::to_string(a) + " is repeated in 'axes'");
      reduced[n] = true;
    }
  }

  Tensor x = widen_to_float32(x0);
  Tensor y;
  Status st;
  bool ok = dispatch_numeric_or_bool(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    st = reduce_typed<T>(ctx, kind, x, reduced, keepdims, &y);
  });
  if (!ok) return ctx.unsupported("input dtype " + dtype_name(x0.dtype()) + " is not supported");
  KILN_RETURN_IF_ERROR(st);
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

Status reduce_sum(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kSum); }
Status reduce_mean(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kMean); }
Status reduce_max(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kMax); }
Status reduce_min(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kMin); }
Status reduce_prod(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kProd); }
Status reduce_l1(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kL1); }
Status reduce_l2(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kL2); }
Status reduce_log_sum(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kLogSum); }
Status reduce_log_sum_exp(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kLogSumExp); }
Status reduce_sum_square(KernelContext& ctx) { return reduce_kernel(ctx, ReduceKind::kSumSquare); }

}  // namespace

void register_reduce_ops(ir::OpRegistry& r) {
  r.add("ReduceSum", 1, reduce_sum);
  r.add("ReduceMean", 1, reduce_mean);
  r.add("ReduceMax", 1, reduce_max);
  r.add("ReduceMin", 1, reduce_min);
  r.add("ReduceProd", 1, reduce_prod);
  r.add("ReduceL1", 1, reduce_l1);
  r.add("ReduceL2", 1, reduce_l2);
  r.add("ReduceLogSum", 1, reduce_log_sum);
  r.add("ReduceLogSumExp", 1, reduce_log_sum_exp);
  r.add("ReduceSumSquare", 1, reduce_sum_square);
}

}  // namespace kiln::cpu
