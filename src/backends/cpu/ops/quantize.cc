// CPU reference kernels: quantize ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear).
//
// Scales and zero points come in three layouts (ONNX's reshape_input):
//   per-tensor: a scalar or a 1-element tensor;
//   per-axis:   a 1-D tensor of size x.shape[axis];
//   blocked:    same rank as x, x.shape[axis] replaced by ceil(x.shape[axis] / block_size).
// Every element of x is mapped to one scale index by QuantLayout below. Arithmetic is in float32 (as ONNX's
// reference does), rounding is round-half-to-even (np.rint).
#include <algorithm>
#include <cmath>
#include <limits>

#include "backends/cpu/kernel_util.h"
#include "core/float_formats.h"

namespace kiln::cpu {
namespace {

// Any numeric tensor as float32 values.
Result<std::vector<float>> as_floats(const Tensor& t) {
  KILN_ASSIGN_OR_RETURN(Tensor f, cast_tensor(t, DType::kFloat32));
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

// Maps the linear index of an element of x to the linear index of its scale / zero point.
struct QuantLayout {
  enum Kind { kPerTensor, kPerAxis, kBlocked } kind = kPerTensor;
  int64_t axis_dim = 1, inner = 1, block = 1, num_blocks = 1;

  int64_t index(int64_t i) const {
    switch (kind) {
      case kPerTensor: return 0;
      case kPerAxis: return (i / inner) % axis_dim;
      case kBlocked: {
        int64_t outer = i / (inner * axis_dim);
        int64_t a = (i / inner) % axis_dim;
        int64_t in = i % inner;
        return (outer * num_blocks + a / block) * inner + in;
      }
    }
    return 0;
  }
};

Result<QuantLayout> make_layout(const KernelContext& ctx, const Shape& x_shape, const Tensor& scale,
                                const char* what) {
  QuantLayout L;
  if (scale.rank() == 0 || (scale.rank() == 1 && scale.numel() == 1 && ctx.attr_int("block_size", 0) == 0)) {
    return L;
  }
  const int64_t rank = static_cast<int64_t>(x_shape.size());
  auto axis_or = normalize_axis(ctx.attr_int("axis", 1), rank);
  if (!axis_or.ok()) {
    return ctx.error(std::string(what) + ": axis " + std::to_string(ctx.attr_int("axis", 1)) +
                     " is out of range for input of rank " + std::to_string(rank));
  }
  const int64_t axis = *axis_or;
  L.axis_dim = x_shape[axis];
  for (int64_t d = axis + 1; d < rank; ++d) L.inner *= x_shape[d];
  const int64_t block_size = ctx.attr_int("block_size", 0);
  if (block_size < 0) return ctx.error("block_size must be >= 0, got " + std::to_string(block_size));
  if (block_size == 0) {
    if (scale.rank() != 1 || scale.dim(0) != L.axis_dim) {
      return ctx.error(std::string(what) + " of shape " + shape_to_string(scale.shape()) +
                       " must be a scalar or a 1-D tensor of size " + std::to_string(L.axis_dim) +
                       " (input shape " + shape_to_string(x_shape) + ", axis " + std::to_string(axis) + ")");
    }
    L.kind = QuantLayout::kPerAxis;
    return L;
  }
  L.kind = QuantLayout::kBlocked;
  L.block = block_size;
  L.num_blocks = (L.axis_dim + block_size - 1) / block_size;
  Shape want = x_shape;
  want[axis] = L.num_blocks;
  if (scale.shape() != want) {
    return ctx.error(std::string(what) + " of shape " + shape_to_string(scale.shape()) + " does not match " +
                     shape_to_string(want) + " for blocked quantization of " + shape_to_string(x_shape) +
                     " with axis " + std::to_string(axis) + " and block_size " + std::to_string(block_size));
  }
  return L;
}

bool is_quant_int_type(DType t, int64_t* lo, int64_t* hi) {
  switch (t) {
    case DType::kUInt8: *lo = 0; *hi = 255; return true;
    case DType::kInt8: *lo = -128; *hi = 127; return true;
    case DType::kUInt16: *lo = 0; *hi = 65535; return true;
    case DType::kInt16: *lo = -32768; *hi = 32767; return true;
    case DType::kUInt4: *lo = 0; *hi = 15; return true;
    case DType::kInt4: *lo = -8; *hi = 7; return true;
    case DType::kUInt2: *lo = 0; *hi = 3; return true;
    case DType::kInt2: *lo = -2; *hi = 1; return true;
    default: return false;
  }
}

bool is_fp8(DType t) {
  return t == DType::kFloat8E4M3FN || t == DType::kFloat8E4M3FNUZ || t == DType::kFloat8E5M2 ||
         t == DType::kFloat8E5M2FNUZ;
}

// Stores an integer already clamped to the range of `t` into element i.
void store_int(Tensor& y, int64_t i, int64_t v) {
  switch (y.dtype()) {
    case DType::kUInt8: case DType::kUInt4: case DType::kUInt2: y.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
    case DType::kInt8: case DType::kInt4: case DType::kInt2: y.data<int8_t>()[i] = static_cast<int8_t>(v); break;
    case DType::kUInt16: y.data<uint16_t>()[i] = static_cast<uint16_t>(v); break;
    case DType::kInt16: y.data<int16_t>()[i] = static_cast<int16_t>(v); break;
    default: break;
  }
}

uint8_t float_to_fp8(DType t, float f, bool saturate) {
  switch (t) {
    case DType::kFloat8E4M3FN: return float_to_fp8e4m3fn(f, saturate);
    case DType::kFloat8E4M3FNUZ: return float_to_fp8e4m3fnuz(f, saturate);
    case DType::kFloat8E5M2: return float_to_fp8e5m2(f, saturate);
    case DType::kFloat8E5M2FNUZ: return float_to_fp8e5m2fnuz(f, saturate);
    default: return 0;
  }
}

Status quantize_linear(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("QuantizeLinear needs inputs x and y_scale");
  const Tensor& x = ctx.input(0);
  const Tensor& scale = ctx.input(1);
  const bool has_zp = ctx.has_input(2);
  DType out_type = DType::kUInt8;
  const int64_t output_dtype = ctx.attr_int("output_dtype", 0);
  if (output_dtype != 0) {
    if (!dtype_is_valid(static_cast<int32_t>(output_dtype))) {
      return ctx.error("output_dtype " + std::to_string(output_dtype) + " is not a valid type");
    }
    out_type = static_cast<DType>(output_dtype);
  }
  if (has_zp) {
    DType zt = ctx.input(2).dtype();
    if (output_dtype != 0 && zt != out_type) {
      return ctx.error("output_dtype " + dtype_name(out_type) + " does not match y_zero_point type " + dtype_name(zt));
    }
    out_type = zt;
  }
  int64_t lo = 0, hi = 0;
  const bool int_out = is_quant_int_type(out_type, &lo, &hi);
  if (!int_out && !is_fp8(out_type) && out_type != DType::kFloat4E2M1) {
    return ctx.error("unsupported quantized output type " + dtype_name(out_type));
  }
  if (scale.rank() > 1 && ctx.attr_int("block_size", 0) == 0) {
    return ctx.error("y_scale of shape " + shape_to_string(scale.shape()) + " must be a scalar or 1-D without block_size");
  }
  KILN_ASSIGN_OR_RETURN(QuantLayout layout, make_layout(ctx, x.shape(), scale, "y_scale"));
  if (has_zp && ctx.input(2).shape() != scale.shape() &&
      !(ctx.input(2).numel() == 1 && scale.numel() == 1)) {
    return ctx.error("y_zero_point shape " + shape_to_string(ctx.input(2).shape()) + " differs from y_scale shape " +
                     shape_to_string(scale.shape()));
  }
  KILN_ASSIGN_OR_RETURN(std::vector<float> xs, as_floats(x));
  KILN_ASSIGN_OR_RETURN(std::vector<float> ss, as_floats(scale));
  std::vector<float> zs;
  if (has_zp) {
    KILN_ASSIGN_OR_RETURN(zs, as_floats(ctx.input(2)));
  }
  const bool saturate = ctx.attr_int("saturate", 1) != 0;
  // x / scale is computed in the `precision` attribute's type (opset 23+), or, as numpy does, in float16 /
  // bfloat16 when x and the scale both have that type; otherwise in float32.
  DType qdt = DType::kFloat32;
  const int64_t precision = ctx.attr_int("precision", 0);
  if (precision != 0) {
    if (precision != static_cast<int64_t>(DType::kFloat32) && precision != static_cast<int64_t>(DType::kFloat16) &&
        precision != static_cast<int64_t>(DType::kBFloat16)) {
      return ctx.error("precision must be float32, float16 or bfloat16, got " + std::to_string(precision));
    }
    qdt = static_cast<DType>(precision);
  } else if (x.dtype() == scale.dtype() && (x.dtype() == DType::kFloat16 || x.dtype() == DType::kBFloat16)) {
    qdt = x.dtype();
  }
  auto in_qdt = [qdt](float v) {
    if (qdt == DType::kFloat16) return half_to_float(float_to_half(v));
    if (qdt == DType::kBFloat16) return bf16_to_float(float_to_bf16(v));
    return v;
  };
  Tensor y(out_type, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t si = layout.index(i);
    const float q = in_qdt(in_qdt(xs[i]) / in_qdt(ss[si]));
    if (int_out) {
      // Clamp in double first so that huge values and infinities saturate instead of overflowing.
      double r = std::nearbyint(static_cast<double>(q));
      if (has_zp) r += zs[si];
      if (std::isnan(r)) r = 0;
      r = std::clamp(r, static_cast<double>(lo), static_cast<double>(hi));
      store_int(y, i, static_cast<int64_t>(r));
    } else if (is_fp8(out_type)) {
      y.data<uint8_t>()[i] = float_to_fp8(out_type, q, saturate);
    } else {  // float4e2m1: the zero point is added in float, then rounded to the format
      const float v = has_zp ? q + zs[si] : q;
      y.data<uint8_t>()[i] = float_to_fp4e2m1(v, true);
    }
  }
  ctx.set_output(0, y);
  return OkStatus();
}

Status dequantize_linear(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("DequantizeLinear needs inputs x and x_scale");
  const Tensor& x = ctx.input(0);
  const Tensor& scale = ctx.input(1);
  const bool has_zp = ctx.has_input(2);
  const DType xt = x.dtype();
  if (scale.rank() > 1 && ctx.attr_int("block_size", 0) == 0) {
    return ctx.error("x_scale of shape " + shape_to_string(scale.shape()) + " must be a scalar or 1-D without block_size");
  }
  KILN_ASSIGN_OR_RETURN(QuantLayout layout, make_layout(ctx, x.shape(), scale, "x_scale"));
  DType out_type = scale.dtype();
  const int64_t output_dtype = ctx.attr_int("output_dtype", 0);
  if (output_dtype != 0) {
    if (!dtype_is_valid(static_cast<int32_t>(output_dtype))) {
      return ctx.error("output_dtype " + std::to_string(output_dtype) + " is not a valid type");
    }
    out_type = static_cast<DType>(output_dtype);
  }
  if (!dtype_is_float(out_type)) return ctx.error("output type " + dtype_name(out_type) + " is not a float type");
  KILN_ASSIGN_OR_RETURN(std::vector<float> xs, as_floats(x));
  KILN_ASSIGN_OR_RETURN(std::vector<float> ss, as_floats(scale));
  // Zero points of float8/float4 inputs are ignored (they must be zero for float8), as ONNX's reference does.
  const bool use_zp = has_zp && !is_fp8(xt) && xt != DType::kFloat4E2M1;
  std::vector<float> zs;
  if (has_zp) {
    const Tensor& zp = ctx.input(2);
    if (use_zp && zp.dtype() != xt) {
      return ctx.error("x_zero_point type " + dtype_name(zp.dtype()) + " differs from x type " + dtype_name(xt));
    }
    if (zp.shape() != scale.shape() && !(zp.numel() == 1 && scale.numel() == 1)) {
      return ctx.error("x_zero_point shape " + shape_to_string(zp.shape()) + " differs from x_scale shape " +
                       shape_to_string(scale.shape()));
    }
    KILN_ASSIGN_OR_RETURN(zs, as_floats(zp));
  }
  Tensor y(DType::kFloat32, x.shape());
  float* yd = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t si = layout.index(i);
    const float dx = use_zp ? xs[i] - zs[si] : xs[i];
    yd[i] = dx * ss[si];
  }
  if (out_type == DType::kFloat64) {
    KILN_ASSIGN_OR_RETURN(Tensor yy, cast_tensor(y, DType::kFloat64));
    ctx.set_output(0, yy);
  } else {
    ctx.set_output(0, narrow_from_float32(y, out_type));
  }
  return OkStatus();
}

Status dynamic_quantize_linear(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("DynamicQuantizeLinear needs input x");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kFloat32) return ctx.error("x must be float32, got " + x.description());
  const float* xd = x.data<float>();
  const int64_t n = x.numel();
  float maxx = 0.f, minx = 0.f;  // the range always includes 0
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(xd[i])) return ctx.error("x contains NaN");
    maxx = std::max(maxx, xd[i]);
    minx = std::min(minx, xd[i]);
  }
  const float scale = (maxx == minx ? 1.0f : (maxx - minx)) / 255.0f;
  const float initial_zp = 0.0f - minx / scale;
  const float zp = std::nearbyint(std::clamp(initial_zp, 0.0f, 255.0f));
  Tensor y(DType::kUInt8, x.shape());
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(xd[i] / scale) + zp;
    y.data<uint8_t>()[i] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
  }
  ctx.set_output(0, y);
  ctx.set_output(1, Tensor::scalar<float>(DType::kFloat32, scale));
  ctx.set_output(2, Tensor::scalar<uint8_t>(DType::kUInt8, static_cast<uint8_t>(zp)));
  return OkStatus();
}

}  // namespace

void register_quantize_ops(ir::OpRegistry& r) {
  r.add("QuantizeLinear", 10, quantize_linear);
  r.add("DequantizeLinear", 10, dequantize_linear);
  r.add("DynamicQuantizeLinear", 11, dynamic_quantize_linear);
}

}  // namespace kiln::cpu
