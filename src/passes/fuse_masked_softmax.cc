// Masked softmax fusion: the attention probabilities of torch's SDPA export (BERT at opset 17),
//   A = Add(S, mask) -> P = Softmax(A, axis = -1) -> N = IsNaN(P) -> Y = Where(N, 0, P)
// become one kiln.MaskedSoftmax(S, mask, nan_to_zero = 1): four kernels that each read and write the
// [B, H, L, L] scores (about a third of BERT's time on an H100) become one. The Add and the IsNaN/Where
// tail are each optional; a Softmax with neither stays a Softmax. Only opset >= 13 Softmax is taken (one
// axis; before 13 the op flattens the trailing dims), and only along the last axis.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// Whether `name` is a constant of one element, exactly 0, that leaves an operand of rank `rank` (-1:
// unknown) its shape when broadcast against it.
bool is_zero_constant(const ir::Graph& g, const std::string& name, int64_t rank) {
  const Tensor* t = constant_value(g, name);
  if (t == nullptr || !dtype_is_float(t->dtype()) || t->numel() != 1) return false;
  if (t->rank() > 0 && (rank < 0 || t->rank() > rank)) return false;
  return t->scalar_as_double(0) == 0.0;
}

}  // namespace

Status fuse_masked_softmax(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  if (fused) *fused = 0;
  if (model.default_opset() < 13) return OkStatus();
  const GraphReaders readers(g);

  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the chain's last node -> the fused node
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& sm = g.nodes[k];
    if (!is_onnx(sm, "Softmax") || absorbed[k] || sm.inputs.size() != 1 || sm.outputs.size() != 1) continue;
    const std::string& a = sm.inputs[0];
    const std::string& p = sm.outputs[0];
    const int64_t rank = known_rank(g, a);
    const ir::Attribute* axis_attr = sm.attr("axis");
    const int64_t axis = axis_attr != nullptr && axis_attr->type == ir::Attribute::Type::kInt ? axis_attr->i : -1;
    if (axis != -1 && (rank < 1 || axis != rank - 1)) continue;

    std::vector<size_t> chain;  // absorbed nodes, in graph order
    std::string x = a, mask;
    // Add(S, mask) or Add(mask, S), read by the Softmax alone.
    if (const long add_at = readers.producer(a); add_at >= 0 && readers.sole_reader(a) == static_cast<long>(k)) {
      const ir::Node& add = g.nodes[add_at];
      if (is_onnx(add, "Add") && !absorbed[add_at] && add.inputs.size() == 2 && add.outputs.size() == 1) {
        for (int m = 1; m >= 0; --m)  // the mask second first: Add(scores, mask) is what torch writes
          if (add.inputs[m] != add.inputs[1 - m] && mask_broadcasts_into(g, add.inputs[1 - m], add.inputs[m])) {
            x = add.inputs[1 - m];
            mask = add.inputs[m];
            chain.push_back(static_cast<size_t>(add_at));
            break;
          }
      }
    }
    chain.push_back(k);
    // IsNaN(P) and Where(IsNaN(P), 0, P): P read by those two alone, N by the Where alone.
    std::string out = p;
    bool nan_to_zero = false;
    const std::vector<size_t>& p_readers = readers.readers(p);
    if (!readers.is_graph_output(p) && p_readers.size() == 2) {
      for (int i = 0; i < 2 && !nan_to_zero; ++i) {
        const size_t isnan_at = p_readers[i], where_at = p_readers[1 - i];
        const ir::Node& isnan = g.nodes[isnan_at];
        const ir::Node& where = g.nodes[where_at];
        if (absorbed[isnan_at] || absorbed[where_at] || !is_onnx(isnan, "IsNaN") || !is_onnx(where, "Where")) continue;
        if (isnan.inputs.size() != 1 || isnan.inputs[0] != p || isnan.outputs.size() != 1) continue;
        if (readers.sole_reader(isnan.outputs[0]) != static_cast<long>(where_at)) continue;
        if (where.inputs.size() != 3 || where.outputs.size() != 1 || where.inputs[0] != isnan.outputs[0] ||
            where.inputs[2] != p || !is_zero_constant(g, where.inputs[1], rank))
          continue;
        nan_to_zero = true;
        chain.push_back(isnan_at);
        chain.push_back(where_at);
        out = where.outputs[0];
      }
    }
    if (chain.size() == 1) continue;  // a plain Softmax: nothing to fuse

    std::sort(chain.begin(), chain.end());
    ir::Node f;
    f.name = absorb_chain(g, chain, absorbed);
    f.op_type = "MaskedSoftmax";
    f.domain = "kiln";
    f.inputs = mask.empty() ? std::vector<std::string>{x} : std::vector<std::string>{x, mask};
    f.outputs = {out};
    f.index = g.nodes[chain.back()].index;
    f.attributes["axis"] = int_attribute(-1);
    f.attributes["nan_to_zero"] = int_attribute(nan_to_zero ? 1 : 0);
    replacement[chain.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
