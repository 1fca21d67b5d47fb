// Conversions between float32 and the narrow floating-point formats that Kiln stores as raw bits.
// Rounding is round-to-nearest-even everywhere, as ONNX's reference implementation does.
#pragma once

#include <cstdint>
#include <cstring>

namespace kiln {

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_bf16(float f);

// 8-bit and 4-bit formats (ONNX FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, FLOAT8E8M0,
// FLOAT4E2M1). `saturate` clamps out-of-range finite values to the largest finite value, as ONNX's Cast
// does by default; otherwise they become inf or NaN where the format has them.
float fp8e4m3fn_to_float(uint8_t v);
float fp8e4m3fnuz_to_float(uint8_t v);
float fp8e5m2_to_float(uint8_t v);
float fp8e5m2fnuz_to_float(uint8_t v);
float fp8e8m0_to_float(uint8_t v);
float fp4e2m1_to_float(uint8_t v);
uint8_t float_to_fp8e4m3fn(float f, bool saturate);
uint8_t float_to_fp8e4m3fnuz(float f, bool saturate);
uint8_t float_to_fp8e5m2(float f, bool saturate);
uint8_t float_to_fp8e5m2fnuz(float f, bool saturate);
// E8M0 is a power of two; ONNX rounds up ("round_mode" attribute, default "up").
uint8_t float_to_fp8e8m0(float f, bool saturate, const char* round_mode = "up");
uint8_t float_to_fp4e2m1(float f, bool saturate);

}  // namespace kiln
