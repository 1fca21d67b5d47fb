// CUDA layer of the optimizer's kiln.Relayout (made by fuse_relayout): Y = Pad(Cast(Transpose(X, perm), to),
// pads, 0) in one pass over X and Y, float32/float16/bfloat16 in and out (backends/relayout_spec.h).
//
// Two tactics:
//  cuda.relayout.channels_last: X [N, C, S...] -> Y [N, S..., Cp] (perm [0, 2, ..., r-1, 1]), the channels
//    padded at their end only, C <= 16: ResNet's float32 NCHW image to the float16 NHWC of 8 channels its stem
//    conv reads. Per image the spatial positions are contiguous for each channel, so this is a transpose of a
//    [C, P] matrix into [P, Cp]: a block reads a tile of 512 positions of every channel (coalesced along P,
//    each thread's loads issued together), keeps it in shared memory as float32 (conflict-free both ways), and
//    writes the tile's [512, Cp] output, which is contiguous: one 16-byte store a pixel when Cp elements are
//    16 bytes (8 float16 channels), 8 bytes for 4 float16 or 2 float32 channels, else element by element.
//  cuda.relayout.gather: any perm and pads: one thread per output element (coalesced writes), its coordinates
//    mapped back to X's element, or to a zero of the padding.
// Values convert through float32: exact for the widening, round-to-nearest-even for the narrowing, as the CPU
// reference's Cast does it, so both agree bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "backends/relayout_spec.h"

namespace kiln::cuda {
namespace {

const char* const kOp = "CUDA kiln.Relayout";
const char* const kChannelsLast = "cuda.relayout.channels_last";
const char* const kGather = "cuda.relayout.gather";

constexpr int kTileThreads = 256;
constexpr int kTilePositions = 512;  // a power of two: the tile's (channel, position) split is a shift
constexpr int kTileMaxChannels = 16;  // 32 KB of tile at most
constexpr int kLoadsInFlight = 8;     // loads a thread issues before it stores them to the tile

// Y[n, p, c] = c < C ? X[n, c, p] : 0 for p < P, c < Cp. A block per (image, tile of positions). CP > 0: Cp is
// CP and a pixel's CP outputs are written as one vector.
template <class TI, class TO, int CP>
__global__ void __launch_bounds__(kTileThreads)
    channels_last_kernel(const TI* __restrict__ x, TO* __restrict__ y, int64_t positions, int channels, int cp,
                         int64_t tiles) {
  extern __shared__ float tile[];  // [channels][kTilePositions]
  const int64_t n = blockIdx.x / tiles;
  const int64_t p0 = (static_cast<int64_t>(blockIdx.x) - n * tiles) * kTilePositions;
  const int count = static_cast<int>(positions - p0 < kTilePositions ? positions - p0 : kTilePositions);
  const TI* xs = x + n * channels * positions + p0;
  const int total = channels * kTilePositions;
  for (int j0 = 0; j0 < total; j0 += kTileThreads * kLoadsInFlight) {
    float v[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int j = j0 + u * kTileThreads + static_cast<int>(threadIdx.x);
      const int c = j / kTilePositions, p = j % kTilePositions;
      v[u] = j < total && p < count ? to_f(xs[c * positions + p]) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int j = j0 + u * kTileThreads + static_cast<int>(threadIdx.x);
      if (j < total) tile[j] = v[u];
    }
  }
  __syncthreads();
  TO* ys = y + (n * positions + p0) * cp;
  if constexpr (CP > 0) {
    for (int p = static_cast<int>(threadIdx.x); p < count; p += kTileThreads) {
      Vec<TO, CP> out;
#pragma unroll
      for (int c = 0; c < CP; ++c) out.v[c] = from_f<TO>(c < channels ? tile[c * kTilePositions + p] : 0.0f);
      reinterpret_cast<Vec<TO, CP>*>(ys)[p] = out;
    }
  } else {
    const int elements = count * cp;
    for (int e = static_cast<int>(threadIdx.x); e < elements; e += kTileThreads) {
      const int p = e / cp, c = e - p * cp;
      ys[e] = from_f<TO>(c < channels ? tile[c * kTilePositions + p] : 0.0f);
    }
  }
}

// Y's dims right-aligned in kRelayoutMaxRank slots, each with what it reads of X.
template <class I>
struct GatherDims {
  int rank = 0;
  I out[kRelayoutMaxRank];     // Y's dims
  I in[kRelayoutMaxRank];      // X's dim that Y's axis reads (X's perm[i])
  I before[kRelayoutMaxRank];  // the begin pad
  I stride[kRelayoutMaxRank];  // X's stride of that axis
};

template <class TI, class TO, class I>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const TI* __restrict__ x, TO* __restrict__ y, I total, GatherDims<I> d) {
  const I step = static_cast<I>(gridDim.x) * blockDim.x;
  for (I o = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += step) {
    I rest = o, src = 0;
    bool outside = false;
#pragma unroll
    for (int k = kRelayoutMaxRank - 1; k >= 0; --k) {
      if (k < kRelayoutMaxRank - d.rank) break;
      const I q = rest / d.out[k];
      const I c = rest - q * d.out[k] - d.before[k];
      rest = q;
      const bool pad = c < 0 || c >= d.in[k];
      outside |= pad;
      src += pad ? 0 : c * d.stride[k];
    }
    y[o] = from_f<TO>(outside ? 0.0f : to_f(x[src]));
  }
}

// The channels-last tactic's problem, when the relayout is one: X [N, C, S...] -> [N, S..., Cp].
struct ChannelsLast {
  int64_t images = 0, positions = 0;
  int channels = 0, cp = 0;
};

bool channels_last_problem(const Shape& x, const RelayoutAttrs& a, ChannelsLast* out) {
  const size_t rank = a.perm.size();
  if (rank < 3 || a.perm[0] != 0 || a.perm[rank - 1] != 1) return false;
  for (size_t i = 1; i + 1 < rank; ++i)
    if (a.perm[i] != static_cast<int64_t>(i + 1)) return false;
  for (size_t i = 0; i < 2 * rank; ++i)
    if (a.pads[i] != 0 && i != 2 * rank - 1) return false;  // only the channels' end is padded
  if (x.size() != rank || x[1] < 1 || x[1] > kTileMaxChannels) return false;
  if (out != nullptr) {
    out->images = x[0];
    out->positions = 1;
    for (size_t i = 2; i < rank; ++i) out->positions *= x[i];
    out->channels = static_cast<int>(x[1]);
    out->cp = static_cast<int>(x[1] + a.pads[2 * rank - 1]);
  }
  return true;
}

std::string check_relayout(const LayerSpec& spec) {
  const std::string op = kOp;
  if (spec.inputs.size() != 1 || !spec.inputs[0].present()) return op + " needs one input X";
  const TensorDesc& x = spec.inputs[0];
  if (!is_float_dtype(x.dtype)) return op + " supports float32, float16 and bfloat16, got " + dtype_name(x.dtype);
  RelayoutAttrs a;
  const int64_t rank = x.has_rank ? static_cast<int64_t>(x.shape.size()) : -1;
  if (std::string why = read_relayout_attrs(*spec.node, rank, x.dtype, &a); !why.empty()) return op + ": " + why;
  if (!is_float_dtype(a.to)) return op + " converts to float32, float16 and bfloat16, not " + dtype_name(a.to);
  if (spec.outputs.size() != 1) return op + " has one output Y, got " + std::to_string(spec.outputs.size());
  if (spec.outputs[0].present() && spec.outputs[0].dtype != a.to)
    return op + ": the output must have dtype " + dtype_name(a.to) + " (attribute to)";
  return "";
}

std::vector<std::string> relayout_tactics(const LayerSpec& spec) {
  if (spec.inputs.empty()) return {kGather};
  const TensorDesc& x = spec.inputs[0];
  RelayoutAttrs a;
  if (x.has_rank && read_relayout_attrs(*spec.node, static_cast<int64_t>(x.shape.size()), x.dtype, &a).empty() &&
      channels_last_problem(x.shape, a, nullptr))
    return {kChannelsLast, kGather};
  return {kGather};
}

class RelayoutLayer : public Layer {
 public:
  RelayoutLayer(DType from, DType to, int64_t total) : from_(from), to_(to), total_(total) {}

  static Result<std::unique_ptr<Layer>> make(const LayerSpec& spec, const std::string& tactic) {
    if (std::string why = check_relayout(spec); !why.empty()) return Unsupported(why);
    const std::string where = std::string(kOp) + " '" + spec.node->name + "': ";
    const TensorDesc& x = spec.inputs[0];
    if (!x.is_static()) return InvalidArgument(where + "X's shape must be known, got " + shape_to_string(x.shape));
    RelayoutAttrs a;
    (void)read_relayout_attrs(*spec.node, static_cast<int64_t>(x.shape.size()), x.dtype, &a);
    const Shape out = relayout_shape(x.shape, a);
    if (out != spec.outputs[0].shape)
      return InvalidArgument(where + "output shape " + shape_to_string(spec.outputs[0].shape) +
                             " is not the relayout's " + shape_to_string(out));
    auto layer = std::make_unique<RelayoutLayer>(x.dtype, a.to, shape_numel(out));
    if (tactic == kChannelsLast) {
      if (!channels_last_problem(x.shape, a, &layer->cl_))
        return Unsupported(where + "tactic " + tactic + " needs X [N, C <= 16, S...] to [N, S..., C + end pad]");
      layer->channels_last_ = true;
      if (layer->cl_.images * ceil_div(layer->cl_.positions, kTilePositions) > INT32_MAX)
        return Unsupported(where + "more than 2^31 tiles");
      return std::unique_ptr<Layer>(std::move(layer));
    }
    if (tactic != kGather && tactic != "default") return InvalidArgument(where + "unknown tactic '" + tactic + "'");
    const size_t rank = a.perm.size();
    const int64_t limit = (int64_t{1} << 31) - (int64_t{1} << 24);  // room for the grid stride
    layer->small_index_ = layer->total_ < limit && shape_numel(x.shape) < limit;
    const std::vector<int64_t> strides = [&] {
      std::vector<int64_t> s(rank, 1);
      for (size_t i = rank - 1; i-- > 0;) s[i] = s[i + 1] * x.shape[i + 1];
      return s;
    }();
    layer->dims_.rank = static_cast<int>(rank);
    for (size_t k = 0; k < static_cast<size_t>(kRelayoutMaxRank); ++k) {
      const size_t off = kRelayoutMaxRank - rank;
      const bool used = k >= off;
      const size_t i = k - off;
      layer->dims_.out[k] = used ? out[i] : 1;
      layer->dims_.in[k] = used ? x.shape[a.perm[i]] : 1;
      layer->dims_.before[k] = used ? a.pads[i] : 0;
      layer->dims_.stride[k] = used ? strides[a.perm[i]] : 0;
    }
    return std::unique_ptr<Layer>(std::move(layer));
  }

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (total_ == 0) return OkStatus();
    bool ok = false;
    dispatch_float(from_, [&](auto ti) {
      ok = dispatch_float(to_, [&](auto to) {
        using TI = typename decltype(ti)::type;
        using TO = typename decltype(to)::type;
        const TI* x = static_cast<const TI*>(in[0].data);
        TO* y = static_cast<TO*>(out[0].data);
        if (channels_last_) launch_channels_last(x, y, h.stream);
        else if (small_index_) launch_gather<TI, TO, int32_t>(x, y, h.stream);
        else launch_gather<TI, TO, int64_t>(x, y, h.stream);
      });
    });
    if (!ok) return Unsupported(std::string(kOp) + ": dtypes " + dtype_name(from_) + " -> " + dtype_name(to_));
    return launch_status(channels_last_ ? "relayout channels_last_kernel" : "relayout gather_kernel");
  }

 private:
  template <class TI, class TO>
  void launch_channels_last(const TI* x, TO* y, cudaStream_t stream) const {
    const int64_t tiles = ceil_div(cl_.positions, kTilePositions);
    const unsigned grid = static_cast<unsigned>(cl_.images * tiles);
    const size_t smem = static_cast<size_t>(cl_.channels) * kTilePositions * sizeof(float);
    // A pixel as one vector store when its Cp outputs are 8 or 16 bytes and Y is aligned to them (Y's pixels
    // then are too).
    const size_t pixel = static_cast<size_t>(cl_.cp) * sizeof(TO);
    const bool vec = (pixel == 8 || pixel == 16) && aligned_to(y, pixel);
    if (vec && cl_.cp == 8)
      channels_last_kernel<TI, TO, 8><<<grid, kTileThreads, smem, stream>>>(x, y, cl_.positions, cl_.channels, 8, tiles);
    else if (vec && cl_.cp == 4)
      channels_last_kernel<TI, TO, 4><<<grid, kTileThreads, smem, stream>>>(x, y, cl_.positions, cl_.channels, 4, tiles);
    else if (vec && cl_.cp == 2)
      channels_last_kernel<TI, TO, 2><<<grid, kTileThreads, smem, stream>>>(x, y, cl_.positions, cl_.channels, 2, tiles);
    else
      channels_last_kernel<TI, TO, 0><<<grid, kTileThreads, smem, stream>>>(x, y, cl_.positions, cl_.channels, cl_.cp, tiles);
  }

  template <class TI, class TO, class I>
  void launch_gather(const TI* x, TO* y, cudaStream_t stream) const {
    GatherDims<I> d;
    d.rank = dims_.rank;
    for (int k = 0; k < kRelayoutMaxRank; ++k) {
      d.out[k] = static_cast<I>(dims_.out[k]);
      d.in[k] = static_cast<I>(dims_.in[k]);
      d.before[k] = static_cast<I>(dims_.before[k]);
      d.stride[k] = static_cast<I>(dims_.stride[k]);
    }
    gather_kernel<TI, TO, I><<<grid_for(total_), kThreads, 0, stream>>>(x, y, static_cast<I>(total_), d);
  }

  DType from_, to_;
  int64_t total_;
  bool channels_last_ = false;
  ChannelsLast cl_;
  bool small_index_ = true;
  GatherDims<int64_t> dims_;
};

}  // namespace

void register_relayout_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "kiln.Relayout";
  k.check = check_relayout;
  k.tactics = relayout_tactics;
  k.create = [](const LayerSpec& spec, const std::string& tactic, const CudaHandles&) {
    return RelayoutLayer::make(spec, tactic);
  };
  k.lowers_to_fp16 = false;  // its output type is its attribute `to`, as Cast's
  table.add(std::move(k));
}

}  // namespace kiln::cuda
