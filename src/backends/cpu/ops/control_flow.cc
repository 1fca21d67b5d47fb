// CPU reference kernels: control flow (If, Loop, Scan). The bodies are subgraphs run through
// ctx.run_subgraph, which binds our inputs positionally to the subgraph's inputs and lets the body see
// the enclosing scopes' values by name.
#include <algorithm>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/control_flow_util.h"

namespace kiln::cpu {
namespace {

std::string value_kind_name(const Value& v) {
  if (v.is_tensor()) return "tensor " + v.tensor().description();
  if (v.is_sequence()) return "sequence";
  return "none";
}

// Reads a one-element condition tensor (bool, or any numeric type where non-zero is true).
Result<bool> read_condition(const KernelContext& ctx, const Value& v, const std::string& what) {
  if (!v.is_tensor()) return ctx.error(what + " must be a tensor, got " + value_kind_name(v));
  const Tensor& t = v.tensor();
  if (t.numel() != 1) return ctx.error(what + " must have exactly one element, got " + t.description());
  if (t.dtype() == DType::kBool) return t.data<bool>()[0];
  if (dtype_is_float(t.dtype()) || dtype_is_integer(t.dtype())) return t.scalar_as_double() != 0.0;
  return ctx.error(what + " must be bool or numeric, got " + t.description());
}

// An empty scan output (zero iterations ran): shape [0, dims...] when the body declares a static shape for
// the per-iteration value, [0] otherwise; dtype from the body's declaration (float32 if unknown).
// `axis` is where the new (iteration) axis goes.
Tensor empty_scan_output(const ir::Graph& body, size_t output_index, int64_t axis) {
  DType dtype = DType::kFloat32;
  Shape shape;
  if (output_index < body.outputs.size()) {
    const ir::TypeInfo& type = body.outputs[output_index].type;
    if (type.dtype != DType::kUndefined) dtype = type.dtype;
    if (type.is_static()) shape = type.static_shape();
  }
  if (axis < 0 || axis > static_cast<int64_t>(shape.size())) axis = 0;
  shape.insert(shape.begin() + axis, 0);
  return Tensor(dtype, shape);
}

// Checks that a per-iteration scan output is a tensor with the same shape and dtype as the first one.
Status check_scan_element(const KernelContext& ctx, const Value& v, const std::vector<Tensor>& so_far,
                          size_t k) {
  if (!v.is_tensor())
    return ctx.error("scan output " + std::to_string(k) + " of the body must be a tensor, got " + value_kind_name(v));
  if (!so_far.empty() &&
      (so_far[0].shape() != v.tensor().shape() || so_far[0].dtype() != v.tensor().dtype()))
    return ctx.error("scan output " + std::to_string(k) + " changed from " + so_far[0].description() + " to " +
                     v.tensor().description() + " between iterations");
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// If

Status if_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("the condition input is missing");
  KILN_ASSIGN_OR_RETURN(bool cond, read_condition(ctx, ctx.input_value(0), "the condition"));
  const char* branch_name = cond ? "then_branch" : "else_branch";
  const ir::Graph* branch = ctx.attr_graph(branch_name);
  if (branch == nullptr) return ctx.error(std::string("the graph attribute '") + branch_name + "' is missing");
  KILN_ASSIGN_OR_RETURN(std::vector<Value> outs, ctx.run_subgraph(*branch, {}));
  const size_t wanted = ctx.node().outputs.size();
  if (outs.size() < wanted)
    return ctx.error(std::string(branch_name) + " returns " + std::to_string(outs.size()) + " values, the node has " +
                     std::to_string(wanted) + " outputs");
  for (size_t i = 0; i < wanted; ++i) ctx.set_output_value(i, std::move(outs[i]));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Loop

Status loop_kernel(KernelContext& ctx) {
  const ir::Graph* body = ctx.attr_graph("body");
  if (body == nullptr) return ctx.error("the graph attribute 'body' is missing");
  const size_t num_inputs = ctx.node().inputs.size();
  if (num_inputs < 2) return ctx.error("Loop needs at least 2 inputs (M, cond), got " + std::to_string(num_inputs));
  const size_t num_carried = num_inputs - 2;
  if (body->inputs.size() != num_carried + 2)
    return ctx.error("the body has " + std::to_string(body->inputs.size()) + " inputs, expected " +
                     std::to_string(num_carried + 2) + " (iteration number, condition, " +
                     std::to_string(num_carried) + " loop-carried values)");
  if (body->outputs.size() < num_carried + 1)
    return ctx.error("the body has " + std::to_string(body->outputs.size()) + " outputs, expected at least " +
                     std::to_string(num_carried + 1) + " (condition, loop-carried values)");
  const size_t num_scan = body->outputs.size() - 1 - num_carried;

  const bool has_trip_count = ctx.has_input(0);
  int64_t trip_count = 0;
  if (has_trip_count) {
    const Value& m = ctx.input_value(0);
    if (!m.is_tensor() || m.tensor().numel() != 1 || !dtype_is_integer(m.tensor().dtype()))
      return ctx.error("the trip count M must be a one-element integer tensor, got " + value_kind_name(m));
    trip_count = m.tensor().scalar_as_int();
    if (trip_count < 0) return ctx.error("the trip count M must not be negative, got " + std::to_string(trip_count));
  }
  // Per the spec, when the condition input is omitted the body's condition output is ignored: the loop
  // runs M times. With neither M nor a condition, it would never end.
  const bool has_condition = ctx.has_input(1);
  bool cond = true;
  if (has_condition) {
    KILN_ASSIGN_OR_RETURN(cond, read_condition(ctx, ctx.input_value(1), "the condition input"));
  } else if (!has_trip_count) {
    return ctx.error("Loop has neither a trip count M nor a condition: it would never end");
  }

  std::vector<Value> carried;
  for (size_t i = 0; i < num_carried; ++i) carried.push_back(ctx.input_value(2 + i));
  std::vector<std::vector<Tensor>> scans(num_scan);

  int64_t iteration = 0;
  while (cond && (!has_trip_count || iteration < trip_count)) {
    std::vector<Value> body_inputs;
    body_inputs.reserve(num_carried + 2);
    body_inputs.emplace_back(Tensor::scalar<int64_t>(DType::kInt64, iteration));
    body_inputs.emplace_back(Tensor::scalar<bool>(DType::kBool, cond));
    for (const Value& v : carried) body_inputs.push_back(v);
    KILN_ASSIGN_OR_RETURN(std::vector<Value> outs, ctx.run_subgraph(*body, std::move(body_inputs)));
    if (outs.size() != body->outputs.size())
      return ctx.error("the body returned " + std::to_string(outs.size()) + " values, expected " +
                       std::to_string(body->outputs.size()));
    if (has_condition) {
      KILN_ASSIGN_OR_RETURN(cond, read_condition(ctx, outs[0], "the body's condition output"));
    }
    for (size_t i = 0; i < num_carried; ++i) carried[i] = std::move(outs[1 + i]);
    for (size_t k = 0; k < num_scan; ++k) {
      const Value& v = outs[1 + num_carried + k];
      KILN_RETURN_IF_ERROR(check_scan_element(ctx, v, scans[k], k));
      scans[k].push_back(v.tensor());
    }
    ++iteration;
  }

  for (size_t i = 0; i < num_carried; ++i) ctx.set_output_value(i, std::move(carried[i]));
  for (size_t k = 0; k < num_scan; ++k) {
    Tensor out = scans[k].empty() ? empty_scan_output(*body, 1 + num_carried + k, 0)
                                  : cf::concat_along_axis(scans[k], 0, /*new_axis=*/true);
    ctx.set_output(num_carried + k, std::move(out));
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Scan

// One pass of a scan over `length` iterations: slices `scan_inputs` along their axes (in their directions),
// threads `states` through the body, and collects the K scan-output elements of every iteration.
struct ScanPass {
  std::vector<Value> states;
  std::vector<std::vector<Tensor>> scan_outputs;  // [k][iteration], in iteration order
};

Result<ScanPass> run_scan_pass(const KernelContext& ctx, const ir::Graph& body, std::vector<Value> states,
                               const std::vector<Tensor>& scan_inputs, const std::vector<int64_t>& axes,
                               const std::vector<int64_t>& directions, int64_t length) {
  const size_t n = states.size();
  if (body.outputs.size() < n)
    return ctx.error("the body has " + std::to_string(body.outputs.size()) + " outputs, fewer than the " +
                     std::to_string(n) + " state variables");
  const size_t k_count = body.outputs.size() - n;
  ScanPass pass;
  pass.scan_outputs.resize(k_count);
  for (int64_t t = 0; t < length; ++t) {
    std::vector<Value> body_inputs = states;
    for (size_t j = 0; j < scan_inputs.size(); ++j) {
      const int64_t index = directions[j] == 1 ? length - 1 - t : t;
      body_inputs.emplace_back(cf::take_along_axis(scan_inputs[j], axes[j], index));
    }
    KILN_ASSIGN_OR_RETURN(std::vector<Value> outs, ctx.run_subgraph(body, std::move(body_inputs)));
    if (outs.size() != body.outputs.size())
      return ctx.error("the body returned " + std::to_string(outs.size()) + " values, expected " +
                       std::to_string(body.outputs.size()));
    for (size_t i = 0; i < n; ++i) states[i] = std::move(outs[i]);
    for (size_t k = 0; k < k_count; ++k) {
      KILN_RETURN_IF_ERROR(check_scan_element(ctx, outs[n + k], pass.scan_outputs[k], k));
      pass.scan_outputs[k].push_back(outs[n + k].tensor());
    }
  }
  pass.states = std::move(states);
  return pass;
}

// Reads an optional per-input list attribute of 0/1 directions (or axes) with `count` entries.
Result<std::vector<int64_t>> list_attr(const KernelContext& ctx, const std::string& name, size_t count) {
  std::vector<int64_t> v = ctx.attr_ints(name, std::vector<int64_t>(count, 0));
  if (v.size() != count)
    return ctx.error("attribute '" + name + "' has " + std::to_string(v.size()) + " entries, expected " +
                     std::to_string(count));
  return v;
}

Status check_directions(const KernelContext& ctx, const std::string& name, const std::vector<int64_t>& dirs) {
  for (int64_t d : dirs)
    if (d != 0 && d != 1) return ctx.error("attribute '" + name + "' must hold 0 or 1, got " + std::to_string(d));
  return OkStatus();
}

// Scan-8: batch axis 0 on every input, sequence axis 1 on scan inputs, optional sequence_lens.
Status scan8_kernel(KernelContext& ctx, const ir::Graph& body, int64_t num_scan_inputs) {
  const size_t num_inputs = ctx.node().inputs.size();
  if (num_inputs < 1 + static_cast<size_t>(num_scan_inputs))
    return ctx.error("Scan-8 needs sequence_lens and " + std::to_string(num_scan_inputs) + " scan inputs, got " +
                     std::to_string(num_inputs) + " inputs");
  const size_t n = num_inputs - 1 - num_scan_inputs;
  if (body.inputs.size() != n + num_scan_inputs)
    return ctx.error("the body has " + std::to_string(body.inputs.size()) + " inputs, expected " +
                     std::to_string(n + num_scan_inputs));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> directions, list_attr(ctx, "directions", num_scan_inputs));
  KILN_RETURN_IF_ERROR(check_directions(ctx, "directions", directions));

  std::vector<Tensor> states, scans;
  int64_t batch = -1, max_len = -1;
  for (size_t i = 0; i < n + num_scan_inputs; ++i) {
    const Value& v = ctx.input_value(1 + i);
    if (!v.is_tensor()) return ctx.error("input " + std::to_string(1 + i) + " must be a tensor, got " + value_kind_name(v));
    const Tensor& t = v.tensor();
    const bool is_scan = i >= n;
    if (t.rank() < (is_scan ? 2 : 1))
      return ctx.error("input " + std::to_string(1 + i) + " needs a batch axis" + (is_scan ? " and a sequence axis" : "") +
                       ", got " + t.description());
    if (batch < 0) batch = t.dim(0);
    if (t.dim(0) != batch)
      return ctx.error("batch sizes differ: " + std::to_string(batch) + " vs " + t.description());
    if (is_scan) {
      if (max_len < 0) max_len = t.dim(1);
      if (t.dim(1) != max_len)
        return ctx.error("sequence lengths differ: " + std::to_string(max_len) + " vs " + t.description());
      scans.push_back(t);
    } else {
      states.push_back(t);
    }
  }
  std::vector<int64_t> lens(batch, max_len);
  if (ctx.has_input(0)) {
    const Tensor& sl = ctx.input(0);
    if (!dtype_is_integer(sl.dtype()) || sl.rank() != 1 || sl.dim(0) != batch)
      return ctx.error("sequence_lens must be an integer tensor of shape [" + std::to_string(batch) + "], got " +
                       sl.description());
    lens = sl.to_int64_vector();
    for (int64_t l : lens)
      if (l < 0 || l > max_len)
        return ctx.error("sequence_lens holds " + std::to_string(l) + ", outside [0, " + std::to_string(max_len) + "]");
  }

  const size_t k_count = body.outputs.size() >= n ? body.outputs.size() - n : 0;
  std::vector<std::vector<Tensor>> state_out(n), scan_out(k_count);  // [i][batch]
  std::vector<int64_t> axes(num_scan_inputs, 0);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<Value> batch_states;
    for (const Tensor& s : states) batch_states.emplace_back(cf::take_along_axis(s, 0, b));
    std::vector<Tensor> batch_scans;
    for (const Tensor& s : scans) {
      Tensor one = cf::take_along_axis(s, 0, b);
      batch_scans.push_back(lens[b] == max_len ? one : cf::slice_along_axis(one, 0, 0, lens[b]));
    }
    KILN_ASSIGN_OR_RETURN(ScanPass pass,
                          run_scan_pass(ctx, body, std::move(batch_states), batch_scans, axes, directions, lens[b]));
    for (size_t i = 0; i < n; ++i) {
      if (!pass.states[i].is_tensor()) return ctx.error("state output " + std::to_string(i) + " is not a tensor");
      state_out[i].push_back(pass.states[i].tensor());
    }
    for (size_t k = 0; k < k_count; ++k) scan_out[k].push_back(lens[b] == 0 ? Tensor() :
                                                               cf::concat_along_axis(pass.scan_outputs[k], 0, true));
  }
  for (size_t i = 0; i < n; ++i) {
    for (const Tensor& t : state_out[i])
      if (t.shape() != state_out[i][0].shape() || t.dtype() != state_out[i][0].dtype())
        return ctx.error("state output " + std::to_string(i) + " has different shapes across the batch");
    ctx.set_output(i, batch == 0 ? Tensor(states[i].dtype(), states[i].shape())
                                 : cf::concat_along_axis(state_out[i], 0, true));
  }
  for (size_t k = 0; k < k_count; ++k) {
    // Shorter sequences are padded with zeros up to the maximum length.
    const Tensor* model = nullptr;
    for (const Tensor& t : scan_out[k])
      if (t.defined()) model = &t;
    if (model == nullptr) {
      ctx.set_output(n + k, Tensor(DType::kFloat32, {batch, max_len}));
      continue;
    }
    Shape elem = model->shape();
    elem[0] = max_len;
    std::vector<Tensor> padded;
    for (const Tensor& t : scan_out[k]) {
      if (t.defined() && t.shape() == elem) {
        padded.push_back(t);
        continue;
      }
      Tensor p(model->dtype(), elem);
      if (t.defined()) {
        // Same element shape and dtype as the others; only the sequence axis may be shorter.
        bool same = t.rank() == model->rank() && t.dtype() == model->dtype() && t.dim(0) <= max_len;
        for (int64_t d = 1; same && d < t.rank(); ++d) same = t.dim(d) == elem[d];
        if (!same)
          return ctx.error("scan output " + std::to_string(k) + " differs across the batch: " + t.description() +
                           " vs " + model->description());
        cf::copy_elements(t, 0, p, 0, t.numel());
      }
      padded.push_back(p);
    }
    ctx.set_output(n + k, cf::concat_along_axis(padded, 0, true));
  }
  return OkStatus();
}

Status scan_kernel(KernelContext& ctx) {
  const ir::Graph* body = ctx.attr_graph("body");
  if (body == nullptr) return ctx.error("the graph attribute 'body' is missing");
  const int64_t m = ctx.attr_int("num_scan_inputs", -1);
  if (m <= 0) return ctx.error("attribute 'num_scan_inputs' must be positive, got " + std::to_string(m));
  if (m > static_cast<int64_t>(ctx.node().inputs.size()))
    return ctx.error("num_scan_inputs " + std::to_string(m) + " exceeds the " +
                     std::to_string(ctx.node().inputs.size()) + " inputs");
  if (ctx.opset() < 9) return scan8_kernel(ctx, *body, m);

  const size_t num_inputs = ctx.node().inputs.size();
  const size_t n = num_inputs - m;
  if (body->inputs.size() != num_inputs)
    return ctx.error("the body has " + std::to_string(body->inputs.size()) + " inputs, expected " +
                     std::to_string(num_inputs));
  if (body->outputs.size() < n)
    return ctx.error("the body has " + std::to_string(body->outputs.size()) + " outputs, fewer than the " +
                     std::to_string(n) + " state variables");
  const size_t k_count = body->outputs.size() - n;
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> in_axes, list_attr(ctx, "scan_input_axes", m));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> in_dirs, list_attr(ctx, "scan_input_directions", m));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> out_axes, list_attr(ctx, "scan_output_axes", k_count));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> out_dirs, list_attr(ctx, "scan_output_directions", k_count));
  KILN_RETURN_IF_ERROR(check_directions(ctx, "scan_input_directions", in_dirs));
  KILN_RETURN_IF_ERROR(check_directions(ctx, "scan_output_directions", out_dirs));

  std::vector<Value> states;
  for (size_t i = 0; i < n; ++i) states.push_back(ctx.input_value(i));
  std::vector<Tensor> scans;
  int64_t length = -1;
  for (int64_t j = 0; j < m; ++j) {
    const Value& v = ctx.input_value(n + j);
    if (!v.is_tensor())
      return ctx.error("scan input " + std::to_string(j) + " must be a tensor, got " + value_kind_name(v));
    const Tensor& t = v.tensor();
    auto axis = normalize_axis(in_axes[j], t.rank());
    if (!axis.ok())
      return ctx.error("scan_input_axes[" + std::to_string(j) + "] = " + std::to_string(in_axes[j]) +
                       " is out of range for " + t.description());
    in_axes[j] = *axis;
    if (length < 0) length = t.dim(*axis);
    if (t.dim(*axis) != length)
      return ctx.error("scan inputs have different lengths: " + std::to_string(length) + " vs " +
                       std::to_string(t.dim(*axis)) + " (" + t.description() + ")");
    scans.push_back(t);
  }

  KILN_ASSIGN_OR_RETURN(ScanPass pass, run_scan_pass(ctx, *body, std::move(states), scans, in_axes, in_dirs, length));
  for (size_t i = 0; i < n; ++i) ctx.set_output_value(i, std::move(pass.states[i]));
  for (size_t k = 0; k < k_count; ++k) {
    std::vector<Tensor>& items = pass.scan_outputs[k];
    if (items.empty()) {
      ctx.set_output(n + k, empty_scan_output(*body, n + k, out_axes[k] < 0 ? 0 : out_axes[k]));
      continue;
    }
    auto axis = normalize_axis(out_axes[k], items[0].rank() + 1);
    if (!axis.ok())
      return ctx.error("scan_output_axes[" + std::to_string(k) + "] = " + std::to_string(out_axes[k]) +
                       " is out of range for rank " + std::to_string(items[0].rank() + 1));
    if (out_dirs[k] == 1) std::reverse(items.begin(), items.end());
    ctx.set_output(n + k, cf::concat_along_axis(items, *axis, /*new_axis=*/true));
  }
  return OkStatus();
}

}  // namespace

void register_control_flow_ops(ir::OpRegistry& r) {
  // The bodies can produce values whose shapes depend on the data, so none of these is shape-static.
  auto add = [&](const char* op, int since, ir::KernelFn fn) {
    ir::OpSchema s;
    s.op_type = op;
    s.since_version = since;
    s.cpu_kernel = fn;
    s.data_dependent_shape = true;
    r.add(std::move(s));
  };
  add("If", 1, if_kernel);
  add("Loop", 1, loop_kernel);
  add("Scan", 8, scan_kernel);
}

}  // namespace kiln::cpu
