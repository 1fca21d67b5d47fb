#include "kiln/dtype.h"

#include <map>

namespace kiln {

namespace {
struct DTypeInfo {
  const char* name;
  size_t size;
  int bits;
};

const DTypeInfo* info(DType t) {
  static const std::map<DType, DTypeInfo> table = {
      {DType::kFloat32, {"float32", 4, 32}},       {DType::kUInt8, {"uint8", 1, 8}},
      {DType::kInt8, {"int8", 1, 8}},              {DType::kUInt16, {"uint16", 2, 16}},
      {DType::kInt16, {"int16", 2, 16}},           {DType::kInt32, {"int32", 4, 32}},
      {DType::kInt64, {"int64", 8, 64}},           {DType::kString, {"string", sizeof(void*), 0}},
      {DType::kBool, {"bool", 1, 8}},              {DType::kFloat16, {"float16", 2, 16}},
      {DType::kFloat64, {"float64", 8, 64}},       {DType::kUInt32, {"uint32", 4, 32}},
      {DType::kUInt64, {"uint64", 8, 64}},         {DType::kComplex64, {"complex64", 8, 64}},
      {DType::kComplex128, {"complex128", 16, 128}}, {DType::kBFloat16, {"bfloat16", 2, 16}},
      {DType::kFloat8E4M3FN, {"float8e4m3fn", 1, 8}}, {DType::kFloat8E4M3FNUZ, {"float8e4m3fnuz", 1, 8}},
      {DType::kFloat8E5M2, {"float8e5m2", 1, 8}}, {DType::kFloat8E5M2FNUZ, {"float8e5m2fnuz", 1, 8}},
      {DType::kUInt4, {"uint4", 1, 4}},            {DType::kInt4, {"int4", 1, 4}},
      {DType::kFloat4E2M1, {"float4e2m1", 1, 4}},  {DType::kFloat8E8M0, {"float8e8m0", 1, 8}},
      {DType::kUInt2, {"uint2", 1, 2}},            {DType::kInt2, {"int2", 1, 2}},
  };
  auto it = table.find(t);
  return it == table.end() ? nullptr : &it->second;
}
}  // namespace

size_t dtype_size(DType t) {
  const DTypeInfo* i = info(t);
  return i ? i->size : 0;
}

std::string dtype_name(DType t) {
  const DTypeInfo* i = info(t);
  return i ? i->name : "dtype(" + std::to_string(static_cast<int>(t)) + ")";
}

bool parse_dtype(const std::string& name, DType* out) {
  if (name == "float") { *out = DType::kFloat32; return true; }
  if (name == "double") { *out = DType::kFloat64; return true; }
  if (name == "half") { *out = DType::kFloat16; return true; }
  for (int c = 1; c <= 26; ++c) {
    if (dtype_name(static_cast<DType>(c)) == name) {
      *out = static_cast<DType>(c);
      return true;
    }
  }
  return false;
}

bool dtype_is_valid(int32_t code) { return code >= 1 && code <= 26; }

bool dtype_is_float(DType t) {
  switch (t) {
    case DType::kFloat32: case DType::kFloat16: case DType::kFloat64: case DType::kBFloat16:
    case DType::kFloat8E4M3FN: case DType::kFloat8E4M3FNUZ: case DType::kFloat8E5M2:
    case DType::kFloat8E5M2FNUZ: case DType::kFloat4E2M1: case DType::kFloat8E8M0:
      return true;
    default: return false;
  }
}

bool dtype_is_signed_int(DType t) {
  return t == DType::kInt8 || t == DType::kInt16 || t == DType::kInt32 || t == DType::kInt64 ||
         t == DType::kInt4 || t == DType::kInt2;
}

bool dtype_is_unsigned_int(DType t) {
  return t == DType::kUInt8 || t == DType::kUInt16 || t == DType::kUInt32 || t == DType::kUInt64 ||
         t == DType::kUInt4 || t == DType::kUInt2;
}

bool dtype_is_integer(DType t) { return dtype_is_signed_int(t) || dtype_is_unsigned_int(t); }

bool dtype_is_sub_byte(DType t) {
  return t == DType::kInt4 || t == DType::kUInt4 || t == DType::kFloat4E2M1 || t == DType::kInt2 ||
         t == DType::kUInt2;
}

int dtype_bits(DType t) {
  const DTypeInfo* i = info(t);
  return i ? i->bits : 0;
}

}  // namespace kiln
