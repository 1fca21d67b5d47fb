// A graph built in code, for the pass tests: typed inputs with the values a run feeds them, initializers,
// nodes in order, and a run of the whole graph on the CPU executor (the unoptimized reference a pass's
// result is compared with). Each test file derives its own Builder for the patterns it builds.
// Beside it, what every pass test asks of a graph: its ops in order, and whether a rewritten graph computes
// what the original did (expect_close, expect_same_outputs, GraphBuilder::apply_and_compare).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/cast.h"
#include "ir/graph.h"
#include "kiln/status.h"
#include "kiln/tensor.h"
#include "passes/passes.h"
#include "runtime/executor.h"

namespace kiln::testing {

// The graph's nodes in order, each as "op" or "domain.op" ("kiln.FusedConv").
inline std::vector<std::string> op_types(const ir::Model& m) {
  std::vector<std::string> r;
  for (const auto& n : m.graph.nodes) r.push_back(n.domain.empty() ? n.op_type : n.domain + "." + n.op_type);
  return r;
}

// The graph's first node of op type `op` (any domain), or null.
inline const ir::Node* find_op(const ir::Model& m, const std::string& op) {
  for (const auto& n : m.graph.nodes)
    if (n.op_type == op) return &n;
  return nullptr;
}

// Same shape and dtype, and each element within tol of want's relative to values above 1 (absolute below),
// compared in float64; infinities exactly, a NaN only where want has one; non-float tensors exactly.
// Reports at most five elements.
inline void expect_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  if (!dtype_is_float(want.dtype())) {
    EXPECT_EQ(got.to_int64_vector(), want.to_int64_vector()) << what;
    return;
  }
  const Tensor g = cast_tensor(got, DType::kFloat64).value(), w = cast_tensor(want, DType::kFloat64).value();
  int bad = 0;
  for (int64_t i = 0; i < g.numel() && bad < 5; ++i) {
    const double a = g.data<double>()[i], b = w.data<double>()[i];
    if ((std::isnan(a) && std::isnan(b)) || a == b) continue;
    if (!(std::fabs(a - b) <= tol * std::max(1.0, std::fabs(b)))) {
      ++bad;
      ADD_FAILURE() << what << ": element " << i << ": got " << a << ", want " << b;
    }
  }
}

// The model's outputs on the CPU executor, fed `feeds`; a failure fails the test and gives none.
inline std::vector<Tensor> run_graph(const ir::Model& m, const std::map<std::string, Tensor>& feeds) {
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

// `after` (a rewrite of `before`) computes what `before` computes on `feeds`, each output within tol
// (as expect_close has it).
inline void expect_same_outputs(const ir::Model& before, const ir::Model& after,
                                const std::map<std::string, Tensor>& feeds, double tol) {
  const std::vector<Tensor> want = run_graph(before, feeds), got = run_graph(after, feeds);
  ASSERT_FALSE(want.empty());
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) expect_close(got[i], want[i], tol, "output " + std::to_string(i));
}

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
  std::vector<Tensor> run() const { return run_graph(m, feeds); }
  // Rewrites m in place with `passes` (the passes under test, in the builder's order) and expects the result
  // to compute what m did before, within tol; a pass's error fails the test and skips the comparison.
  void apply_and_compare(const std::function<Status(ir::Model&)>& passes, double tol) {
    const ir::Model before = m;
    const Status st = passes(m);
    ASSERT_TRUE(st.ok()) << st.to_string();
    expect_same_outputs(before, m, feeds, tol);
  }
  // One pass that counts what it rewrote (most of passes.h) on the typed graph: infers the types, runs it, then
  // the clean-up optimize_graph runs after it (eliminate_dead_nodes where `drop_dead`, infer_shapes), and
  // expects the same outputs within tol. Returns the pass's count (-1 when it failed).
  int apply_counted_pass(const std::function<Status(ir::Model&, int*)>& pass, double tol, bool drop_dead = false) {
    EXPECT_TRUE(passes::infer_shapes(m).ok());
    int count = -1;
    apply_and_compare(
        [&](ir::Model& model) -> Status {
          KILN_RETURN_IF_ERROR(pass(model, &count));
          if (drop_dead) KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(model));
          return passes::infer_shapes(model);
        },
        tol);
    return count;
  }
};

}  // namespace kiln::testing
