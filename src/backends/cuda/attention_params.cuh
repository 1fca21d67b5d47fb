// What the two CUDA kernels of kiln.FusedAttention share: the launch parameters (attention.cu fills them from
// the node), the mask read, the sm_80 helpers they use (mma_sm80.cuh), and the entry points of the Hopper kernel
// (attention_hopper.cu), which attention.cu's layer calls.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/mma_sm80.cuh"

namespace kiln::cuda {

inline constexpr float kAttentionLog2e = 1.4426950408889634f;

// Strides (in elements) of one attention operand; the head dim is contiguous.
struct OperandStrides {
  int64_t batch = 0, head = 0, seq = 0;
};

struct AttentionParams {
  int B = 0, H = 0, Sq = 0, Sk = 0, D = 0;
  OperandStrides q, k, v, y;
  // Mask strides over [B, H, Sq, Sk] (0 along broadcast dims); has_mask false: no mask.
  bool has_mask = false;
  int64_t mask_strides[4] = {0, 0, 0, 0};
  bool key_mask = false;  // the Hopper kernel's: the mask is staged per key tile in shared memory (its launch sets it)
  float scale_log2 = 0;  // scale * log2(e): the logits are kept in base 2
  bool causal = false;
  bool nan_to_zero = false;
};

template <class T>
__device__ __forceinline__ float mask_at(const T* mask, const AttentionParams& p, int b, int h, int i, int j) {
  return to_f(mask[b * p.mask_strides[0] + h * p.mask_strides[1] + i * p.mask_strides[2] + j * p.mask_strides[3]]);
}

// The sm_80 helpers (mma_sm80.cuh) both attention kernels use.
using sm80::cp_async16;
using sm80::cp_async_commit;
using sm80::cp_async_wait;
using sm80::cp_async_wait_all;
using sm80::ldmatrix_x4;
using sm80::ldmatrix_x4_trans;
using sm80::mma16816;
using sm80::pack2;
using sm80::smem_addr;

// The end of both kernels: the row sums of this thread's two rows (l_a: row_a = its quad's row of the warp's
// m16 slice, l_b: 8 below) over the quad, then its part of those rows of Y = O / l, where O is the m16n8
// accumulator layout over the head dim (D / 8 n8 slices of 4 values). A row with no key (l = 0) gives 0 or
// NaN, as a softmax over all -inf.
template <class T, int D>
__device__ __forceinline__ void store_rows(const float (&o)[D / 8][4], float l_a, float l_b, const AttentionParams& p, T* y,
                                           int b, int h, int row_a, int row_b, int lane) {
#pragma unroll
  for (int off = 1; off < 4; off *= 2) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  const float empty = p.nan_to_zero ? 0.0f : NAN;
  const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
  T* yb = y + b * p.y.batch + h * p.y.head;
#pragma unroll
  for (int t = 0; t < D / 8; ++t) {
    const int d = t * 8 + 2 * (lane % 4);
    if (row_a < p.Sq) {
      const float y0 = l_a > 0.0f ? o[t][0] * inv_a : empty, y1 = l_a > 0.0f ? o[t][1] * inv_a : empty;
      *reinterpret_cast<uint32_t*>(yb + static_cast<int64_t>(row_a) * p.y.seq + d) = pack2<T>(y0, y1);
    }
    if (row_b < p.Sq) {
      const float y2 = l_b > 0.0f ? o[t][2] * inv_b : empty, y3 = l_b > 0.0f ? o[t][3] * inv_b : empty;
      *reinterpret_cast<uint32_t*>(yb + static_cast<int64_t>(row_b) * p.y.seq + d) = pack2<T>(y2, y3);
    }
  }
}

// The Hopper kernel (attention_hopper.cu): float16 / bfloat16, head dims 64 and 128, 16-byte aligned operands,
// in five schedules of its two warpgroups' products and softmax (the kernel's comment says what each does),
// and kStream, the persistent TMA-fed kernel for the one-key-tile case (".short"'s), beside it: one per tactic.
// opt_in raises the kernel's shared-memory limit (once, when a layer is created; never in run(), which may be
// captured into a CUDA graph).
enum class WgmmaSchedule { kLockstep, kStagger, kPipelined, kPipelinedStaggered, kShort, kStream };
bool wgmma_attention_fits(DType t, int64_t head_dim);
Status opt_in_wgmma_attention(DType t, int head_dim, WgmmaSchedule sched);
Status launch_wgmma_attention(DType t, WgmmaSchedule sched, const AttentionParams& p, const void* q, const void* k,
                              const void* v, const void* mask, void* y, cudaStream_t stream);

}  // namespace kiln::cuda
