// CPU reference kernels: recurrent networks (RNN, GRU, LSTM), one layer, forward / reverse / bidirectional,
// with optional biases, initial states, peepholes, sequence lengths, both layouts, custom activations and
// clipping. The code walks one batch row at a time: slow but plain, which is what an oracle should be.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {
namespace {

enum class Cell { kRnn, kGru, kLstm };

int gate_count(Cell cell) { return cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 3 : 4; }
// How many activation functions one direction uses (f; f, g; f, g, h).
int activation_count(Cell cell) { return cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 2 : 3; }

// ---------------------------------------------------------------------------------------------------
// Activations

enum class ActKind { kRelu, kTanh, kSigmoid, kAffine, kLeakyRelu, kThresholdedRelu, kScaledTanh, kHardSigmoid, kElu,
                     kSoftsign, kSoftplus };

struct Activation {
  ActKind kind = ActKind::kTanh;
  double alpha = 0;
  double beta = 0;
};

struct ActInfo {
  const char* name;
  ActKind kind;
  bool uses_alpha, uses_beta;
  double default_alpha, default_beta;
};

// Defaults follow the ONNX operators of the same name (LeakyRelu alpha 0.01, HardSigmoid 0.2 / 0.5, ...).
constexpr ActInfo kActivations[] = {
    {"relu", ActKind::kRelu, false, false, 0, 0},
    {"tanh", ActKind::kTanh, false, false, 0, 0},
    {"sigmoid", ActKind::kSigmoid, false, false, 0, 0},
    {"affine", ActKind::kAffine, true, true, 1.0, 0.0},
    {"leakyrelu", ActKind::kLeakyRelu, true, false, 0.01, 0},
    {"thresholdedrelu", ActKind::kThresholdedRelu, true, false, 1.0, 0},
    {"scaledtanh", ActKind::kScaledTanh, true, true, 1.0, 1.0},
    {"hardsigmoid", ActKind::kHardSigmoid, true, true, 0.2, 0.5},
    {"elu", ActKind::kElu, true, false, 1.0, 0},
    {"softsign", ActKind::kSoftsign, false, false, 0, 0},
    {"softplus", ActKind::kSoftplus, false, false, 0, 0},
};

template <class T>
T activate(const Activation& a, T x) {
  const T alpha = static_cast<T>(a.alpha), beta = static_cast<T>(a.beta);
  switch (a.kind) {
    case ActKind::kRelu: return x > T(0) ? x : T(0);
    case ActKind::kTanh: return std::tanh(x);
    case ActKind::kSigmoid: return T(1) / (T(1) + std::exp(-x));
    case ActKind::kAffine: return alpha * x + beta;
    case ActKind::kLeakyRelu: return x >= T(0) ? x : alpha * x;
    case ActKind::kThresholdedRelu: return x > alpha ? x : T(0);
    case ActKind::kScaledTanh: return alpha * std::tanh(beta * x);
    case ActKind::kHardSigmoid: return std::min(std::max(alpha * x + beta, T(0)), T(1));
    case ActKind::kElu: return x >= T(0) ? x : alpha * (std::exp(x) - T(1));
    case ActKind::kSoftsign: return x / (T(1) + std::abs(x));
    case ActKind::kSoftplus: return std::log1p(std::exp(x));
  }
  return x;
}

// The activation list of all directions: explicit (the 'activations' attribute, with alphas and betas
// consumed in order by the functions that take them) or the cell's defaults.
Result<std::vector<Activation>> parse_activations(const KernelContext& ctx, Cell cell, int num_directions) {
  const int per_dir = activation_count(cell);
  std::vector<std::string> names = ctx.attr_strings("activations");
  if (names.empty()) {
    if (cell == Cell::kRnn) names = {"Tanh"};
    else if (cell == Cell::kGru) names = {"Sigmoid", "Tanh"};
    else names = {"Sigmoid", "Tanh", "Tanh"};
  }
  // One direction's list given for a bidirectional op: both directions use it.
  if (static_cast<int>(names.size()) == per_dir && num_directions == 2) {
    std::vector<std::string> twice = names;
    twice.insert(twice.end(), names.begin(), names.end());
    names = twice;
  }
  if (static_cast<int>(names.size()) != per_dir * num_directions)
    return ctx.error("attribute 'activations' has " + std::to_string(names.size()) + " entries, expected " +
                     std::to_string(per_dir * num_directions));
  const std::vector<float> alphas = ctx.attr_floats("activation_alpha");
  const std::vector<float> betas = ctx.attr_floats("activation_beta");
  size_t next_alpha = 0, next_beta = 0;
  std::vector<Activation> acts;
  for (const std::string& name : names) {
    std::string lower;
    for (char ch : name) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    const ActInfo* info = nullptr;
    for (const ActInfo& candidate : kActivations)
      if (lower == candidate.name) info = &candidate;
    if (info == nullptr) return ctx.unsupported("unknown activation function '" + name + "'");
    Activation a;
    a.kind = info->kind;
    a.alpha = info->default_alpha;
    a.beta = info->default_beta;
    if (info->uses_alpha && next_alpha < alphas.size()) a.alpha = alphas[next_alpha++];
    if (info->uses_beta && next_beta < betas.size()) a.beta = betas[next_beta++];
    acts.push_back(a);
  }
  return acts;
}

// ---------------------------------------------------------------------------------------------------
// Shapes and validated inputs

struct RnnProblem {
  Cell cell;
  int layout = 0;
  int num_directions = 1;
  bool reverse_only = false;  // direction == "reverse"
  int64_t seq_len = 0, batch = 0, input_size = 0, hidden = 0;
  std::vector<int64_t> lengths;  // per batch row
  bool has_clip = false;
  double clip = 0;
  bool linear_before_reset = false;  // GRU
  bool input_forget = false;         // LSTM
  std::vector<Activation> activations;
  DType orig_dtype = DType::kFloat32;
  // Inputs widened to float32 (float16 etc.) or as they are (float32, float64).
  Tensor x, w, r, b, h0, c0, p;
};

Status check_shape(const KernelContext& ctx, const Tensor& t, const std::string& name, const Shape& want) {
  if (t.shape() != want)
    return ctx.error(name + " must have shape " + shape_to_string(want) + ", got " + t.description());
  return OkStatus();
}

Result<RnnProblem> parse_problem(const KernelContext& ctx, Cell cell) {
  RnnProblem pb;
  pb.cell = cell;
  for (size_t i = 0; i < 3; ++i)
    if (!ctx.has_input(i) || !ctx.input_value(i).is_tensor())
      return ctx.error(std::string("input ") + "XWR"[i] + " is required");
  const Tensor& x_in = ctx.input(0);
  pb.orig_dtype = x_in.dtype();
  if (!dtype_is_float(pb.orig_dtype)) return ctx.error("X must be a floating-point tensor, got " + x_in.description());
  if (x_in.rank() != 3) return ctx.error("X must be 3-D, got " + x_in.description());

  pb.layout = static_cast<int>(ctx.attr_int("layout", 0));
  if (pb.layout != 0 && pb.layout != 1) return ctx.error("attribute 'layout' must be 0 or 1, got " + std::to_string(pb.layout));
  const std::string direction = ctx.attr_string("direction", "forward");
  if (direction == "forward") pb.num_directions = 1;
  else if (direction == "reverse") pb.num_directions = 1, pb.reverse_only = true;
  else if (direction == "bidirectional") pb.num_directions = 2;
  else return ctx.error("attribute 'direction' must be forward, reverse or bidirectional, got '" + direction + "'");

  pb.seq_len = pb.layout == 0 ? x_in.dim(0) : x_in.dim(1);
  pb.batch = pb.layout == 0 ? x_in.dim(1) : x_in.dim(0);
  pb.input_size = x_in.dim(2);
  const Tensor& r_in = ctx.input(2);
  if (r_in.rank() != 3) return ctx.error("R must be 3-D, got " + r_in.description());
  pb.hidden = ctx.has_attr("hidden_size") ? ctx.attr_int("hidden_size", 0) : r_in.dim(2);
  if (pb.hidden <= 0) return ctx.error("hidden_size must be positive, got " + std::to_string(pb.hidden));
  const int64_t gates = gate_count(cell) * pb.hidden;
  const int64_t nd = pb.num_directions;

  auto widen = [&](size_t i, const std::string& name, const Shape& want, Tensor* out) -> Status {
    const Tensor& t = ctx.input(i);
    if (t.dtype() != pb.orig_dtype)
      return ctx.error(name + " must have the dtype of X (" + dtype_name(pb.orig_dtype) + "), got " + t.description());
    KILN_RETURN_IF_ERROR(check_shape(ctx, t, name, want));
    *out = widen_to_float32(t);
    return OkStatus();
  };
  KILN_RETURN_IF_ERROR(widen(0, "X", x_in.shape(), &pb.x));
  KILN_RETURN_IF_ERROR(widen(1, "W", {nd, gates, pb.input_size}, &pb.w));
  KILN_RETURN_IF_ERROR(widen(2, "R", {nd, gates, pb.hidden}, &pb.r));
  if (ctx.has_input(3)) KILN_RETURN_IF_ERROR(widen(3, "B", {nd, 2 * gates}, &pb.b));
  const Shape state_shape = pb.layout == 0 ? Shape{nd, pb.batch, pb.hidden} : Shape{pb.batch, nd, pb.hidden};
  if (ctx.has_input(5)) KILN_RETURN_IF_ERROR(widen(5, "initial_h", state_shape, &pb.h0));
  if (cell == Cell::kLstm) {
    if (ctx.has_input(6)) KILN_RETURN_IF_ERROR(widen(6, "initial_c", state_shape, &pb.c0));
    if (ctx.has_input(7)) KILN_RETURN_IF_ERROR(widen(7, "P", {nd, 3 * pb.hidden}, &pb.p));
  }

  pb.lengths.assign(pb.batch, pb.seq_len);
  if (ctx.has_input(4)) {
    const Tensor& sl = ctx.input(4);
    if (!dtype_is_integer(sl.dtype()) || sl.shape() != Shape{pb.batch})
      return ctx.error("sequence_lens must be an integer tensor of shape [" + std::to_string(pb.batch) + "], got " +
                       sl.description());
    pb.lengths = sl.to_int64_vector();
    for (int64_t l : pb.lengths)
      if (l < 0 || l > pb.seq_len)
        return ctx.error("sequence_lens holds " + std::to_string(l) + ", outside [0, " + std::to_string(pb.seq_len) + "]");
  }
  if (ctx.has_attr("clip")) {
    pb.has_clip = true;
    pb.clip = ctx.attr_float("clip", 0);
    if (!(pb.clip > 0)) return ctx.error("attribute 'clip' must be positive, got " + std::to_string(pb.clip));
  }
  pb.linear_before_reset = ctx.attr_int("linear_before_reset", 0) != 0;
  pb.input_forget = ctx.attr_int("input_forget", 0) != 0;
  KILN_ASSIGN_OR_RETURN(pb.activations, parse_activations(ctx, cell, pb.num_directions));
  return pb;
}

// ---------------------------------------------------------------------------------------------------
// The recurrence

struct Outputs {
  Tensor y, y_h, y_c;
};

template <class T>
Outputs run_recurrence(const RnnProblem& pb) {
  const int64_t S = pb.seq_len, N = pb.batch, I = pb.input_size, H = pb.hidden, D = pb.num_directions;
  const int64_t G = gate_count(pb.cell);
  const DType dt = pb.x.dtype();
  Outputs out;
  out.y = pb.layout == 0 ? Tensor(dt, {S, D, N, H}) : Tensor(dt, {N, S, D, H});
  const Shape state_shape = pb.layout == 0 ? Shape{D, N, H} : Shape{N, D, H};
  out.y_h = Tensor(dt, state_shape);
  out.y_c = Tensor(dt, state_shape);

  const T* X = pb.x.data<T>();
  auto x_at = [&](int64_t t, int64_t b) { return X + (pb.layout == 0 ? (t * N + b) : (b * S + t)) * I; };
  auto y_at = [&](int64_t t, int64_t d, int64_t b) {
    return out.y.data<T>() + (pb.layout == 0 ? ((t * D + d) * N + b) : ((b * S + t) * D + d)) * H;
  };
  auto state_offset = [&](int64_t d, int64_t b) { return (pb.layout == 0 ? (d * N + b) : (b * D + d)) * H; };
  auto clip = [&](T v) {
    if (!pb.has_clip) return v;
    const T c = static_cast<T>(pb.clip);
    return std::min(std::max(v, -c), c);
  };

  std::vector<T> xw(G * H), hr(G * H), h(H), c(H), rh(H), next_h(H), next_c(H);
  for (int64_t d = 0; d < D; ++d) {
    const bool reverse = pb.reverse_only || d == 1;
    const T* W = pb.w.data<T>() + d * G * H * I;
    const T* R = pb.r.data<T>() + d * G * H * H;
    const T* Wb = pb.b.defined() ? pb.b.data<T>() + d * 2 * G * H : nullptr;
    const T* Rb = Wb ? Wb + G * H : nullptr;
    const T* P = pb.p.defined() ? pb.p.data<T>() + d * 3 * H : nullptr;
    const int per_dir = activation_count(pb.cell);
    const Activation* act = &pb.activations[d * per_dir];

    for (int64_t b = 0; b < N; ++b) {
      for (int64_t k = 0; k < H; ++k) {
        h[k] = pb.h0.defined() ? pb.h0.data<T>()[state_offset(d, b) + k] : T(0);
        c[k] = pb.c0.defined() ? pb.c0.data<T>()[state_offset(d, b) + k] : T(0);
      }
      const int64_t len = pb.lengths[b];
      for (int64_t step = 0; step < len; ++step) {
        const int64_t t = reverse ? len - 1 - step : step;
        const T* x = x_at(t, b);
        // xw = W x + Wb and hr = R h + Rb, for all gates (kept apart for GRU's linear_before_reset).
        for (int64_t g = 0; g < G * H; ++g) {
          T sx = Wb ? Wb[g] : T(0);
          for (int64_t i = 0; i < I; ++i) sx += W[g * I + i] * x[i];
          T sh = Rb ? Rb[g] : T(0);
          for (int64_t j = 0; j < H; ++j) sh += R[g * H + j] * h[j];
          xw[g] = sx;
          hr[g] = sh;
        }
        if (pb.cell == Cell::kRnn) {
          for (int64_t k = 0; k < H; ++k) next_h[k] = activate(act[0], clip(xw[k] + hr[k]));
        } else if (pb.cell == Cell::kGru) {
          // Gate order z, r, h.
          std::vector<T> z(H), rg(H);
          for (int64_t k = 0; k < H; ++k) {
            z[k] = activate(act[0], clip(xw[k] + hr[k]));
            rg[k] = activate(act[0], clip(xw[H + k] + hr[H + k]));
            rh[k] = rg[k] * h[k];
          }
          for (int64_t k = 0; k < H; ++k) {
            T pre;
            if (pb.linear_before_reset) {
              pre = xw[2 * H + k] + rg[k] * hr[2 * H + k];
            } else {
              // (r . h) R_h^T + Rb_h: the recurrence applied after the reset gate.
              T s = Rb ? Rb[2 * H + k] : T(0);
              for (int64_t j = 0; j < H; ++j) s += R[(2 * H + k) * H + j] * rh[j];
              pre = xw[2 * H + k] + s;
            }
            const T candidate = activate(act[1], clip(pre));
            next_h[k] = (T(1) - z[k]) * candidate + z[k] * h[k];
          }
        } else {
          // Gate order i, o, f, c; peepholes P in order i, o, f.
          for (int64_t k = 0; k < H; ++k) {
            const T pi = P ? P[k] : T(0), po = P ? P[H + k] : T(0), pf = P ? P[2 * H + k] : T(0);
            const T ig = activate(act[0], clip(xw[k] + hr[k] + pi * c[k]));
            T fg = activate(act[0], clip(xw[2 * H + k] + hr[2 * H + k] + pf * c[k]));
            if (pb.input_forget) fg = T(1) - ig;
            const T cg = activate(act[1], clip(xw[3 * H + k] + hr[3 * H + k]));
            next_c[k] = fg * c[k] + ig * cg;
            const T og = activate(act[0], clip(xw[H + k] + hr[H + k] + po * next_c[k]));
            next_h[k] = og * activate(act[2], next_c[k]);
          }
          c = next_c;
        }
        h = next_h;
        std::copy(h.begin(), h.end(), y_at(t, d, b));
      }
      std::copy(h.begin(), h.end(), out.y_h.data<T>() + state_offset(d, b));
      std::copy(c.begin(), c.end(), out.y_c.data<T>() + state_offset(d, b));
    }
  }
  return out;
}

Status recurrent_kernel(KernelContext& ctx, Cell cell) {
  KILN_ASSIGN_OR_RETURN(RnnProblem pb, parse_problem(ctx, cell));
  Outputs result;
  bool ok = dispatch_float(pb.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    result = run_recurrence<T>(pb);
  });
  if (!ok) return ctx.unsupported("dtype " + dtype_name(pb.orig_dtype) + " is not supported");
  ctx.set_output(0, narrow_from_float32(result.y, pb.orig_dtype));
  ctx.set_output(1, narrow_from_float32(result.y_h, pb.orig_dtype));
  if (cell == Cell::kLstm) ctx.set_output(2, narrow_from_float32(result.y_c, pb.orig_dtype));
  return OkStatus();
}

Status rnn_kernel(KernelContext& ctx) { return recurrent_kernel(ctx, Cell::kRnn); }
Status gru_kernel(KernelContext& ctx) { return recurrent_kernel(ctx, Cell::kGru); }
Status lstm_kernel(KernelContext& ctx) { return recurrent_kernel(ctx, Cell::kLstm); }

}  // namespace

void register_rnn_ops(ir::OpRegistry& r) {
  r.add("RNN", 7, rnn_kernel);
  r.add("GRU", 7, gru_kernel);
  r.add("LSTM", 7, lstm_kernel);
}

}  // namespace kiln::cpu
