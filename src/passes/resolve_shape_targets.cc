// Shape targets made constant. A model exported with dynamic dims computes the target of each Reshape at run
// time (Shape -> Gather -> Unsqueeze -> Concat), because the batch and sequence sizes are not known when it is
// exported. Where shape inference has followed that computation symbolically, the output's dims are known as
// numbers and symbols ("batch", "seq", "batch*seq"), and most targets can be written as constants after all:
// Reshape's 0 keeps the input's dim at that position and -1 takes whatever size is left, so [batch, seq, 768]
// -> [batch, seq, 12, 64] is the constant [0, 0, 12, 64]. The shape computation then has no reader left and
// dies, and the fusion passes, which read constant targets, see the same graph as for fixed shapes.
//
// Only Reshape with allowzero = 0 is rewritten (0 means "copy" only there), and only where at most one dim of
// the output is neither a number nor the input's dim at the same position: -1 is the output's size over the
// product of the other dims, which equals that dim exactly because the symbolic output shape is right.
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "passes/symbolic_dims.h"

namespace kiln::passes {

namespace {

// The constant target that reshapes `in` to `out` for any value of their symbols; false where there is none.
bool constant_target(const std::vector<ir::Dim>& in, const std::vector<ir::Dim>& out, std::vector<int64_t>* target) {
  target->clear();
  int inferred = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    const ir::Dim& d = out[i];
    if (d.known() && d.value > 0) {
      target->push_back(d.value);
    } else if (!d.known() && !d.symbol.empty() && i < in.size() && same_dim(in[i], d)) {
      target->push_back(0);
    } else {
      if (inferred >= 0 || (d.known() && d.value == 0)) return false;  // a zero-size dim cannot be kept by 0
      inferred = static_cast<int>(i);
      target->push_back(-1);
    }
  }
  return true;
}

}  // namespace

Status resolve_shape_targets(ir::Model& model, int* resolved) {
  ir::Graph& g = model.graph;
  int count = 0;
  FreshNames fresh(g);
  for (ir::Node& n : g.nodes) {
    if (!n.domain.empty() || n.op_type != "Reshape" || n.inputs.size() < 2 || n.outputs.empty()) continue;
    if (constant_value(g, n.inputs[1]) != nullptr) continue;
    const ir::Attribute* allowzero = n.attr("allowzero");
    if (allowzero != nullptr && allowzero->i != 0) continue;
    std::vector<ir::Dim> in, out;
    if (!dims_of(g, n.inputs[0], &in) || !dims_of(g, n.outputs[0], &out)) continue;
    std::vector<int64_t> target;
    if (!constant_target(in, out, &target)) continue;
    const std::string name = fresh(n.outputs[0] + "_target");
    g.initializers[name] = Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(target.size())}, target);
    n.inputs[1] = name;
    ++count;
  }
  if (resolved) *resolved = count;
  return OkStatus();
}

}  // namespace kiln::passes
