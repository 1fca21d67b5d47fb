// Common-subexpression elimination: two nodes that apply the same op, with the same attributes, to the same
// inputs compute the same values, so the later one goes and its readers read the earlier one's outputs.
// Equal constants (initializers and Constant nodes of the same dtype, shape and bytes) become one value as
// well, so that nodes reading separately named copies of a constant match: BERT's ONNX export computes
// Where(mask, 0, -inf) once per layer, each with its own 0 and -inf, 12 kernels for one value.
#include <xxhash.h>

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "ir/op_registry.h"
#include "passes/passes.h"
#include "runtime/executor.h"

namespace kiln::passes {

namespace {

using Renames = std::map<std::string, std::string>;  // a merged-away value -> the value it equals

uint64_t content_hash(const Tensor& t) {
  if (t.dtype() != DType::kString) return XXH64(t.raw_data(), t.nbytes(), 0);
  uint64_t h = 0;
  for (int64_t i = 0; i < t.numel(); ++i) h = XXH64(t.strings()[i].data(), t.strings()[i].size(), h);
  return h;
}

bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.dtype() == DType::kString) {
    for (int64_t i = 0; i < a.numel(); ++i)
      if (a.strings()[i] != b.strings()[i]) return false;
    return true;
  }
  return a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// The bucket of a constant: equal tensors share it (equal ones are then told apart by same_tensor).
std::string tensor_key(const Tensor& t) {
  return dtype_name(t.dtype()) + shape_to_string(t.shape()) + "#" + std::to_string(content_hash(t));
}

bool same_type(const ir::TypeInfo& a, const ir::TypeInfo& b) {
  if (a.kind != b.kind || a.dtype != b.dtype || a.has_shape != b.has_shape || a.optional_of != b.optional_of ||
      a.dims.size() != b.dims.size())
    return false;
  for (size_t i = 0; i < a.dims.size(); ++i)
    if (a.dims[i].value != b.dims[i].value || a.dims[i].symbol != b.dims[i].symbol) return false;
  return true;
}

bool same_graph(const ir::Graph& a, const ir::Graph& b);

// Floats compare by their bits: NaN equals itself, 0 and -0 differ (as the computations they feed may).
bool same_attribute(const ir::Attribute& a, const ir::Attribute& b) {
  using T = ir::Attribute::Type;
  if (a.type != b.type) return false;
  auto same_graph_ptr = [](const std::shared_ptr<ir::Graph>& x, const std::shared_ptr<ir::Graph>& y) {
    return x && y ? same_graph(*x, *y) : x == y;
  };
  switch (a.type) {
    case T::kFloat: return std::memcmp(&a.f, &b.f, sizeof(float)) == 0;
    case T::kInt: return a.i == b.i;
    case T::kString: return a.s == b.s;
    case T::kTensor: return same_tensor(a.t, b.t);
    case T::kGraph: return same_graph_ptr(a.g, b.g);
    case T::kFloats:
      return a.floats.size() == b.floats.size() &&
             (a.floats.empty() || std::memcmp(a.floats.data(), b.floats.data(), a.floats.size() * sizeof(float)) == 0);
    case T::kInts: return a.ints == b.ints;
    case T::kStrings: return a.strings == b.strings;
    case T::kTensors:
      if (a.tensors.size() != b.tensors.size()) return false;
      for (size_t i = 0; i < a.tensors.size(); ++i)
        if (!same_tensor(a.tensors[i], b.tensors[i])) return false;
      return true;
    case T::kGraphs:
      if (a.graphs.size() != b.graphs.size()) return false;
      for (size_t i = 0; i < a.graphs.size(); ++i)
        if (!same_graph_ptr(a.graphs[i], b.graphs[i])) return false;
      return true;
    case T::kTypeProto: return same_type(a.type_proto, b.type_proto);
    case T::kUndefined: return false;  // nothing known to compare: never call two such nodes the same
  }
  return false;
}

bool same_attributes(const std::map<std::string, ir::Attribute>& a, const std::map<std::string, ir::Attribute>& b) {
  if (a.size() != b.size()) return false;
  for (auto x = a.begin(), y = b.begin(); x != a.end(); ++x, ++y)
    if (x->first != y->first || !same_attribute(x->second, y->second)) return false;
  return true;
}

// What a node computes, not what it is called: op, inputs, outputs' positions and attributes.
bool same_computation(const ir::Node& a, const ir::Node& b) {
  return a.domain == b.domain && a.op_type == b.op_type && a.inputs == b.inputs &&
         a.outputs.size() == b.outputs.size() && same_attributes(a.attributes, b.attributes);
}

// Subgraphs (If's branches, Loop's and Scan's bodies) are equal when they are written the same, value names
// included: then they compute the same from the same outer values. Node names and inferred types do not count.
bool same_graph(const ir::Graph& a, const ir::Graph& b) {
  if (a.inputs.size() != b.inputs.size() || a.outputs.size() != b.outputs.size() ||
      a.nodes.size() != b.nodes.size() || a.initializers.size() != b.initializers.size())
    return false;
  for (size_t i = 0; i < a.inputs.size(); ++i)
    if (a.inputs[i].name != b.inputs[i].name || !same_type(a.inputs[i].type, b.inputs[i].type)) return false;
  for (size_t i = 0; i < a.outputs.size(); ++i)
    if (a.outputs[i].name != b.outputs[i].name || !same_type(a.outputs[i].type, b.outputs[i].type)) return false;
  for (auto x = a.initializers.begin(), y = b.initializers.begin(); x != a.initializers.end(); ++x, ++y)
    if (x->first != y->first || !same_tensor(x->second, y->second)) return false;
  for (size_t i = 0; i < a.nodes.size(); ++i)
    if (!same_computation(a.nodes[i], b.nodes[i]) || a.nodes[i].outputs != b.nodes[i].outputs) return false;
  return true;
}

// A digest of an attribute's value for bucketing nodes; equal attributes have equal digests.
uint64_t attribute_digest(const ir::Attribute& a) {
  using T = ir::Attribute::Type;
  uint64_t h = static_cast<uint64_t>(a.type);
  switch (a.type) {
    case T::kFloat: return XXH64(&a.f, sizeof(float), h);
    case T::kInt: return XXH64(&a.i, sizeof(int64_t), h);
    case T::kString: return XXH64(a.s.data(), a.s.size(), h);
    case T::kTensor: return content_hash(a.t) ^ h;
    case T::kFloats: return XXH64(a.floats.data(), a.floats.size() * sizeof(float), h);
    case T::kInts: return XXH64(a.ints.data(), a.ints.size() * sizeof(int64_t), h);
    case T::kStrings:
      for (const auto& s : a.strings) h = XXH64(s.data(), s.size(), h);
      return h;
    case T::kTensors:
      for (const auto& t : a.tensors) h = XXH64(&h, sizeof(h), content_hash(t));
      return h;
    case T::kGraph: return h + (a.g ? a.g->nodes.size() : 0);
    case T::kGraphs: return h + a.graphs.size();
    default: return h;
  }
}

// The bucket a node falls in: nodes that may compute the same (same_computation decides).
std::string node_key(const ir::Node& n) {
  std::string key = n.domain + '\x1f' + n.op_type + '\x1f' + std::to_string(n.outputs.size());
  for (const auto& in : n.inputs) key += '\x1e' + in;
  for (const auto& [name, a] : n.attributes) key += '\x1d' + name + '=' + std::to_string(attribute_digest(a));
  return key;
}

// Whether two nodes that look the same compute the same: not when an op draws random numbers (each node its
// own draw, and a seeded pair would still be two ops), nor when Kiln does not know the op (it may have effects
// beyond its outputs); a subgraph's nodes must qualify as well.
bool mergeable(const ir::Node& n) {
  static const std::set<std::string> kRandom{"RandomNormal",      "RandomUniform", "RandomNormalLike",
                                             "RandomUniformLike", "Multinomial",   "Bernoulli"};
  if ((n.domain.empty() || n.domain == "ai.onnx") && kRandom.count(n.op_type)) return false;
  const ir::OpSchema* schema = ir::OpRegistry::global().find(n.domain, n.op_type);
  if (schema == nullptr || schema->nondeterministic) return false;
  // Dropout with a training_mode input may draw a mask at run time.
  if (n.domain.empty() && n.op_type == "Dropout" && n.inputs.size() > 2 && !n.inputs[2].empty()) return false;
  for (const auto& [name, a] : n.attributes) {
    std::vector<const ir::Graph*> subs;
    if (a.g) subs.push_back(a.g.get());
    for (const auto& sg : a.graphs) subs.push_back(sg.get());
    for (const ir::Graph* sg : subs)
      for (const auto& inner : sg->nodes)
        if (!mergeable(inner)) return false;
  }
  return true;
}

// Points a subgraph's reads of outer values at their new names; names the subgraph (or a scope between it and
// the top level, `hidden`) defines itself shadow the outer ones and stay. Subgraphs are shared between copies of
// a model (an Attribute holds a shared_ptr), so one that changes is copied first.
void rename_outer_reads(std::shared_ptr<ir::Graph>& g, const Renames& renames, std::set<std::string> hidden) {
  bool touched = false;
  for (const auto& v : runtime::free_variables(*g)) touched = touched || (renames.count(v) && !hidden.count(v));
  if (!touched) return;
  g = std::make_shared<ir::Graph>(*g);
  for (const auto& in : g->inputs) hidden.insert(in.name);
  for (const auto& [name, t] : g->initializers) hidden.insert(name);
  auto rename = [&](std::string& v) {
    if (v.empty() || hidden.count(v)) return;
    if (auto it = renames.find(v); it != renames.end()) v = it->second;
  };
  for (ir::Node& n : g->nodes) {
    for (auto& in : n.inputs) rename(in);
    for (auto& [name, a] : n.attributes) {
      if (a.g) rename_outer_reads(a.g, renames, hidden);
      for (auto& sg : a.graphs) rename_outer_reads(sg, renames, hidden);
    }
    for (const auto& o : n.outputs) hidden.insert(o);
  }
  for (auto& o : g->outputs) rename(o.name);  // a subgraph may hand on an outer value as its output
}

}  // namespace

Status eliminate_common_subexpressions(ir::Model& model, int* merged, const std::set<std::string>& keep) {
  ir::Graph& g = model.graph;
  // A graph output's name must survive (a duplicate that produces one stays), and an initializer that is also
  // a graph input is a default the caller may override, not a constant.
  std::set<std::string> graph_outputs, graph_inputs;
  for (const auto& o : g.outputs) graph_outputs.insert(o.name);
  for (const auto& in : g.inputs) graph_inputs.insert(in.name);
  int count = 0;
  Renames renames;

  // Constants first: initializers, then (in the sweep below) Constant nodes, each equal one read as the first.
  std::map<std::string, std::vector<std::string>> constants;  // tensor_key -> names of distinct constants
  std::map<std::string, Tensor> constant_nodes;  // output -> value, of the Constant nodes among them
  // The name of an earlier constant equal to t; "" when there is none, and `name` is recorded as t's.
  auto find_or_add_constant = [&](const Tensor& t, const std::string& name) -> std::string {
    std::vector<std::string>& bucket = constants[tensor_key(t)];
    for (const auto& other : bucket) {
      auto it = g.initializers.find(other);
      if (same_tensor(it != g.initializers.end() ? it->second : constant_nodes.at(other), t)) return other;
    }
    bucket.push_back(name);
    return "";
  };
  for (auto it = g.initializers.begin(); it != g.initializers.end();) {
    const std::string& name = it->first;
    if (graph_inputs.count(name)) {
      ++it;
      continue;
    }
    const std::string earlier = find_or_add_constant(it->second, name);
    if (earlier.empty() || graph_outputs.count(name)) {
      ++it;
      continue;
    }
    renames[name] = earlier;
    g.value_types.erase(name);
    it = g.initializers.erase(it);
    ++count;
  }

  // One sweep in topological order: a node's inputs are renamed before it is looked up, so a chain of
  // duplicates (equal constants -> equal Where -> equal Add ...) merges link by link in the same sweep.
  std::map<std::string, std::vector<size_t>> seen;  // node_key -> indices into `kept` of distinct nodes
  std::vector<ir::Node> kept;
  kept.reserve(g.nodes.size());
  for (ir::Node& n : g.nodes) {
    for (auto& in : n.inputs)
      if (auto r = renames.find(in); r != renames.end()) in = r->second;
    for (auto& [name, a] : n.attributes) {
      if (a.g) rename_outer_reads(a.g, renames, {});
      for (auto& sg : a.graphs) rename_outer_reads(sg, renames, {});
    }
    bool names_graph_output = false;
    for (const auto& o : n.outputs) names_graph_output = names_graph_output || graph_outputs.count(o);
    const ir::Attribute* value = n.attr("value");
    if (n.domain.empty() && n.op_type == "Constant" && n.outputs.size() == 1 && !n.outputs[0].empty() &&
        value != nullptr && value->type == ir::Attribute::Type::kTensor) {
      const std::string earlier = find_or_add_constant(value->t, n.outputs[0]);
      if (earlier.empty()) constant_nodes[n.outputs[0]] = value->t;
      if (!earlier.empty() && !names_graph_output) {
        renames[n.outputs[0]] = earlier;
        g.value_types.erase(n.outputs[0]);
        ++count;
        continue;
      }
      kept.push_back(std::move(n));
      continue;
    }
    if (n.outputs.empty() || !mergeable(n) || keep.count(n.name)) {
      kept.push_back(std::move(n));
      continue;
    }
    std::vector<size_t>& bucket = seen[node_key(n)];
    const ir::Node* earlier = nullptr;
    for (size_t k : bucket) {
      const ir::Node& e = kept[k];
      bool covers = same_computation(e, n);  // and computes every output the duplicate's readers need
      for (size_t i = 0; covers && i < n.outputs.size(); ++i) covers = n.outputs[i].empty() || !e.outputs[i].empty();
      if (covers) {
        earlier = &e;
        break;
      }
    }
    if (earlier != nullptr && !names_graph_output) {
      for (size_t i = 0; i < n.outputs.size(); ++i) {
        if (n.outputs[i].empty()) continue;
        renames[n.outputs[i]] = earlier->outputs[i];
        g.value_types.erase(n.outputs[i]);
      }
      ++count;
      continue;
    }
    if (earlier == nullptr) bucket.push_back(kept.size());
    kept.push_back(std::move(n));
  }
  g.nodes = std::move(kept);
  if (merged) *merged = count;
  return OkStatus();
}

}  // namespace kiln::passes
