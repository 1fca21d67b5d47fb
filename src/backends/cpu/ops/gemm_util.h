// Helpers shared by the conv, pool, normalization, softmax, matmul and reduce kernels: a plain but
// cache-friendly GEMM (row-major, float or double) and small validation helpers that name the node.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, all row-major with leading dimensions lda/ldb/ldc.
// op(A) = A^T when trans_a (then A is stored [K,M]); likewise for B. When beta == 0, C is not read (so
// it may hold garbage or NaN). Loops are ordered so the innermost one walks contiguous memory.
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
  if (M == 0 || N == 0 || K == 0) return;
  if (!trans_b) {
    // i-k-j: the inner loop streams a row of B into a row of C.
    std::vector<T> row(static_cast<size_t>(N));
    for (int64_t i = 0; i < M; ++i) {
      std::fill(row.begin(), row.end(), T(0));
      for (int64_t k = 0; k < K; ++k) {
        T a = trans_a ? A[k * lda + i] : A[i * lda + k];
        if (a == T(0)) continue;
        const T* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) row[j] += a * b[j];
      }
      T* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) c[j] += alpha * row[j];
    }
  } else {
    // B^T: row j of B is column j of op(B); dot products over contiguous rows.
    std::vector<T> a_row(static_cast<size_t>(K));
    for (int64_t i = 0; i < M; ++i) {
      const T* a = A + i * lda;
      if (trans_a) {
        for (int64_t k = 0; k < K; ++k) a_row[k] = A[k * lda + i];
        a = a_row.data();
      }
      T* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) {
        const T* b = B + j * ldb;
        T sum = 0;
        for (int64_t k = 0; k < K; ++k) sum += a[k] * b[k];
        c[j] += alpha * sum;
      }
    }
  }
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
