// CUDA layers: Softmax and LogSoftmax.
//
// Before opset 13 the input is seen as 2-D at `axis` (default 1) and the op works along the whole second
// dimension; from 13 on it works along one axis (default -1). Either way the work is [outer, n, inner].
//
// inner == 1 (the usual case: the last axis, and every opset < 13 node) is a row op on contiguous rows. A row
// of up to 1024 elements lives in the registers of a group of lanes of one warp (fewer lanes for short
// rows, so that BERT's 128-long fp16 rows keep every lane busy), up to 16384 elements in those of a whole
// block: max, then the sum of exp(x - max), then the output, all on registers (x is read once). Longer rows,
// and few rows of more than 4096 elements, are split into chunks: one kernel writes each chunk's (max, sum),
// a second merges its row's pairs and writes its chunk.
//
// inner > 1 is strided: each column (o, i) is owned by one thread column of a 32 x BY block, adjacent i on
// adjacent lanes (coalesced when inner >= 32), the n elements split over the BY threads, an online
// (max, sum) pass merged in shared memory, then the output pass.
//
// As the reference does, a max of +-inf is taken as 0, so a row of -inf gives NaN, not a division by
// zero that some other convention would hide. Everything is computed in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "backends/cuda/row_ops.cuh"

namespace kiln::cuda {
namespace {

// The reference's shift: the max, or 0 when the max is infinite.
__device__ __forceinline__ float shift_of(float m) { return isinf(m) ? 0.0f : m; }

// exp(x - m) for x <= m (and infinities): __expf (ex2.approx) is within a few ulp there, at a fraction of
// expf's instructions; float16 softmax is otherwise bound by instruction issue, not by memory.
__device__ __forceinline__ float exp_shifted(float x, float m) { return __expf(x - m); }

// The output for x, given the row's shift m and sum s (of exp(x - m)).
__device__ __forceinline__ float softmax_out(float x, float m, float inv_s, float log_s, bool log) {
  return log ? (x - m) - log_s : exp_shifted(x, m) * inv_s;
}

// ---------------------------------------------------------------------------------------------------------
// Contiguous rows

struct Rows {
  int64_t rows = 0;
  int len = 0;
  bool log = false;
  float2* partials = nullptr;  // split path: (max, sum of exp(x - shift(max))) per chunk
  int chunks = 1, chunk_len = 0;
};

// One row per `width` lanes (width > 0) or per block (width 0); each thread holds NV vectors of VEC
// elements: vector i of thread t is vector t + i * threads of the row. VEC > 1 needs len % VEC == 0.
// More than 16 elements a thread only ever run in blocks of 256 (plan_rows), which leaves them registers.
template <class T, int VEC, int NV>
__global__ void __launch_bounds__(VEC * NV > 16 ? 256 : 1024)
    softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, Rows p, int width) {
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
  float v[NV][VEC];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (valid && e < len) {
      load_vec<T, VEC>(xr + e, v[i]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) m = fmaxf(m, v[i][j]);
    }
  }
  m = shift_of(row_reduce<MaxOp>(m, width, sh));
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (valid && e < len) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float ex = exp_shifted(v[i][j], m);
        s += ex;
        if (!p.log) v[i][j] = ex;  // Softmax keeps exp(x - m), LogSoftmax x
      }
    }
  }
  s = row_reduce<SumOp>(s, width, sh);
  if (!valid) return;
  const float log_s = logf(s), inv_s = 1.0f / s;
  T* yr = y + row * len;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (e < len) {
      float o[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = p.log ? (v[i][j] - m) - log_s : v[i][j] * inv_s;
      store_vec<T, VEC>(yr + e, o);
    }
  }
}

// Split path, first kernel: block b is chunk b % chunks of row b / chunks; writes its (max, sum).
template <class T, int VEC>
__global__ void softmax_partial_kernel(const T* __restrict__ x, Rows p) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x / p.chunks;
  const int begin = static_cast<int>(blockIdx.x % p.chunks) * p.chunk_len;
  const int end = min(p.len, begin + p.chunk_len);
  const T* xr = x + row * p.len;
  float m = -INFINITY;
  for (int e = begin + threadIdx.x * VEC; e < end; e += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + e, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) m = fmaxf(m, v[j]);
  }
  m = row_reduce<MaxOp>(m, 0, sh);
  const float shift = shift_of(m);
  // The second pass finds the chunk in L1/L2.
  float s = 0.0f;
  for (int e = begin + threadIdx.x * VEC; e < end; e += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + e, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += exp_shifted(v[j], shift);
  }
  s = row_reduce<SumOp>(s, 0, sh);
  if (threadIdx.x == 0) p.partials[blockIdx.x] = make_float2(m, s);
}

// Split path, second kernel: merges the row's chunk pairs (warp 0), then writes this block's chunk. A chunk
// of sum 0 (all -inf) adds nothing, even where exp of its shift difference would overflow.
template <class T, int VEC>
__global__ void softmax_split_kernel(const T* __restrict__ x, T* __restrict__ y, Rows p) {
  __shared__ float stats[2];
  const int64_t row = blockIdx.x / p.chunks;
  const int chunk = static_cast<int>(blockIdx.x % p.chunks);
  const float2* part = p.partials + row * p.chunks;
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int c = threadIdx.x; c < p.chunks; c += 32) m = fmaxf(m, part[c].x);
    m = shift_of(lanes_reduce<MaxOp>(m, 32));
    float s = 0.0f;
    for (int c = threadIdx.x; c < p.chunks; c += 32) {
      const float2 q = part[c];
      if (q.y != 0.0f) s += q.y * expf(shift_of(q.x) - m);
    }
    s = lanes_reduce<SumOp>(s, 32);
    if (threadIdx.x == 0) {
      stats[0] = m;
      stats[1] = s;
    }
  }
  __syncthreads();
  const float m = stats[0], s = stats[1], log_s = logf(s), inv_s = 1.0f / s;
  const int begin = chunk * p.chunk_len, end = min(p.len, begin + p.chunk_len);
  const T* xr = x + row * p.len;
  T* yr = y + row * p.len;
  for (int e = begin + threadIdx.x * VEC; e < end; e += blockDim.x * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + e, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = softmax_out(v[j], m, inv_s, log_s, p.log);
    store_vec<T, VEC>(yr + e, v);
  }
}

template <class T, int VEC>
void launch_rows(const RowPlan& plan, const T* x, T* y, const Rows& p, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>(plan.blocks);
  const int width = plan.path == RowPath::kGroup ? plan.width : 0;
  if (plan.path == RowPath::kSplit) {
    softmax_partial_kernel<T, VEC><<<blocks, plan.threads, 0, s>>>(x, p);
    softmax_split_kernel<T, VEC><<<blocks, plan.threads, 0, s>>>(x, y, p);
    return;
  }
  switch (plan.nv) {
#define KILN_SOFTMAX_CASE(NV)                                                                           \
  case NV:                                                                                              \
    if constexpr (VEC * NV <= 32) softmax_rows_kernel<T, VEC, NV><<<blocks, plan.threads, 0, s>>>(x, y, p, width); \
    break;
    KILN_SOFTMAX_CASE(1) KILN_SOFTMAX_CASE(2) KILN_SOFTMAX_CASE(3) KILN_SOFTMAX_CASE(4)
    KILN_SOFTMAX_CASE(6) KILN_SOFTMAX_CASE(8) KILN_SOFTMAX_CASE(16) KILN_SOFTMAX_CASE(32)
#undef KILN_SOFTMAX_CASE
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Strided: softmax over the middle dim of [outer, n, inner], inner > 1

// One pass finds each thread's running (max, sum of exp(x - max)) (Milakov and Gimelshein's online
// softmax); the BY threads of a column merge theirs. Where the column's max is infinite the reference's
// shift is 0, not the max: a second pass then sums exp(x) itself (rare: +inf, or nothing but -inf). The
// last pass writes.
template <class T>
__global__ void softmax_strided_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t cols, int64_t n,
                                       int64_t inner, bool log) {
  __shared__ float shm[32][33], shs[32][33];
  const int tx = threadIdx.x, ty = threadIdx.y, by = blockDim.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  const bool valid = col < cols;
  const int64_t base = valid ? (col / inner) * n * inner + col % inner : 0;
  float m = -INFINITY, s = 0.0f;
  if (valid) {
#pragma unroll 4
    for (int64_t k = ty; k < n; k += by) {
      const float v = to_f(x[base + k * inner]);
      if (v > m) {
        s = s * __expf(m - v) + 1.0f;
        m = v;
      } else {
        s += v == -INFINITY ? 0.0f : __expf(v - m);  // NaN goes into s
      }
    }
  }
  shm[ty][tx] = m;
  shs[ty][tx] = s;
  __syncthreads();
  if (ty == 0) {
    for (int r = 1; r < by; ++r) m = fmaxf(m, shm[r][tx]);
    float total = 0.0f;
    for (int r = 0; r < by; ++r) {
      const float sr = shs[r][tx];
      if (sr != 0.0f) total += sr * __expf(shm[r][tx] - m);
    }
    shm[0][tx] = m;
    shs[0][tx] = total;
  }
  __syncthreads();
  m = shm[0][tx];
  s = shs[0][tx];
  const bool infinite = isinf(m);  // the same for the whole column
  __syncthreads();  // everyone has read row 0
  float s0 = 0.0f;
  if (valid && infinite)
    for (int64_t k = ty; k < n; k += by) s0 += __expf(to_f(x[base + k * inner]));
  shs[ty][tx] = s0;
  __syncthreads();
  if (ty == 0 && infinite) {
    for (int r = 1; r < by; ++r) s0 += shs[r][tx];
    shs[0][tx] = s0;
  }
  __syncthreads();
  if (infinite) {
    m = 0.0f;
    s = shs[0][tx];
  }
  if (!valid) return;
  const float log_s = logf(s), inv_s = 1.0f / s;
#pragma unroll 4
  for (int64_t k = ty; k < n; k += by)
    y[base + k * inner] = from_f<T>(softmax_out(to_f(x[base + k * inner]), m, inv_s, log_s, log));
}

// ---------------------------------------------------------------------------------------------------------
// Layer

std::string op_prefix(const LayerSpec& spec) { return "CUDA " + spec.node->op_type + ": "; }

class SoftmaxLayer : public Layer {
 public:
  Status init(const LayerSpec& spec) {
    const Shape& xs = spec.inputs[0].shape;
    dtype_ = spec.inputs[0].dtype;
    log_ = spec.node->op_type == "LogSoftmax";
    const int64_t rank = static_cast<int64_t>(xs.size());
    const bool new_semantics = spec.opset >= 13;
    int64_t axis = spec.attr_int("axis", new_semantics ? -1 : 1);
    if (rank == 0 || axis < -rank || axis >= rank)
      return InvalidArgument(op_prefix(spec) + "axis " + std::to_string(axis) + " is out of range for rank " +
                             std::to_string(rank));
    if (axis < 0) axis += rank;
    outer_ = 1, n_ = 1, inner_ = 1;
    for (int64_t d = 0; d < axis; ++d) outer_ *= xs[d];
    if (new_semantics) {
      n_ = xs[axis];
      for (int64_t d = axis + 1; d < rank; ++d) inner_ *= xs[d];
    } else {
      for (int64_t d = axis; d < rank; ++d) n_ *= xs[d];
    }
    if (inner_ == 1) {
      if (n_ >= (int64_t{1} << 31) - 32768)
        return Unsupported(op_prefix(spec) + "rows of " + std::to_string(n_) + " elements are too long");
      rows_.rows = outer_;
      rows_.len = static_cast<int>(n_);
      rows_.log = log_;
      split_ = plan_chunks(outer_, n_, &rows_.chunks, &rows_.chunk_len);
    }
    return OkStatus();
  }

  size_t workspace_bytes() const override {
    return split_ ? align256(static_cast<size_t>(rows_.rows) * rows_.chunks * sizeof(float2)) : 0;
  }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (outer_ * n_ * inner_ == 0) return OkStatus();
    const void* x = inputs[0].data;
    void* y = outputs[0].data;
    if (inner_ > 1) {
      const int64_t cols = outer_ * inner_;
      const int64_t blocks = ceil_div(cols, 32);
      // Few columns: more threads down each one.
      const int by = blocks >= 2 * sm_count() ? 8 : 32;
      dispatch_float(dtype_, [&](auto tag) {
        using T = typename decltype(tag)::type;
        softmax_strided_kernel<T><<<static_cast<unsigned>(blocks), dim3(32, by), 0, h.stream>>>(
            static_cast<const T*>(x), static_cast<T*>(y), cols, n_, inner_, log_);
      });
      return launch_status("softmax_strided_kernel");
    }
    Rows p = rows_;
    p.partials = static_cast<float2*>(workspace);
    const int vec = dtype_ == DType::kFloat32 ? 4 : 8;
    const bool use_vec = p.len % vec == 0 && aligned16(x) && aligned16(y);
    const RowPlan plan = plan_rows(p.rows, p.len, use_vec ? vec : 1, split_, p.chunks);
    dispatch_float(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      constexpr int V = 16 / sizeof(T);
      if (use_vec) launch_rows<T, V>(plan, static_cast<const T*>(x), static_cast<T*>(y), p, h.stream);
      else launch_rows<T, 1>(plan, static_cast<const T*>(x), static_cast<T*>(y), p, h.stream);
    });
    return launch_status("softmax_rows_kernel");
  }

 private:
  DType dtype_ = DType::kFloat32;
  bool log_ = false;
  int64_t outer_ = 1, n_ = 1, inner_ = 1;
  Rows rows_;
  bool split_ = false;
};

std::string check_softmax(const LayerSpec& spec) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return op_prefix(spec) + "input is required";
  const TensorDesc& x = spec.inputs[0];
  if (x.dtype != DType::kFloat32 && x.dtype != DType::kFloat16 && x.dtype != DType::kBFloat16)
    return op_prefix(spec) + "input of type " + dtype_name(x.dtype) +
           " is not supported (float32, float16 and bfloat16 are)";
  if (x.has_rank) {
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    const int64_t axis = spec.attr_int("axis", spec.opset >= 13 ? -1 : 1);
    if (rank == 0) return op_prefix(spec) + "input must have rank >= 1, got a scalar";
    if (axis < -rank || axis >= rank)
      return op_prefix(spec) + "axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank);
  }
  return "";
}

Result<std::unique_ptr<Layer>> create_softmax(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  auto layer = std::make_unique<SoftmaxLayer>();
  KILN_RETURN_IF_ERROR(layer->init(spec));
  return std::unique_ptr<Layer>(std::move(layer));
}

LayerKind make_kind(const char* op, const char* tactic) {
  LayerKind k;
  k.op_type = op;
  k.check = check_softmax;
  const std::string t = tactic;
  k.tactics = [t](const LayerSpec&) { return std::vector<std::string>{t}; };
  k.create = create_softmax;
  return k;
}

}  // namespace

void register_softmax_layers(LayerTable& table) {
  table.add(make_kind("Softmax", "cuda.softmax.softmax"));
  table.add(make_kind("LogSoftmax", "cuda.softmax.logsoftmax"));
}

}  // namespace kiln::cuda
