// What the reduction layers (reduce.cu) and the sort and scan layers (sort_scan.cu) share beyond
// device_common.cuh (element conversions, vector packs, grid sizing): the reference's comparison order, warp
// shuffles, their grid cap, and the checks' small pieces.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_sort_scan_layers(LayerTable& table);  // sort_scan.cu: CumSum, TopK

namespace {

template <class T>
constexpr bool kIsInt = std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>;

// Comparison key: floats compare in float32 (exact for fp16 and bf16), integers in int64.
template <class T>
using Key = std::conditional_t<kIsInt<T>, int64_t, float>;
template <class T>
__device__ __forceinline__ Key<T> to_key(T v) {
  if constexpr (kIsInt<T>) return static_cast<int64_t>(v);
  else return to_f(v);
}
template <class T>
__device__ __forceinline__ T from_key(Key<T> v) {
  if constexpr (kIsInt<T>) return static_cast<T>(v);
  else return from_f<T>(v);
}

// Three-way comparison as the reference's: NaN is greater than every number and equal to NaN.
template <class V>
__device__ __forceinline__ int cmp3(V a, V b) {
  if constexpr (std::is_floating_point_v<V>) {
    const bool na = a != a, nb = b != b;
    if (na || nb) return na == nb ? 0 : (na ? 1 : -1);
  }
  return a < b ? -1 : (b < a ? 1 : 0);
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ int32_t shfl_xor(int32_t v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ int64_t shfl_xor(int64_t v, int m) {
  return static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(v), m));
}
__device__ __forceinline__ float shfl_idx(float v, int l) { return __shfl_sync(0xffffffffu, v, l); }
__device__ __forceinline__ int32_t shfl_idx(int32_t v, int l) { return __shfl_sync(0xffffffffu, v, l); }
__device__ __forceinline__ int64_t shfl_idx(int64_t v, int l) {
  return static_cast<int64_t>(__shfl_sync(0xffffffffu, static_cast<long long>(v), l));
}

// int64_t, unlike row_ops.cuh's int pow2_ceil (row widths and block sizes), which no file includes with this one.
inline int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}
// Reductions and scans cap their grids at 32 blocks an SM, twice grid_for's 16.
inline unsigned grid_of(int64_t blocks) { return capped_grid(blocks, 32); }

template <class F>
bool dispatch_numeric(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kInt32: f(Tag<int32_t>{}); return true;
    case DType::kInt64: f(Tag<int64_t>{}); return true;
    default: return dispatch_float(dtype, f);
  }
}

inline bool is_numeric_dtype(DType t) { return is_float_dtype(t) || t == DType::kInt32 || t == DType::kInt64; }

inline std::string prefix(const LayerSpec& spec) { return "CUDA " + spec.node->op_type + ": "; }

// Normalizes `axis` for a known rank; "" or why not.
inline std::string normalize_axis(const LayerSpec& spec, int64_t axis, int64_t rank, int64_t* out) {
  if (axis < -rank || axis >= rank)
    return prefix(spec) + "axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank);
  *out = axis < 0 ? axis + rank : axis;
  return "";
}

// Splits a shape around `axis` into outer * dim * inner.
inline void split_at(const Shape& s, int64_t axis, int64_t* outer, int64_t* dim, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int64_t a = 0; a < axis; ++a) *outer *= s[a];
  *dim = s[axis];
  for (size_t a = axis + 1; a < s.size(); ++a) *inner *= s[a];
}

inline Status check_same_dtype_output(const LayerSpec& spec) {
  if (spec.outputs.empty() || spec.outputs[0].dtype != spec.inputs[0].dtype)
    return InvalidArgument(prefix(spec) + "output 0 must have the input's dtype " + dtype_name(spec.inputs[0].dtype));
  return OkStatus();
}

// The layer's one tactic; "default" is accepted too.
inline Status check_tactic(const LayerSpec& spec, const std::string& tactic, const char* mine) {
  if (tactic == mine || tactic == "default") return OkStatus();
  return InvalidArgument(prefix(spec) + "unknown tactic '" + tactic + "' (it has " + mine + ")");
}

}  // namespace
}  // namespace kiln::cuda
