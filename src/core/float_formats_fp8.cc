// fp8 / fp4 / e8m0 conversions, matching ONNX's reference implementation (ml_dtypes for the casts,
// onnx.numpy_helper.to_float8e8m0 for E8M0).
//
// All the small formats except E8M0 are "sign, exponent, mantissa" minifloats; they differ only in their
// widths, their bias and how they spend the top codes:
//   E4M3FN   bias 7:  no infinity; S.1111.111 is NaN; everything else is a number (max 448).
//   E4M3FNUZ bias 8:  no infinity, no negative zero; 0x80 is the only NaN (max 240).
//   E5M2     bias 15: IEEE-like: exponent 11111 is inf (mantissa 0) or NaN (max 57344).
//   E5M2FNUZ bias 16: like E4M3FNUZ (max 57344).
//   E2M1     bias 1:  no infinity, no NaN (max 6).
// One table-driven encoder/decoder handles them all; rounding is round-to-nearest-even.
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>

#include "core/float_formats.h"

namespace kiln {
namespace {

enum class Special {
  kIeee,  // top exponent is inf / NaN (E5M2)
  kFn,    // all-ones exponent and mantissa is NaN, no inf (E4M3FN)
  kFnuz,  // 0x80 (negative zero) is NaN, no inf, no -0 (E4M3FNUZ, E5M2FNUZ)
  kNone,  // no inf, no NaN (E2M1)
};

struct MiniFloat {
  int exp_bits;
  int mant_bits;
  int bias;
  Special special;

  int total_bits() const { return 1 + exp_bits + mant_bits; }
  uint32_t sign_bit() const { return 1u << (exp_bits + mant_bits); }
  // Largest finite value's code, without sign.
  uint32_t max_code() const {
    const uint32_t all = sign_bit() - 1;  // every exponent and mantissa bit set
    switch (special) {
      case Special::kIeee: return all - (1u << mant_bits);  // exponent one below all-ones, full mantissa
      case Special::kFn: return all - 1;                   // all-ones minus the NaN code
      case Special::kFnuz:
      case Special::kNone: return all;
    }
    return all;
  }
  uint32_t nan_code(bool negative) const {
    switch (special) {
      case Special::kIeee: return (negative ? sign_bit() : 0) | (((1u << exp_bits) - 1) << mant_bits) | (1u << (mant_bits - 1));
      case Special::kFn: return (negative ? sign_bit() : 0) | (sign_bit() - 1);
      case Special::kFnuz: return sign_bit();
      case Special::kNone: return 0;  // unreachable for NaN handling; see encode()
    }
    return 0;
  }

  double decode(uint32_t v) const {
    const bool negative = (v & sign_bit()) != 0;
    const uint32_t mag = v & (sign_bit() - 1);
    const uint32_t exp_field = mag >> mant_bits;
    const uint32_t mant = mag & ((1u << mant_bits) - 1);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    switch (special) {
      case Special::kIeee:
        if (exp_field == (1u << exp_bits) - 1) {
          if (mant != 0) return nan;
          return negative ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
        }
        break;
      case Special::kFn:
        if (mag == sign_bit() - 1) return nan;
        break;
      case Special::kFnuz:
        if (v == sign_bit()) return nan;
        break;
      case Special::kNone: break;
    }
    double value;
    if (exp_field == 0) {
      value = std::ldexp(static_cast<double>(mant), 1 - bias - mant_bits);  // subnormal
    } else {
      value = std::ldexp(static_cast<double>(mant | (1u << mant_bits)), static_cast<int>(exp_field) - bias - mant_bits);
    }
    return negative ? -value : value;
  }

  // Code of the non-negative finite value `a`, which is already exactly representable.
  uint32_t code_of_exact(double a) const {
    if (a == 0) return 0;
    const int emin = 1 - bias;  // exponent of the smallest normal
    int e;
    std::frexp(a, &e);
    e -= 1;  // a = 1.xxx * 2^e
    if (e < emin) return static_cast<uint32_t>(std::ldexp(a, mant_bits - emin));  // subnormal
    const uint32_t mant = static_cast<uint32_t>(std::ldexp(a, mant_bits - e)) - (1u << mant_bits);
    return (static_cast<uint32_t>(e + bias) << mant_bits) | mant;
  }

  // Round-to-nearest-even encoding. Out-of-range values become the largest finite value when `saturate`
  // (or when the format has neither inf nor NaN), else inf (IEEE) or NaN.
  uint32_t encode(float f, bool saturate) const {
    const bool negative = std::signbit(f);
    const uint32_t sign = negative ? sign_bit() : 0;
    if (std::isnan(f)) {
      // E2M1 has no NaN; ml_dtypes' conversion gives a zero whose sign is the opposite of the NaN's.
      if (special == Special::kNone) return negative ? 0 : sign_bit();
      return nan_code(negative);
    }
    const double max_value = decode(max_code());
    double a = std::fabs(static_cast<double>(f));
    if (std::isinf(a)) {
      if (saturate || special == Special::kNone) return sign | max_code();
      if (special == Special::kIeee) return sign | (((1u << exp_bits) - 1) << mant_bits);
      return nan_code(negative);
    }
    // Round to the grid of the binade that `a` falls in (the subnormal grid below the smallest normal).
    const int emin = 1 - bias;
    int e = emin;
    if (a != 0) {
      std::frexp(a, &e);
      e -= 1;
      if (e < emin) e = emin;
    }
    const double quantum = std::ldexp(1.0, e - mant_bits);
    const double rounded = std::nearbyint(a / quantum) * quantum;  // default FP mode: ties to even
    if (rounded > max_value) {
      if (saturate || special == Special::kNone) return sign | max_code();
      if (special == Special::kIeee) return sign | (((1u << exp_bits) - 1) << mant_bits);
      return nan_code(negative);
    }
    const uint32_t code = code_of_exact(rounded);
    if (code == 0 && special == Special::kFnuz) return 0;  // no negative zero
    return sign | code;
  }
};

constexpr MiniFloat kE4M3FN{4, 3, 7, Special::kFn};
constexpr MiniFloat kE4M3FNUZ{4, 3, 8, Special::kFnuz};
constexpr MiniFloat kE5M2{5, 2, 15, Special::kIeee};
constexpr MiniFloat kE5M2FNUZ{5, 2, 16, Special::kFnuz};
constexpr MiniFloat kE2M1{2, 1, 1, Special::kNone};

}  // namespace

float fp8e4m3fn_to_float(uint8_t v) { return static_cast<float>(kE4M3FN.decode(v)); }
float fp8e4m3fnuz_to_float(uint8_t v) { return static_cast<float>(kE4M3FNUZ.decode(v)); }
float fp8e5m2_to_float(uint8_t v) { return static_cast<float>(kE5M2.decode(v)); }
float fp8e5m2fnuz_to_float(uint8_t v) { return static_cast<float>(kE5M2FNUZ.decode(v)); }
float fp4e2m1_to_float(uint8_t v) { return static_cast<float>(kE2M1.decode(v & 0xf)); }

// E8M0: an unsigned power of two, 2^(v - 127); 0xFF is NaN.
float fp8e8m0_to_float(uint8_t v) {
  if (v == 0xff) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(v) - 127);
}

uint8_t float_to_fp8e4m3fn(float f, bool saturate) { return static_cast<uint8_t>(kE4M3FN.encode(f, saturate)); }
uint8_t float_to_fp8e4m3fnuz(float f, bool saturate) { return static_cast<uint8_t>(kE4M3FNUZ.encode(f, saturate)); }
uint8_t float_to_fp8e5m2(float f, bool saturate) { return static_cast<uint8_t>(kE5M2.encode(f, saturate)); }
uint8_t float_to_fp8e5m2fnuz(float f, bool saturate) { return static_cast<uint8_t>(kE5M2FNUZ.encode(f, saturate)); }
// ONNX's Cast never saturates E2M1 differently: it has no inf, so out-of-range values clamp to +-6.
uint8_t float_to_fp4e2m1(float f, bool saturate) { return static_cast<uint8_t>(kE2M1.encode(f, saturate)); }

// Follows onnx.numpy_helper.to_float8e8m0 bit for bit: the result is the float32 exponent field, rounded
// by the mantissa according to round_mode ("up", "down", "nearest"); the sign is dropped; inf and NaN
// become NaN (0xFF). With `saturate`, rounding never carries 0xFE into 0xFF.
uint8_t float_to_fp8e8m0(float f, bool saturate, const char* round_mode) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t exponent = (bits >> 23) & 0xff;
  if (exponent == 0xff) return 0xff;
  const std::string_view mode = round_mode ? round_mode : "up";
  bool round_up = false;
  if (mode == "nearest") {
    const bool g = (bits & 0x400000) != 0;
    const bool r = (bits & 0x200000) != 0;
    const bool s = (bits & 0x1fffff) != 0;
    const bool lsb = exponent > 0;  // as the reference computes it
    round_up = g && (r || s || lsb);
  } else if (mode == "up") {
    round_up = (bits & 0x7fffff) != 0;
  }  // "down": truncate
  if (saturate && exponent == 0xfe) round_up = false;
  if (round_up) ++exponent;
  return static_cast<uint8_t>(exponent);
}

}  // namespace kiln
