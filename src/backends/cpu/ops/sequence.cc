// CPU reference kernels: sequences of tensors (SequenceConstruct ... SequenceMap, SplitToSequence,
// ConcatFromSequence) and optionals (Optional, OptionalHasElement, OptionalGetElement).
// A sequence is a Value of kind kSequence: a list of tensors of one dtype, possibly of different shapes.
// An optional is either the value it holds or Value::none().
#include <algorithm>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/control_flow_util.h"

namespace kiln::cpu {
namespace {

std::string kind_name(const Value& v) {
  if (v.is_tensor()) return "a tensor " + v.tensor().description();
  if (v.is_sequence()) return "a sequence";
  return "an empty value";
}

// Input i as a sequence, or an error naming what it is instead.
Result<const Value*> sequence_input(const KernelContext& ctx, size_t i) {
  const Value& v = ctx.input_value(i);
  if (!v.is_sequence()) return ctx.error("input " + std::to_string(i) + " must be a sequence, got " + kind_name(v));
  return &v;
}

// Input i as a tensor, or an error.
Result<const Tensor*> tensor_input(const KernelContext& ctx, size_t i, const std::string& what) {
  const Value& v = ctx.input_value(i);
  if (!v.is_tensor()) return ctx.error(what + " (input " + std::to_string(i) + ") must be a tensor, got " + kind_name(v));
  return &v.tensor();
}

// A one-element integer tensor (a sequence position), as int64.
Result<int64_t> read_position(const KernelContext& ctx, size_t i) {
  KILN_ASSIGN_OR_RETURN(const Tensor* t, tensor_input(ctx, i, "position"));
  if (!dtype_is_integer(t->dtype()) || t->numel() != 1)
    return ctx.error("position must be a one-element integer tensor, got " + t->description());
  return t->scalar_as_int();
}

// The element dtype a sequence built from `items` should carry: `declared` if known, else the items'.
DType sequence_dtype(const std::vector<Tensor>& items, DType declared) {
  if (declared != DType::kUndefined) return declared;
  return items.empty() ? DType::kUndefined : items[0].dtype();
}

Status check_element_dtype(const KernelContext& ctx, const Value& seq, const Tensor& t) {
  if (seq.elem_dtype() != DType::kUndefined && seq.elem_dtype() != t.dtype())
    return ctx.error("the tensor " + t.description() + " does not match the sequence's element type " +
                     dtype_name(seq.elem_dtype()));
  for (const Tensor& item : seq.sequence_items())
    if (item.dtype() != t.dtype())
      return ctx.error("the tensor " + t.description() + " does not match the sequence's elements " + item.description());
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Building and editing sequences

Status sequence_construct_kernel(KernelContext& ctx) {
  std::vector<Tensor> items;
  for (size_t i = 0; i < ctx.node().inputs.size(); ++i) {
    KILN_ASSIGN_OR_RETURN(const Tensor* t, tensor_input(ctx, i, "every input"));
    if (!items.empty() && t->dtype() != items[0].dtype())
      return ctx.error("all inputs must have one dtype: input 0 is " + items[0].description() + ", input " +
                       std::to_string(i) + " is " + t->description());
    items.push_back(*t);
  }
  if (items.empty()) return ctx.error("SequenceConstruct needs at least one input");
  const DType dtype = items[0].dtype();
  ctx.set_output_value(0, Value::sequence(std::move(items), dtype));
  return OkStatus();
}

Status sequence_empty_kernel(KernelContext& ctx) {
  const int64_t code = ctx.attr_int("dtype", static_cast<int64_t>(DType::kFloat32));
  if (code < 0 || code > 1000 || !dtype_is_valid(static_cast<int32_t>(code)) || code == 0)
    return ctx.error("attribute 'dtype' is not a valid element type: " + std::to_string(code));
  ctx.set_output_value(0, Value::sequence({}, static_cast<DType>(code)));
  return OkStatus();
}

Status sequence_at_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const Value* seq, sequence_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(int64_t pos, read_position(ctx, 1));
  const int64_t n = static_cast<int64_t>(seq->sequence_items().size());
  if (pos < -n || pos >= n)
    return ctx.error("position " + std::to_string(pos) + " is out of range for a sequence of length " + std::to_string(n));
  if (pos < 0) pos += n;
  ctx.set_output(0, seq->sequence_items()[pos]);
  return OkStatus();
}

Status sequence_insert_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const Value* seq, sequence_input(ctx, 0));
  KILN_ASSIGN_OR_RETURN(const Tensor* t, tensor_input(ctx, 1, "the tensor to insert"));
  KILN_RETURN_IF_ERROR(check_element_dtype(ctx, *seq, *t));
  std::vector<Tensor> items = seq->sequence_items();
  const int64_t n = static_cast<int64_t>(items.size());
  int64_t pos = n;  // default: append
  if (ctx.has_input(2)) {
    KILN_ASSIGN_OR_RETURN(pos, read_position(ctx, 2));
    if (pos < -n || pos > n)
      return ctx.error("position " + std::to_string(pos) + " is out of range [" + std::to_string(-n) + ", " +
                       std::to_string(n) + "] for insertion");
    if (pos < 0) pos += n;
  }
  items.insert(items.begin() + pos, *t);
  const DType dtype = sequence_dtype(items, seq->elem_dtype());
  ctx.set_output_value(0, Value::sequence(std::move(items), dtype));
  return OkStatus();
}

Status sequence_erase_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const Value* seq, sequence_input(ctx, 0));
  std::vector<Tensor> items = seq->sequence_items();
  const int64_t n = static_cast<int64_t>(items.size());
  if (n == 0) return ctx.error("cannot erase from an empty sequence");
  int64_t pos = n - 1;  // default: the last element
  if (ctx.has_input(1)) {
    KILN_ASSIGN_OR_RETURN(pos, read_position(ctx, 1));
    if (pos < -n || pos >= n)
      return ctx.error("position " + std::to_string(pos) + " is out of range for a sequence of length " +
                       std::to_string(n));
    if (pos < 0) pos += n;
  }
  items.erase(items.begin() + pos);
  ctx.set_output_value(0, Value::sequence(std::move(items), seq->elem_dtype()));
  return OkStatus();
}

Status sequence_length_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const Value* seq, sequence_input(ctx, 0));
  ctx.set_output(0, Tensor::scalar<int64_t>(DType::kInt64, static_cast<int64_t>(seq->sequence_items().size())));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Tensor <-> sequence

Status split_to_sequence_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const Tensor* input, tensor_input(ctx, 0, "the input"));
  const int64_t axis_attr = ctx.attr_int("axis", 0);
  auto axis_or = normalize_axis(axis_attr, input->rank());
  if (!axis_or.ok())
    return ctx.error("axis " + std::to_string(axis_attr) + " is out of range for " + input->description());
  const int64_t axis = *axis_or;
  const int64_t dim = input->dim(axis);
  const bool keepdims = ctx.attr_int("keepdims", 1) != 0;

  std::vector<int64_t> lengths;
  bool squeeze = false;
  if (!ctx.has_input(1)) {
    lengths.assign(dim, 1);
    squeeze = !keepdims;  // keepdims applies only when 'split' is not given
  } else {
    KILN_ASSIGN_OR_RETURN(const Tensor* split, tensor_input(ctx, 1, "split"));
    if (!dtype_is_integer(split->dtype()) || split->rank() > 1)
      return ctx.error("split must be an integer scalar or 1-D tensor, got " + split->description());
    if (split->rank() == 0) {
      const int64_t chunk = split->scalar_as_int();
      if (chunk <= 0) return ctx.error("a scalar split must be positive, got " + std::to_string(chunk));
      for (int64_t start = 0; start < dim; start += chunk) lengths.push_back(std::min(chunk, dim - start));
    } else {
      lengths = split->to_int64_vector();
      int64_t sum = 0;
      for (int64_t l : lengths) {
        if (l < 0) return ctx.error("split holds a negative length " + std::to_string(l));
        sum += l;
      }
      if (sum != dim)
        return ctx.error("split lengths sum to " + std::to_string(sum) + ", but the axis has size " + std::to_string(dim) +
                         " in " + input->description());
    }
  }

  std::vector<Tensor> items;
  int64_t start = 0;
  for (int64_t len : lengths) {
    items.push_back(squeeze ? cf::take_along_axis(*input, axis, start) : cf::slice_along_axis(*input, axis, start, len));
    start += len;
  }
  ctx.set_output_value(0, Value::sequence(std::move(items), input->dtype()));
  return OkStatus();
}

Status concat_from_sequence_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(const Value* seq, sequence_input(ctx, 0));
  const std::vector<Tensor>& items = seq->sequence_items();
  if (items.empty()) return ctx.error("cannot concatenate an empty sequence");
  if (!ctx.has_attr("axis")) return ctx.error("the attribute 'axis' is required");
  const bool new_axis = ctx.attr_int("new_axis", 0) != 0;
  const int64_t axis_attr = ctx.attr_int("axis", 0);
  const Tensor& first = items[0];
  auto axis_or = normalize_axis(axis_attr, first.rank() + (new_axis ? 1 : 0));
  if (!axis_or.ok())
    return ctx.error("axis " + std::to_string(axis_attr) + " is out of range for " + first.description() +
                     (new_axis ? " with new_axis" : ""));
  const int64_t axis = *axis_or;
  for (const Tensor& t : items) {
    bool compatible = t.dtype() == first.dtype() && t.rank() == first.rank();
    for (int64_t d = 0; compatible && d < t.rank(); ++d)
      if ((new_axis || d != axis) && t.dim(d) != first.dim(d)) compatible = false;
    if (!compatible)
      return ctx.error("cannot concatenate " + t.description() + " with " + first.description() + " along axis " +
                       std::to_string(axis) + (new_axis ? " (new axis)" : ""));
  }
  ctx.set_output(0, cf::concat_along_axis(items, axis, new_axis));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// SequenceMap: runs the body once per element of the first input. Additional inputs that are sequences
// are iterated alongside it (same length); tensors are passed whole to every iteration.

Status sequence_map_kernel(KernelContext& ctx) {
  const ir::Graph* body = ctx.attr_graph("body");
  if (body == nullptr) return ctx.error("the graph attribute 'body' is missing");
  KILN_ASSIGN_OR_RETURN(const Value* seq, sequence_input(ctx, 0));
  const size_t num_inputs = ctx.node().inputs.size();
  if (body->inputs.size() != num_inputs)
    return ctx.error("the body has " + std::to_string(body->inputs.size()) + " inputs, the node has " +
                     std::to_string(num_inputs));
  const size_t length = seq->sequence_items().size();
  for (size_t i = 1; i < num_inputs; ++i) {
    const Value& v = ctx.input_value(i);
    if (v.is_none()) return ctx.error("input " + std::to_string(i) + " is missing");
    if (v.is_sequence() && v.sequence_items().size() != length)
      return ctx.error("input " + std::to_string(i) + " is a sequence of length " +
                       std::to_string(v.sequence_items().size()) + ", the first input has length " + std::to_string(length));
  }
  const size_t num_outputs = body->outputs.size();
  std::vector<std::vector<Tensor>> results(num_outputs);
  for (size_t e = 0; e < length; ++e) {
    std::vector<Value> body_inputs;
    body_inputs.emplace_back(seq->sequence_items()[e]);
    for (size_t i = 1; i < num_inputs; ++i) {
      const Value& v = ctx.input_value(i);
      body_inputs.push_back(v.is_sequence() ? Value(v.sequence_items()[e]) : v);
    }
    KILN_ASSIGN_OR_RETURN(std::vector<Value> outs, ctx.run_subgraph(*body, std::move(body_inputs)));
    if (outs.size() != num_outputs)
      return ctx.error("the body returned " + std::to_string(outs.size()) + " values, expected " + std::to_string(num_outputs));
    for (size_t k = 0; k < num_outputs; ++k) {
      if (!outs[k].is_tensor())
        return ctx.error("body output " + std::to_string(k) + " must be a tensor, got " + kind_name(outs[k]));
      if (!results[k].empty() && results[k][0].dtype() != outs[k].tensor().dtype())
        return ctx.error("body output " + std::to_string(k) + " changed dtype between elements");
      results[k].push_back(outs[k].tensor());
    }
  }
  for (size_t k = 0; k < num_outputs; ++k) {
    const DType declared = body->outputs[k].type.dtype;
    const DType dtype = results[k].empty() ? declared : results[k][0].dtype();
    ctx.set_output_value(k, Value::sequence(std::move(results[k]), dtype));
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Optionals

Status optional_kernel(KernelContext& ctx) {
  const Value& v = ctx.input_value(0);
  if (v.is_none()) {
    // An omitted input needs the 'type' attribute to say what the empty optional would hold.
    const bool omitted = ctx.node().inputs.empty() || ctx.node().inputs[0].empty();
    if (omitted && !ctx.has_attr("type")) return ctx.error("an Optional without input needs the 'type' attribute");
    ctx.set_output_value(0, Value::none());
    return OkStatus();
  }
  const ir::Attribute* type = ctx.attr("type");
  if (type != nullptr && type->type == ir::Attribute::Type::kTypeProto && v.is_tensor() &&
      type->type_proto.dtype != DType::kUndefined && type->type_proto.dtype != v.tensor().dtype())
    return ctx.error("the input " + v.tensor().description() + " does not match the 'type' attribute (" +
                     dtype_name(type->type_proto.dtype) + ")");
  ctx.set_output_value(0, v);
  return OkStatus();
}

Status optional_has_element_kernel(KernelContext& ctx) {
  const bool has = !ctx.input_value(0).is_none();
  ctx.set_output(0, Tensor::scalar<bool>(DType::kBool, has));
  return OkStatus();
}

Status optional_get_element_kernel(KernelContext& ctx) {
  const Value& v = ctx.input_value(0);
  if (v.is_none()) return ctx.error("the optional input is empty");
  ctx.set_output_value(0, v);
  return OkStatus();
}

}  // namespace

void register_sequence_ops(ir::OpRegistry& r) {
  r.add("SequenceConstruct", 11, sequence_construct_kernel);
  r.add("SequenceEmpty", 11, sequence_empty_kernel);
  r.add("SequenceAt", 11, sequence_at_kernel);
  r.add("SequenceInsert", 11, sequence_insert_kernel);
  r.add("SequenceErase", 11, sequence_erase_kernel);
  r.add("SequenceLength", 11, sequence_length_kernel);
  r.add("SplitToSequence", 11, split_to_sequence_kernel);
  r.add("ConcatFromSequence", 11, concat_from_sequence_kernel);
  r.add("Optional", 15, optional_kernel);
  r.add("OptionalHasElement", 15, optional_has_element_kernel);
  r.add("OptionalGetElement", 15, optional_get_element_kernel);
  // The body can produce shapes that depend on the data.
  ir::OpSchema map;
  map.op_type = "SequenceMap";
  map.since_version = 17;
  map.cpu_kernel = sequence_map_kernel;
  map.data_dependent_shape = true;
  r.add(std::move(map));
}

}  // namespace kiln::cpu
