#include "core/cast.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

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
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (dtype_is_integer(to) && is_64bit_int(to)) {
        if (to == DType::kInt64) out.data<int64_t>()[i] = std::strtoll(s.c_str(), nullptr, 10);
        else out.data<uint64_t>()[i] = std::strtoull(s.c_str(), nullptr, 10);
        continue;
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
        if (src.dtype() == DType::kFloat64) std::snprintf(buf, sizeof buf, "%.17g", v);
        else std::snprintf(buf, sizeof buf, "%.9g", v);
        if (std::isnan(v)) std::snprintf(buf, sizeof buf, "NaN");
        else if (std::isinf(v)) std::snprintf(buf, sizeof buf, v > 0 ? "INF" : "-INF");
      }
      out.strings()[i] = buf;
    }
    return out;
  }
  // Integer -> integer through int64 keeps 64-bit values exact.
  if ((dtype_is_integer(src.dtype()) || src.dtype() == DType::kBool) &&
      (dtype_is_integer(to) && !dtype_is_sub_byte(to))) {
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
        default: break;
      }
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
