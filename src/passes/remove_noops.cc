// No-op removal: nodes that hand their input on unchanged (Identity, Dropout at inference, a Cast to the
// type the value already has, a Reshape or Expand to the shape it already has, symbolic dims included) are
// bypassed, their readers reading
// the input instead, so that no kernel or copy runs for them.
#include <map>
#include <set>

#include "passes/passes.h"
#include "passes/symbolic_dims.h"
#include "runtime/executor.h"

namespace kiln::passes {

namespace {

const ir::TypeInfo* tensor_type(const ir::Graph& g, const std::string& name) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) return nullptr;  // folded anyway
  const ir::TypeInfo* t = g.type_of(name);
  return t && t->kind == ir::TypeInfo::Kind::kTensor ? t : nullptr;
}

// Whether the node's output 0 always equals its input 0 (and any other output it has goes unread).
bool is_noop(const ir::Graph& g, const ir::Node& n, int opset, const std::set<std::string>& read) {
  if (!n.domain.empty() || n.inputs.empty() || n.inputs[0].empty() || n.outputs.empty()) return false;
  for (size_t i = 1; i < n.outputs.size(); ++i)
    if (!n.outputs[i].empty() && read.count(n.outputs[i])) return false;
  if (n.op_type == "Identity") return n.outputs.size() == 1;
  if (n.op_type == "Dropout") {
    // Opset 12+: training_mode (input 2) absent or a constant false. Before: always inference.
    if (opset >= 12 && n.inputs.size() > 2 && !n.inputs[2].empty()) {
      auto it = g.initializers.find(n.inputs[2]);
      if (it == g.initializers.end() || it->second.numel() != 1) return false;
      if (it->second.to_int64_vector()[0] != 0) return false;
    }
    if (opset < 7) {  // is_test = 0 meant training there
      const ir::Attribute* a = n.attr("is_test");
      if (a == nullptr || a->i == 0) return false;
    }
    return true;
  }
  const ir::TypeInfo* in = tensor_type(g, n.inputs[0]);
  const ir::TypeInfo* out = tensor_type(g, n.outputs[0]);
  if (in == nullptr || out == nullptr || in->dtype == DType::kUndefined) return false;
  if (n.op_type == "Cast") {
    const ir::Attribute* to = n.attr("to");
    return to != nullptr && static_cast<DType>(to->i) == in->dtype && out->dtype == in->dtype;
  }
  if (n.op_type == "Reshape" || n.op_type == "Expand") {  // to the dims it has: equal numbers or the same symbols
    if (!in->has_shape || !out->has_shape || in->dims.size() != out->dims.size() || in->dtype != out->dtype) return false;
    for (size_t i = 0; i < in->dims.size(); ++i)
      if (!same_dim(in->dims[i], out->dims[i])) return false;
    return true;
  }
  return false;
}

}  // namespace

Status remove_noops(ir::Model& model, int* removed) {
  ir::Graph& g = model.graph;
  const int opset = model.default_opset();
  // Names that must keep their producer: graph outputs, and values subgraphs read from this scope (a
  // subgraph names them itself, so they cannot be renamed from here).
  std::set<std::string> pinned, read;
  for (const auto& o : g.outputs) pinned.insert(o.name);
  for (const auto& n : g.nodes) {
    for (const auto& in : n.inputs) read.insert(in);
    for (const auto& [name, a] : n.attributes) {
      if (a.g)
        for (const auto& v : runtime::free_variables(*a.g)) pinned.insert(v), read.insert(v);
      for (const auto& sg : a.graphs)
        for (const auto& v : runtime::free_variables(*sg)) pinned.insert(v), read.insert(v);
    }
  }
  int count = 0;
  std::vector<ir::Node> kept;
  kept.reserve(g.nodes.size());
  std::map<std::string, std::string> renamed;  // a bypassed output -> the value it equals
  for (ir::Node& n : g.nodes) {
    for (auto& in : n.inputs)
      if (auto r = renamed.find(in); r != renamed.end()) in = r->second;
    if (!n.outputs.empty() && !pinned.count(n.outputs[0]) && is_noop(g, n, opset, read)) {
      renamed[n.outputs[0]] = n.inputs[0];
      g.value_types.erase(n.outputs[0]);
      ++count;
      continue;
    }
    kept.push_back(std::move(n));
  }
  g.nodes = std::move(kept);
  if (removed) *removed = count;
  return OkStatus();
}

}  // namespace kiln::passes
