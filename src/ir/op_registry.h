// The one table of ops (DESIGN.md principle 2): for each (domain, op type), the opset from which Kiln
// supports it, its CPU reference kernel, and flags the optimizer needs. Op families register themselves
// from one function each (register_*_ops, listed in op_table.cc).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/value.h"
#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::ir {

class KernelContext;
using KernelFn = Status (*)(KernelContext&);

struct OpSchema {
  std::string domain;   // "" for the default domain, or "ai.onnx.ml", "ai.onnx.preview.training", ...
  std::string op_type;
  int since_version = 1;  // the oldest opset Kiln implements this op for
  KernelFn cpu_kernel = nullptr;
  // Output shapes depend on input values, not only input shapes (NonZero, Unique, ...).
  bool data_dependent_shape = false;
  // Results vary from run to run (RandomNormal, Bernoulli, ...): never constant-folded.
  bool nondeterministic = false;
  std::string family;  // which file registered it, for docs/operators.md
};

class OpRegistry {
 public:
  static const OpRegistry& global();

  void add(OpSchema schema);
  // Shorthand used by the op-family files: add({domain "", op, since, kernel}).
  void add(const std::string& op_type, int since_version, KernelFn kernel);

  const OpSchema* find(const std::string& domain, const std::string& op_type) const;
  const std::map<std::pair<std::string, std::string>, OpSchema>& all() const { return ops_; }
  std::string current_family;  // set by op_table.cc while a family registers

 private:
  std::map<std::pair<std::string, std::string>, OpSchema> ops_;
};

// Runs a graph (a subgraph of If, Loop, Scan, SequenceMap) with the given inputs, in the scope of the
// running node. Supplied by the executor.
using SubgraphRunner = std::function<Result<std::vector<Value>>(const Graph& graph, std::vector<Value> inputs)>;

// What a kernel sees: its node's attributes, its inputs, where its outputs go.
class KernelContext {
 public:
  KernelContext(const Node& node, int opset, std::vector<const Value*> inputs, std::vector<Value>* outputs,
                SubgraphRunner run_subgraph)
      : node_(node), opset_(opset), inputs_(std::move(inputs)), outputs_(outputs),
        run_subgraph_(std::move(run_subgraph)) {}

  const Node& node() const { return node_; }
  // Opset version of the node's domain in this model.
  int opset() const { return opset_; }

  // Inputs. An omitted optional input ("" in ONNX, or fewer inputs) has has_input(i) == false.
  size_t num_inputs() const { return inputs_.size(); }
  bool has_input(size_t i) const { return i < inputs_.size() && inputs_[i] != nullptr && !inputs_[i]->is_none(); }
  // The tensor of input i; call only when has_input(i) (an undefined Tensor otherwise).
  const Tensor& input(size_t i) const;
  const Value& input_value(size_t i) const;

  // Outputs. An output that the graph does not use ("" name) may still be set; it is dropped.
  size_t num_outputs() const { return outputs_->size(); }
  bool wants_output(size_t i) const { return i < node_.outputs.size() && !node_.outputs[i].empty(); }
  void set_output(size_t i, Tensor t);
  void set_output_value(size_t i, Value v);

  // Attributes: the default is returned when the attribute is absent. An attribute of the wrong type is
  // recorded and reported as an error naming the node when the kernel returns.
  bool has_attr(const std::string& name) const { return node_.attr(name) != nullptr; }
  int64_t attr_int(const std::string& name, int64_t dflt) const;
  float attr_float(const std::string& name, float dflt) const;
  std::string attr_string(const std::string& name, const std::string& dflt) const;
  std::vector<int64_t> attr_ints(const std::string& name, std::vector<int64_t> dflt = {}) const;
  std::vector<float> attr_floats(const std::string& name, std::vector<float> dflt = {}) const;
  std::vector<std::string> attr_strings(const std::string& name, std::vector<std::string> dflt = {}) const;
  const Tensor* attr_tensor(const std::string& name) const;     // nullptr when absent
  const Graph* attr_graph(const std::string& name) const;       // nullptr when absent
  const Attribute* attr(const std::string& name) const { return node_.attr(name); }

  Result<std::vector<Value>> run_subgraph(const Graph& g, std::vector<Value> inputs) const;

  // An error that names the node: "node 'x' (Op, #3): message".
  Status error(const std::string& message) const;
  Status unsupported(const std::string& message) const;
  const std::string& attr_error() const { return attr_error_; }

 private:
  bool check_attr(const Attribute* a, Attribute::Type want, const std::string& name) const;

  const Node& node_;
  int opset_;
  std::vector<const Value*> inputs_;
  std::vector<Value>* outputs_;
  SubgraphRunner run_subgraph_;
  mutable std::string attr_error_;
};

}  // namespace kiln::ir
