// CPU reference kernels: ai.onnx.preview.training optimizers (Adagrad, Adam, Momentum).
// Each takes R (learning rate, scalar), T (step count, scalar int64), then n tensors to optimize followed
// by their gradients and optimizer states, and returns the updated tensors then the updated states.
#include <cmath>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"

namespace kiln::cpu {
namespace {

using e2::domain_schema;
using e2::from_doubles;
using e2::is_real_float;
using e2::to_doubles;

struct OptimizerArgs {
  double r = 0;
  int64_t t = 0;
  int64_t n = 0;  // number of optimized tensors
};

// Validates R, T and that the remaining inputs form `groups` groups of n same-shaped float tensors.
Result<OptimizerArgs> read_args(KernelContext& ctx, int64_t groups) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("R and T are required");
  const Tensor& r = ctx.input(0);
  const Tensor& t = ctx.input(1);
  if (!is_real_float(r.dtype()) || r.numel() != 1) return ctx.error("R must be a float scalar, got " + r.description());
  if (!dtype_is_integer(t.dtype()) || t.numel() != 1) return ctx.error("T must be an integer scalar, got " + t.description());
  const int64_t rest = static_cast<int64_t>(ctx.num_inputs()) - 2;
  if (rest <= 0 || rest % groups != 0)
    return ctx.error("expected 2 + " + std::to_string(groups) + "*n inputs, got " + std::to_string(ctx.num_inputs()));
  OptimizerArgs a;
  a.r = r.scalar_as_double(0);
  a.t = t.scalar_as_int(0);
  a.n = rest / groups;
  for (int64_t i = 0; i < a.n; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const size_t idx = static_cast<size_t>(2 + g * a.n + i);
      if (!ctx.has_input(idx)) return ctx.error("input " + std::to_string(idx) + " is missing");
      const Tensor& x = ctx.input(idx);
      if (!is_real_float(x.dtype())) return ctx.error("input " + std::to_string(idx) + " has unsupported dtype " + dtype_name(x.dtype()));
      if (x.shape() != ctx.input(static_cast<size_t>(2 + i)).shape())
        return ctx.error("input " + std::to_string(idx) + " shape " + shape_to_string(x.shape()) + " differs from X " +
                         shape_to_string(ctx.input(static_cast<size_t>(2 + i)).shape()));
    }
  }
  return a;
}

Status adagrad_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(OptimizerArgs a, read_args(ctx, 3));
  const double decay = ctx.attr_float("decay_factor", 0), eps = ctx.attr_float("epsilon", 0), norm = ctx.attr_float("norm_coefficient", 0);
  const double r = a.r / (1 + static_cast<double>(a.t) * decay);
  for (int64_t i = 0; i < a.n; ++i) {
    const Tensor& xt = ctx.input(static_cast<size_t>(2 + i));
    const Tensor& ht = ctx.input(static_cast<size_t>(2 + 2 * a.n + i));
    std::vector<double> x = to_doubles(xt), g = to_doubles(ctx.input(static_cast<size_t>(2 + a.n + i))), h = to_doubles(ht);
    for (size_t k = 0; k < x.size(); ++k) {
      const double gr = norm * x[k] + g[k];
      h[k] += gr * gr;
      x[k] -= r * gr / (std::sqrt(h[k]) + eps);
    }
    ctx.set_output(static_cast<size_t>(i), from_doubles(x, xt.shape(), xt.dtype()));
    ctx.set_output(static_cast<size_t>(a.n + i), from_doubles(h, ht.shape(), ht.dtype()));
  }
  return OkStatus();
}

Status adam_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(OptimizerArgs a, read_args(ctx, 4));
  const double alpha = ctx.attr_float("alpha", 0.9f), beta = ctx.attr_float("beta", 0.999f), eps = ctx.attr_float("epsilon", 0);
  const double norm = ctx.attr_float("norm_coefficient", 0), norm_post = ctx.attr_float("norm_coefficient_post", 0);
  const double td = static_cast<double>(a.t);
  const double r = a.t > 0 ? a.r * std::sqrt(1 - std::pow(beta, td)) / (1 - std::pow(alpha, td)) : a.r;
  for (int64_t i = 0; i < a.n; ++i) {
    const Tensor& xt = ctx.input(static_cast<size_t>(2 + i));
    const Tensor& vt = ctx.input(static_cast<size_t>(2 + 2 * a.n + i));
    const Tensor& ht = ctx.input(static_cast<size_t>(2 + 3 * a.n + i));
    std::vector<double> x = to_doubles(xt), g = to_doubles(ctx.input(static_cast<size_t>(2 + a.n + i))), v = to_doubles(vt), h = to_doubles(ht);
    for (size_t k = 0; k < x.size(); ++k) {
      const double gr = norm * x[k] + g[k];
      v[k] = alpha * v[k] + (1 - alpha) * gr;
      h[k] = beta * h[k] + (1 - beta) * gr * gr;
      const double x_new = x[k] - r * (v[k] / (std::sqrt(h[k]) + eps));
      x[k] = (1 - norm_post) * x_new;
    }
    ctx.set_output(static_cast<size_t>(i), from_doubles(x, xt.shape(), xt.dtype()));
    ctx.set_output(static_cast<size_t>(a.n + i), from_doubles(v, vt.shape(), vt.dtype()));
    ctx.set_output(static_cast<size_t>(2 * a.n + i), from_doubles(h, ht.shape(), ht.dtype()));
  }
  return OkStatus();
}

Status momentum_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(OptimizerArgs a, read_args(ctx, 3));
  for (const char* name : {"alpha", "beta", "norm_coefficient", "mode"})
    if (!ctx.has_attr(name)) return ctx.error(std::string("attribute '") + name + "' is required");
  const double alpha = ctx.attr_float("alpha", 0), beta = ctx.attr_float("beta", 0), norm = ctx.attr_float("norm_coefficient", 0);
  const std::string mode = ctx.attr_string("mode", "standard");
  if (mode != "standard" && mode != "nesterov") return ctx.error("mode must be 'standard' or 'nesterov', got '" + mode + "'");
  // The gradient's coefficient is 1 at the first step.
  const double beta_adj = a.t > 0 ? beta : 1.0;
  for (int64_t i = 0; i < a.n; ++i) {
    const Tensor& xt = ctx.input(static_cast<size_t>(2 + i));
    const Tensor& vt = ctx.input(static_cast<size_t>(2 + 2 * a.n + i));
    std::vector<double> x = to_doubles(xt), g = to_doubles(ctx.input(static_cast<size_t>(2 + a.n + i))), v = to_doubles(vt);
    for (size_t k = 0; k < x.size(); ++k) {
      const double gr = norm * x[k] + g[k];
      v[k] = alpha * v[k] + beta_adj * gr;
      x[k] -= mode == "standard" ? a.r * v[k] : a.r * (gr + alpha * v[k]);
    }
    ctx.set_output(static_cast<size_t>(i), from_doubles(x, xt.shape(), xt.dtype()));
    ctx.set_output(static_cast<size_t>(a.n + i), from_doubles(v, vt.shape(), vt.dtype()));
  }
  return OkStatus();
}

}  // namespace

void register_training_ops(ir::OpRegistry& r) {
  constexpr const char* kTraining = "ai.onnx.preview.training";
  r.add(domain_schema(kTraining, "Adagrad", 1, adagrad_kernel));
  r.add(domain_schema(kTraining, "Adam", 1, adam_kernel));
  r.add(domain_schema(kTraining, "Momentum", 1, momentum_kernel));
}

}  // namespace kiln::cpu
