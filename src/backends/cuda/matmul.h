// MatMul and Gemm through cuBLASLt, with the epilogues cuBLASLt can fuse into the GEMM (for the fusion
// passes: MatMul/Gemm + Add(bias) + Relu/Gelu become one layer). The op table registers only the plain
// MatMul and Gemm (MatmulEpilogue::kNone); a fused layer is made through check_matmul_layer and
// create_matmul_layer with another epilogue.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"

namespace kiln::cuda {

// What runs on the GEMM's result before it is stored: Y = act(op(node) + bias).
//   kGelu is the tanh approximation of GELU (ONNX Gelu with approximate="tanh"): that is what cuBLASLt's
//   GELU epilogue computes, so a fusion pass must not map Gelu(approximate="none") onto it.
//   The bias variants take one more input, the bias vector: shape [N] or [1, N], the output's dtype, added
//   to every row (before the activation). It is input 2 of a MatMul spec and input 3 of a Gemm spec (a Gemm
//   without C has an absent input 2 then). Gemm's own C and beta still apply: act(alpha*AB + beta*C + bias).
enum class MatmulEpilogue { kNone, kRelu, kGelu, kBias, kBiasRelu, kBiasGelu };
const char* matmul_epilogue_name(MatmulEpilogue e);  // "none", "relu", "gelu", "bias", "bias_relu", "bias_gelu"
bool matmul_epilogue_has_bias(MatmulEpilogue e);

// "" when a MatMul or Gemm node (spec.node->op_type) with this epilogue can run; otherwise why not. A
// kiln.FusedMatMul node is read as a MatMul (its bias is input 2); its optional input 3, a residual Z of the
// output's shape and dtype, is added like a Gemm's C with beta 1, before the activation: act(AB + bias + Z).
// A C of the output's shape (Z, or Gemm's [M, N] C) is read in place as cuBLASLt's C matrix.
std::string check_matmul_layer(const LayerSpec& spec, MatmulEpilogue epilogue);
// The tactic names: "cuda.cublaslt.h0" .. "cuda.cublaslt.h7", indices into cuBLASLt's heuristic list for the
// problem (create() says Unsupported when the heuristic offers fewer).
std::vector<std::string> matmul_tactics();
// Those and, on compute capability 9.0, Kiln's own GEMM's where it takes the problem (gemm_sm90.h): what the
// builder times for a MatMul or kiln.FusedMatMul. create_matmul_layer takes any of them.
std::vector<std::string> matmul_and_sm90_tactics(const LayerSpec& spec);
Result<std::unique_ptr<Layer>> create_matmul_layer(const LayerSpec& spec, MatmulEpilogue epilogue,
                                                   const std::string& tactic, const CudaHandles& h);

}  // namespace kiln::cuda
