// kiln.FusedMatMul and kiln.Gelu (src/backends/cpu/ops/fused_matmul.cc) against their ONNX decompositions, and
// the passes that make them (recognize_gelu, fuse_matmul_bias, sink_gemm_reshapes): the graph after each pass,
// and its outputs before and after through the CPU executor on random inputs; the graphs that must stay as they are.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/cast.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261123);
  return gen;
}

// Uniform in [-2, 2], never zero.
Tensor random_tensor(const Shape& shape, DType dtype = DType::kFloat32) {
  return testing::random_tensor(rng(), dtype, shape, -2.0f, 2.0f);
}

Tensor run_ok(const std::string& domain, const std::string& op, std::vector<Value> inputs,
              std::map<std::string, ir::Attribute> attrs = {}, int opset = 17) {
  OpRun r = run_kernel(domain, op, std::move(inputs), std::move(attrs), 1, opset, "n_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

// ---------------------------------------------------------------------------------------------------------
// The ops

// MatMul -> Add(bias) [-> Add(z)] -> activation through the ONNX references, in the inputs' dtype at each step.
Tensor decomposed_fused_matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const std::string& act,
                               const Tensor* z = nullptr) {
  Tensor y = run_ok("", "Add", {run_ok("", "MatMul", {a, b}), bias});
  if (z != nullptr) y = run_ok("", "Add", {y, *z});
  if (act == "Relu") y = run_ok("", "Relu", {y});
  if (act == "GeluTanh") y = run_ok("", "Gelu", {y}, {{"approximate", string_attr("tanh")}}, 20);
  return y;
}

TEST(FusedMatMulOp, MatchesDecompositionForEachActivationAndShape) {
  const std::vector<std::pair<Shape, Shape>> shapes{
      {{5, 8}, {8, 6}}, {{2, 3, 8}, {8, 6}}, {{2, 3, 8}, {2, 8, 6}}, {{8}, {8, 6}}, {{3, 1, 4, 8}, {2, 8, 6}}};
  for (const auto& [as, bs] : shapes) {
    for (const char* act : {"", "Relu", "GeluTanh"}) {
      SCOPED_TRACE(shape_to_string(as) + " x " + shape_to_string(bs) + " " + act);
      const Tensor a = random_tensor(as), b = random_tensor(bs), bias = random_tensor({bs.back()});
      const Tensor got = run_ok("kiln", "FusedMatMul", {a, b, bias}, {{"activation", string_attr(act)}}, 1);
      expect_close(got, decomposed_fused_matmul(a, b, bias, act), 1e-5, "float32");
    }
  }
}

TEST(FusedMatMulOp, HalfTypesComputeInFloat32AndRoundOnce) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor a = random_tensor({2, 4, 16}, t), b = random_tensor({16, 8}, t), bias = random_tensor({8}, t);
    const Tensor got = run_ok("kiln", "FusedMatMul", {a, b, bias}, {{"activation", string_attr("GeluTanh")}}, 1);
    // The float32 computation on the same (rounded) values, rounded once: what the fused op promises.
    const Tensor exact = run_ok("kiln", "FusedMatMul", {widen_to_float32(a), widen_to_float32(b), widen_to_float32(bias)},
                                {{"activation", string_attr("GeluTanh")}}, 1);
    expect_close(got, narrow_from_float32(exact, t), 0.0, "rounded once");
    expect_close(got, decomposed_fused_matmul(a, b, bias, "GeluTanh"), t == DType::kFloat16 ? 1e-2 : 5e-2, "decomposition");
  }
}

TEST(FusedMatMulOp, ClearErrorsNamingTheNode) {
  const Tensor a = random_tensor({3, 4}), b = random_tensor({4, 5});
  auto expect_error = [](std::vector<Value> in, std::map<std::string, ir::Attribute> attrs, const std::string& part) {
    OpRun r = run_kernel("kiln", "FusedMatMul", std::move(in), std::move(attrs), 1, 1, "fc7");
    ASSERT_FALSE(r.status.ok()) << part;
    EXPECT_NE(r.status.message().find("fc7"), std::string::npos) << r.status.to_string();
    EXPECT_NE(r.status.message().find(part), std::string::npos) << r.status.to_string();
  };
  expect_error({a, b, random_tensor({5})}, {{"activation", string_attr("Elu")}}, "activation must be");
  expect_error({a, b, random_tensor({4})}, {}, "bias must be 1-D of B's last dim 5");
  expect_error({a, b, random_tensor({1, 5})}, {}, "bias must be 1-D");
  expect_error({a, b}, {}, "inputs A, B and bias are required");
  expect_error({a, random_tensor({4}), random_tensor({1})}, {}, "B must have rank >= 2");
  expect_error({a, b, random_tensor({5}, DType::kFloat16)}, {}, "bias must have A's dtype");
  expect_error({a, random_tensor({3, 5}), random_tensor({5})}, {}, "inner dimensions differ");
  Tensor ints(DType::kInt32, {3, 4});
  expect_error({ints, ints, ints}, {}, "float");
  // The residual Z: the output's shape exactly (no broadcasting) and A's dtype.
  const Tensor bias = random_tensor({5});
  expect_error({a, b, bias, random_tensor({5})}, {}, "Z must have the output's shape [3,5]");
  expect_error({a, b, bias, random_tensor({1, 3, 5})}, {}, "Z must have the output's shape");
  expect_error({a, b, bias, random_tensor({3, 5}, DType::kFloat16)}, {}, "Z must have A's dtype");
  expect_error({a, b, bias, random_tensor({3, 5}), random_tensor({3, 5})}, {}, "takes at most 4 inputs");
}

TEST(FusedMatMulOp, ResidualIsAddedBeforeTheActivation) {
  const std::vector<std::pair<Shape, Shape>> shapes{
      {{5, 8}, {8, 6}}, {{2, 3, 8}, {8, 6}}, {{2, 3, 8}, {2, 8, 6}}, {{8}, {8, 6}}, {{3, 1, 4, 8}, {2, 8, 6}}};
  for (const auto& [as, bs] : shapes) {
    for (const char* act : {"", "Relu", "GeluTanh"}) {
      SCOPED_TRACE(shape_to_string(as) + " x " + shape_to_string(bs) + " " + act);
      const Tensor a = random_tensor(as), b = random_tensor(bs), bias = random_tensor({bs.back()});
      const Tensor z = random_tensor(run_ok("", "MatMul", {a, b}).shape());
      const Tensor got = run_ok("kiln", "FusedMatMul", {a, b, bias, z}, {{"activation", string_attr(act)}}, 1);
      expect_close(got, decomposed_fused_matmul(a, b, bias, act, &z), 1e-5, "float32");
    }
  }
  // An omitted Z ("") is no residual.
  const Tensor a = random_tensor({4, 8}), b = random_tensor({8, 3}), bias = random_tensor({3});
  expect_close(run_ok("kiln", "FusedMatMul", {a, b, bias, Value::none()}, {}, 1), decomposed_fused_matmul(a, b, bias, ""),
               0.0, "no Z");
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor ah = random_tensor({2, 4, 16}, t), bh = random_tensor({16, 8}, t), biash = random_tensor({8}, t);
    const Tensor zh = random_tensor({2, 4, 8}, t);
    const auto relu = std::map<std::string, ir::Attribute>{{"activation", string_attr("Relu")}};
    const Tensor got = run_ok("kiln", "FusedMatMul", {ah, bh, biash, zh}, relu, 1);
    const Tensor exact = run_ok("kiln", "FusedMatMul",
                                {widen_to_float32(ah), widen_to_float32(bh), widen_to_float32(biash), widen_to_float32(zh)},
                                relu, 1);
    expect_close(got, narrow_from_float32(exact, t), 0.0, "rounded once");
  }
}

TEST(KilnGeluOp, IsOnnxGeluAtAnyOpset) {
  const Tensor x = random_tensor({4, 33});
  for (const char* form : {"none", "tanh"}) {
    const Tensor want = run_ok("", "Gelu", {x}, {{"approximate", string_attr(form)}}, 20);
    const Tensor got = run_ok("kiln", "Gelu", {x}, {{"approximate", string_attr(form)}}, 1);
    expect_close(got, want, 0.0, form);
  }
  // The erf form is what the decomposition torch exports at opset 17 computes.
  Tensor d = run_ok("", "Div", {x, Tensor::from_vector<float>(DType::kFloat32, {}, {1.4142135f})});
  d = run_ok("", "Add", {run_ok("", "Erf", {d}), Tensor::from_vector<float>(DType::kFloat32, {}, {1.0f})});
  d = run_ok("", "Mul", {run_ok("", "Mul", {x, d}), Tensor::from_vector<float>(DType::kFloat32, {}, {0.5f})});
  expect_close(run_ok("kiln", "Gelu", {x}, {}, 1), d, 1e-6, "decomposed erf form");
  OpRun bad = run_kernel("kiln", "Gelu", {x}, {{"approximate", string_attr("fast")}}, 1, 1, "gelu3");
  ASSERT_FALSE(bad.status.ok());
  EXPECT_NE(bad.status.message().find("gelu3"), std::string::npos);
  EXPECT_NE(bad.status.message().find("approximate must be"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------
// The passes, on graphs built in code

struct Builder : GraphBuilder {
  using GraphBuilder::GraphBuilder;
  void input(const std::string& name, const Shape& shape) { GraphBuilder::input(name, random_tensor(shape)); }
  void weight(const std::string& name, const Shape& shape) { init(name, random_tensor(shape)); }
  void attr(ir::Node& n, const std::string& name, const std::string& s) { n.attributes[name] = string_attr(s); }
};

std::string attr_s(const ir::Node& n, const std::string& name) {
  const ir::Attribute* a = n.attr(name);
  return a ? a->s : "<absent>";
}

// Runs recognize_gelu then fuse_matmul_bias (as the builder does, after shape inference), comparing the
// graph's outputs before and after.
void optimize_and_compare(Builder& b, int* gelus, int* fused, double tol = 1e-5) {
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  b.apply_and_compare(
      [&](ir::Model& m) -> Status {
        KILN_RETURN_IF_ERROR(passes::recognize_gelu(m, gelus));
        KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
        KILN_RETURN_IF_ERROR(passes::fuse_matmul_bias(m, fused));
        return passes::infer_shapes(m);
      },
      tol);
}

// torch's GELU at opset 17: Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(., 0.5).
void torch_erf_gelu(Builder& b, const std::string& x, const std::string& y, const std::string& p) {
  b.scalar(p + "sqrt2", 1.4142135f);
  b.scalar(p + "one", 1.0f);
  b.scalar(p + "half", 0.5f);
  b.node("Div", {x, p + "sqrt2"}, {p + "d"}, p + "div");
  b.node("Erf", {p + "d"}, {p + "e"}, p + "erf");
  b.node("Add", {p + "e", p + "one"}, {p + "s"}, p + "add");
  b.node("Mul", {x, p + "s"}, {p + "xs"}, p + "mul");
  b.node("Mul", {p + "xs", p + "half"}, {y}, p + "mul_1");
}

TEST(FuseMatMulBias, MatMulAddBecomesOneNodeNamedAfterBoth) {
  Builder b;
  b.input("x", {2, 3, 8});
  b.weight("w", {8, 16});
  b.weight("bias", {16});
  b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
  b.node("Add", {"xw", "bias"}, {"y"}, "fc_bias");
  b.output("y");
  int gelus = -1, fused = -1;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(gelus, 0);
  EXPECT_EQ(fused, 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul"}));
  const ir::Node& f = b.m.graph.nodes[0];
  EXPECT_EQ(f.name, "fc + fc_bias");
  EXPECT_EQ(f.inputs, (std::vector<std::string>{"x", "w", "bias"}));
  EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(attr_s(f, "activation"), "");
  EXPECT_EQ(b.m.opsets["kiln"], 1);
  ASSERT_NE(b.m.graph.type_of("y"), nullptr);
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,3,16]");
}

TEST(FuseMatMulBias, BiasFirstRowBiasAndRelu) {
  Builder b;
  b.input("x", {5, 8});
  b.weight("w", {8, 4});
  b.weight("bias", {1, 4});
  b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
  b.node("Add", {"bias", "xw"}, {"s"}, "add");
  b.node("Relu", {"s"}, {"y"}, "relu");
  b.output("y");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(fused, 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul"}));
  const ir::Node& f = b.m.graph.nodes[0];
  EXPECT_EQ(f.name, "fc + add + relu");
  EXPECT_EQ(attr_s(f, "activation"), "Relu");
  // The [1, N] bias is stored again as [N] (the op's bias is 1-D).
  ASSERT_TRUE(b.m.graph.initializers.count(f.inputs[2]));
  EXPECT_EQ(b.m.graph.initializers.at(f.inputs[2]).shape(), (Shape{4}));
}

TEST(FuseMatMulBias, AbsorbsTanhGeluButNotTheExactOne) {
  for (const char* form : {"tanh", "none"}) {
    SCOPED_TRACE(form);
    Builder b(20);
    b.input("x", {6, 8});
    b.weight("w", {8, 12});
    b.weight("bias", {12});
    b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
    b.node("Add", {"xw", "bias"}, {"s"}, "add");
    b.attr(b.node("Gelu", {"s"}, {"y"}, "gelu"), "approximate", form);
    b.output("y");
    int gelus = 0, fused = 0;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(fused, 1);
    if (std::string(form) == "tanh") {
      ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul"}));
      EXPECT_EQ(attr_s(b.m.graph.nodes[0], "activation"), "GeluTanh");
      EXPECT_EQ(b.m.graph.nodes[0].name, "fc + add + gelu");
    } else {
      // cuBLASLt has no exact GELU epilogue: the Gelu stays a node of its own.
      EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "Gelu"}));
      EXPECT_EQ(attr_s(b.m.graph.nodes[0], "activation"), "");
    }
  }
}

TEST(FuseMatMulBias, LeavesWhatMustNotFuse) {
  struct Case {
    const char* why;
    std::function<void(Builder&)> build;
  };
  const std::vector<Case> cases{
      {"product read twice",
       [](Builder& b) {
         b.node("Add", {"xw", "bias"}, {"y"}, "add");
         b.node("Neg", {"xw"}, {"z"}, "neg");
         b.output("z");
       }},
      {"product is a graph output",
       [](Builder& b) {
         b.node("Add", {"xw", "bias"}, {"y"}, "add");
         b.output("xw");
       }},
      {"bias is a graph input",
       [](Builder& b) {
         b.input("b_in", {16});
         b.node("Add", {"xw", "b_in"}, {"y"}, "add");
       }},
      {"bias over rows, not columns",
       [](Builder& b) {
         b.weight("col", {5, 1});
         b.node("Add", {"xw", "col"}, {"y"}, "add");
       }},
      {"bias of the whole product",
       [](Builder& b) {
         b.weight("full", {5, 16});
         b.node("Add", {"xw", "full"}, {"y"}, "add");
       }},
      {"Sub, not Add",
       [](Builder& b) { b.node("Sub", {"xw", "bias"}, {"y"}, "sub"); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b;
    b.input("x", {5, 8});
    b.weight("w", {8, 16});
    b.weight("bias", {16});
    b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
    c.build(b);
    b.output("y");
    const std::vector<std::string> before = op_types(b.m);
    int gelus = 0, fused = -1;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(fused, 0);
    EXPECT_EQ(op_types(b.m), before);
    EXPECT_FALSE(b.m.opsets.count("kiln"));
  }
  // A 1-D W: the product loses N, and a [N] bias would broadcast over something else.
  Builder v;
  v.input("x", {5, 8});
  v.weight("w", {8});
  v.weight("bias", {8});
  v.node("MatMul", {"x", "w"}, {"xw"}, "fc");
  v.node("Add", {"xw", "bias"}, {"y"}, "add");
  v.output("y");
  ASSERT_TRUE(passes::infer_shapes(v.m).ok());
  int fused = -1;
  ASSERT_TRUE(passes::fuse_matmul_bias(v.m, &fused).ok());
  EXPECT_EQ(fused, 0);
}

// Gemm(A, W, bias) is a product and its bias in one node: with a residual Add and/or an activation after it,
// the chain becomes one kiln.FusedMatMul (W transposed once where transB is 1, a [1, N] bias made [N]).
TEST(FuseMatMulBias, GemmWithResidualAndActivation) {
  for (int trans_b : {0, 1})
    for (bool residual : {false, true}) {
      SCOPED_TRACE("transB " + std::to_string(trans_b) + (residual ? " with residual" : ""));
      Builder b(30 + trans_b);
      b.input("x", {5, 8});
      b.input("r", {5, 16});
      b.weight("w", trans_b ? Shape{16, 8} : Shape{8, 16});
      b.weight("bias", residual ? Shape{1, 16} : Shape{16});
      ir::Node& gemm = b.node("Gemm", {"x", "w", "bias"}, {"xw"}, "fc");
      gemm.attributes["transB"] = int_attr(trans_b);
      gemm.attributes["alpha"] = float_attr(1.0f);
      std::string last = "xw";
      if (residual) {
        b.node("Add", {"r", "xw"}, {"s"}, "res");
        last = "s";
      }
      b.node("Relu", {last}, {"y"}, "relu");
      b.output("y");
      int gelus = 0, fused = -1;
      optimize_and_compare(b, &gelus, &fused);
      EXPECT_EQ(fused, 1);
      ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul"}));
      const ir::Node& f = b.m.graph.nodes[0];
      EXPECT_EQ(f.name, residual ? "fc + res + relu" : "fc + relu");
      EXPECT_EQ(attr_s(f, "activation"), "Relu");
      ASSERT_EQ(f.inputs.size(), residual ? 4u : 3u);
      EXPECT_EQ(f.inputs[0], "x");
      EXPECT_EQ(b.m.graph.initializers.at(f.inputs[1]).shape(), (Shape{8, 16}));
      EXPECT_EQ(f.inputs[1] == "w", trans_b == 0);
      EXPECT_EQ(b.m.graph.initializers.at(f.inputs[2]).shape(), (Shape{16}));
      if (residual) {
        EXPECT_EQ(f.inputs[3], "r");
      }
    }
}

TEST(FuseMatMulBias, GemmsThatStay) {
  struct Case {
    const char* why;
    std::function<void(ir::Node&)> change;
  };
  const std::vector<Case> cases{
      {"alone (already one GEMM with its bias)", nullptr},
      {"alpha 2", [](ir::Node& n) { n.attributes["alpha"] = float_attr(2.0f); }},
      {"beta 0.5", [](ir::Node& n) { n.attributes["beta"] = float_attr(0.5f); }},
      {"A transposed", [](ir::Node& n) {
         n.attributes["transA"] = int_attr(1);
         n.inputs[0] = "xt";  // A as [K, M]
       }},
      {"C of the whole product", [](ir::Node& n) { n.inputs[2] = "full"; }},
      {"W an input", [](ir::Node& n) { n.inputs[1] = "w_in"; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b;
    b.input("x", {5, 8});
    b.input("w_in", {8, 16});
    b.weight("w", {8, 16});
    b.weight("bias", {16});
    b.weight("full", {5, 16});
    b.input("xt", {8, 5});
    ir::Node& gemm = b.node("Gemm", {"x", "w", "bias"}, {"xw"}, "fc");
    if (c.change) c.change(gemm);
    if (c.change) b.node("Relu", {"xw"}, {"y"}, "relu");
    b.output(c.change ? "y" : "xw");
    const std::vector<std::string> before = op_types(b.m);
    int gelus = 0, fused = -1;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(fused, 0);
    EXPECT_EQ(op_types(b.m), before);
  }
}

// GPT-2's MLP block: Conv1D is Gemm on a [B*S, C] view, viewed back as [B, S, N]; its tanh GELU and the
// residual Add read the view. sink_gemm_reshapes moves each view after the op, and fuse_matmul_bias then puts
// the GELU and the residual in the two Gemms' epilogues.
void int64_shape(Builder& b, const std::string& name, const std::vector<int64_t>& dims) {
  b.init(name, Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(dims.size())}, dims));
}

TEST(SinkGemmReshapes, Gpt2MlpBlockBecomesTwoFusedGemms) {
  Builder b(20);
  b.input("x", {2, 4, 8});
  b.weight("w1", {8, 16});
  b.weight("b1", {16});
  b.weight("w2", {16, 8});
  b.weight("b2", {8});
  int64_shape(b, "rows8", {8, 8});
  int64_shape(b, "bsn16", {2, 4, 16});
  int64_shape(b, "rows16", {8, 16});
  int64_shape(b, "bsn8", {2, 4, 8});
  b.node("Reshape", {"x", "rows8"}, {"x2"}, "fc/view_in");
  b.node("Gemm", {"x2", "w1", "b1"}, {"h"}, "fc/gemm");
  b.node("Reshape", {"h", "bsn16"}, {"h3"}, "fc/view_out");
  b.attr(b.node("Gelu", {"h3"}, {"g3"}, "act"), "approximate", "tanh");
  b.node("Reshape", {"g3", "rows16"}, {"g2"}, "proj/view_in");
  b.node("Gemm", {"g2", "w2", "b2"}, {"o"}, "proj/gemm");
  b.node("Reshape", {"o", "bsn8"}, {"o3"}, "proj/view_out");
  b.node("Add", {"x", "o3"}, {"y"}, "residual");
  b.output("y");
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  int moved = -1, fused = -1;
  b.apply_and_compare(
      [&](ir::Model& m) -> Status {
        KILN_RETURN_IF_ERROR(passes::sink_gemm_reshapes(m, &moved));
        KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
        KILN_RETURN_IF_ERROR(passes::fuse_matmul_bias(m, &fused));
        return passes::infer_shapes(m);
      },
      1e-5);
  EXPECT_EQ(moved, 2);
  EXPECT_EQ(fused, 2);
  std::vector<const ir::Node*> gemms;
  for (const auto& n : b.m.graph.nodes) {
    EXPECT_NE(n.op_type, "Gelu");
    EXPECT_NE(n.op_type, "Add");
    if (n.op_type == "FusedMatMul") gemms.push_back(&n);
  }
  ASSERT_EQ(gemms.size(), 2u);
  EXPECT_EQ(gemms[0]->name, "fc/gemm + act");
  EXPECT_EQ(attr_s(*gemms[0], "activation"), "GeluTanh");
  EXPECT_EQ(gemms[1]->name, "proj/gemm + residual");
  ASSERT_EQ(gemms[1]->inputs.size(), 4u);  // the residual, x viewed as [8, 8]
  ASSERT_NE(b.m.graph.type_of(gemms[1]->inputs[3]), nullptr);
  EXPECT_EQ(b.m.graph.type_of(gemms[1]->inputs[3])->to_string(), "float32[8,8]");
  // The graph's output keeps its name and shape.
  ASSERT_NE(b.m.graph.type_of("y"), nullptr);
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,4,8]");
}

TEST(SinkGemmReshapes, LeavesWhatItMustNot) {
  struct Case {
    const char* why;
    std::function<void(Builder&)> build;  // reads "t" = Gemm's [2, 4, 16] view, writes "y"
  };
  const std::vector<Case> cases{
      {"view read twice",
       [](Builder& b) {
         b.node("Relu", {"t"}, {"y"}, "relu");
         b.node("Neg", {"t"}, {"z"}, "neg");
         b.output("z");
       }},
      {"view is a graph output",
       [](Builder& b) {
         b.node("Relu", {"t"}, {"y"}, "relu");
         b.output("t");
       }},
      {"exact GELU (no epilogue for it)",
       [](Builder& b) { b.attr(b.node("Gelu", {"t"}, {"y"}, "gelu"), "approximate", "none"); }},
      {"Add that broadcasts",
       [](Builder& b) {
         b.weight("v", {16});
         b.node("Add", {"t", "v"}, {"y"}, "add");
       }},
      {"Sigmoid (no epilogue for it)", [](Builder& b) { b.node("Sigmoid", {"t"}, {"y"}, "sigmoid"); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b(20);
    b.input("x", {8, 8});
    b.weight("w", {8, 16});
    b.weight("bias", {16});
    int64_shape(b, "bsn", {2, 4, 16});
    b.node("Gemm", {"x", "w", "bias"}, {"h"}, "gemm");
    b.node("Reshape", {"h", "bsn"}, {"t"}, "view");
    c.build(b);
    b.output("y");
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    const std::vector<std::string> before = op_types(b.m);
    int moved = -1;
    b.apply_and_compare([&](ir::Model& m) { return passes::sink_gemm_reshapes(m, &moved); }, 0.0);
    EXPECT_EQ(moved, 0);
    EXPECT_EQ(op_types(b.m), before);
  }
}

TEST(FuseMatMulBias, ActivationReadTwiceStaysOut) {
  Builder b;
  b.input("x", {5, 8});
  b.weight("w", {8, 16});
  b.weight("bias", {16});
  b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
  b.node("Add", {"xw", "bias"}, {"s"}, "add");
  b.node("Relu", {"s"}, {"y"}, "relu");
  b.node("Neg", {"s"}, {"z"}, "neg");  // the pre-activation sum is needed too
  b.output("y");
  b.output("z");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(fused, 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "Relu", "Neg"}));
  EXPECT_EQ(attr_s(b.m.graph.nodes[0], "activation"), "");
}

// BERT's "output" sublayers: MatMul -> Add(bias) -> Add(residual) [-> activation]; the residual joins the
// fused node as its input 3, whichever side of the Add it is on.
TEST(FuseMatMulBias, AbsorbsTheResidualAddEitherOrderThenRelu) {
  for (bool residual_first : {false, true})
    for (bool relu : {false, true}) {
      SCOPED_TRACE(std::string(residual_first ? "Add(r, s)" : "Add(s, r)") + (relu ? " + Relu" : ""));
      Builder b;
      b.input("x", {2, 3, 8});
      b.input("r", {2, 3, 16});
      b.weight("w", {8, 16});
      b.weight("bias", {16});
      b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
      b.node("Add", {"xw", "bias"}, {"s"}, "fc_bias");
      b.node("Add", residual_first ? std::vector<std::string>{"r", "s"} : std::vector<std::string>{"s", "r"},
             {relu ? "t" : "y"}, "residual");
      if (relu) b.node("Relu", {"t"}, {"y"}, "relu");
      b.output("y");
      int gelus = 0, fused = 0;
      optimize_and_compare(b, &gelus, &fused);
      EXPECT_EQ(fused, 1);
      ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul"}));
      const ir::Node& f = b.m.graph.nodes[0];
      EXPECT_EQ(f.name, relu ? "fc + fc_bias + residual + relu" : "fc + fc_bias + residual");
      EXPECT_EQ(f.inputs, (std::vector<std::string>{"x", "w", "bias", "r"}));
      EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
      EXPECT_EQ(attr_s(f, "activation"), relu ? "Relu" : "");
      EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,3,16]");
    }
}

// The attention output of a BERT layer: the sum goes on to LayerNorm, which stays; the residual is the
// layer's input, computed by an earlier node; the tanh GELU may still follow a residual.
TEST(FuseMatMulBias, BertAttentionOutputAndGeluAfterTheResidual) {
  Builder b;
  b.input("h", {2, 16, 32});
  b.weight("w", {32, 32});
  b.weight("bias", {32});
  b.weight("gamma", {32});
  b.weight("beta", {32});
  b.node("Neg", {"h"}, {"hn"}, "earlier");
  b.node("MatMul", {"hn", "w"}, {"p"}, "/attention/output/dense/MatMul");
  b.node("Add", {"bias", "p"}, {"pb"}, "/attention/output/dense/Add");
  b.node("Add", {"pb", "h"}, {"sum"}, "/attention/output/Add");
  b.node("LayerNormalization", {"sum", "gamma", "beta"}, {"y"}, "/attention/output/LayerNorm");
  b.output("y");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused, 1e-4);
  EXPECT_EQ(fused, 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Neg", "kiln.FusedMatMul", "LayerNormalization"}));
  EXPECT_EQ(b.m.graph.nodes[1].name, "/attention/output/dense/MatMul + /attention/output/dense/Add + /attention/output/Add");
  EXPECT_EQ(b.m.graph.nodes[1].inputs, (std::vector<std::string>{"hn", "w", "bias", "h"}));

  for (const char* form : {"tanh", "none"}) {
    SCOPED_TRACE(form);
    Builder g(20);
    g.input("x", {6, 8});
    g.input("r", {6, 12});
    g.weight("w", {8, 12});
    g.weight("bias", {12});
    g.node("MatMul", {"x", "w"}, {"xw"}, "fc");
    g.node("Add", {"xw", "bias"}, {"s"}, "add");
    g.node("Add", {"s", "r"}, {"t"}, "residual");
    g.attr(g.node("Gelu", {"t"}, {"y"}, "gelu"), "approximate", form);
    g.output("y");
    optimize_and_compare(g, &gelus, &fused);
    EXPECT_EQ(fused, 1);
    const bool tanh = std::string(form) == "tanh";
    const std::vector<std::string> want =
        tanh ? std::vector<std::string>{"kiln.FusedMatMul"} : std::vector<std::string>{"kiln.FusedMatMul", "Gelu"};
    EXPECT_EQ(op_types(g.m), want);
    EXPECT_EQ(attr_s(g.m.graph.nodes[0], "activation"), tanh ? "GeluTanh" : "");
    EXPECT_EQ(g.m.graph.nodes[0].inputs.size(), 4u);
  }
}

// Two linear layers summed: the first chain takes the Add with the other's sum as Z; the second keeps its bias.
TEST(FuseMatMulBias, TwoLinearLayersSummed) {
  Builder b;
  b.input("x", {5, 8});
  b.input("u", {5, 6});
  b.weight("w1", {8, 16});
  b.weight("b1", {16});
  b.weight("w2", {6, 16});
  b.weight("b2", {16});
  b.node("MatMul", {"x", "w1"}, {"p1"}, "fc1");
  b.node("Add", {"p1", "b1"}, {"s1"}, "fc1_bias");
  b.node("MatMul", {"u", "w2"}, {"p2"}, "fc2");
  b.node("Add", {"p2", "b2"}, {"s2"}, "fc2_bias");
  b.node("Add", {"s1", "s2"}, {"y"}, "sum");
  b.output("y");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(fused, 2);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "kiln.FusedMatMul"}));
  EXPECT_EQ(b.m.graph.nodes[0].name, "fc2 + fc2_bias");
  EXPECT_EQ(b.m.graph.nodes[1].name, "fc1 + fc1_bias + sum");
  EXPECT_EQ(b.m.graph.nodes[1].inputs, (std::vector<std::string>{"x", "w1", "b1", "s2"}));
}

// The bias still fuses, but an Add that is no element-for-element residual stays a node of its own.
TEST(FuseMatMulBias, ResidualThatMustStayOut) {
  struct Case {
    const char* why;
    std::function<void(Builder&)> build;  // reads "s" (the biased product) and writes "y"
  };
  const std::vector<Case> cases{
      {"residual broadcast along rows",
       [](Builder& b) {
         b.input("r", {1, 16});
         b.node("Add", {"s", "r"}, {"y"}, "residual");
       }},
      {"residual broadcast to a bigger shape",
       [](Builder& b) {
         b.input("r", {3, 5, 16});
         b.node("Add", {"s", "r"}, {"y"}, "residual");
       }},
      {"residual of a dimension not known",
       [](Builder& b) {
         b.input("r", {5, 16});
         b.m.graph.inputs.back().type.dims[0] = ir::Dim::named("batch");
         b.node("Add", {"s", "r"}, {"y"}, "residual");
       }},
      {"the sum added to itself", [](Builder& b) { b.node("Add", {"s", "s"}, {"y"}, "double"); }},
      {"the sum read twice",
       [](Builder& b) {
         b.input("r", {5, 16});
         b.node("Add", {"s", "r"}, {"y"}, "residual");
         b.node("Neg", {"s"}, {"n"}, "neg");
         b.output("n");
       }},
      {"the sum is a graph output",
       [](Builder& b) {
         b.input("r", {5, 16});
         b.node("Add", {"s", "r"}, {"y"}, "residual");
         b.output("s");
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b;
    b.input("x", {5, 8});
    b.weight("w", {8, 16});
    b.weight("bias", {16});
    b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
    b.node("Add", {"xw", "bias"}, {"s"}, "fc_bias");
    c.build(b);
    b.output("y");
    int gelus = 0, fused = 0;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(fused, 1);
    ASSERT_GE(b.m.graph.nodes.size(), 2u);
    EXPECT_EQ(op_types(b.m)[0], "kiln.FusedMatMul");
    EXPECT_EQ(b.m.graph.nodes[0].inputs.size(), 3u);
    EXPECT_EQ(b.m.graph.nodes[0].name, "fc + fc_bias");
  }
}

TEST(RecognizeGelu, TorchErfFormBecomesKilnGelu) {
  Builder b;
  b.input("x", {3, 40});
  torch_erf_gelu(b, "x", "y", "g/");
  b.output("y");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(gelus, 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.Gelu"}));
  const ir::Node& g = b.m.graph.nodes[0];
  EXPECT_EQ(g.name, "g/div + g/erf + g/add + g/mul + g/mul_1");
  EXPECT_EQ(g.inputs, (std::vector<std::string>{"x"}));
  EXPECT_EQ(g.outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(attr_s(g, "approximate"), "none");
  EXPECT_EQ(b.m.opsets["kiln"], 1);
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[3,40]");
}

TEST(RecognizeGelu, OtherExporterVariants) {
  // Mul by 1/sqrt(2) (operands commuted), and each association of 0.5 * x * s.
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant);
    Builder b;
    b.input("x", {2, 3, 16});
    b.scalar("r", 0.70710678f);
    b.scalar("one", 1.0f);
    b.scalar("half", 0.5f);
    b.node("Mul", {"r", "x"}, {"d"}, "scale");
    b.node("Erf", {"d"}, {"e"}, "erf");
    b.node("Add", {"one", "e"}, {"s"}, "plus1");
    if (variant == 0) {  // (x * 0.5) * s, the half computed first
      b.node("Mul", {"half", "x"}, {"h"}, "halve");
      b.node("Mul", {"s", "h"}, {"y"}, "prod");
    } else if (variant == 1) {  // x * (s * 0.5)
      b.node("Mul", {"s", "half"}, {"sh"}, "halve");
      b.node("Mul", {"x", "sh"}, {"y"}, "prod");
    } else {  // (s * x) * 0.5
      b.node("Mul", {"s", "x"}, {"sx"}, "prod");
      b.node("Mul", {"half", "sx"}, {"y"}, "halve");
    }
    b.output("y");
    int gelus = 0, fused = 0;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(gelus, 1);
    ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.Gelu"}));
    EXPECT_EQ(attr_s(b.m.graph.nodes[0], "approximate"), "none");
  }
}

TEST(RecognizeGelu, TanhFormWithPowOrProducts) {
  for (bool pow : {true, false}) {
    SCOPED_TRACE(pow ? "Pow" : "x*x*x");
    Builder b;
    b.input("x", {4, 24});
    b.scalar("three", 3.0f);
    b.scalar("c", 0.044715f);
    b.scalar("k", 0.7978845608f);
    b.scalar("one", 1.0f);
    b.scalar("half", 0.5f);
    if (pow) {
      b.node("Pow", {"x", "three"}, {"x3"}, "cube");
    } else {
      b.node("Mul", {"x", "x"}, {"x2"}, "square");
      b.node("Mul", {"x", "x2"}, {"x3"}, "cube");
    }
    b.node("Mul", {"x3", "c"}, {"cx3"}, "mul_c");
    b.node("Add", {"x", "cx3"}, {"inner"}, "add_x");
    b.node("Mul", {"k", "inner"}, {"u"}, "mul_k");
    b.node("Tanh", {"u"}, {"t"}, "tanh");
    b.node("Add", {"t", "one"}, {"s"}, "plus1");
    b.node("Mul", {"x", "half"}, {"h"}, "halve");
    b.node("Mul", {"h", "s"}, {"y"}, "prod");
    b.output("y");
    int gelus = 0, fused = 0;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(gelus, 1);
    ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.Gelu"}));
    EXPECT_EQ(attr_s(b.m.graph.nodes[0], "approximate"), "tanh");
  }
}

TEST(RecognizeGelu, LeavesLookalikes) {
  struct Case {
    const char* why;
    std::function<void(Builder&)> change;
  };
  const std::vector<Case> cases{
      {"erf value read elsewhere", [](Builder& b) { b.output("g/e"); }},
      {"Div by 1.5",
       [](Builder& b) { b.m.graph.initializers["g/sqrt2"] = Tensor::from_vector<float>(DType::kFloat32, {}, {1.5f}); }},
      {"Mul by 0.25",
       [](Builder& b) { b.m.graph.initializers["g/half"] = Tensor::from_vector<float>(DType::kFloat32, {}, {0.25f}); }},
      {"Add of 2",
       [](Builder& b) { b.m.graph.initializers["g/one"] = Tensor::from_vector<float>(DType::kFloat32, {}, {2.0f}); }},
      {"the half not a constant",
       [](Builder& b) {
         b.m.graph.initializers.erase("g/half");
         b.input("g/half", {});
       }},
      {"Mul by another value than x",
       [](Builder& b) {
         b.input("other", {3, 40});
         b.m.graph.nodes[3].inputs[0] = "other";
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b;
    b.input("x", {3, 40});
    torch_erf_gelu(b, "x", "y", "g/");
    b.output("y");
    c.change(b);
    const std::vector<std::string> before = op_types(b.m);
    int gelus = -1, fused = 0;
    optimize_and_compare(b, &gelus, &fused);
    EXPECT_EQ(gelus, 0);
    EXPECT_EQ(op_types(b.m), before);
  }
}

// BERT's feed-forward block as torch exports it at opset 17: Linear -> GELU (erf, decomposed) -> Linear.
TEST(MatMulFusionPasses, BertFeedForwardBlock) {
  Builder b;
  b.input("h", {2, 16, 32});
  b.weight("w1", {32, 64});
  b.weight("b1", {64});
  b.weight("w2", {64, 32});
  b.weight("b2", {32});
  b.node("MatMul", {"h", "w1"}, {"h1"}, "/intermediate/dense/MatMul");
  b.node("Add", {"b1", "h1"}, {"h1b"}, "/intermediate/dense/Add");
  torch_erf_gelu(b, "h1b", "act", "/intermediate/act/");
  b.node("MatMul", {"act", "w2"}, {"h2"}, "/output/dense/MatMul");
  b.node("Add", {"b2", "h2"}, {"y"}, "/output/dense/Add");
  b.output("y");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(gelus, 1);
  EXPECT_EQ(fused, 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "kiln.Gelu", "kiln.FusedMatMul"}));
  EXPECT_EQ(b.m.graph.nodes[0].name, "/intermediate/dense/MatMul + /intermediate/dense/Add");
  EXPECT_EQ(attr_s(b.m.graph.nodes[0], "activation"), "");  // the exact GELU stays out of the epilogue
}

// The tanh GELU, recognized first, then folded into the GEMM's epilogue.
TEST(MatMulFusionPasses, DecomposedTanhGeluEndsInTheEpilogue) {
  Builder b;
  b.input("x", {8, 16});
  b.weight("w", {16, 24});
  b.weight("bias", {24});
  b.scalar("three", 3.0f);
  b.scalar("c", 0.044715f);
  b.scalar("k", 0.7978846f);
  b.scalar("one", 1.0f);
  b.scalar("half", 0.5f);
  b.node("MatMul", {"x", "w"}, {"xw"}, "fc");
  b.node("Add", {"xw", "bias"}, {"v"}, "fc_add");
  b.node("Pow", {"v", "three"}, {"v3"}, "cube");
  b.node("Mul", {"c", "v3"}, {"cv3"}, "mul_c");
  b.node("Add", {"cv3", "v"}, {"inner"}, "add_v");
  b.node("Mul", {"inner", "k"}, {"u"}, "mul_k");
  b.node("Tanh", {"u"}, {"t"}, "tanh");
  b.node("Add", {"one", "t"}, {"s"}, "plus1");
  b.node("Mul", {"v", "s"}, {"vs"}, "prod");
  b.node("Mul", {"vs", "half"}, {"y"}, "halve");
  b.output("y");
  int gelus = 0, fused = 0;
  optimize_and_compare(b, &gelus, &fused);
  EXPECT_EQ(gelus, 1);
  EXPECT_EQ(fused, 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul"}));
  EXPECT_EQ(attr_s(b.m.graph.nodes[0], "activation"), "GeluTanh");
  EXPECT_EQ(b.m.graph.nodes[0].name, "fc + fc_add + cube + mul_c + add_v + mul_k + tanh + plus1 + prod + halve");
}

}  // namespace
}  // namespace kiln::testing
