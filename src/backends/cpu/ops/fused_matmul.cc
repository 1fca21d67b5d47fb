// CPU reference kernels of the optimizer's fused ops (domain "kiln"): kiln.FusedMatMul, activation(MatMul(A, B)
// + bias [+ Z]) (activation '', Relu, Gelu (exact, erf) or GeluTanh) with an optional residual Z of the output's shape, kiln.Gelu, ONNX Gelu at any opset, and
// kiln.Swish, ONNX Swish at any opset (the passes fuse_matmul_bias, recognize_gelu and recognize_activations
// make them).
// They run the ONNX MatMul and Gelu references (fused_matmul.h); float16 / bfloat16 are computed in float32
// from the product to the activation and rounded once, as the CUDA layer's epilogue does.
#include "backends/cpu/ops/fused_matmul.h"

#include <string>
#include <utility>

#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

Status fused_matmul_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.error("inputs A, B and bias are required");
  if (ctx.num_inputs() > 4) return ctx.error("takes at most 4 inputs (A, B, bias, Z), got " + std::to_string(ctx.num_inputs()));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const Tensor& bias0 = ctx.input(2);
  const std::string act = ctx.attr_string("activation", "");
  if (act != "" && act != "Relu" && act != "GeluTanh" && act != "Gelu")
    return ctx.error("activation must be '', 'Relu', 'Gelu' or 'GeluTanh', got '" + act + "'");
  if (!dtype_is_float(a.dtype())) return ctx.error("A must be a float tensor, got " + a.description());
  if (bias0.dtype() != a.dtype()) return ctx.error("bias must have A's dtype, got " + bias0.description());
  if (b.rank() < 2) return ctx.error("B must have rank >= 2 (the bias is over its last dim), got " + b.description());
  const int64_t n = b.dim(-1);
  if (bias0.rank() != 1 || bias0.dim(0) != n)
    return ctx.error("bias must be 1-D of B's last dim " + std::to_string(n) + ", got " + bias0.description());
  KILN_ASSIGN_OR_RETURN(Tensor y, matmul_product(ctx, a, b));
  // The residual is added before the activation (as kiln.FusedConv's Z), element for element: no
  // broadcasting, so that the CUDA layer can hand it to cuBLASLt as its C matrix.
  const bool has_z = ctx.has_input(3);
  Tensor z;
  if (has_z) {
    const Tensor& z0 = ctx.input(3);
    if (z0.dtype() != a.dtype()) return ctx.error("Z must have A's dtype, got " + z0.description());
    if (z0.shape() != y.shape())
      return ctx.error("Z must have the output's shape " + shape_to_string(y.shape()) + ", got " + z0.description());
    z = widen_to_float32(z0);
  }
  const Tensor bias = widen_to_float32(bias0);
  bool ok = dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = y.data<T>();
    const T* bd = bias.data<T>();
    const T* zd = has_z ? z.data<T>() : nullptr;
    for (int64_t i = 0, total = y.numel(); i < total; ++i) {
      T v = out[i] + bd[i % n];  // B has rank >= 2: Y's last dim is N
      if (zd != nullptr) v += zd[i];
      if (act == "Relu") v = v < T(0) ? T(0) : v;
      else if (act == "GeluTanh") v = gelu_tanh(v);
      else if (act == "Gelu") v = gelu_erf(v);
      out[i] = v;
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(a.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, a.dtype()));
  return OkStatus();
}

}  // namespace

void register_fused_matmul_ops(ir::OpRegistry& r) {
  const std::pair<const char*, ir::KernelFn> ops[] = {
      {"FusedMatMul", fused_matmul_kernel}, {"Gelu", gelu_kernel}, {"Swish", swish_kernel}};
  for (const auto& [op, kernel] : ops) {
    ir::OpSchema s;
    s.domain = "kiln";
    s.op_type = op;
    s.since_version = 1;
    s.cpu_kernel = kernel;
    r.add(std::move(s));
  }
}

}  // namespace kiln::cpu
