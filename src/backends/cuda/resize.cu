// CUDA layers: Resize (opsets 10-19) and the deprecated Upsample (opsets 7 and 9), modes nearest and linear
// (no antialiasing), every coordinate_transformation_mode.
//
// The source coordinates depend only on the output index along each resized axis, so create() computes, per
// resized axis, a table of taps (source indices and weights) on the host, in double, with the CPU
// reference's own arithmetic (backends/cpu/ops/resize.cc, which follows onnx's op_resize.py step for step):
// the GPU then agrees with it on every rounding tie of nearest_mode and every clamped edge. The kernels only
// look the taps up: nearest moves elements by size (any dtype), linear forms the tensor product of its
// axes' two-tap weights (bilinear, trilinear, ...) in float32. Runs of axes that are not resized are merged
// into one dim, so NCHW and NHWC images both come down to three or four dims, and a leading run (N x C of
// NCHW) becomes planes that each thread loops over with its taps in registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "core/cast.h"

namespace kiln::cuda {
namespace {

constexpr int kMaxDims = 8;
constexpr int kMaxLinearAxes = 4;  // 16 taps per output element
constexpr int64_t kMaxResizeElements = int64_t{1} << 30;  // the reference's bound

// Nearest moves elements: any numeric type the reference resizes (it refuses bool and strings).
bool nearest_type(DType t) {
  switch (t) {
    case DType::kFloat32: case DType::kFloat16: case DType::kBFloat16: case DType::kFloat64:
    case DType::kInt8: case DType::kUInt8: case DType::kInt16: case DType::kUInt16:
    case DType::kInt32: case DType::kUInt32: case DType::kInt64: case DType::kUInt64:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Parameters and per-axis plans, as the reference reads them

enum class Mode { kNearest, kLinear };
enum class NearestMode { kRoundPreferFloor, kRoundPreferCeil, kFloor, kCeil, kSimple };
enum class CoordMode { kHalfPixel, kHalfPixelSymmetric, kPytorchHalfPixel, kAlignCorners, kAsymmetric, kTfCropAndResize,
                       kTfHalfPixelForNn };

struct ResizeParams {
  Mode mode = Mode::kNearest;
  NearestMode nearest_mode = NearestMode::kRoundPreferFloor;
  CoordMode coord = CoordMode::kHalfPixel;
  bool exclude_outside = false;
  double extrapolation_value = 0.0;
};

bool legacy(const LayerSpec& spec) { return spec.node->op_type == "Upsample" || spec.opset < 11; }

// "" or why the CUDA layer cannot run these attributes.
std::string parse_params(const LayerSpec& spec, ResizeParams* p) {
  const std::string op = "CUDA " + spec.node->op_type;
  const std::string mode = spec.attr_string("mode", "nearest");
  if (mode == "nearest") p->mode = Mode::kNearest;
  else if (mode == "linear" || mode == "bilinear") p->mode = Mode::kLinear;
  else if (mode == "cubic" || mode == "bicubic") return op + ": mode '" + mode + "' is not implemented (nearest and linear are)";
  else return op + ": unknown mode '" + mode + "'";
  if (legacy(spec)) {
    // Upsample and Resize-10 predate the coordinate attributes: asymmetric mapping, legacy nearest rounding.
    p->coord = CoordMode::kAsymmetric;
    p->nearest_mode = NearestMode::kSimple;
    return "";
  }
  const std::string coord = spec.attr_string("coordinate_transformation_mode", "half_pixel");
  if (coord == "half_pixel") p->coord = CoordMode::kHalfPixel;
  else if (coord == "half_pixel_symmetric") p->coord = CoordMode::kHalfPixelSymmetric;
  else if (coord == "pytorch_half_pixel") p->coord = CoordMode::kPytorchHalfPixel;
  else if (coord == "align_corners") p->coord = CoordMode::kAlignCorners;
  else if (coord == "asymmetric") p->coord = CoordMode::kAsymmetric;
  else if (coord == "tf_crop_and_resize") p->coord = CoordMode::kTfCropAndResize;
  else if (coord == "tf_half_pixel_for_nn") p->coord = CoordMode::kTfHalfPixelForNn;
  else return op + ": unknown coordinate_transformation_mode '" + coord + "'";
  const std::string nm = spec.attr_string("nearest_mode", "round_prefer_floor");
  if (nm == "round_prefer_floor") p->nearest_mode = NearestMode::kRoundPreferFloor;
  else if (nm == "round_prefer_ceil") p->nearest_mode = NearestMode::kRoundPreferCeil;
  else if (nm == "floor") p->nearest_mode = NearestMode::kFloor;
  else if (nm == "ceil") p->nearest_mode = NearestMode::kCeil;
  else return op + ": unknown nearest_mode '" + nm + "'";
  p->exclude_outside = spec.attr_int("exclude_outside", 0) != 0;
  p->extrapolation_value = spec.attr_float("extrapolation_value", 0.0f);
  if (spec.attr_int("antialias", 0) != 0) return op + ": antialias is not implemented";
  const std::string policy = spec.attr_string("keep_aspect_ratio_policy", "stretch");
  if (policy != "stretch" && policy != "not_larger" && policy != "not_smaller")
    return op + ": unknown keep_aspect_ratio_policy '" + policy + "'";
  return "";
}

// Whether an optional input holds values: kAbsent when omitted or known empty (Resize-11 takes an empty
// scales next to sizes), kConstant, kDynamic when computed and non-empty, kUnknown when computed of unknown size.
enum class InputState { kAbsent, kConstant, kDynamic, kUnknown };
InputState input_state(const LayerSpec& spec, size_t i) {
  if (i >= spec.inputs.size() || !spec.inputs[i].present()) return InputState::kAbsent;
  const TensorDesc& d = spec.inputs[i];
  if (d.constant != nullptr) return d.constant->numel() > 0 ? InputState::kConstant : InputState::kAbsent;
  if (d.is_static()) return shape_numel(d.shape) > 0 ? InputState::kDynamic : InputState::kAbsent;
  return InputState::kUnknown;
}

std::string check_resize(const LayerSpec& spec) {
  const std::string& type = spec.node->op_type;
  const std::string op = "CUDA " + type;
  if (spec.inputs.empty() || !spec.inputs[0].present()) return op + " needs input X";
  ResizeParams p;
  if (std::string why = parse_params(spec, &p); !why.empty()) return why;
  const DType dt = spec.inputs[0].dtype;
  if (p.mode == Mode::kLinear && !is_float_dtype(dt))
    return op + ": mode linear supports float32, float16 and bfloat16, got " + dtype_name(dt);
  if (!nearest_type(dt)) return op + ": dtype " + dtype_name(dt) + " is not supported";
  if (spec.outputs.empty()) return op + " needs output Y";
  if (spec.outputs[0].present() && spec.outputs[0].dtype != dt)
    return op + ": the output must have the input's dtype " + dtype_name(dt);
  if (type == "Upsample") {
    if (input_state(spec, 1) == InputState::kAbsent) {
      const ir::Attribute* a = spec.node->attr("scales");
      if (a == nullptr || a->floats.empty()) return op + " needs scales (attribute or input)";
    } else if (input_state(spec, 1) != InputState::kConstant) {
      return op + ": scales must be a constant input";
    }
    return "";
  }
  if (spec.opset < 11) {
    if (input_state(spec, 1) != InputState::kConstant) return op + "-10: scales must be a constant input";
    return "";
  }
  const InputState scales = input_state(spec, 2), sizes = input_state(spec, 3);
  if (scales == InputState::kDynamic || scales == InputState::kUnknown)
    return op + ": scales must be a constant input (the coordinate mapping is computed at build time)";
  if (scales == InputState::kAbsent) {
    if (sizes == InputState::kAbsent) return op + ": one of scales and sizes must be given";
    if (sizes == InputState::kUnknown) return op + ": sizes must be a constant input or of known length";
    // Computed sizes: with 'stretch' the output shape is the sizes, known when the layer is created.
    if (sizes == InputState::kDynamic && spec.attr_string("keep_aspect_ratio_policy", "stretch") != "stretch")
      return op + ": keep_aspect_ratio_policy '" + spec.attr_string("keep_aspect_ratio_policy", "") +
             "' needs constant sizes";
  } else if (sizes != InputState::kAbsent) {
    return op + ": exactly one of scales and sizes must be given";
  }
  if (p.coord == CoordMode::kTfCropAndResize && input_state(spec, 1) != InputState::kConstant)
    return op + ": tf_crop_and_resize needs a constant roi";
  return "";
}

struct AxisPlan {
  int64_t out = 0;
  double scale = 1.0;
  double roi_start = 0.0, roi_end = 1.0;
};

std::vector<double> constant_doubles(const Tensor& t) {
  auto d = cast_tensor(t, DType::kFloat64);
  if (!d.ok()) return {};
  return std::vector<double>(d->data<double>(), d->data<double>() + d->numel());
}

Status scaled_size(const std::string& where, double s, int64_t dim, int64_t axis, int64_t* out) {
  if (!(s > 0) || !std::isfinite(s))
    return InvalidArgument(where + "scale " + std::to_string(s) + " on axis " + std::to_string(axis) +
                           " must be positive and finite");
  const double v = std::floor(s * static_cast<double>(dim));
  if (v > static_cast<double>(kMaxResizeElements)) return InvalidArgument(where + "a scale makes an axis too large");
  *out = static_cast<int64_t>(v);
  return OkStatus();
}

// The per-axis output sizes, scales and rois of the reference's resize_kernel / upsample_kernel.
Status make_plans(const LayerSpec& spec, const ResizeParams& p, std::vector<AxisPlan>* plans_out) {
  const std::string where = "CUDA " + spec.node->op_type + " '" + spec.node->name + "': ";
  const Shape& x = spec.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(x.size());
  std::vector<AxisPlan> plans(rank);
  for (int64_t d = 0; d < rank; ++d) plans[d].out = x[d];

  if (legacy(spec)) {
    std::vector<double> scales;
    if (input_state(spec, 1) == InputState::kConstant) scales = constant_doubles(*spec.inputs[1].constant);
    else if (const ir::Attribute* a = spec.node->attr("scales")) scales.assign(a->floats.begin(), a->floats.end());
    if (static_cast<int64_t>(scales.size()) != rank)
      return InvalidArgument(where + "scales has " + std::to_string(scales.size()) + " values for input of rank " +
                             std::to_string(rank));
    for (int64_t d = 0; d < rank; ++d) {
      if (spec.node->op_type == "Upsample" && !(scales[d] >= 1))
        return InvalidArgument(where + "Upsample scales must be >= 1");
      plans[d].scale = scales[d];
      KILN_RETURN_IF_ERROR(scaled_size(where, scales[d], x[d], d, &plans[d].out));
    }
    *plans_out = plans;
    return OkStatus();
  }

  std::vector<int64_t> axes;
  if (spec.has_attr("axes")) {
    for (int64_t a : spec.attr_ints("axes")) {
      if (a < -rank || a >= rank) return InvalidArgument(where + "axes value " + std::to_string(a) + " is out of range");
      const int64_t na = a < 0 ? a + rank : a;
      if (std::find(axes.begin(), axes.end(), na) != axes.end()) return InvalidArgument(where + "axes has a repeated axis");
      axes.push_back(na);
    }
  } else {
    for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
  }
  const size_t naxes = axes.size();

  if (p.coord == CoordMode::kTfCropAndResize) {
    const std::vector<double> roi = constant_doubles(*spec.inputs[1].constant);
    if (roi.size() != 2 * naxes)
      return InvalidArgument(where + "roi has " + std::to_string(roi.size()) + " values, expected " +
                             std::to_string(2 * naxes));
    for (size_t i = 0; i < naxes; ++i) {
      plans[axes[i]].roi_start = roi[i];
      plans[axes[i]].roi_end = roi[naxes + i];
    }
  }

  if (input_state(spec, 2) == InputState::kConstant) {
    const std::vector<double> scales = constant_doubles(*spec.inputs[2].constant);
    if (scales.size() != naxes)
      return InvalidArgument(where + "scales has " + std::to_string(scales.size()) + " values, expected " +
                             std::to_string(naxes));
    for (size_t i = 0; i < naxes; ++i) {
      plans[axes[i]].scale = scales[i];
      KILN_RETURN_IF_ERROR(scaled_size(where, scales[i], x[axes[i]], axes[i], &plans[axes[i]].out));
    }
    *plans_out = plans;
    return OkStatus();
  }

  std::vector<int64_t> sizes;
  if (!spec.constant_ints(3, &sizes)) {
    // Computed sizes ('stretch' only, as check() made sure): the output shape is the sizes.
    for (int64_t a : axes) sizes.push_back(spec.outputs[0].shape[a]);
  }
  if (sizes.size() != naxes)
    return InvalidArgument(where + "sizes has " + std::to_string(sizes.size()) + " values, expected " +
                           std::to_string(naxes));
  for (size_t i = 0; i < naxes; ++i) {
    if (sizes[i] < 0 || sizes[i] > kMaxResizeElements) return InvalidArgument(where + "a sizes value is out of range");
    if (x[axes[i]] == 0 && sizes[i] != 0) return InvalidArgument(where + "cannot resize an empty axis to a non-empty size");
  }
  const std::string policy = spec.attr_string("keep_aspect_ratio_policy", "stretch");
  if (policy == "stretch") {
    for (size_t i = 0; i < naxes; ++i) {
      const int64_t in = x[axes[i]];
      plans[axes[i]].out = sizes[i];
      plans[axes[i]].scale = in == 0 ? 1.0 : static_cast<double>(sizes[i]) / static_cast<double>(in);
    }
  } else {
    // One scale for every resized axis: the smallest (not_larger) or largest (not_smaller) ratio.
    double s = policy == "not_larger" ? 1e300 : 0.0;
    for (size_t i = 0; i < naxes; ++i) {
      if (x[axes[i]] == 0) return InvalidArgument(where + "keep_aspect_ratio_policy needs non-empty resized axes");
      const double r = static_cast<double>(sizes[i]) / static_cast<double>(x[axes[i]]);
      s = policy == "not_larger" ? std::min(s, r) : std::max(s, r);
    }
    for (size_t i = 0; i < naxes; ++i) {
      plans[axes[i]].scale = s;
      const double out = s * static_cast<double>(x[axes[i]]) + 0.5;
      if (!(out < static_cast<double>(kMaxResizeElements))) return InvalidArgument(where + "output size is too large");
      plans[axes[i]].out = static_cast<int64_t>(out);
    }
  }
  *plans_out = plans;
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Taps

// One output position along one resized axis: source indices (already clamped) and weights. i0 = kExtrapolate:
// the position lies outside tf_crop_and_resize's roi; i0 = kZero: exclude_outside dropped every tap.
struct Tap {
  int32_t i0, i1;
  float w0, w1;
};
constexpr int32_t kExtrapolate = -1;
constexpr int32_t kZero = -2;

// The taps of one axis, from the reference's resize_axis (same expressions, same order, in double).
std::vector<Tap> axis_taps(int64_t in_w, const AxisPlan& plan, const ResizeParams& p) {
  const int64_t out_w = plan.out;
  const double scale = plan.scale;
  const double out_w_f = scale * static_cast<double>(in_w);
  std::vector<Tap> taps(static_cast<size_t>(out_w));
  for (int64_t y = 0; y < out_w; ++y) {
    const double yd = static_cast<double>(y);
    double x_ori = 0;
    bool extrapolate = false;
    switch (p.coord) {
      case CoordMode::kAlignCorners:
        x_ori = out_w_f == 1 ? 0.0 : yd * static_cast<double>(in_w - 1) / (out_w_f - 1);
        break;
      case CoordMode::kAsymmetric: x_ori = yd / scale; break;
      case CoordMode::kTfCropAndResize:
        x_ori = out_w_f == 1 ? (plan.roi_end - plan.roi_start) * static_cast<double>(in_w - 1) / 2
                             : yd * (plan.roi_end - plan.roi_start) * static_cast<double>(in_w - 1) / (out_w_f - 1);
        x_ori += plan.roi_start * static_cast<double>(in_w - 1);
        extrapolate = x_ori < 0 || x_ori > static_cast<double>(in_w - 1);
        break;
      case CoordMode::kPytorchHalfPixel: x_ori = out_w_f == 1 ? -0.5 : (yd + 0.5) / scale - 0.5; break;
      case CoordMode::kHalfPixel: x_ori = (yd + 0.5) / scale - 0.5; break;
      case CoordMode::kTfHalfPixelForNn: x_ori = (yd + 0.5) / scale; break;
      case CoordMode::kHalfPixelSymmetric: {
        const double adjustment = static_cast<double>(out_w) / out_w_f;
        const double center = static_cast<double>(in_w) / 2;
        x_ori = center * (1 - adjustment) + (yd + 0.5) / scale - 0.5;
        break;
      }
    }
    const double x_floor = std::floor(x_ori);
    const double ratio = x_ori == x_floor ? 1.0 : x_ori - x_floor;
    double c[2];
    if (p.mode == Mode::kLinear) {
      c[0] = 1 - ratio;
      c[1] = ratio;
    } else if (ratio == std::floor(ratio)) {
      c[0] = 0;
      c[1] = 1;
    } else {
      switch (p.nearest_mode) {
        case NearestMode::kRoundPreferFloor: c[0] = ratio <= 0.5 ? 1.0 : 0.0; c[1] = ratio > 0.5 ? 1.0 : 0.0; break;
        case NearestMode::kRoundPreferCeil: c[0] = ratio < 0.5 ? 1.0 : 0.0; c[1] = ratio >= 0.5 ? 1.0 : 0.0; break;
        case NearestMode::kFloor: c[0] = 1; c[1] = 0; break;
        case NearestMode::kCeil: c[0] = 0; c[1] = 1; break;
        case NearestMode::kSimple: c[0] = scale < 1 ? 0 : 1; c[1] = scale < 1 ? 1 : 0; break;
      }
    }
    // The two neighbours (n = 2, pad = 1 in the reference's general rule).
    const double x_padded = x_ori + 1.0;
    const double p_floor = std::floor(x_padded);
    const double frac = x_padded - p_floor;
    const int64_t start = static_cast<int64_t>(p_floor) + (frac == 0 ? -1 : 0) - 1;
    int64_t idx[2] = {start, start + 1};
    if (p.exclude_outside) {
      double sum = 0;
      for (int k = 0; k < 2; ++k) {
        if (idx[k] < 0 || idx[k] >= in_w) c[k] = 0;
        sum += c[k];
      }
      if (sum != 0) {
        c[0] /= sum;
        c[1] /= sum;
      }
    }
    for (int64_t& i : idx) i = std::clamp<int64_t>(i, 0, in_w - 1);
    Tap& t = taps[static_cast<size_t>(y)];
    if (extrapolate) {
      t = Tap{kExtrapolate, kExtrapolate, 0.0f, 0.0f};
    } else if (p.mode == Mode::kNearest) {
      // One of c is 1 and the other 0, or both 0 where exclude_outside dropped the chosen one.
      const int32_t pick = static_cast<int32_t>(c[0] != 0 ? idx[0] : idx[1]);
      t = c[0] == 0 && c[1] == 0 ? Tap{kZero, kZero, 0.0f, 0.0f} : Tap{pick, pick, 1.0f, 0.0f};
    } else {
      t = Tap{static_cast<int32_t>(idx[0]), static_cast<int32_t>(idx[1]), static_cast<float>(c[0]),
              static_cast<float>(c[1])};
    }
  }
  return taps;
}

// ---------------------------------------------------------------------------------------------------------
// Kernels

// The collapsed output dims, right-aligned in kMaxDims slots. A dim is either copied (its index scaled by
// the input stride) or resized (its index looks up a tap table).
template <class I>
struct ResizeDims {
  int rank = 0;
  I out[kMaxDims];
  I stride[kMaxDims];  // input stride of the dim
  int table[kMaxDims];  // first tap of a resized dim's table; -1 for a copied dim
  int slot[kMaxDims];   // linear: which resized dim this is (0..K-1); -1 for a copied dim
};

// Both kernels run one thread per position of the inner dims (from the first resized dim on), looping over
// the planes of the dims before it (N x C for NCHW): the taps are looked up once per thread, and
// neighbouring threads read and write neighbouring elements of a plane.

// The source offset of inner position i, for nearest; `special` as the taps say.
template <class I>
__device__ __forceinline__ I nearest_source(I i, const ResizeDims<I>& dims, const Tap* __restrict__ taps,
                                            int32_t& special) {
  I src = 0;
  special = 0;  // the last resized axis to hit a special tap decides, as in the sequential reference
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < kMaxDims - dims.rank) break;
    I c = i;
    if (d > kMaxDims - dims.rank) {  // the outermost dim needs no division
      const I q = i / dims.out[d];
      c = i - q * dims.out[d];
      i = q;
    }
    if (dims.table[d] < 0) {
      src += c * dims.stride[d];
    } else {
      const int32_t s = taps[dims.table[d] + c].i0;
      if (s < 0) {
        if (special == 0) special = s;
      } else {
        src += static_cast<I>(s) * dims.stride[d];
      }
    }
  }
  return src;
}

template <class U, class I>
__global__ void resize_nearest_kernel(const U* __restrict__ x, U* __restrict__ y, I inner, I planes, I in_plane,
                                      ResizeDims<I> dims, const Tap* __restrict__ taps, U extrapolation) {
  const I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inner) return;
  int32_t special;
  const I src = nearest_source<I>(i, dims, taps, special);
  const I step = static_cast<I>(gridDim.y) * blockDim.y;
  for (I p = static_cast<I>(blockIdx.y) * blockDim.y + threadIdx.y; p < planes; p += step)
    y[p * inner + i] = special == kExtrapolate ? extrapolation : special == kZero ? U(0) : x[p * in_plane + src];
}

// Linear over K resized dims: the 2^K corner taps weighted by products of the axes' weights.
template <class T, int K, class I>
__global__ void resize_linear_kernel(const T* __restrict__ x, T* __restrict__ y, I inner, I planes, I in_plane,
                                     ResizeDims<I> dims, const Tap* __restrict__ taps, int4 res_table,
                                     float extrapolation) {
  I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inner) return;
  const I out_i = i;
  const int res_tables[4] = {res_table.x, res_table.y, res_table.z, res_table.w};
  I base = 0;
  I rc[K];
  I rs[K];
#pragma unroll
  for (int j = 0; j < K; ++j) rc[j] = rs[j] = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < kMaxDims - dims.rank) break;
    I c = i;
    if (d > kMaxDims - dims.rank) {
      const I q = i / dims.out[d];
      c = i - q * dims.out[d];
      i = q;
    }
    const int slot = dims.slot[d];
    if (slot < 0) {
      base += c * dims.stride[d];
    } else {
#pragma unroll
      for (int j = 0; j < K; ++j) {
        if (slot == j) {
          rc[j] = c;
          rs[j] = dims.stride[d];
        }
      }
    }
  }
  Tap t[K];
  bool extrapolate = false;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    t[j] = taps[res_tables[j] + rc[j]];
    extrapolate |= t[j].i0 == kExtrapolate;
  }
  I off[1 << K];
  float w[1 << K];
#pragma unroll
  for (int m = 0; m < (1 << K); ++m) {
    off[m] = base;
    w[m] = 1.0f;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const bool hi = (m >> j) & 1;
      off[m] += static_cast<I>(hi ? t[j].i1 : t[j].i0) * rs[j];
      w[m] *= hi ? t[j].w1 : t[j].w0;
    }
  }
  const I step = static_cast<I>(gridDim.y) * blockDim.y;
  for (I p = static_cast<I>(blockIdx.y) * blockDim.y + threadIdx.y; p < planes; p += step) {
    const T* xp = x + p * in_plane;
    float acc = 0.0f;
#pragma unroll
    for (int m = 0; m < (1 << K); ++m)
      if (w[m] != 0.0f) acc += w[m] * to_f(xp[off[m]]);  // zero weights read nothing, as the reference skips them
    y[p * inner + out_i] = from_f<T>(extrapolate ? extrapolation : acc);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The layer

struct DimPlan {
  int64_t out, in, stride;
  int table = -1;  // offset of its taps, -1 when copied
};

class ResizeLayer : public Layer {
 public:
  ~ResizeLayer() override {
    if (taps_ != nullptr) cudaFree(taps_);
  }

  static Result<std::unique_ptr<Layer>> make(const LayerSpec& spec) {
    const std::string where = "CUDA " + spec.node->op_type + " '" + spec.node->name + "': ";
    ResizeParams p;
    if (std::string why = check_resize(spec); !why.empty()) return Unsupported(why);
    (void)parse_params(spec, &p);
    std::vector<AxisPlan> plans;
    KILN_RETURN_IF_ERROR(make_plans(spec, p, &plans));
    const Shape& x = spec.inputs[0].shape;
    const int64_t rank = static_cast<int64_t>(x.size());
    Shape out_shape(rank);
    for (int64_t d = 0; d < rank; ++d) out_shape[d] = plans[d].out;
    if (out_shape != spec.outputs[0].shape)
      return InvalidArgument(where + "output shape " + shape_to_string(spec.outputs[0].shape) +
                             " is not the resized shape " + shape_to_string(out_shape));
    std::unique_ptr<ResizeLayer> layer(new ResizeLayer());
    layer->dtype_ = spec.inputs[0].dtype;
    layer->mode_ = p.mode;
    layer->total_ = shape_numel(out_shape);
    if (layer->total_ > kMaxResizeElements) return InvalidArgument(where + "output shape is too large");
    if (layer->total_ == 0) return std::unique_ptr<Layer>(std::move(layer));
    if (shape_numel(x) == 0) return InvalidArgument(where + "cannot resize an empty input to a non-empty output");

    // Per axis: copied (the reference skips it) or resized through a tap table; then runs of copied axes merge.
    std::vector<Tap> all_taps;
    std::vector<DimPlan> dims;
    std::vector<int64_t> in_strides(rank, 1);
    for (int64_t d = rank - 2; d >= 0; --d) in_strides[d] = in_strides[d + 1] * x[d + 1];
    for (int64_t d = 0; d < rank; ++d) {
      const AxisPlan& pl = plans[d];
      const bool trivial_roi = p.coord != CoordMode::kTfCropAndResize ||
                               (std::abs(pl.roi_start) < 1e-9 && std::abs(pl.roi_end - 1.0) < 1e-9);
      if (std::abs(pl.scale - 1.0) < 1e-9 && pl.out == x[d] && trivial_roi) {
        if (x[d] == 1) continue;  // a size-1 copied dim adds nothing
        if (!dims.empty() && dims.back().table < 0) {
          dims.back().out *= x[d];
          dims.back().in *= x[d];
          dims.back().stride = in_strides[d];
        } else {
          dims.push_back(DimPlan{x[d], x[d], in_strides[d], -1});
        }
        continue;
      }
      const std::vector<Tap> taps = axis_taps(x[d], pl, p);
      dims.push_back(DimPlan{pl.out, x[d], in_strides[d], static_cast<int>(all_taps.size())});
      all_taps.insert(all_taps.end(), taps.begin(), taps.end());
    }
    int resized = 0;
    for (const DimPlan& dp : dims) resized += dp.table >= 0;
    if (static_cast<int>(dims.size()) > kMaxDims)
      return Unsupported(where + "more than " + std::to_string(kMaxDims) + " dims after merging is not implemented");
    if (p.mode == Mode::kLinear && resized > kMaxLinearAxes)
      return Unsupported(where + "linear resize of more than " + std::to_string(kMaxLinearAxes) +
                         " axes at once is not implemented");
    layer->resized_ = resized;
    // The leading copied dim (N x C for NCHW) becomes the planes the kernels loop over.
    layer->planes_ = 1;
    if (dims.size() > 1 && dims.front().table < 0) {
      layer->planes_ = dims.front().out;
      layer->in_plane_ = dims.front().stride;
      dims.erase(dims.begin());
    } else {
      layer->in_plane_ = shape_numel(x);
    }
    layer->inner_ = layer->total_ / layer->planes_;
    layer->small_index_ = layer->total_ < std::numeric_limits<int32_t>::max() &&
                          shape_numel(x) < std::numeric_limits<int32_t>::max();
    layer->dims_ = dims;
    int slot = 0;
    for (const DimPlan& dp : dims)
      if (dp.table >= 0 && slot < kMaxLinearAxes) layer->res_table_[slot++] = dp.table;

    if (!all_taps.empty()) {
      const size_t bytes = all_taps.size() * sizeof(Tap);
      KILN_CUDA_TRY(cudaMalloc(&layer->taps_, bytes));
      KILN_CUDA_TRY(cudaMemcpy(layer->taps_, all_taps.data(), bytes, cudaMemcpyHostToDevice));
    }

    // The extrapolation value in the output's dtype, as the reference's final cast makes it (integers round
    // half to even and saturate).
    layer->extrapolation_ = static_cast<float>(p.extrapolation_value);
    double ev = p.extrapolation_value;
    if (dtype_is_integer(layer->dtype_)) {
      double lo = -9.2e18, hi = 9.2e18;
      switch (layer->dtype_) {
        case DType::kInt8: lo = -128; hi = 127; break;
        case DType::kUInt8: lo = 0; hi = 255; break;
        case DType::kInt16: lo = -32768; hi = 32767; break;
        case DType::kUInt16: lo = 0; hi = 65535; break;
        case DType::kInt32: lo = -2147483648.0; hi = 2147483647.0; break;
        case DType::kUInt32: lo = 0; hi = 4294967295.0; break;
        default: break;
      }
      ev = std::clamp(std::nearbyint(ev), lo, hi);
    }
    KILN_ASSIGN_OR_RETURN(Tensor evt, cast_tensor(Tensor::scalar<double>(DType::kFloat64, ev), layer->dtype_));
    std::memcpy(&layer->extrapolation_bits_, evt.raw_data(), dtype_size(layer->dtype_));
    return std::unique_ptr<Layer>(std::move(layer));
  }

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (total_ == 0) return OkStatus();
    if (resized_ == 0) {
      KILN_CUDA_TRY(cudaMemcpyAsync(out[0].data, in[0].data, out[0].nbytes(), cudaMemcpyDeviceToDevice, h.stream));
      return OkStatus();
    }
    if (small_index_) return launch<uint32_t>(in[0].data, out[0].data, h.stream);
    return launch<uint64_t>(in[0].data, out[0].data, h.stream);
  }

 private:
  ResizeLayer() = default;

  template <class I>
  ResizeDims<I> device_dims() const {
    ResizeDims<I> r;
    r.rank = static_cast<int>(dims_.size());
    const int off = kMaxDims - r.rank;
    int slot = 0;
    for (int d = 0; d < kMaxDims; ++d) {
      const bool real = d >= off;
      const DimPlan* dp = real ? &dims_[d - off] : nullptr;
      r.out[d] = real ? static_cast<I>(dp->out) : 1;
      r.stride[d] = real ? static_cast<I>(dp->stride) : 0;
      r.table[d] = real ? dp->table : -1;
      r.slot[d] = real && dp->table >= 0 ? slot++ : -1;
    }
    return r;
  }

  template <class I>
  Status launch(const void* x, void* y, cudaStream_t s) const {
    const ResizeDims<I> dims = device_dims<I>();
    const I inner = static_cast<I>(inner_), planes = static_cast<I>(planes_), in_plane = static_cast<I>(in_plane_);
    const dim3 block = block_for(inner_);
    const dim3 grid = grid_for_planes(inner_, planes_, block);
    if (mode_ == Mode::kNearest) {
      auto go = [&](auto tag) {
        using U = typename decltype(tag)::type;
        U ev;
        std::memcpy(&ev, &extrapolation_bits_, sizeof(U));
        resize_nearest_kernel<U, I><<<grid, block, 0, s>>>(static_cast<const U*>(x), static_cast<U*>(y), inner, planes,
                                                            in_plane, dims, taps_, ev);
      };
      switch (dtype_size(dtype_)) {
        case 1: go(Tag<uint8_t>{}); break;
        case 2: go(Tag<uint16_t>{}); break;
        case 4: go(Tag<uint32_t>{}); break;
        case 8: go(Tag<uint64_t>{}); break;
        default: return Unsupported("CUDA Resize: dtype " + dtype_name(dtype_));
      }
      return launch_status("resize_nearest");
    }
    const int4 rt = make_int4(res_table_[0], res_table_[1], res_table_[2], res_table_[3]);
    auto go = [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* xp = static_cast<const T*>(x);
      T* yp = static_cast<T*>(y);
      switch (resized_) {
        case 1: resize_linear_kernel<T, 1, I><<<grid, block, 0, s>>>(xp, yp, inner, planes, in_plane, dims, taps_, rt, extrapolation_); break;
        case 2: resize_linear_kernel<T, 2, I><<<grid, block, 0, s>>>(xp, yp, inner, planes, in_plane, dims, taps_, rt, extrapolation_); break;
        case 3: resize_linear_kernel<T, 3, I><<<grid, block, 0, s>>>(xp, yp, inner, planes, in_plane, dims, taps_, rt, extrapolation_); break;
        default: resize_linear_kernel<T, 4, I><<<grid, block, 0, s>>>(xp, yp, inner, planes, in_plane, dims, taps_, rt, extrapolation_); break;
      }
    };
    switch (dtype_) {
      case DType::kFloat32: go(Tag<float>{}); break;
      case DType::kFloat16: go(Tag<__half>{}); break;
      case DType::kBFloat16: go(Tag<__nv_bfloat16>{}); break;
      default: return Unsupported("CUDA Resize linear: dtype " + dtype_name(dtype_));
    }
    return launch_status("resize_linear");
  }

  DType dtype_ = DType::kUndefined;
  Mode mode_ = Mode::kNearest;
  int64_t total_ = 0, planes_ = 1, inner_ = 0, in_plane_ = 0;
  int resized_ = 0;
  bool small_index_ = true;
  std::vector<DimPlan> dims_;
  int res_table_[kMaxLinearAxes] = {0, 0, 0, 0};
  Tap* taps_ = nullptr;
  float extrapolation_ = 0.0f;
  uint64_t extrapolation_bits_ = 0;
};

}  // namespace

void register_resize_layers(LayerTable& table) {
  for (const char* op : {"Resize", "Upsample"}) {
    LayerKind k;
    k.op_type = op;
    k.check = check_resize;
    k.tactics = [](const LayerSpec& spec) {
      ResizeParams p;
      (void)parse_params(spec, &p);
      return std::vector<std::string>{p.mode == Mode::kLinear ? "cuda.resize.linear" : "cuda.resize.nearest"};
    };
    k.create = [](const LayerSpec& spec, const std::string&, const CudaHandles&) { return ResizeLayer::make(spec); };
    table.add(std::move(k));
  }
}

}  // namespace kiln::cuda
