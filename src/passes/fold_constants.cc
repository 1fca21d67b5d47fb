#include <algorithm>
#include <set>

#include "ir/op_registry.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// Folding must not bloat the engine: a result larger than this stays a node.
constexpr int64_t kMaxFoldedBytes = 16 << 20;

// Dropout in training mode without a seed draws a new mask each run: folding it would freeze one draw.
bool is_random_at_run_time(const ir::Node& n) {
  return n.domain.empty() && n.op_type == "Dropout" && n.inputs.size() > 2 && !n.inputs[2].empty() &&
         n.attr("seed") == nullptr;
}

bool has_subgraph(const ir::Node& n) {
  for (const auto& [name, a] : n.attributes)
    if (a.g || !a.graphs.empty()) return true;
  return false;
}

// Shape and Size of a value whose shape is fully known are constants even though its data is not.
bool fold_shape_of_static(const ir::Graph& g, const ir::Node& n, int opset, Tensor* out) {
  if (n.domain != "" || (n.op_type != "Shape" && n.op_type != "Size") || n.inputs.empty()) return false;
  const ir::TypeInfo* t = g.type_of(n.inputs[0]);
  if (t == nullptr || !t->is_static()) return false;
  Shape s = t->static_shape();
  if (n.op_type == "Size") {
    *out = Tensor::scalar<int64_t>(DType::kInt64, shape_numel(s));
    return true;
  }
  int64_t rank = static_cast<int64_t>(s.size());
  int64_t start = 0, end = rank;
  if (opset >= 15) {
    if (const ir::Attribute* a = n.attr("start")) start = a->i;
    if (const ir::Attribute* a = n.attr("end")) end = a->i;
  }
  auto clamp = [rank](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rank : v, 0, rank); };
  start = clamp(start);
  end = clamp(end);
  std::vector<int64_t> dims(s.begin() + start, s.begin() + std::max(start, end));
  *out = Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(dims.size())}, dims);
  return true;
}

}  // namespace

Status fold_constants(ir::Model& model, int* folded) {
  ir::Graph& g = model.graph;
  int count = 0;
  std::set<std::string> graph_inputs;  // an initializer that is also an input may be overridden at run time
  for (const auto& in : g.inputs) graph_inputs.insert(in.name);
  std::vector<ir::Node> kept;
  for (ir::Node& n : g.nodes) {
    const ir::OpSchema* schema = ir::OpRegistry::global().find(n.domain, n.op_type);
    const int opset = model.opset_of(n);
    Tensor shape_value;
    if (n.outputs.size() == 1 && fold_shape_of_static(g, n, opset, &shape_value)) {
      g.initializers[n.outputs[0]] = shape_value;
      ++count;
      continue;
    }
    bool all_const = schema && schema->cpu_kernel && !schema->nondeterministic && !has_subgraph(n) &&
                     !is_random_at_run_time(n);
    for (const auto& in : n.inputs)
      if (!in.empty() && (!g.initializers.count(in) || graph_inputs.count(in))) all_const = false;
    // Ops that take no inputs fold only when they are Constant-like (no inputs by design).
    if (all_const && n.inputs.empty() && n.op_type != "Constant") all_const = false;
    if (!all_const) {
      kept.push_back(std::move(n));
      continue;
    }
    std::vector<Value> input_values;
    input_values.reserve(n.inputs.size());
    for (const auto& in : n.inputs) input_values.push_back(in.empty() ? Value() : Value(g.initializers[in]));
    std::vector<const Value*> ins;
    for (size_t i = 0; i < n.inputs.size(); ++i) ins.push_back(n.inputs[i].empty() ? nullptr : &input_values[i]);
    std::vector<Value> outs(n.outputs.size());
    ir::KernelContext ctx(n, opset, ins, &outs, nullptr);
    Status st = schema->cpu_kernel(ctx);
    bool foldable = st.ok() && ctx.attr_error().empty();
    for (size_t i = 0; foldable && i < outs.size(); ++i) {
      if (n.outputs[i].empty()) continue;
      if (!outs[i].is_tensor() || outs[i].tensor().nbytes() > kMaxFoldedBytes) foldable = false;
    }
    // A kernel error is left for run time, where it is reported with the inputs that caused it.
    if (!foldable) {
      kept.push_back(std::move(n));
      continue;
    }
    for (size_t i = 0; i < outs.size(); ++i)
      if (!n.outputs[i].empty()) g.initializers[n.outputs[i]] = outs[i].tensor();
    ++count;
  }
  g.nodes = std::move(kept);
  if (folded) *folded = count;
  return OkStatus();
}

Status fold_constants_to_fixpoint(ir::Model& model, int* folded) {
  // Each round can make more shapes static (an Expand whose shape input was just folded, say), and so more
  // Shape nodes foldable: a transformer's shape arithmetic needs several rounds a layer (ViT-B/16's twelve
  // layers needed more than 32). Every round but the last folds a node, so the node count bounds them.
  int total = 0;
  const size_t max_rounds = model.graph.nodes.size() + 1;
  for (size_t round = 0; round < max_rounds; ++round) {
    int count = 0;
    KILN_RETURN_IF_ERROR(infer_shapes(model));
    KILN_RETURN_IF_ERROR(fold_constants(model, &count));
    total += count;
    if (count == 0) break;
  }
  if (folded) *folded = total;
  return OkStatus();
}

}  // namespace kiln::passes
