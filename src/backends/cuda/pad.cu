// CUDA layer: Pad (opsets 2-23), modes constant, reflect, edge and wrap; negative pads crop.
//
// Pad only moves elements, so the kernel moves them by size: any dtype of 1, 2, 4 or 8 bytes. Each thread
// maps one output position's coordinates back to the input (numpy's rules, as the CPU reference's
// pad_source) and copies it for every plane of the leading unpadded axes. Neighbouring axes that are not
// padded merge into one; when the innermost merged axis is not padded, runs of its elements move as one
// unit of up to 16 bytes. Pads and axes must be known when the layer is created (they fix the output
// shape); the constant value may be computed: the kernel reads it from device memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "core/cast.h"

namespace kiln::cuda {
namespace {

constexpr int kMaxDims = 8;

enum class PadMode { kConstant, kReflect, kEdge, kWrap };

bool parse_mode(const std::string& s, PadMode* m) {
  if (s == "constant") *m = PadMode::kConstant;
  else if (s == "reflect") *m = PadMode::kReflect;
  else if (s == "edge") *m = PadMode::kEdge;
  else if (s == "wrap") *m = PadMode::kWrap;
  else return false;
  return true;
}

// The collapsed dims, right-aligned in kMaxDims slots; sizes in units.
template <class I>
struct PadDims {
  int rank = 0;
  I out[kMaxDims];
  I in[kMaxDims];
  I before[kMaxDims];  // negative: cropped at the start
  I stride[kMaxDims];  // input stride
};

// The constant value's bytes, repeated to fill a unit (when it is known at build time).
struct FillBytes {
  unsigned char b[16];
};

template <class U>
__device__ __forceinline__ U make_fill(const unsigned char* dev, int elem_size, const FillBytes& host) {
  union {
    U u;
    unsigned char b[sizeof(U)];
  } f;
#pragma unroll
  for (int k = 0; k < static_cast<int>(sizeof(U)); ++k) f.b[k] = dev != nullptr ? dev[k % elem_size] : host.b[k];
  return f.u;
}

// Maps an output coordinate (less the begin pad) to the input's along an axis of n: numpy's rules, as the
// reference's pad_source. Sets `outside` where constant mode pads.
template <class I>
__device__ __forceinline__ I source_coord(I c, I n, PadMode mode, bool& outside) {
  if (c >= 0 && c < n) return c;
  if (mode == PadMode::kConstant || n == 0) {
    outside = true;
    return 0;
  }
  if (mode == PadMode::kEdge) return c < 0 ? 0 : n - 1;
  if (mode == PadMode::kWrap) return ((c % n) + n) % n;
  if (n == 1) return 0;
  // reflect: mirrored about the edges without repeating them, period 2 * (n - 1).
  const I period = 2 * (n - 1);
  c = ((c % period) + period) % period;
  return c >= n ? period - c : c;
}

// One thread per position of the padded dims (all but a leading run of unpadded ones), looping over the
// planes of that leading run: the source offset is worked out once, and neighbouring threads read and write
// neighbouring units.
template <class U, class I>
__global__ void pad_kernel(const U* __restrict__ x, U* __restrict__ y, I inner, I planes, I in_plane,
                           PadDims<I> dims, PadMode mode, const unsigned char* __restrict__ fill_dev, int elem_size,
                           FillBytes fill_host) {
  I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inner) return;
  const I out_i = i;
  I src = 0;
  bool outside = false;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < kMaxDims - dims.rank) break;
    I c = i;
    if (d > kMaxDims - dims.rank) {  // the outermost dim needs no division
      const I q = i / dims.out[d];
      c = i - q * dims.out[d];
      i = q;
    }
    src += source_coord<I>(c - dims.before[d], dims.in[d], mode, outside) * dims.stride[d];
  }
  const U fill = make_fill<U>(fill_dev, elem_size, fill_host);
  const I step = static_cast<I>(gridDim.y) * blockDim.y;
  for (I p = static_cast<I>(blockIdx.y) * blockDim.y + threadIdx.y; p < planes; p += step)
    y[p * inner + out_i] = outside ? fill : x[p * in_plane + src];
}

struct DimPlan {
  int64_t in, out, before;
};

std::string check_pad(const LayerSpec& spec) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return "CUDA Pad needs input data";
  const DType dt = spec.inputs[0].dtype;
  const size_t es = dt == DType::kString ? 0 : dtype_size(dt);
  if (dt == DType::kString || dt == DType::kComplex64 || dt == DType::kComplex128 ||
      (es != 1 && es != 2 && es != 4 && es != 8))
    return "CUDA Pad: dtype " + dtype_name(dt) + " is not supported";
  PadMode mode;
  const std::string m = spec.attr_string("mode", "constant");
  if (!parse_mode(m, &mode)) return "CUDA Pad: mode '" + m + "' is not one of constant, reflect, edge, wrap";
  if (spec.outputs.empty()) return "CUDA Pad needs output Y";
  if (spec.outputs[0].present() && spec.outputs[0].dtype != dt)
    return "CUDA Pad: the output must have the input's dtype " + dtype_name(dt);
  if (spec.opset < 11) {
    if (!spec.has_attr("pads") && !spec.has_attr("paddings")) return "CUDA Pad needs attribute pads";
    return "";
  }
  std::vector<int64_t> v;
  if (spec.inputs.size() < 2 || !spec.inputs[1].present()) return "CUDA Pad needs input pads";
  if (!spec.constant_ints(1, &v)) return "CUDA Pad: pads must be a constant int64 input (they fix the output shape)";
  if (spec.inputs.size() > 3 && spec.inputs[3].present() && !spec.constant_ints(3, &v))
    return "CUDA Pad: axes must be a constant integer input";
  if (spec.inputs.size() > 2 && spec.inputs[2].present()) {
    const TensorDesc& c = spec.inputs[2];
    if (c.dtype != dt)
      return "CUDA Pad: constant_value must have the input's dtype " + dtype_name(dt) + ", got " + dtype_name(c.dtype);
    if (c.is_static() && shape_numel(c.shape) != 1) return "CUDA Pad: constant_value must be one element";
  }
  return "";
}

class PadLayer : public Layer {
 public:
  static Result<std::unique_ptr<Layer>> make(const LayerSpec& spec) {
    if (std::string why = check_pad(spec); !why.empty()) return Unsupported(why);
    const std::string where = "CUDA Pad '" + spec.node->name + "': ";
    const Shape& x = spec.inputs[0].shape;
    const int64_t rank = static_cast<int64_t>(x.size());
    std::unique_ptr<PadLayer> layer(new PadLayer());
    layer->dtype_ = spec.inputs[0].dtype;
    (void)parse_mode(spec.attr_string("mode", "constant"), &layer->mode_);
    const size_t es = dtype_size(layer->dtype_);

    std::vector<int64_t> pads, axes;
    std::memset(&layer->fill_, 0, sizeof(layer->fill_));
    if (spec.opset < 11) {
      pads = spec.has_attr("pads") ? spec.attr_ints("pads") : spec.attr_ints("paddings");
      KILN_ASSIGN_OR_RETURN(Tensor fill, cast_tensor(Tensor::scalar<double>(DType::kFloat64, spec.attr_float("value", 0.0f)),
                                                     layer->dtype_));
      for (size_t k = 0; k < sizeof(layer->fill_.b); ++k)
        layer->fill_.b[k] = static_cast<const unsigned char*>(fill.raw_data())[k % es];
    } else {
      (void)spec.constant_ints(1, &pads);
      if (spec.inputs.size() > 3 && spec.inputs[3].present()) (void)spec.constant_ints(3, &axes);
      layer->fill_from_input_ = spec.inputs.size() > 2 && spec.inputs[2].present();
    }
    if (axes.empty())
      for (int64_t a = 0; a < rank; ++a) axes.push_back(a);
    std::vector<bool> seen(rank, false);
    for (int64_t& a : axes) {
      if (a < -rank || a >= rank) return InvalidArgument(where + "axis " + std::to_string(a) + " is out of range");
      if (a < 0) a += rank;
      if (seen[a]) return InvalidArgument(where + "axes has a repeated axis");
      seen[a] = true;
    }
    const size_t n = axes.size();
    if (pads.size() != 2 * n)
      return InvalidArgument(where + "pads " + shape_to_string(pads) + " must have 2 * " + std::to_string(n) + " values");
    std::vector<int64_t> before(rank, 0);
    Shape out_shape = x;
    for (int64_t p : pads)
      if (p > (int64_t(1) << 40) || p < -(int64_t(1) << 40)) return InvalidArgument(where + "pads are too large");
    for (size_t i = 0; i < n; ++i) {
      before[axes[i]] = pads[i];
      out_shape[axes[i]] += pads[i] + pads[n + i];
      if (out_shape[axes[i]] < 0) return InvalidArgument(where + "pads " + shape_to_string(pads) + " crop more than the input has");
      if (x[axes[i]] == 0 && out_shape[axes[i]] > 0 && layer->mode_ != PadMode::kConstant)
        return InvalidArgument(where + "cannot pad an empty axis in mode '" + spec.attr_string("mode", "constant") + "'");
    }
    if (out_shape != spec.outputs[0].shape)
      return InvalidArgument(where + "output shape " + shape_to_string(spec.outputs[0].shape) +
                             " is not the padded shape " + shape_to_string(out_shape));
    layer->total_ = shape_numel(out_shape);
    layer->out_bytes_ = static_cast<size_t>(layer->total_) * es;
    if (layer->total_ == 0) return std::unique_ptr<Layer>(std::move(layer));

    // Merge runs of unpadded axes (and drop unpadded axes of size 1): the index arithmetic then runs over
    // as few dims as the padding pattern allows.
    std::vector<DimPlan> dims;
    bool any_pad = false;
    for (int64_t d = 0; d < rank; ++d) {
      const bool unpadded = before[d] == 0 && out_shape[d] == x[d];
      any_pad |= !unpadded;
      if (unpadded && x[d] == 1) continue;
      if (unpadded && !dims.empty() && dims.back().before == 0 && dims.back().in == dims.back().out) {
        dims.back().in *= x[d];
        dims.back().out *= x[d];
        continue;
      }
      dims.push_back(DimPlan{x[d], out_shape[d], before[d]});
    }
    layer->copy_ = !any_pad;
    if (layer->copy_) return std::unique_ptr<Layer>(std::move(layer));
    if (static_cast<int>(dims.size()) > kMaxDims)
      return Unsupported(where + "more than " + std::to_string(kMaxDims) + " padded dims after merging is not implemented");
    layer->dims_ = dims;
    layer->in_numel_ = shape_numel(x);
    const int64_t limit = (int64_t(1) << 31) - (int64_t(1) << 24);  // room for the grid stride
    layer->small_index_ = layer->total_ < limit && shape_numel(x) < limit;
    for (const DimPlan& dp : dims) layer->small_index_ &= dp.before < limit && dp.before > -limit;
    return std::unique_ptr<Layer>(std::move(layer));
  }

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (total_ == 0) return OkStatus();
    if (copy_) {
      KILN_CUDA_TRY(cudaMemcpyAsync(out[0].data, in[0].data, out_bytes_, cudaMemcpyDeviceToDevice, h.stream));
      return OkStatus();
    }
    const size_t es = dtype_size(dtype_);
    // The unit: a run of `group` elements of the innermost dim when it is not padded and everything aligns.
    int64_t group = 1;
    const DimPlan& last = dims_.back();
    if (last.before == 0 && last.in == last.out) {
      const uintptr_t addr = reinterpret_cast<uintptr_t>(in[0].data) | reinterpret_cast<uintptr_t>(out[0].data);
      for (int64_t g = static_cast<int64_t>(16 / es); g > 1; g /= 2) {
        if (last.in % g == 0 && addr % (g * es) == 0) {
          group = g;
          break;
        }
      }
    }
    const unsigned char* fill_dev =
        fill_from_input_ && in.size() > 2 ? static_cast<const unsigned char*>(in[2].data) : nullptr;
    const int64_t units = total_ / group;
    const size_t unit_bytes = es * static_cast<size_t>(group);
    // A leading unpadded dim becomes the planes the kernel loops over.
    const bool lead_planes = dims_.size() > 1 && dims_.front().before == 0 && dims_.front().in == dims_.front().out;
    const int64_t planes = lead_planes ? dims_.front().in : 1;
    const int64_t inner = units / planes;
    const int64_t in_plane = lead_planes ? in_numel_ / group / planes : 0;  // in units
    auto go = [&](auto utag, auto itag) {
      using U = typename decltype(utag)::type;
      using I = typename decltype(itag)::type;
      PadDims<I> d;
      d.rank = static_cast<int>(dims_.size()) - (lead_planes ? 1 : 0);
      const int off = kMaxDims - d.rank;
      const int first = lead_planes ? 1 : 0;
      int64_t stride = 1;
      for (int k = kMaxDims - 1; k >= 0; --k) {
        if (k < off) {
          d.out[k] = d.in[k] = 1;
          d.before[k] = 0;
          d.stride[k] = 0;
          continue;
        }
        const DimPlan& p = dims_[k - off + first];
        const int64_t div = k == kMaxDims - 1 ? group : 1;  // the innermost dim counts units
        d.out[k] = static_cast<I>(p.out / div);
        d.in[k] = static_cast<I>(p.in / div);
        d.before[k] = static_cast<I>(p.before / div);
        d.stride[k] = static_cast<I>(stride);
        stride *= p.in / div;
      }
      const dim3 block = block_for(inner);
      const dim3 grid = grid_for_planes(inner, planes, block);
      pad_kernel<U, I><<<grid, block, 0, h.stream>>>(static_cast<const U*>(in[0].data), static_cast<U*>(out[0].data),
                                                      static_cast<I>(inner), static_cast<I>(planes),
                                                      static_cast<I>(in_plane), d, mode_, fill_dev,
                                                      static_cast<int>(es), fill_);
    };
    auto by_index = [&](auto utag) {
      if (small_index_) go(utag, Tag<int32_t>{});
      else go(utag, Tag<int64_t>{});
    };
    switch (unit_bytes) {
      case 1: by_index(Tag<uint8_t>{}); break;
      case 2: by_index(Tag<uint16_t>{}); break;
      case 4: by_index(Tag<uint32_t>{}); break;
      case 8: by_index(Tag<uint64_t>{}); break;
      case 16: by_index(Tag<uint4>{}); break;
      default: return Unsupported("CUDA Pad: dtype " + dtype_name(dtype_));
    }
    return launch_status("pad");
  }

 private:
  PadLayer() = default;

  DType dtype_ = DType::kUndefined;
  PadMode mode_ = PadMode::kConstant;
  int64_t total_ = 0, in_numel_ = 0;
  size_t out_bytes_ = 0;
  bool copy_ = false;
  bool small_index_ = true;
  bool fill_from_input_ = false;
  FillBytes fill_{};
  std::vector<DimPlan> dims_;
};

}  // namespace

void register_pad_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "Pad";
  k.check = check_pad;
  k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.pad.gather"}; };
  k.create = [](const LayerSpec& spec, const std::string&, const CudaHandles&) { return PadLayer::make(spec); };
  table.add(std::move(k));
}

}  // namespace kiln::cuda
