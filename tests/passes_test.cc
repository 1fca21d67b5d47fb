// Each pass on a small graph, before and after.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "graph_builder.h"
#include "kernel_harness.h"
#include "onnx/importer.h"
#include "passes/passes.h"
#include "test_models.h"

namespace kiln {
namespace {

ir::Model import(const onnx::ModelProto& m) {
  auto model = onnx_io::import_model(testing::serialize(m), ".");
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return std::move(model).value();
}

using testing::op_types;

TEST(Passes, InferShapesKeepsSymbolsAndFoldsNothingDynamic) {
  ir::Model m = import(testing::mlp_with_shape_chain());
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  const ir::TypeInfo* act = m.graph.type_of("act");
  ASSERT_NE(act, nullptr);
  EXPECT_EQ(act->to_string(), "float32[batch,3]");
  int folded = -1;
  ASSERT_TRUE(passes::fold_constants(m, &folded).ok());
  // The batch dimension is symbolic: Shape cannot fold, and so neither can Gather and Concat.
  EXPECT_EQ(folded, 0);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"MatMul", "Add", "Relu", "Shape", "Gather", "Concat", "Reshape", "Neg"}));
}

TEST(Passes, StaticInputShapesFoldTheShapeChain) {
  ir::Model m = import(testing::mlp_with_shape_chain());
  ASSERT_TRUE(passes::apply_input_shapes(m, {{"x", {6, 4}}}).ok());
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  int folded = 0, removed = 0;
  ASSERT_TRUE(passes::fold_constants(m, &folded).ok());
  EXPECT_EQ(folded, 3);  // Shape, Gather, Concat
  ASSERT_TRUE(m.graph.initializers.count("new_shape"));
  EXPECT_EQ(m.graph.initializers["new_shape"].to_int64_vector(), (std::vector<int64_t>{6, -1}));
  ASSERT_TRUE(passes::eliminate_dead_nodes(m, &removed).ok());
  EXPECT_EQ(removed, 1);  // the unused Neg
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"MatMul", "Add", "Relu", "Reshape"}));
  // Initializers nothing reads any more are dropped.
  EXPECT_FALSE(m.graph.initializers.count("zero"));
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  EXPECT_EQ(m.graph.type_of("y")->to_string(), "float32[6,3]");
}

// Each Reshape(y, Shape(y)) of the chain becomes static only once the Shape before it has folded: one more
// round each, 40 in all (the fixpoint once stopped at 32 rounds, leaving ViT-B/16's last layers unfolded).
TEST(Passes, FoldingRunsAsManyRoundsAsTheShapeChainNeeds) {
  testing::GraphBuilder b;
  b.input("y0", Tensor(DType::kFloat32, {2, 3}));
  const int kLinks = 40;
  for (int i = 1; i <= kLinks; ++i) {
    const std::string prev = "y" + std::to_string(i - 1), s = "s" + std::to_string(i);
    b.node("Shape", {prev}, {s});
    b.node("Reshape", {prev, s}, {"y" + std::to_string(i)});
  }
  b.output("y" + std::to_string(kLinks));
  int folded = 0;
  ASSERT_TRUE(passes::fold_constants_to_fixpoint(b.m, &folded).ok());
  EXPECT_EQ(folded, kLinks);
  for (const auto& n : b.m.graph.nodes) EXPECT_NE(n.op_type, "Shape") << n.name;
  EXPECT_EQ(b.m.graph.type_of("y40")->to_string(), "float32[2,3]");
}

// Split's parts from its split input, its attribute, or equal parts (GPT-2's Q/K/V split: unknown types
// there left most of a GPU engine on the CPU).
TEST(Passes, InferShapesOfSplit) {
  testing::GraphBuilder b(18);
  b.input("x", Tensor(DType::kFloat16, {2, 16, 48}));
  b.init("sizes", Tensor::from_vector<int64_t>(DType::kInt64, {3}, {16, 16, 16}));
  b.node("Split", {"x", "sizes"}, {"q", "k", "v"}).attributes["axis"] = testing::int_attr(2);
  b.node("Split", {"x"}, {"a", "c"}).attributes["axis"] = testing::int_attr(-1);
  b.node("Split", {"x"}, {"p", "r", "s", "t", "u"}).attributes["axis"] = testing::int_attr(1);  // 4, 4, 4, 4, 0
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  for (const char* v : {"q", "k", "v"}) EXPECT_EQ(b.m.graph.type_of(v)->to_string(), "float16[2,16,16]") << v;
  EXPECT_EQ(b.m.graph.type_of("a")->to_string(), "float16[2,16,24]");
  EXPECT_EQ(b.m.graph.type_of("p")->to_string(), "float16[2,4,48]");
  EXPECT_EQ(b.m.graph.type_of("u")->to_string(), "float16[2,0,48]");
}

// TopK's outputs have k along the axis when k is a constant (else that dim is unknown: the data's), NonZero's
// [rank, unknown]: what tells a data-dependent output (ExecutionContext's output allocator) from a fixed one.
TEST(Passes, InferShapesOfTopKAndNonZero) {
  testing::GraphBuilder b(18);
  b.input("x", Tensor(DType::kFloat32, {3, 10}));
  b.input("k_in", Tensor(DType::kInt64, {1}));
  b.init("k", Tensor::from_vector<int64_t>(DType::kInt64, {1}, {4}));
  b.node("TopK", {"x", "k"}, {"values", "indices"});
  b.node("TopK", {"x", "k_in"}, {"v2", "i2"}).attributes["axis"] = testing::int_attr(0);
  b.node("NonZero", {"x"}, {"nz"});
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  EXPECT_EQ(b.m.graph.type_of("values")->to_string(), "float32[3,4]");
  EXPECT_EQ(b.m.graph.type_of("indices")->to_string(), "int64[3,4]");
  EXPECT_FALSE(b.m.graph.type_of("v2")->is_static());
  EXPECT_EQ(b.m.graph.type_of("i2")->dtype, DType::kInt64);
  EXPECT_EQ(b.m.graph.type_of("nz")->dims.size(), 2u);
  EXPECT_EQ(b.m.graph.type_of("nz")->dims[0].value, 2);
  EXPECT_FALSE(b.m.graph.type_of("nz")->dims[1].known());
}

TEST(Passes, FoldsConstantSubgraphsButNotInputsWithDefaults) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2"});
  testing::set_type(g->add_input(), "scale", 1, {"2"});  // an input with a default value
  testing::set_type(g->add_output(), "y", 1, {"2"});
  testing::add_float_initializer(g, "a", {2}, {1, 2});
  testing::add_float_initializer(g, "scale", {2}, {3, 4});
  testing::add_node(g, "Exp", {"a"}, {"ea"}, "exp_const");
  testing::add_node(g, "Mul", {"ea", "scale"}, {"s"}, "mul_default");
  testing::add_node(g, "Add", {"x", "s"}, {"y"}, "add_input");
  ir::Model m = import(p);
  int folded = 0;
  ASSERT_TRUE(passes::fold_constants(m, &folded).ok());
  EXPECT_EQ(folded, 1);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Mul", "Add"}));
  EXPECT_NEAR(m.graph.initializers["ea"].data<float>()[1], std::exp(2.0f), 1e-5);
}

TEST(Passes, UnseededTrainingDropoutIsNotFolded) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_output(), "y", 1, {"4"});
  testing::add_float_initializer(g, "a", {4}, {1, 2, 3, 4});
  testing::add_float_initializer(g, "ratio", {}, {0.5f});
  auto* training = g->add_initializer();
  training->set_name("training");
  training->set_data_type(9);
  training->add_int32_data(1);
  testing::add_node(g, "Dropout", {"a", "ratio", "training"}, {"y"}, "drop");
  ir::Model m = import(p);
  int folded = -1;
  ASSERT_TRUE(passes::fold_constants(m, &folded).ok());
  EXPECT_EQ(folded, 0);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Dropout"}));
}

// x -> Identity -> Relu -> Cast(to float) -> Reshape(same shape) -> Dropout(inference) -> Relu -> Identity -> y:
// every no-op but the last Identity (whose output is the graph's) is bypassed; a Cast that changes the type
// and a training-mode Dropout stay.
TEST(Passes, RemoveNoopsBypassesWhatChangesNothing) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", "3"});
  testing::set_type(g->add_output(), "y", 1, {"2", "3"});
  testing::set_type(g->add_output(), "z", 10, {"2", "3"});
  testing::set_type(g->add_output(), "t", 1, {"2", "3"});
  testing::add_int64_initializer(g, "shape", {2, 3});
  auto* training = g->add_initializer();
  training->set_name("training");
  training->set_data_type(9);
  training->add_int32_data(1);
  testing::add_node(g, "Identity", {"x"}, {"a"}, "id1");
  testing::add_node(g, "Relu", {"a"}, {"b"}, "relu1");
  auto* cast = testing::add_node(g, "Cast", {"b"}, {"c"}, "cast_same");
  auto* to = cast->add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(1);
  testing::add_node(g, "Reshape", {"c", "shape"}, {"d"}, "reshape_same");
  testing::add_node(g, "Dropout", {"d"}, {"e"}, "dropout");
  testing::add_node(g, "Relu", {"e"}, {"f"}, "relu2");
  testing::add_node(g, "Identity", {"f"}, {"y"}, "id_out");
  auto* half = testing::add_node(g, "Cast", {"f"}, {"z"}, "cast_half");
  auto* to16 = half->add_attribute();
  to16->set_name("to");
  to16->set_type(onnx::AttributeProto::INT);
  to16->set_i(10);
  testing::add_node(g, "Dropout", {"f", "", "training"}, {"t"}, "dropout_training");
  ir::Model m = import(p);
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  int removed = -1;
  ASSERT_TRUE(passes::remove_noops(m, &removed).ok());
  EXPECT_EQ(removed, 4);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Relu", "Relu", "Identity", "Cast", "Dropout"}));
  EXPECT_EQ(m.graph.nodes[0].inputs[0], "x");
  EXPECT_EQ(m.graph.nodes[1].inputs[0], "b");
  EXPECT_EQ(m.graph.nodes[2].outputs[0], "y");
}

TEST(Passes, InputShapesAreChecked) {
  ir::Model m = import(testing::mlp_with_shape_chain());
  EXPECT_FALSE(passes::apply_input_shapes(m, {{"nope", {1, 4}}}).ok());
  EXPECT_FALSE(passes::apply_input_shapes(m, {{"x", {1, 4, 1}}}).ok());
  Status st = passes::apply_input_shapes(m, {{"x", {1, 5}}});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("dimension 1"), std::string::npos) << st.message();
}

TEST(Passes, ConvAndPoolShapes) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"N", "3", "32", "32"});
  testing::set_type(g->add_output(), "y", 1, {});
  std::vector<float> w(8 * 3 * 3 * 3, 0.1f);
  testing::add_float_initializer(g, "w", {8, 3, 3, 3}, w);
  auto* conv = testing::add_node(g, "Conv", {"x", "w"}, {"c"}, "conv");
  auto* strides = conv->add_attribute();
  strides->set_name("strides");
  strides->set_type(onnx::AttributeProto::INTS);
  strides->add_ints(2);
  strides->add_ints(2);
  auto* pool = testing::add_node(g, "MaxPool", {"c"}, {"y"}, "pool");
  auto* k = pool->add_attribute();
  k->set_name("kernel_shape");
  k->set_type(onnx::AttributeProto::INTS);
  k->add_ints(3);
  k->add_ints(3);
  ir::Model m = import(p);
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  EXPECT_EQ(m.graph.value_types["c"].to_string(), "float32[N,8,15,15]");
  EXPECT_EQ(m.graph.value_types["y"].to_string(), "float32[N,8,13,13]");
}

TEST(Passes, LowerPrecisionConvertsOncePerValueAndCastsBackAtTheEdges) {
  ir::Model m = import(testing::mlp_with_shape_chain());
  ASSERT_TRUE(passes::apply_input_shapes(m, {{"x", {6, 4}}}).ok());
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  ASSERT_TRUE(passes::fold_constants(m).ok());
  ASSERT_TRUE(passes::eliminate_dead_nodes(m).ok());
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  // Before: MatMul, Add, Relu, Reshape, all float32. Lower MatMul, Add and Reshape; keep Relu in float32.
  std::set<std::string> lowered;
  auto lower = [](const ir::Node& n) { return n.op_type != "Relu"; };
  ASSERT_TRUE(passes::lower_precision(m, DType::kFloat16, lower, &lowered).ok());
  EXPECT_EQ(lowered, (std::set<std::string>{"fc", "bias", "reshape"}));
  // After: x is cast down once; the weights are converted at build time (no Cast); Relu reads a float32
  // copy and Reshape a float16 one; the graph output y is cast back, keeping its name and type.
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Cast", "MatMul", "Add", "Cast", "Relu", "Cast", "Reshape", "Cast"}));
  EXPECT_EQ(m.graph.initializers.at("w__fp16").dtype(), DType::kFloat16);
  EXPECT_EQ(m.graph.initializers.at("b__fp16").dtype(), DType::kFloat16);
  EXPECT_EQ(m.graph.type_of("xwb__fp16")->to_string(), "float16[6,3]");
  EXPECT_EQ(m.graph.type_of("y")->to_string(), "float32[6,3]");
  EXPECT_EQ(m.graph.nodes.back().outputs[0], "y");
  // Nothing to lower: a graph without float32 values is left alone.
  int removed = 0;
  ASSERT_TRUE(passes::eliminate_dead_nodes(m, &removed).ok());
  EXPECT_EQ(removed, 0);
  EXPECT_FALSE(passes::lower_precision(m, DType::kInt8, lower).ok());
}

// A node whose output type shape inference cannot tell (Tile, here) stays in float32 even where the predicate
// would lower it: lowered, its readers would take its float16 data for float32 (GPT-2's engines did, before
// Split was inferred: "inputs must have the same dtype, got float16 and float32" at run time).
TEST(Passes, LowerPrecisionKeepsNodesWithUnknownOutputTypesInFloat32) {
  testing::GraphBuilder b;
  b.input("x", Tensor::from_vector<float>(DType::kFloat32, {2, 3}, {-1, 2, -3, 4, -5, 6}));
  b.init("reps", Tensor::from_vector<int64_t>(DType::kInt64, {2}, {2, 1}));
  b.scalar("half", 0.5f);
  b.node("Relu", {"x"}, {"r"}, "relu");
  b.node("Tile", {"r", "reps"}, {"t"}, "tile");
  b.node("Mul", {"t", "half"}, {"y"}, "scale");
  b.output("y");
  const std::vector<Tensor> before = b.run();
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  ASSERT_EQ(b.m.graph.type_of("t"), nullptr);  // if Tile gains inference, pick another op this test
  std::set<std::string> lowered;
  ASSERT_TRUE(passes::lower_precision(b.m, DType::kFloat16, [](const ir::Node&) { return true; }, &lowered).ok());
  EXPECT_EQ(lowered, (std::set<std::string>{"relu"}));
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Cast", "Relu", "Cast", "Tile", "Mul"}));
  EXPECT_EQ(b.m.graph.nodes[3].inputs[0], "r");  // the float32 copy
  const std::vector<Tensor> after = b.run();
  ASSERT_EQ(after.size(), 1u);
  testing::expect_close(after[0], before[0], 1e-3, "y");
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Shape and Size read only dims: fed a lowered value, they read it as it is, and no Cast back to float32 is
// made for them (a dynamic BERT's Shape of its embeddings' LayerNorm output cost such a Cast, 50 MB written
// at batch 128). A float32 reader of the same value still gets its Cast.
TEST(Passes, LowerPrecisionGivesShapeAndSizeTheLoweredValue) {
  for (bool also_float32_reader : {false, true}) {
    SCOPED_TRACE(also_float32_reader ? "and a float32 reader" : "Shape and Size only");
    testing::GraphBuilder b;
    b.input("x", Tensor::from_vector<float>(DType::kFloat32, {2, 3}, {-1, 2, -3, 4, -5, 6}));
    b.node("Relu", {"x"}, {"r"}, "relu");
    b.node("Shape", {"r"}, {"s"}, "shape");
    b.node("Size", {"r"}, {"n"}, "size");
    b.output("s");
    b.output("n");
    if (also_float32_reader) {
      b.node("Neg", {"r"}, {"neg"}, "neg");
      b.output("neg");
    }
    const std::vector<Tensor> before = b.run();
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    auto only_relu = [](const ir::Node& n) { return n.op_type == "Relu"; };
    ASSERT_TRUE(passes::lower_precision(b.m, DType::kFloat16, only_relu).ok());
    const std::vector<std::string> want =
        also_float32_reader ? std::vector<std::string>{"Cast", "Relu", "Shape", "Size", "Cast", "Neg"}
                            : std::vector<std::string>{"Cast", "Relu", "Shape", "Size"};
    EXPECT_EQ(op_types(b.m), want);
    EXPECT_EQ(b.m.graph.nodes[2].inputs[0], "r__fp16");
    EXPECT_EQ(b.m.graph.nodes[3].inputs[0], "r__fp16");
    const std::vector<Tensor> after = b.run();
    ASSERT_EQ(after.size(), before.size());
    for (size_t i = 0; i < after.size(); ++i) testing::expect_close(after[i], before[i], 1e-3, "output " + std::to_string(i));
  }
}

}  // namespace
}  // namespace kiln
