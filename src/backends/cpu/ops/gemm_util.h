// Helpers shared by the conv, pool, normalization, softmax, matmul and reduce kernels: a plain but
// cache-friendly GEMM (row-major, float or double) and small validation helpers that name the node.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

// C[M,N] += alpha * op(A)[M,K] * B[K,N], B row-major and not transposed. Blocked so that a panel of B stays
// in cache, and four rows of C are updated per pass over a row of B (each B element is loaded once per
// four multiply-adds); the innermost loop walks contiguous memory and vectorizes.
template <class T>
void gemm_accumulate(bool trans_a, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                     int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t kColBlock = 512, kDepthBlock = 128;
  auto a_at = [&](int64_t i, int64_t k) { return alpha * (trans_a ? A[k * lda + i] : A[i * lda + k]); };
  for (int64_t j0 = 0; j0 < N; j0 += kColBlock) {
    int64_t nb = std::min(kColBlock, N - j0);
    for (int64_t k0 = 0; k0 < K; k0 += kDepthBlock) {
      int64_t k1 = std::min(K, k0 + kDepthBlock);
      int64_t i = 0;
      for (; i + 4 <= M; i += 4) {
        T* __restrict c0 = C + i * ldc + j0;
        T* __restrict c1 = c0 + ldc;
        T* __restrict c2 = c1 + ldc;
        T* __restrict c3 = c2 + ldc;
        for (int64_t k = k0; k < k1; ++k) {
          const T a0 = a_at(i, k), a1 = a_at(i + 1, k), a2 = a_at(i + 2, k), a3 = a_at(i + 3, k);
          const T* __restrict b = B + k * ldb + j0;
          for (int64_t j = 0; j < nb; ++j) {
            const T bj = b[j];
            c0[j] += a0 * bj;
            c1[j] += a1 * bj;
            c2[j] += a2 * bj;
            c3[j] += a3 * bj;
          }
        }
      }
      for (; i < M; ++i) {
        T* __restrict c = C + i * ldc + j0;
        for (int64_t k = k0; k < k1; ++k) {
          const T a = a_at(i, k);
          const T* __restrict b = B + k * ldb + j0;
          for (int64_t j = 0; j < nb; ++j) c[j] += a * b[j];
        }
      }
    }
  }
}

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, all row-major with leading dimensions lda/ldb/ldc.
// op(A) = A^T when trans_a (then A is stored [K,M]); likewise for B. When beta == 0, C is not read (so
// it may hold garbage or NaN). Works for integer T too (the integer kernels use int32).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      std::fill(c, c + N, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  }
  if (M == 0 || N == 0 || K == 0 || alpha == T(0)) return;
  if (!trans_b) {
    gemm_accumulate(trans_a, M, N, K, alpha, A, lda, B, ldb, C, ldc);
    return;
  }
  // B^T: transpose it once (O(K*N)) so the main loop can stream rows.
  std::vector<T> bt(static_cast<size_t>(K * N));
  for (int64_t j = 0; j < N; ++j)
    for (int64_t k = 0; k < K; ++k) bt[k * N + j] = B[j * ldb + k];
  gemm_accumulate(trans_a, M, N, K, alpha, A, lda, bt.data(), N, C, ldc);
}

// Normalizes an axis against a rank, with an error that names the node.
inline Result<int64_t> node_axis(const KernelContext& ctx, int64_t axis, int64_t rank, const char* what = "axis") {
  if (axis < -rank || axis >= std::max<int64_t>(rank, 1) || (rank == 0 && axis != 0 && axis != -1)) {
    return ctx.error(std::string(what) + " " + std::to_string(axis) + " is out of range for rank " +
                     std::to_string(rank));
  }
  return axis < 0 ? axis + rank : axis;
}

// Float16/bfloat16/fp8 go through float32; float32/float64 stay as they are.
inline bool is_computable_float(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }
inline Tensor narrow_back(const Tensor& t, DType original) {
  return t.dtype() == original ? t : narrow_from_float32(t, original);
}

}  // namespace kiln::cpu
