// CUDA layers: MaxPool and AveragePool (1-D to 3-D windows, with the optional Indices output of MaxPool),
// GlobalAveragePool and GlobalMaxPool.
//
// Windowed pools run one thread per spatial output position, looping over the (n, c) planes four at a time:
// the window's bounds are worked out once per thread, and every tap issues four independent loads. Spatial
// dims are right-aligned in three slots (missing leading dims have size 1), so one kernel serves 1-D, 2-D
// and 3-D; per dim, the range of window taps that land inside the input is computed in closed form instead
// of testing every tap. The semantics follow the
// CPU reference (backends/cpu/ops/pool.cc): taps in the end padding that ceil_mode adds are never counted;
// MaxPool keeps the first strictly greater value, so NaN never wins and an all-padding window gives -inf
// (the type's lowest for integers) with index 0.
//
// Global pools reduce each (n, c) plane: 8 to 32 lanes per plane for small planes ([N, 2048, 7, 7] is 49
// values), one block per plane with 16-byte loads for large ones.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

constexpr int kMaxSpatial = 3;

template <class T>
constexpr bool kIsFloat = std::is_same_v<T, float> || std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Max compares floats in float32 (exact for fp16 and bf16) and integers in their own type.
template <class T>
using MaxAcc = std::conditional_t<kIsFloat<T>, float, T>;

template <class T>
__device__ __forceinline__ MaxAcc<T> max_value(T v) {
  if constexpr (kIsFloat<T>) return to_f(v);
  else return v;
}
template <class T>
__device__ __forceinline__ MaxAcc<T> max_lowest() {
  if constexpr (kIsFloat<T>) return -INFINITY;
  else if constexpr (std::is_same_v<T, int8_t>) return INT8_MIN;
  else if constexpr (std::is_same_v<T, int32_t>) return INT32_MIN;
  else if constexpr (std::is_same_v<T, int64_t>) return INT64_MIN;
  else return 0;  // unsigned
}
template <class T>
__device__ __forceinline__ T max_store(MaxAcc<T> v) {
  if constexpr (kIsFloat<T>) return from_f<T>(v);
  else return v;
}

bool max_pool_type(DType t) {
  return is_float_dtype(t) || t == DType::kInt8 || t == DType::kUInt8 || t == DType::kInt32 || t == DType::kInt64;
}

template <class F>
bool dispatch_max_pool(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kInt8: f(Tag<int8_t>{}); return true;
    case DType::kUInt8: f(Tag<uint8_t>{}); return true;
    case DType::kInt32: f(Tag<int32_t>{}); return true;
    case DType::kInt64: f(Tag<int64_t>{}); return true;
    default: return dispatch_float(dtype, f);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Windowed pools

// Spatial geometry, right-aligned in kMaxSpatial slots; 32-bit because one plane is refused past 2^31.
struct PoolGeom {
  int in[kMaxSpatial], out[kMaxSpatial], k[kMaxSpatial], s[kMaxSpatial], dil[kMaxSpatial];
  int pb[kMaxSpatial], pe[kMaxSpatial];
  int in_size = 1, out_size = 1;  // per plane
};

enum class PoolKind { kMax, kAverage };

// The taps of one window along one dim: [kb, ke) land inside the input, `counted` are inside input or pads.
struct Taps {
  int start, kb, ke, counted;
};
template <bool DIL1>
__device__ __forceinline__ Taps taps_of(int o, int d, const PoolGeom& g) {
  Taps t;
  const int K = g.k[d], in = g.in[d];
  t.start = o * g.s[d] - g.pb[d];
  // The reference stops at the first tap past the end padding (only ceil_mode's extra windows reach it).
  const int limit = in + g.pe[d] - t.start;  // > 0: every window starts inside input or begin padding
  if constexpr (DIL1) {
    t.kb = max(0, -t.start);
    t.ke = min(K, in - t.start);
    t.counted = min(K, limit);
  } else {
    const int dil = g.dil[d];
    t.kb = t.start >= 0 ? 0 : (-t.start + dil - 1) / dil;
    t.ke = t.start >= in ? 0 : min(K, (in - t.start + dil - 1) / dil);
    t.counted = min(K, (limit + dil - 1) / dil);
  }
  return t;
}

constexpr int kPlanesAtOnce = 4;

// One thread per spatial output position, looping over the (n, c) planes: the window's bounds are worked
// out once, and neighbouring threads read and write neighbouring elements of a plane. Each pass takes
// kPlanesAtOnce planes, so that every tap issues that many independent loads.
template <class T, PoolKind KIND, bool DIL1, class I>
__global__ void window_pool_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ indices,
                                   I planes, PoolGeom g, bool include_pad, bool column_major) {
  constexpr int NP = kPlanesAtOnce;
  const int o = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (o >= g.out_size) return;
  const int o2 = o % g.out[2], r = o / g.out[2];
  const int o1 = r % g.out[1], o0 = r / g.out[1];
  const Taps t0 = taps_of<DIL1>(o0, 0, g), t1 = taps_of<DIL1>(o1, 1, g), t2 = taps_of<DIL1>(o2, 2, g);
  const int d0 = DIL1 ? 1 : g.dil[0], d1 = DIL1 ? 1 : g.dil[1], d2 = DIL1 ? 1 : g.dil[2];
  const bool empty = t0.kb >= t0.ke || t1.kb >= t1.ke || t2.kb >= t2.ke;
  const int count = include_pad ? t0.counted * t1.counted * t2.counted
                    : empty     ? 0
                                : (t0.ke - t0.kb) * (t1.ke - t1.kb) * (t2.ke - t2.kb);
  // MaxPool's index where no tap beats the initial value: the first real tap, or 0 for a window of padding.
  const int first = empty ? 0 : ((t0.start + t0.kb * d0) * g.in[1] + t1.start + t1.kb * d1) * g.in[2] + t2.start + t2.kb * d2;
  const I step = static_cast<I>(gridDim.y) * blockDim.y;
  for (I p = static_cast<I>(blockIdx.y) * blockDim.y + threadIdx.y; p < planes; p += step * NP) {
    const T* xs[NP];
#pragma unroll
    for (int q = 0; q < NP; ++q) {
      const I pq = p + step * q;
      xs[q] = x + (pq < planes ? pq : p) * static_cast<I>(g.in_size);  // past the end: reread plane p, unused
    }
    MaxAcc<T> best[NP];
    int arg[NP];
    float sum[NP];
#pragma unroll
    for (int q = 0; q < NP; ++q) {
      best[q] = max_lowest<T>();
      arg[q] = first;
      sum[q] = 0.0f;
    }
    for (int k0 = t0.kb; k0 < t0.ke; ++k0) {
      const int r0 = (t0.start + k0 * d0) * g.in[1];
      for (int k1 = t1.kb; k1 < t1.ke; ++k1) {
        const int r1 = (r0 + t1.start + k1 * d1) * g.in[2] + t2.start;
        for (int k2 = t2.kb; k2 < t2.ke; ++k2) {
          const int off = r1 + k2 * d2;
#pragma unroll
          for (int q = 0; q < NP; ++q) {
            if constexpr (KIND == PoolKind::kMax) {
              const MaxAcc<T> v = max_value(xs[q][off]);
              if (v > best[q]) {
                best[q] = v;
                arg[q] = off;
              }
            } else {
              sum[q] += to_f(xs[q][off]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < NP; ++q) {
      const I pq = p + step * q;
      if (pq >= planes) break;
      const I out_at = pq * static_cast<I>(g.out_size) + static_cast<I>(o);
      if constexpr (KIND == PoolKind::kMax) {
        y[out_at] = max_store<T>(best[q]);
        if (indices != nullptr) {
          int64_t idx = arg[q];
          if (column_major) {
            const int c2 = arg[q] % g.in[2], rest = arg[q] / g.in[2];
            const int c1 = rest % g.in[1], c0 = rest / g.in[1];
            idx = c0 + static_cast<int64_t>(c1) * g.in[0] + static_cast<int64_t>(c2) * g.in[0] * g.in[1];
          }
          indices[out_at] = static_cast<int64_t>(pq) * g.in_size + idx;
        }
      } else {
        y[out_at] = from_f<T>(count > 0 ? sum[q] / static_cast<float>(count) : 0.0f);
      }
    }
  }
}

class WindowPoolLayer : public Layer {
 public:
  WindowPoolLayer(PoolKind kind, PoolGeom g, int64_t planes, bool include_pad, bool column_major)
      : kind_(kind), g_(g), planes_(planes), include_pad_(include_pad), column_major_(column_major) {
    dil1_ = g.dil[0] == 1 && g.dil[1] == 1 && g.dil[2] == 1;
    const int64_t limit = (int64_t(1) << 31) - (int64_t(1) << 24);  // room for the grid stride
    small_index_ = planes * g.out_size < limit && planes * g.in_size < limit;
  }

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (planes_ * g_.out_size == 0) return OkStatus();
    int64_t* indices = out.size() > 1 ? static_cast<int64_t*>(out[1].data) : nullptr;
    const dim3 block = block_for(g_.out_size);
    const dim3 grid = grid_for_planes(g_.out_size, planes_, block);
    auto go = [&](auto tag, auto kind_tag) {
      using T = typename decltype(tag)::type;
      constexpr PoolKind K = decltype(kind_tag)::value;
      const T* xp = static_cast<const T*>(in[0].data);
      T* yp = static_cast<T*>(out[0].data);
      if (small_index_ && dil1_)
        window_pool_kernel<T, K, true, uint32_t><<<grid, block, 0, h.stream>>>(
            xp, yp, indices, static_cast<uint32_t>(planes_), g_, include_pad_, column_major_);
      else if (small_index_)
        window_pool_kernel<T, K, false, uint32_t><<<grid, block, 0, h.stream>>>(
            xp, yp, indices, static_cast<uint32_t>(planes_), g_, include_pad_, column_major_);
      else
        window_pool_kernel<T, K, false, uint64_t><<<grid, block, 0, h.stream>>>(
            xp, yp, indices, static_cast<uint64_t>(planes_), g_, include_pad_, column_major_);
    };
    bool ok;
    if (kind_ == PoolKind::kMax) {
      ok = dispatch_max_pool(in[0].dtype,
                             [&](auto tag) { go(tag, std::integral_constant<PoolKind, PoolKind::kMax>{}); });
    } else {
      ok = dispatch_float(in[0].dtype,
                          [&](auto tag) { go(tag, std::integral_constant<PoolKind, PoolKind::kAverage>{}); });
    }
    if (!ok) return Unsupported("CUDA pool: dtype " + dtype_name(in[0].dtype));
    return launch_status(kind_ == PoolKind::kMax ? "max_pool" : "average_pool");
  }

 private:
  PoolKind kind_;
  PoolGeom g_;
  int64_t planes_;
  bool include_pad_, column_major_;
  bool dil1_ = true, small_index_ = true;
};

std::string ints_str(const std::vector<int64_t>& v) { return shape_to_string(v); }

// The window geometry of the CPU reference (conv_util.h window_geometry), for concrete input dims.
Status pool_geometry(const LayerSpec& spec, const Shape& x, PoolGeom* g, Shape* out_shape) {
  const std::string& op = spec.node->op_type;
  const std::string where = "CUDA " + op + " '" + spec.node->name + "': ";
  const std::vector<int64_t> kernel = spec.attr_ints("kernel_shape");
  const size_t nd = kernel.size();
  if (nd == 0 || nd > kMaxSpatial) return Unsupported(where + "only 1-D, 2-D and 3-D windows are implemented");
  if (x.size() != nd + 2)
    return InvalidArgument(where + "input " + shape_to_string(x) + " does not match kernel_shape " + ints_str(kernel));
  std::vector<int64_t> strides = spec.attr_ints("strides", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> dilations = spec.attr_ints("dilations", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> pads = spec.attr_ints("pads", std::vector<int64_t>(2 * nd, 0));
  if (strides.size() != nd || dilations.size() != nd || pads.size() != 2 * nd)
    return InvalidArgument(where + "strides, dilations and pads must have " + std::to_string(nd) + ", " +
                           std::to_string(nd) + " and " + std::to_string(2 * nd) + " entries");
  const int64_t big = int64_t(1) << 30;
  for (size_t d = 0; d < nd; ++d) {
    if (kernel[d] <= 0 || strides[d] <= 0 || dilations[d] <= 0 || pads[d] < 0 || pads[nd + d] < 0)
      return InvalidArgument(where + "kernel_shape, strides and dilations must be positive and pads not negative");
    if (kernel[d] > big || strides[d] > big || dilations[d] > big || pads[d] > big || pads[nd + d] > big ||
        x[2 + d] > big)
      return InvalidArgument(where + "kernel, stride, dilation, pad or input size is unreasonably large");
  }
  const bool ceil_mode = spec.attr_int("ceil_mode", 0) != 0;
  const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
  std::vector<int64_t> out(nd);
  for (size_t d = 0; d < nd; ++d) {
    const int64_t in = x[2 + d], eff = dilations[d] * (kernel[d] - 1) + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      out[d] = (in + strides[d] - 1) / strides[d];
      const int64_t total = std::max<int64_t>(0, (out[d] - 1) * strides[d] + eff - in);
      const int64_t small = total / 2, large = total - small;
      pads[d] = auto_pad == "SAME_UPPER" ? small : large;
      pads[nd + d] = auto_pad == "SAME_UPPER" ? large : small;
      continue;
    }
    if (auto_pad == "VALID") pads[d] = pads[nd + d] = 0;
    else if (auto_pad != "NOTSET" && !auto_pad.empty())
      return InvalidArgument(where + "auto_pad '" + auto_pad + "' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID");
    const int64_t span = in + pads[d] + pads[nd + d] - eff;
    if (span < 0)
      return InvalidArgument(where + "the window is larger than the padded input in spatial dim " + std::to_string(d));
    out[d] = ceil_mode ? (span + strides[d] - 1) / strides[d] + 1 : span / strides[d] + 1;
    if (ceil_mode && (out[d] - 1) * strides[d] >= in + pads[d]) --out[d];
  }
  *out_shape = {x[0], x[1]};
  out_shape->insert(out_shape->end(), out.begin(), out.end());
  int64_t in_size = 1, out_size = 1;
  for (size_t d = 0; d < nd; ++d) {
    in_size *= x[2 + d];
    out_size *= out[d];
    if (in_size > std::numeric_limits<int32_t>::max() || out_size > std::numeric_limits<int32_t>::max())
      return Unsupported(where + "a spatial plane of more than 2^31 elements is not implemented");
  }
  // The window index arithmetic runs in 32 bits: positions stay within [-pads, in + pads + window).
  for (size_t d = 0; d < nd; ++d)
    if (out[d] * strides[d] + dilations[d] * kernel[d] + x[2 + d] > std::numeric_limits<int32_t>::max())
      return Unsupported(where + "window arithmetic past 2^31 is not implemented");
  const size_t off = kMaxSpatial - nd;
  for (size_t d = 0; d < kMaxSpatial; ++d) {
    const bool real = d >= off;
    g->in[d] = real ? static_cast<int>(x[2 + d - off]) : 1;
    g->out[d] = real ? static_cast<int>(out[d - off]) : 1;
    g->k[d] = real ? static_cast<int>(kernel[d - off]) : 1;
    g->s[d] = real ? static_cast<int>(strides[d - off]) : 1;
    g->dil[d] = real ? static_cast<int>(dilations[d - off]) : 1;
    g->pb[d] = real ? static_cast<int>(pads[d - off]) : 0;
    g->pe[d] = real ? static_cast<int>(pads[nd + d - off]) : 0;
  }
  g->in_size = static_cast<int>(in_size);
  g->out_size = static_cast<int>(out_size);
  return OkStatus();
}

std::string check_window_pool(const LayerSpec& spec) {
  const std::string& op = spec.node->op_type;
  const bool is_max = op == "MaxPool";
  if (spec.inputs.empty() || !spec.inputs[0].present()) return "CUDA " + op + " needs input X";
  const DType dt = spec.inputs[0].dtype;
  if (is_max ? !max_pool_type(dt) : !is_float_dtype(dt))
    return "CUDA " + op + " supports float32, float16, bfloat16" + (is_max ? ", int8, uint8, int32 and int64" : "") +
           ", got " + dtype_name(dt);
  if (!spec.has_attr("kernel_shape")) return "CUDA " + op + " needs attribute kernel_shape";
  const size_t nd = spec.attr_ints("kernel_shape").size();
  if (nd == 0 || nd > kMaxSpatial)
    return "CUDA " + op + ": " + std::to_string(nd) + "-D windows are not implemented (1-D to 3-D are)";
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.size() != nd + 2)
    return "CUDA " + op + ": input rank " + std::to_string(spec.inputs[0].shape.size()) + " does not match a " +
           std::to_string(nd) + "-D kernel_shape";
  const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER" && auto_pad != "VALID" &&
      !auto_pad.empty())
    return "CUDA " + op + ": auto_pad '" + auto_pad + "' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID";
  if (is_max) {
    const int64_t order = spec.attr_int("storage_order", 0);
    if (order != 0 && order != 1) return "CUDA MaxPool: storage_order " + std::to_string(order) + " is not 0 or 1";
    if (spec.outputs.size() > 1 && spec.outputs[1].present() && spec.outputs[1].dtype != DType::kInt64)
      return "CUDA MaxPool: Indices must be int64, got " + dtype_name(spec.outputs[1].dtype);
  }
  if (spec.outputs.empty()) return "CUDA " + op + " needs output Y";
  if (spec.outputs[0].present() && spec.outputs[0].dtype != dt)
    return "CUDA " + op + ": the output must have the input's dtype " + dtype_name(dt);
  return "";
}

Result<std::unique_ptr<Layer>> create_window_pool(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const std::string& op = spec.node->op_type;
  if (std::string why = check_window_pool(spec); !why.empty()) return Unsupported(why);
  const Shape& x = spec.inputs[0].shape;
  PoolGeom g;
  Shape out_shape;
  KILN_RETURN_IF_ERROR(pool_geometry(spec, x, &g, &out_shape));
  if (spec.outputs[0].shape != out_shape)
    return InvalidArgument("CUDA " + op + " '" + spec.node->name + "': output shape " +
                           shape_to_string(spec.outputs[0].shape) + " is not the pooled shape " +
                           shape_to_string(out_shape));
  const bool is_max = op == "MaxPool";
  return std::unique_ptr<Layer>(std::make_unique<WindowPoolLayer>(
      is_max ? PoolKind::kMax : PoolKind::kAverage, g, x[0] * x[1], spec.attr_int("count_include_pad", 0) != 0,
      is_max && spec.attr_int("storage_order", 0) == 1));
}

// ---------------------------------------------------------------------------------------------------------
// Global pools

template <bool MAX>
__device__ __forceinline__ float combine(float acc, float v) {
  if constexpr (MAX) return v > acc ? v : acc;  // NaN never wins, as in the reference
  else return acc + v;
}

// Reduces over aligned groups of W lanes (every lane of the warp takes part).
template <bool MAX, int W = 32>
__device__ __forceinline__ float warp_reduce(float v) {
#pragma unroll
  for (int off = W / 2; off > 0; off >>= 1) v = combine<MAX>(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

template <class T, bool MAX>
__device__ __forceinline__ T global_result(float acc, int64_t size) {
  if constexpr (MAX) return from_f<T>(acc);
  else return from_f<T>(size > 0 ? acc / static_cast<float>(size) : 0.0f);
}

// Small planes: W lanes per plane (32 / W planes per warp), so that [N, 2048, 7, 7] keeps most lanes busy
// and several loads in flight per lane.
template <class T, bool MAX, int W>
__global__ void global_pool_warp_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t planes, int64_t size) {
  constexpr int kGroups = 32 / W;
  const int lane = threadIdx.x & 31, sub = lane / W, sublane = lane % W;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  // The loop runs alike for the whole warp: the shuffles need every lane.
  for (int64_t base = warp * kGroups; base < planes; base += warps * kGroups) {
    const int64_t p = base + sub;
    float acc = MAX ? -INFINITY : 0.0f;
    if (p < planes) {
      const T* xp = x + p * size;
#pragma unroll 4
      for (int64_t i = sublane; i < size; i += W) acc = combine<MAX>(acc, to_f(xp[i]));
    }
    acc = warp_reduce<MAX, W>(acc);
    if (sublane == 0 && p < planes) y[p] = global_result<T, MAX>(acc, size);
  }
}

// One block per plane; 16-byte loads when every plane starts 16-byte aligned.
template <class T, bool MAX>
__global__ void global_pool_block_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t planes, int64_t size,
                                         bool vec) {
  __shared__ float partial[kThreads / 32];
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const T* xp = x + p * size;
    float acc = MAX ? -INFINITY : 0.0f;
    int64_t start = 0;
    if (vec) {
      constexpr int V = Pack<T>::kN;
      const int64_t nv = size / V;
      const Pack<T>* pp = reinterpret_cast<const Pack<T>*>(xp);
      for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        const Pack<T> a = pp[i];
#pragma unroll
        for (int k = 0; k < V; ++k) acc = combine<MAX>(acc, to_f(a.v[k]));
      }
      start = nv * V;
    }
    for (int64_t i = start + threadIdx.x; i < size; i += blockDim.x) acc = combine<MAX>(acc, to_f(xp[i]));
    acc = warp_reduce<MAX>(acc);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : (MAX ? -INFINITY : 0.0f);
      acc = warp_reduce<MAX>(acc);
      if (lane == 0) y[p] = global_result<T, MAX>(acc, size);
    }
    __syncthreads();  // partial is reused by the next plane
  }
}

// Planes of up to this many elements take the warp kernel: a block would leave most of its threads idle.
constexpr int64_t kWarpPlaneLimit = 2048;

class GlobalPoolLayer : public Layer {
 public:
  GlobalPoolLayer(bool is_max, int64_t planes, int64_t size) : max_(is_max), planes_(planes), size_(size) {}

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (planes_ == 0) return OkStatus();
    const bool ok = dispatch_float(in[0].dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* x = static_cast<const T*>(in[0].data);
      T* y = static_cast<T*>(out[0].data);
      if (size_ <= kWarpPlaneLimit) {
        auto launch = [&](auto width) {
          constexpr int W = decltype(width)::value;
          const unsigned grid = grid_for(planes_ * W);
          if (max_) global_pool_warp_kernel<T, true, W><<<grid, kThreads, 0, h.stream>>>(x, y, planes_, size_);
          else global_pool_warp_kernel<T, false, W><<<grid, kThreads, 0, h.stream>>>(x, y, planes_, size_);
        };
        if (size_ <= 32) launch(std::integral_constant<int, 8>{});
        else if (size_ <= 128) launch(std::integral_constant<int, 16>{});
        else launch(std::integral_constant<int, 32>{});
      } else {
        const bool vec = (reinterpret_cast<uintptr_t>(x) & 15) == 0 && (size_ * sizeof(T)) % 16 == 0;
        const int64_t cap = static_cast<int64_t>(sm_count()) * 16;
        const unsigned grid = static_cast<unsigned>(std::min<int64_t>(planes_, cap));
        if (max_) global_pool_block_kernel<T, true><<<grid, kThreads, 0, h.stream>>>(x, y, planes_, size_, vec);
        else global_pool_block_kernel<T, false><<<grid, kThreads, 0, h.stream>>>(x, y, planes_, size_, vec);
      }
    });
    if (!ok) return Unsupported("CUDA global pool: dtype " + dtype_name(in[0].dtype));
    return launch_status(max_ ? "global_max_pool" : "global_average_pool");
  }

 private:
  bool max_;
  int64_t planes_, size_;
};

std::string check_global_pool(const LayerSpec& spec) {
  const std::string& op = spec.node->op_type;
  if (spec.inputs.empty() || !spec.inputs[0].present()) return "CUDA " + op + " needs input X";
  const DType dt = spec.inputs[0].dtype;
  if (!is_float_dtype(dt)) return "CUDA " + op + " supports float32, float16 and bfloat16, got " + dtype_name(dt);
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.size() < 2)
    return "CUDA " + op + " needs an input of rank >= 2 ([N, C, ...]), got rank " +
           std::to_string(spec.inputs[0].shape.size());
  if (spec.outputs.empty()) return "CUDA " + op + " needs output Y";
  if (spec.outputs[0].present() && spec.outputs[0].dtype != dt)
    return "CUDA " + op + ": the output must have the input's dtype " + dtype_name(dt);
  return "";
}

Result<std::unique_ptr<Layer>> create_global_pool(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  if (std::string why = check_global_pool(spec); !why.empty()) return Unsupported(why);
  const Shape& x = spec.inputs[0].shape;
  int64_t size = 1;
  for (size_t d = 2; d < x.size(); ++d) size *= x[d];
  return std::unique_ptr<Layer>(
      std::make_unique<GlobalPoolLayer>(spec.node->op_type == "GlobalMaxPool", x[0] * x[1], size));
}

}  // namespace

void register_pool_layers(LayerTable& table) {
  for (const char* op : {"MaxPool", "AveragePool"}) {
    LayerKind k;
    k.op_type = op;
    k.check = check_window_pool;
    k.tactics = [op](const LayerSpec&) {
      return std::vector<std::string>{std::string(op) == "MaxPool" ? "cuda.pool.max" : "cuda.pool.average"};
    };
    k.create = create_window_pool;
    table.add(std::move(k));
  }
  for (const char* op : {"GlobalMaxPool", "GlobalAveragePool"}) {
    LayerKind k;
    k.op_type = op;
    k.check = check_global_pool;
    k.tactics = [op](const LayerSpec&) {
      return std::vector<std::string>{std::string(op) == "GlobalMaxPool" ? "cuda.pool.global_max"
                                                                         : "cuda.pool.global_average"};
    };
    k.create = create_global_pool;
    table.add(std::move(k));
  }
}

}  // namespace kiln::cuda
