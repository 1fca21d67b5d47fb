// LayerNorm recognition: exporters (torch before opset 17, TF converters, hand-written models) write a
// LayerNorm over the last axis out as eight to ten elementwise and reduction ops, each reading and writing
// the whole activation:
//   m = ReduceMean(x, axes=[-1]); d = Sub(x, m); v = ReduceMean(Pow(d, 2) | Mul(d, d), axes=[-1]);
//   n = Div(d, Sqrt(Add(v, eps))); y = Add(Mul(n, gamma), beta)          (gamma, beta optional; either order)
// This pass puts back one ONNX LayerNormalization (axis -1, epsilon eps), which the CPU reference and the CUDA
// backend each run as one kernel. ONNX has LayerNormalization from opset 17 only, so models of older opsets
// keep their decomposition. ReduceMean's axes are an attribute before opset 18 and an input from 18 on; both
// match when they name the last axis alone (as -1 or rank - 1) with keepdims 1. gamma and beta must be
// constants of shape [C], C the last dim of x, and of x's dtype; every intermediate value is read by the
// pattern alone (the Sub's output by the Pow/Mul and the Div).
#include <algorithm>
#include <map>
#include <optional>
#include <vector>

#include "core/cast.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

struct Match {
  std::string x, y, gamma, beta;
  double eps = 0;
  std::vector<size_t> nodes;  // absorbed
};

class LayerNormMatcher {
 public:
  explicit LayerNormMatcher(const ir::Graph& g) : g_(g), readers_(g) {}

  // The LayerNorm whose first ReduceMean (the mean of x) is node k, if there is one.
  std::optional<Match> at(size_t k) {
    const ir::Node& mean = g_.nodes[k];
    Match m;
    if (!is_onnx(mean, "ReduceMean") || mean.outputs.size() != 1 || mean.inputs.empty()) return std::nullopt;
    m.x = mean.inputs[0];
    std::vector<ir::Dim> xd;
    const DType dt = dtype_of(g_, m.x);
    if (!dims_of(g_, m.x, &xd) || xd.empty() || !xd.back().known() || !dtype_is_float(dt)) return std::nullopt;
    const int64_t rank = static_cast<int64_t>(xd.size()), c = xd.back().value;
    if (!over_last_axis(mean, rank)) return std::nullopt;
    m.nodes.push_back(k);

    const ir::Node* sub = consumer(mean.outputs[0], &m);
    if (sub == nullptr || !is_onnx(*sub, "Sub") || sub->inputs.size() != 2 || sub->inputs[0] != m.x ||
        sub->inputs[1] != mean.outputs[0])
      return std::nullopt;
    const std::string& d = sub->outputs[0];
    // d is read twice: by the square and by the Div, and by nothing else.
    const std::vector<size_t>& d_readers = readers_.readers(d);
    if (readers_.is_graph_output(d) || d_readers.size() != 2) return std::nullopt;
    const ir::Node* square = nullptr;
    const ir::Node* div = nullptr;
    for (size_t r : d_readers) {
      const ir::Node& n = g_.nodes[r];
      if (n.inputs.size() != 2 || n.outputs.size() != 1) return std::nullopt;
      if (is_onnx(n, "Div") && n.inputs[0] == d && n.inputs[1] != d) div = &n;
      else if (is_onnx(n, "Mul") && n.inputs[0] == d && n.inputs[1] == d) square = &n;
      else if (is_onnx(n, "Pow") && n.inputs[0] == d && is_scalar_near(g_, n.inputs[1], 2.0, rank)) square = &n;
      else return std::nullopt;
      m.nodes.push_back(r);
    }
    if (square == nullptr || div == nullptr) return std::nullopt;

    const ir::Node* var = consumer(square->outputs[0], &m);
    if (var == nullptr || !is_onnx(*var, "ReduceMean") || var->inputs[0] != square->outputs[0] ||
        !over_last_axis(*var, rank))
      return std::nullopt;
    const ir::Node* add = consumer(var->outputs[0], &m);
    if (add == nullptr || !is_onnx(*add, "Add") || add->inputs.size() != 2) return std::nullopt;
    const std::string& eps = add->inputs[0] == var->outputs[0] ? add->inputs[1] : add->inputs[0];
    const Tensor* e = constant_value(g_, eps);  // one float that leaves v's shape as it is
    if (eps == var->outputs[0] || e == nullptr || e->numel() != 1) return std::nullopt;
    m.eps = e->scalar_as_double(0);
    if (!(m.eps >= 0) || !is_scalar_near(g_, eps, m.eps, rank)) return std::nullopt;
    const ir::Node* sqrt = consumer(add->outputs[0], &m);
    if (sqrt == nullptr || !is_onnx(*sqrt, "Sqrt") || sqrt->outputs.size() != 1) return std::nullopt;
    if (readers_.sole_reader(sqrt->outputs[0]) < 0 || div->inputs[1] != sqrt->outputs[0]) return std::nullopt;
    m.y = div->outputs[0];

    // The optional affine tail: * gamma, then + beta (each either order).
    if (const ir::Node* mul = affine(m.y, "Mul", c, dt, &m.gamma)) {
      m.nodes.push_back(static_cast<size_t>(readers_.sole_reader(m.y)));
      m.y = mul->outputs[0];
    }
    if (const ir::Node* bias = affine(m.y, "Add", c, dt, &m.beta)) {
      m.nodes.push_back(static_cast<size_t>(readers_.sole_reader(m.y)));
      m.y = bias->outputs[0];
    }
    std::sort(m.nodes.begin(), m.nodes.end());
    return m;
  }

 private:
  // Whether a ReduceMean reduces x's last axis alone and keeps it (axes from the attribute, or input 1).
  bool over_last_axis(const ir::Node& n, int64_t rank) const {
    if (n.outputs.size() != 1) return false;
    if (const ir::Attribute* keep = n.attr("keepdims"); keep != nullptr && keep->i != 1) return false;
    std::vector<int64_t> axes;
    if (n.inputs.size() > 1 && !n.inputs[1].empty()) {
      const Tensor* t = constant_value(g_, n.inputs[1]);
      if (t == nullptr || !dtype_is_integer(t->dtype())) return false;
      axes = t->to_int64_vector();
    } else if (const ir::Attribute* a = n.attr("axes")) {
      axes = a->ints;
    }
    return axes.size() == 1 && (axes[0] == -1 || axes[0] == rank - 1);
  }
  // The node that alone reads `value` (no graph output); adds it to m.
  const ir::Node* consumer(const std::string& value, Match* m) {
    const long r = readers_.sole_reader(value);
    if (r < 0) return nullptr;
    const ir::Node& n = g_.nodes[static_cast<size_t>(r)];
    if (n.outputs.size() != 1 || n.inputs.empty()) return nullptr;
    m->nodes.push_back(static_cast<size_t>(r));
    return &n;
  }
  // The `op` (Mul or Add) that alone reads `value`, with a [c] constant of dtype dt on its other side (in *param).
  const ir::Node* affine(const std::string& value, const char* op, int64_t c, DType dt, std::string* param) const {
    const long r = readers_.sole_reader(value);
    if (r < 0) return nullptr;
    const ir::Node& n = g_.nodes[static_cast<size_t>(r)];
    if (!is_onnx(n, op) || n.inputs.size() != 2 || n.outputs.size() != 1) return nullptr;
    const std::string& other = n.inputs[0] == value ? n.inputs[1] : n.inputs[0];
    const Tensor* t = constant_value(g_, other);
    if (other == value || t == nullptr || t->dtype() != dt || t->rank() != 1 || t->dim(0) != c) return nullptr;
    *param = other;
    return &n;
  }

  const ir::Graph& g_;
  GraphReaders readers_;
};

}  // namespace

Status recognize_layer_norm(ir::Model& model, int* found) {
  if (found) *found = 0;
  if (model.default_opset() < 17) return OkStatus();  // no LayerNormalization to put back
  ir::Graph& g = model.graph;
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the pattern's last node -> the LayerNormalization
  LayerNormMatcher matcher(g);
  FreshNames fresh(g);
  KILN_RETURN_IF_ERROR(replace_matches(
      g, absorbed, replacement, [&](size_t k) { return matcher.at(k); },
      [&](Match& m, ir::Node& ln) -> Status {
        if (m.gamma.empty()) {  // LayerNormalization's Scale is required: ones
          std::vector<ir::Dim> xd;
          (void)dims_of(g, m.x, &xd);
          const std::string name = fresh(m.y + "__layer_norm_scale");
          Tensor ones(DType::kFloat64, {xd.back().value});
          std::fill(ones.data<double>(), ones.data<double>() + ones.numel(), 1.0);
          KILN_ASSIGN_OR_RETURN(g.initializers[name], cast_tensor(ones, dtype_of(g, m.x)));
          m.gamma = name;
        }
        ln.op_type = "LayerNormalization";
        ln.inputs = {m.x, m.gamma};
        if (!m.beta.empty()) ln.inputs.push_back(m.beta);
        ln.outputs = {m.y};
        ln.attributes["axis"] = int_attribute(-1);
        ln.attributes["epsilon"] = float_attribute(static_cast<float>(m.eps));
        return OkStatus();
      }));
  if (found) *found = static_cast<int>(replacement.size());
  const bool had_kiln = model.opsets.count("kiln") > 0;
  splice_fused_nodes(model, replacement, absorbed);
  if (!had_kiln) model.opsets.erase("kiln");  // the LayerNormalization is ONNX's own
  return OkStatus();
}

}  // namespace kiln::passes
