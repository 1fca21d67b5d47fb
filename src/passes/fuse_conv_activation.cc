// Conv fusion: Conv -> [Add(residual)] -> [activation] becomes one kiln.FusedConv, so that the residual sum
// and the activation happen in the convolution's epilogue instead of as kernels of their own, each reading
// and writing the whole activation tensor again (ResNet's blocks end in Conv -> Add -> Relu, MobileNetV2's
// in Conv -> Clip(0, 6)). The activations: Relu, Clip with constant bounds, LeakyRelu, Sigmoid, HardSwish,
// and SiLU written as Mul(y, Sigmoid(y)) (how PyTorch exports nn.SiLU), y read by those two nodes only.
#include <limits>
#include <map>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

bool same_static_type(const ir::TypeInfo* a, const ir::TypeInfo* b) {
  return a != nullptr && b != nullptr && a->kind == ir::TypeInfo::Kind::kTensor && a->is_static() &&
         b->kind == ir::TypeInfo::Kind::kTensor && b->is_static() && a->dtype == b->dtype &&
         a->dtype != DType::kUndefined && a->static_shape() == b->static_shape();
}

// The value of Clip's bound input `name` (opset 11+): unbounded when absent, false when it is not a
// one-element float constant (a computed bound cannot be baked into the fused node).
bool clip_bound(const ir::Graph& g, const std::string& name, float unbounded, float* out) {
  if (name.empty()) {
    *out = unbounded;
    return true;
  }
  const Tensor* t = constant_value(g, name);
  if (t == nullptr || !dtype_is_float(t->dtype()) || t->numel() != 1) return false;
  *out = static_cast<float>(t->scalar_as_double(0));
  return !std::isnan(*out);
}

// What follows a conv's output (or its residual sum) `cur`: the activation nodes the fused conv absorbs,
// in graph order, the FusedConv attributes that say the activation, and the value they produce.
struct ActivationMatch {
  std::vector<size_t> nodes;
  std::map<std::string, ir::Attribute> attributes;
  std::string output;
};

// The activation after `cur`, or false when there is none the fused conv can take.
bool match_activation(const ir::Model& model, const GraphReaders& readers, const std::vector<bool>& absorbed,
                      const std::string& cur, ActivationMatch* m) {
  const ir::Graph& g = model.graph;
  auto set_name = [&](const std::string& name) { m->attributes["activation"] = string_attribute(name); };
  const long next = readers.sole_reader(cur);
  if (next >= 0 && !absorbed[next] && g.nodes[next].outputs.size() == 1 && !g.nodes[next].inputs.empty() &&
      g.nodes[next].inputs[0] == cur) {
    const ir::Node& n = g.nodes[next];
    m->nodes = {static_cast<size_t>(next)};
    m->output = n.outputs[0];
    if (n.inputs.size() == 1 && (is_onnx(n, "Relu") || is_onnx(n, "Sigmoid") || is_onnx(n, "HardSwish"))) {
      set_name(n.op_type);
      return true;
    }
    if (n.inputs.size() == 1 && is_onnx(n, "LeakyRelu")) {
      set_name("LeakyRelu");
      const ir::Attribute* alpha = n.attr("alpha");
      m->attributes["activation_alpha"] = float_attribute(alpha != nullptr ? alpha->f : 0.01f);
      return true;
    }
    if (is_onnx(n, "Clip") && n.inputs.size() <= 3) {
      constexpr float kInf = std::numeric_limits<float>::infinity();
      float lo = -kInf, hi = kInf;
      if (model.default_opset() >= 11) {
        if (!clip_bound(g, n.inputs.size() > 1 ? n.inputs[1] : "", -kInf, &lo) ||
            !clip_bound(g, n.inputs.size() > 2 ? n.inputs[2] : "", kInf, &hi))
          return false;
      } else {
        if (n.inputs.size() != 1) return false;
        if (const ir::Attribute* a = n.attr("min")) lo = a->f;
        if (const ir::Attribute* a = n.attr("max")) hi = a->f;
      }
      set_name("Clip");
      if (lo != -kInf) m->attributes["activation_min"] = float_attribute(lo);
      if (hi != kInf) m->attributes["activation_max"] = float_attribute(hi);
      return true;
    }
  }
  // SiLU: Sigmoid(cur) read only by Mul(cur, Sigmoid(cur)), cur read by nothing else.
  const std::vector<size_t>& cur_readers = readers.readers(cur);
  if (cur_readers.size() != 2 || readers.is_graph_output(cur)) return false;
  for (size_t s : cur_readers) {
    const ir::Node& sig = g.nodes[s];
    if (absorbed[s] || !is_onnx(sig, "Sigmoid") || sig.inputs.size() != 1 || sig.inputs[0] != cur || sig.outputs.size() != 1)
      continue;
    const long mul = readers.sole_reader(sig.outputs[0]);
    if (mul < 0 || absorbed[mul] || mul == static_cast<long>(s)) return false;
    const ir::Node& mn = g.nodes[mul];
    const std::vector<std::string> want1 = {cur, sig.outputs[0]}, want2 = {sig.outputs[0], cur};
    if (!is_onnx(mn, "Mul") || (mn.inputs != want1 && mn.inputs != want2) || mn.outputs.size() != 1) return false;
    const size_t other = cur_readers[0] == s ? cur_readers[1] : cur_readers[0];
    if (other != static_cast<size_t>(mul)) return false;
    m->nodes = {s, static_cast<size_t>(mul)};  // the Mul reads the Sigmoid: it comes later
    m->output = mn.outputs[0];
    set_name("Silu");
    return true;
  }
  return false;
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
    ActivationMatch act;
    if (match_activation(model, readers, absorbed, cur, &act)) {
      chain.insert(chain.end(), act.nodes.begin(), act.nodes.end());
      cur = act.output;
    }
    if (chain.size() == 1) continue;  // a lone Conv gains nothing from becoming a FusedConv

    ir::Node f;
    f.op_type = "FusedConv";
    f.domain = "kiln";
    f.index = conv.index;
    f.attributes = conv.attributes;
    f.attributes["activation"] = string_attribute("");
    for (const auto& [name, value] : act.attributes) f.attributes[name] = value;
    f.attributes["channels_last"] = int_attribute(0);
    f.inputs = {conv.inputs[0], conv.inputs[1], conv.inputs.size() > 2 ? conv.inputs[2] : ""};
    if (!z.empty()) f.inputs.push_back(z);
    while (f.inputs.size() > 2 && f.inputs.back().empty()) f.inputs.pop_back();
    f.outputs = {cur};
    f.name = absorb_chain(g, chain, absorbed);
    // In the last node's place: every input (the residual included) is computed before it, and the values
    // that disappear were read by the chain alone.
    replacement[chain.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
