// Small helpers shared by the attention, loss, misc and training kernels: read any real floating-point
// tensor (float16, bfloat16, float32, float64) into doubles, and write doubles back in a given dtype.
// Reference kernels compute in double and round once at the end, which is at least as precise as the
// float32 arithmetic that ONNX's reference implementation uses.
#pragma once

#include <cmath>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu::e2 {

// The floating-point dtypes these kernels accept.
inline bool is_real_float(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}

// All elements as doubles. Call only when is_real_float(t.dtype()).
inline std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::kFloat64) {
    const double* p = t.data<double>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
    return out;
  }
  Tensor w = widen_to_float32(t);
  const float* p = w.data<float>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  return out;
}

// A tensor of `dtype` (a real float type) holding `values` rounded to it.
inline Tensor from_doubles(const std::vector<double>& values, Shape shape, DType dtype) {
  if (dtype == DType::kFloat64) {
    Tensor t(DType::kFloat64, std::move(shape));
    double* p = t.data<double>();
    for (size_t i = 0; i < values.size() && static_cast<int64_t>(i) < t.numel(); ++i) p[i] = values[i];
    return t;
  }
  Tensor t(DType::kFloat32, std::move(shape));
  float* p = t.data<float>();
  for (size_t i = 0; i < values.size() && static_cast<int64_t>(i) < t.numel(); ++i) p[i] = static_cast<float>(values[i]);
  return narrow_from_float32(t, dtype);
}

// A schema for a non-default domain (the registry's short add() covers only the default domain).
inline ir::OpSchema domain_schema(const char* domain, const char* op_type, int since, ir::KernelFn fn) {
  ir::OpSchema s;
  s.domain = domain;
  s.op_type = op_type;
  s.since_version = since;
  s.cpu_kernel = fn;
  return s;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Largest element count a kernel will allocate for an intermediate built from attributes or shapes
// (guards against absurd sizes from bad input instead of exhausting memory).
constexpr int64_t kMaxElements = int64_t{1} << 31;

}  // namespace kiln::cpu::e2
