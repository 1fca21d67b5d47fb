// CPU reference kernels: matrix products (Gemm, MatMul, MatMulInteger, QLinearMatMul, Einsum, Det).
#include <cmath>
#include <limits>
#include <map>
#include <type_traits>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/fused_matmul.h"
#include "backends/cpu/ops/gemm_util.h"
#include "core/float_formats.h"

namespace kiln::cpu {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Gemm: Y = alpha * op(A) * op(B) + beta * C, C broadcast to [M, N].

Status gemm_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs A and B are required");
  const Tensor& a0 = ctx.input(0);
  const Tensor& b0 = ctx.input(1);
  if (a0.rank() != 2 || b0.rank() != 2)
    return ctx.error("A and B must be 2-D, got " + a0.description() + " and " + b0.description());
  if (a0.dtype() != b0.dtype()) return ctx.error("A and B must have the same dtype, got " + a0.description() + " and " + b0.description());
  bool trans_a = ctx.attr_int("transA", 0) != 0;
  bool trans_b = ctx.attr_int("transB", 0) != 0;
  float alpha = ctx.attr_float("alpha", 1.0f);
  float beta = ctx.attr_float("beta", 1.0f);
  int64_t M = trans_a ? a0.dim(1) : a0.dim(0);
  int64_t K = trans_a ? a0.dim(0) : a0.dim(1);
  int64_t Kb = trans_b ? b0.dim(1) : b0.dim(0);
  int64_t N = trans_b ? b0.dim(0) : b0.dim(1);
  if (K != Kb) return ctx.error("inner dimensions differ: op(A) is [" + std::to_string(M) + "," + std::to_string(K) +
                                "], op(B) is [" + std::to_string(Kb) + "," + std::to_string(N) + "]");
  Tensor a = widen_to_float32(a0), b = widen_to_float32(b0);
  Tensor y(a.dtype(), {M, N});
  std::vector<int64_t> c_map;
  Tensor c;
  if (ctx.has_input(2)) {
    const Tensor& c0 = ctx.input(2);
    if (c0.dtype() != a0.dtype()) return ctx.error("C must have A's dtype, got " + c0.description());
    auto shape = broadcast_shapes(c0.shape(), Shape{M, N});
    if (!shape.ok() || *shape != Shape{M, N})
      return ctx.error("C " + shape_to_string(c0.shape()) + " cannot be broadcast to [" + std::to_string(M) + "," +
                       std::to_string(N) + "]");
    c = widen_to_float32(c0);
    c_map = broadcast_index_map(c.shape(), {M, N});
  }
  bool ok = dispatch_numeric(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = y.data<T>();
    if constexpr (std::is_floating_point_v<T>) {
      gemm<T>(trans_a, trans_b, M, N, K, static_cast<T>(alpha), a.data<T>(), a.dim(1), b.data<T>(), b.dim(1), T(0), out, N);
      if (c.defined() && beta != 0) {
        const T* cd = c.data<T>();
        for (int64_t i = 0; i < M * N; ++i) out[i] += static_cast<T>(beta) * cd[c_map[i]];
      }
    } else {
      // Integers: the product in the type itself, then scaled like numpy would (alpha, beta are floats).
      gemm<T>(trans_a, trans_b, M, N, K, T(1), a.data<T>(), a.dim(1), b.data<T>(), b.dim(1), T(0), out, N);
      const T* cd = c.defined() ? c.data<T>() : nullptr;
      for (int64_t i = 0; i < M * N; ++i) {
        double v = static_cast<double>(alpha) * static_cast<double>(out[i]);
        if (cd) v += static_cast<double>(beta) * static_cast<double>(cd[c_map[i]]);
        out[i] = static_cast<T>(v);
      }
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(a0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, a0.dtype()));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Batched, broadcast matrix product shapes (numpy matmul semantics), shared by MatMul and the integer forms.

struct MatMulPlan {
  int64_t M = 0, K = 0, N = 0;
  Shape out_shape;
  std::vector<int64_t> a_batch_offsets, b_batch_offsets;  // per output batch: element offset of the A / B matrix
};

Result<MatMulPlan> plan_matmul(const KernelContext& ctx, const Shape& a_in, const Shape& b_in) {
  if (a_in.empty() || b_in.empty()) return ctx.error("MatMul operands must have rank >= 1, got " + shape_to_string(a_in) + " and " + shape_to_string(b_in));
  Shape a = a_in, b = b_in;
  bool a_vec = a.size() == 1, b_vec = b.size() == 1;
  if (a_vec) a.insert(a.begin(), 1);
  if (b_vec) b.push_back(1);
  MatMulPlan p;
  p.M = a[a.size() - 2];
  p.K = a[a.size() - 1];
  p.N = b[b.size() - 1];
  if (b[b.size() - 2] != p.K)
    return ctx.error("inner dimensions differ: " + shape_to_string(a_in) + " x " + shape_to_string(b_in));
  Shape a_batch(a.begin(), a.end() - 2), b_batch(b.begin(), b.end() - 2);
  auto batch = broadcast_shapes(a_batch, b_batch);
  if (!batch.ok()) return ctx.error("batch dimensions do not broadcast: " + shape_to_string(a_in) + " x " + shape_to_string(b_in));
  std::vector<int64_t> amap = broadcast_index_map(a_batch, *batch), bmap = broadcast_index_map(b_batch, *batch);
  for (size_t i = 0; i < amap.size(); ++i) {
    p.a_batch_offsets.push_back(amap[i] * p.M * p.K);
    p.b_batch_offsets.push_back(bmap[i] * p.K * p.N);
  }
  p.out_shape = *batch;
  if (!a_vec) p.out_shape.push_back(p.M);
  if (!b_vec) p.out_shape.push_back(p.N);
  return p;
}

}  // namespace

Result<Tensor> matmul_product(const KernelContext& ctx, const Tensor& a0, const Tensor& b0) {
  if (a0.dtype() != b0.dtype()) return ctx.error("A and B must have the same dtype, got " + a0.description() + " and " + b0.description());
  KILN_ASSIGN_OR_RETURN(MatMulPlan p, plan_matmul(ctx, a0.shape(), b0.shape()));
  Tensor a = widen_to_float32(a0), b = widen_to_float32(b0);
  Tensor y(a.dtype(), p.out_shape);
  bool ok = dispatch_numeric(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (size_t i = 0; i < p.a_batch_offsets.size(); ++i) {
      gemm<T>(false, false, p.M, p.N, p.K, T(1), a.data<T>() + p.a_batch_offsets[i], p.K, b.data<T>() + p.b_batch_offsets[i],
              p.N, T(0), y.data<T>() + static_cast<int64_t>(i) * p.M * p.N, p.N);
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(a0.dtype()) + " is not supported");
  return y;
}

namespace {

Status matmul_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs A and B are required");
  KILN_ASSIGN_OR_RETURN(Tensor y, matmul_product(ctx, ctx.input(0), ctx.input(1)));
  ctx.set_output(0, narrow_back(y, ctx.input(0).dtype()));
  return OkStatus();
}

// Integer operand as int32 with its zero point removed. The zero point is a scalar, or per row of A (`rows`
// entries, applied along axis -2) / per column of B (`cols` entries, along axis -1).
Result<std::vector<int32_t>> centered(const KernelContext& ctx, const Tensor& x, const Tensor* zp, bool per_row,
                                      const char* name) {
  if (x.dtype() != DType::kInt8 && x.dtype() != DType::kUInt8)
    return ctx.error(std::string(name) + " must be int8 or uint8, got " + x.description());
  std::vector<int32_t> v(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i)
    v[i] = x.dtype() == DType::kInt8 ? x.data<int8_t>()[i] : x.data<uint8_t>()[i];
  if (zp == nullptr) return v;
  if (zp->dtype() != x.dtype()) return ctx.error(std::string(name) + " zero point must have its dtype, got " + zp->description());
  std::vector<int64_t> z = zp->to_int64_vector();
  if (z.size() == 1) {
    for (auto& e : v) e -= static_cast<int32_t>(z[0]);
    return v;
  }
  int64_t rank = x.rank();
  int64_t len = per_row ? (rank >= 2 ? x.dim(rank - 2) : 1) : x.dim(rank - 1);
  if (static_cast<int64_t>(z.size()) != len)
    return ctx.error(std::string(name) + " zero point " + zp->description() + " must have 1 or " + std::to_string(len) + " elements");
  int64_t inner = per_row ? x.dim(rank - 1) : 1;
  for (int64_t i = 0; i < x.numel(); ++i) v[i] -= static_cast<int32_t>(z[(i / inner) % len]);
  return v;
}

Status matmul_int32(const KernelContext& ctx, const MatMulPlan& p, const std::vector<int32_t>& a,
                    const std::vector<int32_t>& b, std::vector<int32_t>* out) {
  out->assign(static_cast<size_t>(shape_numel(p.out_shape)), 0);
  for (size_t i = 0; i < p.a_batch_offsets.size(); ++i) {
    gemm<int32_t>(false, false, p.M, p.N, p.K, 1, a.data() + p.a_batch_offsets[i], p.K, b.data() + p.b_batch_offsets[i], p.N, 0,
                  out->data() + static_cast<int64_t>(i) * p.M * p.N, p.N);
  }
  return OkStatus();
}

Status matmul_integer_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs A and B are required");
  const Tensor& a0 = ctx.input(0);
  const Tensor& b0 = ctx.input(1);
  KILN_ASSIGN_OR_RETURN(MatMulPlan p, plan_matmul(ctx, a0.shape(), b0.shape()));
  KILN_ASSIGN_OR_RETURN(auto a, centered(ctx, a0, ctx.has_input(2) ? &ctx.input(2) : nullptr, true, "A"));
  KILN_ASSIGN_OR_RETURN(auto b, centered(ctx, b0, ctx.has_input(3) ? &ctx.input(3) : nullptr, false, "B"));
  std::vector<int32_t> acc;
  KILN_RETURN_IF_ERROR(matmul_int32(ctx, p, a, b, &acc));
  ctx.set_output(0, Tensor::from_vector(DType::kInt32, p.out_shape, acc));
  return OkStatus();
}

// A scale as float; float16 scales are rounded through float16 after each operation (the reference
// computes the combined scale in the scales' own type).
Result<std::vector<float>> scales_of(const KernelContext& ctx, const Tensor& s, const char* name) {
  if (!dtype_is_float(s.dtype())) return ctx.error(std::string(name) + " must be a float tensor, got " + s.description());
  Tensor f = widen_to_float32(s);
  if (f.dtype() == DType::kFloat64) f = cast_tensor(f, DType::kFloat32).value();
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

Status qlinear_matmul_kernel(KernelContext& ctx) {
  for (size_t i : {0, 1, 3, 4, 6})
    if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is required");
  const Tensor& a0 = ctx.input(0);
  const Tensor& b0 = ctx.input(3);
  KILN_ASSIGN_OR_RETURN(MatMulPlan p, plan_matmul(ctx, a0.shape(), b0.shape()));
  KILN_ASSIGN_OR_RETURN(auto a, centered(ctx, a0, ctx.has_input(2) ? &ctx.input(2) : nullptr, true, "a"));
  KILN_ASSIGN_OR_RETURN(auto b, centered(ctx, b0, ctx.has_input(5) ? &ctx.input(5) : nullptr, false, "b"));
  KILN_ASSIGN_OR_RETURN(auto as, scales_of(ctx, ctx.input(1), "a_scale"));
  KILN_ASSIGN_OR_RETURN(auto bs, scales_of(ctx, ctx.input(4), "b_scale"));
  KILN_ASSIGN_OR_RETURN(auto ys, scales_of(ctx, ctx.input(6), "y_scale"));
  if (ys.size() != 1) return ctx.error("y_scale must be a scalar, got " + ctx.input(6).description());
  if (as.size() != 1 && static_cast<int64_t>(as.size()) != p.M) return ctx.error("a_scale must have 1 or M elements, got " + ctx.input(1).description());
  if (bs.size() != 1 && static_cast<int64_t>(bs.size()) != p.N) return ctx.error("b_scale must have 1 or N elements, got " + ctx.input(4).description());
  bool half = ctx.input(1).dtype() == DType::kFloat16;
  auto round_scale = [&](float v) { return half ? half_to_float(float_to_half(v)) : v; };
  DType out_type = ctx.has_input(7) ? ctx.input(7).dtype() : a0.dtype();
  if (out_type != DType::kInt8 && out_type != DType::kUInt8) return ctx.error("y_zero_point must be int8 or uint8");
  int64_t yzp = ctx.has_input(7) ? ctx.input(7).scalar_as_int(0) : 0;
  std::vector<int32_t> acc;
  KILN_RETURN_IF_ERROR(matmul_int32(ctx, p, a, b, &acc));
  Tensor y(out_type, p.out_shape);
  double lo = out_type == DType::kInt8 ? -128 : 0, hi = out_type == DType::kInt8 ? 127 : 255;
  for (int64_t i = 0; i < static_cast<int64_t>(acc.size()); ++i) {
    int64_t col = p.N == 0 ? 0 : i % p.N, row = (p.N == 0 || p.M == 0) ? 0 : (i / p.N) % p.M;
    float m = round_scale(round_scale(as[as.size() == 1 ? 0 : row] * bs[bs.size() == 1 ? 0 : col]) / ys[0]);
    double v = std::nearbyint(static_cast<double>(acc[i]) * m) + static_cast<double>(yzp);
    v = std::min(hi, std::max(lo, v));
    if (out_type == DType::kInt8) y.data<int8_t>()[i] = static_cast<int8_t>(v);
    else y.data<uint8_t>()[i] = static_cast<uint8_t>(v);
  }
  ctx.set_output(0, y);
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Einsum: every distinct label becomes one axis of an iteration space; the output labels come first, the
// summed ones after. Each operand walks that space with its own strides (a repeated label in one operand
// adds its strides: a diagonal; a broadcast size-1 ellipsis axis gets stride 0).

struct EinsumTerm {
  std::vector<int> labels;  // letters as 0..51; ellipsis axes as 100 + k (k counted from the ellipsis' right end)
};

Result<EinsumTerm> parse_term(const KernelContext& ctx, const std::string& s, int64_t rank, int* ellipsis_rank,
                              bool is_output) {
  EinsumTerm t;
  size_t dots = s.find("...");
  std::string left = dots == std::string::npos ? s : s.substr(0, dots);
  std::string right = dots == std::string::npos ? "" : s.substr(dots + 3);
  auto letters = [&](const std::string& part, std::vector<int>* out) -> Status {
    for (char c : part) {
      if (c == ' ') continue;
      if (c >= 'a' && c <= 'z') out->push_back(c - 'a');
      else if (c >= 'A' && c <= 'Z') out->push_back(26 + c - 'A');
      else return ctx.error(std::string("invalid character '") + c + "' in equation term '" + s + "'");
    }
    return OkStatus();
  };
  std::vector<int> l, r;
  KILN_RETURN_IF_ERROR(letters(left, &l));
  KILN_RETURN_IF_ERROR(letters(right, &r));
  int64_t ell = 0;
  if (dots != std::string::npos) {
    if (is_output) {
      ell = *ellipsis_rank;
    } else {
      ell = rank - static_cast<int64_t>(l.size() + r.size());
      if (ell < 0) return ctx.error("term '" + s + "' has more labels than its operand's rank " + std::to_string(rank));
      *ellipsis_rank = std::max<int>(*ellipsis_rank, static_cast<int>(ell));
    }
  }
  if (!is_output && static_cast<int64_t>(l.size() + r.size()) + ell != rank)
    return ctx.error("term '" + s + "' does not match its operand's rank " + std::to_string(rank));
  t.labels = l;
  for (int64_t k = ell; k > 0; --k) t.labels.push_back(100 + static_cast<int>(k - 1));
  t.labels.insert(t.labels.end(), r.begin(), r.end());
  return t;
}

Status einsum_kernel(KernelContext& ctx) {
  std::string eq = ctx.attr_string("equation", "");
  std::string spaced;
  for (char c : eq) if (c != ' ') spaced += c;
  eq = spaced;
  if (eq.empty()) return ctx.error("attribute 'equation' is required");
  size_t arrow = eq.find("->");
  std::string lhs = arrow == std::string::npos ? eq : eq.substr(0, arrow);
  std::vector<std::string> terms;
  size_t start = 0;
  for (size_t i = 0; i <= lhs.size(); ++i) {
    if (i == lhs.size() || lhs[i] == ',') {
      terms.push_back(lhs.substr(start, i - start));
      start = i + 1;
    }
  }
  size_t n_in = ctx.num_inputs();
  if (terms.size() != n_in) return ctx.error("equation '" + eq + "' has " + std::to_string(terms.size()) + " terms but the node has " + std::to_string(n_in) + " inputs");
  std::vector<Tensor> xs;
  DType dtype = DType::kUndefined;
  for (size_t i = 0; i < n_in; ++i) {
    if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is missing");
    if (i == 0) dtype = ctx.input(i).dtype();
    else if (ctx.input(i).dtype() != dtype) return ctx.error("all inputs must have the same dtype");
    xs.push_back(widen_to_float32(ctx.input(i)));
  }
  int ellipsis_rank = 0;
  std::vector<EinsumTerm> in_terms;
  for (size_t i = 0; i < n_in; ++i) {
    KILN_ASSIGN_OR_RETURN(EinsumTerm t, parse_term(ctx, terms[i], xs[i].rank(), &ellipsis_rank, false));
    in_terms.push_back(t);
  }
  // Label sizes; size-1 ellipsis axes broadcast.
  std::map<int, int64_t> size_of;
  for (size_t i = 0; i < n_in; ++i) {
    for (size_t d = 0; d < in_terms[i].labels.size(); ++d) {
      int lab = in_terms[i].labels[d];
      int64_t sz = xs[i].dim(static_cast<int64_t>(d));
      auto it = size_of.find(lab);
      if (it == size_of.end() || it->second == 1) size_of[lab] = sz;
      else if (sz != it->second && !(lab >= 100 && sz == 1))
        return ctx.error("label sizes disagree in equation '" + eq + "': " + std::to_string(it->second) + " vs " + std::to_string(sz));
    }
  }
  EinsumTerm out_term;
  if (arrow != std::string::npos) {
    KILN_ASSIGN_OR_RETURN(out_term, parse_term(ctx, eq.substr(arrow + 2), 0, &ellipsis_rank, true));
    for (size_t i = 0; i < out_term.labels.size(); ++i) {
      int lab = out_term.labels[i];
      if (!size_of.count(lab)) return ctx.error("output label does not appear in any input of '" + eq + "'");
      for (size_t j = 0; j < i; ++j)
        if (out_term.labels[j] == lab) return ctx.error("output label repeated in '" + eq + "'");
    }
  } else {
    // Implicit output: the ellipsis axes, then the labels seen exactly once, in alphabetical order.
    std::map<int, int> count;
    for (auto& t : in_terms) for (int lab : t.labels) count[lab]++;
    for (int k = ellipsis_rank; k > 0; --k) out_term.labels.push_back(100 + k - 1);
    for (auto& [lab, c] : count) if (lab < 100 && c == 1) out_term.labels.push_back(lab);
  }
  // Iteration space: output labels, then the rest.
  std::vector<int> space = out_term.labels;
  for (auto& [lab, sz] : size_of) {
    bool in_out = false;
    for (int o : out_term.labels) in_out |= o == lab;
    if (!in_out) space.push_back(lab);
  }
  size_t n_out = out_term.labels.size();
  Shape out_shape, space_shape;
  for (int lab : space) space_shape.push_back(size_of[lab]);
  for (size_t i = 0; i < n_out; ++i) out_shape.push_back(space_shape[i]);
  // Per operand, stride of each space axis.
  std::vector<std::vector<int64_t>> strides(n_in, std::vector<int64_t>(space.size(), 0));
  for (size_t i = 0; i < n_in; ++i) {
    std::vector<int64_t> st = strides_of(xs[i].shape());
    for (size_t d = 0; d < in_terms[i].labels.size(); ++d) {
      if (xs[i].dim(static_cast<int64_t>(d)) == 1 && size_of[in_terms[i].labels[d]] != 1) continue;  // broadcast
      for (size_t s = 0; s < space.size(); ++s)
        if (space[s] == in_terms[i].labels[d]) strides[i][s] += st[d];
    }
  }
  Tensor y(xs[0].dtype(), out_shape);
  int64_t out_n = shape_numel(out_shape);
  int64_t sum_n = 1;
  for (size_t s = n_out; s < space.size(); ++s) sum_n *= space_shape[s];
  bool ok = dispatch_numeric(xs[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_floating_point_v<T>, double, T>;
    std::vector<const T*> data;
    for (auto& x : xs) data.push_back(x.data<T>());
    std::vector<int64_t> idx(space.size(), 0);
    std::vector<int64_t> offs(n_in, 0);
    T* out = y.data<T>();
    // Walk the whole space in row-major order: output-major, so each output's sum is contiguous in time.
    for (int64_t o = 0; o < out_n; ++o) {
      A acc = 0;
      for (int64_t s = 0; s < sum_n; ++s) {
        A prod = 1;
        for (size_t i = 0; i < n_in; ++i) prod *= static_cast<A>(data[i][offs[i]]);
        acc += prod;
        for (int64_t ax = static_cast<int64_t>(space.size()) - 1; ax >= 0; --ax) {
          if (++idx[ax] < space_shape[ax]) {
            for (size_t i = 0; i < n_in; ++i) offs[i] += strides[i][ax];
            break;
          }
          for (size_t i = 0; i < n_in; ++i) offs[i] -= strides[i][ax] * (idx[ax] - 1);
          idx[ax] = 0;
        }
      }
      if (sum_n == 0) {
        // Nothing was walked: step the output axes by hand.
        for (int64_t ax = static_cast<int64_t>(n_out) - 1; ax >= 0; --ax) {
          if (++idx[ax] < space_shape[ax]) { for (size_t i = 0; i < n_in; ++i) offs[i] += strides[i][ax]; break; }
          for (size_t i = 0; i < n_in; ++i) offs[i] -= strides[i][ax] * (idx[ax] - 1);
          idx[ax] = 0;
        }
      }
      out[o] = static_cast<T>(acc);
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(dtype) + " is not supported");
  ctx.set_output(0, narrow_back(y, dtype));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Det: LU decomposition with partial pivoting, in double, per [M, M] matrix.

Status det_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  const Tensor& x0 = ctx.input(0);
  if (x0.rank() < 2 || x0.dim(-1) != x0.dim(-2)) return ctx.error("input must be [..., M, M], got " + x0.description());
  Tensor x = widen_to_float32(x0);
  int64_t n = x.dim(-1);
  Shape out_shape(x.shape().begin(), x.shape().end() - 2);
  Tensor y(x.dtype(), out_shape);
  int64_t batches = shape_numel(out_shape);
  bool ok = dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<double> m(static_cast<size_t>(n * n));
    for (int64_t bi = 0; bi < batches; ++bi) {
      const T* src = x.data<T>() + bi * n * n;
      for (int64_t i = 0; i < n * n; ++i) m[i] = static_cast<double>(src[i]);
      double det = 1;
      for (int64_t c = 0; c < n && det != 0; ++c) {
        int64_t piv = c;
        for (int64_t r = c + 1; r < n; ++r)
          if (std::fabs(m[r * n + c]) > std::fabs(m[piv * n + c])) piv = r;
        if (m[piv * n + c] == 0) { det = 0; break; }
        if (piv != c) {
          for (int64_t k = 0; k < n; ++k) std::swap(m[c * n + k], m[piv * n + k]);
          det = -det;
        }
        det *= m[c * n + c];
        for (int64_t r = c + 1; r < n; ++r) {
          double f = m[r * n + c] / m[c * n + c];
          for (int64_t k = c; k < n; ++k) m[r * n + k] -= f * m[c * n + k];
        }
      }
      y.data<T>()[bi] = static_cast<T>(det);
    }
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(x0.dtype()) + " is not supported");
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

}  // namespace

void register_matmul_ops(ir::OpRegistry& r) {
  r.add("Gemm", 1, gemm_kernel);
  r.add("MatMul", 1, matmul_kernel);
  r.add("MatMulInteger", 10, matmul_integer_kernel);
  r.add("QLinearMatMul", 10, qlinear_matmul_kernel);
  r.add("Einsum", 12, einsum_kernel);
  r.add("Det", 11, det_kernel);
}

}  // namespace kiln::cpu
