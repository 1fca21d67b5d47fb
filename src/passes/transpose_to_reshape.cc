// Transposes that move no data: a Transpose whose permutation keeps the dims of size other than 1 in their
// order only moves dims of size 1, so the bytes are in the same order before and after, and it is the Reshape
// to its output shape, a view on every backend (no kernel, no copy). convert_conv_layout leaves one after
// ResNet-50's global average pool ([N, 1, 1, 2048] NHWC back to [N, 2048, 1, 1] NCHW before the classifier),
// and exporters emit them around squeezed dims.
//
// Only where the input's rank is known (a dim not known to be 1 counts as one that is not); the Reshape
// itself is rewrite_as_reshapes' (graph_uses.h), with its limits on the output shape.
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// Whether Transpose `n` moves only dims of size 1 (false where that cannot be told).
bool moves_only_ones(const ir::Graph& g, const ir::Node& n) {
  std::vector<ir::Dim> d;
  if (n.inputs.size() != 1 || !dims_of(g, n.inputs[0], &d) || d.empty()) return false;
  std::vector<int64_t> perm = ints_attr_or(n, "perm", {});
  if (perm.empty())  // absent: the dims reversed
    for (int64_t i = static_cast<int64_t>(d.size()) - 1; i >= 0; --i) perm.push_back(i);
  if (perm.size() != d.size()) return false;
  std::vector<bool> seen(d.size(), false);
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(d.size()) || seen[p]) return false;
    seen[p] = true;
  }
  // The dims not known to be of size 1, in output order, must be in input order.
  int64_t last = -1;
  for (int64_t p : perm) {
    if (d[p].known() && d[p].value == 1) continue;
    if (p < last) return false;
    last = p;
  }
  return true;
}

}  // namespace

Status transpose_to_reshape(ir::Model& model, int* rewritten) {
  const int count = rewrite_as_reshapes(model, "Transpose", moves_only_ones);
  if (rewritten) *rewritten = count;
  return OkStatus();
}

}  // namespace kiln::passes
