// What the two CUDA kernels of kiln.FusedAttention share: the launch parameters (attention.cu fills them from
// the node), the mask read, the cp.async helpers, and the entry points of the Hopper kernel
// (attention_hopper.cu), which attention.cu's layer calls.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "backends/cuda/device_common.cuh"

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
  float scale_log2 = 0;  // scale * log2(e): the logits are kept in base 2
  bool causal = false;
  bool nan_to_zero = false;
};

template <class T>
__device__ __forceinline__ float mask_at(const T* mask, const AttentionParams& p, int b, int h, int i, int j) {
  return to_f(mask[b * p.mask_strides[0] + h * p.mask_strides[1] + i * p.mask_strides[2] + j * p.mask_strides[3]]);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (a shared-window address), zero-filled when !valid (rows past the sequence).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  cp_async16(smem_addr(dst), src, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Two floats as one register of two T (the lower address first).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// The Hopper kernel (attention_hopper.cu): float16 / bfloat16, head dims 64 and 128, 16-byte aligned operands,
// in four schedules of its two warpgroups' products and softmax (the kernel's comment says what each does):
// one per tactic. opt_in raises the kernel's shared-memory limit (once, when a layer is created; never in run(),
// which may be captured into a CUDA graph).
enum class WgmmaSchedule { kLockstep, kStagger, kPipelined, kPipelinedStaggered };
bool wgmma_attention_fits(DType t, int64_t head_dim);
Status opt_in_wgmma_attention(DType t, int head_dim, WgmmaSchedule sched);
Status launch_wgmma_attention(DType t, WgmmaSchedule sched, const AttentionParams& p, const void* q, const void* k,
                              const void* v, const void* mask, void* y, cudaStream_t stream);

}  // namespace kiln::cuda
