// CUDA layer of the optimizer's kiln.ChannelsLastPool (made by convert_conv_layout): MaxPool, AveragePool,
// GlobalAveragePool and GlobalMaxPool of an NHWC tensor, X [N, H, W, C] -> Y [N, OH, OW, C], so that the
// output of a channels-last conv is pooled where it lies instead of being transposed to NCHW and back
// (ResNet-50's stem pool and its final global average).
//
// Windowed pools: one thread per (n, oh, ow, channel group), looping over the window. A group is one
// 16-byte vector (8 float16/bfloat16 or 4 float32 channels) when C and the pointers allow it, otherwise one
// channel; neighbouring threads take neighbouring groups of one pixel, so each tap's loads are coalesced
// along C. The semantics are the NCHW kernels' (pool.cu) and the CPU reference's: max keeps the first
// strictly greater value in float32, so NaN never wins and a window of padding only gives -inf; average
// sums in float32 and divides by the real taps, or, with count_include_pad, by the taps inside the input
// and its pads (never those past the end padding that ceil_mode adds).
//
// Global pools: a block per (n, span of channel groups): threads along x over the groups (coalesced),
// along y over the H*W positions, then a tree over y in shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

enum class Mode { kMax, kAverage, kGlobalAverage, kGlobalMax };

bool mode_of(const std::string& s, Mode* m) {
  if (s == "max") *m = Mode::kMax;
  else if (s == "average") *m = Mode::kAverage;
  else if (s == "global_average") *m = Mode::kGlobalAverage;
  else if (s == "global_max") *m = Mode::kGlobalMax;
  else return false;
  return true;
}

bool is_global(Mode m) { return m == Mode::kGlobalAverage || m == Mode::kGlobalMax; }

// Dims are ints: create refuses sizes whose window arithmetic could pass 2^31; offsets are 64-bit.
struct Geom {
  int N = 0, H = 0, W = 0, C = 0, OH = 1, OW = 1;
  int kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int pt = 0, pl = 0, pb = 0, pr = 0;  // pads: top, left, bottom, right
};

template <bool MAX>
__device__ __forceinline__ float combine(float acc, float v) {
  if constexpr (MAX) return v > acc ? v : acc;  // NaN never wins, as in the reference
  else return acc + v;
}

// The taps of one window along one dim: [kb, ke) land inside the input, `counted` inside input or pads.
struct Taps {
  int start, kb, ke, counted;
};
__device__ __forceinline__ Taps taps_of(int o, int k, int s, int dil, int pad_begin, int pad_end, int in) {
  Taps t;
  t.start = o * s - pad_begin;
  // The reference stops at the first tap past the end padding (only ceil_mode's extra windows reach it).
  const int limit = in + pad_end - t.start;  // > 0: every window starts inside input or begin padding
  t.kb = t.start >= 0 ? 0 : (-t.start + dil - 1) / dil;
  t.ke = t.start >= in ? 0 : min(k, (in - t.start + dil - 1) / dil);
  t.counted = min(k, (limit + dil - 1) / dil);
  return t;
}

template <class T, int VEC, bool MAX>
__global__ void window_pool_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, Geom g, int64_t total,
                                        bool include_pad) {
  const int groups = g.C / VEC;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int cg = static_cast<int>(i % groups);
    int64_t r = i / groups;
    const int ow = static_cast<int>(r % g.OW);
    r /= g.OW;
    const int oh = static_cast<int>(r % g.OH);
    const int64_t n = r / g.OH;
    const Taps th = taps_of(oh, g.kh, g.sh, g.dh, g.pt, g.pb, g.H);
    const Taps tw = taps_of(ow, g.kw, g.sw, g.dw, g.pl, g.pr, g.W);
    float acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = MAX ? -INFINITY : 0.0f;
    const T* xn = x + n * g.H * g.W * g.C + static_cast<int64_t>(cg) * VEC;
    for (int a = th.kb; a < th.ke; ++a) {
      const T* row = xn + static_cast<int64_t>(th.start + a * g.dh) * g.W * g.C;
      for (int b = tw.kb; b < tw.ke; ++b) {
        float v[VEC];
        load_vec<T, VEC>(row + static_cast<int64_t>(tw.start + b * g.dw) * g.C, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = combine<MAX>(acc[j], v[j]);
      }
    }
    if constexpr (!MAX) {
      const int real = th.ke > th.kb && tw.ke > tw.kb ? (th.ke - th.kb) * (tw.ke - tw.kb) : 0;
      const int count = include_pad ? th.counted * tw.counted : real;
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = count > 0 ? acc[j] / static_cast<float>(count) : 0.0f;
    }
    store_vec<T, VEC>(y + i * VEC, acc);  // i is ((n * OH + oh) * OW + ow) * groups + cg
  }
}

// Block: blockDim.x groups by blockDim.y positions, blockDim.y a power of two (for the tree).
template <class T, int VEC, bool MAX>
__global__ void global_pool_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t batch, int groups,
                                        int64_t positions) {
  __shared__ float part[kThreads * VEC];
  const int cg = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  float* mine = part + (threadIdx.y * blockDim.x + threadIdx.x) * VEC;
  const int64_t pixel = static_cast<int64_t>(groups) * VEC;  // elements between neighbouring positions
  for (int64_t n = blockIdx.y; n < batch; n += gridDim.y) {
    float acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = MAX ? -INFINITY : 0.0f;
    if (cg < groups) {
      const T* xp = x + n * positions * pixel + static_cast<int64_t>(cg) * VEC;
      for (int64_t p = threadIdx.y; p < positions; p += blockDim.y) {
        float v[VEC];
        load_vec<T, VEC>(xp + p * pixel, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = combine<MAX>(acc[j], v[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) mine[j] = acc[j];
    __syncthreads();
    for (unsigned s = blockDim.y / 2; s > 0; s >>= 1) {
      if (threadIdx.y < s) {
        const float* other = mine + s * blockDim.x * VEC;
#pragma unroll
        for (int j = 0; j < VEC; ++j) mine[j] = combine<MAX>(mine[j], other[j]);
      }
      __syncthreads();
    }
    if (threadIdx.y == 0 && cg < groups) {
      float out[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        out[j] = MAX ? mine[j] : (positions > 0 ? mine[j] / static_cast<float>(positions) : 0.0f);
      store_vec<T, VEC>(y + (n * groups + cg) * VEC, out);
    }
    __syncthreads();  // part is reused by the next n
  }
}

int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p *= 2;
  return p;
}

class ChannelsLastPoolLayer : public Layer {
 public:
  ChannelsLastPoolLayer(Mode mode, Geom g, bool include_pad) : mode_(mode), g_(g), include_pad_(include_pad) {}

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (static_cast<int64_t>(g_.N) * g_.C * g_.OH * g_.OW == 0) return OkStatus();
    const bool ok = dispatch_float(in[0].dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* x = static_cast<const T*>(in[0].data);
      T* y = static_cast<T*>(out[0].data);
      if (g_.C % Pack<T>::kN == 0 && aligned16(x) && aligned16(y)) launch<T, Pack<T>::kN>(x, y, h.stream);
      else launch<T, 1>(x, y, h.stream);
    });
    if (!ok) return Unsupported("CUDA kiln.ChannelsLastPool: dtype " + dtype_name(in[0].dtype));
    return launch_status(is_global(mode_) ? "global_pool_nhwc" : "window_pool_nhwc");
  }

 private:
  template <class T, int VEC>
  void launch(const T* x, T* y, cudaStream_t stream) const {
    const int groups = g_.C / VEC;
    if (!is_global(mode_)) {
      const int64_t total = static_cast<int64_t>(g_.N) * g_.OH * g_.OW * groups;
      const unsigned grid = grid_for(total);
      if (mode_ == Mode::kMax)
        window_pool_nhwc_kernel<T, VEC, true><<<grid, kThreads, 0, stream>>>(x, y, g_, total, include_pad_);
      else
        window_pool_nhwc_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(x, y, g_, total, include_pad_);
      return;
    }
    const int64_t positions = static_cast<int64_t>(g_.H) * g_.W;
    const int bx = pow2_at_least(groups, 32);
    const int by = pow2_at_least(positions, kThreads / bx);
    const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(by));
    const dim3 grid(static_cast<unsigned>(ceil_div(groups, bx)), static_cast<unsigned>(std::min(g_.N, 65535)));
    if (mode_ == Mode::kGlobalMax)
      global_pool_nhwc_kernel<T, VEC, true><<<grid, block, 0, stream>>>(x, y, g_.N, groups, positions);
    else
      global_pool_nhwc_kernel<T, VEC, false><<<grid, block, 0, stream>>>(x, y, g_.N, groups, positions);
  }

  Mode mode_;
  Geom g_;
  bool include_pad_;
};

const char* const kOp = "CUDA kiln.ChannelsLastPool";

std::string check_channels_last_pool(const LayerSpec& spec) {
  const std::string op = kOp;
  if (spec.inputs.size() != 1 || !spec.inputs[0].present()) return op + " needs one input X";
  const DType dt = spec.inputs[0].dtype;
  if (!is_float_dtype(dt)) return op + " supports float32, float16 and bfloat16, got " + dtype_name(dt);
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.size() != 4)
    return op + " needs X of rank 4 ([N, H, W, C]), got rank " + std::to_string(spec.inputs[0].shape.size());
  Mode mode;
  const std::string m = spec.attr_string("mode", "");
  if (!mode_of(m, &mode))
    return op + ": mode '" + m + "' is not one of max, average, global_average, global_max";
  if (!is_global(mode)) {
    if (spec.attr_ints("kernel_shape").size() != 2) return op + " needs a 2-D kernel_shape";
    const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
    if (auto_pad != "NOTSET" && auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER" && auto_pad != "VALID" &&
        !auto_pad.empty())
      return op + ": auto_pad '" + auto_pad + "' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID";
  }
  if (spec.outputs.size() != 1) return op + " has one output Y, got " + std::to_string(spec.outputs.size());
  if (spec.outputs[0].present() && spec.outputs[0].dtype != dt)
    return op + ": the output must have the input's dtype " + dtype_name(dt);
  return "";
}

// The windows of a 2-D pool on X [N, H, W, C] as the CPU reference (conv_util.h window_geometry) and the
// NCHW layer (pool.cu) work them out: explicit pads or auto_pad, ceil_mode's last window kept only where it
// starts inside the input or its begin padding.
Status window_geometry(const LayerSpec& spec, Geom* g) {
  const std::string where = std::string(kOp) + " '" + spec.node->name + "': ";
  const std::vector<int64_t> kernel = spec.attr_ints("kernel_shape");
  std::vector<int64_t> strides = spec.attr_ints("strides", {1, 1});
  std::vector<int64_t> dilations = spec.attr_ints("dilations", {1, 1});
  std::vector<int64_t> pads = spec.attr_ints("pads", {0, 0, 0, 0});
  if (kernel.size() != 2 || strides.size() != 2 || dilations.size() != 2 || pads.size() != 4)
    return InvalidArgument(where + "kernel_shape, strides, dilations and pads must have 2, 2, 2 and 4 entries");
  const int64_t big = int64_t(1) << 30;
  for (size_t d = 0; d < 2; ++d)
    if (kernel[d] <= 0 || strides[d] <= 0 || dilations[d] <= 0 || pads[d] < 0 || pads[2 + d] < 0 ||
        kernel[d] > big || strides[d] > big || dilations[d] > big || pads[d] > big || pads[2 + d] > big)
      return InvalidArgument(where + "kernel_shape, strides and dilations must be positive, pads not negative, " +
                             "and none of them unreasonably large");
  if (kernel[0] * kernel[1] > INT_MAX) return Unsupported(where + "windows of 2^31 taps or more are not implemented");
  const bool ceil_mode = spec.attr_int("ceil_mode", 0) != 0;
  const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
  const int64_t in[2] = {g->H, g->W};
  int64_t out[2];
  for (size_t d = 0; d < 2; ++d) {
    const int64_t eff = dilations[d] * (kernel[d] - 1) + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      out[d] = (in[d] + strides[d] - 1) / strides[d];
      const int64_t total = std::max<int64_t>(0, (out[d] - 1) * strides[d] + eff - in[d]);
      const int64_t small = total / 2, large = total - small;
      pads[d] = auto_pad == "SAME_UPPER" ? small : large;
      pads[2 + d] = auto_pad == "SAME_UPPER" ? large : small;
      continue;
    }
    if (auto_pad == "VALID") pads[d] = pads[2 + d] = 0;
    const int64_t span = in[d] + pads[d] + pads[2 + d] - eff;
    if (span < 0)
      return InvalidArgument(where + "the window is larger than the padded input in spatial dim " + std::to_string(d));
    out[d] = ceil_mode ? (span + strides[d] - 1) / strides[d] + 1 : span / strides[d] + 1;
    if (ceil_mode && (out[d] - 1) * strides[d] >= in[d] + pads[d]) --out[d];
  }
  for (size_t d = 0; d < 2; ++d)
    if (out[d] * strides[d] + dilations[d] * kernel[d] + in[d] + pads[2 + d] > INT_MAX)
      return Unsupported(where + "window arithmetic past 2^31 is not implemented");
  g->OH = static_cast<int>(out[0]);
  g->OW = static_cast<int>(out[1]);
  g->kh = static_cast<int>(kernel[0]);
  g->kw = static_cast<int>(kernel[1]);
  g->sh = static_cast<int>(strides[0]);
  g->sw = static_cast<int>(strides[1]);
  g->dh = static_cast<int>(dilations[0]);
  g->dw = static_cast<int>(dilations[1]);
  g->pt = static_cast<int>(pads[0]);
  g->pl = static_cast<int>(pads[1]);
  g->pb = static_cast<int>(pads[2]);
  g->pr = static_cast<int>(pads[3]);
  return OkStatus();
}

Result<std::unique_ptr<Layer>> create_channels_last_pool(const LayerSpec& spec, const std::string&,
                                                         const CudaHandles&) {
  if (std::string why = check_channels_last_pool(spec); !why.empty()) return Unsupported(why);
  const std::string where = std::string(kOp) + " '" + spec.node->name + "': ";
  const Shape& x = spec.inputs[0].shape;
  for (int64_t d : x)
    if (d < 0 || d > INT_MAX) return Unsupported(where + "input dims must be known and below 2^31, got " + shape_to_string(x));
  Geom g;
  g.N = static_cast<int>(x[0]);
  g.H = static_cast<int>(x[1]);
  g.W = static_cast<int>(x[2]);
  g.C = static_cast<int>(x[3]);
  Mode mode;
  mode_of(spec.attr_string("mode", ""), &mode);
  if (!is_global(mode)) KILN_RETURN_IF_ERROR(window_geometry(spec, &g));
  const Shape want = {x[0], g.OH, g.OW, x[3]};
  if (spec.outputs[0].shape != want)
    return InvalidArgument(where + "output shape " + shape_to_string(spec.outputs[0].shape) +
                           " is not the pooled shape " + shape_to_string(want));
  return std::unique_ptr<Layer>(
      std::make_unique<ChannelsLastPoolLayer>(mode, g, spec.attr_int("count_include_pad", 0) != 0));
}

}  // namespace

void register_channels_last_pool_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "kiln.ChannelsLastPool";
  k.check = check_channels_last_pool;
  k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.pool.channels_last"}; };
  k.create = create_channels_last_pool;
  k.lowers_to_fp16 = true;
  table.add(std::move(k));
}

}  // namespace kiln::cuda
