// CPU reference kernels: Resize (opsets 10-19) and the deprecated Upsample (opsets 7-9).
//
// Resize is separable: the N-D result is a sequence of 1-D resizes, one per resized axis, each computed in
// double. For every output coordinate along an axis we map it back to a source coordinate x_ori (the
// coordinate_transformation_mode), pick n neighbouring source indices and weigh them with n coefficients
// (the mode: nearest, linear or cubic, with or without antialiasing). Indices outside the input are clamped
// (edge padding) unless exclude_outside drops them. This follows ONNX's reference implementation
// (onnx/reference/ops/op_resize.py) step for step, including its choice of neighbours.
#include <algorithm>
#include <cmath>
#include <functional>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {
namespace {

// The most output elements a Resize may produce: a bad scale must not allocate without bound.
constexpr int64_t kMaxResizeElements = int64_t{1} << 30;

enum class Mode { kNearest, kLinear, kCubic };
enum class NearestMode { kRoundPreferFloor, kRoundPreferCeil, kFloor, kCeil, kSimple };
enum class CoordMode { kHalfPixel, kHalfPixelSymmetric, kPytorchHalfPixel, kAlignCorners, kAsymmetric, kTfCropAndResize,
                       kTfHalfPixelForNn };

struct ResizeParams {
  Mode mode = Mode::kNearest;
  NearestMode nearest_mode = NearestMode::kRoundPreferFloor;
  CoordMode coord = CoordMode::kHalfPixel;
  double cubic_a = -0.75;
  bool exclude_outside = false;
  double extrapolation_value = 0.0;
  bool antialias = false;
};

// Coefficients for the n neighbours of a source coordinate whose fractional part is `ratio` (1 when the
// coordinate is an integer, as in ONNX's reference), for an axis resized by `scale`.
std::vector<double> coefficients(const ResizeParams& p, double ratio, double scale) {
  const double A = p.cubic_a;
  switch (p.mode) {
    case Mode::kNearest: {
      if (ratio == std::floor(ratio)) return {0, 1};
      switch (p.nearest_mode) {
        case NearestMode::kRoundPreferFloor: return {ratio <= 0.5 ? 1.0 : 0.0, ratio > 0.5 ? 1.0 : 0.0};
        case NearestMode::kRoundPreferCeil: return {ratio < 0.5 ? 1.0 : 0.0, ratio >= 0.5 ? 1.0 : 0.0};
        case NearestMode::kFloor: return {1, 0};
        case NearestMode::kCeil: return {0, 1};
        case NearestMode::kSimple: return scale < 1 ? std::vector<double>{0, 1} : std::vector<double>{1, 0};
      }
      return {1, 0};
    }
    case Mode::kLinear: {
      if (!p.antialias) return {1 - ratio, ratio};
      // Triangle filter stretched by 1/scale when downsampling.
      const double s = std::min(scale, 1.0);
      const int64_t start = static_cast<int64_t>(std::floor(-1 / s) + 1);
      const int64_t footprint = 2 - 2 * start;
      std::vector<double> c(footprint);
      double sum = 0;
      for (int64_t i = 0; i < footprint; ++i) {
        const double arg = (static_cast<double>(start + i) - ratio) * s;
        c[i] = std::clamp(1 - std::abs(arg), 0.0, 1.0);
        sum += c[i];
      }
      for (double& v : c) v /= sum;
      return c;
    }
    case Mode::kCubic: {
      if (!p.antialias) {
        const double r1 = ratio + 1, q = 1 - ratio, q1 = q + 1;
        return {((A * r1 - 5 * A) * r1 + 8 * A) * r1 - 4 * A, ((A + 2) * ratio - (A + 3)) * ratio * ratio + 1,
                ((A + 2) * q - (A + 3)) * q * q + 1, ((A * q1 - 5 * A) * q1 + 8 * A) * q1 - 4 * A};
      }
      const double s = std::min(scale, 1.0);
      auto kernel = [&](double x) {
        x = std::abs(x);
        if (x <= 1) return (A + 2) * x * x * x - (A + 3) * x * x + 1;
        if (x < 2) return A * x * x * x - 5 * A * x * x + 8 * A * x - 4 * A;
        return 0.0;
      };
      const int64_t i_start = static_cast<int64_t>(std::floor(-2 / s) + 1);
      const int64_t i_end = 2 - i_start;
      std::vector<double> c;
      double sum = 0;
      for (int64_t i = i_start; i < i_end; ++i) {
        c.push_back(kernel(s * (static_cast<double>(i) - ratio)));
        sum += c.back();
      }
      for (double& v : c) v /= sum;
      return c;
    }
  }
  return {};
}

struct AxisPlan {
  int64_t out = 0;
  double scale = 1.0;
  double roi_start = 0.0, roi_end = 1.0;
};

// Resizes `data` (shape `shape`, row-major) along `axis` to plan.out entries.
std::vector<double> resize_axis(const std::vector<double>& data, Shape& shape, int64_t axis, const AxisPlan& plan,
                                const ResizeParams& p) {
  const int64_t in_w = shape[axis];
  const int64_t out_w = plan.out;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d) inner *= shape[d];
  std::vector<double> result(static_cast<size_t>(outer * out_w * inner), 0.0);
  const double scale = plan.scale;
  const double out_w_f = scale * static_cast<double>(in_w);  // the "real" output width, may be fractional

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
    std::vector<double> c = coefficients(p, ratio, scale);
    const int64_t n = static_cast<int64_t>(c.size());
    // Which n neighbours: the same rule as the reference (nearest indices, ties towards the smaller one).
    const int64_t pad = (n + 1) / 2;
    const double x_padded = x_ori + static_cast<double>(pad);
    const double p_floor = std::floor(x_padded);
    const double frac = x_padded - p_floor;
    int64_t offset = 0;
    if (n % 2 == 0) {
      offset = frac == 0 ? -(n / 2) : -(n / 2) + 1;
    } else {
      offset = frac <= 0.5 ? -((n - 1) / 2) : -((n - 1) / 2) + 1;
    }
    const int64_t start = static_cast<int64_t>(p_floor) + offset - pad;
    std::vector<int64_t> idx(n);
    for (int64_t k = 0; k < n; ++k) idx[k] = start + k;
    if (p.exclude_outside) {
      double sum = 0;
      for (int64_t k = 0; k < n; ++k) {
        if (idx[k] < 0 || idx[k] >= in_w) c[k] = 0;
        sum += c[k];
      }
      if (sum != 0) {
        for (double& v : c) v /= sum;
      }
    }
    for (int64_t k = 0; k < n; ++k) idx[k] = std::clamp<int64_t>(idx[k], 0, in_w - 1);

    for (int64_t o = 0; o < outer; ++o) {
      const double* src = data.data() + o * in_w * inner;
      double* dst = result.data() + (o * out_w + y) * inner;
      for (int64_t i = 0; i < inner; ++i) {
        if (extrapolate) {
          dst[i] = p.extrapolation_value;
          continue;
        }
        double acc = 0;
        for (int64_t k = 0; k < n; ++k) {
          if (c[k] != 0) acc += c[k] * src[idx[k] * inner + i];
        }
        dst[i] = acc;
      }
    }
  }
  shape[axis] = out_w;
  return result;
}

// Runs the separable resize over every axis whose plan changes it, and converts back to x's dtype.
Status run_resize(KernelContext& ctx, const Tensor& x, const std::vector<AxisPlan>& plans, const ResizeParams& p) {
  const int64_t rank = x.rank();
  Shape out_shape(rank);
  int64_t total = 1;
  for (int64_t d = 0; d < rank; ++d) {
    if (plans[d].out < 0) return ctx.error("negative output size on axis " + std::to_string(d));
    out_shape[d] = plans[d].out;
    if (out_shape[d] > 0 && total > kMaxResizeElements / out_shape[d]) {
      return ctx.error("output shape " + shape_to_string(out_shape) + " is too large");
    }
    total *= out_shape[d];
  }
  const bool is_int = dtype_is_integer(x.dtype());
  if (!is_int && !dtype_is_float(x.dtype())) return ctx.error("unsupported input type " + x.description());
  if (x.numel() == 0 && total != 0) return ctx.error("cannot resize an empty input to a non-empty output");
  KILN_ASSIGN_OR_RETURN(Tensor xd, cast_tensor(x, DType::kFloat64));
  std::vector<double> data(xd.data<double>(), xd.data<double>() + xd.numel());
  Shape shape = x.shape();
  for (int64_t d = 0; d < rank; ++d) {
    const AxisPlan& pl = plans[d];
    const bool trivial_roi = p.coord != CoordMode::kTfCropAndResize ||
                             (std::abs(pl.roi_start) < 1e-9 && std::abs(pl.roi_end - 1.0) < 1e-9);
    if (std::abs(pl.scale - 1.0) < 1e-9 && pl.out == shape[d] && trivial_roi) continue;
    if (pl.out == 0 || shape[d] == 0) {
      shape[d] = pl.out;
      data.assign(static_cast<size_t>(shape_numel(shape)), 0.0);
      continue;
    }
    data = resize_axis(data, shape, d, pl, p);
  }
  Tensor y(DType::kFloat64, shape);
  std::copy(data.begin(), data.end(), y.data<double>());
  if (is_int) {
    // Integers: round half to even and saturate, as ONNX's saturate_cast does.
    double lo = 0, hi = 0;
    switch (x.dtype()) {
      case DType::kInt8: lo = -128; hi = 127; break;
      case DType::kUInt8: lo = 0; hi = 255; break;
      case DType::kInt16: lo = -32768; hi = 32767; break;
      case DType::kUInt16: lo = 0; hi = 65535; break;
      case DType::kInt32: lo = -2147483648.0; hi = 2147483647.0; break;
      case DType::kUInt32: lo = 0; hi = 4294967295.0; break;
      default: lo = -9.2e18; hi = 9.2e18; break;
    }
    double* yd = y.data<double>();
    for (int64_t i = 0; i < y.numel(); ++i) yd[i] = std::clamp(std::nearbyint(yd[i]), lo, hi);
  }
  KILN_ASSIGN_OR_RETURN(Tensor out, cast_tensor(y, x.dtype()));
  ctx.set_output(0, out);
  return OkStatus();
}

Result<std::vector<double>> float_values(const Tensor& t) {
  KILN_ASSIGN_OR_RETURN(Tensor d, cast_tensor(t, DType::kFloat64));
  return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
}

Status parse_params(KernelContext& ctx, ResizeParams* p) {
  const std::string mode = ctx.attr_string("mode", "nearest");
  if (mode == "nearest") p->mode = Mode::kNearest;
  else if (mode == "linear" || mode == "bilinear") p->mode = Mode::kLinear;
  else if (mode == "cubic" || mode == "bicubic") p->mode = Mode::kCubic;
  else return ctx.error("unknown mode '" + mode + "'");
  if (ctx.node().op_type == "Upsample" || ctx.opset() < 11) {
    // Upsample and Resize-10 predate the coordinate attributes: asymmetric mapping, legacy nearest rounding.
    p->coord = CoordMode::kAsymmetric;
    p->nearest_mode = NearestMode::kSimple;
    return OkStatus();
  }
  const std::string coord = ctx.attr_string("coordinate_transformation_mode", "half_pixel");
  if (coord == "half_pixel") p->coord = CoordMode::kHalfPixel;
  else if (coord == "half_pixel_symmetric") p->coord = CoordMode::kHalfPixelSymmetric;
  else if (coord == "pytorch_half_pixel") p->coord = CoordMode::kPytorchHalfPixel;
  else if (coord == "align_corners") p->coord = CoordMode::kAlignCorners;
  else if (coord == "asymmetric") p->coord = CoordMode::kAsymmetric;
  else if (coord == "tf_crop_and_resize") p->coord = CoordMode::kTfCropAndResize;
  else if (coord == "tf_half_pixel_for_nn") p->coord = CoordMode::kTfHalfPixelForNn;  // opset 11 only
  else {
    return ctx.error("unknown coordinate_transformation_mode '" + coord + "'");
  }
  const std::string nm = ctx.attr_string("nearest_mode", "round_prefer_floor");
  if (nm == "round_prefer_floor") p->nearest_mode = NearestMode::kRoundPreferFloor;
  else if (nm == "round_prefer_ceil") p->nearest_mode = NearestMode::kRoundPreferCeil;
  else if (nm == "floor") p->nearest_mode = NearestMode::kFloor;
  else if (nm == "ceil") p->nearest_mode = NearestMode::kCeil;
  else return ctx.error("unknown nearest_mode '" + nm + "'");
  p->cubic_a = ctx.attr_float("cubic_coeff_a", -0.75f);
  p->exclude_outside = ctx.attr_int("exclude_outside", 0) != 0;
  p->extrapolation_value = ctx.attr_float("extrapolation_value", 0.0f);
  p->antialias = ctx.attr_int("antialias", 0) != 0;
  if (p->antialias && p->mode == Mode::kNearest) return ctx.error("antialias is not supported with mode 'nearest'");
  return OkStatus();
}

Status check_scale(KernelContext& ctx, double s, int64_t axis) {
  if (!(s > 0) || !std::isfinite(s)) {
    return ctx.error("scale " + std::to_string(s) + " on axis " + std::to_string(axis) + " must be positive and finite");
  }
  return OkStatus();
}

// Output size from a scale: floor(scale * dim), guarded against overflow.
Result<int64_t> scaled_size(KernelContext& ctx, double s, int64_t dim) {
  const double v = std::floor(s * static_cast<double>(dim));
  if (v > static_cast<double>(kMaxResizeElements)) {
    return ctx.error("scale " + std::to_string(s) + " makes axis of size " + std::to_string(dim) + " too large");
  }
  return static_cast<int64_t>(v);
}

Status resize_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("Resize needs input X");
  const Tensor& x = ctx.input(0);
  const int64_t rank = x.rank();
  ResizeParams p;
  KILN_RETURN_IF_ERROR(parse_params(ctx, &p));
  std::vector<AxisPlan> plans(rank);
  for (int64_t d = 0; d < rank; ++d) plans[d].out = x.dim(d);

  if (ctx.opset() < 11) {  // Resize-10: (X, scales)
    if (!ctx.has_input(1)) return ctx.error("Resize-10 needs input scales");
    KILN_ASSIGN_OR_RETURN(std::vector<double> scales, float_values(ctx.input(1)));
    if (static_cast<int64_t>(scales.size()) != rank) {
      return ctx.error("scales has " + std::to_string(scales.size()) + " values for input of rank " + std::to_string(rank));
    }
    for (int64_t d = 0; d < rank; ++d) {
      KILN_RETURN_IF_ERROR(check_scale(ctx, scales[d], d));
      plans[d].scale = scales[d];
      KILN_ASSIGN_OR_RETURN(plans[d].out, scaled_size(ctx, scales[d], x.dim(d)));
    }
    return run_resize(ctx, x, plans, p);
  }

  // Axes (opset 18+): the resized axes, in the order scales / sizes / roi list them.
  std::vector<int64_t> axes;
  if (ctx.has_attr("axes")) {
    for (int64_t a : ctx.attr_ints("axes")) {
      auto na = normalize_axis(a, rank);
      if (!na.ok()) return ctx.error("axes value " + std::to_string(a) + " out of range for rank " + std::to_string(rank));
      if (std::find(axes.begin(), axes.end(), *na) != axes.end()) return ctx.error("axes has a repeated axis");
      axes.push_back(*na);
    }
  } else {
    for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
  }
  const size_t naxes = axes.size();

  const bool has_scales = ctx.has_input(2) && ctx.input(2).numel() > 0;
  const bool has_sizes = ctx.has_input(3) && ctx.input(3).numel() > 0;
  if (has_scales == has_sizes) return ctx.error("exactly one of scales and sizes must be given");

  if (p.coord == CoordMode::kTfCropAndResize) {
    if (!ctx.has_input(1) || ctx.input(1).numel() == 0) {
      return ctx.error("coordinate_transformation_mode tf_crop_and_resize needs roi");
    }
    KILN_ASSIGN_OR_RETURN(std::vector<double> roi, float_values(ctx.input(1)));
    if (roi.size() != 2 * naxes) {
      return ctx.error("roi has " + std::to_string(roi.size()) + " values, expected " + std::to_string(2 * naxes));
    }
    for (size_t i = 0; i < naxes; ++i) {
      plans[axes[i]].roi_start = roi[i];
      plans[axes[i]].roi_end = roi[naxes + i];
    }
  }

  if (has_scales) {
    KILN_ASSIGN_OR_RETURN(std::vector<double> scales, float_values(ctx.input(2)));
    if (scales.size() != naxes) {
      return ctx.error("scales has " + std::to_string(scales.size()) + " values, expected " + std::to_string(naxes));
    }
    for (size_t i = 0; i < naxes; ++i) {
      KILN_RETURN_IF_ERROR(check_scale(ctx, scales[i], axes[i]));
      plans[axes[i]].scale = scales[i];
      KILN_ASSIGN_OR_RETURN(plans[axes[i]].out, scaled_size(ctx, scales[i], x.dim(axes[i])));
    }
    return run_resize(ctx, x, plans, p);
  }

  const Tensor& sizes_t = ctx.input(3);
  if (!dtype_is_integer(sizes_t.dtype())) return ctx.error("sizes must be int64, got " + sizes_t.description());
  std::vector<int64_t> sizes = sizes_t.to_int64_vector();
  if (sizes.size() != naxes) {
    return ctx.error("sizes has " + std::to_string(sizes.size()) + " values, expected " + std::to_string(naxes));
  }
  for (size_t i = 0; i < naxes; ++i) {
    if (sizes[i] < 0 || sizes[i] > kMaxResizeElements) {
      return ctx.error("sizes value " + std::to_string(sizes[i]) + " is out of range");
    }
    if (x.dim(axes[i]) == 0 && sizes[i] != 0) return ctx.error("cannot resize an empty axis to a non-empty size");
  }
  const std::string policy = ctx.attr_string("keep_aspect_ratio_policy", "stretch");
  if (policy == "stretch") {
    for (size_t i = 0; i < naxes; ++i) {
      const int64_t in = x.dim(axes[i]);
      plans[axes[i]].out = sizes[i];
      plans[axes[i]].scale = in == 0 ? 1.0 : static_cast<double>(sizes[i]) / static_cast<double>(in);
    }
  } else if (policy == "not_larger" || policy == "not_smaller") {
    // One scale for all resized axes: the smallest (not_larger) or largest (not_smaller) ratio.
    double s = policy == "not_larger" ? 1e300 : 0.0;
    for (size_t i = 0; i < naxes; ++i) {
      if (x.dim(axes[i]) == 0) return ctx.error("keep_aspect_ratio_policy needs non-empty resized axes");
      const double r = static_cast<double>(sizes[i]) / static_cast<double>(x.dim(axes[i]));
      s = policy == "not_larger" ? std::min(s, r) : std::max(s, r);
    }
    for (size_t i = 0; i < naxes; ++i) {
      plans[axes[i]].scale = s;
      const double out = s * static_cast<double>(x.dim(axes[i])) + 0.5;
      if (!(out < static_cast<double>(kMaxResizeElements))) return ctx.error("output size is too large");
      plans[axes[i]].out = static_cast<int64_t>(out);
    }
  } else {
    return ctx.error("unknown keep_aspect_ratio_policy '" + policy + "'");
  }
  return run_resize(ctx, x, plans, p);
}

// Upsample-7 (scales attribute) and Upsample-9 (scales input): output = floor(dim * scale).
Status upsample_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("Upsample needs input X");
  const Tensor& x = ctx.input(0);
  const int64_t rank = x.rank();
  ResizeParams p;
  KILN_RETURN_IF_ERROR(parse_params(ctx, &p));
  std::vector<double> scales;
  if (ctx.has_input(1)) {
    KILN_ASSIGN_OR_RETURN(scales, float_values(ctx.input(1)));
  } else if (ctx.has_attr("scales")) {
    for (float s : ctx.attr_floats("scales")) scales.push_back(s);
  } else {
    return ctx.error("Upsample needs scales (attribute or input)");
  }
  if (static_cast<int64_t>(scales.size()) != rank) {
    return ctx.error("scales has " + std::to_string(scales.size()) + " values for input of rank " + std::to_string(rank));
  }
  std::vector<AxisPlan> plans(rank);
  for (int64_t d = 0; d < rank; ++d) {
    if (!(scales[d] >= 1) || !std::isfinite(scales[d])) {
      return ctx.error("Upsample scale " + std::to_string(scales[d]) + " on axis " + std::to_string(d) + " must be >= 1");
    }
    plans[d].scale = scales[d];
    KILN_ASSIGN_OR_RETURN(plans[d].out, scaled_size(ctx, scales[d], x.dim(d)));
  }
  return run_resize(ctx, x, plans, p);
}

}  // namespace

void register_resize_ops(ir::OpRegistry& r) {
  r.add("Resize", 10, resize_kernel);
  r.add("Upsample", 7, upsample_kernel);
}

}  // namespace kiln::cpu
