#include "runtime/executor.h"

#include <exception>
#include <new>
#include <set>

namespace kiln::runtime {

const Value* Scope::find(const std::string& name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent) {
    auto it = s->values->find(name);
    if (it != s->values->end()) return &it->second;
  }
  return nullptr;
}

namespace {

void collect_free(const ir::Graph& g, std::set<std::string>* out) {
  std::set<std::string> defined;
  for (const auto& in : g.inputs) defined.insert(in.name);
  for (const auto& [name, t] : g.initializers) defined.insert(name);
  for (const auto& n : g.nodes) {
    for (const auto& in : n.inputs)
      if (!in.empty() && !defined.count(in)) out->insert(in);
    for (const auto& [an, a] : n.attributes) {
      std::vector<const ir::Graph*> subs;
      if (a.g) subs.push_back(a.g.get());
      for (const auto& sg : a.graphs) subs.push_back(sg.get());
      for (const ir::Graph* sg : subs) {
        std::set<std::string> inner;
        collect_free(*sg, &inner);
        for (const auto& v : inner)
          if (!defined.count(v)) out->insert(v);
      }
    }
    for (const auto& o : n.outputs) defined.insert(o);
  }
  for (const auto& o : g.outputs)
    if (!defined.count(o.name)) out->insert(o.name);
}

}  // namespace

std::vector<std::string> node_reads(const ir::Node& n) {
  std::set<std::string> reads;
  for (const auto& in : n.inputs)
    if (!in.empty()) reads.insert(in);
  for (const auto& [an, a] : n.attributes) {
    if (a.g) collect_free(*a.g, &reads);
    for (const auto& sg : a.graphs) collect_free(*sg, &reads);
  }
  return {reads.begin(), reads.end()};
}

std::vector<std::string> free_variables(const ir::Graph& g) {
  std::set<std::string> out;
  collect_free(g, &out);
  return {out.begin(), out.end()};
}

Status run_cpu_node(const ir::Node& node, const ir::OpSchema& schema, int opset, const ir::OpsetMap& opsets,
                    std::vector<const Value*> inputs, std::vector<Value>* outputs, const Scope* scope) {
  // Subgraphs see the enclosing values by name.
  ir::SubgraphRunner runner = [&opsets, scope](const ir::Graph& g, std::vector<Value> sub_inputs)
      -> Result<std::vector<Value>> {
    KILN_ASSIGN_OR_RETURN(PreparedGraph sub, PreparedGraph::prepare(g, opsets));
    return sub.run_positional(std::move(sub_inputs), scope);
  };
  ir::KernelContext ctx(node, opset, std::move(inputs), outputs, runner);
  Status st;
  try {
    st = schema.cpu_kernel(ctx);
  } catch (const std::bad_alloc&) {
    st = OutOfRange(node.describe() + ": out of memory (the shapes involved are too large)");
  } catch (const std::exception& e) {
    st = Internal(node.describe() + ": " + e.what());
  }
  if (st.ok() && !ctx.attr_error().empty()) st = InvalidModel(node.describe() + ": " + ctx.attr_error());
  if (!st.ok() && st.message().find(node.describe()) == std::string::npos) st = st.with_context(node.describe());
  return st;
}

Result<PreparedGraph> PreparedGraph::prepare(const ir::Graph& graph, const ir::OpsetMap& opsets) {
  PreparedGraph pg;
  pg.graph_ = &graph;
  pg.opsets_ = &opsets;
  std::map<std::string, size_t> last_use;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const ir::Node& n = graph.nodes[i];
    const ir::OpSchema* schema = ir::OpRegistry::global().find(n.domain, n.op_type);
    if (schema == nullptr || schema->cpu_kernel == nullptr)
      return Unsupported(n.describe() + ": no CPU kernel for this op");
    auto it = opsets.find(n.domain);
    int opset = it == opsets.end() ? 0 : it->second;
    pg.steps_.push_back(Step{&n, schema, opset, {}});
    for (const auto& v : node_reads(n)) last_use[v] = i;
  }
  std::set<std::string> keep;
  for (const auto& o : graph.outputs) keep.insert(o.name);
  for (const auto& [name, t] : graph.initializers) keep.insert(name);  // owned by the engine, never freed
  for (const auto& [name, idx] : last_use)
    if (!keep.count(name)) pg.steps_[idx].release_after.push_back(name);
  return pg;
}

Result<std::vector<Value>> PreparedGraph::run_positional(std::vector<Value> inputs, const Scope* outer) const {
  std::map<std::string, Value> named;
  for (size_t i = 0; i < inputs.size() && i < graph_->inputs.size(); ++i)
    named[graph_->inputs[i].name] = std::move(inputs[i]);
  return run(named, outer);
}

Result<std::vector<Value>> PreparedGraph::run(const std::map<std::string, Value>& inputs, const Scope* outer) const {
  std::map<std::string, Value> env;
  for (const auto& [name, t] : graph_->initializers) env[name] = Value(t);
  for (const auto& [name, v] : inputs) env[name] = v;
  Scope scope{&env, outer};

  for (const Step& step : steps_) {
    const ir::Node& node = *step.node;
    std::vector<const Value*> ins;
    ins.reserve(node.inputs.size());
    for (const auto& name : node.inputs) {
      if (name.empty()) {
        ins.push_back(nullptr);
        continue;
      }
      const Value* v = scope.find(name);
      if (v == nullptr) return Internal(node.describe() + ": input '" + name + "' has no value");
      ins.push_back(v);
    }
    std::vector<Value> outs(node.outputs.size());
    KILN_RETURN_IF_ERROR(run_cpu_node(node, *step.schema, step.opset, *opsets_, std::move(ins), &outs, &scope));
    for (size_t i = 0; i < node.outputs.size(); ++i) {
      if (node.outputs[i].empty()) continue;
      env[node.outputs[i]] = std::move(outs[i]);
    }
    for (const auto& dead : step.release_after) env.erase(dead);
  }

  std::vector<Value> results;
  for (const auto& o : graph_->outputs) {
    const Value* v = scope.find(o.name);
    if (v == nullptr) return Internal("graph output '" + o.name + "' was not computed");
    results.push_back(*v);
  }
  return results;
}

}  // namespace kiln::runtime
