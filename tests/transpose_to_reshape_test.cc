// transpose_to_reshape: a Transpose that moves only dims of size 1 becomes a Reshape (a view), computing the
// same tensor to the bit; one that moves data, or whose output shape cannot be a Reshape target, stays.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("transpose to reshape tests"));
  return gen;
}

// x of `shape` (a symbolic dim where `symbolic` >= 0) -> Transpose(perm) -> Relu -> y.
GraphBuilder transpose_graph(const Shape& shape, std::vector<int64_t> perm, int symbolic = -1, int opset = 17) {
  GraphBuilder b(opset);
  b.input("x", random_tensor(rng(), DType::kFloat32, shape, -1.0f, 1.0f));
  if (symbolic >= 0) b.m.graph.inputs[0].type.dims[symbolic] = ir::Dim::named("batch");
  ir::Node& t = b.node("Transpose", {"x"}, {"t"}, "to_nchw");
  if (!perm.empty()) t.attributes["perm"] = passes::ints_attribute(perm);
  b.node("Relu", {"t"}, {"y"}, "relu");
  b.output("y");
  return b;
}

int rewrite(GraphBuilder& b) {
  return b.apply_counted_pass([](ir::Model& m, int* n) { return passes::transpose_to_reshape(m, n); }, 0.0);
}

TEST(TransposeToReshape, ThePoolsNhwcToNchw) {
  GraphBuilder b = transpose_graph({2, 1, 1, 16}, {0, 3, 1, 2});
  ASSERT_EQ(rewrite(b), 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Reshape", "Relu"}));
  const ir::Node& r = b.m.graph.nodes[0];
  EXPECT_EQ(r.name, "to_nchw");
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(b.m.graph.initializers.at(r.inputs[1]).to_int64_vector(), (std::vector<int64_t>{2, 16, 1, 1}));
  EXPECT_TRUE(r.attributes.empty());
  EXPECT_EQ(b.m.graph.type_of("t")->to_string(), "float32[2,16,1,1]");
}

TEST(TransposeToReshape, OneUnknownDimAndTheDefaultPerm) {
  {
    SCOPED_TRACE("symbolic batch");
    GraphBuilder b = transpose_graph({3, 1, 1, 8}, {0, 3, 1, 2}, 0);
    ASSERT_EQ(rewrite(b), 1);
    EXPECT_EQ(b.m.graph.initializers.at(b.m.graph.nodes[0].inputs[1]).to_int64_vector(), (std::vector<int64_t>{-1, 8, 1, 1}));
  }
  {
    SCOPED_TRACE("no perm: reversed");
    GraphBuilder b = transpose_graph({1, 5}, {});
    ASSERT_EQ(rewrite(b), 1);
    EXPECT_EQ(b.m.graph.initializers.at(b.m.graph.nodes[0].inputs[1]).to_int64_vector(), (std::vector<int64_t>{5, 1}));
  }
}

TEST(TransposeToReshape, WhatMustStayATranspose) {
  const struct {
    const char* what;
    Shape shape;
    std::vector<int64_t> perm;
    int symbolic, opset;
  } cases[] = {
      {"moves data", {2, 3, 1, 4}, {0, 3, 1, 2}, -1, 17},
      {"two unknown dims", {2, 1, 3}, {1, 0, 2}, 0, 17},
      {"unknown dim that might not be 1, moved past another", {2, 3}, {1, 0}, 0, 17},
      {"opset 4 (Reshape's shape an attribute)", {2, 1, 1, 4}, {0, 3, 1, 2}, -1, 4},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    GraphBuilder b = transpose_graph(c.shape, c.perm, c.symbolic, c.opset);
    if (std::string(c.what) == "two unknown dims") b.m.graph.inputs[0].type.dims[2] = ir::Dim::named("len");
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    int n = -1;
    ASSERT_TRUE(passes::transpose_to_reshape(b.m, &n).ok());
    EXPECT_EQ(n, 0);
    EXPECT_EQ(b.m.graph.nodes[0].op_type, "Transpose");
  }
}

}  // namespace
}  // namespace kiln::testing
