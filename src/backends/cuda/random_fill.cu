// Device-side random fill for the tactic timer (kernels.h): a layer's inputs at batch 256 run to hundreds of
// millions of elements, which a host generator took seconds per layer to make and upload (most of ResNet-50's
// 67 s build). A counter-based hash is deterministic, so builds stay reproducible.
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/kernels.h"

namespace kiln::cuda {
namespace {

// splitmix64's finalizer: a well-mixed 64-bit value from a counter.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
__global__ void fill_uniform_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = mix64(seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(i + 1));
    const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // 24 bits: [0, 1)
    p[i] = from_f<T>(lo + (hi - lo) * u);
  }
}

}  // namespace

Status launch_fill_uniform(DType dtype, void* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n <= 0) return OkStatus();
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, int64_t{256}), 132 * 16));
  if (!dispatch_float(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        fill_uniform_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(p), n, seed, lo, hi);
      }))
    return InvalidArgument("fill_uniform: dtype " + dtype_name(dtype) + " is not float32, float16 or bfloat16");
  return launch_status("fill_uniform_kernel");
}

}  // namespace kiln::cuda
