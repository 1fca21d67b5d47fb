// CPU reference kernels: ops no other family owns (SwiGLU, CausalConvWithState, ImageDecoder).
#include <cmath>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"

namespace kiln::cpu {
namespace {

using e2::from_doubles;
using e2::is_real_float;
using e2::sigmoid;
using e2::to_doubles;

// SwiGLU: Y = A * sigmoid(alpha * A) * B, A and B of identical shape (no broadcasting).
Status swiglu_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("A and B are required");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  if (!is_real_float(a.dtype()) || a.dtype() != b.dtype())
    return ctx.error("A and B must share a float dtype, got " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()));
  if (a.shape() != b.shape())
    return ctx.error("A " + shape_to_string(a.shape()) + " and B " + shape_to_string(b.shape()) + " must have identical shapes");
  const double alpha = ctx.attr_float("alpha", 1.0f);
  std::vector<double> av = to_doubles(a);
  const std::vector<double> bv = to_doubles(b);
  for (size_t i = 0; i < av.size(); ++i) av[i] = av[i] * sigmoid(alpha * av[i]) * bv[i];
  ctx.set_output(0, from_doubles(av, a.shape(), a.dtype()));
  return OkStatus();
}

// CausalConvWithState: depthwise causal conv1d over (batch, channels, length), left-padded with
// past_state (or zeros); present_state is the last k-1 positions of the padded input.
Status causal_conv_with_state_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("input and weight are required");
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(1);
  if (!is_real_float(x.dtype()) || !is_real_float(w.dtype())) return ctx.error("unsupported dtype " + dtype_name(x.dtype()));
  if (x.rank() != 3) return ctx.error("input must be 3D (batch, channels, length), got " + shape_to_string(x.shape()));
  const int64_t batch = x.dim(0), ch = x.dim(1), len = x.dim(2);
  if (w.rank() != 3 || w.dim(0) != ch || w.dim(1) != 1 || w.dim(2) < 1)
    return ctx.error("weight must be (channels, 1, k) with channels=" + std::to_string(ch) + ", got " + shape_to_string(w.shape()));
  const int64_t k = w.dim(2);
  const std::string act = ctx.attr_string("activation", "none");
  if (act != "none" && act != "silu" && act != "swish") return ctx.error("unsupported activation '" + act + "'");
  std::vector<double> bias(static_cast<size_t>(ch), 0.0);
  if (ctx.has_input(2)) {
    const Tensor& bt = ctx.input(2);
    if (!is_real_float(bt.dtype()) || bt.shape() != Shape{ch}) return ctx.error("bias must be [" + std::to_string(ch) + "], got " + bt.description());
    bias = to_doubles(bt);
  }
  const int64_t padded_len = len + k - 1;
  std::vector<double> padded(static_cast<size_t>(batch * ch * padded_len), 0.0);
  const std::vector<double> xv = to_doubles(x);
  std::vector<double> past;
  if (ctx.has_input(3)) {
    const Tensor& ps = ctx.input(3);
    if (!is_real_float(ps.dtype()) || ps.shape() != Shape{batch, ch, k - 1})
      return ctx.error("past_state must be " + shape_to_string({batch, ch, k - 1}) + ", got " + ps.description());
    past = to_doubles(ps);
  }
  for (int64_t bc = 0; bc < batch * ch; ++bc) {
    for (int64_t p = 0; p < k - 1 && !past.empty(); ++p) padded[bc * padded_len + p] = past[bc * (k - 1) + p];
    for (int64_t t = 0; t < len; ++t) padded[bc * padded_len + k - 1 + t] = xv[bc * len + t];
  }
  const std::vector<double> wv = to_doubles(w);
  std::vector<double> out(static_cast<size_t>(batch * ch * len));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < ch; ++c) {
      const double* in = &padded[(b * ch + c) * padded_len];
      for (int64_t t = 0; t < len; ++t) {
        double acc = bias[c];
        for (int64_t j = 0; j < k; ++j) acc += wv[c * k + j] * in[t + j];
        if (act != "none") acc *= sigmoid(acc);
        out[(b * ch + c) * len + t] = acc;
      }
    }
  }
  std::vector<double> present(static_cast<size_t>(batch * ch * (k - 1)));
  for (int64_t bc = 0; bc < batch * ch; ++bc)
    for (int64_t p = 0; p < k - 1; ++p) present[bc * (k - 1) + p] = padded[bc * padded_len + len + p];
  ctx.set_output(0, from_doubles(out, x.shape(), x.dtype()));
  if (ctx.num_outputs() > 1) ctx.set_output(1, from_doubles(present, {batch, ch, k - 1}, x.dtype()));
  return OkStatus();
}

}  // namespace

void register_misc_image_ops(ir::OpRegistry& r);

void register_misc_ops(ir::OpRegistry& r) {
  r.add("SwiGLU", 28, swiglu_kernel);
  r.add("CausalConvWithState", 27, causal_conv_with_state_kernel);
  register_misc_image_ops(r);  // ImageDecoder, in misc_image.cc
}

}  // namespace kiln::cpu
