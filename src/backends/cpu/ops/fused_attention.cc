// CPU reference kernel of the optimizer's kiln.MaskedSoftmax (domain "kiln"; made by fuse_masked_softmax):
// Y = Softmax(X + Mask) along the last axis, and with nan_to_zero = 1 every NaN of the result replaced by 0,
// which is what torch's SDPA export writes as Add -> Softmax -> IsNaN -> Where(isnan, 0, P) (a row whose mask
// is all -inf gives NaN, then 0). The sum X + Mask is formed in float32 (float64 stays float64) and handed to
// the ONNX Softmax reference itself, so the fused op and its decomposition share one softmax; float16 /
// bfloat16 are rounded once at the end, as the CUDA layer does.
//
// And the reference of kiln.FusedAttention (made by fuse_attention): Y = softmax(scale * Q K^T [+ Mask]
// [causal]) V per batch and head, Q/K/V/Y in layout "BHSD" ([B, H, S, D]) or "BSHD" ([B, S, H, D], what
// the linear projections reshaped to heads give, so the Transposes around attention go); the mask always
// broadcasts to the logical [B, H, Sq, Sk]. One row of logits at a time, in float32 (float64 for float64),
// rounded once at the end; a row whose logits are all -inf gives NaN as softmax does, or 0 with nan_to_zero.
// With packed_qkv = 1 (made by pack_qkv_projections) the inputs are (QKV, Mask): QKV [B, S, 3, H, D], the
// output of one GEMM for the three projections, Q = QKV[:, :, 0], K = QKV[:, :, 1], V = QKV[:, :, 2] (layout
// BSHD only); the reference slices them out and computes as above.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/gemm_util.h"

namespace kiln::cpu {
namespace {

// ONNX Softmax (opset 13, last axis) of x through its registered reference kernel, errors naming `node`.
Result<Tensor> softmax_last_axis(const KernelContext& ctx, const Tensor& x) {
  const ir::OpSchema* schema = ir::OpRegistry::global().find("", "Softmax");
  if (schema == nullptr || schema->cpu_kernel == nullptr) return ctx.error("no Softmax reference kernel");
  ir::Node n;
  n.name = ctx.node().name;
  n.op_type = "Softmax";
  n.inputs = {"x"};
  n.outputs = {"y"};
  ir::Attribute axis;
  axis.type = ir::Attribute::Type::kInt;
  axis.i = -1;
  n.attributes["axis"] = axis;
  const Value in(x);
  std::vector<Value> out(1);
  ir::KernelContext sub(n, 13, {&in}, &out, {});
  KILN_RETURN_IF_ERROR(schema->cpu_kernel(sub));
  return out[0].tensor();
}

Status masked_softmax_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  if (ctx.num_inputs() > 2) return ctx.error("takes 2 inputs (X, Mask), got " + std::to_string(ctx.num_inputs()));
  const Tensor& x0 = ctx.input(0);
  if (!dtype_is_float(x0.dtype())) return ctx.error("X must be a float tensor, got " + x0.description());
  const int64_t rank = x0.rank();
  if (rank == 0) return ctx.error("X must have rank >= 1, got a scalar");
  const int64_t axis_attr = ctx.attr_int("axis", -1);
  if (axis_attr != -1 && axis_attr != rank - 1)
    return ctx.error("axis must be the last axis (-1 or " + std::to_string(rank - 1) + "), got " +
                     std::to_string(axis_attr));
  const int64_t nan_to_zero = ctx.attr_int("nan_to_zero", 0);
  if (nan_to_zero != 0 && nan_to_zero != 1)
    return ctx.error("nan_to_zero must be 0 or 1, got " + std::to_string(nan_to_zero));

  Tensor a = widen_to_float32(x0);
  if (ctx.has_input(1)) {
    const Tensor& m0 = ctx.input(1);
    if (m0.dtype() != x0.dtype()) return ctx.error("Mask must have X's dtype, got " + m0.description());
    auto b = broadcast_shapes(x0.shape(), m0.shape());
    if (!b.ok() || *b != x0.shape())
      return ctx.error("Mask " + shape_to_string(m0.shape()) + " does not broadcast to X's shape " +
                       shape_to_string(x0.shape()));
    const Tensor m = widen_to_float32(m0);
    const std::vector<int64_t> at = broadcast_index_map(m.shape(), a.shape());
    Tensor sum(a.dtype(), a.shape());
    dispatch_float(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* xd = a.data<T>();
      const T* md = m.data<T>();
      T* sd = sum.data<T>();
      for (int64_t i = 0, n = a.numel(); i < n; ++i) sd[i] = xd[i] + md[at[i]];
    });
    a = std::move(sum);
  }
  KILN_ASSIGN_OR_RETURN(Tensor y, softmax_last_axis(ctx, a));
  if (nan_to_zero) {
    dispatch_float(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* yd = y.data<T>();
      for (int64_t i = 0, n = y.numel(); i < n; ++i)
        if (std::isnan(yd[i])) yd[i] = T(0);
    });
  }
  ctx.set_output(0, narrow_back(y, x0.dtype()));
  return OkStatus();
}

// The 0/1 attribute `name` (default 0); an error naming the node for any other value.
Result<bool> flag_attr(const KernelContext& ctx, const char* name) {
  const int64_t v = ctx.attr_int(name, 0);
  if (v != 0 && v != 1) return ctx.error(std::string(name) + " must be 0 or 1, got " + std::to_string(v));
  return v == 1;
}

// Where an operand's [b, h, s, d] element lies, whichever its layout.
struct HeadStrides {
  int64_t b, h, s;
  HeadStrides(const Shape& shape, bool bshd) {
    const int64_t d = shape[3];
    if (bshd) {  // [B, S, H, D]
      h = d;
      s = shape[2] * d;
    } else {  // [B, H, S, D]
      s = d;
      h = shape[2] * d;
    }
    b = shape[1] * shape[2] * d;
  }
  int64_t at(int64_t bi, int64_t hi, int64_t si) const { return bi * b + hi * h + si * s; }
};

// Q, K and V out of a packed QKV [B, S, 3, H, D]: three [B, S, H, D] tensors.
std::array<Tensor, 3> unpack_qkv(const Tensor& qkv) {
  const Shape& s = qkv.shape();
  const Shape one{s[0], s[1], s[3], s[4]};
  const size_t chunk = static_cast<size_t>(s[3] * s[4]) * dtype_size(qkv.dtype());  // one (b, s, i) row of H*D
  const int64_t rows = s[0] * s[1];
  std::array<Tensor, 3> out{Tensor(qkv.dtype(), one), Tensor(qkv.dtype(), one), Tensor(qkv.dtype(), one)};
  const auto* src = static_cast<const unsigned char*>(qkv.raw_data());
  for (int i = 0; i < 3; ++i) {
    auto* dst = static_cast<unsigned char*>(out[i].raw_data());
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * chunk, src + (r * 3 + i) * chunk, chunk);
  }
  return out;
}

Status fused_attention_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const bool packed, flag_attr(ctx, "packed_qkv"));
  const size_t n_inputs = packed ? 2 : 4, mask_input = packed ? 1 : 3;
  if (ctx.num_inputs() > n_inputs)
    return ctx.error(packed ? "with packed_qkv takes 2 inputs (QKV, Mask), got " + std::to_string(ctx.num_inputs())
                            : "takes 4 inputs (Q, K, V, Mask), got " + std::to_string(ctx.num_inputs()));
  static const char* const kNames[] = {"Q", "K", "V", "Mask"};
  if (packed && !ctx.has_input(0)) return ctx.error("input QKV is required");
  for (int i = 0; i < (packed ? 0 : 3); ++i)
    if (!ctx.has_input(i)) return ctx.error(std::string("input ") + kNames[i] + " is required");
  const bool has_mask = ctx.has_input(mask_input);
  const DType dt = ctx.input(0).dtype();
  if (dt != DType::kFloat32 && dt != DType::kFloat64 && dt != DType::kFloat16 && dt != DType::kBFloat16)
    return ctx.error(std::string(packed ? "QKV" : "Q") + " must be float16, bfloat16, float32 or float64, got " +
                     ctx.input(0).description());
  for (size_t i = 1; i < n_inputs; ++i)
    if (ctx.has_input(i) && ctx.input(i).dtype() != dt)
      return ctx.error(std::string(kNames[i == mask_input ? 3 : i]) + " must have Q's dtype " + dtype_name(dt) +
                       ", got " + ctx.input(i).description());
  const std::string layout = ctx.attr_string("layout", "BHSD");
  if (layout != "BHSD" && layout != "BSHD") return ctx.error("layout must be \"BHSD\" or \"BSHD\", got \"" + layout + "\"");
  const bool bshd = layout == "BSHD";
  if (!ctx.has_attr("scale")) return ctx.error("attribute scale is required");
  const double scale = ctx.attr_float("scale", 1.0f);
  KILN_ASSIGN_OR_RETURN(const bool causal, flag_attr(ctx, "causal"));
  KILN_ASSIGN_OR_RETURN(const bool nan_to_zero, flag_attr(ctx, "nan_to_zero"));

  std::array<Tensor, 3> unpacked;
  const Tensor* qkv[3] = {nullptr, nullptr, nullptr};
  if (packed) {
    const Tensor& p = ctx.input(0);
    if (!bshd) return ctx.error("packed_qkv needs layout \"BSHD\", got \"" + layout + "\"");
    if (p.rank() != 5 || p.dim(2) != 3)
      return ctx.error("QKV must be [B, S, 3, H, D] with packed_qkv, got " + shape_to_string(p.shape()));
    unpacked = unpack_qkv(p);
    for (int i = 0; i < 3; ++i) qkv[i] = &unpacked[i];
  } else {
    for (int i = 0; i < 3; ++i) {
      qkv[i] = &ctx.input(i);
      if (qkv[i]->rank() != 4)
        return ctx.error(std::string(kNames[i]) + " must have rank 4 (" + layout + "), got " +
                         shape_to_string(qkv[i]->shape()));
    }
  }
  const Tensor& q0 = *qkv[0];
  const Shape& qs = q0.shape();
  const Shape& ks = qkv[1]->shape();
  const Shape& vs = qkv[2]->shape();
  const int ha = bshd ? 2 : 1, sa = bshd ? 1 : 2;  // the axes of H and S in this layout
  const int64_t B = qs[0], H = qs[ha], Sq = qs[sa], D = qs[3], Sk = ks[sa], Dv = vs[3];
  auto mismatch = [&](const char* what, const char* a, const Shape& as, const char* b, const Shape& bs) {
    return ctx.error(std::string(what) + " of " + a + " " + shape_to_string(as) + " and " + b + " " +
                     shape_to_string(bs) + " differ (layout " + layout + ")");
  };
  if (ks[0] != B || ks[ha] != H) return mismatch("batch or heads", "Q", qs, "K", ks);
  if (vs[0] != B || vs[ha] != H) return mismatch("batch or heads", "Q", qs, "V", vs);
  if (ks[3] != D) return mismatch("head size D", "Q", qs, "K", ks);
  if (vs[sa] != Sk) return mismatch("key length Sk", "K", ks, "V", vs);

  const Shape logical{B, H, Sq, Sk};
  std::vector<int64_t> mask_at;
  Tensor mask;
  if (has_mask) {
    const Tensor& m0 = ctx.input(mask_input);
    auto b = broadcast_shapes(logical, m0.shape());
    if (m0.rank() > 4 || !b.ok() || *b != logical)
      return ctx.error("Mask " + shape_to_string(m0.shape()) + " does not broadcast to [B,H,Sq,Sk] " +
                       shape_to_string(logical));
    mask = widen_to_float32(m0);
    mask_at = broadcast_index_map(mask.shape(), logical);
  }

  const Tensor q = widen_to_float32(q0), k = widen_to_float32(*qkv[1]), v = widen_to_float32(*qkv[2]);
  const Shape ys = bshd ? Shape{B, Sq, H, Dv} : Shape{B, H, Sq, Dv};
  Tensor y(q.dtype(), ys);
  const HeadStrides qst(qs, bshd), kst(ks, bshd), vst(vs, bshd), yst(ys, bshd);
  dispatch_float(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T inf = std::numeric_limits<T>::infinity();
    const T* qd = q.data<T>();
    const T* kd = k.data<T>();
    const T* vd = v.data<T>();
    const T* md = mask_at.empty() ? nullptr : mask.data<T>();
    T* yd = y.data<T>();
    std::vector<T> row(static_cast<size_t>(Sk)), acc(static_cast<size_t>(Dv));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Sq; ++i) {
          const T* qi = qd + qst.at(b, h, i);
          T top = -inf;
          for (int64_t j = 0; j < Sk; ++j) {
            const T* kj = kd + kst.at(b, h, j);
            T dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
            T l = static_cast<T>(scale) * dot;
            if (md) l += md[mask_at[((b * H + h) * Sq + i) * Sk + j]];
            if (causal && j > i) l = -inf;
            row[j] = l;
            top = std::max(top, l);
          }
          // All -inf: exp(-inf - -inf) is NaN, as the decomposed Softmax gives.
          T sum = 0;
          for (int64_t j = 0; j < Sk; ++j) sum += row[j] = std::exp(row[j] - top);
          std::fill(acc.begin(), acc.end(), T(0));
          for (int64_t j = 0; j < Sk; ++j) {
            T p = row[j] / sum;
            if (nan_to_zero && std::isnan(p)) p = 0;  // what MaskedSoftmax's nan_to_zero does to P
            const T* vj = vd + vst.at(b, h, j);
            for (int64_t d = 0; d < Dv; ++d) acc[d] += p * vj[d];
          }
          T* yi = yd + yst.at(b, h, i);
          std::copy(acc.begin(), acc.end(), yi);
        }
  });
  ctx.set_output(0, narrow_back(y, dt));
  return OkStatus();
}

}  // namespace

void register_fused_attention_ops(ir::OpRegistry& r) {
  ir::OpSchema s;
  s.domain = "kiln";
  s.op_type = "MaskedSoftmax";
  s.since_version = 1;
  s.cpu_kernel = masked_softmax_kernel;
  r.add(std::move(s));
  ir::OpSchema a;
  a.domain = "kiln";
  a.op_type = "FusedAttention";
  a.since_version = 1;
  a.cpu_kernel = fused_attention_kernel;
  r.add(std::move(a));
}

}  // namespace kiln::cpu
