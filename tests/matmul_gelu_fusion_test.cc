// passes/fuse_matmul_gelu.cc: the exact GELU after a half-precision kiln.FusedMatMul goes into its epilogue;
// float32 products, other activations and shared products stay as they were.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "builder/optimize_graph.h"
#include "core/cast.h"
#include "graph_builder.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln {
namespace {

using testing::GraphBuilder;

// Uniform in [-2, 2], never zero, in dtype t.
Tensor random_of(DType t, const Shape& s, unsigned seed) {
  std::mt19937 gen(seed);
  return testing::random_tensor(gen, t, s, -2.0f, 2.0f);
}

void expect_near(const Tensor& got, const Tensor& want, double tol) {
  ASSERT_EQ(got.shape(), want.shape());
  const Tensor g = widen_to_float32(got), w = widen_to_float32(want);
  for (int64_t i = 0; i < g.numel(); ++i)
    ASSERT_NEAR(g.data<float>()[i], w.data<float>()[i], tol * (1.0 + std::fabs(w.data<float>()[i]))) << "element " << i;
}

// A -> FusedMatMul(A, W, b) -> Gelu(approximate) -> y, in dtype t.
GraphBuilder gelu_after_matmul(DType t, const std::string& approximate = "none", const std::string& gelu_domain = "") {
  GraphBuilder b(20);
  b.m.opsets["kiln"] = 1;
  b.input("a", random_of(t, {3, 5, 16}, 1));
  b.init("w", random_of(t, {16, 24}, 2));
  b.init("bias", random_of(t, {24}, 3));
  ir::Node& mm = b.node("FusedMatMul", {"a", "w", "bias"}, {"p"}, "fc", "kiln");
  ir::Attribute none;
  none.type = ir::Attribute::Type::kString;
  mm.attributes["activation"] = none;
  ir::Node& g = b.node("Gelu", {"p"}, {"y"}, "gelu", gelu_domain);
  ir::Attribute a;
  a.type = ir::Attribute::Type::kString;
  a.s = approximate;
  g.attributes["approximate"] = a;
  b.output("y");
  return b;
}

int fuse(ir::Model& m) {
  EXPECT_TRUE(passes::infer_shapes(m).ok());
  int fused = -1;
  const Status s = passes::fuse_matmul_gelu(m, &fused);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return fused;
}

TEST(FuseMatMulGelu, HalfProductsTakeTheExactGelu) {
  for (DType t : {DType::kFloat16, DType::kBFloat16})
    for (const char* domain : {"", "kiln"}) {
      SCOPED_TRACE(dtype_name(t) + std::string(" domain '") + domain + "'");
      GraphBuilder b = gelu_after_matmul(t, "none", domain);
      const std::vector<Tensor> before = b.run();
      ASSERT_EQ(fuse(b.m), 1);
      ASSERT_EQ(b.m.graph.nodes.size(), 1u);
      const ir::Node& f = b.m.graph.nodes[0];
      EXPECT_EQ(f.op_type, "FusedMatMul");
      EXPECT_EQ(f.name, "fc + gelu");
      EXPECT_EQ(f.attr("activation")->s, "Gelu");
      EXPECT_EQ(f.outputs, std::vector<std::string>{"y"});
      const std::vector<Tensor> after = b.run();
      ASSERT_EQ(after.size(), 1u);
      // The unfused graph rounds the product to the half type before the GELU; the fused one does not.
      expect_near(after[0], before[0], t == DType::kFloat16 ? 4e-3 : 3e-2);
    }
}

TEST(FuseMatMulGelu, LeavesFloat32TanhAndSharedProductsAlone) {
  {
    GraphBuilder b = gelu_after_matmul(DType::kFloat32);
    EXPECT_EQ(fuse(b.m), 0);
    EXPECT_EQ(b.m.graph.nodes.size(), 2u);
  }
  {
    GraphBuilder b = gelu_after_matmul(DType::kFloat16, "tanh");  // fuse_matmul_bias's, before lowering
    EXPECT_EQ(fuse(b.m), 0);
  }
  {
    GraphBuilder b = gelu_after_matmul(DType::kFloat16);
    b.output("p");  // the product is a graph output too
    EXPECT_EQ(fuse(b.m), 0);
  }
  {
    GraphBuilder b = gelu_after_matmul(DType::kFloat16);
    b.m.graph.nodes[0].attributes["activation"].s = "Relu";
    EXPECT_EQ(fuse(b.m), 0);
  }
}

// The whole optimizer, as `kiln build --fp16` runs it: MatMul + Add and the exporters' erf GELU (Div, Erf, Add,
// Mul, Mul) become one half-precision kiln.FusedMatMul, and its layer is reported as lowered (the build labels
// it fp16, not tf32, in `kiln inspect`), though the GEMM's layer was itself a fusion of two nodes.
TEST(FuseMatMulGelu, OptimizeGraphReportsTheFusedLayerAsLowered) {
  GraphBuilder b(17);
  b.input("a", random_of(DType::kFloat32, {3, 5, 16}, 4));
  b.init("w", random_of(DType::kFloat32, {16, 24}, 5));
  b.init("bias", random_of(DType::kFloat32, {24}, 6));
  b.scalar("sqrt2", 1.41421356f);
  b.scalar("one", 1.0f);
  b.scalar("half", 0.5f);
  b.node("MatMul", {"a", "w"}, {"p"}, "fc");
  b.node("Add", {"p", "bias"}, {"x"}, "fc_bias");
  b.node("Div", {"x", "sqrt2"}, {"g0"}, "gelu_div");
  b.node("Erf", {"g0"}, {"g1"}, "gelu_erf");
  b.node("Add", {"g1", "one"}, {"g2"}, "gelu_add");
  b.node("Mul", {"x", "g2"}, {"g3"}, "gelu_mul");
  b.node("Mul", {"g3", "half"}, {"y"}, "gelu_half");
  b.output("y");
  const std::vector<Tensor> before = b.run();
  builder::OptimizeOptions o;
  o.for_gpu = true;
  o.opt_level = 3;
  o.precision = builder::Precision::kFloat16;
  o.can_run_in_half = [](const ir::Model&, const ir::Node&) { return true; };
  Logger quiet(Severity::kError);
  std::set<std::string> lowered;
  const Status st = builder::optimize_graph(b.m, o, quiet, &lowered);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const ir::Node* fused = nullptr;
  for (const ir::Node& n : b.m.graph.nodes)
    if (n.op_type == "FusedMatMul") fused = &n;
  ASSERT_NE(fused, nullptr);
  EXPECT_EQ(fused->attr("activation")->s, "Gelu");
  EXPECT_EQ(fused->name.rfind("fc + fc_bias + gelu_div", 0), 0u) << fused->name;
  EXPECT_EQ(lowered.count(fused->name), 1u) << fused->name;
  const std::vector<Tensor> after = b.run();
  ASSERT_EQ(after.size(), 1u);
  expect_near(cast_tensor(after[0], DType::kFloat32).value(), before[0], 2e-2);
}

}  // namespace
}  // namespace kiln
