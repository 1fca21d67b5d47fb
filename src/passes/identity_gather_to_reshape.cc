// Identity gathers: a Gather whose constant indices are 0, 1, ..., n - 1 in order, n the size of the axis it
// gathers along, with every dim before that axis of size 1, copies its data in the order it already has: it
// is the Reshape to its output shape, a view on every backend. Exporters emit them where shapes are dynamic
// (transformers' padding mask gathers the flattened mask at batch * seq + position), and constant folding
// makes the indices constant once a build fixes the shapes: BERT-base's engines ran a Gather kernel for it.
//
// Only where the output shape can be written as a Reshape target: its known dims, at most one unknown (-1).
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// The Reshape target for Gather `n`, or empty when it is not an identity gather (or that cannot be told).
std::vector<int64_t> reshape_target(const ir::Graph& g, const ir::Node& n) {
  if (n.inputs.size() != 2 || n.outputs.size() != 1) return {};
  std::vector<ir::Dim> data, out;
  if (!dims_of(g, n.inputs[0], &data) || data.empty() || !dims_of(g, n.outputs[0], &out)) return {};
  const Tensor* indices = constant_value(g, n.inputs[1]);
  if (indices == nullptr || (indices->dtype() != DType::kInt64 && indices->dtype() != DType::kInt32)) return {};
  int64_t axis = int_attr_or(n, "axis", 0);
  if (axis < 0) axis += static_cast<int64_t>(data.size());
  if (axis < 0 || axis >= static_cast<int64_t>(data.size())) return {};
  for (int64_t i = 0; i < axis; ++i)
    if (!data[i].known() || data[i].value != 1) return {};
  if (!data[axis].known() || indices->numel() != data[axis].value) return {};
  const std::vector<int64_t> v = indices->to_int64_vector();
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<int64_t>(i)) return {};
  std::vector<int64_t> target;
  int unknown = 0;
  for (const ir::Dim& d : out) {
    if (!d.known() && ++unknown > 1) return {};
    if (d.known() && d.value == 0) return {};  // a 0 in a Reshape target copies the input's dim
    target.push_back(d.known() ? d.value : -1);
  }
  return target;
}

}  // namespace

Status identity_gather_to_reshape(ir::Model& model, int* rewritten) {
  ir::Graph& g = model.graph;
  FreshNames fresh(g);
  int count = 0;
  if (rewritten) *rewritten = 0;
  if (model.default_opset() < 5) return OkStatus();  // Reshape took its shape as an attribute before
  for (ir::Node& n : g.nodes) {
    if (!is_onnx(n, "Gather")) continue;
    const std::vector<int64_t> target = reshape_target(g, n);
    if (target.empty()) continue;
    const std::string shape = fresh(n.outputs[0] + "__shape");
    g.initializers[shape] = Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(target.size())}, target);
    n.op_type = "Reshape";
    n.inputs[1] = shape;
    n.attributes.clear();
    ++count;
  }
  if (rewritten) *rewritten = count;
  return OkStatus();
}

}  // namespace kiln::passes
