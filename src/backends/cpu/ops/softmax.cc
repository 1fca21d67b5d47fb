// CPU reference kernels: Softmax, LogSoftmax, Hardmax.
//
// Opset 13 changed the axis semantics: from 13 on, the op works along one axis (default -1); before it, the
// input is coerced to 2-D [prod(dims before axis), prod(dims from axis)] (default axis 1) and the op works
// along the whole second dimension. Both are a loop over (outer, axis, inner) blocks.
#include <cmath>
#include <limits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

enum class SoftmaxKind { kSoftmax, kLogSoftmax, kHardmax };

template <class T>
void softmax_typed(SoftmaxKind kind, const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t in = 0; in < inner; ++in) {
      const T* xs = x + o * n * inner + in;
      T* ys = y + o * n * inner + in;
      if (n == 0) continue;
      T mx = xs[0];
      int64_t arg = 0;
      for (int64_t k = 1; k < n; ++k) {
        if (xs[k * inner] > mx) {
          mx = xs[k * inner];
          arg = k;
        }
      }
      if (kind == SoftmaxKind::kHardmax) {
        for (int64_t k = 0; k < n; ++k) ys[k * inner] = k == arg ? T(1) : T(0);
        continue;
      }
      // Subtract the max so exp never overflows (the "large number" tests).
      if (std::isinf(mx)) mx = 0;
      double sum = 0;
      for (int64_t k = 0; k < n; ++k) sum += std::exp(static_cast<double>(xs[k * inner] - mx));
      if (kind == SoftmaxKind::kSoftmax) {
        for (int64_t k = 0; k < n; ++k) ys[k * inner] = static_cast<T>(std::exp(static_cast<double>(xs[k * inner] - mx)) / sum);
      } else {
        double log_sum = std::log(sum);
        for (int64_t k = 0; k < n; ++k) ys[k * inner] = static_cast<T>(static_cast<double>(xs[k * inner] - mx) - log_sum);
      }
    }
  }
}

Status softmax_kernel(KernelContext& ctx, SoftmaxKind kind) {
  if (!ctx.has_input(0)) return ctx.error("missing input 'input'");
  const Tensor& x0 = ctx.input(0);
  int64_t rank = x0.rank();
  bool new_semantics = ctx.opset() >= 13;
  int64_t axis_attr = ctx.attr_int("axis", new_semantics ? -1 : 1);
  if (rank == 0) return ctx.error("input must have rank >= 1, got a scalar");
  KILN_ASSIGN_OR_RETURN(int64_t axis, node_axis(ctx, axis_attr, rank));
  int64_t outer = 1, n = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x0.dim(d);
  if (new_semantics) {
    n = x0.dim(axis);
    for (int64_t d = axis + 1; d < rank; ++d) inner *= x0.dim(d);
  } else {
    for (int64_t d = axis; d < rank; ++d) n *= x0.dim(d);
  }
  Tensor x = widen_to_float32(x0);
  Tensor y(x.dtype(), x.shape());
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    softmax_typed<T>(kind, x.data<T>(), y.data<T>(), outer, n, inner);
  });
  if (!ok) return ctx.unsupported("input dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

Status softmax(KernelContext& ctx) { return softmax_kernel(ctx, SoftmaxKind::kSoftmax); }
Status log_softmax(KernelContext& ctx) { return softmax_kernel(ctx, SoftmaxKind::kLogSoftmax); }
Status hardmax(KernelContext& ctx) { return softmax_kernel(ctx, SoftmaxKind::kHardmax); }

}  // namespace

void register_softmax_ops(ir::OpRegistry& r) {
  r.add("Softmax", 1, softmax);
  r.add("LogSoftmax", 1, log_softmax);
  r.add("Hardmax", 1, hardmax);
}

}  // namespace kiln::cpu
