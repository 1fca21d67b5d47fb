// Identity gathers: a Gather whose constant indices are 0, 1, ..., n - 1 in order, n the size of the axis it
// gathers along, with every dim before that axis of size 1, copies its data in the order it already has: it
// is the Reshape to its output shape, a view on every backend. Exporters emit them where shapes are dynamic
// (transformers' padding mask gathers the flattened mask at batch * seq + position), and constant folding
// makes the indices constant once a build fixes the shapes: BERT-base's engines ran a Gather kernel for it.
//
// The Reshape itself is rewrite_as_reshapes' (graph_uses.h), with its limits on the output shape.
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// Whether Gather `n` gathers its data whole and in order (false where that cannot be told).
bool gathers_in_order(const ir::Graph& g, const ir::Node& n) {
  std::vector<ir::Dim> data;
  if (n.inputs.size() != 2 || !dims_of(g, n.inputs[0], &data) || data.empty()) return false;
  const Tensor* indices = constant_value(g, n.inputs[1]);
  if (indices == nullptr || (indices->dtype() != DType::kInt64 && indices->dtype() != DType::kInt32)) return false;
  int64_t axis = int_attr_or(n, "axis", 0);
  if (axis < 0) axis += static_cast<int64_t>(data.size());
  if (axis < 0 || axis >= static_cast<int64_t>(data.size())) return false;
  for (int64_t i = 0; i < axis; ++i)
    if (!data[i].known() || data[i].value != 1) return false;
  if (!data[axis].known() || indices->numel() != data[axis].value) return false;
  const std::vector<int64_t> v = indices->to_int64_vector();
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<int64_t>(i)) return false;
  return true;
}

}  // namespace

Status identity_gather_to_reshape(ir::Model& model, int* rewritten) {
  const int count = rewrite_as_reshapes(model, "Gather", gathers_in_order);
  if (rewritten) *rewritten = count;
  return OkStatus();
}

}  // namespace kiln::passes
