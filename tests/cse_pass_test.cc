// eliminate_common_subexpressions: the graph before and after on small graphs built in code, what must not
// merge, and the outputs before and after through the CPU executor on random inputs; then the build at opt
// level 1 on BERT's per-layer attention mask.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "builder/build_plan.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261125);
  return gen;
}

// Uniform in [-2, 2], never zero.
Tensor random_tensor(const Shape& shape) { return testing::random_tensor(rng(), DType::kFloat32, shape, -2.0f, 2.0f); }

ir::Attribute tensor_attr(const Tensor& t) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kTensor;
  a.t = t;
  return a;
}

ir::Attribute graph_attr(ir::Graph g) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kGraph;
  a.g = std::make_shared<ir::Graph>(std::move(g));
  return a;
}

ir::Node make_node(const std::string& op, std::vector<std::string> ins, std::vector<std::string> outs,
                   const std::string& name) {
  ir::Node n;
  n.op_type = op;
  n.name = name;
  n.inputs = std::move(ins);
  n.outputs = std::move(outs);
  return n;
}

struct Builder : GraphBuilder {
  using GraphBuilder::GraphBuilder;
};

const ir::Node& node_named(const ir::Model& m, const std::string& name) {
  for (const auto& n : m.graph.nodes)
    if (n.name == name) return n;
  ADD_FAILURE() << "no node " << name;
  static const ir::Node none;
  return none;
}

// The same computation gives the same bits: the merged graph's outputs equal the original's exactly.
void expect_identical(const std::vector<Tensor>& got, const std::vector<Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].dtype(), want[i].dtype()) << "output " << i;
    ASSERT_EQ(got[i].shape(), want[i].shape()) << "output " << i;
    EXPECT_EQ(std::memcmp(got[i].raw_data(), want[i].raw_data(), got[i].nbytes()), 0) << "output " << i;
  }
}

// Runs the pass, checking that the graph computes the same before and after; returns the merged count.
int merge_and_compare(Builder& b) {
  const std::vector<Tensor> before = b.run();
  int merged = -1;
  const Status st = passes::eliminate_common_subexpressions(b.m, &merged);
  EXPECT_TRUE(st.ok()) << st.to_string();
  expect_identical(b.run(), before);
  return merged;
}

// x * w1 -> Exp and x * w2 -> Exp with w1, w2 equal, then Add of both: w2, the second Mul and the second Exp
// go in one sweep, link by link.
TEST(EliminateCommonSubexpressions, DuplicatesMergeLinkByLink) {
  Builder b;
  b.input("x", random_tensor({2, 3}));
  const Tensor w = random_tensor({3});
  b.init("w1", w);
  b.init("w2", w.clone());
  b.node("Mul", {"x", "w1"}, {"a1"}, "mul1");
  b.node("Exp", {"a1"}, {"e1"}, "exp1");
  b.node("Mul", {"x", "w2"}, {"a2"}, "mul2");
  b.node("Exp", {"a2"}, {"e2"}, "exp2");
  b.node("Add", {"e1", "e2"}, {"y"}, "add");
  b.output("y");
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Mul", "Exp", "Mul", "Exp", "Add"}));
  EXPECT_EQ(merge_and_compare(b), 3);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Mul", "Exp", "Add"}));
  EXPECT_EQ(node_named(b.m, "add").inputs, (std::vector<std::string>{"e1", "e1"}));
  EXPECT_TRUE(b.m.graph.initializers.count("w1"));
  EXPECT_FALSE(b.m.graph.initializers.count("w2"));
  EXPECT_EQ(b.m.graph.type_of("e2"), nullptr);  // the merged-away value's type goes with it
  int again = -1;
  ASSERT_TRUE(passes::eliminate_common_subexpressions(b.m, &again).ok());
  EXPECT_EQ(again, 0);  // a fixpoint in one sweep
}

// A duplicate whose output is a graph output stays (the name must survive); a duplicate of a graph output's
// producer is merged into it, its readers reading the graph output.
TEST(EliminateCommonSubexpressions, GraphOutputNamesSurvive) {
  Builder b;
  b.input("x", random_tensor({4}));
  b.node("Relu", {"x"}, {"y1"}, "relu_out1");
  b.node("Relu", {"x"}, {"y2"}, "relu_out2");  // both graph outputs: kept
  b.node("Relu", {"x"}, {"t"}, "relu_dup");    // merged into relu_out1
  b.node("Neg", {"t"}, {"z"}, "neg");
  b.node("Sigmoid", {"x"}, {"s"}, "sigmoid");
  b.node("Abs", {"s"}, {"z2"}, "abs");
  b.node("Sigmoid", {"x"}, {"y3"}, "sigmoid_out");  // a graph output duplicating a computed value: kept
  for (const char* o : {"y1", "y2", "z", "z2", "y3"}) b.output(o);
  EXPECT_EQ(merge_and_compare(b), 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Relu", "Relu", "Neg", "Sigmoid", "Abs", "Sigmoid"}));
  EXPECT_EQ(node_named(b.m, "neg").inputs, (std::vector<std::string>{"y1"}));
  EXPECT_EQ(node_named(b.m, "relu_out2").outputs, (std::vector<std::string>{"y2"}));
  EXPECT_EQ(node_named(b.m, "sigmoid_out").outputs, (std::vector<std::string>{"y3"}));
}

TEST(EliminateCommonSubexpressions, DifferentAttributesInputsOrOpsStay) {
  Builder b;
  b.input("x", random_tensor({2, 3}));
  b.init("w", random_tensor({2, 3}));
  b.node("Softmax", {"x"}, {"s0"}, "softmax0").attributes["axis"] = int_attr(0);
  b.node("Softmax", {"x"}, {"s1"}, "softmax1").attributes["axis"] = int_attr(1);
  b.node("LeakyRelu", {"x"}, {"l0"}, "leaky_default");
  b.node("LeakyRelu", {"x"}, {"l1"}, "leaky_alpha").attributes["alpha"] = float_attr(0.2f);
  b.node("LeakyRelu", {"x"}, {"l2"}, "leaky_neg_zero").attributes["alpha"] = float_attr(-0.0f);
  b.node("LeakyRelu", {"x"}, {"l3"}, "leaky_zero").attributes["alpha"] = float_attr(0.0f);
  b.node("Sub", {"x", "w"}, {"d0"}, "sub_xw");
  b.node("Sub", {"w", "x"}, {"d1"}, "sub_wx");  // inputs in another order
  b.node("Relu", {"x"}, {"r"}, "relu");
  b.node("Sigmoid", {"x"}, {"g"}, "sigmoid");
  b.node("Transpose", {"x"}, {"t0"}, "transpose0").attributes["perm"] = ints_attr({1, 0});
  b.node("Transpose", {"x"}, {"t1"}, "transpose1").attributes["perm"] = ints_attr({1, 0});  // the one merge
  b.node("Neg", {"t1"}, {"n"}, "neg");
  for (const char* o : {"s0", "s1", "l0", "l1", "l2", "l3", "d0", "d1", "r", "g", "t0", "n"}) b.output(o);
  EXPECT_EQ(merge_and_compare(b), 1);
  EXPECT_EQ(b.m.graph.nodes.size(), 12u);
  EXPECT_EQ(node_named(b.m, "neg").inputs, (std::vector<std::string>{"t0"}));
}

// Random ops draw anew in each node, seeded or not; a training-mode Dropout draws a mask; an op Kiln does
// not know may do more than compute its outputs.
TEST(EliminateCommonSubexpressions, RandomAndUnknownOpsStay) {
  Builder b;
  b.input("x", random_tensor({3, 4}));
  Tensor p(DType::kFloat32, {3, 4});
  for (int64_t i = 0; i < p.numel(); ++i) p.data<float>()[i] = 0.25f;
  b.init("p", p);
  b.init("ratio", Tensor::from_vector<float>(DType::kFloat32, {}, {0.5f}));
  b.init("training", Tensor::from_vector<bool>(DType::kBool, {}, {true}));
  for (int k = 0; k < 2; ++k) {
    const std::string s = std::to_string(k);
    auto& rn = b.node("RandomNormalLike", {"x"}, {"rn" + s});
    rn.attributes["seed"] = float_attr(7.0f);
    auto& ru = b.node("RandomUniform", {}, {"ru" + s});
    ru.attributes["shape"] = ints_attr({3, 4});
    ru.attributes["seed"] = float_attr(7.0f);
    b.node("Bernoulli", {"p"}, {"be" + s});
    b.node("Dropout", {"x", "ratio", "training"}, {"dr" + s});
    b.node("Frobnicate", {"x"}, {"fr" + s}).domain = "com.example";
    for (const char* o : {"rn", "ru", "be", "dr", "fr"}) b.output(o + s);
  }
  int merged = -1;
  ASSERT_TRUE(passes::eliminate_common_subexpressions(b.m, &merged).ok());
  EXPECT_EQ(merged, 0);
  EXPECT_EQ(b.m.graph.nodes.size(), 10u);
}

// Equal constants (dtype, shape and bytes) become one, initializers and Constant nodes alike; another shape,
// another dtype, -0 against 0 and an initializer that is a graph input (an overridable default) stay apart.
TEST(EliminateCommonSubexpressions, EqualConstantsBecomeOne) {
  Builder b;
  b.input("x", random_tensor({2}));
  const Tensor c = Tensor::from_vector<float>(DType::kFloat32, {2}, {1.5f, -2.0f});
  b.init("c1", c);
  b.init("c2", c.clone());
  b.init("c3", c.reshaped({2, 1}).clone());
  b.init("c4", Tensor::from_vector<int32_t>(DType::kInt32, {2}, {0x3fc00000, static_cast<int32_t>(0xc0000000)}));
  b.init("c5", c.clone());
  b.input("c5", c.clone());  // a graph input with c1's value as its default
  b.init("z0", Tensor::from_vector<float>(DType::kFloat32, {2}, {0.0f, 1.0f}));
  b.init("z1", Tensor::from_vector<float>(DType::kFloat32, {2}, {-0.0f, 1.0f}));
  b.node("Constant", {}, {"k1"}, "const_k1").attributes["value"] = tensor_attr(c.clone());
  const Tensor seven = Tensor::from_vector<float>(DType::kFloat32, {2}, {7.0f, -7.0f});
  b.node("Constant", {}, {"k2"}, "const_k2").attributes["value"] = tensor_attr(seven);
  b.node("Constant", {}, {"k3"}, "const_k3").attributes["value"] = tensor_attr(seven.clone());
  b.node("Add", {"x", "c1"}, {"a1"}, "add_c1");
  b.node("Mul", {"x", "c2"}, {"a2"}, "mul_c2");
  b.node("Sub", {"x", "c3"}, {"a3"}, "sub_c3");
  auto& cast = b.node("Cast", {"c4"}, {"c4f"}, "cast_c4");
  cast.attributes["to"] = int_attr(1);
  b.node("Div", {"x", "c4f"}, {"a4"}, "div_c4");
  b.node("Div", {"c5", "x"}, {"a5"}, "div_c5");
  b.node("Max", {"x", "k1"}, {"a6"}, "max_k1");
  b.node("Max", {"x", "k2"}, {"a7"}, "max_k2");
  b.node("Min", {"x", "k3"}, {"a8"}, "min_k3");
  b.node("Div", {"x", "z0"}, {"a9"}, "div_z0");
  b.node("Add", {"x", "z1"}, {"a10"}, "add_z1");
  for (int i = 1; i <= 10; ++i) b.output("a" + std::to_string(i));
  EXPECT_EQ(merge_and_compare(b), 3);  // c2, k1, k3
  EXPECT_EQ(node_named(b.m, "mul_c2").inputs[1], "c1");
  EXPECT_EQ(node_named(b.m, "max_k1").inputs[1], "c1");
  EXPECT_EQ(node_named(b.m, "min_k3").inputs[1], "k2");
  EXPECT_EQ(node_named(b.m, "sub_c3").inputs[1], "c3");
  EXPECT_EQ(node_named(b.m, "cast_c4").inputs[0], "c4");
  EXPECT_EQ(node_named(b.m, "div_c5").inputs[0], "c5");
  EXPECT_EQ(node_named(b.m, "add_z1").inputs[1], "z1");
  EXPECT_FALSE(b.m.graph.initializers.count("c2"));
  for (const char* kept : {"c1", "c3", "c4", "c5", "z0", "z1"}) EXPECT_TRUE(b.m.graph.initializers.count(kept)) << kept;
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Constant", "Add", "Mul", "Sub", "Cast", "Div", "Div", "Max",
                                                     "Max", "Min", "Div", "Add"}));
}

// A branch of If: out = op(v) for an outer value v.
ir::Graph branch(const std::string& op, const std::string& v, const std::string& out) {
  ir::Graph g;
  g.name = "branch";
  g.nodes.push_back(make_node(op, {v}, {out}, op + "_in_branch"));
  g.outputs.push_back(ir::ValueInfo{out, {}});
  return g;
}

// If nodes merge when their branches are written the same, not otherwise (nor when a branch draws random
// numbers); a branch that reads a merged-away value reads the kept one, in a copy: the model the pass was
// given a copy of keeps its own subgraphs.
TEST(EliminateCommonSubexpressions, SubgraphsCompareByValueAndTheirReadsAreRenamed) {
  Builder b;
  b.input("x", random_tensor({5}));
  b.input("cond", Tensor::from_vector<bool>(DType::kBool, {}, {true}));
  b.node("Relu", {"x"}, {"r1"}, "relu1");
  b.node("Relu", {"x"}, {"r2"}, "relu2");
  auto add_if = [&](const std::string& name, ir::Graph then_branch, ir::Graph else_branch, const std::string& out) {
    auto& n = b.node("If", {"cond"}, {out}, name);
    n.attributes["then_branch"] = graph_attr(std::move(then_branch));
    n.attributes["else_branch"] = graph_attr(std::move(else_branch));
  };
  add_if("if1", branch("Neg", "r1", "t"), branch("Abs", "r1", "e"), "o1");
  add_if("if2", branch("Neg", "r2", "t"), branch("Abs", "r2", "e"), "o2");   // equal once r2 reads as r1
  add_if("if3", branch("Neg", "r2", "t"), branch("Exp", "r2", "e"), "o3");   // another else branch
  add_if("if4", branch("RandomNormalLike", "r1", "t"), branch("Abs", "r1", "e"), "o4");
  add_if("if5", branch("RandomNormalLike", "r1", "t"), branch("Abs", "r1", "e"), "o5");
  b.node("Sum", {"o1", "o2", "o3"}, {"y"}, "sum");
  b.node("Shape", {"o4"}, {"s4"}, "shape4");
  b.node("Shape", {"o5"}, {"s5"}, "shape5");
  for (const char* o : {"y", "s4", "s5"}) b.output(o);
  const ir::Model original = b.m;  // shares the subgraphs
  EXPECT_EQ(merge_and_compare(b), 2);  // relu2, if2
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Relu", "If", "If", "If", "If", "Sum", "Shape", "Shape"}));
  EXPECT_EQ(node_named(b.m, "sum").inputs, (std::vector<std::string>{"o1", "o1", "o3"}));
  const ir::Node& if3 = node_named(b.m, "if3");
  EXPECT_EQ(if3.attr("then_branch")->g->nodes[0].inputs[0], "r1");
  EXPECT_EQ(if3.attr("else_branch")->g->nodes[0].inputs[0], "r1");
  EXPECT_EQ(node_named(original, "if3").attr("else_branch")->g->nodes[0].inputs[0], "r2");
}

// BERT's export: per layer, Where(mask, Constant 0, Constant -inf) added to the scores before Softmax. After
// folding, the constants are initializers of equal bytes; the pass leaves one pair and one Where.
void bert_mask_layers(Builder& b, int layers) {
  Tensor mask(DType::kBool, {2, 1, 1, 5});
  std::bernoulli_distribution coin(0.6);
  for (int64_t i = 0; i < mask.numel(); ++i) mask.data<bool>()[i] = i % 5 == 0 || coin(rng());  // no empty row
  b.input("mask", mask);
  b.input("x", random_tensor({2, 2, 5, 4}));
  for (int l = 0; l < layers; ++l) {
    const std::string s = std::to_string(l);
    b.init("w" + s, random_tensor({4, 5}));
    b.node("Constant", {}, {"zero" + s}, "Constant_8_" + s).attributes["value"] =
        tensor_attr(Tensor::from_vector<float>(DType::kFloat32, {}, {0.0f}));
    b.node("Constant", {}, {"ninf" + s}, "Constant_9_" + s).attributes["value"] =
        tensor_attr(Tensor::from_vector<float>(DType::kFloat32, {}, {-std::numeric_limits<float>::infinity()}));
    b.node("Where", {"mask", "zero" + s, "ninf" + s}, {"bias" + s}, "where" + s);
    b.node("MatMul", {"x", "w" + s}, {"scores" + s}, "matmul" + s);
    b.node("Add", {"scores" + s, "bias" + s}, {"masked" + s}, "add" + s);
    b.node("Softmax", {"masked" + s}, {"p" + s}, "softmax" + s).attributes["axis"] = int_attr(-1);
    b.output("p" + s);
  }
}

int count_op(const ir::Model& m, const std::string& op) {
  int k = 0;
  for (const auto& n : m.graph.nodes) k += n.op_type == op;
  return k;
}

TEST(EliminateCommonSubexpressions, BertMaskPerLayerBecomesOneWhere) {
  Builder b;
  bert_mask_layers(b, 3);
  const std::vector<Tensor> before = b.run();
  ASSERT_TRUE(passes::fold_constants_to_fixpoint(b.m).ok());
  int merged = -1, removed = -1;
  ASSERT_TRUE(passes::eliminate_common_subexpressions(b.m, &merged).ok());
  ASSERT_TRUE(passes::eliminate_dead_nodes(b.m, &removed).ok());
  EXPECT_EQ(merged, 6);  // two pairs of constants, two Where
  EXPECT_EQ(count_op(b.m, "Where"), 1);
  EXPECT_EQ(count_op(b.m, "MatMul"), 3);
  EXPECT_EQ(b.m.graph.initializers.size(), 5u);  // w0..w2, one 0, one -inf
  for (int l = 0; l < 3; ++l) EXPECT_EQ(node_named(b.m, "add" + std::to_string(l)).inputs[1], "bias0");
  expect_identical(b.run(), before);
}

// The builder runs the pass from opt level 1 on; level 0 leaves the graph as imported.
TEST(EliminateCommonSubexpressions, BuildRunsItFromOptLevelOne) {
  Builder b;
  bert_mask_layers(b, 4);
  Logger quiet(Severity::kError);
  for (int level : {0, 1, 3}) {
    engine::BuildSettings settings;
    settings.device = "cpu";
    settings.opt_level = level;
    auto plan = builder::build_plan(b.m, settings, quiet);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    EXPECT_EQ(count_op(plan->model, "Where"), level == 0 ? 4 : 1) << "opt level " << level;
    EXPECT_EQ(plan->layers.size(), plan->model.graph.nodes.size());
  }
}

// A --layer-precision pin names a layer: that layer keeps its identity (it is not merged into its twin),
// so the pin is honored and the build does not fail with "no layer named".
TEST(EliminateCommonSubexpressions, PinnedLayersAreNotMergedAway) {
  Builder b;
  bert_mask_layers(b, 3);
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  int merged = 0;
  ASSERT_TRUE(passes::eliminate_common_subexpressions(b.m, &merged, {"where1"}).ok());
  EXPECT_EQ(count_op(b.m, "Where"), 2);  // where0 and where2 merged; where1 stays
  Logger quiet(Severity::kError);
  Builder c;
  bert_mask_layers(c, 3);
  engine::BuildSettings settings;
  settings.device = "cpu";
  settings.layer_precisions["where2"] = "fp32";
  auto plan = builder::build_plan(c.m, settings, quiet);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(count_op(plan->model, "Where"), 2);
}

}  // namespace
}  // namespace kiln::testing
