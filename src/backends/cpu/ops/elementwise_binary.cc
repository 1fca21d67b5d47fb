// CPU reference kernels: elementwise binary arithmetic with numpy broadcasting (Add, Sub, Mul, Div, Pow,
// Mod, BitShift), the variadic Max, Min, Sum, Mean, and Where.
//
// Integer arithmetic wraps around like numpy (done in unsigned arithmetic, since signed overflow is
// undefined in C++). Integer division or modulo by zero is reported as an error rather than guessed at.
#include <cmath>
#include <string>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/elementwise_util.h"

namespace kiln::cpu {
namespace {

using elementwise::broadcast_map;
using elementwise::is_low_precision_float;
using elementwise::legacy_broadcast;
using elementwise::required_input;

template <class T>
T wrap_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
  } else {
    return a + b;
  }
}
template <class T>
T wrap_sub(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) - static_cast<U>(b)));
  } else {
    return a - b;
  }
}
template <class T>
T wrap_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    // Promote to at least unsigned int so that uint16 * uint16 does not overflow a signed int.
    using U = std::conditional_t<(sizeof(T) < sizeof(unsigned)), unsigned, std::make_unsigned_t<T>>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b)));
  } else {
    return a * b;
  }
}

// C-style truncating integer division; the one overflowing case (min / -1) wraps to min like numpy.
template <class T>
T int_div(T a, T b) {
  if constexpr (std::is_signed_v<T>) {
    if (b == T(-1)) return wrap_sub(T(0), a);
  }
  return static_cast<T>(a / b);
}

// a ^ b for integers by repeated squaring, wrapping on overflow. Negative exponents give the truncated
// real result (0 unless |a| == 1).
template <class T>
T int_pow(T base, int64_t exp) {
  if (exp < 0) return static_cast<T>(std::trunc(std::pow(static_cast<double>(base), static_cast<double>(exp))));
  T result = 1;
  while (exp > 0) {
    if (exp & 1) result = wrap_mul(result, base);
    base = wrap_mul(base, base);
    exp >>= 1;
  }
  return result;
}

// Runs `op(a, b)` (a generic lambda on two values of type T returning T) over two same-typed numeric
// tensors with broadcasting. Low-precision floats are computed in float32.
template <class Op>
Status same_type_binary(KernelContext& ctx, bool allow_int, bool allow_float, Op op) {
  KILN_ASSIGN_OR_RETURN(Tensor a, required_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(Tensor b_in, required_input(ctx, 1));
  KILN_ASSIGN_OR_RETURN(Tensor b, legacy_broadcast(ctx, a, b_in));
  if (a.dtype() != b.dtype()) {
    return ctx.error("inputs must have the same dtype, got " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()));
  }
  const DType dtype = a.dtype();
  const bool is_int = dtype_is_integer(dtype) && !dtype_is_sub_byte(dtype);
  const bool is_float = dtype_is_float(dtype);
  if ((is_int && !allow_int) || (is_float && !allow_float) || (!is_int && !is_float)) {
    return ctx.error("unsupported dtype " + dtype_name(dtype));
  }
  const bool narrow = is_low_precision_float(dtype);
  if (narrow) {
    a = widen_to_float32(a);
    b = widen_to_float32(b);
  }
  Result<Tensor> out = Tensor();
  bool ok = dispatch_numeric(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    out = broadcast_map<T, T, T>(ctx, a, b, a.dtype(), [&](T x, T y) -> T { return op(x, y); });
  });
  if (!ok) return ctx.error("unsupported dtype " + dtype_name(dtype));
  if (!out.ok()) return out.status();
  ctx.set_output(0, narrow ? narrow_from_float32(*out, dtype) : *out);
  return OkStatus();
}

Status add_kernel(KernelContext& ctx) {
  return same_type_binary(ctx, true, true, [](auto x, auto y) { return wrap_add(x, y); });
}
Status sub_kernel(KernelContext& ctx) {
  return same_type_binary(ctx, true, true, [](auto x, auto y) { return wrap_sub(x, y); });
}
Status mul_kernel(KernelContext& ctx) {
  return same_type_binary(ctx, true, true, [](auto x, auto y) { return wrap_mul(x, y); });
}

Status div_kernel(KernelContext& ctx) {
  bool divided_by_zero = false;
  Status s = same_type_binary(ctx, true, true, [&](auto x, auto y) -> decltype(x) {
    using T = decltype(x);
    if constexpr (std::is_integral_v<T>) {
      if (y == 0) {
        divided_by_zero = true;
        return 0;
      }
      return int_div(x, y);
    } else {
      return x / y;
    }
  });
  if (s.ok() && divided_by_zero) return ctx.error("integer division by zero");
  return s;
}

Status mod_kernel(KernelContext& ctx) {
  const int64_t fmod = ctx.attr_int("fmod", 0);
  if (fmod != 0 && fmod != 1) return ctx.error("fmod must be 0 or 1, got " + std::to_string(fmod));
  bool divided_by_zero = false;
  Status s = same_type_binary(ctx, true, true, [&](auto x, auto y) -> decltype(x) {
    using T = decltype(x);
    if constexpr (std::is_integral_v<T>) {
      if (y == 0) {
        divided_by_zero = true;
        return 0;
      }
      if constexpr (std::is_signed_v<T>) {
        if (y == T(-1)) return 0;  // avoids the min % -1 overflow; the remainder is always 0
      }
      T r = static_cast<T>(x % y);  // C: sign of the dividend (np.fmod)
      if constexpr (std::is_signed_v<T>) {
        if (fmod == 0 && r != 0 && ((r < 0) != (y < 0))) r = static_cast<T>(r + y);  // np.mod: sign of divisor
      }
      return r;
    } else {
      T r = std::fmod(x, y);
      if (fmod == 0) {
        // np.mod for floats: the result takes the divisor's sign.
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        else if (r == 0) r = std::copysign(T(0), y);
      }
      return r;
    }
  });
  if (s.ok() && divided_by_zero) return ctx.error("integer modulo by zero");
  return s;
}

Status bitshift_kernel(KernelContext& ctx) {
  const std::string direction = ctx.attr_string("direction", "");
  if (direction != "LEFT" && direction != "RIGHT")
    return ctx.error("direction must be 'LEFT' or 'RIGHT', got '" + direction + "'");
  const bool left = direction == "LEFT";
  KILN_ASSIGN_OR_RETURN(Tensor a, required_input(ctx, 0));
  if (!dtype_is_unsigned_int(a.dtype()) || dtype_is_sub_byte(a.dtype()))
    return ctx.error("BitShift expects unsigned integer inputs, got " + dtype_name(a.dtype()));
  return same_type_binary(ctx, true, false, [&](auto x, auto y) -> decltype(x) {
    using T = decltype(x);
    if constexpr (std::is_integral_v<T>) {
      // Shifting by the bit width or more is undefined in C++; every bit is shifted out.
      if (static_cast<uint64_t>(y) >= sizeof(T) * 8) return 0;
      return static_cast<T>(left ? static_cast<T>(x << y) : static_cast<T>(x >> y));
    } else {
      return x;
    }
  });
}

// Pow: the base's dtype decides the result; the exponent may have another numeric dtype (ONNX: numpy's
// power, cast back to the base type).
Status pow_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor a, required_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(Tensor b_in, required_input(ctx, 1));
  KILN_ASSIGN_OR_RETURN(Tensor b, legacy_broadcast(ctx, a, b_in));
  const DType dtype = a.dtype();
  const bool a_int = dtype_is_integer(dtype) && !dtype_is_sub_byte(dtype);
  const bool b_int = dtype_is_integer(b.dtype()) && !dtype_is_sub_byte(b.dtype());
  if (!(a_int || dtype_is_float(dtype))) return ctx.error("unsupported base dtype " + dtype_name(dtype));
  if (!(b_int || dtype_is_float(b.dtype()))) return ctx.error("unsupported exponent dtype " + dtype_name(b.dtype()));
  const bool narrow = is_low_precision_float(dtype);
  if (narrow) a = widen_to_float32(a);
  if (is_low_precision_float(b.dtype())) b = widen_to_float32(b);
  Result<Tensor> out = Tensor();
  bool ok = dispatch_numeric(a.dtype(), [&](auto ta) {
    using TA = decltype(ta);
    dispatch_numeric(b.dtype(), [&](auto tb) {
      using TB = decltype(tb);
      out = broadcast_map<TA, TB, TA>(ctx, a, b, a.dtype(), [](TA x, TB y) -> TA {
        if constexpr (std::is_integral_v<TA> && std::is_integral_v<TB>) {
          // Exponents beyond int64 only matter for bases 0 and +-1; clamp them so the loop terminates.
          int64_t e = (std::is_unsigned_v<TB> && static_cast<uint64_t>(y) > (1ull << 62))
                          ? static_cast<int64_t>(1ll << 62) + static_cast<int64_t>(y & 1)
                          : static_cast<int64_t>(y);
          return int_pow<TA>(x, e);
        } else if constexpr (std::is_same_v<TA, float> && std::is_same_v<TB, float>) {
          return std::pow(x, y);
        } else {
          double r = std::pow(static_cast<double>(x), static_cast<double>(y));
          if constexpr (std::is_integral_v<TA>) {
            if (!std::isfinite(r)) return 0;
            return static_cast<TA>(static_cast<int64_t>(std::trunc(r)));
          } else {
            return static_cast<TA>(r);
          }
        }
      });
    });
  });
  if (!ok) return ctx.error("unsupported dtype " + dtype_name(dtype));
  if (!out.ok()) return out.status();
  ctx.set_output(0, narrow ? narrow_from_float32(*out, dtype) : *out);
  return OkStatus();
}

// Max, Min, Sum, Mean: any number (>= 1) of same-typed inputs, broadcast together.
enum class Fold { kMax, kMin, kSum, kMean };

template <Fold kind>
Status variadic_kernel(KernelContext& ctx) {
  if (ctx.num_inputs() == 0) return ctx.error("needs at least one input");
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    KILN_ASSIGN_OR_RETURN(Tensor t, required_input(ctx, i));
    inputs.push_back(t);
  }
  const DType dtype = inputs[0].dtype();
  for (size_t i = 1; i < inputs.size(); ++i) {
    if (inputs[i].dtype() != dtype) {
      return ctx.error("all inputs must have the same dtype; input 0 is " + dtype_name(dtype) + ", input " +
                       std::to_string(i) + " is " + dtype_name(inputs[i].dtype()));
    }
  }
  const bool is_int = dtype_is_integer(dtype) && !dtype_is_sub_byte(dtype);
  if (!is_int && !dtype_is_float(dtype)) return ctx.error("unsupported dtype " + dtype_name(dtype));
  if (kind == Fold::kMean && is_int) return ctx.error("Mean expects floating-point inputs, got " + dtype_name(dtype));
  const bool narrow = is_low_precision_float(dtype);
  for (Tensor& t : inputs) {
    if (narrow) t = widen_to_float32(t);
  }
  Tensor acc = inputs[0].clone();
  Status status;
  dispatch_numeric(acc.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto combine = [](T x, T y) -> T {
      if constexpr (kind == Fold::kSum || kind == Fold::kMean) {
        return wrap_add(x, y);
      } else {
        if constexpr (std::is_floating_point_v<T>) {
          if (std::isnan(x) || std::isnan(y)) return std::isnan(x) ? x : y;  // numpy propagates NaN
        }
        if constexpr (kind == Fold::kMax) return x < y ? y : x;
        else return y < x ? y : x;
      }
    };
    for (size_t i = 1; i < inputs.size() && status.ok(); ++i) {
      auto r = broadcast_map<T, T, T>(ctx, acc, inputs[i], acc.dtype(), combine);
      if (!r.ok()) status = r.status();
      else acc = *r;
    }
    if constexpr (kind == Fold::kMean && std::is_floating_point_v<T>) {
      const T n = static_cast<T>(inputs.size());
      for (int64_t i = 0; i < acc.numel(); ++i) acc.data<T>()[i] /= n;
    }
  });
  KILN_RETURN_IF_ERROR(status);
  ctx.set_output(0, narrow ? narrow_from_float32(acc, dtype) : acc);
  return OkStatus();
}

// Where(condition, X, Y): X where condition else Y, all three broadcast together; any element type.
Status where_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(Tensor cond, required_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(Tensor x, required_input(ctx, 1));
  KILN_ASSIGN_OR_RETURN(Tensor y, required_input(ctx, 2));
  if (cond.dtype() != DType::kBool) return ctx.error("condition must be bool, got " + dtype_name(cond.dtype()));
  if (x.dtype() != y.dtype()) {
    return ctx.error("X and Y must have the same dtype, got " + dtype_name(x.dtype()) + " and " + dtype_name(y.dtype()));
  }
  auto shape = broadcast_shapes(std::vector<Shape>{cond.shape(), x.shape(), y.shape()});
  if (!shape.ok()) return ctx.error(shape.status().message());
  const std::vector<int64_t> ic = broadcast_index_map(cond.shape(), *shape);
  const std::vector<int64_t> ix = broadcast_index_map(x.shape(), *shape);
  const std::vector<int64_t> iy = broadcast_index_map(y.shape(), *shape);
  Tensor out(x.dtype(), *shape);
  const bool* c = cond.data<bool>();
  const int64_t n = out.numel();
  bool by_size = x.dtype() != DType::kString && dispatch_by_size(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* py = y.data<T>();
    T* po = out.data<T>();
    for (int64_t i = 0; i < n; ++i) po[i] = c[ic[i]] ? px[ix[i]] : py[iy[i]];
  });
  if (!by_size) {
    for (int64_t i = 0; i < n; ++i) {
      if (c[ic[i]]) copy_element(x, ix[i], out, i);
      else copy_element(y, iy[i], out, i);
    }
  }
  ctx.set_output(0, out);
  return OkStatus();
}

}  // namespace

void register_elementwise_binary_ops(ir::OpRegistry& r) {
  r.add("Add", 1, add_kernel);
  r.add("Sub", 1, sub_kernel);
  r.add("Mul", 1, mul_kernel);
  r.add("Div", 1, div_kernel);
  r.add("Pow", 1, pow_kernel);
  r.add("Mod", 10, mod_kernel);
  r.add("BitShift", 11, bitshift_kernel);
  r.add("Max", 1, variadic_kernel<Fold::kMax>);
  r.add("Min", 1, variadic_kernel<Fold::kMin>);
  r.add("Sum", 1, variadic_kernel<Fold::kSum>);
  r.add("Mean", 1, variadic_kernel<Fold::kMean>);
  r.add("Where", 9, where_kernel);
}

}  // namespace kiln::cpu
