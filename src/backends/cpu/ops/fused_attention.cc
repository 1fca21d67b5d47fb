// CPU reference kernel of the optimizer's kiln.MaskedSoftmax (domain "kiln"; made by fuse_masked_softmax):
// Y = Softmax(X + Mask) along the last axis, and with nan_to_zero = 1 every NaN of the result replaced by 0,
// which is what torch's SDPA export writes as Add -> Softmax -> IsNaN -> Where(isnan, 0, P) (a row whose mask
// is all -inf gives NaN, then 0). The sum X + Mask is formed in float32 (float64 stays float64) and handed to
// the ONNX Softmax reference itself, so the fused op and its decomposition share one softmax; float16 /
// bfloat16 are rounded once at the end, as the CUDA layer does.
#include <cmath>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

// ONNX Softmax (opset 13, last axis) of x through its registered reference kernel, errors naming `node`.
Result<Tensor> softmax_last_axis(const KernelContext& ctx, const Tensor& x) {
  const ir::OpSchema* schema = ir::OpRegistry::global().find("", "Softmax");
  if (schema == nullptr || schema->cpu_kernel == nullptr) return ctx.error("no Softmax reference kernel");
  ir::Node n;
  n.name = ctx.node().name;
  n.op_type = "Softmax";
  n.inputs = {"x"};
  n.outputs = {"y"};
  ir::Attribute axis;
  axis.type = ir::Attribute::Type::kInt;
  axis.i = -1;
  n.attributes["axis"] = axis;
  const Value in(x);
  std::vector<Value> out(1);
  ir::KernelContext sub(n, 13, {&in}, &out, {});
  KILN_RETURN_IF_ERROR(schema->cpu_kernel(sub));
  return out[0].tensor();
}

Status masked_softmax_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  if (ctx.num_inputs() > 2) return ctx.error("takes 2 inputs (X, Mask), got " + std::to_string(ctx.num_inputs()));
  const Tensor& x0 = ctx.input(0);
  if (!dtype_is_float(x0.dtype())) return ctx.error("X must be a float tensor, got " + x0.description());
  const int64_t rank = x0.rank();
  if (rank == 0) return ctx.error("X must have rank >= 1, got a scalar");
  const int64_t axis_attr = ctx.attr_int("axis", -1);
  if (axis_attr != -1 && axis_attr != rank - 1)
    return ctx.error("axis must be the last axis (-1 or " + std::to_string(rank - 1) + "), got " +
                     std::to_string(axis_attr));
  const int64_t nan_to_zero = ctx.attr_int("nan_to_zero", 0);
  if (nan_to_zero != 0 && nan_to_zero != 1)
    return ctx.error("nan_to_zero must be 0 or 1, got " + std::to_string(nan_to_zero));

  Tensor a = widen_to_float32(x0);
  if (ctx.has_input(1)) {
    const Tensor& m0 = ctx.input(1);
    if (m0.dtype() != x0.dtype()) return ctx.error("Mask must have X's dtype, got " + m0.description());
    auto b = broadcast_shapes(x0.shape(), m0.shape());
    if (!b.ok() || *b != x0.shape())
      return ctx.error("Mask " + shape_to_string(m0.shape()) + " does not broadcast to X's shape " +
                       shape_to_string(x0.shape()));
    const Tensor m = widen_to_float32(m0);
    const std::vector<int64_t> at = broadcast_index_map(m.shape(), a.shape());
    Tensor sum(a.dtype(), a.shape());
    dispatch_float(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* xd = a.data<T>();
      const T* md = m.data<T>();
      T* sd = sum.data<T>();
      for (int64_t i = 0, n = a.numel(); i < n; ++i) sd[i] = xd[i] + md[at[i]];
    });
    a = std::move(sum);
  }
  KILN_ASSIGN_OR_RETURN(Tensor y, softmax_last_axis(ctx, a));
  if (nan_to_zero) {
    dispatch_float(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* yd = y.data<T>();
      for (int64_t i = 0, n = y.numel(); i < n; ++i)
        if (std::isnan(yd[i])) yd[i] = T(0);
    });
  }
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

}  // namespace

void register_fused_attention_ops(ir::OpRegistry& r) {
  ir::OpSchema s;
  s.domain = "kiln";
  s.op_type = "MaskedSoftmax";
  s.since_version = 1;
  s.cpu_kernel = masked_softmax_kernel;
  r.add(std::move(s));
}

}  // namespace kiln::cpu
