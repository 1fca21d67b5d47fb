// Numpy broadcasting for elementwise kernels of up to three operands (elementwise.cu, logical.cu): the
// operand shapes collapsed against the output shape on the host, the per-element offsets on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kiln/tensor.h"

namespace kiln::cuda {

inline constexpr int kMaxRank = 8;

// Up to three operands broadcast to one output shape, collapsed: dims of size 1 in the output dropped,
// neighbouring dims merged where every operand is contiguous across them. Shapes are right-aligned in
// kMaxRank slots, so the index loop unrolls with compile-time indices.
template <int N>
struct Broadcast {
  int rank = 0;
  int64_t dims[kMaxRank];
  int64_t strides[N][kMaxRank];
};

template <int N>
inline bool make_broadcast(const Shape* in_shapes, const Shape& out, Broadcast<N>* b) {
  const int out_rank = static_cast<int>(out.size());
  std::vector<int64_t> dims;
  std::vector<std::vector<int64_t>> strides(N);
  // Per operand, the stride of each output dim (0 where broadcast).
  std::vector<std::vector<int64_t>> full(N, std::vector<int64_t>(out_rank, 0));
  for (int k = 0; k < N; ++k) {
    const Shape& s = in_shapes[k];
    if (static_cast<int>(s.size()) > out_rank) return false;
    int64_t st = 1;
    for (int d = out_rank - 1, j = static_cast<int>(s.size()) - 1; d >= 0; --d, --j) {
      if (j < 0) break;
      if (s[j] != 1 && s[j] != out[d]) return false;
      full[k][d] = s[j] == 1 ? 0 : st;
      st *= s[j];
    }
  }
  for (int d = 0; d < out_rank; ++d) {
    if (out[d] == 1) continue;
    bool merge = !dims.empty();
    for (int k = 0; k < N && merge; ++k) merge = strides[k].back() == full[k][d] * out[d];
    if (merge) {
      dims.back() *= out[d];
      for (int k = 0; k < N; ++k) strides[k].back() = full[k][d];
    } else {
      dims.push_back(out[d]);
      for (int k = 0; k < N; ++k) strides[k].push_back(full[k][d]);
    }
  }
  if (static_cast<int>(dims.size()) > kMaxRank) return false;
  b->rank = static_cast<int>(dims.size());
  const int off = kMaxRank - b->rank;
  for (int d = 0; d < kMaxRank; ++d) {
    b->dims[d] = d < off ? 1 : dims[d - off];
    for (int k = 0; k < N; ++k) b->strides[k][d] = d < off ? 0 : strides[k][d - off];
  }
  return true;
}

template <int N>
__device__ __forceinline__ void broadcast_offsets(int64_t i, const Broadcast<N>& b, int64_t (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d) {
    if (d < kMaxRank - b.rank) break;
    const int64_t q = i / b.dims[d];
    const int64_t c = i - q * b.dims[d];
    i = q;
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += c * b.strides[k][d];
  }
}

}  // namespace kiln::cuda
