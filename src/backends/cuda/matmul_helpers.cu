// The prefill kernel of the cuBLASLt layers (see matmul_helpers.h). Memory-bound and small next to the GEMM
// that follows it: a grid-stride loop over the output, one element per thread per step, so that every C
// broadcast pattern (scalar, row, column, full) is one kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <type_traits>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/matmul_helpers.h"

namespace kiln::cuda {
namespace {

template <class T, PrefillAct ACT>
__global__ void prefill_kernel(const T* __restrict__ c, int64_t c_rs, int64_t c_cs, float c_scale,
                               const T* __restrict__ bias, T* __restrict__ out, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, j = i - r * cols;
    float v = 0.0f;
    if (c != nullptr) v = c_scale * to_f(c[r * c_rs + j * c_cs]);
    if (bias != nullptr) v += to_f(bias[j]);
    if constexpr (ACT == PrefillAct::kRelu) {
      v = v < 0.0f ? 0.0f : v;
    } else if constexpr (ACT == PrefillAct::kGeluTanh) {
      const float k = 0.79788456080286535588f;  // sqrt(2 / pi)
      v = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
    out[i] = from_f<T>(v);
  }
}

template <class T>
Status launch_typed(const void* c, int64_t c_rs, int64_t c_cs, float c_scale, const void* bias, PrefillAct act,
                    void* out, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n <= 0) return OkStatus();
  const T* cp = static_cast<const T*>(c);
  const T* bp = static_cast<const T*>(bias);
  T* op = static_cast<T*>(out);
  const unsigned grid = grid_for(n);
  switch (act) {
    case PrefillAct::kNone:
      prefill_kernel<T, PrefillAct::kNone><<<grid, kThreads, 0, stream>>>(cp, c_rs, c_cs, c_scale, bp, op, rows, cols);
      break;
    case PrefillAct::kRelu:
      prefill_kernel<T, PrefillAct::kRelu><<<grid, kThreads, 0, stream>>>(cp, c_rs, c_cs, c_scale, bp, op, rows, cols);
      break;
    case PrefillAct::kGeluTanh:
      prefill_kernel<T, PrefillAct::kGeluTanh><<<grid, kThreads, 0, stream>>>(cp, c_rs, c_cs, c_scale, bp, op, rows, cols);
      break;
  }
  return launch_status("matmul_prefill");  // "launch of matmul_prefill failed: ..."
}

}  // namespace

Status launch_matmul_prefill(DType dtype, const void* c, int64_t c_row_stride, int64_t c_col_stride, float c_scale,
                             const void* bias, PrefillAct act, void* out, int64_t rows, int64_t cols,
                             cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float>(c, c_row_stride, c_col_stride, c_scale, bias, act, out, rows, cols, stream);
    case DType::kFloat16:
      return launch_typed<__half>(c, c_row_stride, c_col_stride, c_scale, bias, act, out, rows, cols, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(c, c_row_stride, c_col_stride, c_scale, bias, act, out, rows, cols, stream);
    default:
      return Unsupported("matmul_prefill: dtype " + dtype_name(dtype) + " is not supported");
  }
}

}  // namespace kiln::cuda
