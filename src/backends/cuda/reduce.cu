// CUDA layers: the Reduce ops (Sum, Mean, Max, Min, Prod, L1, L2, LogSum, LogSumExp, SumSquare), ArgMax,
// ArgMin, CumSum and TopK. Semantics follow the CPU reference (backends/cpu/ops/reduce.cc, sort_scan.cc).
//
// Reductions. The input shape is collapsed at create time: size-1 dims are dropped and neighbouring dims
// that are both reduced or both kept are merged, so the common cases become one pass over (outer, R, inner).
// Reduced axes that are not contiguous (axes {0, 2} of a rank-3 input) take one pass per reduced group, the
// largest first, through workspace buffers that hold partial accumulators: no transpose, and each later
// pass reads a fraction of the data. A pass with few outputs and a long R splits R over several blocks,
// which write partials, and a second pass combines them (no atomics, so results do not depend on timing).
// inner == 1 reduces rows (a sub-warp, warp or block per row, 16-byte loads where aligned); inner > 1
// reduces columns (threads across the contiguous inner dim, a shared-memory tree across R).
// ArgMax/ArgMin are the same machinery with a (value, index) accumulator.
//
// CumSum: along the last (contiguous) axis a warp scans a row in coalesced tiles with shuffles; long rows
// with few of them are cut into chunks whose sums are scanned first, so that many warps work at once.
// Along another axis each thread scans one column, sequentially, reading coalesced across the inner dim.
//
// TopK: a bitonic sort of (value, index) pairs in shared memory, ties ordered by index as the reference's
// stable sort does. Rows longer than 4096 are cut into chunks of 4096 whose top k (k <= 1024) are kept and
// sorted again, until one chunk is left.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSortMax = 4096;     // longest row (or chunk) sorted in shared memory
constexpr int64_t kTopkChunkedMaxK = 1024;  // largest k when rows are cut into chunks

template <class T>
struct Tag {
  using type = T;
};

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

template <class T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int sm_count() {
  static int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      n = 132;
    return n > 0 ? n : 132;
  }();
  return count;
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}
int log2_of(int64_t p) {
  int l = 0;
  while ((int64_t{1} << l) < p) ++l;
  return l;
}

template <class F>
bool dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(Tag<float>{}); return true;
    case DType::kFloat16: f(Tag<__half>{}); return true;
    case DType::kBFloat16: f(Tag<__nv_bfloat16>{}); return true;
    default: return false;
  }
}
template <class F>
bool dispatch_numeric(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kInt32: f(Tag<int32_t>{}); return true;
    case DType::kInt64: f(Tag<int64_t>{}); return true;
    default: return dispatch_float(dtype, f);
  }
}

bool is_float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }
bool is_numeric_dtype(DType t) { return is_float_dtype(t) || t == DType::kInt32 || t == DType::kInt64; }

// ---------------------------------------------------------------------------------------------------------
// Reduction ops: an accumulator with an identity, the fold of one element (`load`, given its index along
// the reduced axis), an associative and commutative `comb`, and `finish` (given the number of elements).

enum class RK { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kLogSum, kLogSumExp, kSumSquare };

__device__ __forceinline__ float lse_shift(float m) { return isinf(m) ? 0.0f : m; }

template <RK K, class T>
struct ReduceOp {
  using Elem = T;
  using Out = T;
  // Integers (Sum, Max, Min, Prod only) accumulate in 64 bits, wrapping like the reference's int64 then
  // narrowing; LogSumExp keeps (max, sum of exp(v - shift(max))), merged like an online softmax.
  using Acc = std::conditional_t<K == RK::kLogSumExp, float2, std::conditional_t<kIsInt<T>, int64_t, float>>;

  static __device__ __forceinline__ Acc init() {
    if constexpr (K == RK::kLogSumExp) return make_float2(-INFINITY, 0.0f);
    else if constexpr (kIsInt<T>) {
      if constexpr (K == RK::kMax) return std::is_same_v<T, int32_t> ? int64_t{INT32_MIN} : int64_t{INT64_MIN};
      else if constexpr (K == RK::kMin) return std::is_same_v<T, int32_t> ? int64_t{INT32_MAX} : int64_t{INT64_MAX};
      else if constexpr (K == RK::kProd) return 1;
      else return 0;
    } else {
      if constexpr (K == RK::kMax) return -INFINITY;
      else if constexpr (K == RK::kMin) return INFINITY;
      else if constexpr (K == RK::kProd) return 1.0f;
      else return 0.0f;
    }
  }
  static __device__ __forceinline__ Acc load(T x, int64_t) {
    if constexpr (kIsInt<T>) return static_cast<int64_t>(x);
    else {
      const float v = to_f(x);
      if constexpr (K == RK::kL1) return fabsf(v);
      else if constexpr (K == RK::kL2 || K == RK::kSumSquare) return v * v;
      else if constexpr (K == RK::kLogSumExp) return make_float2(v, expf(v - lse_shift(v)));
      else return v;
    }
  }
  static __device__ __forceinline__ Acc comb(Acc a, Acc b) {
    if constexpr (K == RK::kLogSumExp) {
      const float m = fmaxf(a.x, b.x);  // ignores NaN, as the reference's max does; NaN still reaches the sum
      const float sm = lse_shift(m);
      float s = 0.0f;
      // Skipping empty sides keeps 0 * inf (an exp that overflows) from making NaN.
      if (a.y != 0.0f) s += a.y * expf(lse_shift(a.x) - sm);
      if (b.y != 0.0f) s += b.y * expf(lse_shift(b.x) - sm);
      return make_float2(m, s);
    } else if constexpr (kIsInt<T>) {
      if constexpr (K == RK::kMax) return a > b ? a : b;
      else if constexpr (K == RK::kMin) return a < b ? a : b;
      else if constexpr (K == RK::kProd)
        return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
      else return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
    } else {
      // Max and Min propagate NaN, as the reference does.
      if constexpr (K == RK::kMax) return a != a ? a : (b != b ? b : fmaxf(a, b));
      else if constexpr (K == RK::kMin) return a != a ? a : (b != b ? b : fminf(a, b));
      else if constexpr (K == RK::kProd) return a * b;
      else return a + b;
    }
  }
  static __device__ __forceinline__ T finish(Acc a, int64_t count) {
    if constexpr (kIsInt<T>) return static_cast<T>(a);
    else if constexpr (K == RK::kMean) return from_f<T>(a / static_cast<float>(count));  // 0 / 0: NaN
    else if constexpr (K == RK::kL2) return from_f<T>(sqrtf(a));
    else if constexpr (K == RK::kLogSum) return from_f<T>(logf(a));
    else if constexpr (K == RK::kLogSumExp) return from_f<T>(logf(a.y) + lse_shift(a.x));
    else return from_f<T>(a);
  }
};

template <class V>
struct ArgAcc {
  V v;
  int64_t i;  // -1: no element yet
};

// ArgMax (kMax) / ArgMin: the extreme value, ties to the first index (the last with kLast).
template <class T, bool kMax, bool kLast>
struct ArgOp {
  using Elem = T;
  using Out = int64_t;
  using Acc = ArgAcc<Key<T>>;
  static __device__ __forceinline__ Acc init() { return Acc{Key<T>(0), -1}; }
  static __device__ __forceinline__ Acc load(T x, int64_t r) { return Acc{to_key(x), r}; }
  static __device__ __forceinline__ Acc comb(Acc a, Acc b) {
    if (a.i < 0) return b;
    if (b.i < 0) return a;
    const int c = cmp3(a.v, b.v) * (kMax ? 1 : -1);
    if (c != 0) return c > 0 ? a : b;
    return (kLast ? a.i > b.i : a.i < b.i) ? a : b;
  }
  static __device__ __forceinline__ int64_t finish(Acc a, int64_t) { return a.i; }
};

__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ int64_t shfl_xor(int64_t v, int m) {
  return static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(v), m));
}
__device__ __forceinline__ float2 shfl_xor(float2 v, int m) {
  return make_float2(shfl_xor(v.x, m), shfl_xor(v.y, m));
}
template <class V>
__device__ __forceinline__ ArgAcc<V> shfl_xor(ArgAcc<V> a, int m) {
  return ArgAcc<V>{shfl_xor(a.v, m), shfl_xor(a.i, m)};
}

// Reduces rows of length R (inner == 1). Each group of tpr = 2^tpr_log2 threads takes one row; blockIdx.y
// picks a chunk of R when the pass is split, and the partial then goes to y[row * gridDim.y + split].
// kRaw: x holds elements; otherwise accumulators from an earlier pass.
template <class Op, bool kRaw>
__global__ void __launch_bounds__(kThreads)
reduce_rows_kernel(const void* __restrict__ xv, void* __restrict__ yv, int64_t rows, int64_t R, int64_t chunk,
                   int tpr_log2, bool final_out, int64_t count, bool vec) {
  using A = typename Op::Acc;
  using T = typename Op::Elem;
  __shared__ A warp_acc[kThreads / 32];
  const int tpr = 1 << tpr_log2;
  const int lane = threadIdx.x & (tpr - 1);
  const int slot = threadIdx.x >> tpr_log2;
  const int slots = blockDim.x >> tpr_log2;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t r1 = min64(R, r0 + chunk);
  // The loop bound is uniform across the block, so every lane reaches the shuffles and barriers.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * slots; base < rows;
       base += static_cast<int64_t>(gridDim.x) * slots) {
    const int64_t row = base + slot;
    A acc = Op::init();
    if (row < rows) {
      if constexpr (kRaw) {
        const T* p = static_cast<const T*>(xv) + row * R;
        if (vec) {
          constexpr int V = Pack<T>::kN;
          const Pack<T>* pp = reinterpret_cast<const Pack<T>*>(p);
#pragma unroll 4
          for (int64_t i = r0 / V + lane; i < r1 / V; i += tpr) {
            const Pack<T> v = pp[i];
#pragma unroll
            for (int k = 0; k < V; ++k) acc = Op::comb(acc, Op::load(v.v[k], i * V + k));
          }
        } else {
#pragma unroll 4
          for (int64_t i = r0 + lane; i < r1; i += tpr) acc = Op::comb(acc, Op::load(p[i], i));
        }
      } else {
        const A* p = static_cast<const A*>(xv) + row * R;
        for (int64_t i = r0 + lane; i < r1; i += tpr) acc = Op::comb(acc, p[i]);
      }
    }
    for (int m = min(tpr, 32) >> 1; m > 0; m >>= 1) acc = Op::comb(acc, shfl_xor(acc, m));
    if (tpr > 32) {  // one row per block
      const int warp = threadIdx.x >> 5;
      if ((threadIdx.x & 31) == 0) warp_acc[warp] = acc;
      __syncthreads();
      if (warp == 0) {
        acc = threadIdx.x < (tpr >> 5) ? warp_acc[threadIdx.x] : Op::init();
        for (int m = 16; m > 0; m >>= 1) acc = Op::comb(acc, shfl_xor(acc, m));
      }
      __syncthreads();
    }
    if (lane == 0 && row < rows) {
      if (final_out) static_cast<typename Op::Out*>(yv)[row] = Op::finish(acc, count);
      else static_cast<A*>(yv)[row * gridDim.y + blockIdx.y] = acc;
    }
  }
}

// Reduces (outer, R, inner) over R with inner > 1. threadIdx.x walks blockDim.x consecutive outputs of the
// flattened (outer, inner) space, so reads are contiguous across a warp; threadIdx.y strides R and the
// block folds its rows in shared memory. Partials of a split pass go to y[(o * gridDim.y + split) * inner + i].
template <class Op, bool kRaw>
__global__ void __launch_bounds__(kThreads)
reduce_cols_kernel(const void* __restrict__ xv, void* __restrict__ yv, int64_t outer, int64_t R, int64_t inner,
                   int64_t chunk, bool final_out, int64_t count) {
  using A = typename Op::Acc;
  using T = typename Op::Elem;
  __shared__ A part[kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t r1 = min64(R, r0 + chunk);
  const int64_t outputs = outer * inner;
  for (int64_t tile = blockIdx.x; tile * bx < outputs; tile += gridDim.x) {
    const int64_t q = tile * bx + tx;
    const int64_t o = q / inner, i = q - o * inner;
    A acc = Op::init();
    if (q < outputs) {
      if constexpr (kRaw) {
        const T* p = static_cast<const T*>(xv) + o * R * inner + i;
#pragma unroll 4
        for (int64_t r = r0 + ty; r < r1; r += by) acc = Op::comb(acc, Op::load(p[r * inner], r));
      } else {
        const A* p = static_cast<const A*>(xv) + o * R * inner + i;
        for (int64_t r = r0 + ty; r < r1; r += by) acc = Op::comb(acc, p[r * inner]);
      }
    }
    if (by > 1) {
      part[ty * bx + tx] = acc;
      __syncthreads();
      for (int h = by >> 1; h > 0; h >>= 1) {
        if (ty < h) part[ty * bx + tx] = Op::comb(part[ty * bx + tx], part[(ty + h) * bx + tx]);
        __syncthreads();
      }
      acc = part[tx];
    }
    if (ty == 0 && q < outputs) {
      if (final_out) static_cast<typename Op::Out*>(yv)[q] = Op::finish(acc, count);
      else static_cast<A*>(yv)[(o * gridDim.y + blockIdx.y) * inner + i] = acc;
    }
    if (by > 1) __syncthreads();  // part[] is rewritten by the next tile
  }
}

// One kernel launch of a reduction plan.
struct Pass {
  int src = 0;  // 0: the layer's input; 1, 2: workspace buffers
  int dst = 0;  // 0: the layer's output; 1, 2: workspace buffers
  bool raw = true;  // src holds elements (else accumulators)
  bool final_out = true;  // dst gets finished values (else accumulators)
  int64_t outer = 1, R = 1, inner = 1;
  int64_t chunk = 1;  // R per split
  int splits = 1;
  bool rows = true;  // inner == 1: reduce_rows_kernel
  int tpr_log2 = 0;  // rows: threads per row
  int bx = kThreads, by = 1;  // cols: block shape
  unsigned grid = 1;
};

struct Plan {
  std::vector<Pass> passes;
  size_t ws_offset[3] = {0, 0, 0};
  size_t ws_bytes = 0;
  int64_t count = 1;  // elements folded into each output (for Mean)
};

Pass make_pass(int64_t outer, int64_t R, int64_t inner, bool allow_split) {
  Pass p;
  p.outer = outer;
  p.R = R;
  p.inner = inner;
  p.chunk = std::max<int64_t>(R, 1);
  p.rows = inner == 1;
  int64_t natural = 1, min_chunk = 1;
  const int64_t sms = sm_count();
  if (p.rows) {
    const int64_t tpr = R <= 32 ? pow2_ceil(std::max<int64_t>(R, 1)) : (R <= 2048 ? 32 : kThreads);
    p.tpr_log2 = log2_of(tpr);
    natural = ceil_div(outer, kThreads / tpr);
    min_chunk = tpr * 16;
  } else {
    const int64_t outputs = outer * inner;
    if (outputs >= sms * 1024 || R <= 1) {
      p.bx = kThreads;
      p.by = 1;
    } else {
      p.by = static_cast<int>(std::min<int64_t>(8, pow2_ceil(R)));
      p.bx = kThreads / p.by;
    }
    natural = ceil_div(outputs, p.bx);
    min_chunk = p.by * 16;
  }
  const int64_t target = sms * 8;
  if (allow_split && natural < target && R >= 2 * min_chunk) {
    int64_t s = std::min({ceil_div(target, natural), R / min_chunk, int64_t{1024}});
    p.chunk = (ceil_div(R, s) + 7) / 8 * 8;  // a multiple of every vector width
    p.splits = static_cast<int>(ceil_div(R, p.chunk));
  }
  p.grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(natural, sms * 32)));
  return p;
}

// The passes reducing `shape` over the dims flagged in `reduced`, with accumulators of acc_bytes.
Plan build_plan(const Shape& shape, const std::vector<bool>& reduced, size_t acc_bytes) {
  Plan plan;
  int64_t out_numel = 1, count = 1;
  for (size_t d = 0; d < shape.size(); ++d) (reduced[d] ? count : out_numel) *= shape[d];
  plan.count = count;
  if (out_numel == 0) return plan;
  if (count == 0) {  // empty reductions: every output is finish(identity)
    plan.passes.push_back(make_pass(out_numel, 0, 1, false));
    return plan;
  }
  std::vector<int64_t> dims;
  std::vector<bool> red;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!dims.empty() && red.back() == reduced[d]) {
      dims.back() *= shape[d];
    } else {
      dims.push_back(shape[d]);
      red.push_back(reduced[d]);
    }
  }
  if (std::find(red.begin(), red.end(), true) == red.end()) {  // nothing to fold: finish(load(x)) per element
    plan.passes.push_back(make_pass(out_numel, 1, 1, false));
    return plan;
  }
  size_t need[3] = {0, 0, 0};
  int src = 0;
  auto other = [](int b) { return b == 1 ? 2 : 1; };
  while (true) {
    size_t g = 0;
    int left = 0;
    for (size_t k = 0; k < dims.size(); ++k) {
      if (!red[k]) continue;
      ++left;
      if (!red[g] || dims[k] >= dims[g]) g = k;
    }
    int64_t outer = 1, inner = 1;
    for (size_t k = 0; k < g; ++k) outer *= dims[k];
    for (size_t k = g + 1; k < dims.size(); ++k) inner *= dims[k];
    const bool last = left == 1;
    Pass p = make_pass(outer, dims[g], inner, true);
    p.src = src;
    p.raw = src == 0;
    if (p.splits > 1) {
      const int mid = src == 0 ? 1 : other(src);
      p.dst = mid;
      p.final_out = false;
      need[mid] = std::max(need[mid], static_cast<size_t>(outer * p.splits * inner) * acc_bytes);
      plan.passes.push_back(p);
      Pass q = make_pass(outer, p.splits, inner, false);
      q.src = mid;
      q.raw = false;
      q.dst = last ? 0 : other(mid);
      q.final_out = last;
      plan.passes.push_back(q);
    } else {
      p.dst = last ? 0 : (src == 0 ? 1 : other(src));
      p.final_out = last;
      plan.passes.push_back(p);
    }
    const int dst = plan.passes.back().dst;
    if (last) break;
    need[dst] = std::max(need[dst], static_cast<size_t>(outer * inner) * acc_bytes);
    src = dst;
    dims.erase(dims.begin() + g);
    red.erase(red.begin() + g);
    if (g > 0 && g < dims.size() && !red[g - 1] && !red[g]) {
      dims[g - 1] *= dims[g];
      dims.erase(dims.begin() + g);
      red.erase(red.begin() + g);
    }
  }
  plan.ws_offset[1] = 0;
  plan.ws_offset[2] = (need[1] + 255) / 256 * 256;
  plan.ws_bytes = plan.ws_offset[2] + need[2];
  return plan;
}

template <class Op>
class ReduceLayer final : public Layer {
 public:
  ReduceLayer(Plan plan, const char* name) : plan_(std::move(plan)), name_(name) {}
  size_t workspace_bytes() const override { return plan_.ws_bytes; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    using T = typename Op::Elem;
    char* ws = static_cast<char*>(workspace);
    for (const Pass& p : plan_.passes) {
      const void* src = p.src == 0 ? inputs[0].data : ws + plan_.ws_offset[p.src];
      void* dst = p.dst == 0 ? outputs[0].data : ws + plan_.ws_offset[p.dst];
      if (p.rows) {
        constexpr int V = Pack<T>::kN;
        const bool vec = p.raw && p.tpr_log2 >= 5 && aligned16(src) && p.R % V == 0 && p.chunk % V == 0;
        const dim3 grid(p.grid, p.splits);
        if (p.raw)
          reduce_rows_kernel<Op, true><<<grid, kThreads, 0, h.stream>>>(src, dst, p.outer, p.R, p.chunk, p.tpr_log2,
                                                                       p.final_out, plan_.count, vec);
        else
          reduce_rows_kernel<Op, false><<<grid, kThreads, 0, h.stream>>>(src, dst, p.outer, p.R, p.chunk, p.tpr_log2,
                                                                        p.final_out, plan_.count, false);
      } else {
        const dim3 grid(p.grid, p.splits), block(p.bx, p.by);
        if (p.raw)
          reduce_cols_kernel<Op, true><<<grid, block, 0, h.stream>>>(src, dst, p.outer, p.R, p.inner, p.chunk,
                                                                    p.final_out, plan_.count);
        else
          reduce_cols_kernel<Op, false><<<grid, block, 0, h.stream>>>(src, dst, p.outer, p.R, p.inner, p.chunk,
                                                                     p.final_out, plan_.count);
      }
      KILN_RETURN_IF_ERROR(launch_status(name_));
    }
    return OkStatus();
  }

 private:
  Plan plan_;
  const char* name_;
};

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
__device__ __forceinline__ A shfl_idx(A v, int l) {
  if constexpr (std::is_same_v<A, float>) return __shfl_sync(0xffffffffu, v, l);
  else return static_cast<A>(__shfl_sync(0xffffffffu, static_cast<unsigned long long>(v), l));
}

// One thread per (outer, inner) column, sequential along the axis (the reference's order of additions).
template <class T>
__global__ void cumsum_cols_kernel(const T* x, T* y, int64_t outer, int64_t D, int64_t inner, bool exclusive,
                                   bool reverse) {
  using A = ScanAcc<T>;
  const int64_t n = outer * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n; q += stride) {
    const int64_t o = q / inner, i = q - o * inner;
    const int64_t base = o * D * inner + i;
    A acc = 0;
    for (int64_t step = 0; step < D; ++step) {
      const int64_t p = base + (reverse ? D - 1 - step : step) * inner;
      const A v = scan_load(x[p]);
      if (exclusive) y[p] = scan_store<T>(acc);
      acc += v;
      if (!exclusive) y[p] = scan_store<T>(acc);
    }
  }
}

// The sum of each chunk of each row (inner == 1), a warp per (row, chunk): the carries of a chunked scan.
template <class T>
__global__ void cumsum_chunk_sums_kernel(const T* x, ScanAcc<T>* sums, int64_t rows, int64_t D, int64_t chunk,
                                         int64_t nc, bool reverse) {
  using A = ScanAcc<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows * nc; w += warps) {
    const int64_t row = w / nc, c = w - row * nc;
    const int64_t s0 = c * chunk, s1 = min64(D, s0 + chunk);
    A acc = 0;
    for (int64_t s = s0 + lane; s < s1; s += 32) acc += scan_load(x[row * D + (reverse ? D - 1 - s : s)]);
    for (int m = 16; m > 0; m >>= 1) {
      if constexpr (std::is_same_v<A, float>) acc += __shfl_xor_sync(0xffffffffu, acc, m);
      else acc += static_cast<A>(__shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(acc), m));
    }
    if (lane == 0) sums[w] = acc;
  }
}

// Turns each row's chunk sums into exclusive prefix sums (the carry into each chunk), in place.
template <class A>
__global__ void cumsum_carry_kernel(A* sums, int64_t rows, int64_t nc) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    A run = 0;
    for (int64_t c = 0; c < nc; ++c) {
      const A v = sums[r * nc + c];
      sums[r * nc + c] = run;
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
    const int64_t s0 = c * chunk, s1 = min64(D, s0 + chunk);
    A carry = nc > 1 ? carries[w] : A(0);
    const T* px = x + row * D;
    T* py = y + row * D;
    for (int64_t t = s0; t < s1; t += 32 * kItems) {
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
        carry += shfl_idx(incl, 31);
      }
    }
  }
}

class CumSumLayer final : public Layer {
 public:
  CumSumLayer(DType dtype, int64_t outer, int64_t D, int64_t inner, bool exclusive, bool reverse)
      : dtype_(dtype), outer_(outer), D_(D), inner_(inner), exclusive_(exclusive), reverse_(reverse) {
    if (inner_ != 1) return;
    // Few rows and long ones: cut them into chunks so that enough warps run.
    const int64_t target_warps = static_cast<int64_t>(sm_count()) * 64;
    chunk_ = std::max<int64_t>(D_, 1);
    if (D_ > 4096 && outer_ > 0 && outer_ < target_warps) {
      const int64_t nc = std::min(ceil_div(D_, 2048), ceil_div(target_warps, outer_));
      chunk_ = ceil_div(ceil_div(D_, nc), 128) * 128;
      nc_ = ceil_div(D_, chunk_);
    }
  }
  size_t workspace_bytes() const override { return nc_ > 1 ? static_cast<size_t>(outer_ * nc_) * 8 : 0; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (outer_ * D_ * inner_ == 0) return OkStatus();
    dispatch_numeric(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = ScanAcc<T>;
      const T* x = static_cast<const T*>(inputs[0].data);
      T* y = static_cast<T*>(outputs[0].data);
      const unsigned cap = static_cast<unsigned>(sm_count()) * 32;
      if (inner_ != 1) {
        const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(outer_ * inner_, kThreads), cap));
        cumsum_cols_kernel<T><<<grid, kThreads, 0, h.stream>>>(x, y, outer_, D_, inner_, exclusive_, reverse_);
        return;
      }
      A* sums = static_cast<A*>(workspace);
      const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(outer_ * nc_, kThreads / 32), cap));
      if (nc_ > 1) {
        cumsum_chunk_sums_kernel<T><<<grid, kThreads, 0, h.stream>>>(x, sums, outer_, D_, chunk_, nc_, reverse_);
        const unsigned g2 = static_cast<unsigned>(std::min<int64_t>(ceil_div(outer_, kThreads), cap));
        cumsum_carry_kernel<A><<<g2, kThreads, 0, h.stream>>>(sums, outer_, nc_);
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

// Block (row, chunk): loads the chunk's n <= P elements, bitonic-sorts them in shared memory and writes
// its first min(k, n): to the outputs (final round) or as candidates for the next round.
// kRaw: elements come from the input tensor, strided by `inner`; otherwise from an earlier round's candidates.
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
      const int64_t j = j0 + t;
      if constexpr (kRaw) {
        sv[t] = to_key(static_cast<const T*>(src_vals)[(o * L + j) * inner + in]);
        si[t] = static_cast<int32_t>(j);
      } else {
        sv[t] = static_cast<const K*>(src_vals)[row * L + j];
        si[t] = src_idx[row * L + j];
      }
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
  const int64_t kk = min64(k, n);
  for (int64_t t = threadIdx.x; t < kk; t += blockDim.x) {
    if (out_vals != nullptr) {
      const int64_t p = (o * k + t) * inner + in;
      out_vals[p] = from_key<T>(sv[t]);
      out_idx[p] = si[t];
    } else {
      const int64_t p = row * cand_len + blockIdx.y * k + t;
      cand_vals[p] = sv[t];
      cand_idx[p] = si[t];
    }
  }
}

struct TopkRound {
  int64_t L = 0, chunk = 0, nchunks = 1, cand_len = 0;
  int P = 1;
  int src = 0, dst = 0;  // 0: input / outputs; 1, 2: workspace buffers
};

class TopKLayer final : public Layer {
 public:
  TopKLayer(DType dtype, int64_t outer, int64_t D, int64_t inner, int64_t k, bool largest)
      : dtype_(dtype), rows_(outer * inner), inner_(inner), k_(k), largest_(largest) {
    const size_t pair_bytes = (is_float_dtype(dtype) ? 4 : 8) + 4;
    int64_t L = D;
    int src = 0;
    int64_t max_cand = 0;
    while (true) {
      TopkRound r;
      r.L = L;
      r.src = src;
      if (L <= kSortMax) {
        r.chunk = std::max<int64_t>(L, 1);
        r.P = static_cast<int>(pow2_ceil(r.chunk));
        rounds_.push_back(r);
        break;
      }
      r.chunk = kSortMax;
      r.P = static_cast<int>(kSortMax);
      r.nchunks = ceil_div(L, kSortMax);
      r.cand_len = (r.nchunks - 1) * k + std::min(k, L - (r.nchunks - 1) * kSortMax);
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
      for (const TopkRound& r : rounds_) {
        // A buffer holds rows * cand_len values, then as many indices.
        auto vals_of = [&](int b) { return reinterpret_cast<K*>(ws + (b - 1) * buf_bytes_); };
        auto idx_of = [&](int b, int64_t len) {
          return reinterpret_cast<int32_t*>(ws + (b - 1) * buf_bytes_ + static_cast<size_t>(rows_ * len) * sizeof(K));
        };
        const bool last = r.dst == 0;
        const int threads = static_cast<int>(std::clamp<int64_t>(r.P / 2, 32, 1024));
        const size_t smem = static_cast<size_t>(r.P) * (sizeof(K) + 4);
        const dim3 grid(static_cast<unsigned>(rows_), static_cast<unsigned>(r.nchunks));
        K* cv = last ? nullptr : vals_of(r.dst);
        int32_t* ci = last ? nullptr : idx_of(r.dst, r.cand_len);
        T* ov = last ? static_cast<T*>(outputs[0].data) : nullptr;
        int64_t* oi = last ? static_cast<int64_t*>(outputs[1].data) : nullptr;
        if (r.src == 0)
          topk_sort_kernel<T, true><<<grid, threads, smem, h.stream>>>(inputs[0].data, nullptr, cv, ci, ov, oi, inner_,
                                                                       r.L, r.chunk, k_, r.P, largest_, r.cand_len);
        else
          topk_sort_kernel<T, false><<<grid, threads, smem, h.stream>>>(vals_of(r.src), idx_of(r.src, r.L), cv, ci,
                                                                        ov, oi, inner_, r.L, r.chunk, k_, r.P,
                                                                        largest_, r.cand_len);
      }
    });
    return launch_status("TopK");
  }

 private:
  DType dtype_;
  int64_t rows_, inner_, k_;
  bool largest_;
  std::vector<TopkRound> rounds_;
  size_t buf_bytes_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Checks and creation

struct ReduceName {
  const char* op;
  RK kind;
};
constexpr ReduceName kReduceOps[] = {
    {"ReduceSum", RK::kSum},       {"ReduceMean", RK::kMean},     {"ReduceMax", RK::kMax},
    {"ReduceMin", RK::kMin},       {"ReduceProd", RK::kProd},     {"ReduceL1", RK::kL1},
    {"ReduceL2", RK::kL2},         {"ReduceLogSum", RK::kLogSum}, {"ReduceLogSumExp", RK::kLogSumExp},
    {"ReduceSumSquare", RK::kSumSquare},
};

std::string prefix(const LayerSpec& spec) { return "CUDA " + spec.node->op_type + ": "; }

bool int_reduce_ok(RK k) { return k == RK::kSum || k == RK::kMax || k == RK::kMin || k == RK::kProd; }

// The reduced-dim flags of a Reduce node for an input of `rank`, or why they cannot be had.
std::string reduce_axes(const LayerSpec& spec, RK kind, int64_t rank, bool know_rank, std::vector<bool>* reduced) {
  const int since = kind == RK::kSum ? 13 : 18;
  std::vector<int64_t> axes;
  if (spec.opset >= since) {
    if (spec.inputs.size() > 1 && spec.inputs[1].present()) {
      if (!spec.constant_ints(1, &axes)) return prefix(spec) + "axes must be a constant int32/int64 input";
    }
  } else {
    axes = spec.attr_ints("axes", {});
  }
  if (!know_rank) return "";
  reduced->assign(static_cast<size_t>(rank), false);
  if (axes.empty()) {
    if (spec.attr_int("noop_with_empty_axes", 0) == 0) reduced->assign(static_cast<size_t>(rank), true);
    return "";
  }
  for (int64_t a : axes) {
    if (a < -rank || a >= rank)
      return prefix(spec) + "axis " + std::to_string(a) + " is out of range for rank " + std::to_string(rank);
    const int64_t n = a < 0 ? a + rank : a;
    if ((*reduced)[n]) return prefix(spec) + "axis " + std::to_string(a) + " is repeated";
    (*reduced)[n] = true;
  }
  return "";
}

std::string check_reduce(const LayerSpec& spec, RK kind) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return prefix(spec) + "missing input 'data'";
  const DType t = spec.inputs[0].dtype;
  if (!is_float_dtype(t) && !((t == DType::kInt32 || t == DType::kInt64) && int_reduce_ok(kind)))
    return prefix(spec) + "dtype " + dtype_name(t) + " is not implemented";
  std::vector<bool> reduced;
  return reduce_axes(spec, kind, static_cast<int64_t>(spec.inputs[0].shape.size()), spec.inputs[0].has_rank,
                     &reduced);
}

template <RK K>
Result<std::unique_ptr<Layer>> create_reduce_k(const LayerSpec& spec, const char* name) {
  const TensorDesc& x = spec.inputs[0];
  std::vector<bool> reduced;
  if (std::string why = reduce_axes(spec, K, static_cast<int64_t>(x.shape.size()), true, &reduced); !why.empty())
    return Unsupported(why);
  std::unique_ptr<Layer> layer;
  dispatch_numeric(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (kIsInt<T> && !(K == RK::kSum || K == RK::kMax || K == RK::kMin || K == RK::kProd)) {
      return;
    } else {
      using Op = ReduceOp<K, T>;
      layer = std::make_unique<ReduceLayer<Op>>(build_plan(x.shape, reduced, sizeof(typename Op::Acc)), name);
    }
  });
  if (!layer) return Unsupported(prefix(spec) + "dtype " + dtype_name(x.dtype) + " is not implemented");
  return std::move(layer);
}

Status check_same_dtype_output(const LayerSpec& spec) {
  if (spec.outputs.empty() || spec.outputs[0].dtype != spec.inputs[0].dtype)
    return InvalidArgument(prefix(spec) + "output 0 must have the input's dtype " + dtype_name(spec.inputs[0].dtype));
  return OkStatus();
}

Result<std::unique_ptr<Layer>> create_reduce(const LayerSpec& spec, RK kind) {
  if (std::string why = check_reduce(spec, kind); !why.empty()) return Unsupported(why);
  KILN_RETURN_IF_ERROR(check_same_dtype_output(spec));
  const char* name = "reduce";
  for (const auto& r : kReduceOps)
    if (r.kind == kind) name = r.op;
  switch (kind) {
    case RK::kSum: return create_reduce_k<RK::kSum>(spec, name);
    case RK::kMean: return create_reduce_k<RK::kMean>(spec, name);
    case RK::kMax: return create_reduce_k<RK::kMax>(spec, name);
    case RK::kMin: return create_reduce_k<RK::kMin>(spec, name);
    case RK::kProd: return create_reduce_k<RK::kProd>(spec, name);
    case RK::kL1: return create_reduce_k<RK::kL1>(spec, name);
    case RK::kL2: return create_reduce_k<RK::kL2>(spec, name);
    case RK::kLogSum: return create_reduce_k<RK::kLogSum>(spec, name);
    case RK::kLogSumExp: return create_reduce_k<RK::kLogSumExp>(spec, name);
    case RK::kSumSquare: return create_reduce_k<RK::kSumSquare>(spec, name);
  }
  return Internal("unreachable");
}

// Normalizes `axis` for a known rank; "" or why not.
std::string normalize_axis(const LayerSpec& spec, int64_t axis, int64_t rank, int64_t* out) {
  if (axis < -rank || axis >= rank)
    return prefix(spec) + "axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank);
  *out = axis < 0 ? axis + rank : axis;
  return "";
}

void split_at(const Shape& s, int64_t axis, int64_t* outer, int64_t* dim, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int64_t a = 0; a < axis; ++a) *outer *= s[a];
  *dim = s[axis];
  for (size_t a = axis + 1; a < s.size(); ++a) *inner *= s[a];
}

std::string check_arg(const LayerSpec& spec) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return prefix(spec) + "missing input 'data'";
  const TensorDesc& x = spec.inputs[0];
  if (!is_numeric_dtype(x.dtype)) return prefix(spec) + "dtype " + dtype_name(x.dtype) + " is not implemented";
  if (!x.has_rank) return "";
  if (x.shape.empty()) return prefix(spec) + "a rank-0 input has no axis";
  int64_t axis = 0;
  return normalize_axis(spec, spec.attr_int("axis", 0), static_cast<int64_t>(x.shape.size()), &axis);
}

template <bool kMax>
Result<std::unique_ptr<Layer>> create_arg(const LayerSpec& spec) {
  if (std::string why = check_arg(spec); !why.empty()) return Unsupported(why);
  const TensorDesc& x = spec.inputs[0];
  int64_t axis = 0, outer, dim, inner;
  (void)normalize_axis(spec, spec.attr_int("axis", 0), static_cast<int64_t>(x.shape.size()), &axis);
  split_at(x.shape, axis, &outer, &dim, &inner);
  if (dim == 0) return InvalidArgument(prefix(spec) + "cannot take the arg of an empty axis of " + shape_to_string(x.shape));
  std::vector<bool> reduced(x.shape.size(), false);
  reduced[axis] = true;
  const bool last = spec.attr_int("select_last_index", 0) != 0;
  const char* name = kMax ? "ArgMax" : "ArgMin";
  std::unique_ptr<Layer> layer;
  dispatch_numeric(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (last) {
      using Op = ArgOp<T, kMax, true>;
      layer = std::make_unique<ReduceLayer<Op>>(build_plan(x.shape, reduced, sizeof(typename Op::Acc)), name);
    } else {
      using Op = ArgOp<T, kMax, false>;
      layer = std::make_unique<ReduceLayer<Op>>(build_plan(x.shape, reduced, sizeof(typename Op::Acc)), name);
    }
  });
  return std::move(layer);
}

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

// TopK's k: the constant input K (opset 10 on), or the attribute k (opset 1); -1 when not known.
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
    return prefix(spec) + "k " + std::to_string(k) + " > " + std::to_string(kTopkChunkedMaxK) + " on an axis longer than " +
           std::to_string(kSortMax) + " (" + std::to_string(dim) + ") is not implemented";
  if (dim > INT32_MAX - 1) return prefix(spec) + "an axis of 2^31 elements or more is not implemented";
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
  if (outer * inner > INT32_MAX || ceil_div(dim, kSortMax) > 65535)
    return Unsupported(prefix(spec) + "input " + shape_to_string(x.shape) + " is too large for the sort kernel");
  return std::unique_ptr<Layer>(
      std::make_unique<TopKLayer>(x.dtype, outer, dim, inner, k, spec.attr_int("largest", 1) != 0));
}

// The layer's one tactic; "default" is accepted too.
Status check_tactic(const LayerSpec& spec, const std::string& tactic, const char* mine) {
  if (tactic == mine || tactic == "default") return OkStatus();
  return InvalidArgument(prefix(spec) + "unknown tactic '" + tactic + "' (it has " + mine + ")");
}

}  // namespace

void register_reduce_layers(LayerTable& table) {
  for (const auto& r : kReduceOps) {
    const RK kind = r.kind;
    LayerKind k;
    k.op_type = r.op;
    k.check = [kind](const LayerSpec& spec) { return check_reduce(spec, kind); };
    k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.reduce.passes"}; };
    k.create = [kind](const LayerSpec& spec, const std::string& tactic,
                      const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      KILN_RETURN_IF_ERROR(check_tactic(spec, tactic, "cuda.reduce.passes"));
      return create_reduce(spec, kind);
    };
    table.add(std::move(k));
  }
  for (const bool is_max : {true, false}) {
    LayerKind k;
    k.op_type = is_max ? "ArgMax" : "ArgMin";
    k.check = check_arg;
    k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.reduce.arg"}; };
    k.create = [is_max](const LayerSpec& spec, const std::string& tactic,
                        const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      KILN_RETURN_IF_ERROR(check_tactic(spec, tactic, "cuda.reduce.arg"));
      return is_max ? create_arg<true>(spec) : create_arg<false>(spec);
    };
    table.add(std::move(k));
  }
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
    k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.reduce.bitonic"}; };
    k.create = [](const LayerSpec& spec, const std::string& tactic,
                  const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      KILN_RETURN_IF_ERROR(check_tactic(spec, tactic, "cuda.reduce.bitonic"));
      return create_topk(spec);
    };
    table.add(std::move(k));
  }
}

}  // namespace kiln::cuda
