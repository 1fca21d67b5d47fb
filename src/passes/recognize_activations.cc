// Activation recognition: exporters write SiLU and HardSwish out as two to five elementwise ops (torch's
// nn.SiLU before ONNX had Swish, MobileNetV3's and YOLO's hard-swish before opset 14, or by hand), each a
// kernel reading and writing the whole activation. This pass puts back one op:
//   SiLU:      x * Sigmoid(x)                                           -> Swish (alpha 1)
//   HardSwish: x * HardSigmoid(x, alpha = 1/6, beta = 0.5)
//              x * Clip(x + 3, 0, 6) / 6, as (x * c) / 6, (x * c) * (1/6), x * (c / 6) or x * (c * (1/6))
//                                                                       -> HardSwish
// (commuted operands match too; constants within 1e-4). ONNX has Swish from opset 24: older models get
// kiln.Swish, the same op in Kiln's domain (the CPU reference and the CUDA layer are ONNX Swish's). ONNX
// HardSwish exists from opset 14, and older models keep their decomposition. Every intermediate value must
// be read by the pattern alone.
#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

struct Match {
  std::string op;  // Swish or HardSwish
  std::string x, y;
  std::vector<size_t> nodes;  // absorbed
};

class ActivationMatcher {
 public:
  ActivationMatcher(const ir::Graph& g, int opset) : g_(g), readers_(g), opset_(opset) {}

  std::optional<Match> at(size_t k) {
    const ir::Node& n = g_.nodes[k];
    if (n.outputs.size() != 1 || n.inputs.empty()) return std::nullopt;
    Match m;
    m.nodes.push_back(k);
    m.x = n.inputs[0];
    if (is_onnx(n, "Sigmoid") && n.inputs.size() == 1) {
      m.op = "Swish";
      if (!times_x(n.outputs[0], &m)) return std::nullopt;
    } else if (opset_ >= 14 && is_onnx(n, "HardSigmoid") && n.inputs.size() == 1) {
      if (!near(attr_float(n, "alpha", 0.2f), 1.0 / 6) || !near(attr_float(n, "beta", 0.5f), 0.5)) return std::nullopt;
      m.op = "HardSwish";
      if (!times_x(n.outputs[0], &m)) return std::nullopt;
    } else if (opset_ >= 14 && is_onnx(n, "Add") && n.inputs.size() == 2) {
      if (!other_than_scalar(n, 3.0, &m.x) || !clip_to_hard_swish(n.outputs[0], &m)) return std::nullopt;
      m.op = "HardSwish";
    } else {
      return std::nullopt;
    }
    std::sort(m.nodes.begin(), m.nodes.end());
    return m;
  }

 private:
  static float attr_float(const ir::Node& n, const char* name, float fallback) {
    const ir::Attribute* a = n.attr(name);
    return a != nullptr && a->type == ir::Attribute::Type::kFloat ? a->f : fallback;
  }
  static bool near(double v, double want) { return std::fabs(v - want) <= 1e-4 * std::max(1.0, std::fabs(want)); }

  // The node that alone reads `value` (no graph output), with one output; adds it to m.
  const ir::Node* consumer(const std::string& value, Match* m) {
    const long r = readers_.sole_reader(value);
    if (r < 0) return nullptr;
    const ir::Node& n = g_.nodes[static_cast<size_t>(r)];
    if (n.outputs.size() != 1) return nullptr;
    m->nodes.push_back(static_cast<size_t>(r));
    return &n;
  }
  bool scalar(const std::string& c, double want, const std::string& other) const {
    return is_scalar_near(g_, c, want, known_rank(g_, other));
  }
  // A two-input node with a scalar constant ~want on one side: the other input in *other.
  bool other_than_scalar(const ir::Node& n, double want, std::string* other) const {
    if (n.inputs.size() != 2) return false;
    for (int i = 0; i < 2; ++i)
      if (scalar(n.inputs[i], want, n.inputs[1 - i])) {
        *other = n.inputs[1 - i];
        return true;
      }
    return false;
  }
  // The node alone reading `value` is Mul(value, x) in either order: sets m->y.
  bool times_x(const std::string& value, Match* m) {
    const ir::Node* mul = consumer(value, m);
    if (mul == nullptr || !is_onnx(*mul, "Mul") || mul->inputs.size() != 2 || value == m->x) return false;
    const bool ok = (mul->inputs[0] == value && mul->inputs[1] == m->x) ||
                    (mul->inputs[1] == value && mul->inputs[0] == m->x);
    if (ok) m->y = mul->outputs[0];
    return ok;
  }
  // The node alone reading `value` divides it by 6 (Div by 6, or Mul by 1/6 in either order): its output.
  const ir::Node* over_six(const std::string& value, Match* m) {
    const ir::Node* n = consumer(value, m);
    if (n == nullptr || n->inputs.size() != 2) return nullptr;
    std::string rest;
    if (is_onnx(*n, "Div")) return n->inputs[0] == value && scalar(n->inputs[1], 6.0, value) ? n : nullptr;
    return is_onnx(*n, "Mul") && other_than_scalar(*n, 1.0 / 6, &rest) && rest == value ? n : nullptr;
  }
  // From x + 3: Clip(., 0, 6), then the product with x and the division by 6 in either order. Sets m->y.
  bool clip_to_hard_swish(const std::string& shifted, Match* m) {
    const ir::Node* clip = consumer(shifted, m);
    if (clip == nullptr || !is_onnx(*clip, "Clip") || clip->inputs[0] != shifted || !clips_to_0_6(*clip)) return false;
    const std::string c = clip->outputs[0];
    const long r = readers_.sole_reader(c);
    if (r < 0) return false;
    if (is_onnx(g_.nodes[static_cast<size_t>(r)], "Mul") && g_.nodes[static_cast<size_t>(r)].inputs.size() == 2 &&
        (g_.nodes[static_cast<size_t>(r)].inputs[0] == m->x || g_.nodes[static_cast<size_t>(r)].inputs[1] == m->x)) {
      // (x * c) / 6
      if (!times_x(c, m)) return false;
      const ir::Node* six = over_six(m->y, m);
      if (six == nullptr) return false;
      m->y = six->outputs[0];
      return true;
    }
    // x * (c / 6)
    const ir::Node* six = over_six(c, m);
    return six != nullptr && times_x(six->outputs[0], m);
  }
  // Clip's bounds are 0 and 6: constant inputs from opset 11, attributes before.
  bool clips_to_0_6(const ir::Node& clip) const {
    if (clip.inputs.size() == 3 && !clip.inputs[1].empty() && !clip.inputs[2].empty())
      return scalar(clip.inputs[1], 0.0, clip.inputs[0]) && scalar(clip.inputs[2], 6.0, clip.inputs[0]);
    const ir::Attribute* lo = clip.attr("min");
    const ir::Attribute* hi = clip.attr("max");
    return clip.inputs.size() == 1 && lo != nullptr && hi != nullptr && near(lo->f, 0.0) && near(hi->f, 6.0);
  }

  const ir::Graph& g_;
  GraphReaders readers_;
  int opset_;
};

}  // namespace

Status recognize_activations(ir::Model& model, int* found) {
  ir::Graph& g = model.graph;
  const int opset = model.default_opset();
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the pattern's last node -> the activation
  ActivationMatcher matcher(g, opset);
  bool kiln_op = false;
  KILN_RETURN_IF_ERROR(replace_matches(
      g, absorbed, replacement, [&](size_t k) { return matcher.at(k); },
      [&](const Match& m, ir::Node& act) {
        act.op_type = m.op;
        if (m.op == "Swish" && opset < 24) {  // kiln.Swish: ONNX Swish at any opset
          act.domain = "kiln";
          kiln_op = true;
        }
        act.inputs = {m.x};
        act.outputs = {m.y};
        return OkStatus();
      }));
  if (found) *found = static_cast<int>(replacement.size());
  const bool had_kiln = model.opsets.count("kiln") > 0;
  splice_fused_nodes(model, replacement, absorbed);
  if (!had_kiln && !kiln_op) model.opsets.erase("kiln");  // only ONNX ops were put back
  return OkStatus();
}

}  // namespace kiln::passes
