// CUDA layers: CumSum and TopK (registered by register_reduce_layers in reduce.cu). Semantics follow the
// CPU reference (backends/cpu/ops/sort_scan.cc).
//
// CumSum along the last (contiguous) axis: a warp scans a row in coalesced tiles with shuffles. Along
// another axis each thread scans one column sequentially (the reference's order of additions), reading
// coalesced across the inner dim. Either way, when there are too few rows or columns to fill the GPU the
// axis is cut into chunks: the chunks' sums are computed and scanned first, and each chunk is then scanned
// from its carry, so many warps work at once.
//
// TopK orders (value, index) pairs as the reference's stable sort does: by value (NaN largest), ties by
// lower index. For k <= 128 each warp keeps its best k in registers (sorted, 32 per register across the
// lanes) and merges in a batch of 32 only when one of them beats its k-th best; the warps of a block then
// merge their lists. For larger k, a bitonic sort of up to 4096 pairs in shared memory. Either way, rows
// too long for one block are cut into chunks whose top k become candidates, selected again until one
// chunk is left.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/cuda/reduce_util.cuh"

namespace kiln::cuda {
namespace {

constexpr int64_t kSortMax = 4096;          // longest row (or chunk) sorted in shared memory
constexpr int64_t kTopkChunkedMaxK = 1024;  // largest k when such rows are cut into chunks
constexpr int64_t kSelectMaxK = 128;        // largest k of the register-list select

// ---------------------------------------------------------------------------------------------------------
// CumSum

template <class T>
using ScanAcc = std::conditional_t<kIsInt<T>, uint64_t, float>;  // integers wrap, like the reference
template <class T>
__device__ __forceinline__ ScanAcc<T> scan_load(T v) {
  if constexpr (kIsInt<T>) return static_cast<uint64_t>(static_cast<int64_t>(v));
  else return to_f(v);
}
template <class T>
__device__ __forceinline__ T scan_store(ScanAcc<T> a) {
  if constexpr (kIsInt<T>) return static_cast<T>(static_cast<int64_t>(a));
  else return from_f<T>(a);
}
template <class A>
__device__ __forceinline__ A shfl_up(A v, int d) {
  if constexpr (std::is_same_v<A, float>) return __shfl_up_sync(0xffffffffu, v, d);
  else return static_cast<A>(__shfl_up_sync(0xffffffffu, static_cast<unsigned long long>(v), d));
}
template <class A>
__device__ __forceinline__ A shfl_any(A v, int l) {
  if constexpr (std::is_same_v<A, float>) return __shfl_sync(0xffffffffu, v, l);
  else return static_cast<A>(__shfl_sync(0xffffffffu, static_cast<unsigned long long>(v), l));
}

// Thread q = (o, c, i): chunk c of column (o, i). With `sums`, writes the chunk's sum to sums[q];
// otherwise scans the chunk from carries[q] (0 when there is one chunk).
template <class T>
__global__ void cumsum_cols_kernel(const T* x, T* y, int64_t outer, int64_t D, int64_t inner, int64_t chunk,
                                   int64_t nc, ScanAcc<T>* sums, const ScanAcc<T>* carries, bool exclusive,
                                   bool reverse) {
  using A = ScanAcc<T>;
  const int64_t n = outer * nc * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n; q += stride) {
    const int64_t o = q / (nc * inner), rem = q - o * nc * inner;
    const int64_t c = rem / inner, i = rem - c * inner;
    const int64_t base = o * D * inner + i;
    const int64_t s1 = min64(D, (c + 1) * chunk);
    A acc = carries != nullptr ? carries[q] : A(0);
    if (sums != nullptr) acc = 0;
    for (int64_t s = c * chunk; s < s1; ++s) {
      const int64_t p = base + (reverse ? D - 1 - s : s) * inner;
      const A v = scan_load(x[p]);
      if (sums == nullptr && exclusive) y[p] = scan_store<T>(acc);
      acc += v;
      if (sums == nullptr && !exclusive) y[p] = scan_store<T>(acc);
    }
    if (sums != nullptr) sums[q] = acc;
  }
}

// Rows (inner == 1): the sum of each chunk, a warp per (row, chunk), to sums[row * nc + chunk].
template <class T>
__global__ void cumsum_chunk_sums_kernel(const T* x, ScanAcc<T>* sums, int64_t rows, int64_t D, int64_t chunk,
                                         int64_t nc, bool reverse) {
  using A = ScanAcc<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows * nc; w += warps) {
    const int64_t row = w / nc, c = w - row * nc;
    const int64_t s1 = min64(D, (c + 1) * chunk);
    A acc = 0;
    for (int64_t s = c * chunk + lane; s < s1; s += 32) acc += scan_load(x[row * D + (reverse ? D - 1 - s : s)]);
    for (int m = 16; m > 0; m >>= 1) acc += shfl_any(acc, lane ^ m);
    if (lane == 0) sums[w] = acc;
  }
}

// Turns the chunk sums of each (o, i) into exclusive prefix sums (the carry into each chunk), in place.
template <class A>
__global__ void cumsum_carry_kernel(A* sums, int64_t outer, int64_t nc, int64_t inner) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < outer * inner; q += stride) {
    const int64_t o = q / inner, i = q - o * inner;
    A run = 0;
    for (int64_t c = 0; c < nc; ++c) {
      A& s = sums[(o * nc + c) * inner + i];
      const A v = s;
      s = run;
      run += v;
    }
  }
}

// Scans rows (inner == 1), a warp per (row, chunk), 128 steps per iteration: four coalesced loads per lane,
// then four warp scans, each continuing from the last.
template <class T>
__global__ void cumsum_rows_kernel(const T* x, T* y, int64_t rows, int64_t D, int64_t chunk, int64_t nc,
                                   const ScanAcc<T>* carries, bool exclusive, bool reverse) {
  using A = ScanAcc<T>;
  constexpr int kItems = 4;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows * nc; w += warps) {
    const int64_t row = w / nc, c = w - row * nc;
    const int64_t s1 = min64(D, (c + 1) * chunk);
    A carry = nc > 1 ? carries[w] : A(0);
    const T* px = x + row * D;
    T* py = y + row * D;
    for (int64_t t = c * chunk; t < s1; t += 32 * kItems) {
      A v[kItems];
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const int64_t s = t + k * 32 + lane;
        v[k] = s < s1 ? scan_load(px[reverse ? D - 1 - s : s]) : A(0);
      }
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        A incl = v[k];
        for (int d = 1; d < 32; d <<= 1) {
          const A u = shfl_up(incl, d);
          if (lane >= d) incl += u;
        }
        A excl = shfl_up(incl, 1);
        if (lane == 0) excl = 0;
        const int64_t s = t + k * 32 + lane;
        if (s < s1) py[reverse ? D - 1 - s : s] = scan_store<T>(carry + (exclusive ? excl : incl));
        carry += shfl_any(incl, 31);
      }
    }
  }
}

class CumSumLayer final : public Layer {
 public:
  CumSumLayer(DType dtype, int64_t outer, int64_t D, int64_t inner, bool exclusive, bool reverse)
      : dtype_(dtype), outer_(outer), D_(D), inner_(inner), exclusive_(exclusive), reverse_(reverse) {
    chunk_ = std::max<int64_t>(D_, 1);
    const int64_t lines = outer_ * inner_;  // independent scans
    if (lines == 0) return;
    if (inner_ == 1) {  // a warp per line: chunks of at least 2048 once there are fewer lines than warps
      const int64_t target = static_cast<int64_t>(sm_count()) * 64;
      if (D_ > 4096 && lines < target) nc_ = std::min(ceil_div(D_, 2048), ceil_div(target, lines));
      if (nc_ > 1) chunk_ = ceil_div(ceil_div(D_, nc_), 128) * 128;
    } else {  // a thread per line: chunks of at least 32
      const int64_t target = static_cast<int64_t>(sm_count()) * 2048;
      if (D_ >= 64 && lines < target / 2) nc_ = std::min(ceil_div(target, lines), D_ / 32);
      if (nc_ > 1) chunk_ = ceil_div(D_, nc_);
    }
    nc_ = ceil_div(D_, chunk_);
  }
  size_t workspace_bytes() const override { return nc_ > 1 ? static_cast<size_t>(outer_ * nc_ * inner_) * 8 : 0; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (outer_ * D_ * inner_ == 0) return OkStatus();
    dispatch_numeric(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = ScanAcc<T>;
      const T* x = static_cast<const T*>(inputs[0].data);
      T* y = static_cast<T*>(outputs[0].data);
      A* sums = nc_ > 1 ? static_cast<A*>(workspace) : nullptr;
      const unsigned carry_grid = grid_of(ceil_div(outer_ * inner_, kThreads));
      if (inner_ != 1) {
        const unsigned grid = grid_of(ceil_div(outer_ * nc_ * inner_, kThreads));
        if (sums != nullptr) {
          cumsum_cols_kernel<T><<<grid, kThreads, 0, h.stream>>>(x, y, outer_, D_, inner_, chunk_, nc_, sums, nullptr,
                                                                 exclusive_, reverse_);
          cumsum_carry_kernel<A><<<carry_grid, kThreads, 0, h.stream>>>(sums, outer_, nc_, inner_);
        }
        cumsum_cols_kernel<T><<<grid, kThreads, 0, h.stream>>>(x, y, outer_, D_, inner_, chunk_, nc_, nullptr, sums,
                                                               exclusive_, reverse_);
        return;
      }
      const unsigned grid = grid_of(ceil_div(outer_ * nc_, kThreads / 32));
      if (sums != nullptr) {
        cumsum_chunk_sums_kernel<T><<<grid, kThreads, 0, h.stream>>>(x, sums, outer_, D_, chunk_, nc_, reverse_);
        cumsum_carry_kernel<A><<<carry_grid, kThreads, 0, h.stream>>>(sums, outer_, nc_, 1);
      }
      cumsum_rows_kernel<T><<<grid, kThreads, 0, h.stream>>>(x, y, outer_, D_, chunk_, nc_, sums, exclusive_, reverse_);
    });
    return launch_status("CumSum");
  }

 private:
  DType dtype_;
  int64_t outer_, D_, inner_;
  bool exclusive_, reverse_;
  int64_t chunk_ = 1, nc_ = 1;
};

// ---------------------------------------------------------------------------------------------------------
// TopK

// Whether (av, ai) comes before (bv, bi) in TopK's output: by value (NaN counts as the largest), then by
// index; index INT32_MAX marks padding, which comes last.
template <class V>
__device__ __forceinline__ bool topk_before(V av, int32_t ai, V bv, int32_t bi, bool largest) {
  if (ai == INT32_MAX) return false;
  if (bi == INT32_MAX) return true;
  const int c = cmp3(av, bv);
  if (c != 0) return largest ? c > 0 : c < 0;
  return ai < bi;
}

// Where a block's pairs come from: the input tensor (row `row` strided by `inner`) or, with kRaw false, an
// earlier round's candidates (rows of L values and indices).
template <class T, bool kRaw>
__device__ __forceinline__ void topk_load(const void* src_vals, const int32_t* src_idx, int64_t row, int64_t o,
                                          int64_t in, int64_t inner, int64_t L, int64_t j, Key<T>* v, int32_t* i) {
  if constexpr (kRaw) {
    *v = to_key(static_cast<const T*>(src_vals)[(o * L + j) * inner + in]);
    *i = static_cast<int32_t>(j);
  } else {
    *v = static_cast<const Key<T>*>(src_vals)[row * L + j];
    *i = src_idx[row * L + j];
  }
}

// Where pair t (< k) of a block's result goes: the outputs (final round) or the candidates of the next.
template <class T>
__device__ __forceinline__ void topk_store(Key<T> v, int32_t i, int64_t t, int64_t row, int64_t o, int64_t in,
                                           int64_t inner, int64_t k, int64_t cand_len, Key<T>* cand_vals,
                                           int32_t* cand_idx, T* out_vals, int64_t* out_idx) {
  if (out_vals != nullptr) {
    const int64_t p = (o * k + t) * inner + in;
    out_vals[p] = from_key<T>(v);
    out_idx[p] = i;
  } else {
    const int64_t p = row * cand_len + blockIdx.y * k + t;
    cand_vals[p] = v;
    cand_idx[p] = i;
  }
}

// Block (row, chunk): bitonic-sorts the chunk's n <= P pairs in shared memory and stores its first min(k, n).
template <class T, bool kRaw>
__global__ void topk_sort_kernel(const void* __restrict__ src_vals, const int32_t* __restrict__ src_idx,
                                 Key<T>* __restrict__ cand_vals, int32_t* __restrict__ cand_idx,
                                 T* __restrict__ out_vals, int64_t* __restrict__ out_idx, int64_t inner, int64_t L,
                                 int64_t chunk, int64_t k, int P, bool largest, int64_t cand_len) {
  using K = Key<T>;
  extern __shared__ __align__(16) unsigned char topk_smem[];
  K* sv = reinterpret_cast<K*>(topk_smem);
  int32_t* si = reinterpret_cast<int32_t*>(sv + P);
  const int64_t row = blockIdx.x;
  const int64_t o = row / inner, in = row - o * inner;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t n = min64(chunk, L - j0);
  for (int t = threadIdx.x; t < P; t += blockDim.x) {
    if (t < n) {
      topk_load<T, kRaw>(src_vals, src_idx, row, o, in, inner, L, j0 + t, &sv[t], &si[t]);
    } else {
      sv[t] = K(0);
      si[t] = INT32_MAX;
    }
  }
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < P / 2; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));
        const int j = i + stride;
        const K vi = sv[i], vj = sv[j];
        const int32_t ii = si[i], ij = si[j];
        const bool swap = (i & size) == 0 ? topk_before(vj, ij, vi, ii, largest) : topk_before(vi, ii, vj, ij, largest);
        if (swap) {
          sv[i] = vj;
          sv[j] = vi;
          si[i] = ij;
          si[j] = ii;
        }
      }
      __syncthreads();
    }
  }
  for (int64_t t = threadIdx.x; t < min64(k, n); t += blockDim.x)
    topk_store<T>(sv[t], si[t], t, row, o, in, inner, k, cand_len, cand_vals, cand_idx, out_vals, out_idx);
}

// The compare-exchange of a lane with lane ^ stride: keep_first keeps the pair that comes first.
template <class K>
__device__ __forceinline__ void topk_cas_lane(K& v, int32_t& i, int stride, bool keep_first, bool largest) {
  const K ov = shfl_xor(v, stride);
  const int32_t oi = shfl_xor(i, stride);
  if (keep_first ? topk_before(ov, oi, v, i, largest) : topk_before(v, i, ov, oi, largest)) {
    v = ov;
    i = oi;
  }
}

// A warp's best pairs so far, in order: position m * 32 + lane is register m of the lane.
template <class K, int M>
struct WarpTop {
  K v[M];
  int32_t i[M];
  K tv;  // the k-th best (padding until there are k)
  int32_t ti;

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      v[m] = K(0);
      i[m] = INT32_MAX;
    }
    tv = K(0);
    ti = INT32_MAX;
  }

  // Merges one pair per lane; a batch where no pair beats the k-th best costs one vote.
  __device__ __forceinline__ void add(K bv, int32_t bi, int lane, int64_t k, bool largest) {
    if (!__any_sync(0xffffffffu, topk_before(bv, bi, tv, ti, largest))) return;
#pragma unroll
    for (int size = 2; size <= 32; size <<= 1) {  // bitonic sort of the batch, first pair at lane 0
#pragma unroll
      for (int stride = size >> 1; stride > 0; stride >>= 1)
        topk_cas_lane(bv, bi, stride, ((lane & stride) == 0) == ((lane & size) == 0), largest);
    }
    // The list followed by the reversed batch is bitonic after each position keeps the better of the two:
    // only the last 32 positions can change. Then a bitonic merge puts it in order.
    const K rv = shfl_idx(bv, 31 - lane);
    const int32_t ri = shfl_idx(bi, 31 - lane);
    if (topk_before(rv, ri, v[M - 1], i[M - 1], largest)) {
      v[M - 1] = rv;
      i[M - 1] = ri;
    }
#pragma unroll
    for (int s = M / 2; s > 0; s >>= 1) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if ((m & s) == 0 && m + s < M && topk_before(v[m + s], i[m + s], v[m], i[m], largest)) {
          const K tv2 = v[m];
          const int32_t ti2 = i[m];
          v[m] = v[m + s];
          i[m] = i[m + s];
          v[m + s] = tv2;
          i[m + s] = ti2;
        }
      }
    }
#pragma unroll
    for (int stride = 16; stride > 0; stride >>= 1) {
#pragma unroll
      for (int m = 0; m < M; ++m) topk_cas_lane(v[m], i[m], stride, (lane & stride) == 0, largest);
    }
    const int mk = static_cast<int>((k - 1) >> 5);
    K t = v[0];
    int32_t u = i[0];
#pragma unroll
    for (int m = 1; m < M; ++m) {
      if (m == mk) {
        t = v[m];
        u = i[m];
      }
    }
    tv = shfl_idx(t, static_cast<int>((k - 1) & 31));
    ti = shfl_idx(u, static_cast<int>((k - 1) & 31));
  }
};

// Block (row, chunk), for k <= 32 * M: each warp selects over an interleaved share of the chunk, then warp
// 0 selects over the warps' lists and stores the first min(k, n) pairs.
template <class T, bool kRaw, int M>
__global__ void __launch_bounds__(kThreads)
topk_select_kernel(const void* __restrict__ src_vals, const int32_t* __restrict__ src_idx,
                   Key<T>* __restrict__ cand_vals, int32_t* __restrict__ cand_idx, T* __restrict__ out_vals,
                   int64_t* __restrict__ out_idx, int64_t inner, int64_t L, int64_t chunk, int64_t k, bool largest,
                   int64_t cand_len) {
  using K = Key<T>;
  constexpr int kWarps = kThreads / 32, kList = 32 * M, kUnroll = 4;
  __shared__ K sv[kWarps * kList];
  __shared__ int32_t si[kWarps * kList];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x;
  const int64_t o = row / inner, in = row - o * inner;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t n = min64(chunk, L - j0);
  WarpTop<K, M> top;
  top.init();
  for (int64_t t = warp * 32; t < n; t += kThreads * kUnroll) {  // warp-uniform
    K v[kUnroll];
    int32_t id[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = t + u * kThreads + lane;
      v[u] = K(0);
      id[u] = INT32_MAX;
      if (j < n) topk_load<T, kRaw>(src_vals, src_idx, row, o, in, inner, L, j0 + j, &v[u], &id[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) top.add(v[u], id[u], lane, k, largest);
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    sv[warp * kList + m * 32 + lane] = top.v[m];
    si[warp * kList + m * 32 + lane] = top.i[m];
  }
  __syncthreads();
  if (warp != 0) return;
  WarpTop<K, M> all;
  all.init();
  for (int t = 0; t < kWarps * kList; t += 32) all.add(sv[t + lane], si[t + lane], lane, k, largest);
  const int64_t kk = min64(k, n);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int64_t t = m * 32 + lane;
    if (t < kk) topk_store<T>(all.v[m], all.i[m], t, row, o, in, inner, k, cand_len, cand_vals, cand_idx, out_vals,
                              out_idx);
  }
}

struct TopkRound {
  int64_t L = 0, chunk = 1, nchunks = 1, cand_len = 0;
  int P = 1;  // bitonic: the sort's size
  int src = 0, dst = 0;  // 0: input / outputs; 1, 2: workspace buffers
};

class TopKLayer final : public Layer {
 public:
  TopKLayer(DType dtype, int64_t outer, int64_t D, int64_t inner, int64_t k, bool largest)
      : dtype_(dtype), rows_(outer * inner), inner_(inner), k_(k), largest_(largest) {
    select_ = k <= kSelectMaxK;
    const size_t pair_bytes = (is_float_dtype(dtype) ? 4 : 8) + 4;
    const int64_t blocks_per_row = ceil_div(static_cast<int64_t>(sm_count()) * 4, std::max<int64_t>(rows_, 1));
    int64_t L = D, max_cand = 0;
    int src = 0;
    while (true) {
      TopkRound r;
      r.L = L;
      r.src = src;
      if (select_) {  // chunks of at least 1024 (8 * k), more of them when there are few rows
        r.chunk = std::min(std::max<int64_t>(1024, ceil_div(L, blocks_per_row)), std::max<int64_t>(L, 1));
        r.chunk = std::max(r.chunk, ceil_div(L, 65535));
      } else {
        r.chunk = std::min(std::max<int64_t>(L, 1), kSortMax);
        r.P = static_cast<int>(pow2_ceil(r.chunk));
      }
      r.nchunks = ceil_div(std::max<int64_t>(L, 1), r.chunk);
      if (r.nchunks == 1) {
        rounds_.push_back(r);
        break;
      }
      r.cand_len = (r.nchunks - 1) * k + std::min(k, L - (r.nchunks - 1) * r.chunk);
      r.dst = src == 1 ? 2 : 1;
      max_cand = std::max(max_cand, r.cand_len);
      rounds_.push_back(r);
      L = r.cand_len;
      src = r.dst;
    }
    buf_bytes_ = (static_cast<size_t>(rows_ * max_cand) * pair_bytes + 255) / 256 * 256;
  }
  size_t workspace_bytes() const override { return rounds_.size() > 1 ? 2 * buf_bytes_ : 0; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (k_ == 0 || rows_ == 0) return OkStatus();
    dispatch_numeric(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using K = Key<T>;
      char* ws = static_cast<char*>(workspace);
      // A buffer holds rows * len values, then as many indices.
      auto vals_of = [&](int b) { return reinterpret_cast<K*>(ws + (b - 1) * buf_bytes_); };
      auto idx_of = [&](int b, int64_t len) {
        return reinterpret_cast<int32_t*>(ws + (b - 1) * buf_bytes_ + static_cast<size_t>(rows_ * len) * sizeof(K));
      };
      for (const TopkRound& r : rounds_) {
        const bool last = r.dst == 0;
        const dim3 grid(static_cast<unsigned>(rows_), static_cast<unsigned>(r.nchunks));
        const void* sv = r.src == 0 ? inputs[0].data : vals_of(r.src);
        const int32_t* si = r.src == 0 ? nullptr : idx_of(r.src, r.L);
        K* cv = last ? nullptr : vals_of(r.dst);
        int32_t* ci = last ? nullptr : idx_of(r.dst, r.cand_len);
        T* ov = last ? static_cast<T*>(outputs[0].data) : nullptr;
        int64_t* oi = last ? static_cast<int64_t*>(outputs[1].data) : nullptr;
        if (select_) {
          auto launch = [&](auto m_tag) {
            constexpr int M = decltype(m_tag)::value;
            if (r.src == 0)
              topk_select_kernel<T, true, M><<<grid, kThreads, 0, h.stream>>>(sv, si, cv, ci, ov, oi, inner_, r.L,
                                                                              r.chunk, k_, largest_, r.cand_len);
            else
              topk_select_kernel<T, false, M><<<grid, kThreads, 0, h.stream>>>(sv, si, cv, ci, ov, oi, inner_, r.L,
                                                                               r.chunk, k_, largest_, r.cand_len);
          };
          if (k_ <= 32) launch(std::integral_constant<int, 1>{});
          else if (k_ <= 64) launch(std::integral_constant<int, 2>{});
          else launch(std::integral_constant<int, 4>{});
        } else {
          const int threads = static_cast<int>(std::clamp<int64_t>(r.P / 2, 32, 1024));
          const size_t smem = static_cast<size_t>(r.P) * (sizeof(K) + 4);
          if (r.src == 0)
            topk_sort_kernel<T, true><<<grid, threads, smem, h.stream>>>(sv, si, cv, ci, ov, oi, inner_, r.L, r.chunk,
                                                                         k_, r.P, largest_, r.cand_len);
          else
            topk_sort_kernel<T, false><<<grid, threads, smem, h.stream>>>(sv, si, cv, ci, ov, oi, inner_, r.L, r.chunk,
                                                                          k_, r.P, largest_, r.cand_len);
        }
      }
    });
    return launch_status("TopK");
  }

 private:
  DType dtype_;
  int64_t rows_, inner_, k_;
  bool largest_, select_ = true;
  std::vector<TopkRound> rounds_;
  size_t buf_bytes_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Checks and creation

std::string check_cumsum(const LayerSpec& spec) {
  if (spec.inputs.size() < 2 || !spec.inputs[0].present() || !spec.inputs[1].present())
    return prefix(spec) + "needs inputs 'x' and 'axis'";
  const TensorDesc& x = spec.inputs[0];
  if (!is_numeric_dtype(x.dtype)) return prefix(spec) + "dtype " + dtype_name(x.dtype) + " is not implemented";
  std::vector<int64_t> axis;
  if (!spec.constant_ints(1, &axis)) return prefix(spec) + "axis must be a constant int32/int64 input";
  if (axis.size() != 1) return prefix(spec) + "axis must hold one integer";
  if (!x.has_rank) return "";
  if (x.shape.empty()) return prefix(spec) + "a rank-0 input has no axis";
  int64_t a = 0;
  return normalize_axis(spec, axis[0], static_cast<int64_t>(x.shape.size()), &a);
}

Result<std::unique_ptr<Layer>> create_cumsum(const LayerSpec& spec) {
  if (std::string why = check_cumsum(spec); !why.empty()) return Unsupported(why);
  KILN_RETURN_IF_ERROR(check_same_dtype_output(spec));
  const TensorDesc& x = spec.inputs[0];
  std::vector<int64_t> axis;
  (void)spec.constant_ints(1, &axis);
  int64_t a = 0, outer, dim, inner;
  (void)normalize_axis(spec, axis[0], static_cast<int64_t>(x.shape.size()), &a);
  split_at(x.shape, a, &outer, &dim, &inner);
  return std::unique_ptr<Layer>(std::make_unique<CumSumLayer>(x.dtype, outer, dim, inner,
                                                              spec.attr_int("exclusive", 0) != 0,
                                                              spec.attr_int("reverse", 0) != 0));
}

// TopK's k: the constant input K (opset 10 on), or the attribute k (opset 1).
std::string topk_k(const LayerSpec& spec, int64_t* k) {
  if (spec.inputs.size() > 1 && spec.inputs[1].present()) {
    std::vector<int64_t> v;
    if (!spec.constant_ints(1, &v)) return prefix(spec) + "K must be a constant int32/int64 input";
    if (v.size() != 1) return prefix(spec) + "K must hold one integer";
    *k = v[0];
  } else {
    *k = spec.attr_int("k", -1);
  }
  if (*k < 0) return prefix(spec) + "k must be given and >= 0";
  return "";
}

std::string check_topk(const LayerSpec& spec) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return prefix(spec) + "missing input 'X'";
  const TensorDesc& x = spec.inputs[0];
  if (!is_numeric_dtype(x.dtype)) return prefix(spec) + "dtype " + dtype_name(x.dtype) + " is not implemented";
  int64_t k = 0;
  if (std::string why = topk_k(spec, &k); !why.empty()) return why;
  if (!x.has_rank) return "";
  if (x.shape.empty()) return prefix(spec) + "a rank-0 input has no axis";
  int64_t axis = 0;
  if (std::string why = normalize_axis(spec, spec.attr_int("axis", -1), static_cast<int64_t>(x.shape.size()), &axis);
      !why.empty())
    return why;
  const int64_t dim = x.shape[axis];
  if (dim < 0) return "";
  if (k > dim) return prefix(spec) + "k " + std::to_string(k) + " is larger than the axis (" + std::to_string(dim) + ")";
  if (dim > kSortMax && k > kTopkChunkedMaxK)
    return prefix(spec) + "k " + std::to_string(k) + " > " + std::to_string(kTopkChunkedMaxK) +
           " on an axis longer than " + std::to_string(kSortMax) + " (" + std::to_string(dim) + ") is not implemented";
  if (dim >= INT32_MAX) return prefix(spec) + "an axis of 2^31 elements or more is not implemented";
  return "";
}

Result<std::unique_ptr<Layer>> create_topk(const LayerSpec& spec) {
  if (std::string why = check_topk(spec); !why.empty()) return Unsupported(why);
  KILN_RETURN_IF_ERROR(check_same_dtype_output(spec));
  if (spec.outputs.size() < 2 || spec.outputs[1].dtype != DType::kInt64)
    return InvalidArgument(prefix(spec) + "output 1 (Indices) must be int64");
  const TensorDesc& x = spec.inputs[0];
  int64_t k = 0, axis = 0, outer, dim, inner;
  (void)topk_k(spec, &k);
  (void)normalize_axis(spec, spec.attr_int("axis", -1), static_cast<int64_t>(x.shape.size()), &axis);
  split_at(x.shape, axis, &outer, &dim, &inner);
  if (outer * inner > INT32_MAX || (k > kSelectMaxK && ceil_div(dim, kSortMax) > 65535))
    return Unsupported(prefix(spec) + "input " + shape_to_string(x.shape) + " is too large for the sort kernels");
  return std::unique_ptr<Layer>(
      std::make_unique<TopKLayer>(x.dtype, outer, dim, inner, k, spec.attr_int("largest", 1) != 0));
}

}  // namespace

void register_sort_scan_layers(LayerTable& table) {
  {
    LayerKind k;
    k.op_type = "CumSum";
    k.check = check_cumsum;
    k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.reduce.scan"}; };
    k.create = [](const LayerSpec& spec, const std::string& tactic,
                  const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      KILN_RETURN_IF_ERROR(check_tactic(spec, tactic, "cuda.reduce.scan"));
      return create_cumsum(spec);
    };
    table.add(std::move(k));
  }
  {
    LayerKind k;
    k.op_type = "TopK";
    k.check = check_topk;
    k.tactics = [](const LayerSpec& spec) {
      int64_t kv = 0;
      const bool select = topk_k(spec, &kv).empty() && kv <= kSelectMaxK;
      return std::vector<std::string>{select ? "cuda.reduce.topk_select" : "cuda.reduce.topk_bitonic"};
    };
    k.create = [](const LayerSpec& spec, const std::string& tactic,
                  const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      if (tactic != "cuda.reduce.topk_select" && tactic != "cuda.reduce.topk_bitonic" && tactic != "default")
        return InvalidArgument(prefix(spec) + "unknown tactic '" + tactic + "'");
      return create_topk(spec);
    };
    table.add(std::move(k));
  }
}

}  // namespace kiln::cuda
