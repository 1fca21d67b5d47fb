#include <set>

#include "passes/passes.h"
#include "runtime/executor.h"

namespace kiln::passes {

Status eliminate_dead_nodes(ir::Model& model, int* removed) {
  ir::Graph& g = model.graph;
  std::set<std::string> needed;
  for (const auto& o : g.outputs) needed.insert(o.name);
  std::vector<bool> keep(g.nodes.size(), false);
  for (size_t k = g.nodes.size(); k-- > 0;) {
    const ir::Node& n = g.nodes[k];
    for (const auto& o : n.outputs)
      if (!o.empty() && needed.count(o)) keep[k] = true;
    if (!keep[k]) continue;
    for (const auto& in : n.inputs)
      if (!in.empty()) needed.insert(in);
    for (const auto& [name, a] : n.attributes) {
      if (a.g)
        for (const auto& v : runtime::free_variables(*a.g)) needed.insert(v);
      for (const auto& sg : a.graphs)
        for (const auto& v : runtime::free_variables(*sg)) needed.insert(v);
    }
  }
  std::vector<ir::Node> kept;
  for (size_t k = 0; k < g.nodes.size(); ++k)
    if (keep[k]) kept.push_back(std::move(g.nodes[k]));
  if (removed) *removed = static_cast<int>(g.nodes.size() - kept.size());
  g.nodes = std::move(kept);
  for (auto it = g.initializers.begin(); it != g.initializers.end();) {
    it = needed.count(it->first) ? std::next(it) : g.initializers.erase(it);
  }
  return OkStatus();
}

}  // namespace kiln::passes
