#include "core/cast.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>

#include "core/float_formats.h"

namespace kiln {

namespace {

bool is_narrow_float(DType t) {
  return t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat8E4M3FN ||
         t == DType::kFloat8E4M3FNUZ || t == DType::kFloat8E5M2 || t == DType::kFloat8E5M2FNUZ ||
         t == DType::kFloat4E2M1 || t == DType::kFloat8E8M0;
}

// Reads element i of any numeric tensor as double (exact for every type but 64-bit integers above 2^53).
double read_as_double(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kFloat8E4M3FN: return fp8e4m3fn_to_float(t.data<uint8_t>()[i]);
    case DType::kFloat8E4M3FNUZ: return fp8e4m3fnuz_to_float(t.data<uint8_t>()[i]);
    case DType::kFloat8E5M2: return fp8e5m2_to_float(t.data<uint8_t>()[i]);
    case DType::kFloat8E5M2FNUZ: return fp8e5m2fnuz_to_float(t.data<uint8_t>()[i]);
    case DType::kFloat8E8M0: return fp8e8m0_to_float(t.data<uint8_t>()[i]);
    case DType::kFloat4E2M1: return fp4e2m1_to_float(t.data<uint8_t>()[i]);
    default: return t.scalar_as_double(i);
  }
}

template <class I>
I float_to_int(double v) {
  if (std::isnan(v)) return 0;
  v = std::trunc(v);
  // Out-of-range float -> int conversion is undefined in C++; ONNX leaves it unspecified. Wrap through
  // int64 like NumPy does on x86, and clamp only what int64 cannot hold.
  if (v >= 9.2233720368547758e18) return static_cast<I>(std::numeric_limits<int64_t>::min());
  if (v < -9.2233720368547758e18) return static_cast<I>(std::numeric_limits<int64_t>::min());
  if constexpr (std::is_same_v<I, uint64_t>) {
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return static_cast<I>(static_cast<int64_t>(v));
}

void write_from_double(Tensor& t, int64_t i, double v, bool saturate) {
  switch (t.dtype()) {
    case DType::kFloat32: t.data<float>()[i] = static_cast<float>(v); break;
    case DType::kFloat64: t.data<double>()[i] = v; break;
    case DType::kFloat16: t.data<uint16_t>()[i] = float_to_half(static_cast<float>(v)); break;
    case DType::kBFloat16: t.data<uint16_t>()[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::kFloat8E4M3FN: t.data<uint8_t>()[i] = float_to_fp8e4m3fn(static_cast<float>(v), saturate); break;
    case DType::kFloat8E4M3FNUZ: t.data<uint8_t>()[i] = float_to_fp8e4m3fnuz(static_cast<float>(v), saturate); break;
    case DType::kFloat8E5M2: t.data<uint8_t>()[i] = float_to_fp8e5m2(static_cast<float>(v), saturate); break;
    case DType::kFloat8E5M2FNUZ: t.data<uint8_t>()[i] = float_to_fp8e5m2fnuz(static_cast<float>(v), saturate); break;
    case DType::kFloat8E8M0: t.data<uint8_t>()[i] = float_to_fp8e8m0(static_cast<float>(v), saturate); break;
    case DType::kFloat4E2M1: t.data<uint8_t>()[i] = float_to_fp4e2m1(static_cast<float>(v), saturate); break;
    case DType::kBool: t.data<bool>()[i] = v != 0; break;
    case DType::kInt8: t.data<int8_t>()[i] = float_to_int<int8_t>(v); break;
    case DType::kInt16: t.data<int16_t>()[i] = float_to_int<int16_t>(v); break;
    case DType::kInt32: t.data<int32_t>()[i] = float_to_int<int32_t>(v); break;
    case DType::kInt64: t.data<int64_t>()[i] = float_to_int<int64_t>(v); break;
    case DType::kUInt8: t.data<uint8_t>()[i] = float_to_int<uint8_t>(v); break;
    case DType::kUInt16: t.data<uint16_t>()[i] = float_to_int<uint16_t>(v); break;
    case DType::kUInt32: t.data<uint32_t>()[i] = float_to_int<uint32_t>(v); break;
    case DType::kUInt64: t.data<uint64_t>()[i] = float_to_int<uint64_t>(v); break;
    // Sub-byte integers wrap to their width (ONNX: out-of-range values are undefined; wrap is numpy-like).
    case DType::kInt4: { int64_t x = float_to_int<int64_t>(v) & 0xf; t.data<int8_t>()[i] = static_cast<int8_t>(x >= 8 ? x - 16 : x); break; }
    case DType::kUInt4: t.data<uint8_t>()[i] = static_cast<uint8_t>(float_to_int<int64_t>(v) & 0xf); break;
    case DType::kInt2: { int64_t x = float_to_int<int64_t>(v) & 0x3; t.data<int8_t>()[i] = static_cast<int8_t>(x >= 2 ? x - 4 : x); break; }
    case DType::kUInt2: t.data<uint8_t>()[i] = static_cast<uint8_t>(float_to_int<int64_t>(v) & 0x3); break;
    default: break;
  }
}

bool is_64bit_int(DType t) { return t == DType::kInt64 || t == DType::kUInt64; }

bool only_spaces(const char* p) {
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') ++p;
  return *p == '\0';
}

// Formats `v` as numpy's str() of a float scalar does once the digits are known: fixed notation with at
// least one decimal ("100.0", "0.001") when 1e-4 <= |v| < 10^positional_limit, else scientific with a
// two-digit exponent ("1e-05", "1.5e+20"). numpy's limit is 10^3 for float16, 10^6 for float32 and 10^16
// for float64. `digits` significant digits are kept.
void python_style(double v, int digits, int positional_limit, char* buf, size_t size) {
  char sci[64];
  std::snprintf(sci, sizeof sci, "%.*e", digits - 1, v);  // "-d.ddde+XX"
  std::string text(sci);
  const size_t e_pos = text.find('e');
  const int exp10 = std::atoi(text.c_str() + e_pos + 1);
  std::string mantissa = text.substr(0, e_pos);
  const bool negative = !mantissa.empty() && mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string ds;  // the significant digits without the point
  for (char c : mantissa) if (c != '.') ds += c;
  while (ds.size() > 1 && ds.back() == '0') ds.pop_back();
  std::string out = negative ? "-" : "";
  const double magnitude = std::fabs(v);
  const bool positional = magnitude == 0 || (magnitude >= 1e-4 && magnitude < std::pow(10.0, positional_limit));
  if (positional) {
    if (exp10 < 0) {
      out += "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + ds;
    } else {
      const size_t int_digits = static_cast<size_t>(exp10) + 1;  // exp10 < positional_limit <= 16
      if (ds.size() <= int_digits) {
        out += ds + std::string(int_digits - ds.size(), '0') + ".0";
      } else {
        out += ds.substr(0, int_digits) + "." + ds.substr(int_digits);
      }
    }
  } else {
    out += ds.substr(0, 1);
    if (ds.size() > 1) out += "." + ds.substr(1);
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    out += e;
  }
  std::snprintf(buf, size, "%s", out.c_str());
}

// Writes `v` (a value of dtype `t`) with the fewest significant digits that read back to the same value of
// that dtype, formatted like numpy's str() of a float: 0.1f prints "0.1", not "0.100000001".
void shortest_repr(double v, DType t, char* buf, size_t size) {
  const int limit = t == DType::kFloat64 ? 16 : (t == DType::kFloat16 ? 3 : 6);
  Tensor probe(t, {});
  for (int digits = 1; digits <= 17; ++digits) {
    char candidate[64];
    std::snprintf(candidate, sizeof candidate, "%.*e", digits - 1, v);
    const double back = std::strtod(candidate, nullptr);
    bool same;
    if (t == DType::kFloat64) {
      same = back == v;
    } else {
      write_from_double(probe, 0, back, true);
      same = read_as_double(probe, 0) == v;
    }
    if (same) return python_style(v, digits, limit, buf, size);
  }
  python_style(v, 17, limit, buf, size);
}

}  // namespace

Result<Tensor> cast_tensor(const Tensor& src, DType to, bool saturate) {
  if (src.dtype() == to) return src;
  if (to == DType::kUndefined || dtype_size(to) == 0 || to == DType::kComplex64 || to == DType::kComplex128)
    return Unsupported("cannot cast " + src.description() + " to " + dtype_name(to));
  Tensor out(to, src.shape());
  const int64_t n = src.numel();
  if (src.dtype() == DType::kString) {
    for (int64_t i = 0; i < n; ++i) {
      const std::string& s = src.strings()[i];
      if (to == DType::kBool) {
        out.data<bool>()[i] = !(s.empty() || s == "0" || s == "false" || s == "False");
        continue;
      }
      // strtod also accepts "inf", "+INF", "-Inf", "nan" in any case, as ONNX asks.
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (end == s.c_str() || !only_spaces(end)) {
        return InvalidArgument("cannot cast string '" + s + "' (element " + std::to_string(i) + ") to " +
                               dtype_name(to) + ": it is not a number");
      }
      if (is_64bit_int(to)) {
        // Plain integers beyond 2^53 would lose digits through double: parse them as integers. Anything
        // else ("100.5", "1e5", "inf") goes through double like the other integer types.
        char* int_end = nullptr;
        if (to == DType::kInt64) {
          const long long iv = std::strtoll(s.c_str(), &int_end, 10);
          if (int_end != s.c_str() && only_spaces(int_end)) {
            out.data<int64_t>()[i] = iv;
            continue;
          }
        } else {
          const unsigned long long uv = std::strtoull(s.c_str(), &int_end, 10);
          if (int_end != s.c_str() && only_spaces(int_end) && s.find('-') == std::string::npos) {
            out.data<uint64_t>()[i] = uv;
            continue;
          }
        }
      }
      write_from_double(out, i, v, saturate);
    }
    return out;
  }
  if (to == DType::kString) {
    char buf[64];
    for (int64_t i = 0; i < n; ++i) {
      if (src.dtype() == DType::kInt64) {
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(src.data<int64_t>()[i]));
      } else if (src.dtype() == DType::kUInt64) {
        std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(src.data<uint64_t>()[i]));
      } else if (dtype_is_integer(src.dtype()) || src.dtype() == DType::kBool) {
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(src.scalar_as_int(i)));
      } else {
        double v = read_as_double(src, i);
        shortest_repr(v, src.dtype(), buf, sizeof buf);
        if (std::isnan(v)) std::snprintf(buf, sizeof buf, "NaN");
        else if (std::isinf(v)) std::snprintf(buf, sizeof buf, v > 0 ? "INF" : "-INF");
      }
      out.strings()[i] = buf;
    }
    return out;
  }
  // Integer -> integer through int64 keeps 64-bit values exact.
  if ((dtype_is_integer(src.dtype()) || src.dtype() == DType::kBool) && dtype_is_integer(to)) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = src.dtype() == DType::kUInt64 ? static_cast<int64_t>(src.data<uint64_t>()[i]) : src.scalar_as_int(i);
      switch (to) {
        case DType::kInt8: out.data<int8_t>()[i] = static_cast<int8_t>(v); break;
        case DType::kInt16: out.data<int16_t>()[i] = static_cast<int16_t>(v); break;
        case DType::kInt32: out.data<int32_t>()[i] = static_cast<int32_t>(v); break;
        case DType::kInt64: out.data<int64_t>()[i] = v; break;
        case DType::kUInt8: out.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
        case DType::kUInt16: out.data<uint16_t>()[i] = static_cast<uint16_t>(v); break;
        case DType::kUInt32: out.data<uint32_t>()[i] = static_cast<uint32_t>(v); break;
        case DType::kUInt64: out.data<uint64_t>()[i] = static_cast<uint64_t>(v); break;
        // Sub-byte integers keep their low bits (two's complement), like the wider ones.
        case DType::kInt4: { int64_t x = v & 0xf; out.data<int8_t>()[i] = static_cast<int8_t>(x >= 8 ? x - 16 : x); break; }
        case DType::kUInt4: out.data<uint8_t>()[i] = static_cast<uint8_t>(v & 0xf); break;
        case DType::kInt2: { int64_t x = v & 0x3; out.data<int8_t>()[i] = static_cast<int8_t>(x >= 2 ? x - 4 : x); break; }
        case DType::kUInt2: out.data<uint8_t>()[i] = static_cast<uint8_t>(v & 0x3); break;
        default: break;
      }
    }
    return out;
  }
  if (to == DType::kFloat32 && is_64bit_int(src.dtype())) {
    // Direct conversion rounds once; going through double would round twice (wrong for some values > 2^53).
    for (int64_t i = 0; i < n; ++i) {
      out.data<float>()[i] = src.dtype() == DType::kInt64 ? static_cast<float>(src.data<int64_t>()[i])
                                                          : static_cast<float>(src.data<uint64_t>()[i]);
    }
    return out;
  }
  for (int64_t i = 0; i < n; ++i) write_from_double(out, i, read_as_double(src, i), saturate);
  return out;
}

Tensor widen_to_float32(const Tensor& t) {
  if (!is_narrow_float(t.dtype())) return t;
  return cast_tensor(t, DType::kFloat32).value();
}

Tensor narrow_from_float32(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  return cast_tensor(t, dtype).value();
}

}  // namespace kiln
