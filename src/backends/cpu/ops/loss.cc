// CPU reference kernels: loss ops (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss).
// Both gather -input[n, target[n, d...], d...] with optional per-class weights and ignore_index, then
// reduce with "none", "sum" or "mean" (mean divides by the sum of the weights that were applied).
#include <cmath>
#include <limits>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"

namespace kiln::cpu {
namespace {

using e2::from_doubles;
using e2::is_real_float;
using e2::to_doubles;

// `log_prob` holds the (log-)probabilities of shape (N, C, D...) flattened; computes the loss outputs.
Status nll_from_log_prob(KernelContext& ctx, const Tensor& input, const std::vector<double>& log_prob) {
  const Tensor& target = ctx.input(1);
  const int64_t n = input.dim(0), c = input.dim(1);
  const int64_t inner = n == 0 || c == 0 ? 0 : input.numel() / (n * c);
  if (!dtype_is_integer(target.dtype())) return ctx.error("target must be an integer tensor, got " + dtype_name(target.dtype()));
  Shape want_target(input.shape());
  want_target.erase(want_target.begin() + 1);
  if (target.shape() != want_target)
    return ctx.error("target shape " + shape_to_string(target.shape()) + " must be " + shape_to_string(want_target) +
                     " for input " + shape_to_string(input.shape()));
  std::vector<double> weight;
  if (ctx.has_input(2)) {
    const Tensor& w = ctx.input(2);
    if (!is_real_float(w.dtype()) || w.shape() != Shape{c})
      return ctx.error("weight must be a float tensor of shape [" + std::to_string(c) + "], got " + w.description());
    weight = to_doubles(w);
  }
  const bool has_ignore = ctx.has_attr("ignore_index");
  const int64_t ignore_index = ctx.attr_int("ignore_index", 0);
  const std::string reduction = ctx.attr_string("reduction", "mean");
  if (reduction != "none" && reduction != "sum" && reduction != "mean")
    return ctx.error("reduction must be none, sum or mean, got '" + reduction + "'");

  const std::vector<int64_t> tgt = target.to_int64_vector();
  std::vector<double> loss(tgt.size(), 0.0);
  double loss_sum = 0, weight_sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < inner; ++d) {
      const size_t ti = static_cast<size_t>(i * inner + d);
      const int64_t t = tgt[ti];
      if (has_ignore && t == ignore_index) continue;  // loss 0, weight 0
      if (t < 0 || t >= c)
        return ctx.error("target value " + std::to_string(t) + " out of range [0, " + std::to_string(c) + ")");
      const double w = weight.empty() ? 1.0 : weight[static_cast<size_t>(t)];
      loss[ti] = -log_prob[static_cast<size_t>((i * c + t) * inner + d)] * w;
      loss_sum += loss[ti];
      weight_sum += w;
    }
  }
  if (reduction == "none") {
    ctx.set_output(0, from_doubles(loss, target.shape(), input.dtype()));
  } else if (reduction == "sum") {
    ctx.set_output(0, from_doubles({loss_sum}, {}, input.dtype()));
  } else {
    // All elements ignored: 0 / 0 = NaN, as in the reference.
    ctx.set_output(0, from_doubles({loss_sum / weight_sum}, {}, input.dtype()));
  }
  return OkStatus();
}

Status check_input(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("input and target are required");
  const Tensor& x = ctx.input(0);
  if (!is_real_float(x.dtype())) return ctx.error("unsupported dtype " + dtype_name(x.dtype()));
  if (x.rank() < 2) return ctx.error("input must be at least 2D (N, C, ...), got " + shape_to_string(x.shape()));
  return OkStatus();
}

Status nll_loss_kernel(KernelContext& ctx) {
  KILN_RETURN_IF_ERROR(check_input(ctx));
  return nll_from_log_prob(ctx, ctx.input(0), to_doubles(ctx.input(0)));
}

Status softmax_cross_entropy_kernel(KernelContext& ctx) {
  KILN_RETURN_IF_ERROR(check_input(ctx));
  const Tensor& x = ctx.input(0);
  const int64_t n = x.dim(0), c = x.dim(1);
  const int64_t inner = n == 0 || c == 0 ? 0 : x.numel() / (n * c);
  const std::vector<double> xv = to_doubles(x);
  // log_softmax over axis 1.
  std::vector<double> lp(xv.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < inner; ++d) {
      auto at = [&](int64_t k) { return static_cast<size_t>((i * c + k) * inner + d); };
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < c; ++k) m = std::max(m, xv[at(k)]);
      double sum = 0;
      for (int64_t k = 0; k < c; ++k) sum += std::exp(xv[at(k)] - m);
      const double log_sum = std::log(sum);
      for (int64_t k = 0; k < c; ++k) lp[at(k)] = xv[at(k)] - m - log_sum;
    }
  }
  KILN_RETURN_IF_ERROR(nll_from_log_prob(ctx, x, lp));
  if (ctx.num_outputs() > 1) ctx.set_output(1, from_doubles(lp, x.shape(), x.dtype()));
  return OkStatus();
}

}  // namespace

void register_loss_ops(ir::OpRegistry& r) {
  r.add("NegativeLogLikelihoodLoss", 12, nll_loss_kernel);
  r.add("SoftmaxCrossEntropyLoss", 12, softmax_cross_entropy_kernel);
}

}  // namespace kiln::cpu
