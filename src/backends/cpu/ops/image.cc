// CPU reference kernels: image ops (GridSample, AffineGrid, RoiAlign, NonMaxSuppression).
// Values are computed in double; these follow ONNX's reference implementations (onnx/reference/ops).
#include <algorithm>
#include <cmath>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {
namespace {

Result<std::vector<double>> doubles_of(const Tensor& t) {
  KILN_ASSIGN_OR_RETURN(Tensor d, cast_tensor(t, DType::kFloat64));
  return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
}

// ---------------------------------------------------------------------------------------------------------
// GridSample

enum class GsMode { kNearest, kLinear, kCubic };
enum class GsPad { kZeros, kBorder, kReflection };

// Reflects x into [lo, hi] by bouncing off the borders.
double gs_reflect(double x, double lo, double hi) {
  const double range = hi - lo;
  if (range <= 0) return lo;
  if (x < lo) {
    const double dx = lo - x;
    const int64_t n = static_cast<int64_t>(dx / range);
    const double r = dx - static_cast<double>(n) * range;
    return n % 2 == 0 ? lo + r : hi - r;
  }
  if (x > hi) {
    const double dx = x - hi;
    const int64_t n = static_cast<int64_t>(dx / range);
    const double r = dx - static_cast<double>(n) * range;
    return n % 2 == 0 ? hi - r : lo + r;
  }
  return x;
}

void cubic_coeffs(double x, double c[4]) {
  const double A = -0.75;
  x = std::abs(x);
  c[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
  c[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
  c[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
  c[3] = ((A * (2 - x) - 5 * A) * (2 - x) + 8 * A) * (2 - x) - 4 * A;
}

Status grid_sample_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("GridSample needs X and grid");
  const Tensor& x = ctx.input(0);
  const Tensor& grid = ctx.input(1);
  const int64_t r = x.rank() - 2;  // spatial rank
  if (r < 1) return ctx.error("X must have rank >= 3, got " + x.description());
  if (grid.rank() != r + 2 || grid.dim(0) != x.dim(0) || grid.dim(-1) != r) {
    return ctx.error("grid shape " + shape_to_string(grid.shape()) + " does not fit X shape " +
                     shape_to_string(x.shape()) + " (want [N, out spatial..., " + std::to_string(r) + "])");
  }
  if (!dtype_is_float(x.dtype()) || !dtype_is_float(grid.dtype())) return ctx.error("X and grid must be float");
  const std::string mode_s = ctx.attr_string("mode", ctx.opset() >= 20 ? "linear" : "bilinear");
  GsMode mode;
  if (mode_s == "nearest") mode = GsMode::kNearest;
  else if (mode_s == "linear" || mode_s == "bilinear") mode = GsMode::kLinear;
  else if (mode_s == "cubic" || mode_s == "bicubic") mode = GsMode::kCubic;
  else return ctx.error("unknown mode '" + mode_s + "'");
  const std::string pad_s = ctx.attr_string("padding_mode", "zeros");
  GsPad pad;
  if (pad_s == "zeros") pad = GsPad::kZeros;
  else if (pad_s == "border") pad = GsPad::kBorder;
  else if (pad_s == "reflection") pad = GsPad::kReflection;
  else return ctx.error("unknown padding_mode '" + pad_s + "'");
  const bool align = ctx.attr_int("align_corners", 0) != 0;

  const int64_t N = x.dim(0), C = x.dim(1);
  std::vector<int64_t> dims(x.shape().begin() + 2, x.shape().end());
  Shape out_shape = {N, C};
  int64_t out_points = 1;
  for (int64_t d = 1; d <= r; ++d) {
    out_shape.push_back(grid.dim(d));
    out_points *= grid.dim(d);
  }
  int64_t in_points = 1;
  for (int64_t d : dims) in_points *= d;
  KILN_ASSIGN_OR_RETURN(std::vector<double> xv, doubles_of(x));
  KILN_ASSIGN_OR_RETURN(std::vector<double> gv, doubles_of(grid));
  Tensor y(DType::kFloat64, out_shape);
  double* yd = y.data<double>();
  if (in_points == 0 && y.numel() > 0) return ctx.error("X has an empty spatial dimension");

  std::vector<double> lo(r), hi(r);
  for (int64_t i = 0; i < r; ++i) {
    lo[i] = align ? 0.0 : -0.5;
    hi[i] = align ? static_cast<double>(dims[i] - 1) : static_cast<double>(dims[i]) - 0.5;
  }
  const std::vector<int64_t> in_strides = strides_of(dims);
  const int taps = mode == GsMode::kNearest ? 1 : (mode == GsMode::kLinear ? 2 : 4);
  int64_t combos = 1;
  for (int64_t i = 0; i < r; ++i) combos *= taps;

  // Index along dim i after padding; -1 means "outside: contributes zero".
  auto fetch_index = [&](int64_t i, int64_t idx) -> int64_t {
    if (idx >= 0 && idx < dims[i]) return idx;
    switch (pad) {
      case GsPad::kZeros: return -1;
      case GsPad::kBorder: return std::clamp<int64_t>(idx, 0, dims[i] - 1);
      case GsPad::kReflection: {
        const int64_t v = static_cast<int64_t>(gs_reflect(static_cast<double>(idx), lo[i], hi[i]));
        return std::clamp<int64_t>(v, 0, dims[i] - 1);
      }
    }
    return -1;
  };

  std::vector<double> coord(r);
  std::vector<std::vector<int64_t>> tap_idx(r, std::vector<int64_t>(taps));
  std::vector<std::vector<double>> tap_w(r, std::vector<double>(taps));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t p = 0; p < out_points; ++p) {
      const double* g = gv.data() + (n * out_points + p) * r;
      for (int64_t i = 0; i < r; ++i) {
        // grid's last dimension lists (x, y, z): the innermost spatial dimension first.
        const float gn = static_cast<float>(g[r - 1 - i]);
        const float len = static_cast<float>(dims[i]);
        float v = align ? (gn + 1) / 2.0f * (len - 1) : ((gn + 1) * len - 1) / 2.0f;
        double c = v;
        if (std::isnan(c)) {
          // A NaN coordinate samples nothing: every tap is outside.
          for (int k = 0; k < taps; ++k) {
            tap_idx[i][k] = -1;
            tap_w[i][k] = 0;
          }
          continue;
        }
        // Far outside the input every padding mode gives the same taps; clamping keeps the integer
        // conversions below defined.
        c = std::clamp(c, -1e12, 1e12);
        if (mode == GsMode::kNearest) c = std::nearbyint(c);
        if (c < lo[i] || c > hi[i]) {
          if (pad == GsPad::kBorder) c = std::clamp(c, 0.0, static_cast<double>(dims[i] - 1));
          else if (pad == GsPad::kReflection) c = static_cast<float>(gs_reflect(c, lo[i], hi[i]));
        }
        coord[i] = c;
        if (mode == GsMode::kNearest) {
          tap_idx[i][0] = fetch_index(i, static_cast<int64_t>(c));
          tap_w[i][0] = 1.0;
        } else {
          const double f = std::floor(c);
          const int64_t x0 = static_cast<int64_t>(f);
          if (mode == GsMode::kLinear) {
            tap_idx[i][0] = fetch_index(i, x0);
            tap_idx[i][1] = fetch_index(i, x0 + 1);
            tap_w[i][0] = 1 - (c - f);
            tap_w[i][1] = c - f;
          } else {
            double cc[4];
            cubic_coeffs(c - f, cc);
            for (int k = 0; k < 4; ++k) {
              tap_idx[i][k] = fetch_index(i, x0 - 1 + k);
              tap_w[i][k] = cc[k];
            }
          }
        }
      }
      for (int64_t ch = 0; ch < C; ++ch) {
        const double* src = xv.data() + (n * C + ch) * in_points;
        double acc = 0;
        for (int64_t combo = 0; combo < combos; ++combo) {
          int64_t rem = combo, offset = 0;
          double w = 1;
          bool outside = false;
          for (int64_t i = r - 1; i >= 0; --i) {
            const int k = static_cast<int>(rem % taps);
            rem /= taps;
            if (tap_idx[i][k] < 0) {
              outside = true;
              break;
            }
            offset += tap_idx[i][k] * in_strides[i];
            w *= tap_w[i][k];
          }
          if (!outside && w != 0) acc += w * src[offset];
        }
        yd[(n * C + ch) * out_points + p] = acc;
      }
    }
  }
  KILN_ASSIGN_OR_RETURN(Tensor out, cast_tensor(y, x.dtype()));
  ctx.set_output(0, out);
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// AffineGrid: grid[n, (d,) h, w] = theta[n] @ [x_w, y_h, (z_d,) 1], with base coordinates in [-1, 1].

std::vector<double> base_coords(int64_t n, bool align) {
  std::vector<double> a(n);
  for (int64_t i = 0; i < n; ++i) {
    if (align) a[i] = n <= 1 ? 0.0 : -1.0 + 2.0 * static_cast<double>(i) / static_cast<double>(n - 1);
    else a[i] = -1.0 + (2.0 * static_cast<double>(i) + 1.0) / static_cast<double>(n);
  }
  return a;
}

Status affine_grid_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("AffineGrid needs theta and size");
  const Tensor& theta = ctx.input(0);
  if (!dtype_is_float(theta.dtype())) return ctx.error("theta must be float, got " + theta.description());
  const std::vector<int64_t> size = ctx.input(1).to_int64_vector();
  if (size.size() != 4 && size.size() != 5) {
    return ctx.error("size must have 4 (2-D) or 5 (3-D) values, got " + std::to_string(size.size()));
  }
  const int64_t sr = static_cast<int64_t>(size.size()) - 2;  // spatial rank
  const int64_t N = size[0];
  if (theta.rank() != 3 || theta.dim(0) != N || theta.dim(1) != sr || theta.dim(2) != sr + 1) {
    return ctx.error("theta shape " + shape_to_string(theta.shape()) + " does not match size (want [" +
                     std::to_string(N) + "," + std::to_string(sr) + "," + std::to_string(sr + 1) + "])");
  }
  int64_t points = 1;
  for (int64_t i = 2; i < static_cast<int64_t>(size.size()); ++i) {
    if (size[i] < 0 || size[i] > (int64_t{1} << 24)) return ctx.error("size value " + std::to_string(size[i]) + " out of range");
    points *= size[i];
  }
  if (points > (int64_t{1} << 28)) return ctx.error("output grid is too large");
  const bool align = ctx.attr_int("align_corners", 0) != 0;
  KILN_ASSIGN_OR_RETURN(std::vector<double> th, doubles_of(theta));
  Shape out_shape = {N};
  for (int64_t i = 2; i < static_cast<int64_t>(size.size()); ++i) out_shape.push_back(size[i]);
  out_shape.push_back(sr);
  Tensor y(DType::kFloat64, out_shape);
  double* yd = y.data<double>();
  // Spatial sizes in order (D,) H, W; homogeneous base point is (x_w, y_h, (z_d,) 1).
  std::vector<int64_t> sp(size.begin() + 2, size.end());
  std::vector<std::vector<double>> base(sr);
  for (int64_t i = 0; i < sr; ++i) base[i] = base_coords(sp[i], align);
  std::vector<double> hom(sr + 1);
  for (int64_t n = 0; n < N; ++n) {
    const double* t = th.data() + n * sr * (sr + 1);
    for (int64_t p = 0; p < points; ++p) {
      int64_t rem = p;
      for (int64_t i = sr - 1; i >= 0; --i) {
        // Spatial dim i (0 = outermost) is homogeneous component sr-1-i (x is the innermost).
        hom[sr - 1 - i] = base[i][rem % sp[i]];
        rem /= sp[i];
      }
      hom[sr] = 1.0;
      for (int64_t row = 0; row < sr; ++row) {
        double acc = 0;
        for (int64_t k = 0; k <= sr; ++k) acc += t[row * (sr + 1) + k] * hom[k];
        yd[(n * points + p) * sr + row] = acc;
      }
    }
  }
  KILN_ASSIGN_OR_RETURN(Tensor out, cast_tensor(y, theta.dtype()));
  ctx.set_output(0, out);
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// RoiAlign (the ONNX reference / onnxruntime algorithm, including its max mode, which takes the maximum of
// the weighted corner values).

Status roi_align_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.error("RoiAlign needs X, rois, batch_indices");
  const Tensor& x = ctx.input(0);
  const Tensor& rois = ctx.input(1);
  const Tensor& bi = ctx.input(2);
  if (x.rank() != 4) return ctx.error("X must be 4-D [N,C,H,W], got " + x.description());
  if (rois.rank() != 2 || rois.dim(1) != 4) return ctx.error("rois must be [num_rois, 4], got " + rois.description());
  if (bi.rank() != 1 || bi.dim(0) != rois.dim(0)) {
    return ctx.error("batch_indices must be [num_rois] = [" + std::to_string(rois.dim(0)) + "], got " + bi.description());
  }
  if (!dtype_is_float(x.dtype())) return ctx.error("X must be float, got " + x.description());
  const std::string mode = ctx.attr_string("mode", "avg");
  if (mode != "avg" && mode != "max") return ctx.error("mode must be avg or max, got '" + mode + "'");
  const std::string ctm = ctx.attr_string("coordinate_transformation_mode", ctx.opset() >= 16 ? "half_pixel" : "output_half_pixel");
  if (ctm != "half_pixel" && ctm != "output_half_pixel") return ctx.error("unknown coordinate_transformation_mode '" + ctm + "'");
  const bool half_pixel = ctm == "half_pixel";
  const int64_t ph_n = ctx.attr_int("output_height", 1), pw_n = ctx.attr_int("output_width", 1);
  const int64_t sampling_ratio = ctx.attr_int("sampling_ratio", 0);
  const double spatial_scale = ctx.attr_float("spatial_scale", 1.0f);
  if (ph_n < 1 || pw_n < 1 || ph_n > 65536 || pw_n > 65536) return ctx.error("output_height/output_width must be in [1, 65536]");
  if (sampling_ratio < 0) return ctx.error("sampling_ratio must be >= 0, got " + std::to_string(sampling_ratio));
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t R = rois.dim(0);
  if (H == 0 || W == 0) return ctx.error("X has an empty spatial dimension: " + shape_to_string(x.shape()));
  KILN_ASSIGN_OR_RETURN(std::vector<double> xv, doubles_of(x));
  KILN_ASSIGN_OR_RETURN(std::vector<double> rv, doubles_of(rois));
  const std::vector<int64_t> batch = bi.to_int64_vector();
  Tensor y(DType::kFloat64, {R, C, ph_n, pw_n});
  double* yd = y.data<double>();
  struct Sample { int64_t pos[4]; double w[4]; };
  for (int64_t n = 0; n < R; ++n) {
    if (batch[n] < 0 || batch[n] >= N) {
      return ctx.error("batch_indices[" + std::to_string(n) + "] = " + std::to_string(batch[n]) + " is out of range [0, " +
                       std::to_string(N) + ")");
    }
    const double offset = half_pixel ? 0.5 : 0.0;
    const double start_w = rv[n * 4 + 0] * spatial_scale - offset, start_h = rv[n * 4 + 1] * spatial_scale - offset;
    const double end_w = rv[n * 4 + 2] * spatial_scale - offset, end_h = rv[n * 4 + 3] * spatial_scale - offset;
    double roi_w = end_w - start_w, roi_h = end_h - start_h;
    if (!half_pixel) {
      roi_w = std::max(roi_w, 1.0);
      roi_h = std::max(roi_h, 1.0);
    }
    if (!std::isfinite(roi_w) || !std::isfinite(roi_h)) return ctx.error("roi " + std::to_string(n) + " is not finite");
    const double bin_h = roi_h / static_cast<double>(ph_n), bin_w = roi_w / static_cast<double>(pw_n);
    if (sampling_ratio == 0 && (bin_h > 4096 || bin_w > 4096)) {
      return ctx.error("roi " + std::to_string(n) + " needs too many samples per bin (bin size " + std::to_string(bin_h) +
                       " x " + std::to_string(bin_w) + ")");
    }
    // A negative bin size (reversed roi) takes no samples, as the reference's empty range does.
    const int64_t grid_h = sampling_ratio > 0 ? sampling_ratio : (bin_h <= 0 ? 0 : static_cast<int64_t>(std::ceil(bin_h)));
    const int64_t grid_w = sampling_ratio > 0 ? sampling_ratio : (bin_w <= 0 ? 0 : static_cast<int64_t>(std::ceil(bin_w)));
    if (grid_h > 4096 || grid_w > 4096) return ctx.error("roi " + std::to_string(n) + " needs too many samples per bin");
    const int64_t gh = std::max<int64_t>(grid_h, 0), gw = std::max<int64_t>(grid_w, 0);
    if (ph_n * pw_n * gh * gw > (int64_t{1} << 26)) {
      return ctx.error("roi " + std::to_string(n) + " needs " + std::to_string(ph_n * pw_n * gh * gw) + " samples; too many");
    }
    const double count = static_cast<double>(std::max<int64_t>(gh * gw, 1));
    // Bilinear sample positions and weights for every (bin, sample) of this roi.
    std::vector<Sample> samples;
    samples.reserve(static_cast<size_t>(ph_n * pw_n * gh * gw));
    for (int64_t ph = 0; ph < ph_n; ++ph) {
      for (int64_t pw = 0; pw < pw_n; ++pw) {
        for (int64_t iy = 0; iy < gh; ++iy) {
          const double yy = start_h + static_cast<double>(ph) * bin_h + (static_cast<double>(iy) + 0.5) * bin_h / static_cast<double>(gh);
          for (int64_t ix = 0; ix < gw; ++ix) {
            double xx = start_w + static_cast<double>(pw) * bin_w + (static_cast<double>(ix) + 0.5) * bin_w / static_cast<double>(gw);
            double yv = yy;
            Sample s{{0, 0, 0, 0}, {0, 0, 0, 0}};
            if (yv < -1.0 || yv > static_cast<double>(H) || xx < -1.0 || xx > static_cast<double>(W) || H == 0 || W == 0) {
              samples.push_back(s);
              continue;
            }
            yv = std::max(yv, 0.0);
            xx = std::max(xx, 0.0);
            int64_t y_low = static_cast<int64_t>(yv), x_low = static_cast<int64_t>(xx), y_high, x_high;
            if (y_low >= H - 1) { y_high = y_low = H - 1; yv = static_cast<double>(y_low); } else { y_high = y_low + 1; }
            if (x_low >= W - 1) { x_high = x_low = W - 1; xx = static_cast<double>(x_low); } else { x_high = x_low + 1; }
            const double ly = yv - static_cast<double>(y_low), lx = xx - static_cast<double>(x_low);
            const double hy = 1.0 - ly, hx = 1.0 - lx;
            s = {{y_low * W + x_low, y_low * W + x_high, y_high * W + x_low, y_high * W + x_high},
                 {hy * hx, hy * lx, ly * hx, ly * lx}};
            samples.push_back(s);
          }
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const double* src = xv.data() + (batch[n] * C + c) * H * W;
      size_t si = 0;
      for (int64_t ph = 0; ph < ph_n; ++ph) {
        for (int64_t pw = 0; pw < pw_n; ++pw) {
          double out = 0;
          bool first = true;
          for (int64_t k = 0; k < gh * gw; ++k, ++si) {
            const Sample& s = samples[si];
            if (mode == "avg") {
              for (int j = 0; j < 4; ++j) out += s.w[j] * src[s.pos[j]];
            } else {
              double v = s.w[0] * src[s.pos[0]];
              for (int j = 1; j < 4; ++j) v = std::max(v, s.w[j] * src[s.pos[j]]);
              out = first ? v : std::max(out, v);
              first = false;
            }
          }
          if (mode == "avg") out /= count;
          yd[((n * C + c) * ph_n + ph) * pw_n + pw] = out;
        }
      }
    }
  }
  KILN_ASSIGN_OR_RETURN(Tensor out, cast_tensor(y, x.dtype()));
  ctx.set_output(0, out);
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// NonMaxSuppression

bool suppress_by_iou(const double* b1, const double* b2, bool center_point_box, double iou_threshold) {
  double x1_min, x1_max, x2_min, x2_max, y1_min, y1_max, y2_min, y2_max;
  if (!center_point_box) {  // [y1, x1, y2, x2], corners in any order
    x1_min = std::min(b1[1], b1[3]); x1_max = std::max(b1[1], b1[3]);
    x2_min = std::min(b2[1], b2[3]); x2_max = std::max(b2[1], b2[3]);
    y1_min = std::min(b1[0], b1[2]); y1_max = std::max(b1[0], b1[2]);
    y2_min = std::min(b2[0], b2[2]); y2_max = std::max(b2[0], b2[2]);
  } else {  // [x_center, y_center, width, height]
    x1_min = b1[0] - b1[2] / 2; x1_max = b1[0] + b1[2] / 2;
    x2_min = b2[0] - b2[2] / 2; x2_max = b2[0] + b2[2] / 2;
    y1_min = b1[1] - b1[3] / 2; y1_max = b1[1] + b1[3] / 2;
    y2_min = b2[1] - b2[3] / 2; y2_max = b2[1] + b2[3] / 2;
  }
  const double ix_min = std::max(x1_min, x2_min), ix_max = std::min(x1_max, x2_max);
  if (ix_max <= ix_min) return false;
  const double iy_min = std::max(y1_min, y2_min), iy_max = std::min(y1_max, y2_max);
  if (iy_max <= iy_min) return false;
  const double inter = (ix_max - ix_min) * (iy_max - iy_min);
  if (inter <= 0) return false;
  const double area1 = (x1_max - x1_min) * (y1_max - y1_min);
  const double area2 = (x2_max - x2_min) * (y2_max - y2_min);
  const double uni = area1 + area2 - inter;
  if (area1 <= 0 || area2 <= 0 || uni <= 0) return false;
  return inter / uni > iou_threshold;
}

Status nms_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("NonMaxSuppression needs boxes and scores");
  const Tensor& boxes = ctx.input(0);
  const Tensor& scores = ctx.input(1);
  if (boxes.rank() != 3 || boxes.dim(2) != 4) return ctx.error("boxes must be [batches, boxes, 4], got " + boxes.description());
  if (scores.rank() != 3 || scores.dim(0) != boxes.dim(0) || scores.dim(2) != boxes.dim(1)) {
    return ctx.error("scores shape " + shape_to_string(scores.shape()) + " does not match boxes shape " +
                     shape_to_string(boxes.shape()) + " (want [batches, classes, boxes])");
  }
  int64_t max_out = 0;
  if (ctx.has_input(2) && ctx.input(2).numel() > 0) max_out = std::max<int64_t>(ctx.input(2).scalar_as_int(0), 0);
  double iou_threshold = 0, score_threshold = 0;
  bool has_score_threshold = false;
  if (ctx.has_input(3) && ctx.input(3).numel() > 0) iou_threshold = ctx.input(3).scalar_as_double(0);
  if (ctx.has_input(4) && ctx.input(4).numel() > 0) {
    score_threshold = ctx.input(4).scalar_as_double(0);
    has_score_threshold = true;
  }
  const int64_t cpb = ctx.attr_int("center_point_box", 0);
  if (cpb != 0 && cpb != 1) return ctx.error("center_point_box must be 0 or 1, got " + std::to_string(cpb));
  const int64_t B = boxes.dim(0), K = scores.dim(1), M = boxes.dim(1);
  KILN_ASSIGN_OR_RETURN(std::vector<double> bv, doubles_of(boxes));
  KILN_ASSIGN_OR_RETURN(std::vector<double> sv, doubles_of(scores));
  std::vector<int64_t> selected;  // triples (batch, class, box)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      const double* s = sv.data() + (b * K + k) * M;
      std::vector<int64_t> cand;
      for (int64_t i = 0; i < M; ++i) {
        if (!has_score_threshold || s[i] > score_threshold) cand.push_back(i);
      }
      // Highest score first; equal scores keep the lower box index first.
      // (NaN scores sort last, so the comparison stays a strict weak order.)
      std::stable_sort(cand.begin(), cand.end(), [&](int64_t a, int64_t c) {
        if (std::isnan(s[a]) || std::isnan(s[c])) return !std::isnan(s[a]) && std::isnan(s[c]);
        return s[a] > s[c];
      });
      std::vector<int64_t> kept;
      for (int64_t i : cand) {
        if (static_cast<int64_t>(kept.size()) >= max_out) break;
        bool keep = true;
        for (int64_t j : kept) {
          if (suppress_by_iou(bv.data() + (b * M + i) * 4, bv.data() + (b * M + j) * 4, cpb == 1, iou_threshold)) {
            keep = false;
            break;
          }
        }
        if (keep) {
          kept.push_back(i);
          selected.insert(selected.end(), {b, k, i});
        }
      }
    }
  }
  const int64_t count = static_cast<int64_t>(selected.size()) / 3;
  ctx.set_output(0, Tensor::from_vector<int64_t>(DType::kInt64, {count, 3}, selected));
  return OkStatus();
}

}  // namespace

void register_image_ops(ir::OpRegistry& r) {
  r.add("GridSample", 16, grid_sample_kernel);
  r.add("AffineGrid", 20, affine_grid_kernel);
  r.add("RoiAlign", 10, roi_align_kernel);
  ir::OpSchema nms;
  nms.op_type = "NonMaxSuppression";
  nms.since_version = 10;
  nms.cpu_kernel = nms_kernel;
  nms.data_dependent_shape = true;
  r.add(nms);
}

}  // namespace kiln::cpu
