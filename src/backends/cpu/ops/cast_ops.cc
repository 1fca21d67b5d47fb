// CPU reference kernels: Cast, CastLike, BitCast.
//
// The element conversions themselves live in src/core/cast.cc (cast_tensor), shared with every kernel that
// widens float16 to float32; these kernels add the attributes: `saturate` (fp8 targets) and `round_mode`
// (float8e8m0 targets, which cast_tensor always rounds up).
#include <cstring>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "core/float_formats.h"

namespace kiln::cpu {
namespace {

bool is_valid_target(int64_t to) {
  if (to < 0 || to > 1000 || !dtype_is_valid(static_cast<int32_t>(to))) return false;
  const DType t = static_cast<DType>(to);
  return t != DType::kUndefined && t != DType::kComplex64 && t != DType::kComplex128;
}

// Shared by Cast and CastLike: converts `x` to `to` honouring saturate and round_mode.
Status cast_into_output(KernelContext& ctx, const Tensor& x, DType to) {
  const int64_t saturate_attr = ctx.attr_int("saturate", 1);
  if (saturate_attr != 0 && saturate_attr != 1)
    return ctx.error("saturate must be 0 or 1, got " + std::to_string(saturate_attr));
  const bool saturate = saturate_attr != 0;
  const std::string round_mode = ctx.attr_string("round_mode", "up");
  if (round_mode != "up" && round_mode != "down" && round_mode != "nearest")
    return ctx.error("round_mode must be 'up', 'down' or 'nearest', got '" + round_mode + "'");
  if (x.dtype() == DType::kComplex64 || x.dtype() == DType::kComplex128)
    return ctx.error("cannot cast from " + dtype_name(x.dtype()));

  if (to == DType::kFloat8E8M0 && x.dtype() != DType::kFloat8E8M0 && x.dtype() != DType::kString) {
    // ONNX's reference converts to float32 first, then rounds the exponent by round_mode.
    auto f = cast_tensor(x, DType::kFloat32);
    if (!f.ok()) return ctx.error(f.status().message());
    Tensor out(DType::kFloat8E8M0, x.shape());
    const float* src = f->data<float>();
    uint8_t* dst = out.data<uint8_t>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) dst[i] = float_to_fp8e8m0(src[i], saturate, round_mode.c_str());
    ctx.set_output(0, out);
    return OkStatus();
  }
  auto y = cast_tensor(x, to, saturate);
  if (!y.ok()) return ctx.error(y.status().message());
  ctx.set_output(0, *y);
  return OkStatus();
}

Status cast_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.input_value(0).is_tensor()) return ctx.error("input 0 must be a tensor");
  if (!ctx.has_attr("to")) return ctx.error("attribute 'to' is required");
  const int64_t to = ctx.attr_int("to", 0);
  if (!is_valid_target(to)) return ctx.error("attribute 'to' = " + std::to_string(to) + " is not a supported dtype");
  return cast_into_output(ctx, ctx.input(0), static_cast<DType>(to));
}

Status cast_like_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.input_value(0).is_tensor()) return ctx.error("input 0 must be a tensor");
  if (!ctx.has_input(1) || !ctx.input_value(1).is_tensor())
    return ctx.error("input 1 (target_type) must be a tensor");
  const DType to = ctx.input(1).dtype();
  if (!is_valid_target(static_cast<int64_t>(to))) return ctx.error("target_type has unsupported dtype " + dtype_name(to));
  return cast_into_output(ctx, ctx.input(0), to);
}

// Reinterprets the bits of each element. Sub-byte types are stored one per byte, so a 4-bit (or 2-bit)
// pattern is masked to its width and sign-extended when the target is signed.
Status bitcast_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.input_value(0).is_tensor()) return ctx.error("input 0 must be a tensor");
  if (!ctx.has_attr("to")) return ctx.error("attribute 'to' is required");
  const int64_t to_code = ctx.attr_int("to", 0);
  if (!is_valid_target(to_code))
    return ctx.error("attribute 'to' = " + std::to_string(to_code) + " is not a supported dtype");
  const Tensor& x = ctx.input(0);
  const DType to = static_cast<DType>(to_code);
  if (x.dtype() == DType::kString || to == DType::kString) return ctx.error("BitCast does not support strings");
  if (dtype_bits(x.dtype()) != dtype_bits(to)) {
    return ctx.error("BitCast needs types of the same bit width: " + dtype_name(x.dtype()) + " (" +
                     std::to_string(dtype_bits(x.dtype())) + " bits) and " + dtype_name(to) + " (" +
                     std::to_string(dtype_bits(to)) + " bits)");
  }
  Tensor out(to, x.shape());
  if (x.nbytes() > 0) std::memcpy(out.raw_data(), x.raw_data(), x.nbytes());
  if (dtype_is_sub_byte(to)) {
    const int bits = dtype_bits(to);
    const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1);
    uint8_t* p = out.data<uint8_t>();
    for (int64_t i = 0, n = out.numel(); i < n; ++i) {
      uint8_t v = p[i] & mask;
      if (dtype_is_signed_int(to) && (v >> (bits - 1)) != 0) v = static_cast<uint8_t>(v | ~mask);  // sign-extend
      p[i] = v;
    }
  } else if (to == DType::kBool) {
    // A C++ bool must hold 0 or 1; any other bit pattern reads as true.
    uint8_t* p = out.data<uint8_t>();
    for (int64_t i = 0, n = out.numel(); i < n; ++i) p[i] = p[i] != 0;
  }
  ctx.set_output(0, out);
  return OkStatus();
}

}  // namespace

void register_cast_ops_ops(ir::OpRegistry& r) {
  r.add("Cast", 1, cast_kernel);
  r.add("CastLike", 15, cast_like_kernel);
  r.add("BitCast", 26, bitcast_kernel);
}

}  // namespace kiln::cpu
