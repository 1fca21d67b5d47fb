// Comparison of computed outputs with expected ones, as the ONNX backend test runner does:
// |actual - expected| <= atol + rtol * |expected|, NaN matches NaN, integers and strings exactly.
#pragma once

#include <string>

#include "core/value.h"

namespace kiln::tools {

struct Tolerance {
  double rtol = 1e-3;
  double atol = 1e-7;
};

struct CompareResult {
  bool ok = true;
  double max_abs_error = 0;
  double max_rel_error = 0;
  std::string message;  // why it failed
};

CompareResult compare_values(const Value& actual, const Value& expected, const Tolerance& tol);

}  // namespace kiln::tools
