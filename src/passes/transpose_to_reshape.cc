// Transposes that move no data: a Transpose whose permutation keeps the dims of size other than 1 in their
// order only moves dims of size 1, so the bytes are in the same order before and after, and it is the Reshape
// to its output shape, a view on every backend (no kernel, no copy). convert_conv_layout leaves one after
// ResNet-50's global average pool ([N, 1, 1, 2048] NHWC back to [N, 2048, 1, 1] NCHW before the classifier),
// and exporters emit them around squeezed dims.
//
// Only where the input's rank is known (a dim not known to be 1 counts as one that is not), and the output
// shape can be written as a Reshape target: its known dims, and at most one unknown dim (as -1).
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// The Reshape target for Transpose `n`, or empty when `n` moves data (or that cannot be told).
std::vector<int64_t> reshape_target(const ir::Graph& g, const ir::Node& n) {
  std::vector<ir::Dim> d;
  if (n.inputs.size() != 1 || n.outputs.size() != 1 || !dims_of(g, n.inputs[0], &d) || d.empty()) return {};
  std::vector<int64_t> perm = ints_attr_or(n, "perm", {});
  if (perm.empty())  // absent: the dims reversed
    for (int64_t i = static_cast<int64_t>(d.size()) - 1; i >= 0; --i) perm.push_back(i);
  if (perm.size() != d.size()) return {};
  std::vector<bool> seen(d.size(), false);
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(d.size()) || seen[p]) return {};
    seen[p] = true;
  }
  // The dims not known to be of size 1, in output order, must be in input order.
  int64_t last = -1;
  std::vector<int64_t> target;
  int unknown = 0;
  for (size_t i = 0; i < perm.size(); ++i) {
    const ir::Dim& dim = d[perm[i]];
    const bool one = dim.known() && dim.value == 1;
    if (!one) {
      if (perm[i] < last) return {};
      last = perm[i];
    }
    if (dim.known() && dim.value == 0) return {};  // a 0 in a Reshape target copies the input's dim
    if (!dim.known()) {
      if (++unknown > 1) return {};
      target.push_back(-1);
    } else {
      target.push_back(dim.value);
    }
  }
  return target;
}

}  // namespace

Status transpose_to_reshape(ir::Model& model, int* rewritten) {
  ir::Graph& g = model.graph;
  FreshNames fresh(g);
  int count = 0;
  if (rewritten) *rewritten = 0;
  if (model.default_opset() < 5) return OkStatus();  // Reshape took its shape as an attribute before
  for (ir::Node& n : g.nodes) {
    if (!is_onnx(n, "Transpose")) continue;
    const std::vector<int64_t> target = reshape_target(g, n);
    if (target.empty()) continue;
    const std::string shape = fresh(n.outputs[0] + "__shape");
    g.initializers[shape] = Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(target.size())}, target);
    n.op_type = "Reshape";
    n.inputs.push_back(shape);
    n.attributes.clear();
    ++count;
  }
  if (rewritten) *rewritten = count;
  return OkStatus();
}

}  // namespace kiln::passes
