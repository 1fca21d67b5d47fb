// CPU reference kernels: attention ops.
//   Attention (opset 23+): 3D/4D inputs, GQA, bool/float masks, causal, KV cache, nonpad_kv_seqlen,
//     softcap, qk_matmul_output_mode, sliding window (opset 25 attributes).
//   RotaryEmbedding (23), LinearAttention (27), FlexAttention (ai.onnx.preview 1).
// Everything is computed in double and rounded once to the output dtype.
#include <cmath>
#include <limits>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"

namespace kiln::cpu {
namespace {

using e2::from_doubles;
using e2::is_real_float;
using e2::to_doubles;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Q/K/V in the 4D layout (batch, heads, seq, head_size), as doubles, from a 3D (batch, seq, heads*size)
// or 4D tensor.
std::vector<double> to_bhsd(const Tensor& t, int64_t heads) {
  std::vector<double> v = to_doubles(t);
  if (t.rank() == 4) return v;
  const int64_t b = t.dim(0), s = t.dim(1), d = t.dim(2) / heads;
  std::vector<double> out(v.size());
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t si = 0; si < s; ++si)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t di = 0; di < d; ++di)
          out[((bi * heads + h) * s + si) * d + di] = v[(bi * s + si) * heads * d + h * d + di];
  return out;
}

// Softmax of one row, NaN-propagating like numpy; a row whose max is -inf (fully masked) gives zeros.
void softmax_row(const double* x, double* y, int64_t n) {
  if (n == 0) return;
  double m = x[0];
  for (int64_t j = 0; j < n; ++j) {
    if (std::isnan(x[j])) { m = x[j]; break; }
    if (x[j] > m) m = x[j];
  }
  const double safe_max = (m == kNegInf) ? 0.0 : m;
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    y[j] = std::exp(x[j] - safe_max);
    sum += y[j];
  }
  if (sum == 0) sum = 1;
  for (int64_t j = 0; j < n; ++j) y[j] /= sum;
}

Status attention_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2))
    return ctx.error("Q, K and V are required");
  const Tensor& q = ctx.input(0);
  const Tensor& k = ctx.input(1);
  const Tensor& v = ctx.input(2);
  for (const Tensor* t : {&q, &k, &v})
    if (!is_real_float(t->dtype())) return ctx.error("unsupported dtype " + dtype_name(t->dtype()));
  if (q.rank() != k.rank() || q.rank() != v.rank() || (q.rank() != 3 && q.rank() != 4))
    return ctx.error("Q, K, V must all be 3D or all 4D, got " + shape_to_string(q.shape()) + ", " +
                     shape_to_string(k.shape()) + ", " + shape_to_string(v.shape()));
  const bool is3d = q.rank() == 3;
  const int64_t batch = q.dim(0);
  if (k.dim(0) != batch || v.dim(0) != batch) return ctx.error("Q, K, V batch sizes differ");
  int64_t hq, hkv, lq, lkv, dqk, dv;
  if (is3d) {
    hq = ctx.attr_int("q_num_heads", 0);
    hkv = ctx.attr_int("kv_num_heads", 0);
    if (hq <= 0 || hkv <= 0) return ctx.error("3D inputs need positive q_num_heads and kv_num_heads attributes");
    if (q.dim(2) % hq != 0 || k.dim(2) % hkv != 0 || v.dim(2) % hkv != 0)
      return ctx.error("hidden sizes " + shape_to_string({q.dim(2), k.dim(2), v.dim(2)}) +
                       " are not divisible by q_num_heads=" + std::to_string(hq) +
                       " / kv_num_heads=" + std::to_string(hkv));
    lq = q.dim(1);
    lkv = k.dim(1);
    dqk = q.dim(2) / hq;
    if (k.dim(2) / hkv != dqk) return ctx.error("Q and K head sizes differ");
    dv = v.dim(2) / hkv;
    if (v.dim(1) != lkv) return ctx.error("K and V sequence lengths differ");
  } else {
    hq = q.dim(1);
    hkv = k.dim(1);
    lq = q.dim(2);
    lkv = k.dim(2);
    dqk = q.dim(3);
    dv = v.dim(3);
    if (k.dim(3) != dqk) return ctx.error("Q and K head sizes differ: " + shape_to_string(q.shape()) + " vs " + shape_to_string(k.shape()));
    if (v.dim(1) != hkv || v.dim(2) != lkv)
      return ctx.error("K and V shapes disagree: " + shape_to_string(k.shape()) + " vs " + shape_to_string(v.shape()));
  }
  if (hkv <= 0 || hq % hkv != 0)
    return ctx.error("q_num_heads (" + std::to_string(hq) + ") must be a multiple of kv_num_heads (" + std::to_string(hkv) + ")");
  const int64_t reps = hq / hkv;

  // KV cache.
  const bool has_past = ctx.has_input(4) || ctx.has_input(5);
  int64_t past_len = 0;
  if (has_past) {
    if (!ctx.has_input(4) || !ctx.has_input(5)) return ctx.error("past_key and past_value must be given together");
    const Tensor& pk = ctx.input(4);
    const Tensor& pv = ctx.input(5);
    if (pk.dtype() != k.dtype() || pv.dtype() != v.dtype()) return ctx.error("past_key/past_value dtype differs from K/V");
    if (pk.rank() != 4 || pv.rank() != 4 || pk.dim(0) != batch || pk.dim(1) != hkv || pk.dim(3) != dqk ||
        pv.dim(0) != batch || pv.dim(1) != hkv || pv.dim(3) != dv || pv.dim(2) != pk.dim(2))
      return ctx.error("past_key " + shape_to_string(pk.shape()) + " / past_value " + shape_to_string(pv.shape()) +
                       " do not match (batch, kv_heads, past_len, head_size)");
    past_len = pk.dim(2);
  }
  const int64_t total = past_len + lkv;

  std::vector<int64_t> nonpad;
  const bool has_nonpad = ctx.has_input(6);
  if (has_nonpad) {
    const Tensor& np = ctx.input(6);
    if (!dtype_is_integer(np.dtype()) || np.rank() != 1 || np.dim(0) != batch)
      return ctx.error("nonpad_kv_seqlen must be an integer tensor of shape [batch], got " + np.description());
    if (has_past) return ctx.error("nonpad_kv_seqlen cannot be combined with past_key/past_value");
    nonpad = np.to_int64_vector();
  }

  if (batch * hq * lq * std::max<int64_t>(total, 1) > e2::kMaxElements) return ctx.error("attention too large");

  // Inputs in (b, h, s, d) layout; present K/V = concat(past, new) along s.
  const std::vector<double> q4 = to_bhsd(q, hq);
  const std::vector<double> k_new = to_bhsd(k, hkv);
  const std::vector<double> v_new = to_bhsd(v, hkv);
  std::vector<double> pk, pv;
  if (has_past) {
    pk = to_doubles(ctx.input(4));
    pv = to_doubles(ctx.input(5));
  }
  std::vector<double> kp(static_cast<size_t>(batch * hkv * total * dqk));
  std::vector<double> vp(static_cast<size_t>(batch * hkv * total * dv));
  for (int64_t bh = 0; bh < batch * hkv; ++bh) {
    for (int64_t s = 0; s < total; ++s) {
      for (int64_t d = 0; d < dqk; ++d)
        kp[(bh * total + s) * dqk + d] = s < past_len ? pk[(bh * past_len + s) * dqk + d] : k_new[(bh * lkv + s - past_len) * dqk + d];
      for (int64_t d = 0; d < dv; ++d)
        vp[(bh * total + s) * dv + d] = s < past_len ? pv[(bh * past_len + s) * dv + d] : v_new[(bh * lkv + s - past_len) * dv + d];
    }
  }

  // Attributes.
  const double scale = ctx.has_attr("scale") ? ctx.attr_float("scale", 0) : 1.0 / std::sqrt(static_cast<double>(dqk));
  const double softcap = ctx.attr_float("softcap", 0);
  const bool is_causal = ctx.attr_int("is_causal", 0) != 0;
  const int64_t mode = ctx.attr_int("qk_matmul_output_mode", 0);
  if (mode < 0 || mode > 3) return ctx.error("qk_matmul_output_mode must be 0..3, got " + std::to_string(mode));
  const int64_t left_window = ctx.attr_int("left_window_size", -1);
  const int64_t right_window = ctx.attr_int("right_window_size", -1);
  if (left_window < -1 || right_window < -1) return ctx.error("window sizes must be -1 or nonnegative");
  if (softcap < 0) return ctx.error("softcap must be >= 0");

  // Mask: broadcast (right-aligned) to (batch, hq, lq, total); a shorter last dim is padded with
  // "masked" (-inf / false).
  const Tensor* mask = ctx.has_input(3) ? &ctx.input(3) : nullptr;
  std::vector<double> mask_vals;
  std::vector<int64_t> mask_strides4(4, 0);
  int64_t mask_last = 0;
  const bool mask_bool = mask && mask->dtype() == DType::kBool;
  if (mask) {
    if (!mask_bool && !is_real_float(mask->dtype())) return ctx.error("attn_mask must be bool or float, got " + dtype_name(mask->dtype()));
    if (mask->rank() < 1 || mask->rank() > 4) return ctx.error("attn_mask rank must be 1..4, got " + shape_to_string(mask->shape()));
    mask_last = mask->dim(-1);
    if (mask_last > total)
      return ctx.error("attn_mask last dim " + std::to_string(mask_last) + " exceeds total kv length " + std::to_string(total));
    const int64_t target[4] = {batch, hq, lq, total};
    const std::vector<int64_t> st = strides_of(mask->shape());
    for (int64_t i = 0; i < mask->rank(); ++i) {
      const int64_t ax = 4 - mask->rank() + i;
      const int64_t dim = mask->dim(i);
      if (ax == 3) {  // the key axis: padded, never broadcast (as in the reference)
        mask_strides4[3] = st[i];
        continue;
      }
      if (dim != 1 && dim != target[ax])
        return ctx.error("attn_mask " + shape_to_string(mask->shape()) + " does not broadcast to " +
                         shape_to_string({batch, hq, lq, total}));
      mask_strides4[ax] = dim == 1 ? 0 : st[i];
    }
    if (mask_bool) {
      const bool* p = mask->data<bool>();
      mask_vals.resize(static_cast<size_t>(mask->numel()));
      for (size_t i = 0; i < mask_vals.size(); ++i) mask_vals[i] = p[i] ? 0.0 : kNegInf;
    } else {
      mask_vals = to_doubles(*mask);
    }
  }

  auto bias_at = [&](int64_t b, int64_t h, int64_t i, int64_t j) -> double {
    double bias = 0;
    if (mask) {
      if (j >= mask_last) {
        bias = kNegInf;
      } else {
        bias = mask_vals[static_cast<size_t>(b * mask_strides4[0] + h * mask_strides4[1] + i * mask_strides4[2] + j * mask_strides4[3])];
      }
    }
    const int64_t offset = has_nonpad ? nonpad[static_cast<size_t>(b)] - lq : past_len;
    if (is_causal && !(j <= i + offset)) bias += kNegInf;
    if (left_window >= 0 || right_window >= 0) {
      const int64_t diff = i + offset - j;
      if ((left_window >= 0 && diff > left_window) || (right_window >= 0 && -diff > right_window)) bias += kNegInf;
    }
    if (has_nonpad && !(j < nonpad[static_cast<size_t>(b)])) bias += kNegInf;
    return bias;
  };

  std::vector<double> y(static_cast<size_t>(batch * hq * lq * dv), 0.0);
  std::vector<double> qk_out(static_cast<size_t>(batch * hq * lq * total), 0.0);
  std::vector<double> scores(static_cast<size_t>(total)), probs(static_cast<size_t>(total)), bias(static_cast<size_t>(total));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t kvh = h / reps;
      const double* kbase = &kp[static_cast<size_t>((b * hkv + kvh) * total * dqk)];
      const double* vbase = &vp[static_cast<size_t>((b * hkv + kvh) * total * dv)];
      for (int64_t i = 0; i < lq; ++i) {
        const double* qrow = &q4[static_cast<size_t>(((b * hq + h) * lq + i) * dqk)];
        double* qk_row = &qk_out[static_cast<size_t>(((b * hq + h) * lq + i) * total)];
        bool all_masked = total > 0;
        for (int64_t j = 0; j < total; ++j) {
          double s = 0;
          for (int64_t d = 0; d < dqk; ++d) s += qrow[d] * kbase[j * dqk + d];
          s *= scale;
          if (softcap > 0) s = softcap * std::tanh(s / softcap);
          bias[j] = bias_at(b, h, i, j);
          if (!(bias[j] == kNegInf)) all_masked = false;
          if (mode <= 1) qk_row[j] = s;
          scores[j] = s + bias[j];
          if (mode == 2) qk_row[j] = scores[j];
        }
        softmax_row(scores.data(), probs.data(), total);
        // A row with no attendable key (decided on the bias, not on possibly-NaN logits) gives 0.
        if (all_masked) std::fill(probs.begin(), probs.end(), 0.0);
        if (mode == 3) std::copy(probs.begin(), probs.end(), qk_row);
        double* yrow = &y[static_cast<size_t>(((b * hq + h) * lq + i) * dv)];
        for (int64_t j = 0; j < total; ++j) {
          if (probs[j] == 0) continue;
          for (int64_t d = 0; d < dv; ++d) yrow[d] += probs[j] * vbase[j * dv + d];
        }
      }
    }
  }

  // Y back to the input layout.
  if (is3d) {
    std::vector<double> y3(y.size());
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < hq; ++h)
        for (int64_t i = 0; i < lq; ++i)
          for (int64_t d = 0; d < dv; ++d)
            y3[static_cast<size_t>((b * lq + i) * hq * dv + h * dv + d)] = y[static_cast<size_t>(((b * hq + h) * lq + i) * dv + d)];
    ctx.set_output(0, from_doubles(y3, {batch, lq, hq * dv}, q.dtype()));
  } else {
    ctx.set_output(0, from_doubles(y, {batch, hq, lq, dv}, q.dtype()));
  }
  if (ctx.num_outputs() > 1) ctx.set_output(1, from_doubles(kp, {batch, hkv, total, dqk}, k.dtype()));
  if (ctx.num_outputs() > 2) ctx.set_output(2, from_doubles(vp, {batch, hkv, total, dv}, v.dtype()));
  if (ctx.num_outputs() > 3) ctx.set_output(3, from_doubles(qk_out, {batch, hq, lq, total}, q.dtype()));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// RotaryEmbedding: rotates pairs of features by position-dependent angles given as cos/sin caches.
Status rotary_embedding_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.error("input, cos_cache and sin_cache are required");
  const Tensor& x = ctx.input(0);
  const Tensor& cos_t = ctx.input(1);
  const Tensor& sin_t = ctx.input(2);
  if (!is_real_float(x.dtype()) || !is_real_float(cos_t.dtype()) || !is_real_float(sin_t.dtype()))
    return ctx.error("unsupported dtype " + dtype_name(x.dtype()));
  if (x.rank() != 3 && x.rank() != 4) return ctx.error("input must be 3D or 4D, got " + shape_to_string(x.shape()));
  const int64_t batch = x.dim(0);
  int64_t seq, heads, head_size;
  if (x.rank() == 4) {  // (batch, heads, seq, head_size)
    heads = x.dim(1);
    seq = x.dim(2);
    head_size = x.dim(3);
  } else {  // (batch, seq, heads * head_size)
    heads = ctx.attr_int("num_heads", 0);
    if (heads <= 0) return ctx.error("3D input needs a positive num_heads attribute");
    if (x.dim(2) % heads != 0) return ctx.error("hidden size " + std::to_string(x.dim(2)) + " not divisible by num_heads " + std::to_string(heads));
    seq = x.dim(1);
    head_size = x.dim(2) / heads;
  }
  int64_t rot = ctx.attr_int("rotary_embedding_dim", 0);
  if (rot == 0) rot = head_size;
  if (rot < 0 || rot > head_size || rot % 2 != 0)
    return ctx.error("rotary_embedding_dim " + std::to_string(rot) + " must be even and <= head size " + std::to_string(head_size));
  const int64_t half = rot / 2;
  const bool interleaved = ctx.attr_int("interleaved", 0) != 0;
  if (cos_t.shape() != sin_t.shape()) return ctx.error("cos_cache and sin_cache shapes differ");
  if (cos_t.rank() < 1 || cos_t.dim(-1) != half)
    return ctx.error("cos_cache last dim must be rotary_embedding_dim/2 = " + std::to_string(half) + ", got " + shape_to_string(cos_t.shape()));

  // For each (batch, seq) the row of the caches to use.
  std::vector<int64_t> cache_row(static_cast<size_t>(batch * seq));
  if (ctx.has_input(3)) {
    const Tensor& pos = ctx.input(3);
    if (!dtype_is_integer(pos.dtype()) || pos.shape() != Shape{batch, seq})
      return ctx.error("position_ids must be integer of shape " + shape_to_string({batch, seq}) + ", got " + pos.description());
    if (cos_t.rank() != 2) return ctx.error("with position_ids, cos_cache must be 2D, got " + shape_to_string(cos_t.shape()));
    cache_row = pos.to_int64_vector();
    for (int64_t p : cache_row)
      if (p < 0 || p >= cos_t.dim(0))
        return ctx.error("position id " + std::to_string(p) + " out of range [0, " + std::to_string(cos_t.dim(0)) + ")");
  } else {
    if (cos_t.rank() != 3 || cos_t.dim(0) != batch || cos_t.dim(1) != seq)
      return ctx.error("without position_ids, cos_cache must be " + shape_to_string({batch, seq, half}) + ", got " + shape_to_string(cos_t.shape()));
    for (int64_t i = 0; i < batch * seq; ++i) cache_row[static_cast<size_t>(i)] = i;
  }

  const std::vector<double> xv = to_doubles(x);
  const std::vector<double> cv = to_doubles(cos_t);
  const std::vector<double> sv = to_doubles(sin_t);
  std::vector<double> out = xv;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      const int64_t row = cache_row[static_cast<size_t>(b * seq + s)];
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = x.rank() == 4 ? ((b * heads + h) * seq + s) * head_size : (b * seq + s) * heads * head_size + h * head_size;
        for (int64_t i = 0; i < half; ++i) {
          const double c = cv[static_cast<size_t>(row * half + i)];
          const double sn = sv[static_cast<size_t>(row * half + i)];
          const int64_t i1 = interleaved ? 2 * i : i;
          const int64_t i2 = interleaved ? 2 * i + 1 : i + half;
          const double x1 = xv[static_cast<size_t>(base + i1)];
          const double x2 = xv[static_cast<size_t>(base + i2)];
          out[static_cast<size_t>(base + i1)] = c * x1 - sn * x2;
          out[static_cast<size_t>(base + i2)] = sn * x1 + c * x2;
        }
      }
    }
  }
  ctx.set_output(0, from_doubles(out, x.shape(), x.dtype()));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// LinearAttention: recurrent (linear / gated / delta / gated_delta) state update over the sequence.
Status linear_attention_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.error("query, key and value are required");
  const Tensor& q = ctx.input(0);
  const Tensor& k = ctx.input(1);
  const Tensor& v = ctx.input(2);
  for (const Tensor* t : {&q, &k, &v}) {
    if (!is_real_float(t->dtype())) return ctx.error("unsupported dtype " + dtype_name(t->dtype()));
    if (t->rank() != 3) return ctx.error("query, key, value must be 3D (B, T, H*D), got " + shape_to_string(t->shape()));
  }
  const std::string rule = ctx.attr_string("update_rule", "gated_delta");
  if (rule != "linear" && rule != "gated" && rule != "delta" && rule != "gated_delta")
    return ctx.error("unsupported update_rule '" + rule + "'");
  const int64_t hq = ctx.attr_int("q_num_heads", 0);
  const int64_t hkv = ctx.attr_int("kv_num_heads", 0);
  if (hq <= 0 || hkv <= 0 || hq % hkv != 0)
    return ctx.error("q_num_heads (" + std::to_string(hq) + ") must be a positive multiple of kv_num_heads (" + std::to_string(hkv) + ")");
  const bool gating = rule == "gated" || rule == "gated_delta";
  const bool delta = rule == "delta" || rule == "gated_delta";
  const bool has_decay = ctx.has_input(4), has_beta = ctx.has_input(5);
  if (gating != has_decay) return ctx.error("update_rule '" + rule + (gating ? "' requires" : "' forbids") + " the decay input");
  if (delta != has_beta) return ctx.error("update_rule '" + rule + (delta ? "' requires" : "' forbids") + " the beta input");

  const int64_t batch = q.dim(0), steps = q.dim(1);
  if (k.dim(0) != batch || v.dim(0) != batch || k.dim(1) != steps || v.dim(1) != steps)
    return ctx.error("query/key/value batch or sequence lengths differ");
  if (q.dim(2) % hq != 0 || k.dim(2) % hkv != 0 || v.dim(2) % hkv != 0) return ctx.error("hidden sizes not divisible by head counts");
  const int64_t dk = q.dim(2) / hq;
  if (k.dim(2) / hkv != dk) return ctx.error("query and key head sizes differ");
  const int64_t dv = v.dim(2) / hkv;
  const int64_t group = hq / hkv;

  const std::vector<double> qv = to_doubles(q), kv = to_doubles(k), vv = to_doubles(v);
  std::vector<double> decay, beta;
  int64_t decay_last = 0, beta_last = 0;
  if (has_decay) {
    const Tensor& dt = ctx.input(4);
    if (!is_real_float(dt.dtype()) || dt.rank() != 3 || dt.dim(0) != batch || dt.dim(1) != steps ||
        (dt.dim(2) != hkv && dt.dim(2) != hkv * dk))
      return ctx.error("decay must be (B, T, kv_num_heads) or (B, T, kv_num_heads*d_k), got " + dt.description());
    decay = to_doubles(dt);
    decay_last = dt.dim(2);
  }
  if (has_beta) {
    const Tensor& bt = ctx.input(5);
    if (!is_real_float(bt.dtype()) || bt.rank() != 3 || bt.dim(0) != batch || bt.dim(1) != steps ||
        (bt.dim(2) != hkv && bt.dim(2) != 1))
      return ctx.error("beta must be (B, T, kv_num_heads) or (B, T, 1), got " + bt.description());
    beta = to_doubles(bt);
    beta_last = bt.dim(2);
  }
  const Shape state_shape{batch, hkv, dk, dv};
  std::vector<double> state(static_cast<size_t>(batch * hkv * dk * dv), 0.0);
  DType state_dtype = q.dtype();
  if (ctx.has_input(3)) {
    const Tensor& ps = ctx.input(3);
    if (!is_real_float(ps.dtype()) || ps.shape() != state_shape)
      return ctx.error("past_state must be " + shape_to_string(state_shape) + ", got " + ps.description());
    state = to_doubles(ps);
    state_dtype = ps.dtype();
  }
  const double attr_scale = ctx.attr_float("scale", 0);
  const double scale = attr_scale == 0 ? 1.0 / std::sqrt(static_cast<double>(dk)) : attr_scale;

  std::vector<double> out(static_cast<size_t>(batch * steps * hq * dv), 0.0);
  std::vector<double> vt(static_cast<size_t>(dv));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t h = 0; h < hkv; ++h) {
        double* st = &state[static_cast<size_t>((b * hkv + h) * dk * dv)];
        const double* kt = &kv[static_cast<size_t>((b * steps + t) * hkv * dk + h * dk)];
        for (int64_t m = 0; m < dv; ++m) vt[m] = vv[static_cast<size_t>((b * steps + t) * hkv * dv + h * dv + m)];
        if (gating) {
          for (int64_t d = 0; d < dk; ++d) {
            const int64_t di = decay_last == hkv ? (b * steps + t) * hkv + h : (b * steps + t) * hkv * dk + h * dk + d;
            const double g = std::exp(decay[static_cast<size_t>(di)]);
            for (int64_t m = 0; m < dv; ++m) st[d * dv + m] *= g;
          }
        }
        if (delta) {
          const double bt = beta[static_cast<size_t>((b * steps + t) * beta_last + (beta_last == 1 ? 0 : h))];
          for (int64_t m = 0; m < dv; ++m) {
            double retrieved = 0;
            for (int64_t d = 0; d < dk; ++d) retrieved += st[d * dv + m] * kt[d];
            vt[m] = bt * (vt[m] - retrieved);
          }
        }
        for (int64_t d = 0; d < dk; ++d)
          for (int64_t m = 0; m < dv; ++m) st[d * dv + m] += kt[d] * vt[m];
        // Read for every query head of this KV group.
        for (int64_t g = 0; g < group; ++g) {
          const int64_t qh = h * group + g;
          const double* qt = &qv[static_cast<size_t>((b * steps + t) * hq * dk + qh * dk)];
          double* o = &out[static_cast<size_t>((b * steps + t) * hq * dv + qh * dv)];
          for (int64_t m = 0; m < dv; ++m) {
            double acc = 0;
            for (int64_t d = 0; d < dk; ++d) acc += qt[d] * st[d * dv + m];
            o[m] = scale * acc;
          }
        }
      }
    }
  }
  ctx.set_output(0, from_doubles(out, {batch, steps, hq * dv}, q.dtype()));
  if (ctx.num_outputs() > 1) ctx.set_output(1, from_doubles(state, state_shape, state_dtype));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// FlexAttention (ai.onnx.preview): attention whose scores and probabilities may be rewritten by the
// score_mod / prob_mod subgraphs. Scores go to the subgraphs in float32 (float64 for float64 inputs).
Result<std::vector<double>> run_mod(KernelContext& ctx, const char* name, const std::vector<double>& vals, const Shape& shape,
                                    DType compute) {
  const ir::Graph* g = ctx.attr_graph(name);
  if (g == nullptr) return vals;
  Tensor in = from_doubles(vals, shape, compute);
  auto res = ctx.run_subgraph(*g, {Value(in)});
  if (!res.ok()) return res.status().with_context(ctx.node().describe() + ": " + name);
  if (res->size() != 1 || !(*res)[0].is_tensor()) return ctx.error(std::string(name) + " must produce exactly one tensor");
  Tensor out = (*res)[0].tensor();
  if (out.shape() != shape)
    return ctx.error(std::string(name) + " changed the shape " + shape_to_string(shape) + " to " + shape_to_string(out.shape()));
  if (!is_real_float(out.dtype())) {
    KILN_ASSIGN_OR_RETURN(out, cast_tensor(out, compute));
  }
  return to_doubles(out);
}

Status flex_attention_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.error("Q, K and V are required");
  const Tensor& q = ctx.input(0);
  const Tensor& k = ctx.input(1);
  const Tensor& v = ctx.input(2);
  for (const Tensor* t : {&q, &k, &v}) {
    if (!is_real_float(t->dtype())) return ctx.error("unsupported dtype " + dtype_name(t->dtype()));
    if (t->rank() != 4) return ctx.error("Q, K, V must be 4D, got " + shape_to_string(t->shape()));
  }
  const int64_t batch = q.dim(0), hq = q.dim(1), lq = q.dim(2), e = q.dim(3);
  const int64_t hkv = k.dim(1), s_len = k.dim(2), dv = v.dim(3);
  if (k.dim(0) != batch || v.dim(0) != batch || v.dim(1) != hkv || v.dim(2) != s_len || k.dim(3) != e)
    return ctx.error("Q " + shape_to_string(q.shape()) + ", K " + shape_to_string(k.shape()) + ", V " + shape_to_string(v.shape()) + " do not agree");
  if (hkv <= 0 || hq % hkv != 0) return ctx.error("query heads must be a multiple of key/value heads");
  const int64_t reps = hq / hkv;
  const double scale = ctx.has_attr("scale") ? ctx.attr_float("scale", 0) : 1.0 / std::sqrt(static_cast<double>(e));
  DType compute = q.dtype() == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  if (ctx.has_attr("softmax_precision")) {
    const int64_t sp = ctx.attr_int("softmax_precision", 1);
    if (sp == static_cast<int64_t>(DType::kFloat64)) compute = DType::kFloat64;
  }

  const std::vector<double> qv = to_doubles(q), kv = to_doubles(k), vv = to_doubles(v);
  const Shape score_shape{batch, hq, lq, s_len};
  std::vector<double> scores(static_cast<size_t>(batch * hq * lq * s_len));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < lq; ++i)
        for (int64_t j = 0; j < s_len; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < e; ++d)
            acc += qv[static_cast<size_t>(((b * hq + h) * lq + i) * e + d)] * kv[static_cast<size_t>(((b * hkv + h / reps) * s_len + j) * e + d)];
          scores[static_cast<size_t>(((b * hq + h) * lq + i) * s_len + j)] = acc * scale;
        }
  KILN_ASSIGN_OR_RETURN(scores, run_mod(ctx, "score_mod", scores, score_shape, compute));
  // Plain softmax (a row that is all -inf gives NaN, as in the reference).
  std::vector<double> probs(scores.size());
  for (int64_t r = 0; r < batch * hq * lq; ++r) {
    const double* x = &scores[static_cast<size_t>(r * s_len)];
    double* y = &probs[static_cast<size_t>(r * s_len)];
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < s_len; ++j) m = std::isnan(x[j]) || x[j] > m ? x[j] : m;
    double sum = 0;
    for (int64_t j = 0; j < s_len; ++j) sum += (y[j] = std::exp(x[j] - m));
    for (int64_t j = 0; j < s_len; ++j) y[j] /= sum;
  }
  KILN_ASSIGN_OR_RETURN(probs, run_mod(ctx, "prob_mod", probs, score_shape, compute));
  std::vector<double> out(static_cast<size_t>(batch * hq * lq * dv), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < lq; ++i)
        for (int64_t j = 0; j < s_len; ++j) {
          const double p = probs[static_cast<size_t>(((b * hq + h) * lq + i) * s_len + j)];
          for (int64_t d = 0; d < dv; ++d)
            out[static_cast<size_t>(((b * hq + h) * lq + i) * dv + d)] += p * vv[static_cast<size_t>(((b * hkv + h / reps) * s_len + j) * dv + d)];
        }
  ctx.set_output(0, from_doubles(out, {batch, hq, lq, dv}, v.dtype()));
  return OkStatus();
}

}  // namespace

void register_attention_ops(ir::OpRegistry& r) {
  r.add("Attention", 23, attention_kernel);
  r.add("RotaryEmbedding", 23, rotary_embedding_kernel);
  r.add("LinearAttention", 27, linear_attention_kernel);
  r.add(e2::domain_schema("ai.onnx.preview", "FlexAttention", 1, flex_attention_kernel));
}

}  // namespace kiln::cpu
