// What the optimizer's kiln.FusedMatMul, kiln.Gelu and kiln.Swish reference kernels (fused_matmul.cc) reuse
// of the ONNX MatMul (matmul.cc), Gelu and Swish (activation.cc) references, so that a fused op and its
// decomposition compute the same thing the same way.
#pragma once

#include <cmath>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

// MatMul's product with numpy batching and broadcasting, before narrowing: float16 / bfloat16 operands are
// computed (and returned) in float32. Errors name ctx's node.
Result<Tensor> matmul_product(const KernelContext& ctx, const Tensor& a, const Tensor& b);

// GELU as ONNX Gelu defines it: the exact form (approximate = "none") and the tanh approximation.
template <class T>
T gelu_erf(T v) {
  return T(0.5) * v * (T(1) + std::erf(v / std::sqrt(T(2))));
}
template <class T>
T gelu_tanh(T v) {
  const T k = std::sqrt(T(2) / T(3.14159265358979323846));
  return T(0.5) * v * (T(1) + std::tanh(k * (v + T(0.044715) * v * v * v)));
}

// ONNX Gelu's kernel (attribute `approximate`); kiln.Gelu is the same op at any opset.
Status gelu_kernel(KernelContext& ctx);
// ONNX Swish's kernel (attribute `alpha`, 1 by default: SiLU); kiln.Swish is the same op at any opset.
Status swish_kernel(KernelContext& ctx);

}  // namespace kiln::cpu
