#include "kiln/compare.h"

#include <cmath>

#include "core/cast.h"

namespace kiln::tools {

namespace {

CompareResult compare_tensors(const Tensor& a, const Tensor& e, const Tolerance& tol) {
  CompareResult r;
  if (a.dtype() != e.dtype()) {
    r.ok = false;
    r.message = "dtype " + dtype_name(a.dtype()) + ", expected " + dtype_name(e.dtype());
    return r;
  }
  if (a.shape() != e.shape()) {
    r.ok = false;
    r.message = "shape " + shape_to_string(a.shape()) + ", expected " + shape_to_string(e.shape());
    return r;
  }
  const int64_t n = e.numel();
  if (e.dtype() == DType::kString) {
    for (int64_t i = 0; i < n; ++i) {
      if (a.strings()[i] != e.strings()[i]) {
        r.ok = false;
        r.message = "element " + std::to_string(i) + " is '" + a.strings()[i] + "', expected '" + e.strings()[i] + "'";
        return r;
      }
    }
    return r;
  }
  if (!dtype_is_float(e.dtype())) {
    // Integers and bools: exact, compared bit for bit element by element.
    for (int64_t i = 0; i < n; ++i) {
      int64_t x = a.dtype() == DType::kUInt64 ? static_cast<int64_t>(a.data<uint64_t>()[i]) : a.scalar_as_int(i);
      int64_t y = e.dtype() == DType::kUInt64 ? static_cast<int64_t>(e.data<uint64_t>()[i]) : e.scalar_as_int(i);
      if (x != y) {
        r.max_abs_error = std::max(r.max_abs_error, std::fabs(static_cast<double>(x) - static_cast<double>(y)));
        if (r.ok) r.message = "element " + std::to_string(i) + " is " + std::to_string(x) + ", expected " + std::to_string(y);
        r.ok = false;
      }
    }
    return r;
  }
  Tensor af = cast_tensor(a, DType::kFloat64).value();
  Tensor ef = cast_tensor(e, DType::kFloat64).value();
  for (int64_t i = 0; i < n; ++i) {
    double x = af.data<double>()[i], y = ef.data<double>()[i];
    if (std::isnan(y) && std::isnan(x)) continue;
    if (std::isinf(y) && x == y) continue;
    double abs_err = std::fabs(x - y);
    if (std::isnan(x) || std::isnan(y)) abs_err = INFINITY;
    double rel_err = y != 0 ? abs_err / std::fabs(y) : (abs_err == 0 ? 0 : INFINITY);
    r.max_abs_error = std::max(r.max_abs_error, abs_err);
    if (std::isfinite(rel_err)) r.max_rel_error = std::max(r.max_rel_error, rel_err);
    if (!(abs_err <= tol.atol + tol.rtol * std::fabs(y))) {
      if (r.ok) r.message = "element " + std::to_string(i) + " is " + std::to_string(x) + ", expected " + std::to_string(y);
      r.ok = false;
    }
  }
  return r;
}

}  // namespace

CompareResult compare_values(const Value& actual, const Value& expected, const Tolerance& tol) {
  CompareResult r;
  if (actual.kind() != expected.kind()) {
    r.ok = false;
    r.message = "got " + actual.description() + ", expected " + expected.description();
    return r;
  }
  if (expected.is_none()) return r;
  if (expected.is_tensor()) return compare_tensors(actual.tensor(), expected.tensor(), tol);
  const auto& as = actual.sequence_items();
  const auto& es = expected.sequence_items();
  if (as.size() != es.size()) {
    r.ok = false;
    r.message = "sequence of " + std::to_string(as.size()) + " items, expected " + std::to_string(es.size());
    return r;
  }
  for (size_t i = 0; i < es.size(); ++i) {
    CompareResult ri = compare_tensors(as[i], es[i], tol);
    r.max_abs_error = std::max(r.max_abs_error, ri.max_abs_error);
    r.max_rel_error = std::max(r.max_rel_error, ri.max_rel_error);
    if (!ri.ok && r.ok) {
      r.ok = false;
      r.message = "sequence item " + std::to_string(i) + ": " + ri.message;
    }
  }
  return r;
}

}  // namespace kiln::tools
