// CUDA layers: BatchNormalization (inference), InstanceNormalization, LayerNormalization, GroupNormalization.
//
// BatchNormalization is elementwise: y = x * a[c] + b[c], with a and b folded from scale, B, mean and var
// (in double, once on the host when all four are initializers, else by a tiny kernel at the start of run).
//
// The other three normalize contiguous rows: LayerNormalization's rows are the axes from `axis` on,
// InstanceNormalization's one (n, c) plane, GroupNormalization's one (n, group) block. One row kernel
// serves all three. A row of up to 1024 elements lives in the registers of a group of lanes of one warp,
// up to 16384 elements in those of a whole block; statistics are two-pass (mean, then squared deviations
// from it) on the registers, so x is read from memory once and written once (LayerNorm's many rows of 17
// to 24 elements a lane, BERT's, run a persistent variant that keeps the next row's loads in flight).
// Longer rows, and few rows of more than 4096 elements (too few blocks to fill the GPU), are split into
// chunks: one kernel writes a (mean, M2) pair per chunk, a second merges its row's pairs (Chan et al.) and
// normalizes its chunk.
//
// Scale and bias reach the kernels as float32 arrays already in the kernel's indexing (LayerNorm's
// broadcast resolved), whatever their own float type: resolved on the host at create time when they are
// initializers, else gathered into the workspace by a small kernel in run().
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "backends/cuda/row_ops.cuh"

namespace kiln::cuda {
namespace {

constexpr int kMaxParamRank = 8;

template <class T, int VEC>
__device__ __forceinline__ void unpack(const Vec<T, VEC>& v, float (&out)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_f(v.v[j]);
}

// A value of any float type (parameters may differ in type from X: BatchNormalization-15's T1 and T2).
bool is_param_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat64;
}
__device__ __forceinline__ double load_any(const void* p, int64_t i, DType t) {
  switch (t) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::kFloat64: return static_cast<const double*>(p)[i];
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void store_any(void* p, int64_t i, DType t, float v) {
  switch (t) {
    case DType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case DType::kFloat64: static_cast<double*>(p)[i] = v; break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// 16 bytes of T: the vector width of the aligned paths.
int vec_width(DType t) { return t == DType::kFloat32 ? 4 : 8; }

// Device memory a layer owns (its resolved constant parameters).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  Status upload(const std::vector<float>& host) {
    KILN_CUDA_TRY(cudaMalloc(&p_, std::max<size_t>(host.size(), 1) * sizeof(float)));
    if (!host.empty()) KILN_CUDA_TRY(cudaMemcpy(p_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    return OkStatus();
  }
  const float* get() const { return static_cast<const float*>(p_); }

 private:
  void* p_ = nullptr;
};

// ---------------------------------------------------------------------------------------------------------
// Parameters: element k of a float32 array is src[index(k)], index through a (broadcast) shape and strides.

struct ParamGather {
  const void* src = nullptr;
  DType dtype = DType::kFloat32;
  int64_t n = 0;  // elements of the resolved array
  int rank = 0;
  int64_t dims[kMaxParamRank] = {};
  int64_t strides[kMaxParamRank] = {};  // 0 along broadcast dims
};

__host__ __device__ inline int64_t gather_index(const ParamGather& g, int64_t k) {
  int64_t off = 0;
  for (int d = g.rank - 1; d >= 0; --d) {
    off += (k % g.dims[d]) * g.strides[d];
    k /= g.dims[d];
  }
  return off;
}

ParamGather identity_gather(DType dtype, int64_t n) {
  ParamGather g;
  g.dtype = dtype;
  g.n = n;
  g.rank = 1;
  g.dims[0] = std::max<int64_t>(n, 1);
  g.strides[0] = 1;
  return g;
}

// `param` broadcast (numpy, unidirectionally) to `target`; false when it does not broadcast.
bool broadcast_gather(DType dtype, const Shape& param, const Shape& target, ParamGather* g) {
  if (param.size() > target.size() || target.size() > static_cast<size_t>(kMaxParamRank)) return false;
  *g = ParamGather();
  g->dtype = dtype;
  g->n = shape_numel(target);
  g->rank = static_cast<int>(target.size());
  int64_t stride = 1;
  for (int d = g->rank - 1, j = static_cast<int>(param.size()) - 1; d >= 0; --d, --j) {
    g->dims[d] = target[d];
    if (j < 0) continue;
    if (param[j] != 1 && param[j] != target[d]) return false;
    g->strides[d] = param[j] == 1 ? 0 : stride;
    stride *= param[j];
  }
  return true;
}

std::vector<float> resolve_on_host(const ParamGather& g, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(g.n));
  for (int64_t k = 0; k < g.n; ++k) out[k] = static_cast<float>(t.scalar_as_double(gather_index(g, k)));
  return out;
}

// blockIdx.y picks the array (scale or bias); an array whose src is null is skipped.
__global__ void gather_params_kernel(ParamGather g0, ParamGather g1, float* out0, float* out1) {
  const ParamGather& g = blockIdx.y == 0 ? g0 : g1;
  float* out = blockIdx.y == 0 ? out0 : out1;
  if (g.src == nullptr) return;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < g.n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[k] = static_cast<float>(load_any(g.src, gather_index(g, k), g.dtype));
}

Status launch_gather(const ParamGather& g0, const ParamGather& g1, float* out0, float* out1, cudaStream_t s) {
  const int64_t n = std::max(g0.src ? g0.n : 0, g1.src ? g1.n : 0);
  if (n == 0) return OkStatus();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 1024));
  gather_params_kernel<<<dim3(blocks, 2), 256, 0, s>>>(g0, g1, out0, out1);
  return launch_status("gather_params_kernel");
}

// ---------------------------------------------------------------------------------------------------------
// Row normalization (LayerNorm, InstanceNorm, GroupNorm)

struct RowNorm {
  int64_t rows = 0;
  int len = 0;
  const float* scale = nullptr;
  const float* bias = nullptr;  // null: no bias
  // per_element: parameter k of the row (LayerNorm); else parameter (row % pmod) * pstride + k / sub
  // (InstanceNorm and GroupNorm-18: one per row; GroupNorm-21: one per channel of the group).
  bool per_element = true;
  int pmod = 1, pstride = 0, sub = 1;
  float eps = 1e-5f;
  void* mean = nullptr;  // LayerNorm's optional Mean and InvStdDev outputs, one per row
  void* inv = nullptr;
  DType mean_dtype = DType::kFloat32, inv_dtype = DType::kFloat32;
  float2* partials = nullptr;  // split path: (mean, M2) per chunk
  int chunks = 1, chunk_len = 0;
};

// y[e..e+VEC) = (v - mean) * inv * scale + bias, with the parameters of elements e.. of row `row`.
// pbase: the row's first parameter (param_base) when the parameters are not per element.
template <class T, int VEC>
__device__ __forceinline__ void norm_store(const RowNorm& p, int pbase, int e, const float (&v)[VEC], float mean,
                                           float inv, T* dst) {
  float sc[VEC], bi[VEC], o[VEC];
  if (p.per_element) {
    if constexpr (VEC % 4 == 0) {
#pragma unroll
      for (int q = 0; q < VEC / 4; ++q) {
        const float4 s4 = reinterpret_cast<const float4*>(p.scale + e)[q];
        sc[4 * q] = s4.x, sc[4 * q + 1] = s4.y, sc[4 * q + 2] = s4.z, sc[4 * q + 3] = s4.w;
        float4 b4 = make_float4(0.f, 0.f, 0.f, 0.f);
        if (p.bias != nullptr) b4 = reinterpret_cast<const float4*>(p.bias + e)[q];
        bi[4 * q] = b4.x, bi[4 * q + 1] = b4.y, bi[4 * q + 2] = b4.z, bi[4 * q + 3] = b4.w;
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        sc[j] = p.scale[e + j];
        bi[j] = p.bias != nullptr ? p.bias[e + j] : 0.0f;
      }
    }
  } else {
    // One division a vector; a vector may cross sub-row boundaries when sub is not a multiple of VEC.
    int idx = e / p.sub;
    int r = e - idx * p.sub;
    idx += pbase;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      sc[j] = p.scale[idx];
      bi[j] = p.bias != nullptr ? p.bias[idx] : 0.0f;
      if (++r == p.sub) r = 0, ++idx;
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) o[j] = (v[j] - mean) * inv * sc[j] + bi[j];
  store_vec<T, VEC>(dst, o);
}

__device__ __forceinline__ int param_base(const RowNorm& p, int64_t row) {
  return p.per_element ? 0 : static_cast<int>(row % p.pmod) * p.pstride;
}

__device__ __forceinline__ void store_stats(const RowNorm& p, int64_t row, float mean, float inv) {
  if (p.mean != nullptr) store_any(p.mean, row, p.mean_dtype, mean);
  if (p.inv != nullptr) store_any(p.inv, row, p.inv_dtype, inv);
}

// One row per `width` lanes (width > 0) or per block (width 0); each thread holds NV vectors of VEC
// elements: vector i of thread t is vector t + i * threads of the row. VEC > 1 needs len % VEC == 0.
// More than 16 elements a thread only ever run in blocks of 256 (plan_rows), which leaves them registers.
// Rows of 17 to 24 elements a thread without the prefetch: five blocks of 256 an SM (at most 51 registers,
// 62% occupancy) for float16, four for the others, which would spill at five. (Measured on BERT's LayerNorm,
// whose large launches have since gone to layer_norm_rows_kernel; InstanceNorm and GroupNorm rows keep it.)
template <class T, int VEC, int NV, bool PREFETCH>
__global__ void __launch_bounds__(VEC * NV > 16 ? 256 : 1024,
                                  VEC * NV > 16 && VEC * NV <= 24 && !PREFETCH ? (std::is_same_v<T, __half> ? 5 : 4) : 1)
    row_norm_kernel(const T* __restrict__ x, T* __restrict__ y, RowNorm p, int width) {
  __shared__ float sh[32];
  int64_t row;
  int t, nt;
  if (width > 0) {
    row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> (__ffs(width) - 1);  // width: a power of 2
    t = threadIdx.x & (width - 1);
    nt = width;
  } else {
    row = blockIdx.x;
    t = threadIdx.x;
    nt = blockDim.x;
  }
  // Lanes past the last row still take part in the shuffles.
  const bool valid = row < p.rows;
  const int len = p.len;
  const T* xr = x + (valid ? row : 0) * len;
  // Kept as loaded (packed halves for float16 and bfloat16): registers, not conversions, bound occupancy.
  Vec<T, VEC> raw[NV];
  // LayerNorm's scale and bias for this thread's elements, loaded with the row rather than after its two
  // reductions, whose latency they would otherwise add to (most of a small batch's time). Only where the
  // registers are there: rows of 17 to 24 elements a thread, which run in blocks of 256 (BERT's 768 halves),
  // and only when the rows are few (PREFETCH, see launch_row_norm_vec): the 48 registers cut occupancy to
  // 37%, which leaves a large batch's rows too few loads in flight (BERT-base at batch 128: 34% of DRAM
  // bandwidth, measured with ncu).
  constexpr bool kPrefetch = PREFETCH && VEC % 4 == 0 && VEC * NV > 16 && VEC * NV <= 24;
  constexpr int kPv = kPrefetch ? VEC * NV : 1;  // (indices below are % kPv: in range where nothing is prefetched)
  float psc[kPv], pbi[kPv];
  const bool prefetched = kPrefetch && p.per_element;
  if (prefetched) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int e = (t + i * nt) * VEC;
      if (valid && e < len) {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
          const float4 s4 = reinterpret_cast<const float4*>(p.scale + e)[q];
          const float4 b4 =
              p.bias != nullptr ? reinterpret_cast<const float4*>(p.bias + e)[q] : make_float4(0.f, 0.f, 0.f, 0.f);
          const int k = (i * VEC + 4 * q) % kPv;
          psc[k] = s4.x, psc[k + 1] = s4.y, psc[k + 2] = s4.z, psc[k + 3] = s4.w;
          pbi[k] = b4.x, pbi[k + 1] = b4.y, pbi[k + 2] = b4.z, pbi[k + 3] = b4.w;
        }
      }
    }
  }
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (valid && e < len) {
      raw[i] = *reinterpret_cast<const Vec<T, VEC>*>(xr + e);
      float f[VEC];
      unpack<T, VEC>(raw[i], f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += f[j];
    }
  }
  s = row_reduce<SumOp>(s, width, sh);
  const float mean = len > 0 ? s / len : 0.0f;
  float q = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (valid && e < len) {
      float f[VEC];
      unpack<T, VEC>(raw[i], f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) q += (f[j] - mean) * (f[j] - mean);
    }
  }
  q = row_reduce<SumOp>(q, width, sh);
  const float inv = 1.0f / sqrtf((len > 0 ? q / len : 0.0f) + p.eps);
  if (!valid) return;
  if (t == 0) store_stats(p, row, mean, inv);
  T* yr = y + row * len;
  const int pbase = param_base(p, row);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (e < len) {
      float f[VEC];
      unpack<T, VEC>(raw[i], f);
      if (prefetched) {
        float o[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) o[j] = (f[j] - mean) * inv * psc[(i * VEC + j) % kPv] + pbi[(i * VEC + j) % kPv];
        store_vec<T, VEC>(yr + e, o);
      } else {
        norm_store<T, VEC>(p, pbase, e, f, mean, inv, yr + e);
      }
    }
  }
}

// LayerNorm's many rows of 17 to 24 elements a lane (BERT's 768 halves at batch 128): persistent warps, each
// over rows w, w + W, ... with the next row's loads in flight while this one is reduced and written, and the
// block's scale and bias in shared memory, loaded once. The row kernel's warps each load one row and then
// only reduce and store, so at any time most of them have nothing in flight (ncu: 42% of DRAM bandwidth).
constexpr int kRowsThreads = 256;
template <class T, int VEC, int NV>
__global__ void __launch_bounds__(kRowsThreads)
    layer_norm_rows_kernel(const T* __restrict__ x, T* __restrict__ y, RowNorm p) {
  constexpr int kMaxLen = 32 * VEC * NV;
  __shared__ __align__(16) float sc[kMaxLen], bi[kMaxLen];
  const int len = p.len;
  for (int e = threadIdx.x; e < len; e += kRowsThreads) {
    sc[e] = p.scale[e];
    bi[e] = p.bias != nullptr ? p.bias[e] : 0.0f;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t step = static_cast<int64_t>(gridDim.x) * (kRowsThreads / 32);
  int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowsThreads / 32) + threadIdx.x / 32;
  Vec<T, VEC> cur[NV], next[NV];
  auto load_row = [&](int64_t r, Vec<T, VEC>(&v)[NV]) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int e = (lane + 32 * i) * VEC;
      if (r < p.rows && e < len) v[i] = *reinterpret_cast<const Vec<T, VEC>*>(x + r * len + e);
    }
  };
  // The row's sum of (v - center), or of its squares, over the warp.
  auto row_sum = [&](float center, bool square) {
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      float f[VEC];
      unpack<T, VEC>(cur[i], f);
      if ((lane + 32 * i) * VEC < len)
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc += square ? (f[j] - center) * (f[j] - center) : f[j] - center;
    }
    return lanes_reduce<SumOp>(acc, 32);
  };
  load_row(row, cur);
  for (; row < p.rows; row += step) {
    load_row(row + step, next);
    const float mean = row_sum(0.0f, false) / len;
    const float inv = 1.0f / sqrtf(row_sum(mean, true) / len + p.eps);
    if (lane == 0) store_stats(p, row, mean, inv);
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int e = (lane + 32 * i) * VEC;
      if (e < len) {
        float f[VEC], o[VEC];
        unpack<T, VEC>(cur[i], f);
#pragma unroll
        for (int j = 0; j < VEC; ++j) o[j] = (f[j] - mean) * inv * sc[e + j] + bi[e + j];
        store_vec<T, VEC>(y + row * len + e, o);
      }
      cur[i] = next[i];
    }
  }
}

// Split path, first kernel: block b is chunk b % chunks of row b / chunks; writes its (mean, M2).
template <class T, int VEC>
__global__ void row_partial_kernel(const T* __restrict__ x, RowNorm p) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x / p.chunks;
  const int begin = static_cast<int>(blockIdx.x % p.chunks) * p.chunk_len;
  const int end = min(p.len, begin + p.chunk_len);
  const T* xr = x + row * p.len;
  float s = 0.0f;
  for (int e = begin + threadIdx.x * VEC; e < end; e += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + e, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += v[j];
  }
  s = row_reduce<SumOp>(s, 0, sh);
  const int n = end - begin;
  const float m = n > 0 ? s / n : 0.0f;
  // Deviations from the chunk's own mean: the chunk is still in L1/L2.
  float q = 0.0f;
  for (int e = begin + threadIdx.x * VEC; e < end; e += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + e, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) q += (v[j] - m) * (v[j] - m);
  }
  q = row_reduce<SumOp>(q, 0, sh);
  if (threadIdx.x == 0) p.partials[blockIdx.x] = make_float2(m, q);
}

// Chan et al.'s merge of (count, mean, M2) triples.
__device__ __forceinline__ void chan_merge(float& n, float& m, float& q, float nb, float mb, float qb) {
  const float nn = n + nb;
  if (nb == 0.0f) return;
  const float d = mb - m, f = nb / nn;
  m += d * f;
  q += qb + d * d * n * f;
  n = nn;
}

// Split path, second kernel: merges the row's chunk statistics (warp 0), then normalizes this block's chunk.
template <class T, int VEC>
__global__ void row_norm_split_kernel(const T* __restrict__ x, T* __restrict__ y, RowNorm p) {
  __shared__ float stats[2];
  const int64_t row = blockIdx.x / p.chunks;
  const int chunk = static_cast<int>(blockIdx.x % p.chunks);
  if (threadIdx.x < 32) {
    float n = 0.0f, m = 0.0f, q = 0.0f;
    for (int c = threadIdx.x; c < p.chunks; c += 32) {
      const float2 pq = p.partials[row * p.chunks + c];
      const float cn = static_cast<float>(min(p.chunk_len, p.len - c * p.chunk_len));
      chan_merge(n, m, q, cn, pq.x, pq.y);
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float n2 = __shfl_xor_sync(0xffffffffu, n, o), m2 = __shfl_xor_sync(0xffffffffu, m, o),
                  q2 = __shfl_xor_sync(0xffffffffu, q, o);
      chan_merge(n, m, q, n2, m2, q2);
    }
    if (threadIdx.x == 0) {
      stats[0] = m;
      stats[1] = 1.0f / sqrtf((p.len > 0 ? q / p.len : 0.0f) + p.eps);
      if (chunk == 0) store_stats(p, row, stats[0], stats[1]);
    }
  }
  __syncthreads();
  const float mean = stats[0], inv = stats[1];
  const int begin = chunk * p.chunk_len, end = min(p.len, begin + p.chunk_len);
  const T* xr = x + row * p.len;
  T* yr = y + row * p.len;
  const int pbase = param_base(p, row);
  for (int e = begin + threadIdx.x * VEC; e < end; e += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + e, v);
    norm_store<T, VEC>(p, pbase, e, v, mean, inv, yr + e);
  }
}

template <class T, int VEC>
void launch_row_norm_vec(const RowPlan& plan, const T* x, T* y, const RowNorm& p, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>(plan.blocks);
  const int width = plan.path == RowPath::kGroup ? plan.width : 0;
  if (plan.path == RowPath::kSplit) {
    row_partial_kernel<T, VEC><<<blocks, plan.threads, 0, s>>>(x, p);
    row_norm_split_kernel<T, VEC><<<blocks, plan.threads, 0, s>>>(x, y, p);
    return;
  }
  // Prefetching the parameters pays while a launch is short of warps (under two blocks an SM); past that,
  // occupancy hides their latency better, and LayerNorm's rows of 17 to 24 elements a lane go to the
  // persistent kernel.
  const bool prefetch = plan.blocks < 2 * static_cast<int64_t>(sm_count());
  if (!prefetch && plan.path == RowPath::kGroup && plan.width == 32 && p.per_element) {
    const unsigned grid = capped_grid(ceil_div(p.rows, kRowsThreads / 32), 4);
    if constexpr (VEC == 8) {
      if (plan.nv == 3) return layer_norm_rows_kernel<T, 8, 3><<<grid, kRowsThreads, 0, s>>>(x, y, p);
    } else if constexpr (VEC == 4) {
      if (plan.nv == 6) return layer_norm_rows_kernel<T, 4, 6><<<grid, kRowsThreads, 0, s>>>(x, y, p);
    }
  }
  switch (plan.nv) {
#define KILN_ROW_NORM_CASE(NV)                                                                         \
  case NV:                                                                                             \
    if constexpr (VEC * NV <= 32) {                                                                    \
      if (prefetch) row_norm_kernel<T, VEC, NV, true><<<blocks, plan.threads, 0, s>>>(x, y, p, width); \
      else row_norm_kernel<T, VEC, NV, false><<<blocks, plan.threads, 0, s>>>(x, y, p, width);         \
    }                                                                                                  \
    break;
    KILN_ROW_NORM_CASE(1) KILN_ROW_NORM_CASE(2) KILN_ROW_NORM_CASE(3) KILN_ROW_NORM_CASE(4)
    KILN_ROW_NORM_CASE(6) KILN_ROW_NORM_CASE(8) KILN_ROW_NORM_CASE(16) KILN_ROW_NORM_CASE(32)
#undef KILN_ROW_NORM_CASE
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Layers

std::string op_prefix(const LayerSpec& spec) { return "CUDA " + spec.node->op_type + ": "; }

// "" when input i is present with a supported float type (or absent and optional).
std::string check_float_input(const LayerSpec& spec, size_t i, const char* name, bool required, bool kernel_type) {
  if (i >= spec.inputs.size() || !spec.inputs[i].present())
    return required ? op_prefix(spec) + "input " + name + " is required" : "";
  const DType t = spec.inputs[i].dtype;
  if (kernel_type ? !is_float_dtype(t) : !is_param_dtype(t))
    return op_prefix(spec) + name + " of type " + dtype_name(t) + " is not supported (" +
           (kernel_type ? "float32, float16 and bfloat16" : "float32, float16, bfloat16 and float64") + " are)";
  return "";
}

// An input's parameters as a float32 array on the device: from the layer's memory when the input is an
// initializer, else gathered into the workspace by run().
struct ParamSource {
  ParamGather gather;
  DeviceBuffer constant;
  bool is_constant = false;
  bool present = false;

  Status init(const TensorDesc& d, const ParamGather& g) {
    present = d.present();
    if (!present) return OkStatus();
    gather = g;
    if (d.constant != nullptr) {
      is_constant = true;
      return constant.upload(resolve_on_host(g, *d.constant));
    }
    return OkStatus();
  }
  size_t workspace_bytes() const { return present && !is_constant ? align256(gather.n * sizeof(float)) : 0; }
};

// LayerNormalization, InstanceNormalization and GroupNormalization.
class RowNormLayer : public Layer {
 public:
  Status init(const LayerSpec& spec) {
    const std::string& op = spec.node->op_type;
    const Shape& xs = spec.inputs[0].shape;
    dtype_ = spec.inputs[0].dtype;
    const float eps = spec.attr_float("epsilon", 1e-5f);
    p_.eps = eps;
    const int64_t rank = static_cast<int64_t>(xs.size());
    int64_t rows = 1, len = 1;
    ParamGather gs, gb;
    const DType st = spec.inputs[1].dtype;
    const DType bt = spec.inputs.size() > 2 ? spec.inputs[2].dtype : DType::kUndefined;
    auto channel_param = [&](size_t i, int64_t want, const char* name, ParamGather* g) -> Status {
      if (i >= spec.inputs.size() || !spec.inputs[i].present()) return OkStatus();
      const Shape& s = spec.inputs[i].shape;
      if (s.size() > 1 || shape_numel(s) != want)
        return InvalidArgument(op_prefix(spec) + name + " must be a 1-D tensor of " + std::to_string(want) +
                               " elements, got " + shape_to_string(s));
      *g = identity_gather(spec.inputs[i].dtype, want);
      return OkStatus();
    };
    if (op == "LayerNormalization") {
      int64_t axis = spec.attr_int("axis", -1);
      if (axis < -rank || axis >= rank || rank == 0)
        return InvalidArgument(op_prefix(spec) + "axis " + std::to_string(axis) + " is out of range for rank " +
                               std::to_string(rank));
      if (axis < 0) axis += rank;
      const Shape norm(xs.begin() + axis, xs.end());
      for (int64_t d = 0; d < axis; ++d) rows *= xs[d];
      len = shape_numel(norm);
      if (!broadcast_gather(st, spec.inputs[1].shape, norm, &gs))
        return InvalidArgument(op_prefix(spec) + "Scale " + shape_to_string(spec.inputs[1].shape) +
                               " does not broadcast to the normalized shape " + shape_to_string(norm));
      if (bt != DType::kUndefined && !broadcast_gather(bt, spec.inputs[2].shape, norm, &gb))
        return InvalidArgument(op_prefix(spec) + "B " + shape_to_string(spec.inputs[2].shape) +
                               " does not broadcast to the normalized shape " + shape_to_string(norm));
      p_.per_element = true;
    } else {
      const size_t min_rank = op == "InstanceNormalization" ? 3 : 2;
      if (xs.size() < min_rank)
        return InvalidArgument(op_prefix(spec) + "X must have rank >= " + std::to_string(min_rank) + ", got " +
                               shape_to_string(xs));
      const int64_t n = xs[0], c = xs[1];
      int64_t spatial = 1;
      for (int64_t d = 2; d < rank; ++d) spatial *= xs[d];
      if (op == "InstanceNormalization") {
        KILN_RETURN_IF_ERROR(channel_param(1, c, "scale", &gs));
        KILN_RETURN_IF_ERROR(channel_param(2, c, "B", &gb));
        rows = n * c;
        len = spatial;
        p_.pmod = static_cast<int>(std::max<int64_t>(c, 1));
        p_.pstride = 1;
        p_.sub = static_cast<int>(std::max<int64_t>(len, 1));
      } else {
        const int64_t g = spec.attr_int("num_groups", 0);
        if (g <= 0 || c % g != 0)
          return InvalidArgument(op_prefix(spec) + "num_groups " + std::to_string(g) +
                                 " must be positive and divide the channel count " + std::to_string(c));
        // Opset 18 has one scale and bias per group, opset 21 one per channel.
        const bool per_channel = spec.opset >= 21;
        KILN_RETURN_IF_ERROR(channel_param(1, per_channel ? c : g, "scale", &gs));
        KILN_RETURN_IF_ERROR(channel_param(2, per_channel ? c : g, "bias", &gb));
        rows = n * g;
        len = (c / g) * spatial;
        p_.pmod = static_cast<int>(g);
        p_.pstride = per_channel ? static_cast<int>(c / g) : 1;
        p_.sub = static_cast<int>(std::max<int64_t>(per_channel ? spatial : len, 1));
      }
      p_.per_element = false;
    }
    if (len >= (int64_t{1} << 31) - 32768)
      return Unsupported(op_prefix(spec) + "rows of " + std::to_string(len) + " elements are too long");
    p_.rows = rows;
    p_.len = static_cast<int>(len);
    for (size_t i = 1; i < 3 && i < spec.outputs.size(); ++i) {
      if (!spec.outputs[i].present()) continue;
      (i == 1 ? p_.mean_dtype : p_.inv_dtype) = spec.outputs[i].dtype;
    }
    KILN_RETURN_IF_ERROR(scale_.init(spec.inputs[1], gs));
    if (bt != DType::kUndefined) KILN_RETURN_IF_ERROR(bias_.init(spec.inputs[2], gb));
    split_ = plan_chunks(rows, len, &p_.chunks, &p_.chunk_len);
    partials_offset_ = scale_.workspace_bytes() + bias_.workspace_bytes();
    workspace_ = partials_offset_ + (split_ ? align256(rows * p_.chunks * sizeof(float2)) : 0);
    return OkStatus();
  }

  size_t workspace_bytes() const override { return workspace_; }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (p_.rows == 0) return OkStatus();
    RowNorm p = p_;
    char* ws = static_cast<char*>(workspace);
    float* scale_ws = reinterpret_cast<float*>(ws);
    float* bias_ws = reinterpret_cast<float*>(ws + scale_.workspace_bytes());
    ParamGather g0, g1;  // src null: nothing to gather
    if (!scale_.is_constant) {
      g0 = scale_.gather;
      g0.src = inputs[1].data;
    }
    if (bias_.present && !bias_.is_constant) {
      g1 = bias_.gather;
      g1.src = inputs[2].data;
    }
    KILN_RETURN_IF_ERROR(launch_gather(g0, g1, scale_ws, bias_ws, h.stream));
    p.scale = scale_.is_constant ? scale_.constant.get() : scale_ws;
    p.bias = !bias_.present ? nullptr : bias_.is_constant ? bias_.constant.get() : bias_ws;
    p.mean = outputs.size() > 1 ? outputs[1].data : nullptr;
    p.inv = outputs.size() > 2 ? outputs[2].data : nullptr;
    p.partials = reinterpret_cast<float2*>(ws + partials_offset_);
    const void* x = inputs[0].data;
    void* y = outputs[0].data;
    const int vec = vec_width(dtype_);
    const bool use_vec = p.len % vec == 0 && aligned16(x) && aligned16(y);
    const RowPlan plan = plan_rows(p.rows, p.len, use_vec ? vec : 1, split_, p.chunks);
    dispatch_float(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      constexpr int V = 16 / sizeof(T);
      if (use_vec) launch_row_norm_vec<T, V>(plan, static_cast<const T*>(x), static_cast<T*>(y), p, h.stream);
      else launch_row_norm_vec<T, 1>(plan, static_cast<const T*>(x), static_cast<T*>(y), p, h.stream);
    });
    return launch_status("row_norm_kernel");
  }

 private:
  DType dtype_ = DType::kFloat32;
  RowNorm p_;
  bool split_ = false;
  ParamSource scale_, bias_;
  size_t partials_offset_ = 0, workspace_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// BatchNormalization (inference)

struct BnParam {
  const void* p = nullptr;
  DType t = DType::kFloat32;
};

// a = scale / sqrt(var + eps), b = B - mean * a, in double as the reference does.
__global__ void batch_norm_fold_kernel(BnParam scale, BnParam bias, BnParam mean, BnParam var, int64_t c, double eps,
                                       float* a, float* b) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < c;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double s = load_any(scale.p, i, scale.t) / sqrt(load_any(var.p, i, var.t) + eps);
    a[i] = static_cast<float>(s);
    b[i] = static_cast<float>(load_any(bias.p, i, bias.t) - load_any(mean.p, i, mean.t) * s);
  }
}

// Vector v holds elements v*VEC.. of one channel (VEC > 1 needs spatial % VEC == 0). I is uint32_t when the
// tensor has fewer than 2^31 elements, to keep the channel division cheap.
template <class T, int VEC, class I>
__global__ void batch_norm_kernel(const T* __restrict__ x, T* __restrict__ y, I nvec, I spatial, I channels,
                                  const float* __restrict__ a, const float* __restrict__ b) {
  for (I v = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec;
       v += static_cast<I>(gridDim.x) * blockDim.x) {
    const I e = v * VEC;
    const I c = (e / spatial) % channels;
    const float sa = a[c], sb = b[c];
    float f[VEC];
    load_vec<T, VEC>(x + e, f);
#pragma unroll
    for (int j = 0; j < VEC; ++j) f[j] = fmaf(f[j], sa, sb);
    store_vec<T, VEC>(y + e, f);
  }
}

class BatchNormLayer : public Layer {
 public:
  Status init(const LayerSpec& spec) {
    const Shape& xs = spec.inputs[0].shape;
    dtype_ = spec.inputs[0].dtype;
    if (xs.empty()) return InvalidArgument(op_prefix(spec) + "X must have rank >= 1");
    n_ = shape_numel(xs);
    channels_ = xs.size() > 1 ? xs[1] : 1;
    spatial_ = 1;
    for (size_t d = 2; d < xs.size(); ++d) spatial_ *= xs[d];
    const char* names[] = {"X", "scale", "B", "input_mean", "input_var"};
    bool all_constant = true;
    for (size_t i = 1; i <= 4; ++i) {
      const Shape& s = spec.inputs[i].shape;
      if (s.size() > 1 || shape_numel(s) != channels_)
        return InvalidArgument(op_prefix(spec) + names[i] + " must be a 1-D tensor of " + std::to_string(channels_) +
                               " channels, got " + shape_to_string(s));
      param_types_[i - 1] = spec.inputs[i].dtype;
      all_constant = all_constant && spec.inputs[i].constant != nullptr;
    }
    eps_ = spec.attr_float("epsilon", 1e-5f);
    if (all_constant) {
      std::vector<float> ab(static_cast<size_t>(2 * channels_));
      for (int64_t c = 0; c < channels_; ++c) {
        const double s = spec.inputs[1].constant->scalar_as_double(c) /
                         std::sqrt(spec.inputs[4].constant->scalar_as_double(c) + eps_);
        ab[c] = static_cast<float>(s);
        ab[channels_ + c] = static_cast<float>(spec.inputs[2].constant->scalar_as_double(c) -
                                               spec.inputs[3].constant->scalar_as_double(c) * s);
      }
      KILN_RETURN_IF_ERROR(folded_.upload(ab));
      has_folded_ = true;
    }
    return OkStatus();
  }

  size_t workspace_bytes() const override { return has_folded_ ? 0 : align256(2 * channels_ * sizeof(float)); }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (n_ == 0) return OkStatus();
    const float* ab = folded_.get();
    if (!has_folded_) {
      float* w = static_cast<float*>(workspace);
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(channels_, 256), 256));
      batch_norm_fold_kernel<<<blocks, 256, 0, h.stream>>>(
          BnParam{inputs[1].data, param_types_[0]}, BnParam{inputs[2].data, param_types_[1]},
          BnParam{inputs[3].data, param_types_[2]}, BnParam{inputs[4].data, param_types_[3]}, channels_, eps_, w,
          w + channels_);
      KILN_RETURN_IF_ERROR(launch_status("batch_norm_fold_kernel"));
      ab = w;
    }
    const void* x = inputs[0].data;
    void* y = outputs[0].data;
    const int vec = vec_width(dtype_);
    const bool use_vec = spatial_ % vec == 0 && aligned16(x) && aligned16(y);
    const bool narrow = n_ < (int64_t{1} << 31);
    dispatch_float(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      constexpr int V = 16 / sizeof(T);
      const T* xt = static_cast<const T*>(x);
      T* yt = static_cast<T*>(y);
      const int64_t nvec = use_vec ? n_ / V : n_;
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(nvec, 256), int64_t{16} * sm_count()));
      const float* a = ab;
      const float* b = ab + channels_;
      if (narrow) {
        const uint32_t nv = static_cast<uint32_t>(nvec), sp = static_cast<uint32_t>(spatial_),
                       ch = static_cast<uint32_t>(channels_);
        if (use_vec) batch_norm_kernel<T, V, uint32_t><<<blocks, 256, 0, h.stream>>>(xt, yt, nv, sp, ch, a, b);
        else batch_norm_kernel<T, 1, uint32_t><<<blocks, 256, 0, h.stream>>>(xt, yt, nv, sp, ch, a, b);
      } else {
        if (use_vec)
          batch_norm_kernel<T, V, int64_t><<<blocks, 256, 0, h.stream>>>(xt, yt, nvec, spatial_, channels_, a, b);
        else batch_norm_kernel<T, 1, int64_t><<<blocks, 256, 0, h.stream>>>(xt, yt, nvec, spatial_, channels_, a, b);
      }
    });
    return launch_status("batch_norm_kernel");
  }

 private:
  DType dtype_ = DType::kFloat32;
  int64_t n_ = 0, channels_ = 1, spatial_ = 1;
  double eps_ = 1e-5;
  DType param_types_[4] = {};
  DeviceBuffer folded_;  // a then b, when every parameter is an initializer
  bool has_folded_ = false;
};

// ---------------------------------------------------------------------------------------------------------
// check() for each op: dtypes, ranks when known, attributes.

std::string check_batch_norm(const LayerSpec& spec) {
  if (spec.attr_int("training_mode", 0) != 0)
    return op_prefix(spec) + "training_mode 1 is not supported (inference only)";
  if (spec.has_attr("spatial") && spec.attr_int("spatial", 1) == 0)
    return op_prefix(spec) + "spatial 0 (per-element statistics of opset 7-8) is not supported";
  for (size_t i = 1; i < spec.outputs.size(); ++i)
    if (spec.outputs[i].present())
      return op_prefix(spec) + "the running mean and variance outputs (training) are not supported";
  const char* names[] = {"X", "scale", "B", "input_mean", "input_var"};
  for (size_t i = 0; i < 5; ++i)
    if (std::string why = check_float_input(spec, i, names[i], true, i == 0); !why.empty()) return why;
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.empty()) return op_prefix(spec) + "X must have rank >= 1";
  return "";
}

std::string check_instance_norm(const LayerSpec& spec) {
  const char* names[] = {"input", "scale", "B"};
  for (size_t i = 0; i < 3; ++i)
    if (std::string why = check_float_input(spec, i, names[i], true, i == 0); !why.empty()) return why;
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.size() < 3)
    return op_prefix(spec) + "input must have rank >= 3 ([N, C, D1, ...]), got rank " +
           std::to_string(spec.inputs[0].shape.size());
  return "";
}

std::string check_layer_norm(const LayerSpec& spec) {
  if (std::string why = check_float_input(spec, 0, "X", true, true); !why.empty()) return why;
  if (std::string why = check_float_input(spec, 1, "Scale", true, false); !why.empty()) return why;
  if (std::string why = check_float_input(spec, 2, "B", false, false); !why.empty()) return why;
  for (size_t i = 1; i < spec.outputs.size() && i < 3; ++i)
    if (spec.outputs[i].present() && !is_param_dtype(spec.outputs[i].dtype))
      return op_prefix(spec) + (i == 1 ? "Mean" : "InvStdDev") + " of type " + dtype_name(spec.outputs[i].dtype) +
             " is not supported";
  const TensorDesc& x = spec.inputs[0];
  if (x.has_rank) {
    const int64_t rank = static_cast<int64_t>(x.shape.size()), axis = spec.attr_int("axis", -1);
    if (rank == 0) return op_prefix(spec) + "X must have rank >= 1";
    if (axis < -rank || axis >= rank)
      return op_prefix(spec) + "axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank);
    const int64_t norm_rank = rank - (axis < 0 ? axis + rank : axis);
    if (norm_rank > kMaxParamRank)
      return op_prefix(spec) + "normalizing over more than " + std::to_string(kMaxParamRank) + " axes is not supported";
  }
  return "";
}

std::string check_group_norm(const LayerSpec& spec) {
  if (!spec.has_attr("num_groups")) return op_prefix(spec) + "attribute 'num_groups' is required";
  if (spec.attr_int("num_groups", 0) <= 0) return op_prefix(spec) + "num_groups must be positive";
  const char* names[] = {"X", "scale", "bias"};
  for (size_t i = 0; i < 3; ++i)
    if (std::string why = check_float_input(spec, i, names[i], true, i == 0); !why.empty()) return why;
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.size() < 2)
    return op_prefix(spec) + "X must have rank >= 2 ([N, C, ...]), got rank " +
           std::to_string(spec.inputs[0].shape.size());
  return "";
}

template <class L>
Result<std::unique_ptr<Layer>> create_layer(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  auto layer = std::make_unique<L>();
  KILN_RETURN_IF_ERROR(layer->init(spec));
  return std::unique_ptr<Layer>(std::move(layer));
}

LayerKind make_kind(const char* op, std::string (*check)(const LayerSpec&), const char* tactic,
                    Result<std::unique_ptr<Layer>> (*create)(const LayerSpec&, const std::string&,
                                                             const CudaHandles&)) {
  LayerKind k;
  k.op_type = op;
  k.check = check;
  const std::string t = tactic;
  k.tactics = [t](const LayerSpec&) { return std::vector<std::string>{t}; };
  k.create = create;
  return k;
}

}  // namespace

void register_normalization_layers(LayerTable& table) {
  table.add(make_kind("BatchNormalization", check_batch_norm, "cuda.norm.batch", create_layer<BatchNormLayer>));
  table.add(make_kind("InstanceNormalization", check_instance_norm, "cuda.norm.instance", create_layer<RowNormLayer>));
  table.add(make_kind("LayerNormalization", check_layer_norm, "cuda.norm.layer", create_layer<RowNormLayer>));
  table.add(make_kind("GroupNormalization", check_group_norm, "cuda.norm.group", create_layer<RowNormLayer>));
}

}  // namespace kiln::cuda
