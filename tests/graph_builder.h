// A graph built in code, for the pass tests: typed inputs with the values a run feeds them, initializers,
// nodes in order, and a run of the whole graph on the CPU executor (the unoptimized reference a pass's
// result is compared with). Each test file derives its own Builder for the patterns it builds.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ir/graph.h"
#include "kiln/tensor.h"
#include "runtime/executor.h"

namespace kiln::testing {

struct GraphBuilder {
  ir::Model m;
  std::map<std::string, Tensor> feeds;

  explicit GraphBuilder(int opset = 17) {
    m.ir_version = 8;
    m.opsets[""] = opset;
  }
  // A graph input of value's type and static shape, fed `value` by run().
  void input(const std::string& name, const Tensor& value) {
    ir::ValueInfo v;
    v.name = name;
    v.type.kind = ir::TypeInfo::Kind::kTensor;
    v.type.dtype = value.dtype();
    v.type.has_shape = true;
    for (int64_t d : value.shape()) v.type.dims.push_back(ir::Dim::of(d));
    m.graph.inputs.push_back(v);
    feeds[name] = value;
  }
  void output(const std::string& name) { m.graph.outputs.push_back(ir::ValueInfo{name, {}}); }
  void init(const std::string& name, const Tensor& value) { m.graph.initializers[name] = value; }
  // A float32 scalar initializer.
  void scalar(const std::string& name, float v) {
    m.graph.initializers[name] = Tensor::from_vector<float>(DType::kFloat32, {}, {v});
  }
  // Appends a node (named "<op>_<position>" when `name` is empty) and returns it for its attributes.
  ir::Node& node(const std::string& op, std::vector<std::string> ins, std::vector<std::string> outs,
                 const std::string& name = "", const std::string& domain = "") {
    ir::Node n;
    n.op_type = op;
    n.domain = domain;
    n.name = name.empty() ? op + "_" + std::to_string(m.graph.nodes.size()) : name;
    n.inputs = std::move(ins);
    n.outputs = std::move(outs);
    n.index = static_cast<int>(m.graph.nodes.size());
    m.graph.nodes.push_back(std::move(n));
    return m.graph.nodes.back();
  }
  // The graph's outputs on the CPU executor, fed `feeds`; a failure fails the test and gives none.
  std::vector<Tensor> run() const {
    auto g = runtime::PreparedGraph::prepare(m.graph, m.opsets);
    EXPECT_TRUE(g.ok()) << g.status().to_string();
    if (!g.ok()) return {};
    std::map<std::string, Value> in;
    for (const auto& [k, v] : feeds) in[k] = v;
    auto out = g->run(in);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    std::vector<Tensor> r;
    if (out.ok())
      for (const Value& v : *out) r.push_back(v.tensor());
    return r;
  }
};

}  // namespace kiln::testing
