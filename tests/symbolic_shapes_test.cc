// Shape inference with dynamic dims (issue 5): symbolic values of shape computations, symbolic products, and
// the Reshape targets resolve_shape_targets makes constant from them. Each rewrite is also run on the CPU at
// concrete shapes against the graph before it.
#include <gtest/gtest.h>

#include <random>

#include "graph_builder.h"
#include "passes/passes.h"
#include "passes/symbolic_dims.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

using ir::Dim;

std::mt19937& rng() {
  static std::mt19937 gen(20261124);
  return gen;
}

Tensor ints(std::vector<int64_t> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<int64_t>(DType::kInt64, {n}, v);
}
Tensor int_scalar(int64_t v) { return Tensor::from_vector<int64_t>(DType::kInt64, {}, {v}); }

// x: float32 input of dims `dims` (symbols where named), fed a random tensor of `shape`.
void dynamic_input(GraphBuilder& b, const std::string& name, std::vector<Dim> dims, const Shape& shape) {
  b.input(name, random_tensor(rng(), DType::kFloat32, shape, -1.0f, 1.0f));
  b.m.graph.inputs.back().type.dims = std::move(dims);
}

std::string dims_text(const ir::Model& m, const std::string& value) {
  const ir::TypeInfo* t = m.graph.type_of(value);
  return t == nullptr ? "untyped" : t->to_string();
}

TEST(SymbolicDims, Products) {
  using passes::DimProduct;
  DimProduct p = DimProduct::of(Dim::named("seq"));
  p *= DimProduct::of(Dim::named("batch"));
  p *= DimProduct::of(Dim::of(2));
  EXPECT_EQ(p.to_dim().symbol, "2*batch*seq");
  EXPECT_EQ(DimProduct::of(p.to_dim()).divided_by(DimProduct::of(Dim::named("seq"))).to_dim().symbol, "2*batch");
  EXPECT_EQ(DimProduct::of(Dim::named("2*batch")).divided_by(DimProduct::of(Dim::of(2))).to_dim().symbol, "batch");
  EXPECT_EQ(DimProduct::of(Dim::of(768)).divided_by(DimProduct::of(Dim::of(12))).to_dim().value, 64);
  EXPECT_FALSE(DimProduct::of(Dim::named("batch")).divided_by(DimProduct::of(Dim::named("seq"))).valid);
  EXPECT_FALSE(DimProduct::of(Dim::of(10)).divided_by(DimProduct::of(Dim::of(4))).valid);
  EXPECT_FALSE(DimProduct::of(Dim()).valid);
  EXPECT_TRUE(passes::same_dim(Dim::named("batch*seq"), Dim::named("batch*seq")));
  EXPECT_FALSE(passes::same_dim(Dim(), Dim()));
}

// transformers' head split: [B, S, 768] -> Reshape(., Concat(B, S, 12, 64)) with B and S read by Shape ->
// Gather -> Unsqueeze; then back with Concat(B, S, -1) after a [B*S, 768] round trip.
GraphBuilder head_split() {
  GraphBuilder b;
  dynamic_input(b, "x", {Dim::named("batch"), Dim::named("seq"), Dim::of(768)}, {2, 5, 768});
  b.init("i0", int_scalar(0));
  b.init("i1", int_scalar(1));
  b.init("axes0", ints({0}));
  b.init("heads", ints({12, 64}));
  b.init("minus1", ints({-1}));
  b.init("flat", ints({-1, 768}));
  b.node("Shape", {"x"}, {"shape"});
  b.node("Gather", {"shape", "i0"}, {"B"});
  b.node("Gather", {"shape", "i1"}, {"S"});
  b.node("Unsqueeze", {"B", "axes0"}, {"B1"});
  b.node("Unsqueeze", {"S", "axes0"}, {"S1"});
  b.node("Concat", {"B1", "S1", "heads"}, {"target"}).attributes["axis"].i = 0;
  b.m.graph.nodes.back().attributes["axis"].type = ir::Attribute::Type::kInt;
  b.node("Reshape", {"x", "target"}, {"split"}, "split");
  b.node("Reshape", {"split", "flat"}, {"rows"}, "rows");  // [batch*seq, 768]
  b.node("Concat", {"B1", "S1", "minus1"}, {"back_target"}).attributes["axis"].type = ir::Attribute::Type::kInt;
  b.node("Reshape", {"rows", "back_target"}, {"y"}, "back");
  b.output("y");
  return b;
}

TEST(SymbolicShapes, FollowsShapeComputationsIntoReshapes) {
  GraphBuilder b = head_split();
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  EXPECT_EQ(dims_text(b.m, "split"), "float32[batch,seq,12,64]");
  EXPECT_EQ(dims_text(b.m, "rows"), "float32[batch*seq,768]");
  EXPECT_EQ(dims_text(b.m, "y"), "float32[batch,seq,768]");
}

TEST(SymbolicShapes, ReshapeTargetsBecomeConstant) {
  GraphBuilder b = head_split();
  const int resolved = b.apply_counted_pass(
      [](ir::Model& m, int* n) { return passes::resolve_shape_targets(m, n); }, 0, /*drop_dead=*/true);
  // split: [batch, seq, 768] -> [0, 0, 12, 64]. back: [batch*seq, 768] -> [batch, seq, 768] has two dims
  // that are neither numbers nor copies, so it keeps its computed target (and the shape computation lives).
  EXPECT_EQ(resolved, 1);
  const ir::Node* split = nullptr;
  const ir::Node* back = nullptr;
  for (const auto& node : b.m.graph.nodes) {
    if (node.name == "split") split = &node;
    if (node.name == "back") back = &node;
  }
  ASSERT_NE(split, nullptr);
  ASSERT_NE(back, nullptr);
  ASSERT_TRUE(b.m.graph.initializers.count(split->inputs[1]));
  EXPECT_EQ(b.m.graph.initializers.at(split->inputs[1]).to_int64_vector(), (std::vector<int64_t>{0, 0, 12, 64}));
  EXPECT_FALSE(b.m.graph.initializers.count(back->inputs[1]));
  // The same graph at another batch and sequence.
  b.feeds["x"] = random_tensor(rng(), DType::kFloat32, {3, 1, 768}, -1.0f, 1.0f);
  const std::vector<Tensor> y = b.run();
  ASSERT_EQ(y.size(), 1u);
  EXPECT_EQ(y[0].shape(), (Shape{3, 1, 768}));
}

TEST(SymbolicShapes, LeavesTargetsItCannotWrite) {
  // [batch*seq] -> [batch, 1, 1, seq]: two dims neither numbers nor the input's at their place.
  GraphBuilder b;
  dynamic_input(b, "x", {Dim::named("batch"), Dim::named("seq")}, {2, 3});
  b.init("minus1", ints({-1}));
  b.node("Reshape", {"x", "minus1"}, {"flat"});
  b.node("Shape", {"x"}, {"shape"});
  b.init("s0", ints({0}));
  b.init("s1", ints({1}));
  b.init("s2", ints({2}));
  b.init("ones", ints({1, 1}));
  b.node("Slice", {"shape", "s0", "s1"}, {"B"});
  b.node("Slice", {"shape", "s1", "s2"}, {"S"});
  b.node("Concat", {"B", "ones", "S"}, {"target"}).attributes["axis"].type = ir::Attribute::Type::kInt;
  b.node("Reshape", {"flat", "target"}, {"y"});
  b.output("y");
  const int resolved = b.apply_counted_pass(
      [](ir::Model& m, int* n) { return passes::resolve_shape_targets(m, n); }, 0, true);
  EXPECT_EQ(resolved, 0);
  EXPECT_EQ(dims_text(b.m, "y"), "float32[batch,1,1,seq]");
}

TEST(SymbolicShapes, SliceRangeExpandAndConstantOfShape) {
  // Position ids sliced to the sequence length, a Range over it, and the Expand target exporters write as
  // Where(Equal(shape, -1), 1, shape).
  GraphBuilder b;
  dynamic_input(b, "x", {Dim::named("batch"), Dim::named("seq")}, {2, 6});
  std::vector<int64_t> positions(32);
  for (int64_t i = 0; i < 32; ++i) positions[i] = i;
  b.init("positions", Tensor::from_vector<int64_t>(DType::kInt64, {1, 32}, positions));
  b.init("i1", int_scalar(1));
  b.init("zero", int_scalar(0));
  b.init("one", int_scalar(1));
  b.init("axes0", ints({0}));
  b.init("s0", ints({0}));
  b.init("ax1", ints({1}));
  b.init("minus1s", ints({-1, -1}));
  b.node("Shape", {"x"}, {"shape"});
  b.node("Gather", {"shape", "i1"}, {"S"});
  b.node("Unsqueeze", {"S", "axes0"}, {"S1"});
  b.node("Slice", {"positions", "s0", "S1", "ax1"}, {"pos"});    // [1, seq]
  b.node("Range", {"zero", "S", "one"}, {"r"});                  // [seq]
  b.node("ConstantOfShape", {"shape"}, {"zeros"});               // float32 [batch, seq]
  b.node("Equal", {"shape", "minus1s"}, {"is_minus1"});
  b.node("Cast", {"shape"}, {"shape32"}).attributes["to"].i = static_cast<int64_t>(DType::kInt64);
  b.m.graph.nodes.back().attributes["to"].type = ir::Attribute::Type::kInt;
  b.node("Where", {"is_minus1", "minus1s", "shape32"}, {"want"});
  b.node("Cast", {"pos"}, {"posf"}).attributes["to"].i = static_cast<int64_t>(DType::kFloat32);
  b.m.graph.nodes.back().attributes["to"].type = ir::Attribute::Type::kInt;
  b.node("Expand", {"posf", "want"}, {"e"});                     // [batch, seq]
  b.node("Add", {"e", "zeros"}, {"sum"});
  b.node("Add", {"sum", "x"}, {"y"});
  b.output("y");
  b.output("r");
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  EXPECT_EQ(dims_text(b.m, "pos"), "int64[1,seq]");
  EXPECT_EQ(dims_text(b.m, "r"), "int64[seq]");
  EXPECT_EQ(dims_text(b.m, "zeros"), "float32[batch,seq]");
  EXPECT_EQ(dims_text(b.m, "e"), "float32[batch,seq]");
  EXPECT_EQ(dims_text(b.m, "y"), "float32[batch,seq]");
}

TEST(SymbolicShapes, ReshapeAndExpandToTheirOwnDimsAreNoops) {
  GraphBuilder b;
  dynamic_input(b, "x", {Dim::named("batch"), Dim::of(4)}, {3, 4});
  b.node("Shape", {"x"}, {"shape"});
  b.node("Reshape", {"x", "shape"}, {"same"});
  b.node("Expand", {"same", "shape"}, {"also_same"});
  b.node("Relu", {"also_same"}, {"y"});
  b.output("y");
  const int removed = b.apply_counted_pass([](ir::Model& m, int* n) { return passes::remove_noops(m, n); }, 0, true);
  EXPECT_EQ(removed, 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Relu"}));
}

}  // namespace
}  // namespace kiln::testing
