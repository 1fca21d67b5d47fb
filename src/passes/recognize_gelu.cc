// GELU recognition: exporters for opsets before 20 (which has no Gelu) write GELU out as elementwise ops,
// five to nine kernels each reading and writing the whole activation. This pass finds them and puts back one
// kiln.Gelu (ONNX Gelu, at any opset), which the CUDA backend runs as one kernel and fuse_matmul_bias may
// fold into a GEMM's epilogue (the tanh form).
//   erf form:  0.5 * x * (1 + Erf(x / sqrt(2)))                                  (x * (1/sqrt(2)) too)
//   tanh form: 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))           (x^3 = Pow(x, 3), x*x*x)
// The outer product of x, (1 + ...) and 0.5 is matched in each association exporters write:
// (x * s) * 0.5, (x * 0.5) * s, x * (s * 0.5). Commuted operands match too; constants within 1e-4.
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
  std::string x;
  std::vector<size_t> nodes;  // absorbed, in graph order after sorting, each once
  std::string y;
  std::string approximate;  // kiln.Gelu's: "none" (the erf form) or "tanh"
};

class GeluMatcher {
 public:
  GeluMatcher(const ir::Graph& g, const std::vector<bool>& absorbed) : g_(g), readers_(g), absorbed_(absorbed) {}

  // The GELU whose Erf or Tanh is node k, if node k is one.
  std::optional<Match> at(size_t k) {
    const ir::Node& n = g_.nodes[k];
    if (n.inputs.size() != 1 || n.outputs.size() != 1) return std::nullopt;
    Match m;
    if (is_onnx(n, "Erf")) {
      // x / sqrt(2) or x * (1/sqrt(2))
      const ir::Node* d = inner_producer(n.inputs[0], &m);
      if (d == nullptr || d->inputs.size() != 2) return std::nullopt;
      if (is_onnx(*d, "Div")) {
        if (!scalar(d->inputs[1], std::sqrt(2.0), d->inputs[0])) return std::nullopt;
        m.x = d->inputs[0];
      } else if (!is_onnx(*d, "Mul") || !other_than_scalar(*d, 1.0 / std::sqrt(2.0), &m.x)) {
        return std::nullopt;
      }
      m.approximate = "none";
    } else if (is_onnx(n, "Tanh")) {
      if (!tanh_argument(n.inputs[0], &m)) return std::nullopt;
      m.approximate = "tanh";
    } else {
      return std::nullopt;
    }
    m.nodes.push_back(k);
    if (!outer_product(n.outputs[0], &m)) return std::nullopt;
    std::sort(m.nodes.begin(), m.nodes.end());
    m.nodes.erase(std::unique(m.nodes.begin(), m.nodes.end()), m.nodes.end());
    return m;
  }

 private:
  // The node producing `value` when it is not absorbed yet and `value` is read by it alone (so it may
  // vanish); adds it to m. nullptr otherwise.
  const ir::Node* inner_producer(const std::string& value, Match* m) {
    long reader = readers_.sole_reader(value);
    if (reader < 0) return nullptr;
    for (size_t k = 0; k < g_.nodes.size(); ++k) {
      const ir::Node& n = g_.nodes[k];
      if (n.outputs.size() != 1 || n.outputs[0] != value) continue;
      if (absorbed_[k]) return nullptr;
      m->nodes.push_back(k);
      return &n;
    }
    return nullptr;
  }
  // The node that alone reads `value`, when `value` may vanish and the node is not absorbed; adds it to m.
  const ir::Node* sole_consumer(const std::string& value, Match* m) {
    long reader = readers_.sole_reader(value);
    if (reader < 0 || absorbed_[static_cast<size_t>(reader)]) return nullptr;
    m->nodes.push_back(static_cast<size_t>(reader));
    return &g_.nodes[static_cast<size_t>(reader)];
  }
  bool scalar(const std::string& c, double want, const std::string& other) {
    return is_scalar_near(g_, c, want, known_rank(g_, other));
  }
  // A two-input node (Mul, Add) with a scalar constant ~want on one side: the other input in *other.
  bool other_than_scalar(const ir::Node& n, double want, std::string* other) {
    if (n.inputs.size() != 2) return false;
    for (int i = 0; i < 2; ++i)
      if (scalar(n.inputs[i], want, n.inputs[1 - i])) {
        *other = n.inputs[1 - i];
        return true;
      }
    return false;
  }

  // sqrt(2/pi) * (x + 0.044715 * x^3): sets m->x.
  bool tanh_argument(const std::string& u, Match* m) {
    const ir::Node* scale = inner_producer(u, m);
    std::string sum;
    if (scale == nullptr || !is_onnx(*scale, "Mul") || !other_than_scalar(*scale, 0.7978845608028654 /* sqrt(2 / pi) */, &sum)) return false;
    const ir::Node* add = inner_producer(sum, m);
    if (add == nullptr || !is_onnx(*add, "Add") || add->inputs.size() != 2) return false;
    for (int i = 0; i < 2; ++i) {  // which side is x: the other one must be 0.044715 * x^3
      Match trial = *m;
      const std::string& x = add->inputs[i];
      const ir::Node* cubic = inner_producer(add->inputs[1 - i], &trial);
      std::string x3;
      if (cubic == nullptr || !is_onnx(*cubic, "Mul") || !other_than_scalar(*cubic, 0.044715, &x3)) continue;
      if (!is_cube(x3, x, &trial)) continue;
      trial.x = x;
      *m = trial;
      return true;
    }
    return false;
  }
  // Pow(x, 3), x * (x * x) or (x * x) * x.
  bool is_cube(const std::string& v, const std::string& x, Match* m) {
    const ir::Node* p = inner_producer(v, m);
    if (p == nullptr || p->inputs.size() != 2) return false;
    if (is_onnx(*p, "Pow")) return p->inputs[0] == x && scalar(p->inputs[1], 3.0, x);
    if (!is_onnx(*p, "Mul")) return false;
    for (int i = 0; i < 2; ++i) {
      if (p->inputs[i] != x) continue;
      const ir::Node* sq = inner_producer(p->inputs[1 - i], m);
      return sq != nullptr && is_onnx(*sq, "Mul") && sq->inputs.size() == 2 && sq->inputs[0] == x && sq->inputs[1] == x;
    }
    return false;
  }

  // From Erf's / Tanh's output t: s = 1 + t, then x * s * 0.5 in any association. Sets m->y.
  bool outer_product(const std::string& t, Match* m) {
    const ir::Node* one = sole_consumer(t, m);
    std::string t_again;
    if (one == nullptr || !is_onnx(*one, "Add") || !other_than_scalar(*one, 1.0, &t_again) || t_again != t) return false;
    const std::string s = one->outputs[0];
    const ir::Node* m1 = sole_consumer(s, m);
    if (m1 == nullptr || !is_onnx(*m1, "Mul") || m1->inputs.size() != 2) return false;
    const std::string& p = m1->inputs[0] == s ? m1->inputs[1] : m1->inputs[0];
    if (p == s) return false;
    std::string rest;
    if (p == m->x || scalar(p, 0.5, s)) {
      // (x * s) * 0.5 or x * (s * 0.5): one more Mul by what is missing.
      const ir::Node* m2 = sole_consumer(m1->outputs[0], m);
      if (m2 == nullptr || !is_onnx(*m2, "Mul") || m2->inputs.size() != 2) return false;
      const std::string& q = m2->inputs[0] == m1->outputs[0] ? m2->inputs[1] : m2->inputs[0];
      const bool ok = p == m->x ? scalar(q, 0.5, m1->outputs[0]) : q == m->x;
      if (!ok) return false;
      m->y = m2->outputs[0];
      return true;
    }
    // (x * 0.5) * s: p comes from a Mul of x by 0.5 that only this product reads.
    const ir::Node* half = inner_producer(p, m);
    if (half == nullptr || !is_onnx(*half, "Mul") || !other_than_scalar(*half, 0.5, &rest) || rest != m->x) return false;
    m->y = m1->outputs[0];
    return true;
  }

  const ir::Graph& g_;
  GraphReaders readers_;
  const std::vector<bool>& absorbed_;
};

}  // namespace

Status recognize_gelu(ir::Model& model, int* found) {
  ir::Graph& g = model.graph;
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the pattern's last node -> the kiln.Gelu
  GeluMatcher matcher(g, absorbed);
  KILN_RETURN_IF_ERROR(replace_matches(
      g, absorbed, replacement, [&](size_t k) { return matcher.at(k); },
      [](const Match& m, ir::Node& gelu) {
        gelu.op_type = "Gelu";
        gelu.domain = "kiln";
        gelu.inputs = {m.x};
        gelu.outputs = {m.y};
        gelu.attributes["approximate"] = string_attribute(m.approximate);
        return OkStatus();
      }));
  if (found) *found = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
