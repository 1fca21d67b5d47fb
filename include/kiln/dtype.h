// Element types. The numbering is ONNX's TensorProto.DataType, so conversion at the file boundary is a cast.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln {

enum class DType : int32_t {
  kUndefined = 0,
  kFloat32 = 1,
  kUInt8 = 2,
  kInt8 = 3,
  kUInt16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kFloat64 = 11,
  kUInt32 = 12,
  kUInt64 = 13,
  kComplex64 = 14,
  kComplex128 = 15,
  kBFloat16 = 16,
  kFloat8E4M3FN = 17,
  kFloat8E4M3FNUZ = 18,
  kFloat8E5M2 = 19,
  kFloat8E5M2FNUZ = 20,
  kUInt4 = 21,
  kInt4 = 22,
  kFloat4E2M1 = 23,
  kFloat8E8M0 = 24,
  kUInt2 = 25,
  kInt2 = 26,
};

// Bytes one element takes in memory. Sub-byte types (int4, uint4, float4, int2, uint2) are kept unpacked in
// memory, one element per byte; they are packed only in files (ONNX raw_data, engine weights).
size_t dtype_size(DType t);
// "float32", "float16", "int64", ...; "dtype(N)" for an unknown code.
std::string dtype_name(DType t);
// Parses a name as printed by dtype_name (also accepts "float", "double", "half").
bool parse_dtype(const std::string& name, DType* out);
bool dtype_is_valid(int32_t code);
bool dtype_is_float(DType t);     // any floating-point type, including fp8/fp4 and bf16
bool dtype_is_signed_int(DType t);
bool dtype_is_unsigned_int(DType t);  // includes uint2/uint4 (not bool)
bool dtype_is_integer(DType t);
bool dtype_is_sub_byte(DType t);  // int4, uint4, float4e2m1, int2, uint2
// Number of bits of a packed element in files (4 for int4, 2 for int2, 8 * dtype_size otherwise).
int dtype_bits(DType t);

}  // namespace kiln
