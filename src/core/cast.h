// Element-type conversion of whole tensors: the Cast op, and the helper every kernel uses to compute
// float16/bfloat16/fp8 in float32.
#pragma once

#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {

// Converts every element to `to` with ONNX Cast semantics (float -> int truncates toward zero, float ->
// fp8 saturates when `saturate`, numbers <-> strings as ONNX prints and parses them).
Result<Tensor> cast_tensor(const Tensor& src, DType to, bool saturate = true);

// float16, bfloat16 and the fp8/fp4 types become float32; every other tensor is returned as it is.
Tensor widen_to_float32(const Tensor& t);
// Converts a float32 result back to `dtype` (no-op when dtype is float32).
Tensor narrow_from_float32(const Tensor& t, DType dtype);

}  // namespace kiln
