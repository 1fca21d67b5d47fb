// Attention masks narrowed to the shape they broadcast from. transformers' BERT export builds its padding
// mask as
//   pad [B,1,1,S] -> And(c, pad), c an all-true constant [1,1,S,1] -> Expand(., [B,1,S,S]) -> Where(., 0, -big)
// and kiln.FusedAttention reads the [B,1,S,S] result as its additive mask. The attention kernels broadcast the
// mask themselves (strides 0 along its size-1 dims, aligned to the right of [B,H,Sq,Sk]), so the And and the
// Expand, whose only effect is the broadcast, can go: the Where then makes a [B,1,1,S] mask, S times fewer
// bytes to write and to read in every layer, and a key-only mask is what the kernels read fastest.
//
// Why it is exact: numpy broadcasting makes f(Expand(x), y) equal f(x, y) broadcast to the same shape for an
// elementwise f, so every value downstream of a bypassed node, up to the attention, is the value it was with
// size-1 dims where it had broadcast ones, and each of its dims is 1 or the old one. That holds only where
// every reader of such a value broadcasts it: an elementwise op of the short list below, or an attention
// reading it as its mask. A value any other op reads (a ReduceSum would sum fewer elements), or a graph output,
// keeps its shape, and so does everything upstream of it.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// Elementwise ONNX ops with numpy broadcasting (or unary): their output at an index depends only on their
// inputs at the broadcast index, and their output shape is the broadcast of their inputs' shapes.
bool is_broadcasting_elementwise(const ir::Node& n) {
  static const std::set<std::string> kOps = {"Where", "Cast", "Not", "Neg", "And", "Or", "Xor", "Add", "Sub", "Mul",
                                             "Div", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"};
  return n.domain.empty() && kOps.count(n.op_type) != 0;
}

// Where a kiln.FusedAttention reads its mask: second with packed_qkv = 1 (QKV, Mask), else fourth.
size_t mask_input(const ir::Node& attention) {
  const ir::Attribute* packed = attention.attr("packed_qkv");
  return packed != nullptr && packed->type == ir::Attribute::Type::kInt && packed->i == 1 ? 1 : 3;
}

bool is_attention(const ir::Node& n) { return n.domain == "kiln" && n.op_type == "FusedAttention"; }

// A value whose every dim is known: the broadcasts below are then decided at build time, so the narrowed
// values get static types again (the attention's CUDA layer sizes its mask strides from them).
bool has_static_shape(const ir::Graph& g, const std::string& name) {
  std::vector<ir::Dim> dims;
  if (!dims_of(g, name, &dims)) return false;
  for (const auto& d : dims)
    if (!d.known()) return false;
  return true;
}

// A constant bool tensor whose every element is `want`.
bool is_constant_all(const ir::Graph& g, const std::string& name, bool want) {
  const Tensor* t = constant_value(g, name);
  if (t == nullptr || t->dtype() != DType::kBool || t->numel() == 0) return false;
  for (int64_t i = 0; i < t->numel(); ++i)
    if ((t->scalar_as_double(i) != 0.0) != want) return false;
  return true;
}

// Which values may take a narrower shape: every reader broadcasts them (see the top of the file).
class Narrowable {
 public:
  Narrowable(const ir::Graph& g, const GraphReaders& readers) : g_(g), readers_(readers) {}

  bool operator()(const std::string& value) {
    if (auto it = memo_.find(value); it != memo_.end()) return it->second;
    memo_[value] = false;  // the graph is acyclic; this only guards against a malformed one
    return memo_[value] = decide(value);
  }
  // Whether `value` was found narrowable (asked about before, and answered yes).
  bool found(const std::string& value) const {
    auto it = memo_.find(value);
    return it != memo_.end() && it->second;
  }

 private:
  bool decide(const std::string& value) {
    if (value.empty() || readers_.is_graph_output(value) || !has_static_shape(g_, value)) return false;
    const std::vector<size_t>& readers = readers_.readers(value);  // subgraph reads too: never listed ops
    if (readers.empty()) return false;
    for (size_t r : readers) {
      const ir::Node& n = g_.nodes[r];
      if (is_attention(n)) {
        for (size_t i = 0; i < n.inputs.size(); ++i)
          if (n.inputs[i] == value && i != mask_input(n)) return false;  // read as Q, K or V as well
        continue;
      }
      if (n.outputs.size() != 1) return false;
      if (is_onnx(n, "Expand")) {
        if (n.inputs.size() != 2 || n.inputs[1] == value) return false;  // its shape operand keeps its values
      } else if (is_broadcasting_elementwise(n)) {
        for (const auto& in : n.inputs)
          if (!has_static_shape(g_, in)) return false;
      } else {
        return false;
      }
      if (!(*this)(n.outputs[0])) return false;
    }
    return true;
  }

  const ir::Graph& g_;
  const GraphReaders& readers_;
  std::map<std::string, bool> memo_;
};

// The input a node that only broadcasts hands on, when it does nothing else: Expand's data, And's operand
// beside an all-true constant, Or's beside an all-false one; empty otherwise.
std::string broadcast_only_input(const ir::Graph& g, const ir::Node& n) {
  if (n.outputs.size() != 1 || n.inputs.size() != 2) return "";
  if (is_onnx(n, "Expand")) return n.inputs[0];
  const bool is_and = is_onnx(n, "And");
  if (!is_and && !is_onnx(n, "Or")) return "";
  for (int c = 1; c >= 0; --c)
    if (is_constant_all(g, n.inputs[c], is_and)) return n.inputs[1 - c];
  return "";
}

// Whether `now` broadcasts into `was` without growing it: no more dims, each 1 or the same.
bool fits_into(const std::vector<ir::Dim>& now, const std::vector<ir::Dim>& was) {
  if (now.size() > was.size()) return false;
  for (size_t i = 0; i < now.size(); ++i) {
    const ir::Dim& d = now[i];
    const ir::Dim& w = was[was.size() - now.size() + i];
    if (!d.known() || (d.value != 1 && (!w.known() || w.value != d.value))) return false;
  }
  return true;
}

}  // namespace

Status narrow_attention_mask(ir::Model& model, int* narrowed) {
  ir::Graph& g = model.graph;
  if (narrowed) *narrowed = 0;
  const GraphReaders readers(g);
  Narrowable narrowable(g, readers);
  std::map<size_t, std::string> bypass;  // position -> the input its readers read instead
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& n = g.nodes[k];
    const std::string kept = broadcast_only_input(g, n);
    if (!kept.empty() && has_static_shape(g, kept) && narrowable(n.outputs[0])) bypass[k] = kept;
  }
  if (bypass.empty()) return OkStatus();

  // The shapes of the masks that may narrow, to check the narrowed ones against (static: narrowable).
  std::map<size_t, std::vector<ir::Dim>> masks_before;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& n = g.nodes[k];
    std::vector<ir::Dim> dims;
    if (is_attention(n) && mask_input(n) < n.inputs.size() && narrowable.found(n.inputs[mask_input(n)]) &&
        dims_of(g, n.inputs[mask_input(n)], &dims))
      masks_before[k] = dims;
  }

  // Bypass in graph order (a bypassed node's readers come after it, a chain of them resolves to its start).
  std::map<std::string, std::string> renamed;
  std::vector<ir::Node> kept;
  kept.reserve(g.nodes.size());
  std::map<size_t, size_t> position;  // old position -> new, for the attentions checked below
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    ir::Node& n = g.nodes[k];
    for (auto& in : n.inputs)
      if (auto r = renamed.find(in); r != renamed.end()) in = r->second;
    if (auto b = bypass.find(k); b != bypass.end()) {
      auto r = renamed.find(b->second);
      renamed[n.outputs[0]] = r != renamed.end() ? r->second : b->second;
      g.value_types.erase(n.outputs[0]);
      continue;
    }
    // A narrowed value's type is stale: inferred again below from its narrower inputs (infer_shapes knows
    // every op of the list; one it did not know would keep a stale type, so none is left).
    if (is_broadcasting_elementwise(n) && !n.outputs.empty() && narrowable.found(n.outputs[0])) g.value_types.erase(n.outputs[0]);
    position[k] = kept.size();
    kept.push_back(std::move(n));
  }
  g.nodes = std::move(kept);
  KILN_RETURN_IF_ERROR(infer_shapes(model));
  for (const auto& [k, before] : masks_before) {
    const ir::Node& n = g.nodes[position.at(k)];
    std::vector<ir::Dim> now;
    if (!dims_of(g, n.inputs[mask_input(n)], &now) || !fits_into(now, before))
      return Internal(n.describe() + ": narrow_attention_mask left its mask '" + n.inputs[mask_input(n)] +
                      "' without a shape that broadcasts to the one it had");
  }
  if (narrowed) *narrowed = static_cast<int>(bypass.size());
  return OkStatus();
}

}  // namespace kiln::passes
