// What the fusion passes ask of a graph before absorbing a node into a fused one: who reads a value (a link
// of a fused chain may vanish only when the chain is its sole reader and it is no graph output) and which
// node computes it, and the value of a scalar constant operand (GELU's 0.5 and sqrt(2), a bias); and the
// steps that put a fused node in its chain's place.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ir/graph.h"
#include "kiln/status.h"
#include "passes/symbolic_dims.h"
#include "runtime/executor.h"

namespace kiln::passes {

// Whether `n` is the op `op` of ONNX's default domain, or of Kiln's own ("kiln": the fused ops).
inline bool is_onnx(const ir::Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }
inline bool is_kiln(const ir::Node& n, const char* op) { return n.domain == "kiln" && n.op_type == op; }

class GraphReaders {
 public:
  explicit GraphReaders(const ir::Graph& g) {
    for (size_t k = 0; k < g.nodes.size(); ++k) {
      for (const auto& v : runtime::node_reads(g.nodes[k])) readers_[v].push_back(k);  // subgraph reads too
      for (const auto& o : g.nodes[k].outputs) producers_[o] = k;
    }
    for (const auto& o : g.outputs) graph_outputs_.insert(o.name);
  }
  // The one node that reads `value`; -1 when none or several do, or the value is a graph output.
  long sole_reader(const std::string& value) const {
    if (value.empty() || graph_outputs_.count(value)) return -1;
    auto it = readers_.find(value);
    return it != readers_.end() && it->second.size() == 1 ? static_cast<long>(it->second[0]) : -1;
  }
  // Every node that reads `value`, each once and in graph order, whether or not it is a graph output: the
  // patterns with a value read twice inside them (SiLU's y, LayerNorm's x - mean, the masked softmax's P)
  // ask this together with is_graph_output.
  const std::vector<size_t>& readers(const std::string& value) const {
    static const std::vector<size_t> kNone;
    auto it = readers_.find(value);
    return it != readers_.end() ? it->second : kNone;
  }
  bool is_graph_output(const std::string& value) const { return graph_outputs_.count(value) != 0; }
  // The node that computes `value`; -1 for a graph input, an initializer or an unknown name.
  long producer(const std::string& value) const {
    auto it = producers_.find(value);
    return it != producers_.end() ? static_cast<long>(it->second) : -1;
  }

 private:
  std::map<std::string, std::vector<size_t>> readers_;
  std::set<std::string> graph_outputs_;
  std::map<std::string, size_t> producers_;
};

// The constant tensor `name` holds: an initializer that is not a graph input (an input with a default
// can be overridden at run time), or the value of a Constant node; nullptr otherwise.
inline const Tensor* constant_value(const ir::Graph& g, const std::string& name) {
  if (name.empty()) return nullptr;
  for (const auto& in : g.inputs)
    if (in.name == name) return nullptr;
  if (auto it = g.initializers.find(name); it != g.initializers.end()) return &it->second;
  for (const auto& n : g.nodes) {
    if (n.outputs.size() != 1 || n.outputs[0] != name) continue;
    const ir::Attribute* v = n.attr("value");
    if (n.domain.empty() && n.op_type == "Constant" && v != nullptr && v->type == ir::Attribute::Type::kTensor) return &v->t;
    return nullptr;
  }
  return nullptr;
}

// A value's dims when its rank is known (an initializer's are all known); false otherwise.
inline bool dims_of(const ir::Graph& g, const std::string& name, std::vector<ir::Dim>* out) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) {
    out->clear();
    for (int64_t d : it->second.shape()) out->push_back(ir::Dim::of(d));
    return true;
  }
  const ir::TypeInfo* t = g.type_of(name);
  if (t == nullptr || t->kind != ir::TypeInfo::Kind::kTensor || !t->has_shape) return false;
  *out = t->dims;
  return true;
}

// A value's element type, kUndefined when not known.
inline DType dtype_of(const ir::Graph& g, const std::string& name) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) return it->second.dtype();
  const ir::TypeInfo* t = g.type_of(name);
  return t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor ? t->dtype : DType::kUndefined;
}

// Whether `mask` broadcasts against `x` leaving x's shape as it is: no more dims, each of its dims 1 or
// equal to x's (the same number, or the same symbol: a [batch,1,seq,seq] mask into [batch,H,seq,seq]
// scores), and the same dtype where both are known (an Add of the two needs one). The masks of attention
// scores.
inline bool mask_broadcasts_into(const ir::Graph& g, const std::string& x, const std::string& mask) {
  std::vector<ir::Dim> xd, md;
  if (!dims_of(g, x, &xd) || !dims_of(g, mask, &md) || md.size() > xd.size()) return false;
  for (size_t i = 0; i < md.size(); ++i) {
    const ir::Dim& m = md[i];
    const ir::Dim& d = xd[xd.size() - md.size() + i];
    if (!(m.known() && m.value == 1) && !same_dim(m, d)) return false;
  }
  const DType xt = dtype_of(g, x), mt = dtype_of(g, mask);
  return xt == DType::kUndefined || mt == DType::kUndefined || xt == mt;
}

// The rank of a value when known, else -1.
inline int64_t known_rank(const ir::Graph& g, const std::string& name) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) return it->second.rank();
  const ir::TypeInfo* t = g.type_of(name);
  return t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor && t->has_shape ? static_cast<int64_t>(t->dims.size()) : -1;
}

// Whether `name` is a float constant of one element within 1e-4 (relative to max(1, |want|)) of `want`
// that, broadcast against an operand of rank `other_rank` (-1: unknown), leaves that operand's shape as it
// is: rank 0, or rank 1 against an operand known to be at least 1-D.
inline bool is_scalar_near(const ir::Graph& g, const std::string& name, double want, int64_t other_rank) {
  const Tensor* t = constant_value(g, name);
  if (t == nullptr || !dtype_is_float(t->dtype()) || t->numel() != 1 || t->rank() > 1) return false;
  if (t->rank() == 1 && other_rank < 1) return false;
  const double v = t->scalar_as_double(0);
  return std::fabs(v - want) <= 1e-4 * std::max(1.0, std::fabs(want));
}

// A node's attribute of one type, or `fallback` when it has none of that name and type.
inline int64_t int_attr_or(const ir::Node& n, const char* name, int64_t fallback) {
  const ir::Attribute* a = n.attr(name);
  return a != nullptr && a->type == ir::Attribute::Type::kInt ? a->i : fallback;
}
inline std::vector<int64_t> ints_attr_or(const ir::Node& n, const char* name, std::vector<int64_t> fallback) {
  const ir::Attribute* a = n.attr(name);
  return a != nullptr && a->type == ir::Attribute::Type::kInts ? a->ints : fallback;
}
inline std::string string_attr_or(const ir::Node& n, const char* name, const std::string& fallback) {
  const ir::Attribute* a = n.attr(name);
  return a != nullptr && a->type == ir::Attribute::Type::kString ? a->s : fallback;
}

// Whether a conv's window is one the CUDA stem kernel (cuda.conv.stem) takes: output channels `m` a multiple
// of 32, at most 7x7 (kh x kw), no dilation. convert_conv_layout pads such a stride-2 stem's input to 4
// channels for that kernel, and fuse_conv_pool fuses its max pool into it.
inline bool stem_kernel_window(const ir::Node& conv, int64_t m, int64_t kh, int64_t kw) {
  const ir::Attribute* dilations = conv.attr("dilations");
  const bool undilated = dilations == nullptr || dilations->ints == std::vector<int64_t>{1, 1};
  return m % 32 == 0 && kh <= 7 && kw <= 7 && undilated;
}

// Whether two 1x1 convs X [.., c0] -> Y [.., c1] -> Y2 [.., c2] fit the CUDA kernel of kiln.FusedConvPair
// (cuda.conv.pair in backends/cuda/conv_pair.cu), whose limits this mirrors: every channel count a positive
// multiple of 64 (its warps' tiles), c1 at most 256 (Y's tile row), and both weights in half precision,
// 2 * (c0 * c1 + c1 * c2) bytes, within 96 KiB, resident in shared memory beside the tiles. fuse_conv_pair
// fuses only such pairs, so that the fused node never lacks a GPU tactic.
inline bool conv_pair_fits(int64_t c0, int64_t c1, int64_t c2) {
  for (int64_t c : {c0, c1, c2})
    if (c <= 0 || c % 64 != 0 || c > 98304) return false;  // the bound keeps the products below from overflowing
  return c1 <= 256 && 2 * (c0 * c1 + c1 * c2) <= 98304;
}

// The attributes of the nodes a pass makes.
inline ir::Attribute int_attribute(int64_t v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInt;
  a.i = v;
  return a;
}
inline ir::Attribute float_attribute(float v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kFloat;
  a.f = v;
  return a;
}
inline ir::Attribute ints_attribute(std::vector<int64_t> v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInts;
  a.ints = std::move(v);
  return a;
}
inline ir::Attribute string_attribute(std::string v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kString;
  a.s = std::move(v);
  return a;
}

// Names for the values and initializers a pass adds that clash with none of the graph's (its inputs,
// outputs, initializers and node outputs) nor with one given out before: `base`, else base_1, base_2, ...
class FreshNames {
 public:
  explicit FreshNames(const ir::Graph& g) {
    for (const auto& v : g.inputs) taken_.insert(v.name);
    for (const auto& v : g.outputs) taken_.insert(v.name);
    for (const auto& [name, t] : g.initializers) taken_.insert(name);
    for (const auto& n : g.nodes)
      for (const auto& o : n.outputs) taken_.insert(o);
  }
  std::string operator()(const std::string& base) {
    std::string name = base;
    for (int i = 1; taken_.count(name); ++i) name = base + "_" + std::to_string(i);
    taken_.insert(name);
    return name;
  }

 private:
  std::set<std::string> taken_;
};

// "conv1 + add1 + relu1" -> {"conv1", "add1", "relu1"}: the layers a fused layer was made from (absorb_chain
// joins them).
inline std::vector<std::string> name_parts(const std::string& name) {
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t plus = name.find(" + ", at);
    parts.push_back(name.substr(at, plus == std::string::npos ? std::string::npos : plus - at));
    if (plus == std::string::npos) return parts;
    at = plus + 3;
  }
}

// Marks `chain` (the positions of the nodes one fused node replaces, in graph order; the fused node takes the
// last one's place) absorbed and returns the fused node's name: theirs joined by " + ", so that a
// --layer-precision pin of any of them still finds it. The values of all but the last vanish, and their
// types with them.
inline std::string absorb_chain(ir::Graph& g, const std::vector<size_t>& chain, std::vector<bool>& absorbed) {
  std::string name;
  for (size_t i : chain) {
    absorbed[i] = true;
    name += (name.empty() ? "" : " + ") + g.nodes[i].name;
    if (i != chain.back())
      for (const auto& o : g.nodes[i].outputs) g.value_types.erase(o);
  }
  return name;
}

// The loop of the recognition passes (recognize_gelu, recognize_layer_norm, recognize_activations): at each
// node not absorbed yet, in graph order, `match_at(k)` gives the pattern found there if any (a std::optional
// of a struct whose `nodes` are the positions it replaces, in graph order, each once). A pattern that shares
// a node with one taken before is passed over; each other one is absorbed (absorb_chain) and replaced, at its
// last node's place, by the node `make(match, node)` completes: node comes with its name and ONNX index,
// make sets its op, inputs, outputs and attributes, and may fail (a new initializer's cast). The
// replacements are splice_fused_nodes's.
template <typename MatchAt, typename Make>
Status replace_matches(ir::Graph& g, std::vector<bool>& absorbed, std::map<size_t, ir::Node>& replacement,
                       MatchAt&& match_at, Make&& make) {
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (absorbed[k]) continue;
    auto m = match_at(k);
    if (!m || std::any_of(m->nodes.begin(), m->nodes.end(), [&](size_t i) { return absorbed[i]; })) continue;
    ir::Node node;
    node.name = absorb_chain(g, m->nodes, absorbed);
    node.index = g.nodes[m->nodes.back()].index;
    KILN_RETURN_IF_ERROR(make(*m, node));
    replacement[m->nodes.back()] = std::move(node);
  }
  return OkStatus();
}

// The last step of every fusion pass: each fused node takes the place of the last node of the chain it
// replaces (its inputs, a residual or mask included, are all computed before that node, and the chain's
// intermediate values had the chain as their only readers), the other absorbed nodes go, and the model
// gains Kiln's own op domain.
inline void splice_fused_nodes(ir::Model& model, std::map<size_t, ir::Node>& replacement,
                               const std::vector<bool>& absorbed) {
  if (replacement.empty()) return;
  ir::Graph& g = model.graph;
  std::vector<ir::Node> nodes;
  nodes.reserve(g.nodes.size());
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (auto it = replacement.find(k); it != replacement.end()) nodes.push_back(std::move(it->second));
    else if (!absorbed[k]) nodes.push_back(std::move(g.nodes[k]));
  }
  g.nodes = std::move(nodes);
  model.opsets["kiln"] = 1;
}

// The passes that find data movement moving no data (transpose_to_reshape, identity_gather_to_reshape): each
// default-domain `op` node for which `moves_nothing(g, node)` is true becomes Reshape(its input 0, a new
// int64 initializer "<output>__shape") to its output dims, a view, its attributes dropped. Only where those
// dims make a Reshape target: the known ones and at most one unknown (-1), no 0 (which a Reshape target
// reads as the input's dim); and from opset 5 (Reshape took its shape as an attribute before). Returns the
// number rewritten.
template <typename MovesNothing>
int rewrite_as_reshapes(ir::Model& model, const char* op, MovesNothing&& moves_nothing) {
  ir::Graph& g = model.graph;
  if (model.default_opset() < 5) return 0;
  FreshNames fresh(g);
  int count = 0;
  for (ir::Node& n : g.nodes) {
    std::vector<ir::Dim> out;
    if (!is_onnx(n, op) || n.inputs.empty() || n.outputs.size() != 1 || !dims_of(g, n.outputs[0], &out) ||
        !moves_nothing(g, n))
      continue;
    std::vector<int64_t> target;
    int unknown = 0;
    for (const ir::Dim& d : out) {
      if ((!d.known() && ++unknown > 1) || (d.known() && d.value == 0)) break;
      target.push_back(d.known() ? d.value : -1);
    }
    if (target.size() != out.size()) continue;
    const std::string shape = fresh(n.outputs[0] + "__shape");
    g.initializers[shape] = Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(target.size())}, target);
    n.op_type = "Reshape";
    n.inputs = {n.inputs[0], shape};
    n.attributes.clear();
    ++count;
  }
  return count;
}

}  // namespace kiln::passes
