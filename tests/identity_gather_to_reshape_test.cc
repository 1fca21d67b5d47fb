// identity_gather_to_reshape: a Gather of constant indices 0..n-1 along its axis becomes a Reshape (a view),
// computing the same tensor; other Gathers stay. And a dynamically exported BERT's padding-mask Gather, once
// the build fixes the shapes, is one of them.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "builder/optimize_graph.h"
#include "graph_builder.h"
#include "onnx/importer.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("identity gather tests"));
  return gen;
}

// x of `shape` -> Gather(indices, axis) -> Neg -> y.
GraphBuilder gather_graph(const Shape& shape, const Tensor& indices, int64_t axis, int opset = 17) {
  GraphBuilder b(opset);
  b.input("x", random_tensor(rng(), DType::kFloat32, shape, -1.0f, 1.0f));
  b.init("idx", indices);
  ir::Node& gather = b.node("Gather", {"x", "idx"}, {"g"}, "mask_gather");
  gather.attributes["axis"] = passes::int_attribute(axis);
  b.node("Neg", {"g"}, {"y"}, "neg");
  b.output("y");
  return b;
}

Tensor arange(int64_t n, Shape shape, DType dt = DType::kInt64) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  Tensor t = Tensor::from_vector<int64_t>(DType::kInt64, std::move(shape), v);
  return dt == DType::kInt64 ? t : cast_tensor(t, dt).value();
}

int rewrite(GraphBuilder& b) {
  return b.apply_counted_pass([](ir::Model& m, int* n) { return passes::identity_gather_to_reshape(m, n); }, 0.0, true);
}

TEST(IdentityGatherToReshape, TheFlattenedMasksGather) {
  // transformers' padding mask: Flatten(mask) [B*S, 1] gathered at [B, 1, 1, S] indices b*S + s (B = 1 here).
  GraphBuilder b = gather_graph({16, 1}, arange(16, {1, 1, 1, 16}), 0);
  ASSERT_EQ(rewrite(b), 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Reshape", "Neg"}));
  const ir::Node& r = b.m.graph.nodes[0];
  EXPECT_EQ(r.name, "mask_gather");
  EXPECT_EQ(b.m.graph.initializers.at(r.inputs[1]).to_int64_vector(), (std::vector<int64_t>{1, 1, 1, 16, 1}));
  EXPECT_TRUE(r.attributes.empty());
  EXPECT_EQ(b.m.graph.initializers.count("idx"), 0u);  // dead once no node reads it
}

TEST(IdentityGatherToReshape, AnAxisAfterDimsOfOneAndInt32Indices) {
  GraphBuilder b = gather_graph({1, 6, 3}, arange(6, {2, 3}, DType::kInt32), 1);
  ASSERT_EQ(rewrite(b), 1);
  EXPECT_EQ(b.m.graph.initializers.at(b.m.graph.nodes[0].inputs[1]).to_int64_vector(), (std::vector<int64_t>{1, 2, 3, 3}));
}

TEST(IdentityGatherToReshape, WhatMustStayAGather) {
  Tensor reversed = arange(4, {4});
  for (int64_t i = 0; i < 4; ++i) reversed.data<int64_t>()[i] = 3 - i;
  const struct {
    const char* what;
    Shape shape;
    Tensor indices;
    int64_t axis;
    int opset;
  } cases[] = {
      {"indices out of order", {4, 2}, reversed, 0, 17},
      {"fewer indices than the axis", {5, 2}, arange(4, {4}), 0, 17},
      {"a dim before the axis is not 1", {2, 4}, arange(4, {4}), 1, 17},
      {"opset 4", {4, 2}, arange(4, {4}), 0, 4},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    GraphBuilder b = gather_graph(c.shape, c.indices, c.axis, c.opset);
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    int n = -1;
    ASSERT_TRUE(passes::identity_gather_to_reshape(b.m, &n).ok());
    EXPECT_EQ(n, 0);
    EXPECT_EQ(b.m.graph.nodes[0].op_type, "Gather");
  }
  {
    SCOPED_TRACE("indices computed, not constant");
    GraphBuilder b(17);
    b.input("x", random_tensor(rng(), DType::kFloat32, {4, 2}, -1.0f, 1.0f));
    b.input("idx", arange(4, {4}));
    b.node("Gather", {"x", "idx"}, {"y"}, "g");
    b.output("y");
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    int n = -1;
    ASSERT_TRUE(passes::identity_gather_to_reshape(b.m, &n).ok());
    EXPECT_EQ(n, 0);
  }
}

// The dynamically exported tiny BERT built at fixed shapes (batch 2, sequence 16; the CPU target, level 3):
// its padding mask's Gather is gone, and the engine's graph computes what the model does, padding included.
TEST(IdentityGatherToReshape, TinyBertAtFixedShapes) {
  auto model = onnx_io::import_model_file(std::string(KILN_SOURCE_DIR) + "/tests/models/tiny_bert_dyn.onnx");
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  builder::OptimizeOptions o;
  o.opt_level = 3;
  for (const char* in : {"input_ids", "attention_mask", "token_type_ids"}) o.input_shapes[in] = {2, 16};
  ir::Model m = *model;
  Logger quiet(Severity::kError);
  ASSERT_TRUE(builder::optimize_graph(m, o, quiet).ok());
  bool found = false;
  for (const ir::Node& n : m.graph.nodes)
    if (n.name == "/m/Gather_4") {
      found = true;
      EXPECT_EQ(n.op_type, "Reshape");
    }
  EXPECT_TRUE(found);
  std::vector<int64_t> ids(32), mask(32, 1), types(32, 0);
  for (int64_t i = 0; i < 32; ++i) ids[i] = static_cast<int64_t>(rng()() % 100);
  for (int64_t i = 11; i < 16; ++i) mask[16 + i] = 0;  // the second sequence padded after 11 tokens
  const std::map<std::string, Tensor> feeds = {{"input_ids", Tensor::from_vector<int64_t>(DType::kInt64, {2, 16}, ids)},
                                               {"attention_mask", Tensor::from_vector<int64_t>(DType::kInt64, {2, 16}, mask)},
                                               {"token_type_ids", Tensor::from_vector<int64_t>(DType::kInt64, {2, 16}, types)}};
  expect_same_outputs(*model, m, feeds, 1e-4);
}

}  // namespace
}  // namespace kiln::testing
