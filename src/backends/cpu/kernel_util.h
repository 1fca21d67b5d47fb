// Helpers shared by the CPU reference kernels: dtype dispatch, broadcasting, axis handling.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/cast.h"
#include "ir/op_registry.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln::cpu {

using ir::KernelContext;

// Calls f(T{}) with T the C++ type that stores `dtype`. Float16 and bfloat16 are not dispatched here:
// kernels widen them to float32 first (widen_to_float32) and narrow the result back.
#define KILN_CASE(DT, T)     \
  case DType::DT: {          \
    f(T{});                  \
    return true;             \
  }
template <class F>
bool dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    KILN_CASE(kFloat32, float)
    KILN_CASE(kFloat64, double)
    default: return false;
  }
}
template <class F>
bool dispatch_int(DType dtype, F&& f) {
  switch (dtype) {
    KILN_CASE(kInt8, int8_t)
    KILN_CASE(kInt16, int16_t)
    KILN_CASE(kInt32, int32_t)
    KILN_CASE(kInt64, int64_t)
    KILN_CASE(kUInt8, uint8_t)
    KILN_CASE(kUInt16, uint16_t)
    KILN_CASE(kUInt32, uint32_t)
    KILN_CASE(kUInt64, uint64_t)
    default: return false;
  }
}
template <class F>
bool dispatch_numeric(DType dtype, F&& f) {
  return dispatch_float(dtype, f) || dispatch_int(dtype, f);
}
// Numeric types and bool: for ops that only move elements (Transpose, Gather, Concat...) and do not
// look at their values, dispatch on size instead (dispatch_by_size).
template <class F>
bool dispatch_numeric_or_bool(DType dtype, F&& f) {
  if (dtype == DType::kBool) {
    f(bool{});
    return true;
  }
  return dispatch_numeric(dtype, f);
}
#undef KILN_CASE

// Unsigned integer type of the same size as one element of `dtype`; for data movement.
template <class F>
bool dispatch_by_size(DType dtype, F&& f) {
  switch (dtype_size(dtype)) {
    case 1: f(uint8_t{}); return true;
    case 2: f(uint16_t{}); return true;
    case 4: f(uint32_t{}); return true;
    case 8: f(uint64_t{}); return true;
    default: return false;
  }
}

// Copies element src_index of src into element dst_index of dst (same dtype; works for strings too).
void copy_element(const Tensor& src, int64_t src_index, Tensor& dst, int64_t dst_index);

// Row-major strides of a shape.
std::vector<int64_t> strides_of(const Shape& shape);
// Numpy-style multidirectional broadcast of shapes; error names both shapes.
Result<Shape> broadcast_shapes(const Shape& a, const Shape& b);
Result<Shape> broadcast_shapes(const std::vector<Shape>& shapes);
// For each linear index of `out_shape`, the linear index into a tensor of `in_shape` broadcast to it.
std::vector<int64_t> broadcast_index_map(const Shape& in_shape, const Shape& out_shape);
// Axis in [-rank, rank) -> [0, rank); error otherwise.
Result<int64_t> normalize_axis(int64_t axis, int64_t rank);

}  // namespace kiln::cpu
