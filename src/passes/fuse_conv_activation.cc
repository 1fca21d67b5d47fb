// Conv fusion: Conv -> [Add(residual)] -> [Relu] becomes one kiln.FusedConv, so that the residual sum and
// the activation happen in the convolution's epilogue instead of as kernels of their own, each reading and
// writing the whole activation tensor again (ResNet's blocks end in Conv -> Add -> Relu).
#include <map>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

bool is_onnx(const ir::Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

bool same_static_type(const ir::TypeInfo* a, const ir::TypeInfo* b) {
  return a != nullptr && b != nullptr && a->kind == ir::TypeInfo::Kind::kTensor && a->is_static() &&
         b->kind == ir::TypeInfo::Kind::kTensor && b->is_static() && a->dtype == b->dtype &&
         a->dtype != DType::kUndefined && a->static_shape() == b->static_shape();
}

}  // namespace

Status fuse_conv_activation(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  // A link of the chain may be absorbed only when the chain is its sole reader and it is no graph output,
  // or the intermediate value would vanish under someone.
  const GraphReaders readers(g);

  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the chain's last node -> the fused node
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& conv = g.nodes[k];
    if (!is_onnx(conv, "Conv") || absorbed[k] || conv.outputs.size() != 1 || conv.inputs.size() < 2) continue;
    std::vector<size_t> chain = {k};
    std::string z;
    std::string cur = conv.outputs[0];
    long next = readers.sole_reader(cur);
    if (next >= 0 && !absorbed[next] && is_onnx(g.nodes[next], "Add") && g.nodes[next].inputs.size() == 2) {
      const ir::Node& add = g.nodes[next];
      const std::string& other = add.inputs[0] == cur ? add.inputs[1] : add.inputs[0];
      // The residual must match the conv output exactly: the fused epilogue does not broadcast.
      if (other != cur && !other.empty() && same_static_type(g.type_of(cur), g.type_of(other))) {
        chain.push_back(static_cast<size_t>(next));
        z = other;
        cur = add.outputs[0];
        next = readers.sole_reader(cur);
      }
    }
    std::string activation;
    if (next >= 0 && !absorbed[next] && is_onnx(g.nodes[next], "Relu") && g.nodes[next].inputs.size() == 1) {
      chain.push_back(static_cast<size_t>(next));
      activation = "Relu";
      cur = g.nodes[next].outputs[0];
    }
    if (chain.size() == 1) continue;  // a lone Conv gains nothing from becoming a FusedConv

    ir::Node f;
    f.op_type = "FusedConv";
    f.domain = "kiln";
    f.index = conv.index;
    f.attributes = conv.attributes;
    f.attributes["activation"].type = ir::Attribute::Type::kString;
    f.attributes["activation"].s = activation;
    f.attributes["channels_last"].type = ir::Attribute::Type::kInt;
    f.attributes["channels_last"].i = 0;
    f.inputs = {conv.inputs[0], conv.inputs[1], conv.inputs.size() > 2 ? conv.inputs[2] : ""};
    if (!z.empty()) f.inputs.push_back(z);
    while (f.inputs.size() > 2 && f.inputs.back().empty()) f.inputs.pop_back();
    f.outputs = {cur};
    for (size_t c : chain) {
      f.name += (f.name.empty() ? "" : " + ") + g.nodes[c].name;
      absorbed[c] = true;
      if (c != chain.back()) g.value_types.erase(g.nodes[c].outputs[0]);  // gone with its node
    }
    // In the last node's place: every input (the residual included) is computed before it, and the values
    // that disappear were read by the chain alone.
    replacement[chain.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
