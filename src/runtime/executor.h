// Runs an ir::Graph with the CPU reference kernels: the interpreter underneath every engine on the CPU,
// and the runner of subgraphs (If, Loop, Scan) on any backend.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/value.h"
#include "ir/graph.h"
#include "ir/op_registry.h"

namespace kiln::runtime {

// Names visible to a subgraph from the graphs around it.
struct Scope {
  const std::map<std::string, Value>* values = nullptr;
  const Scope* parent = nullptr;
  const Value* find(const std::string& name) const;
};

// A graph prepared for repeated execution: schemas looked up once, and for each node the values it is the
// last user of, so that intermediate memory is released as soon as it is dead.
class PreparedGraph {
 public:
  static Result<PreparedGraph> prepare(const ir::Graph& graph, const ir::OpsetMap& opsets);

  // Runs with inputs bound by name to graph inputs; returns the graph outputs in order.
  Result<std::vector<Value>> run(const std::map<std::string, Value>& inputs, const Scope* outer = nullptr) const;
  // Runs with inputs bound by position (subgraphs: If, Loop, Scan bodies).
  Result<std::vector<Value>> run_positional(std::vector<Value> inputs, const Scope* outer) const;

  const ir::Graph& graph() const { return *graph_; }

 private:
  struct Step {
    const ir::Node* node;
    const ir::OpSchema* schema;
    int opset;
    std::vector<std::string> release_after;  // values whose last use is this node
  };
  const ir::Graph* graph_ = nullptr;
  const ir::OpsetMap* opsets_ = nullptr;
  std::vector<Step> steps_;
};

// Names a graph reads that it does not define itself (inputs of nested subgraphs included).
std::vector<std::string> free_variables(const ir::Graph& g);
// Every value a node reads, directly or from inside its subgraphs.
std::vector<std::string> node_reads(const ir::Node& n);

// Runs one node's CPU reference kernel on `inputs` (nullptr for an omitted one) into *outputs, which holds
// one Value per node output; its subgraphs see the values of `scope`. Every error names the node, and an
// exception (out of memory, say) becomes a Status.
Status run_cpu_node(const ir::Node& node, const ir::OpSchema& schema, int opset, const ir::OpsetMap& opsets,
                    std::vector<const Value*> inputs, std::vector<Value>* outputs, const Scope* scope);

}  // namespace kiln::runtime
