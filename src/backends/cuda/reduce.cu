// CUDA layers: the Reduce ops (Sum, Mean, Max, Min, Prod, L1, L2, LogSum, LogSumExp, SumSquare), ArgMax and
// ArgMin. Semantics follow the CPU reference (backends/cpu/ops/reduce.cc, sort_scan.cc). CumSum and TopK,
// registered from here too, are in sort_scan.cu.
//
// The input shape is collapsed at create time: size-1 dims are dropped and neighbouring dims that are both
// reduced or both kept are merged, so the common cases become one pass over (outer, R, inner). Reduced
// axes that are not contiguous (axes {0, 2} of a rank-3 input) take one pass per reduced group, the largest
// first, through workspace buffers of partial accumulators: no transpose, and each later pass reads a
// fraction of the data. A pass with few outputs and a long R splits R over several blocks, which write
// partials, and a second pass combines them (no atomics, so results do not depend on timing).
// inner == 1 reduces rows: a group of 1 to 256 threads per row, sized so that each thread folds a few
// 16-byte loads (long rows get a block, rows of 7 get a thread or two). inner > 1 reduces columns:
// threads across the contiguous inner dim (8 bytes of adjacent columns each, so float16 reads stay wide),
// a shared-memory tree across R. ArgMax/ArgMin are the same machinery with a (value, index) accumulator.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/reduce_util.cuh"

namespace kiln::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Reduction ops: an accumulator with an identity, `load` of one element (given its index along the reduced
// axis), an associative and commutative `comb`, `fold` = comb(acc, load(x)) for elements a thread visits in
// increasing index order (cheaper where the op allows), and `finish` (given the number of elements).

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
  static __device__ __forceinline__ Acc fold(Acc a, T x, int64_t r) {
    if constexpr (K == RK::kLogSumExp) {
      // One exp per element instead of comb's three; non-finite values take the general path.
      const float v = to_f(x);
      if (!isfinite(v) || !isfinite(a.x)) return comb(a, load(x, r));
      if (v <= a.x) return make_float2(a.x, a.y + expf(v - a.x));
      return make_float2(v, a.y * expf(a.x - v) + 1.0f);
    } else {
      return comb(a, load(x, r));
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
  static __device__ __forceinline__ Acc fold(Acc a, T x, int64_t r) {
    // r is larger than every index already in a: a tie goes to r only with kLast.
    const Key<T> v = to_key(x);
    const int c = cmp3(v, a.v) * (kMax ? 1 : -1);
    return (a.i < 0 || c > 0 || (kLast && c == 0)) ? Acc{v, r} : a;
  }
  static __device__ __forceinline__ int64_t finish(Acc a, int64_t) { return a.i; }
};

__device__ __forceinline__ float2 shfl_xor(float2 v, int m) { return make_float2(shfl_xor(v.x, m), shfl_xor(v.y, m)); }
template <class V>
__device__ __forceinline__ ArgAcc<V> shfl_xor(ArgAcc<V> a, int m) {
  return ArgAcc<V>{shfl_xor(a.v, m), shfl_xor(a.i, m)};
}

// Reduces rows of length R (inner == 1). Each group of tpr = 2^tpr_log2 threads takes one row; blockIdx.y
// picks a chunk of R when the pass is split, and the partial then goes to y[row * gridDim.y + split].
// kRaw: x holds elements; otherwise accumulators from an earlier pass. vec: 16-byte loads.
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
            for (int k = 0; k < V; ++k) acc = Op::fold(acc, v.v[k], i * V + k);
          }
        } else {
#pragma unroll 4
          for (int64_t i = r0 + lane; i < r1; i += tpr) acc = Op::fold(acc, p[i], i);
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

// Reduces (outer, R, inner) over R with inner > 1. Each thread takes VC adjacent outputs of the flattened
// (outer, inner) space (inner % VC == 0, so they share o), threadIdx.x walks across them so that reads are
// contiguous across a warp, threadIdx.y strides R and the block folds its rows in shared memory. Partials
// of a split pass go to y[(o * gridDim.y + split) * inner + i].
template <class Op, bool kRaw, int VC>
__global__ void __launch_bounds__(kThreads)
reduce_cols_kernel(const void* __restrict__ xv, void* __restrict__ yv, int64_t outer, int64_t R, int64_t inner,
                   int64_t chunk, bool final_out, int64_t count) {
  using A = typename Op::Acc;
  using T = typename Op::Elem;
  using In = std::conditional_t<kRaw, T, A>;
  __shared__ A part[VC][kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t r1 = min64(R, r0 + chunk);
  const int64_t groups = outer * inner / VC;
  for (int64_t tile = blockIdx.x; tile * bx < groups; tile += gridDim.x) {
    const int64_t q = (tile * bx + tx) * VC;
    const int64_t o = q / inner, i = q - o * inner;
    A acc[VC];
#pragma unroll
    for (int c = 0; c < VC; ++c) acc[c] = Op::init();
    if (q < groups * VC) {
      const Vec<In, VC>* p = reinterpret_cast<const Vec<In, VC>*>(static_cast<const In*>(xv) + o * R * inner + i);
      const int64_t step = inner / VC;
#pragma unroll 4
      for (int64_t r = r0 + ty; r < r1; r += by) {
        const Vec<In, VC> v = p[r * step];
#pragma unroll
        for (int c = 0; c < VC; ++c) {
          if constexpr (kRaw) acc[c] = Op::fold(acc[c], v.v[c], r);
          else acc[c] = Op::comb(acc[c], v.v[c]);
        }
      }
    }
    if (by > 1) {
#pragma unroll
      for (int c = 0; c < VC; ++c) part[c][ty * bx + tx] = acc[c];
      __syncthreads();
      for (int h = by >> 1; h > 0; h >>= 1) {
        if (ty < h) {
#pragma unroll
          for (int c = 0; c < VC; ++c) part[c][ty * bx + tx] = Op::comb(part[c][ty * bx + tx], part[c][(ty + h) * bx + tx]);
        }
        __syncthreads();
      }
#pragma unroll
      for (int c = 0; c < VC; ++c) acc[c] = part[c][tx];
    }
    if (ty == 0 && q < groups * VC) {
#pragma unroll
      for (int c = 0; c < VC; ++c) {
        if (final_out) static_cast<typename Op::Out*>(yv)[q + c] = Op::finish(acc[c], count);
        else static_cast<A*>(yv)[(o * gridDim.y + blockIdx.y) * inner + i + c] = acc[c];
      }
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
  bool vec = false;  // rows: 16-byte loads if the input is aligned
  int tpr_log2 = 0;  // rows: threads per row
  int vc = 1;  // cols: adjacent outputs per thread (8-byte loads) if the input is aligned
  int bx = kThreads, by = 1;  // cols: block shape
  unsigned grid = 1;
};

struct Plan {
  std::vector<Pass> passes;
  size_t ws_offset[3] = {0, 0, 0};
  size_t ws_bytes = 0;
  int64_t count = 1;  // elements folded into each output (for Mean)
};

// elem_bytes: the size of an element of a raw pass (0 for accumulators).
Pass make_pass(int64_t outer, int64_t R, int64_t inner, bool allow_split, int elem_bytes) {
  Pass p;
  p.outer = outer;
  p.R = R;
  p.inner = inner;
  p.raw = elem_bytes > 0;
  p.chunk = std::max<int64_t>(R, 1);
  p.rows = inner == 1;
  int64_t natural = 1, min_chunk = 1;
  const int64_t sms = sm_count();
  if (p.rows) {
    const int V = p.raw ? 16 / elem_bytes : 1;
    p.vec = p.raw && R % V == 0;
    const int64_t units = p.vec ? R / V : R;  // loads per row
    int64_t tpr = pow2_ceil(ceil_div(units, 4));
    if (tpr > 32) tpr = units > 2048 ? kThreads : 32;
    while ((int64_t{1} << p.tpr_log2) < tpr) ++p.tpr_log2;
    natural = ceil_div(outer, kThreads / tpr);
    min_chunk = tpr * (p.vec ? V : 1) * 16;
  } else {
    p.vc = p.raw && elem_bytes < 8 ? 8 / elem_bytes : 1;
    if (inner % p.vc != 0) p.vc = 1;
    const int64_t threads = outer * inner / p.vc;
    if (threads >= sms * 1024 || R <= 1) {
      p.bx = kThreads;
      p.by = 1;
    } else {
      p.by = static_cast<int>(std::min<int64_t>(8, pow2_ceil(R)));
      p.bx = kThreads / p.by;
      while (p.bx > 32 && p.bx / 2 >= threads) p.bx /= 2;  // few columns: fewer threads across them,
      while (p.bx > 1 && p.bx >= 2 * threads && p.by < pow2_ceil(R) && p.by < kThreads) {  // more down R
        p.bx /= 2;
        p.by *= 2;
      }
    }
    natural = ceil_div(threads, p.bx);
    min_chunk = p.by * 16;
  }
  const int64_t target = sms * 8;
  if (allow_split && natural < target && R >= 2 * min_chunk) {
    const int64_t s = std::min({ceil_div(target, natural), R / min_chunk, int64_t{1024}});
    p.chunk = (ceil_div(R, s) + 7) / 8 * 8;  // a multiple of every vector width
    p.splits = static_cast<int>(ceil_div(R, p.chunk));
  }
  p.grid = grid_of(natural);
  return p;
}

// The passes reducing `shape` over the dims flagged in `reduced`.
Plan build_plan(const Shape& shape, const std::vector<bool>& reduced, int elem_bytes, size_t acc_bytes) {
  Plan plan;
  int64_t out_numel = 1, count = 1;
  for (size_t d = 0; d < shape.size(); ++d) (reduced[d] ? count : out_numel) *= shape[d];
  plan.count = count;
  if (out_numel == 0) return plan;
  if (count == 0) {  // empty reductions: every output is finish(identity)
    plan.passes.push_back(make_pass(out_numel, 0, 1, false, elem_bytes));
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
    plan.passes.push_back(make_pass(out_numel, 1, 1, false, elem_bytes));
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
    Pass p = make_pass(outer, dims[g], inner, true, src == 0 ? elem_bytes : 0);
    p.src = src;
    if (p.splits > 1) {
      const int mid = src == 0 ? 1 : other(src);
      p.dst = mid;
      p.final_out = false;
      need[mid] = std::max(need[mid], static_cast<size_t>(outer * p.splits * inner) * acc_bytes);
      plan.passes.push_back(p);
      Pass q = make_pass(outer, p.splits, inner, false, 0);
      q.src = mid;
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
  plan.ws_offset[2] = (need[1] + 255) / 256 * 256;
  plan.ws_bytes = plan.ws_offset[2] + need[2];
  return plan;
}

template <class Op, bool kRaw, int VC>
void launch_cols(const Pass& p, const void* src, void* dst, int64_t count, cudaStream_t s) {
  reduce_cols_kernel<Op, kRaw, VC><<<dim3(p.grid, p.splits), dim3(p.bx, p.by), 0, s>>>(
      src, dst, p.outer, p.R, p.inner, p.chunk, p.final_out, count);
}

template <class Op>
class ReduceLayer final : public Layer {
 public:
  ReduceLayer(Plan plan, const char* name) : plan_(std::move(plan)), name_(name) {}
  size_t workspace_bytes() const override { return plan_.ws_bytes; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    using T = typename Op::Elem;
    constexpr int kVC = sizeof(T) < 8 ? static_cast<int>(8 / sizeof(T)) : 1;
    char* ws = static_cast<char*>(workspace);
    for (const Pass& p : plan_.passes) {
      const void* src = p.src == 0 ? inputs[0].data : ws + plan_.ws_offset[p.src];
      void* dst = p.dst == 0 ? outputs[0].data : ws + plan_.ws_offset[p.dst];
      if (p.rows) {
        const dim3 grid(p.grid, p.splits);
        if (p.raw)
          reduce_rows_kernel<Op, true><<<grid, kThreads, 0, h.stream>>>(
              src, dst, p.outer, p.R, p.chunk, p.tpr_log2, p.final_out, plan_.count, p.vec && aligned_to(src, 16));
        else
          reduce_rows_kernel<Op, false><<<grid, kThreads, 0, h.stream>>>(src, dst, p.outer, p.R, p.chunk, p.tpr_log2,
                                                                        p.final_out, plan_.count, false);
      } else if (!p.raw) {
        launch_cols<Op, false, 1>(p, src, dst, plan_.count, h.stream);
      } else if (kVC > 1 && p.vc == kVC && aligned_to(src, 8)) {
        launch_cols<Op, true, kVC>(p, src, dst, plan_.count, h.stream);
      } else {
        launch_cols<Op, true, 1>(p, src, dst, plan_.count, h.stream);
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

constexpr bool int_reduce_ok(RK k) { return k == RK::kSum || k == RK::kMax || k == RK::kMin || k == RK::kProd; }

// The reduced-dim flags of a Reduce node for an input of `rank` (when known), or why they cannot be had.
std::string reduce_axes(const LayerSpec& spec, RK kind, int64_t rank, bool know_rank, std::vector<bool>* reduced) {
  const int since = kind == RK::kSum ? 13 : 18;  // the opset from which axes is an input
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
    int64_t n = 0;
    if (std::string why = normalize_axis(spec, a, rank, &n); !why.empty()) return why;
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

template <class Op>
std::unique_ptr<Layer> make_reduce_layer(const Shape& shape, const std::vector<bool>& reduced, const char* name) {
  return std::make_unique<ReduceLayer<Op>>(
      build_plan(shape, reduced, sizeof(typename Op::Elem), sizeof(typename Op::Acc)), name);
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
    if constexpr (!kIsInt<T> || int_reduce_ok(K)) layer = make_reduce_layer<ReduceOp<K, T>>(x.shape, reduced, name);
  });
  if (!layer) return Unsupported(prefix(spec) + "dtype " + dtype_name(x.dtype) + " is not implemented");
  return Result<std::unique_ptr<Layer>>(std::move(layer));
}

Result<std::unique_ptr<Layer>> create_reduce(const LayerSpec& spec, RK kind, const char* name) {
  if (std::string why = check_reduce(spec, kind); !why.empty()) return Unsupported(why);
  KILN_RETURN_IF_ERROR(check_same_dtype_output(spec));
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
    layer = last ? make_reduce_layer<ArgOp<T, kMax, true>>(x.shape, reduced, name)
                 : make_reduce_layer<ArgOp<T, kMax, false>>(x.shape, reduced, name);
  });
  return Result<std::unique_ptr<Layer>>(std::move(layer));
}

}  // namespace

void register_reduce_layers(LayerTable& table) {
  for (const auto& r : kReduceOps) {
    const RK kind = r.kind;
    const char* name = r.op;
    LayerKind k;
    k.op_type = r.op;
    k.check = [kind](const LayerSpec& spec) { return check_reduce(spec, kind); };
    k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.reduce.passes"}; };
    k.create = [kind, name](const LayerSpec& spec, const std::string& tactic,
                            const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      KILN_RETURN_IF_ERROR(check_tactic(spec, tactic, "cuda.reduce.passes"));
      return create_reduce(spec, kind, name);
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
  register_sort_scan_layers(table);
}

}  // namespace kiln::cuda
