// CPU reference kernels: tensors made from parameters (Range) and random tensors (RandomNormal,
// RandomUniform, their *Like forms, Multinomial, Bernoulli). Random ops use std::mt19937, seeded by the
// `seed` attribute when present: repeatable in Kiln, but never equal to another runtime's random stream.
#include <cmath>
#include <random>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"

namespace kiln::cpu {
namespace {

Status range_kernel(KernelContext& ctx) {
  const Tensor& start_t = ctx.input(0);
  const Tensor& limit_t = ctx.input(1);
  const Tensor& delta_t = ctx.input(2);
  for (const Tensor* t : {&start_t, &limit_t, &delta_t})
    if (t->numel() != 1 || t->dtype() != start_t.dtype())
      return ctx.error("start, limit and delta must be scalars of one dtype, got " + start_t.description() + ", " +
                       limit_t.description() + ", " + delta_t.description());
  const DType dtype = start_t.dtype();
  if (dtype_is_integer(dtype)) {
    const int64_t start = start_t.scalar_as_int(0), limit = limit_t.scalar_as_int(0), delta = delta_t.scalar_as_int(0);
    if (delta == 0) return ctx.error("delta must not be 0");
    // ceil((limit - start) / delta), computed in long double so int64 extremes cannot overflow.
    const long double span = static_cast<long double>(limit) - static_cast<long double>(start);
    const long double count = std::ceil(span / static_cast<long double>(delta));
    if (count > static_cast<long double>(mv::kMaxElements))
      return ctx.error("Range would have " + std::to_string(static_cast<double>(count)) + " elements");
    const int64_t n = count > 0 ? static_cast<int64_t>(count) : 0;
    Tensor out(DType::kInt64, {n});
    for (int64_t i = 0; i < n; ++i) out.data<int64_t>()[i] = start + i * delta;
    KILN_ASSIGN_OR_RETURN(Tensor cast, cast_tensor(out, dtype));
    ctx.set_output(0, cast);
    return OkStatus();
  }
  Tensor start_w = widen_to_float32(start_t), limit_w = widen_to_float32(limit_t), delta_w = widen_to_float32(delta_t);
  Tensor out;
  Status st = OkStatus();
  bool ok = dispatch_float(start_w.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T start = *start_w.data<T>(), limit = *limit_w.data<T>(), delta = *delta_w.data<T>();
    if (delta == T(0) || !std::isfinite(static_cast<double>(delta)) || !std::isfinite(static_cast<double>(start)) ||
        !std::isfinite(static_cast<double>(limit))) {
      st = ctx.error("start, limit and delta must be finite and delta non-zero");
      return;
    }
    const double count = std::ceil((static_cast<double>(limit) - static_cast<double>(start)) / static_cast<double>(delta));
    if (count > static_cast<double>(mv::kMaxElements)) {
      st = ctx.error("Range would have " + std::to_string(count) + " elements");
      return;
    }
    const int64_t n = count > 0 ? static_cast<int64_t>(count) : 0;
    out = Tensor(start_w.dtype(), {n});
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i] = static_cast<T>(start + static_cast<T>(i) * delta);
  });
  if (!ok) return ctx.unsupported("Range does not support " + start_t.description());
  KILN_RETURN_IF_ERROR(st);
  ctx.set_output(0, narrow_from_float32(out, dtype));
  return OkStatus();
}

std::mt19937 make_generator(const KernelContext& ctx) {
  if (ctx.has_attr("seed")) {
    const float seed = ctx.attr_float("seed", 0.0f);
    return std::mt19937(static_cast<uint32_t>(static_cast<int64_t>(seed)));
  }
  return std::mt19937(std::random_device{}());
}

// The output dtype: the `dtype` attribute, or `dflt` (float32 for RandomNormal/Uniform, the input's for *Like).
Result<DType> output_dtype(const KernelContext& ctx, DType dflt) {
  if (!ctx.has_attr("dtype")) return dflt;
  const int64_t code = ctx.attr_int("dtype", 1);
  if (code == 0 || !dtype_is_valid(static_cast<int32_t>(code)))
    return ctx.error("dtype " + std::to_string(code) + " is not a valid dtype");
  return static_cast<DType>(code);
}

// Fills a float32 tensor from `sample` and converts it to `dtype` (a float type).
template <class Sample>
Result<Tensor> random_tensor(const KernelContext& ctx, DType dtype, const Shape& shape, Sample sample) {
  if (!dtype_is_float(dtype)) return ctx.error("random values need a float dtype, got " + dtype_name(dtype));
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, shape));
  Tensor f(DType::kFloat32, shape);
  for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = sample();
  return cast_tensor(f, dtype);
}

Status random_normal_common(KernelContext& ctx, DType dtype, const Shape& shape) {
  std::mt19937 gen = make_generator(ctx);
  std::normal_distribution<float> dist(ctx.attr_float("mean", 0.0f), ctx.attr_float("scale", 1.0f));
  KILN_ASSIGN_OR_RETURN(Tensor out, random_tensor(ctx, dtype, shape, [&] { return dist(gen); }));
  ctx.set_output(0, out);
  return OkStatus();
}

Status random_uniform_common(KernelContext& ctx, DType dtype, const Shape& shape) {
  std::mt19937 gen = make_generator(ctx);
  const float low = ctx.attr_float("low", 0.0f), high = ctx.attr_float("high", 1.0f);
  if (!(low <= high)) return ctx.error("low " + std::to_string(low) + " is above high " + std::to_string(high));
  std::uniform_real_distribution<float> dist(low, high);
  KILN_ASSIGN_OR_RETURN(Tensor out, random_tensor(ctx, dtype, shape, [&] { return dist(gen); }));
  ctx.set_output(0, out);
  return OkStatus();
}

Status random_normal_kernel(KernelContext& ctx) {
  if (!ctx.has_attr("shape")) return ctx.error("missing the shape attribute");
  KILN_ASSIGN_OR_RETURN(DType dtype, output_dtype(ctx, DType::kFloat32));
  return random_normal_common(ctx, dtype, ctx.attr_ints("shape"));
}
Status random_uniform_kernel(KernelContext& ctx) {
  if (!ctx.has_attr("shape")) return ctx.error("missing the shape attribute");
  KILN_ASSIGN_OR_RETURN(DType dtype, output_dtype(ctx, DType::kFloat32));
  return random_uniform_common(ctx, dtype, ctx.attr_ints("shape"));
}
Status random_normal_like_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(DType dtype, output_dtype(ctx, ctx.input(0).dtype()));
  return random_normal_common(ctx, dtype, ctx.input(0).shape());
}
Status random_uniform_like_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(DType dtype, output_dtype(ctx, ctx.input(0).dtype()));
  return random_uniform_common(ctx, dtype, ctx.input(0).shape());
}

// Multinomial: input [batch, classes] of unnormalized log-probabilities; sample_size draws per row.
Status multinomial_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 2 || !dtype_is_float(x.dtype()))
    return ctx.error("input must be a 2-D float tensor [batch, classes], got " + x.description());
  const int64_t samples = ctx.attr_int("sample_size", 1);
  if (samples < 1) return ctx.error("sample_size must be >= 1, got " + std::to_string(samples));
  KILN_ASSIGN_OR_RETURN(DType dtype, output_dtype(ctx, DType::kInt32));
  if (dtype != DType::kInt32 && dtype != DType::kInt64)
    return ctx.error("dtype must be int32 or int64, got " + dtype_name(dtype));
  const int64_t batch = x.dim(0), classes = x.dim(1);
  if (classes < 1) return ctx.error("there must be at least one class");
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, {batch, samples}));
  std::mt19937 gen = make_generator(ctx);
  Tensor out(DType::kInt64, {batch, samples});
  std::vector<double> weights(static_cast<size_t>(classes));
  for (int64_t b = 0; b < batch; ++b) {
    double max_logit = -INFINITY;
    for (int64_t c = 0; c < classes; ++c) max_logit = std::max(max_logit, x.scalar_as_double(b * classes + c));
    if (!std::isfinite(max_logit)) return ctx.error("row " + std::to_string(b) + " has no finite log-probability");
    for (int64_t c = 0; c < classes; ++c) weights[c] = std::exp(x.scalar_as_double(b * classes + c) - max_logit);
    std::discrete_distribution<int64_t> dist(weights.begin(), weights.end());
    for (int64_t s = 0; s < samples; ++s) out.data<int64_t>()[b * samples + s] = dist(gen);
  }
  KILN_ASSIGN_OR_RETURN(Tensor cast, cast_tensor(out, dtype));
  ctx.set_output(0, cast);
  return OkStatus();
}

// Bernoulli: 1 with probability input[i], else 0, in the output dtype (default: the input's).
Status bernoulli_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (!dtype_is_float(x.dtype())) return ctx.error("input must be a float tensor, got " + x.description());
  KILN_ASSIGN_OR_RETURN(DType dtype, output_dtype(ctx, x.dtype()));
  std::mt19937 gen = make_generator(ctx);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  Tensor draws(DType::kFloat64, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double p = x.scalar_as_double(i);
    if (!(p >= 0.0 && p <= 1.0)) return ctx.error("probability " + std::to_string(p) + " is outside [0, 1]");
    draws.data<double>()[i] = uniform(gen) < p ? 1.0 : 0.0;
  }
  KILN_ASSIGN_OR_RETURN(Tensor out, cast_tensor(draws, dtype));
  ctx.set_output(0, out);
  return OkStatus();
}

void add_random(ir::OpRegistry& r, const char* op, int since, ir::KernelFn fn) {
  ir::OpSchema s;
  s.op_type = op;
  s.since_version = since;
  s.cpu_kernel = fn;
  s.nondeterministic = true;
  r.add(s);
}

}  // namespace

void register_generator_ops(ir::OpRegistry& r) {
  r.add("Range", 11, range_kernel);
  add_random(r, "RandomNormal", 1, random_normal_kernel);
  add_random(r, "RandomUniform", 1, random_uniform_kernel);
  add_random(r, "RandomNormalLike", 1, random_normal_like_kernel);
  add_random(r, "RandomUniformLike", 1, random_uniform_like_kernel);
  add_random(r, "Multinomial", 7, multinomial_kernel);
  add_random(r, "Bernoulli", 15, bernoulli_kernel);
}

}  // namespace kiln::cpu
