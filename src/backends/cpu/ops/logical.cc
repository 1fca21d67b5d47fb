// CPU reference kernels: comparisons (Equal, Greater, GreaterOrEqual, Less, LessOrEqual), boolean logic
// (And, Or, Xor) and bitwise integer ops (BitwiseAnd, BitwiseOr, BitwiseXor), all with numpy broadcasting.
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/elementwise_util.h"

namespace kiln::cpu {
namespace {

using elementwise::broadcast_map;
using elementwise::is_low_precision_float;
using elementwise::required_input;

Result<std::pair<Tensor, Tensor>> same_typed_inputs(const KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor a, required_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(Tensor b, required_input(ctx, 1));
  if (a.dtype() != b.dtype()) {
    return ctx.error("inputs must have the same dtype, got " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()));
  }
  return std::make_pair(a, b);
}

// Comparison `cmp(x, y)` -> bool over any numeric or bool dtype (Equal also strings). Low-precision floats
// compare as float32, which is exact.
template <class Cmp>
Status compare_kernel(KernelContext& ctx, bool allow_strings, Cmp cmp) {
  KILN_ASSIGN_OR_RETURN(auto ab, same_typed_inputs(ctx));
  auto [a, b] = ab;
  if (a.dtype() == DType::kString) {
    if (!allow_strings) return ctx.error("does not accept string inputs");
    // Strings live in strings(), not data(): broadcast over that array.
    auto shape = broadcast_shapes(a.shape(), b.shape());
    if (!shape.ok()) return ctx.error(shape.status().message());
    Tensor result(DType::kBool, *shape);
    const std::vector<int64_t> ia = broadcast_index_map(a.shape(), *shape);
    const std::vector<int64_t> ib = broadcast_index_map(b.shape(), *shape);
    for (int64_t i = 0; i < result.numel(); ++i) result.data<bool>()[i] = cmp(a.strings()[ia[i]], b.strings()[ib[i]]);
    ctx.set_output(0, result);
    return OkStatus();
  }
  if (is_low_precision_float(a.dtype())) {
    a = widen_to_float32(a);
    b = widen_to_float32(b);
  }
  Result<Tensor> out = Tensor();
  bool ok = dispatch_numeric_or_bool(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    out = broadcast_map<T, T, bool>(ctx, a, b, DType::kBool, [&](T x, T y) { return cmp(x, y); });
  });
  if (!ok) return ctx.error("unsupported dtype " + dtype_name(a.dtype()));
  if (!out.ok()) return out.status();
  ctx.set_output(0, *out);
  return OkStatus();
}

Status equal_kernel(KernelContext& ctx) {
  return compare_kernel(ctx, true, [](const auto& x, const auto& y) { return x == y; });
}
Status greater_kernel(KernelContext& ctx) {
  return compare_kernel(ctx, false, [](const auto& x, const auto& y) { return x > y; });
}
Status greater_or_equal_kernel(KernelContext& ctx) {
  return compare_kernel(ctx, false, [](const auto& x, const auto& y) { return x >= y; });
}
Status less_kernel(KernelContext& ctx) {
  return compare_kernel(ctx, false, [](const auto& x, const auto& y) { return x < y; });
}
Status less_or_equal_kernel(KernelContext& ctx) {
  return compare_kernel(ctx, false, [](const auto& x, const auto& y) { return x <= y; });
}

template <class Op>
Status bool_kernel(KernelContext& ctx, Op op) {
  KILN_ASSIGN_OR_RETURN(auto ab, same_typed_inputs(ctx));
  auto [a, b] = ab;
  if (a.dtype() != DType::kBool) return ctx.error("expects bool inputs, got " + dtype_name(a.dtype()));
  Result<Tensor> out = broadcast_map<bool, bool, bool>(ctx, a, b, DType::kBool, op);
  if (!out.ok()) return out.status();
  ctx.set_output(0, *out);
  return OkStatus();
}

Status and_kernel(KernelContext& ctx) {
  return bool_kernel(ctx, [](bool x, bool y) { return x && y; });
}
Status or_kernel(KernelContext& ctx) {
  return bool_kernel(ctx, [](bool x, bool y) { return x || y; });
}
Status xor_kernel(KernelContext& ctx) {
  return bool_kernel(ctx, [](bool x, bool y) { return x != y; });
}

template <class Op>
Status bitwise_kernel(KernelContext& ctx, Op op) {
  KILN_ASSIGN_OR_RETURN(auto ab, same_typed_inputs(ctx));
  auto [a, b] = ab;
  Result<Tensor> out = Tensor();
  bool ok = dispatch_int(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    out = broadcast_map<T, T, T>(ctx, a, b, a.dtype(), [&](T x, T y) { return static_cast<T>(op(x, y)); });
  });
  if (!ok) return ctx.error("expects integer inputs, got " + dtype_name(a.dtype()));
  if (!out.ok()) return out.status();
  ctx.set_output(0, *out);
  return OkStatus();
}

Status bitwise_and_kernel(KernelContext& ctx) {
  return bitwise_kernel(ctx, [](auto x, auto y) { return x & y; });
}
Status bitwise_or_kernel(KernelContext& ctx) {
  return bitwise_kernel(ctx, [](auto x, auto y) { return x | y; });
}
Status bitwise_xor_kernel(KernelContext& ctx) {
  return bitwise_kernel(ctx, [](auto x, auto y) { return x ^ y; });
}

}  // namespace

void register_logical_ops(ir::OpRegistry& r) {
  r.add("Equal", 7, equal_kernel);
  r.add("Greater", 7, greater_kernel);
  r.add("GreaterOrEqual", 12, greater_or_equal_kernel);
  r.add("Less", 7, less_kernel);
  r.add("LessOrEqual", 12, less_or_equal_kernel);
  r.add("And", 7, and_kernel);
  r.add("Or", 7, or_kernel);
  r.add("Xor", 7, xor_kernel);
  r.add("BitwiseAnd", 18, bitwise_and_kernel);
  r.add("BitwiseOr", 18, bitwise_or_kernel);
  r.add("BitwiseXor", 18, bitwise_xor_kernel);
}

}  // namespace kiln::cpu
