// The one kernel the cuBLASLt layers (matmul.cc) need besides cuBLASLt itself: it fills the output before a
// GEMM that accumulates into it (beta != 0), and computes the whole output when K == 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kiln/dtype.h"
#include "kiln/status.h"

namespace kiln::cuda {

enum class PrefillAct { kNone, kRelu, kGeluTanh };

// out[r, j] = act(c_scale * C[r * c_row_stride + j * c_col_stride] + bias[j]) for r < rows, j < cols, out
// row-major and contiguous. `c` and `bias` may each be null (then they add nothing). A stride of 0 broadcasts C
// along that axis. float32, float16 or bfloat16, computed in float32 and rounded once.
Status launch_matmul_prefill(DType dtype, const void* c, int64_t c_row_stride, int64_t c_col_stride, float c_scale,
                             const void* bias, PrefillAct act, void* out, int64_t rows, int64_t cols,
                             cudaStream_t stream);

}  // namespace kiln::cuda
