// Kiln's own Hopper GEMM for MatMul and kiln.FusedMatMul (gemm_sm90.cu): the tactic "cuda.gemm.sm90", timed by
// the builder beside cuBLASLt's (matmul.cc lists both).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"

namespace kiln::cuda {

// The tactics the builder may time for this node as described: none off compute capability 9.0, for problems
// the kernel does not take (float32, a Gemm, a batched B, a K or N that is not a multiple of 8), or for
// products of fewer 128 x 128 tiles than the GPU has SMs (see gemm_sm90.cu).
// create_sm90_gemm_layer takes those small products too.
std::vector<std::string> sm90_gemm_tactics(const LayerSpec& spec);
bool is_sm90_gemm_tactic(const std::string& tactic);
// Whether this device runs the kernel (compute capability 9.0, and a driver that encodes tensor maps).
bool sm90_gemm_available();
// The layer for one of those tactics; Unsupported when the problem is not one it runs.
Result<std::unique_ptr<Layer>> create_sm90_gemm_layer(const LayerSpec& spec, MatmulEpilogue epilogue,
                                                      const std::string& tactic, const CudaHandles& h);

}  // namespace kiln::cuda
