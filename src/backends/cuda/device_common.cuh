// What the CUDA op-family files (elementwise.cu, pool.cu, softmax.cu, normalization.cu, resize.cu, pad.cu,
// matmul_helpers.cu, and reduce.cu / sort_scan.cu through reduce_util.cuh) share, so that each defines none
// of it again: float16/bfloat16 <-> float32 conversions, 16-byte vector packs and their alignment checks,
// grid sizing from the SM count, the dtype -> device type dispatch of float kernels, and the launch Status.
// Everything here is inline or a template; a file with a different need (another grid cap, another error
// message) keeps its own variant next to its use.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kiln/dtype.h"
#include "kiln/status.h"

namespace kiln::cuda {

// Threads per block of the grid-stride and one-thread-per-element kernels.
inline constexpr int kThreads = 256;

// What dispatch_float passes: Tag<T>{} names the device type T.
template <class T>
struct Tag {
  using type = T;
};

// Element <-> float32: exact widening, round-to-nearest-even narrowing (NaN stays NaN).
template <class T>
__device__ __forceinline__ float to_f(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return static_cast<float>(v);
}
template <class T>
__device__ __forceinline__ T from_f(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return static_cast<T>(v);
}

// N elements of T loaded and stored as one access of N * sizeof(T) bytes.
template <class T, int N>
struct alignas(N * sizeof(T)) Vec {
  static constexpr int kN = N;
  T v[N];
};
template <class T>
using Pack = Vec<T, 16 / sizeof(T)>;  // 16 bytes

// VEC elements at p (aligned to the vector) to float32, and back.
template <class T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_f(v.v[j]);
}
template <class T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[VEC]) {
  Vec<T, VEC> v;
#pragma unroll
  for (int j = 0; j < VEC; ++j) v.v[j] = from_f<T>(in[j]);
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

inline bool aligned_to(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The current device's SM count, read once (132, an H100's, if it cannot be read).
inline int sm_count() {
  static int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      n = 132;
    return n > 0 ? n : 132;
  }();
  return count;
}

// Whether the current device runs sm_90a code (wgmma): compute capability 9.0 exactly.
inline bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
}

// `blocks` clamped to [1, per_sm blocks on every SM].
inline unsigned capped_grid(int64_t blocks, int per_sm) {
  const int64_t cap = static_cast<int64_t>(sm_count()) * per_sm;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Blocks for a grid-stride loop over `items`: enough to fill every SM several times (16 blocks each), no more.
inline unsigned grid_for(int64_t items, int threads = kThreads) {
  return capped_grid((items + threads - 1) / threads, 16);
}

// Plane kernels (one thread per position of a plane, looping over planes). Threads of a block: x over the
// positions (a warp multiple, at most the block), y over planes.
inline dim3 block_for(int64_t positions) {
  const int bx = static_cast<int>(std::min<int64_t>(kThreads, (positions + 31) / 32 * 32));
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(kThreads / bx));
}
// Blocks along y (planes): enough for the whole GPU several times over, each thread looping over the rest.
inline dim3 grid_for_planes(int64_t positions, int64_t planes, dim3 block) {
  const int64_t gx = (positions + block.x - 1) / block.x;
  const int64_t want = static_cast<int64_t>(sm_count()) * 16;
  int64_t gy = std::max<int64_t>(1, (want + gx - 1) / gx);
  gy = std::min<int64_t>({gy, (planes + block.y - 1) / block.y, 65535});
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::max<int64_t>(gy, 1)));
}

inline bool is_float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

// Calls f(Tag<T>{}) with the device type of a float dtype; false for any other dtype.
template <class F>
bool dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(Tag<float>{}); return true;
    case DType::kFloat16: f(Tag<__half>{}); return true;
    case DType::kBFloat16: f(Tag<__nv_bfloat16>{}); return true;
    default: return false;
  }
}

// The last launch's error as a Status naming the kernel ("launch of <kernel> failed: <name>: <text>"); layer.cc,
// as declared in layer.h.
Status launch_status(const char* kernel);

}  // namespace kiln::cuda
