// CUDA layer of the optimizer's kiln.MaskedSoftmax (ops_spec; made by fuse_masked_softmax from BERT's
// Add(scores, mask) -> Softmax -> IsNaN -> Where): Y = softmax(X + Mask) along the last axis, NaN -> 0 with
// nan_to_zero. One kernel reads the scores and the mask once and writes Y once, where the four ONNX ops
// read and write the [B, H, L, L] scores four times.
//
// Rows of length L are planned as softmax.cu plans them (row_ops.cuh): up to 1024 elements a row on a group
// of lanes of one warp (BERT's L = 128 in float16: 16 lanes of 8 elements, two rows a warp), up to 16384 on
// a block, in registers; longer rows on a block looping over global memory (three passes). The mask is read
// through broadcast strides: its last dim is either L (read along the row) or 1 (one value a row), and the
// row offset comes from the row index through the collapsed broadcast of the mask's leading dims against
// X's ([B, 1, L] against [B, H, L] for a [B, 1, L, L] mask). Math in float32; as the reference, a max of
// +-inf is taken as 0, so a fully masked row gives 0 / 0 = NaN, made 0 by nan_to_zero.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <vector>

#include "backends/cuda/broadcast.cuh"
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "backends/cuda/row_ops.cuh"

namespace kiln::cuda {
namespace {

struct MaskedRows {
  int64_t rows = 0;
  int len = 0;
  bool nan_to_zero = false;
  bool has_mask = false;
  bool mask_along_row = false;  // the mask's last dim is L (else 1: one value a row)
  Broadcast<1> mask_rows;       // row index -> the mask's row offset (in elements)
};

__device__ __forceinline__ float shift_of(float m) { return isinf(m) ? 0.0f : m; }

__device__ __forceinline__ float finish(float e, float inv_s, bool nan_to_zero) {
  const float o = e * inv_s;
  return nan_to_zero && isnan(o) ? 0.0f : o;
}

__device__ __forceinline__ int64_t mask_row_offset(const MaskedRows& p, int64_t row) {
  int64_t off[1];
  broadcast_offsets<1>(row, p.mask_rows, off);
  return off[0];
}

// X + Mask for VEC elements at e of a row; mr: the mask's row (nullptr: no mask).
template <class T, int VEC>
__device__ __forceinline__ void load_sum(const T* xr, const T* mr, bool along, int e, float (&v)[VEC]) {
  load_vec<T, VEC>(xr + e, v);
  if (mr == nullptr) return;
  if (along) {
    float m[VEC];
    load_vec<T, VEC>(mr + e, m);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] += m[j];
  } else {
    const float m = to_f(mr[0]);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] += m;
  }
}

// One row per `width` lanes (width > 0, a power of 2) or per block (width 0); each thread holds NV vectors
// of VEC elements: vector i of thread t is vector t + i * threads of the row. VEC > 1 needs len % VEC == 0
// and 16-byte aligned X, Mask and Y.
template <class T, int VEC, int NV>
__global__ void __launch_bounds__(VEC * NV > 16 ? 256 : 1024)
    masked_softmax_rows_kernel(const T* __restrict__ x, const T* __restrict__ mask, T* __restrict__ y,
                               MaskedRows p, int width) {
  __shared__ float sh[32];
  int64_t row;
  int t, nt;
  if (width > 0) {
    row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> (__ffs(width) - 1);
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
  const int64_t r = valid ? row : 0;
  const T* xr = x + r * len;
  const T* mr = p.has_mask ? mask + mask_row_offset(p, r) : nullptr;
  float v[NV][VEC];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (valid && e < len) {
      load_sum<T, VEC>(xr, mr, p.mask_along_row, e, v[i]);
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
        v[i][j] = __expf(v[i][j] - m);  // ex2.approx: within a few ulp for x <= m, 0 for -inf
        s += v[i][j];
      }
    }
  }
  s = row_reduce<SumOp>(s, width, sh);
  if (!valid) return;
  const float inv_s = 1.0f / s;  // inf for a fully masked row: 0 * inf = NaN, as 0 / 0 in the reference
  T* yr = y + row * len;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int e = (t + i * nt) * VEC;
    if (e < len) {
      float o[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = finish(v[i][j], inv_s, p.nan_to_zero);
      store_vec<T, VEC>(yr + e, o);
    }
  }
}

// Rows longer than the registers hold: a block a row, three passes over global memory (the row is in L2
// for the second and third).
template <class T>
__global__ void masked_softmax_loop_kernel(const T* __restrict__ x, const T* __restrict__ mask, T* __restrict__ y,
                                           MaskedRows p) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * p.len;
  const T* mr = p.has_mask ? mask + mask_row_offset(p, row) : nullptr;
  float m = -INFINITY;
  for (int e = threadIdx.x; e < p.len; e += blockDim.x) {
    float v[1];
    load_sum<T, 1>(xr, mr, p.mask_along_row, e, v);
    m = fmaxf(m, v[0]);
  }
  m = shift_of(row_reduce<MaxOp>(m, 0, sh));
  float s = 0.0f;
  for (int e = threadIdx.x; e < p.len; e += blockDim.x) {
    float v[1];
    load_sum<T, 1>(xr, mr, p.mask_along_row, e, v);
    s += __expf(v[0] - m);
  }
  s = row_reduce<SumOp>(s, 0, sh);
  const float inv_s = 1.0f / s;
  T* yr = y + row * p.len;
  for (int e = threadIdx.x; e < p.len; e += blockDim.x) {
    float v[1];
    load_sum<T, 1>(xr, mr, p.mask_along_row, e, v);
    yr[e] = from_f<T>(finish(__expf(v[0] - m), inv_s, p.nan_to_zero));
  }
}

template <class T, int VEC>
void launch_rows(const RowPlan& plan, const T* x, const T* mask, T* y, const MaskedRows& p, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>(plan.blocks);
  const int width = plan.path == RowPath::kGroup ? plan.width : 0;
  switch (plan.nv) {
#define KILN_MASKED_SOFTMAX_CASE(NV)                                                              \
  case NV:                                                                                         \
    if constexpr (VEC * NV <= 32)                                                                  \
      masked_softmax_rows_kernel<T, VEC, NV><<<blocks, plan.threads, 0, s>>>(x, mask, y, p, width); \
    break;
    KILN_MASKED_SOFTMAX_CASE(1) KILN_MASKED_SOFTMAX_CASE(2) KILN_MASKED_SOFTMAX_CASE(3)
    KILN_MASKED_SOFTMAX_CASE(4) KILN_MASKED_SOFTMAX_CASE(6) KILN_MASKED_SOFTMAX_CASE(8)
    KILN_MASKED_SOFTMAX_CASE(16) KILN_MASKED_SOFTMAX_CASE(32)
#undef KILN_MASKED_SOFTMAX_CASE
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Layer

const char* kPrefix = "CUDA kiln.MaskedSoftmax: ";

// Whether `mask` broadcasts to `x` leaving x's shape as it is (dims not known yet, -1, pass).
bool mask_fits(const Shape& x, const Shape& mask) {
  if (mask.size() > x.size()) return false;
  for (size_t i = 0; i < mask.size(); ++i) {
    const int64_t m = mask[i], d = x[x.size() - mask.size() + i];
    if (m != 1 && m >= 0 && d >= 0 && m != d) return false;
  }
  return true;
}

std::string check_masked_softmax(const LayerSpec& spec) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return std::string(kPrefix) + "input X is required";
  const TensorDesc& x = spec.inputs[0];
  if (!is_float_dtype(x.dtype))
    return kPrefix + ("X of type " + dtype_name(x.dtype) + " is not supported (float32, float16 and bfloat16 are)");
  const int64_t nz = spec.attr_int("nan_to_zero", 0);
  if (nz != 0 && nz != 1) return kPrefix + ("nan_to_zero must be 0 or 1, got " + std::to_string(nz));
  const int64_t axis = spec.attr_int("axis", -1);
  if (x.has_rank) {
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    if (rank == 0) return std::string(kPrefix) + "X must have rank >= 1, got a scalar";
    if (axis != -1 && axis != rank - 1)
      return kPrefix + ("axis must be the last axis, got " + std::to_string(axis) + " for rank " + std::to_string(rank));
    if (x.shape.back() >= (int64_t{1} << 31)) return std::string(kPrefix) + "rows of 2^31 elements or more";
  } else if (axis != -1) {
    return kPrefix + ("axis " + std::to_string(axis) + " on an input of unknown rank");
  }
  if (spec.inputs.size() > 2) return kPrefix + ("takes 2 inputs (X, Mask), got " + std::to_string(spec.inputs.size()));
  if (spec.inputs.size() == 2 && spec.inputs[1].present()) {
    const TensorDesc& m = spec.inputs[1];
    if (m.dtype != x.dtype) return kPrefix + ("Mask of type " + dtype_name(m.dtype) + " differs from X's " + dtype_name(x.dtype));
    if (x.has_rank && m.has_rank && !mask_fits(x.shape, m.shape))
      return kPrefix + ("Mask " + shape_to_string(m.shape) + " does not broadcast to X's shape " + shape_to_string(x.shape));
    if (x.has_rank && static_cast<int>(x.shape.size()) > kMaxRank + 1)
      return kPrefix + ("a Mask with X of rank " + std::to_string(x.shape.size()) + " (more than " +
                        std::to_string(kMaxRank + 1) + ")");
  }
  return "";
}

class MaskedSoftmaxLayer : public Layer {
 public:
  Status init(const LayerSpec& spec) {
    if (std::string why = check_masked_softmax(spec); !why.empty()) return Unsupported(why);
    const Shape& xs = spec.inputs[0].shape;
    dtype_ = spec.inputs[0].dtype;
    const int64_t len = xs.back();
    p_.len = static_cast<int>(len);
    p_.rows = len == 0 ? 0 : shape_numel(xs) / len;
    p_.nan_to_zero = spec.attr_int("nan_to_zero", 0) == 1;
    p_.has_mask = spec.inputs.size() == 2 && spec.inputs[1].present();
    if (p_.has_mask) {
      const Shape& ms = spec.inputs[1].shape;
      if (!mask_fits(xs, ms))
        return InvalidArgument(kPrefix + ("Mask " + shape_to_string(ms) + " does not broadcast to X's shape " +
                                          shape_to_string(xs)));
      // The mask's leading dims against X's rows; its last dim (if any) runs along the row or is 1.
      const int64_t mask_last = ms.empty() ? 1 : ms.back();
      p_.mask_along_row = mask_last != 1;
      const Shape x_rows(xs.begin(), xs.end() - 1);
      const Shape m_rows = ms.empty() ? Shape{} : Shape(ms.begin(), ms.end() - 1);
      if (!make_broadcast<1>(&m_rows, x_rows, &p_.mask_rows))
        return Unsupported(kPrefix + ("Mask " + shape_to_string(ms) + " against X " + shape_to_string(xs) +
                                      " has too many dims to broadcast"));
      for (int d = 0; d < kMaxRank; ++d) p_.mask_rows.strides[0][d] *= mask_last;
    }
    return OkStatus();
  }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    if (p_.rows == 0 || p_.len == 0) return OkStatus();
    const void* x = inputs[0].data;
    const void* mask = p_.has_mask ? inputs[1].data : nullptr;
    void* y = outputs[0].data;
    if (p_.len > kBlockMaxLen) {
      dispatch_float(dtype_, [&](auto tag) {
        using T = typename decltype(tag)::type;
        masked_softmax_loop_kernel<T><<<static_cast<unsigned>(p_.rows), 1024, 0, h.stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(mask), static_cast<T*>(y), p_);
      });
      return launch_status("masked_softmax_loop_kernel");
    }
    const int vec = dtype_ == DType::kFloat32 ? 4 : 8;
    // The mask is read in vectors only along a row (a one-value-a-row mask is read once a row).
    const bool use_vec = p_.len % vec == 0 && aligned16(x) && aligned16(y) &&
                         (!p_.has_mask || !p_.mask_along_row || aligned16(mask));
    const RowPlan plan = plan_rows(p_.rows, p_.len, use_vec ? vec : 1, /*split=*/false, 1);
    dispatch_float(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      constexpr int V = 16 / sizeof(T);
      const T* xt = static_cast<const T*>(x);
      const T* mt = static_cast<const T*>(mask);
      if (use_vec) launch_rows<T, V>(plan, xt, mt, static_cast<T*>(y), p_, h.stream);
      else launch_rows<T, 1>(plan, xt, mt, static_cast<T*>(y), p_, h.stream);
    });
    return launch_status("masked_softmax_rows_kernel");
  }

 private:
  DType dtype_ = DType::kFloat32;
  MaskedRows p_;
};

}  // namespace

void register_fused_attention_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "kiln.MaskedSoftmax";
  k.check = check_masked_softmax;
  k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.masked_softmax"}; };
  k.create = [](const LayerSpec& spec, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
    auto layer = std::make_unique<MaskedSoftmaxLayer>();
    KILN_RETURN_IF_ERROR(layer->init(spec));
    return std::unique_ptr<Layer>(std::move(layer));
  };
  k.lowers_to_fp16 = true;
  table.add(std::move(k));
}

}  // namespace kiln::cuda
