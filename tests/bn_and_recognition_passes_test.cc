// fold_batch_norm, recognize_layer_norm and recognize_activations: the graph before and after on small graphs
// built in code, what must stay as it is, and the outputs before and after through the CPU executor on fresh
// random inputs (never zeros).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"
#ifdef KILN_HAVE_CUDA
#include "cuda_layer_harness.h"
#endif

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261126);
  return gen;
}

// Uniform in [lo, hi], never zero.
Tensor random_tensor(const Shape& shape, float lo = -2.0f, float hi = 2.0f) {
  return testing::random_tensor(rng(), DType::kFloat32, shape, lo, hi);
}

Tensor scalar(float v) { return Tensor::from_vector<float>(DType::kFloat32, {}, {v}); }

ir::Attribute float_attr(float v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kFloat;
  a.f = v;
  return a;
}

struct Builder : GraphBuilder {
  using GraphBuilder::GraphBuilder;
  // The model as the builder has it when the passes run: every value's type inferred.
  ir::Model typed() const {
    ir::Model t = m;
    EXPECT_TRUE(passes::infer_shapes(t).ok());
    return t;
  }
};

using Ops = std::vector<std::string>;

// ---------------------------------------------------------------------------------------------------------
// fold_batch_norm

// x [2, 4, 5, 5] -> Conv(4 -> 6, 3x3, group `group`, bias when `bias`) -> BatchNormalization -> [Relu] -> y.
Builder conv_bn(bool bias, int64_t group = 1, bool relu = false) {
  Builder b(15);
  b.input("x", random_tensor({2, 4, 5, 5}));
  b.init("w", random_tensor({6, 4 / group, 3, 3}, -1.0f, 1.0f));
  std::vector<std::string> conv_in = {"x", "w"};
  if (bias) {
    b.init("cb", random_tensor({6}));
    conv_in.push_back("cb");
  }
  ir::Node& conv = b.node("Conv", conv_in, {"c"}, "conv");
  conv.attributes["kernel_shape"] = ints_attr({3, 3});
  conv.attributes["pads"] = ints_attr({1, 1, 1, 1});
  if (group != 1) conv.attributes["group"] = int_attr(group);
  b.init("scale", random_tensor({6}));
  b.init("shift", random_tensor({6}));
  b.init("mean", random_tensor({6}));
  b.init("var", random_tensor({6}, 0.25f, 2.0f));
  b.node("BatchNormalization", {"c", "scale", "shift", "mean", "var"}, {relu ? "n" : "y"}, "bn")
      .attributes["epsilon"] = float_attr(1e-3f);
  if (relu) b.node("Relu", {"n"}, {"y"}, "relu");
  b.output("y");
  return b;
}

TEST(FoldBatchNorm, ConvWithBiasBecomesOneConv) {
  Builder b = conv_bn(/*bias=*/true);
  const ir::Model before = b.typed();
  ir::Model after = before;
  int folded = 0;
  ASSERT_TRUE(passes::fold_batch_norm(after, &folded).ok());
  EXPECT_EQ(folded, 1);
  ASSERT_EQ(op_types(after), (Ops{"Conv"}));
  const ir::Node& conv = after.graph.nodes[0];
  EXPECT_EQ(conv.name, "conv + bn");  // answers to both names (a --layer-precision pin of either)
  EXPECT_EQ(conv.outputs, (std::vector<std::string>{"y"}));
  ASSERT_EQ(conv.inputs.size(), 3u);
  EXPECT_NE(conv.inputs[1], "w");  // new initializers: the old ones may have other readers
  EXPECT_NE(conv.inputs[2], "cb");
  EXPECT_EQ(after.graph.initializers.at(conv.inputs[1]).shape(), (Shape{6, 4, 3, 3}));
  EXPECT_EQ(after.graph.initializers.at(conv.inputs[2]).dtype(), DType::kFloat32);
  EXPECT_TRUE(after.graph.initializers.count("w"));  // left for eliminate_dead_nodes
  expect_same_outputs(before, after, b.feeds, 1e-4f);
}

TEST(FoldBatchNorm, GroupedConvWithoutBiasGainsOne) {
  Builder b = conv_bn(/*bias=*/false, /*group=*/2, /*relu=*/true);
  const ir::Model before = b.typed();
  ir::Model after = before;
  int folded = 0;
  ASSERT_TRUE(passes::fold_batch_norm(after, &folded).ok());
  EXPECT_EQ(folded, 1);
  ASSERT_EQ(op_types(after), (Ops{"Conv", "Relu"}));
  ASSERT_EQ(after.graph.nodes[0].inputs.size(), 3u);
  EXPECT_EQ(after.graph.initializers.at(after.graph.nodes[0].inputs[2]).shape(), (Shape{6}));
  EXPECT_EQ(after.graph.nodes[0].outputs[0], "n");
  expect_same_outputs(before, after, b.feeds, 1e-4f);
}

TEST(FoldBatchNorm, ConvOutputReadTwiceStays) {
  Builder b = conv_bn(true);
  b.output("c");  // the conv's own output is wanted too
  ir::Model m = b.typed();
  int folded = -1;
  ASSERT_TRUE(passes::fold_batch_norm(m, &folded).ok());
  EXPECT_EQ(folded, 0);
  EXPECT_EQ(op_types(m), (Ops{"Conv", "BatchNormalization"}));

  Builder r = conv_bn(true);
  r.node("Neg", {"c"}, {"z"}, "other_reader");
  r.output("z");
  m = r.typed();
  ASSERT_TRUE(passes::fold_batch_norm(m, &folded).ok());
  EXPECT_EQ(folded, 0);
}

TEST(FoldBatchNorm, TrainingModeStays) {
  Builder b = conv_bn(true);
  b.m.graph.nodes[1].attributes["training_mode"] = int_attr(1);
  ir::Model m = b.typed();
  int folded = -1;
  ASSERT_TRUE(passes::fold_batch_norm(m, &folded).ok());
  EXPECT_EQ(folded, 0);
  EXPECT_EQ(op_types(m), (Ops{"Conv", "BatchNormalization"}));
}

TEST(FoldBatchNorm, RunningStatisticsReadStays) {
  Builder b = conv_bn(true);
  b.m.graph.nodes[1].outputs = {"y", "running_mean"};
  b.output("running_mean");
  ir::Model m = b.m;  // (no inference: a training-mode output on an inference node)
  int folded = -1;
  ASSERT_TRUE(passes::fold_batch_norm(m, &folded).ok());
  EXPECT_EQ(folded, 0);
}

TEST(FoldBatchNorm, StatisticsThatAreInputsStay) {
  Builder b = conv_bn(true);
  b.m.graph.initializers.erase("mean");
  b.input("mean", random_tensor({6}));  // may change from run to run
  ir::Model m = b.typed();
  int folded = -1;
  ASSERT_TRUE(passes::fold_batch_norm(m, &folded).ok());
  EXPECT_EQ(folded, 0);
  // Weights a graph input (no constant to fold into) stay too.
  Builder w = conv_bn(true);
  w.m.graph.initializers.erase("w");
  w.input("w", random_tensor({6, 4, 3, 3}));
  m = w.typed();
  ASSERT_TRUE(passes::fold_batch_norm(m, &folded).ok());
  EXPECT_EQ(folded, 0);
}

// ---------------------------------------------------------------------------------------------------------
// recognize_layer_norm

struct LayerNormOptions {
  int opset = 17;
  bool pow = true;             // Pow(d, 2), else Mul(d, d)
  bool gamma = true, beta = true;
  int64_t axis = -1;
};

// x [2, 3, 8] -> the exporters' decomposed LayerNorm over the last axis -> y.
Builder decomposed_layer_norm(const LayerNormOptions& o) {
  Builder b(o.opset);
  b.input("x", random_tensor({2, 3, 8}));
  auto reduce_mean = [&](const std::string& in, const std::string& out, const std::string& name) {
    if (o.opset >= 18) {
      b.init(name + "_axes", Tensor::from_vector<int64_t>(DType::kInt64, {1}, {o.axis}));
      b.node("ReduceMean", {in, name + "_axes"}, {out}, name);
    } else {
      b.node("ReduceMean", {in}, {out}, name).attributes["axes"] = ints_attr({o.axis});
    }
  };
  reduce_mean("x", "m", "mean");
  b.node("Sub", {"x", "m"}, {"d"}, "sub");
  if (o.pow) {
    b.init("two", scalar(2.0f));
    b.node("Pow", {"d", "two"}, {"p"}, "pow");
  } else {
    b.node("Mul", {"d", "d"}, {"p"}, "square");
  }
  reduce_mean("p", "v", "var");
  b.init("eps", scalar(1e-5f));
  b.node("Add", {"eps", "v"}, {"a"}, "add_eps");
  b.node("Sqrt", {"a"}, {"s"}, "sqrt");
  const std::string n = o.gamma || o.beta ? "n" : "y";
  b.node("Div", {"d", "s"}, {n}, "div");
  std::string cur = n;
  if (o.gamma) {
    b.init("gamma", random_tensor({8}));
    b.node("Mul", {"gamma", cur}, {o.beta ? "g" : "y"}, "scale");
    cur = "g";
  }
  if (o.beta) {
    b.init("beta", random_tensor({8}));
    b.node("Add", {cur, "beta"}, {"y"}, "shift");
  }
  b.output("y");
  return b;
}

TEST(RecognizeLayerNorm, PowFormWithGammaAndBeta) {
  Builder b = decomposed_layer_norm({});
  const ir::Model before = b.typed();
  ir::Model after = before;
  int found = 0;
  ASSERT_TRUE(passes::recognize_layer_norm(after, &found).ok());
  EXPECT_EQ(found, 1);
  ASSERT_EQ(op_types(after), (Ops{"LayerNormalization"}));
  const ir::Node& ln = after.graph.nodes[0];
  EXPECT_EQ(ln.inputs, (std::vector<std::string>{"x", "gamma", "beta"}));
  EXPECT_EQ(ln.outputs, (std::vector<std::string>{"y"}));
  ASSERT_NE(ln.attr("epsilon"), nullptr);
  EXPECT_FLOAT_EQ(ln.attr("epsilon")->f, 1e-5f);
  EXPECT_EQ(ln.attr("axis")->i, -1);
  EXPECT_EQ(after.opsets.count("kiln"), 0u);  // an ONNX op
  expect_same_outputs(before, after, b.feeds, 1e-5f);
}

TEST(RecognizeLayerNorm, Opset18AxesInputSquareByMulWithoutAffine) {
  LayerNormOptions o;
  o.opset = 18;
  o.pow = false;
  o.gamma = o.beta = false;
  o.axis = 2;  // rank - 1 names the last axis too
  Builder b = decomposed_layer_norm(o);
  const ir::Model before = b.typed();
  ir::Model after = before;
  int found = 0;
  ASSERT_TRUE(passes::recognize_layer_norm(after, &found).ok());
  EXPECT_EQ(found, 1);
  ASSERT_EQ(op_types(after), (Ops{"LayerNormalization"}));
  const ir::Node& ln = after.graph.nodes[0];
  ASSERT_EQ(ln.inputs.size(), 2u);  // Scale is required: ones
  const Tensor& ones = after.graph.initializers.at(ln.inputs[1]);
  EXPECT_EQ(ones.shape(), (Shape{8}));
  EXPECT_EQ(ones.data<float>()[7], 1.0f);
  expect_same_outputs(before, after, b.feeds, 1e-5f);
}

TEST(RecognizeLayerNorm, NonConstantGammaStaysAMul) {
  LayerNormOptions o;
  o.beta = false;
  Builder b = decomposed_layer_norm(o);
  b.m.graph.initializers.erase("gamma");
  b.input("gamma", random_tensor({8}));
  const ir::Model before = b.typed();
  ir::Model after = before;
  int found = 0;
  ASSERT_TRUE(passes::recognize_layer_norm(after, &found).ok());
  EXPECT_EQ(found, 1);
  EXPECT_EQ(op_types(after), (Ops{"LayerNormalization", "Mul"}));  // the normalization alone
  expect_same_outputs(before, after, b.feeds, 1e-5f);
}

TEST(RecognizeLayerNorm, WhatMustStay) {
  int found = -1;
  {  // LayerNormalization is opset 17's
    LayerNormOptions o;
    o.opset = 16;
    ir::Model m = decomposed_layer_norm(o).typed();
    ASSERT_TRUE(passes::recognize_layer_norm(m, &found).ok());
    EXPECT_EQ(found, 0);
    EXPECT_EQ(m.graph.nodes.size(), 9u);
  }
  {  // over axis 1: not the last
    LayerNormOptions o;
    o.axis = 1;
    ir::Model m = decomposed_layer_norm(o).typed();
    ASSERT_TRUE(passes::recognize_layer_norm(m, &found).ok());
    EXPECT_EQ(found, 0);
  }
  {  // the centred value d read by a third node
    Builder b = decomposed_layer_norm({});
    b.node("Neg", {"d"}, {"z"}, "other_reader");
    b.output("z");
    ir::Model m = b.typed();
    ASSERT_TRUE(passes::recognize_layer_norm(m, &found).ok());
    EXPECT_EQ(found, 0);
  }
  {  // the variance is a graph output too
    Builder b = decomposed_layer_norm({});
    b.output("v");
    ir::Model m = b.typed();
    ASSERT_TRUE(passes::recognize_layer_norm(m, &found).ok());
    EXPECT_EQ(found, 0);
  }
  {  // Pow(d, 3) is no variance
    Builder b = decomposed_layer_norm({});
    b.m.graph.initializers["two"] = scalar(3.0f);
    ir::Model m = b.typed();
    ASSERT_TRUE(passes::recognize_layer_norm(m, &found).ok());
    EXPECT_EQ(found, 0);
  }
}

// ---------------------------------------------------------------------------------------------------------
// recognize_activations

TEST(RecognizeActivations, SiluEitherOrderBecomesSwish) {
  Builder b;
  b.input("x", random_tensor({2, 3, 4}));
  b.node("Sigmoid", {"x"}, {"s"}, "sig1");
  b.node("Mul", {"x", "s"}, {"y1"}, "mul1");
  b.node("Sigmoid", {"y1"}, {"s2"}, "sig2");
  b.node("Mul", {"s2", "y1"}, {"y"}, "mul2");
  b.output("y");
  const ir::Model before = b.typed();
  ir::Model after = before;
  int found = 0;
  ASSERT_TRUE(passes::recognize_activations(after, &found).ok());
  EXPECT_EQ(found, 2);
  ASSERT_EQ(op_types(after), (Ops{"kiln.Swish", "kiln.Swish"}));  // no ONNX Swish before opset 24
  EXPECT_EQ(after.graph.nodes[0].name, "sig1 + mul1");
  EXPECT_EQ(after.graph.nodes[1].inputs, (std::vector<std::string>{"y1"}));
  EXPECT_EQ(after.opsets.at("kiln"), 1);
  ASSERT_TRUE(passes::infer_shapes(after).ok());
  ASSERT_NE(after.graph.type_of("y1"), nullptr);
  EXPECT_EQ(after.graph.type_of("y1")->to_string(), "float32[2,3,4]");
  expect_same_outputs(before, after, b.feeds, 1e-5f);
}

TEST(RecognizeActivations, SiluAtOpset24IsOnnxSwish) {
  Builder b(24);
  b.input("x", random_tensor({5, 7}));
  b.node("Sigmoid", {"x"}, {"s"}, "sig");
  b.node("Mul", {"s", "x"}, {"y"}, "mul");
  b.output("y");
  const ir::Model before = b.typed();
  ir::Model after = before;
  ASSERT_TRUE(passes::recognize_activations(after).ok());
  ASSERT_EQ(op_types(after), (Ops{"Swish"}));
  EXPECT_EQ(after.opsets.count("kiln"), 0u);
  expect_same_outputs(before, after, b.feeds, 1e-5f);
}

TEST(RecognizeActivations, HardSwishForms) {
  Builder b(14);
  b.input("x", random_tensor({4, 16}, -5.0f, 5.0f));  // across Clip's bounds
  // x * HardSigmoid(x, 1/6, 0.5)
  ir::Node& hs = b.node("HardSigmoid", {"x"}, {"h"}, "hsig");
  hs.attributes["alpha"] = float_attr(1.0f / 6);
  hs.attributes["beta"] = float_attr(0.5f);
  b.node("Mul", {"h", "x"}, {"y1"}, "hmul");
  // (y1 * Clip(y1 + 3, 0, 6)) / 6
  b.init("three", scalar(3.0f));
  b.init("zero", scalar(0.0f));
  b.init("six", scalar(6.0f));
  b.init("sixth", scalar(1.0f / 6));
  b.node("Add", {"three", "y1"}, {"a2"}, "add2");
  b.node("Clip", {"a2", "zero", "six"}, {"c2"}, "clip2");
  b.node("Mul", {"y1", "c2"}, {"t2"}, "mul2");
  b.node("Div", {"t2", "six"}, {"y2"}, "div2");
  // y2 * (Clip(y2 + 3, 0, 6) * (1/6))
  b.node("Add", {"y2", "three"}, {"a3"}, "add3");
  b.node("Clip", {"a3", "zero", "six"}, {"c3"}, "clip3");
  b.node("Mul", {"sixth", "c3"}, {"t3"}, "mul3");
  b.node("Mul", {"t3", "y2"}, {"y"}, "mul3b");
  b.output("y");
  const ir::Model before = b.typed();
  ir::Model after = before;
  int found = 0;
  ASSERT_TRUE(passes::recognize_activations(after, &found).ok());
  EXPECT_EQ(found, 3);
  ASSERT_EQ(op_types(after), (Ops{"HardSwish", "HardSwish", "HardSwish"}));
  EXPECT_EQ(after.graph.nodes[1].name, "add2 + clip2 + mul2 + div2");
  EXPECT_EQ(after.graph.nodes[2].inputs, (std::vector<std::string>{"y2"}));
  EXPECT_EQ(after.graph.nodes[2].outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(after.opsets.count("kiln"), 0u);
  expect_same_outputs(before, after, b.feeds, 1e-5f);
}

TEST(RecognizeActivations, WhatMustStay) {
  int found = -1;
  {  // the sigmoid read twice
    Builder b;
    b.input("x", random_tensor({3, 4}));
    b.node("Sigmoid", {"x"}, {"s"}, "sig");
    b.node("Mul", {"x", "s"}, {"y"}, "mul");
    b.output("y");
    b.output("s");
    ir::Model m = b.typed();
    ASSERT_TRUE(passes::recognize_activations(m, &found).ok());
    EXPECT_EQ(found, 0);
    EXPECT_EQ(op_types(m), (Ops{"Sigmoid", "Mul"}));
  }
  {  // x * Sigmoid(z): another operand
    Builder b;
    b.input("x", random_tensor({3, 4}));
    b.input("z", random_tensor({3, 4}));
    b.node("Sigmoid", {"z"}, {"s"}, "sig");
    b.node("Mul", {"x", "s"}, {"y"}, "mul");
    b.output("y");
    ir::Model m = b.typed();
    ASSERT_TRUE(passes::recognize_activations(m, &found).ok());
    EXPECT_EQ(found, 0);
  }
  {  // HardSigmoid with its default alpha 0.2 is not hard-swish's
    Builder b(14);
    b.input("x", random_tensor({3, 4}));
    b.node("HardSigmoid", {"x"}, {"h"}, "hsig");
    b.node("Mul", {"x", "h"}, {"y"}, "mul");
    b.output("y");
    ir::Model m = b.typed();
    ASSERT_TRUE(passes::recognize_activations(m, &found).ok());
    EXPECT_EQ(found, 0);
  }
  {  // no HardSwish before opset 14; and Clip(., 0, 5) is no hard-swish at any
    for (const auto& [opset, hi] : std::vector<std::pair<int, float>>{{13, 6.0f}, {14, 5.0f}}) {
      Builder b(opset);
      b.input("x", random_tensor({3, 4}));
      b.init("three", scalar(3.0f));
      b.init("zero", scalar(0.0f));
      b.init("hi", scalar(hi));
      b.init("six", scalar(6.0f));
      b.node("Add", {"x", "three"}, {"a"}, "add");
      b.node("Clip", {"a", "zero", "hi"}, {"c"}, "clip");
      b.node("Mul", {"x", "c"}, {"t"}, "mul");
      b.node("Div", {"t", "six"}, {"y"}, "div");
      b.output("y");
      ir::Model m = b.typed();
      ASSERT_TRUE(passes::recognize_activations(m, &found).ok());
      EXPECT_EQ(found, 0) << "opset " << opset;
      EXPECT_EQ(m.graph.nodes.size(), 4u);
    }
  }
}

#ifdef KILN_HAVE_CUDA
// kiln.Swish on the GPU is ONNX Swish's elementwise layer: registered under the kiln domain, and computing
// what the CPU reference does (GPU round).
TEST(CudaKilnSwish, RegisteredAndMatchesReference) {
  ir::Node n;
  n.op_type = "Swish";
  n.domain = "kiln";
  const cuda::LayerKind* k = cuda::layer_table().find_for(n);
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->op_type, "kiln.Swish");
  EXPECT_TRUE(k->lowers_to_fp16);
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    LayerCase c;
    c.op = "Swish";
    c.domain = "kiln";
    c.opset = 1;
    c.inputs = {random_float({64, 1000}, 0.1f, 6.0f)};
    c.precision = t;
    if (t == DType::kFloat32) {
      c.rtol = 1e-5;
      c.atol = 1e-5;
    }
    expect_layer_matches_reference(c);
  }
}
#endif  // KILN_HAVE_CUDA

}  // namespace
}  // namespace kiln::testing
