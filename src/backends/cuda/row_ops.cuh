// What the row kernels of softmax.cu (Softmax, LogSoftmax) and normalization.cu (LayerNormalization,
// GroupNormalization, InstanceNormalization) share: the reduction of a float over the threads of one row
// (a group of lanes, or a whole block), and the plan that picks, from a row's length and count, a group of
// lanes per row, a block per row, or rows split into chunks over several blocks (see either file's comment).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "backends/cuda/device_common.cuh"

namespace kiln::cuda {

inline constexpr int64_t kGroupMaxLen = 1024;    // rows up to this long: a group of lanes per row
inline constexpr int64_t kBlockMaxLen = 16384;   // up to this long: a block per row (16 elements a thread at most)
inline constexpr int64_t kSplitMinLen = 4096;    // rows longer than this are split when there are too few of them

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
  static constexpr float kIdentity = 0.0f;
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
  static constexpr float kIdentity = -INFINITY;
};

template <class Op>
__device__ __forceinline__ float lanes_reduce(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v = Op()(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduces over the threads of one row: `width` aligned lanes of a warp, or (width 0) the whole block, whose
// size is a multiple of 32. Every thread gets the result; every thread of the block must call it.
template <class Op>
__device__ __forceinline__ float row_reduce(float v, int width, float* sh) {
  if (width > 0) return lanes_reduce<Op>(v, width);
  v = lanes_reduce<Op>(v, 32);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : Op::kIdentity;
  return lanes_reduce<Op>(v, 32);
}

inline int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}
// The vectors a thread holds, rounded up to one of the instantiated counts (3 and 6 fit rows of 768).
inline int nv_ceil(int64_t v) {
  for (int n : {1, 2, 3, 4, 6, 8, 16})
    if (n >= v) return n;
  return 32;
}
inline size_t align256(size_t n) { return (n + 255) & ~size_t{255}; }

enum class RowPath { kGroup, kBlock, kSplit };
struct RowPlan {
  RowPath path = RowPath::kGroup;
  int width = 32;  // kGroup: lanes per row
  int threads = 256;
  int nv = 1;  // vectors a thread (kGroup, kBlock)
  int64_t blocks = 1;
};

inline RowPlan plan_rows(int64_t rows, int64_t len, int vec, bool split, int chunks) {
  RowPlan p;
  const int64_t nvec = std::max<int64_t>(len / vec, 1);
  if (len <= kGroupMaxLen) {
    p.path = RowPath::kGroup;
    p.width = std::min(32, pow2_ceil(nvec));
    p.nv = nv_ceil(ceil_div(nvec, p.width));
    p.threads = 256;
    p.blocks = ceil_div(rows * p.width, p.threads);
  } else if (!split) {
    const int per = std::max(1, 16 / vec);
    p.path = RowPath::kBlock;
    p.threads = std::clamp(pow2_ceil(ceil_div(nvec, per)), 128, 1024);
    p.nv = nv_ceil(ceil_div(nvec, p.threads));
    p.blocks = rows;
  } else {
    p.path = RowPath::kSplit;
    p.threads = 256;
    p.blocks = rows * chunks;
  }
  return p;
}

// Whether rows take the split path (see the file comment), and its chunks. Chunk lengths are multiples of
// 8, so that both vector widths see whole vectors.
inline bool plan_chunks(int64_t rows, int64_t len, int* chunks, int* chunk_len) {
  *chunks = 1;
  *chunk_len = static_cast<int>(len);
  if (len <= kGroupMaxLen || (len <= kBlockMaxLen && (len <= kSplitMinLen || rows >= sm_count()))) return false;
  const int64_t want = std::max(ceil_div(len, 32768), std::min(ceil_div(4 * sm_count(), std::max<int64_t>(rows, 1)),
                                                               ceil_div(len, 2048)));
  const int64_t cl = ceil_div(ceil_div(len, want), 8) * 8;
  *chunk_len = static_cast<int>(cl);
  *chunks = static_cast<int>(ceil_div(len, cl));
  return true;
}

}  // namespace kiln::cuda
