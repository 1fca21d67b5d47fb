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

// A pass under test and what it did to a builder's typed model: the model before and after, and the count
// the pass reports (-1, and a failure, when it fails).
using Pass = Status (*)(ir::Model&, int*);
struct Rewrite {
  ir::Model before, after;
  int found = -1;
};
Rewrite rewrite(const Builder& b, Pass pass) {
  Rewrite r{b.typed(), {}, -1};
  r.after = r.before;
  const Status st = pass(r.after, &r.found);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return r;
}

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
  const Rewrite r = rewrite(b, passes::fold_batch_norm);
  EXPECT_EQ(r.found, 1);
  ASSERT_EQ(op_types(r.after), (Ops{"Conv"}));
  const ir::Node& conv = r.after.graph.nodes[0];
  EXPECT_EQ(conv.name, "conv + bn");  // answers to both names (a --layer-precision pin of either)
  EXPECT_EQ(conv.outputs, (std::vector<std::string>{"y"}));
  ASSERT_EQ(conv.inputs.size(), 3u);
  EXPECT_NE(conv.inputs[1], "w");  // new initializers: the old ones may have other readers
  EXPECT_NE(conv.inputs[2], "cb");
  EXPECT_EQ(r.after.graph.initializers.at(conv.inputs[1]).shape(), (Shape{6, 4, 3, 3}));
  EXPECT_EQ(r.after.graph.initializers.at(conv.inputs[2]).dtype(), DType::kFloat32);
  EXPECT_TRUE(r.after.graph.initializers.count("w"));  // left for eliminate_dead_nodes
  expect_same_outputs(r.before, r.after, b.feeds, 1e-4f);
}

TEST(FoldBatchNorm, GroupedConvWithoutBiasGainsOne) {
  Builder b = conv_bn(/*bias=*/false, /*group=*/2, /*relu=*/true);
  const Rewrite r = rewrite(b, passes::fold_batch_norm);
  EXPECT_EQ(r.found, 1);
  ASSERT_EQ(op_types(r.after), (Ops{"Conv", "Relu"}));
  ASSERT_EQ(r.after.graph.nodes[0].inputs.size(), 3u);
  EXPECT_EQ(r.after.graph.initializers.at(r.after.graph.nodes[0].inputs[2]).shape(), (Shape{6}));
  EXPECT_EQ(r.after.graph.nodes[0].outputs[0], "n");
  expect_same_outputs(r.before, r.after, b.feeds, 1e-4f);
}

TEST(FoldBatchNorm, ConvOutputReadTwiceStays) {
  Builder b = conv_bn(true);
  b.output("c");  // the conv's own output is wanted too
  const Rewrite r = rewrite(b, passes::fold_batch_norm);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(op_types(r.after), (Ops{"Conv", "BatchNormalization"}));

  Builder o = conv_bn(true);
  o.node("Neg", {"c"}, {"z"}, "other_reader");
  o.output("z");
  EXPECT_EQ(rewrite(o, passes::fold_batch_norm).found, 0);
}

TEST(FoldBatchNorm, TrainingModeStays) {
  Builder b = conv_bn(true);
  b.m.graph.nodes[1].attributes["training_mode"] = int_attr(1);
  const Rewrite r = rewrite(b, passes::fold_batch_norm);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(op_types(r.after), (Ops{"Conv", "BatchNormalization"}));
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
  EXPECT_EQ(rewrite(b, passes::fold_batch_norm).found, 0);
  // Weights a graph input (no constant to fold into) stay too.
  Builder w = conv_bn(true);
  w.m.graph.initializers.erase("w");
  w.input("w", random_tensor({6, 4, 3, 3}));
  EXPECT_EQ(rewrite(w, passes::fold_batch_norm).found, 0);
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
  const Rewrite r = rewrite(b, passes::recognize_layer_norm);
  EXPECT_EQ(r.found, 1);
  ASSERT_EQ(op_types(r.after), (Ops{"LayerNormalization"}));
  const ir::Node& ln = r.after.graph.nodes[0];
  EXPECT_EQ(ln.inputs, (std::vector<std::string>{"x", "gamma", "beta"}));
  EXPECT_EQ(ln.outputs, (std::vector<std::string>{"y"}));
  ASSERT_NE(ln.attr("epsilon"), nullptr);
  EXPECT_FLOAT_EQ(ln.attr("epsilon")->f, 1e-5f);
  EXPECT_EQ(ln.attr("axis")->i, -1);
  EXPECT_EQ(r.after.opsets.count("kiln"), 0u);  // an ONNX op
  expect_same_outputs(r.before, r.after, b.feeds, 1e-5f);
}

TEST(RecognizeLayerNorm, Opset18AxesInputSquareByMulWithoutAffine) {
  LayerNormOptions o;
  o.opset = 18;
  o.pow = false;
  o.gamma = o.beta = false;
  o.axis = 2;  // rank - 1 names the last axis too
  Builder b = decomposed_layer_norm(o);
  const Rewrite r = rewrite(b, passes::recognize_layer_norm);
  EXPECT_EQ(r.found, 1);
  ASSERT_EQ(op_types(r.after), (Ops{"LayerNormalization"}));
  const ir::Node& ln = r.after.graph.nodes[0];
  ASSERT_EQ(ln.inputs.size(), 2u);  // Scale is required: ones
  const Tensor& ones = r.after.graph.initializers.at(ln.inputs[1]);
  EXPECT_EQ(ones.shape(), (Shape{8}));
  EXPECT_EQ(ones.data<float>()[7], 1.0f);
  expect_same_outputs(r.before, r.after, b.feeds, 1e-5f);
}

TEST(RecognizeLayerNorm, NonConstantGammaStaysAMul) {
  LayerNormOptions o;
  o.beta = false;
  Builder b = decomposed_layer_norm(o);
  b.m.graph.initializers.erase("gamma");
  b.input("gamma", random_tensor({8}));
  const Rewrite r = rewrite(b, passes::recognize_layer_norm);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(op_types(r.after), (Ops{"LayerNormalization", "Mul"}));  // the normalization alone
  expect_same_outputs(r.before, r.after, b.feeds, 1e-5f);
}

TEST(RecognizeLayerNorm, WhatMustStay) {
  {  // LayerNormalization is opset 17's
    LayerNormOptions o;
    o.opset = 16;
    const Rewrite r = rewrite(decomposed_layer_norm(o), passes::recognize_layer_norm);
    EXPECT_EQ(r.found, 0);
    EXPECT_EQ(r.after.graph.nodes.size(), 9u);
  }
  {  // over axis 1: not the last
    LayerNormOptions o;
    o.axis = 1;
    EXPECT_EQ(rewrite(decomposed_layer_norm(o), passes::recognize_layer_norm).found, 0);
  }
  {  // the centred value d read by a third node
    Builder b = decomposed_layer_norm({});
    b.node("Neg", {"d"}, {"z"}, "other_reader");
    b.output("z");
    EXPECT_EQ(rewrite(b, passes::recognize_layer_norm).found, 0);
  }
  {  // the variance is a graph output too
    Builder b = decomposed_layer_norm({});
    b.output("v");
    EXPECT_EQ(rewrite(b, passes::recognize_layer_norm).found, 0);
  }
  {  // Pow(d, 3) is no variance
    Builder b = decomposed_layer_norm({});
    b.m.graph.initializers["two"] = scalar(3.0f);
    EXPECT_EQ(rewrite(b, passes::recognize_layer_norm).found, 0);
  }
}

// ---------------------------------------------------------------------------------------------------------
// recognize_activations
//
// The exporters' forms, each appended to a Builder as nodes named <op><tag> (the tests check the fused
// node's name and operands); `x_first` puts x first in the Mul by x, where exporters write either order.

// x * Sigmoid(x) -> y: nodes sig<tag>, mul<tag>; the sigmoid's value s<tag>.
void silu(Builder& b, const std::string& x, const std::string& y, const std::string& tag, bool x_first) {
  const std::string s = "s" + tag;
  b.node("Sigmoid", {x}, {s}, "sig" + tag);
  b.node("Mul", x_first ? std::vector<std::string>{x, s} : std::vector<std::string>{s, x}, {y}, "mul" + tag);
}

// x * HardSigmoid(x) -> y: nodes hsig<tag>, hmul<tag>; HardSigmoid's value h<tag>. With hard-swish's
// alpha 1/6 and beta 0.5 when `hard_swish_params`, else ONNX's defaults (alpha 0.2).
void hard_sigmoid_times_x(Builder& b, const std::string& x, const std::string& y, const std::string& tag,
                          bool hard_swish_params, bool x_first) {
  const std::string h = "h" + tag;
  ir::Node& hs = b.node("HardSigmoid", {x}, {h}, "hsig" + tag);
  if (hard_swish_params) {
    hs.attributes["alpha"] = float_attr(1.0f / 6);
    hs.attributes["beta"] = float_attr(0.5f);
  }
  b.node("Mul", x_first ? std::vector<std::string>{x, h} : std::vector<std::string>{h, x}, {y}, "hmul" + tag);
}

// Where the division by 6 of x * Clip(x + 3, 0, 6) / 6 goes.
enum class SixthAt {
  kAfterProduct,  // (x * c) / 6: Mul(x, c), Div(., six)
  kOnClip,        // x * (c * (1/6)): Mul(sixth, c), Mul(., x)
};

// x * Clip(x + 3, 0, hi) / 6 -> y: nodes add<tag> (Add(three, x) when `three_first`, else Add(x, three)),
// clip<tag>, mul<tag>, then div<tag> or mul<tag>b; values a<tag>, c<tag>, t<tag>. Clip's bounds are the
// initializers zero and hi (6: hard-swish's).
void clip_hard_swish(Builder& b, const std::string& x, const std::string& y, const std::string& tag,
                     SixthAt sixth_at, bool three_first, float hi = 6.0f) {
  const std::string a = "a" + tag, c = "c" + tag, t = "t" + tag;
  b.init("three", scalar(3.0f));
  b.init("zero", scalar(0.0f));
  b.init("hi", scalar(hi));
  b.node("Add", three_first ? std::vector<std::string>{"three", x} : std::vector<std::string>{x, "three"}, {a},
         "add" + tag);
  b.node("Clip", {a, "zero", "hi"}, {c}, "clip" + tag);
  if (sixth_at == SixthAt::kAfterProduct) {
    b.init("six", scalar(6.0f));
    b.node("Mul", {x, c}, {t}, "mul" + tag);
    b.node("Div", {t, "six"}, {y}, "div" + tag);
  } else {
    b.init("sixth", scalar(1.0f / 6));
    b.node("Mul", {"sixth", c}, {t}, "mul" + tag);
    b.node("Mul", {t, x}, {y}, "mul" + tag + "b");
  }
}

TEST(RecognizeActivations, SiluEitherOrderBecomesSwish) {
  Builder b;
  b.input("x", random_tensor({2, 3, 4}));
  silu(b, "x", "y1", "1", /*x_first=*/true);
  silu(b, "y1", "y", "2", /*x_first=*/false);
  b.output("y");
  Rewrite r = rewrite(b, passes::recognize_activations);
  EXPECT_EQ(r.found, 2);
  ASSERT_EQ(op_types(r.after), (Ops{"kiln.Swish", "kiln.Swish"}));  // no ONNX Swish before opset 24
  EXPECT_EQ(r.after.graph.nodes[0].name, "sig1 + mul1");
  EXPECT_EQ(r.after.graph.nodes[1].inputs, (std::vector<std::string>{"y1"}));
  EXPECT_EQ(r.after.opsets.at("kiln"), 1);
  ASSERT_TRUE(passes::infer_shapes(r.after).ok());
  ASSERT_NE(r.after.graph.type_of("y1"), nullptr);
  EXPECT_EQ(r.after.graph.type_of("y1")->to_string(), "float32[2,3,4]");
  expect_same_outputs(r.before, r.after, b.feeds, 1e-5f);
}

TEST(RecognizeActivations, SiluAtOpset24IsOnnxSwish) {
  Builder b(24);
  b.input("x", random_tensor({5, 7}));
  silu(b, "x", "y", "", /*x_first=*/false);
  b.output("y");
  const Rewrite r = rewrite(b, passes::recognize_activations);
  ASSERT_EQ(op_types(r.after), (Ops{"Swish"}));
  EXPECT_EQ(r.after.opsets.count("kiln"), 0u);
  expect_same_outputs(r.before, r.after, b.feeds, 1e-5f);
}

TEST(RecognizeActivations, HardSwishForms) {
  Builder b(14);
  b.input("x", random_tensor({4, 16}, -5.0f, 5.0f));  // across Clip's bounds
  hard_sigmoid_times_x(b, "x", "y1", "", /*hard_swish_params=*/true, /*x_first=*/false);
  clip_hard_swish(b, "y1", "y2", "2", SixthAt::kAfterProduct, /*three_first=*/true);
  clip_hard_swish(b, "y2", "y", "3", SixthAt::kOnClip, /*three_first=*/false);
  b.output("y");
  const Rewrite r = rewrite(b, passes::recognize_activations);
  EXPECT_EQ(r.found, 3);
  ASSERT_EQ(op_types(r.after), (Ops{"HardSwish", "HardSwish", "HardSwish"}));
  EXPECT_EQ(r.after.graph.nodes[1].name, "add2 + clip2 + mul2 + div2");
  EXPECT_EQ(r.after.graph.nodes[2].inputs, (std::vector<std::string>{"y2"}));
  EXPECT_EQ(r.after.graph.nodes[2].outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(r.after.opsets.count("kiln"), 0u);
  expect_same_outputs(r.before, r.after, b.feeds, 1e-5f);
}

TEST(RecognizeActivations, WhatMustStay) {
  {  // the sigmoid read twice
    Builder b;
    b.input("x", random_tensor({3, 4}));
    silu(b, "x", "y", "", /*x_first=*/true);
    b.output("y");
    b.output("s");
    const Rewrite r = rewrite(b, passes::recognize_activations);
    EXPECT_EQ(r.found, 0);
    EXPECT_EQ(op_types(r.after), (Ops{"Sigmoid", "Mul"}));
  }
  {  // x * Sigmoid(z): another operand
    Builder b;
    b.input("x", random_tensor({3, 4}));
    b.input("z", random_tensor({3, 4}));
    silu(b, "x", "y", "", /*x_first=*/true);
    b.m.graph.nodes[0].inputs = {"z"};
    b.output("y");
    EXPECT_EQ(rewrite(b, passes::recognize_activations).found, 0);
  }
  {  // HardSigmoid with its default alpha 0.2 is not hard-swish's
    Builder b(14);
    b.input("x", random_tensor({3, 4}));
    hard_sigmoid_times_x(b, "x", "y", "", /*hard_swish_params=*/false, /*x_first=*/true);
    b.output("y");
    EXPECT_EQ(rewrite(b, passes::recognize_activations).found, 0);
  }
  {  // no HardSwish before opset 14; and Clip(., 0, 5) is no hard-swish at any
    for (const auto& [opset, hi] : std::vector<std::pair<int, float>>{{13, 6.0f}, {14, 5.0f}}) {
      Builder b(opset);
      b.input("x", random_tensor({3, 4}));
      clip_hard_swish(b, "x", "y", "", SixthAt::kAfterProduct, /*three_first=*/false, hi);
      b.output("y");
      const Rewrite r = rewrite(b, passes::recognize_activations);
      EXPECT_EQ(r.found, 0) << "opset " << opset;
      EXPECT_EQ(r.after.graph.nodes.size(), 4u);
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
