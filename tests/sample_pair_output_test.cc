// sample_pair_output: a kiln.FusedConvPair whose first output only a strided 1x1 conv reads writes that
// output sampled at the conv's stride, and the conv gets stride 1. The pass on graphs of channels-last
// kiln.FusedConv built by hand (fused into pairs by fuse_conv_pair first): ResNet-50's layer1.2 -> layer2.0
// junction, computing exactly what the graph did, at strides the sizes do not divide; what it must leave; the
// CPU reference of output_strides and its bad values; shape inference; and ResNet blocks through the whole
// optimizer for a GPU engine.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "builder/optimize_graph.h"
#include "fused_conv_graph_builder.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "resnet_junction_model.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "gpu_optimize_options.h"
#endif

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("sample pair output tests"));
  return gen;
}

struct Builder : FusedConvGraphBuilder {
  explicit Builder(DType t) : FusedConvGraphBuilder(t, rng()) {}
};

// ResNet-50's layer1.2 -> layer2.0 junction, narrowed: P = Relu(conv3(x) + b + z) [2, h, w, 256], read by
// layer2.0's conv1 Q (-> 128) and by its downsample D, a 1x1 conv of stride `stride` (-> 64).
Builder junction(DType dt, int64_t h, int64_t w, std::vector<int64_t> stride) {
  Builder b(dt);
  b.input("x", b.random({2, h, w, 64}));
  b.input("z", b.random({2, h, w, 256}));
  b.conv("layer1.2.conv3", "x", "y", {64, 256, "Relu"}, "z");
  b.conv("layer2.0.conv1", "y", "y2", {256, 128, "Relu"});
  b.conv("layer2.0.downsample", "y", "d", {256, 64});
  b.m.graph.nodes.back().attributes["strides"] = passes::ints_attribute(stride);
  b.output("y2");
  b.output("d");
  return b;
}

// fuse_conv_pair, then the pass (FusedConvGraphBuilder::apply_after_pairing); -1 on failure.
int sample(Builder& b) { return b.apply_after_pairing([](ir::Model& m, int* n) { return passes::sample_pair_output(m, n); }); }

TEST(SamplePairOutput, SamplesTheDownsamplesInput) {
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(dt));
    Builder b = junction(dt, 6, 6, {2, 2});
    ASSERT_EQ(sample(b), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "kiln.FusedConv"}));
    const ir::Node& pair = b.m.graph.nodes[0];
    EXPECT_EQ(pair.name, "layer1.2.conv3 + layer2.0.conv1");
    ASSERT_NE(pair.attr("output_strides"), nullptr);
    EXPECT_EQ(pair.attr("output_strides")->ints, (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(b.m.graph.nodes[1].attr("strides")->ints, (std::vector<int64_t>{1, 1}));
    EXPECT_EQ(b.m.graph.type_of("y")->to_string(), dtype_name(dt) + "[2,3,3,256]");
    EXPECT_EQ(b.m.graph.type_of("y2")->to_string(), dtype_name(dt) + "[2,6,6,128]");
    EXPECT_EQ(b.m.graph.type_of("d")->to_string(), dtype_name(dt) + "[2,3,3,64]");
  }
}

// Sizes the strides do not divide (the last row and column are still read), unequal strides, one axis.
TEST(SamplePairOutput, StridesThatDoNotDivideTheSizes) {
  const struct {
    std::vector<int64_t> stride;
    const char* y;
  } cases[] = {{{2, 2}, "float16[2,3,4,256]"}, {{3, 2}, "float16[2,2,4,256]"}, {{1, 3}, "float16[2,5,3,256]"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.y);
    Builder b = junction(DType::kFloat16, 5, 7, c.stride);
    ASSERT_EQ(sample(b), 1);
    EXPECT_EQ(b.m.graph.nodes[0].attr("output_strides")->ints, c.stride);
    EXPECT_EQ(b.m.graph.type_of("y")->to_string(), c.y);
  }
}

TEST(SamplePairOutput, WhatMustNotBeSampled) {
  struct Case {
    const char* what;
    std::function<void(Builder&)> change;  // of the junction at stride 2, before the passes
  };
  auto downsample = [](Builder& b) -> ir::Node& { return b.m.graph.nodes.back(); };
  const std::vector<Case> cases = {
      {"stride 1", [&](Builder& b) { downsample(b).attributes["strides"] = passes::ints_attribute({1, 1}); }},
      {"padded", [&](Builder& b) { downsample(b).attributes["pads"] = passes::ints_attribute({1, 1, 1, 1}); }},
      {"SAME_UPPER", [&](Builder& b) { downsample(b).attributes["auto_pad"] = passes::string_attribute("SAME_UPPER"); }},
      {"dilated", [&](Builder& b) { downsample(b).attributes["dilations"] = passes::ints_attribute({2, 2}); }},
      {"not channels-last", [&](Builder& b) { downsample(b).attributes["channels_last"] = passes::int_attribute(0); }},
      {"Y is a graph output", [&](Builder& b) { b.output("y"); }},
      {"Y has another reader", [&](Builder& b) { b.node("Neg", {"y"}, {"n"}, "other"); b.output("n"); }},
      {"3x3 window", [&](Builder& b) {
         b.m.graph.nodes.pop_back();
         b.conv("layer2.0.downsample", "y", "d", {256, 64, "", 3, 2});
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Builder b = junction(DType::kFloat16, 6, 6, {2, 2});
    c.change(b);
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    ASSERT_TRUE(passes::fuse_conv_pair(b.m).ok());
    int sampled = -1;
    ASSERT_TRUE(passes::sample_pair_output(b.m, &sampled).ok());
    EXPECT_EQ(sampled, 0);
    EXPECT_EQ(find_op(b.m, "FusedConvPair")->attr("output_strides"), nullptr);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The CPU reference: output_strides gives the pair's Y at the sampled pixels, and Y2 as without it.

TEST(SamplePairOutput, ReferenceSamplesY) {
  const DType h = DType::kFloat16;
  Builder b(h);
  const Tensor x = b.random({2, 5, 7, 64}), w = b.random({256, 1, 1, 64}, -0.5f, 0.5f);
  const Tensor w2 = b.random({64, 1, 1, 256}, -0.5f, 0.5f);
  const std::vector<Value> in = {Value(x), Value(w), Value(), Value(), Value(w2)};
  OpRun full = run_kernel("kiln", "FusedConvPair", in, {}, 2, 1, "pair");
  ASSERT_TRUE(full.status.ok()) << full.status.to_string();
  const Tensor& y = full.outputs[0].tensor();
  for (const std::vector<int64_t>& s : {std::vector<int64_t>{2, 2}, {3, 2}, {1, 4}}) {
    SCOPED_TRACE(shape_to_string(s));
    OpRun r = run_kernel("kiln", "FusedConvPair", in, {{"output_strides", ints_attr(s)}}, 2, 1, "pair");
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    const Tensor& ys = r.outputs[0].tensor();
    ASSERT_EQ(ys.shape(), (Shape{2, (5 + s[0] - 1) / s[0], (7 + s[1] - 1) / s[1], 256}));
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t i = 0; i < ys.dim(1); ++i)
        for (int64_t j = 0; j < ys.dim(2); ++j)
          for (int64_t c = 0; c < 256; c += 37) {
            const int64_t at = ((n * ys.dim(1) + i) * ys.dim(2) + j) * 256 + c;
            const int64_t from = ((n * 5 + i * s[0]) * 7 + j * s[1]) * 256 + c;
            ASSERT_EQ(ys.scalar_as_double(at), y.scalar_as_double(from)) << n << " " << i << " " << j << " " << c;
          }
    expect_close(r.outputs[1].tensor(), full.outputs[1].tensor(), 0.0, "Y2");
  }
  for (const std::vector<int64_t>& bad : {std::vector<int64_t>{0, 2}, {2}, {2, 2, 2}, {-1, 1}}) {
    SCOPED_TRACE(shape_to_string(bad));
    OpRun r = run_kernel("kiln", "FusedConvPair", in, {{"output_strides", ints_attr(bad)}}, 2, 1, "bad_pair");
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("bad_pair"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find("output_strides"), std::string::npos) << r.status.message();
  }
}

// Shape inference: H and W divided by the strides, rounded up; a symbolic batch kept; an unknown H unknown.
TEST(SamplePairOutput, InferShapes) {
  ir::Model m;
  m.opsets = {{"", 17}, {"kiln", 1}};
  ir::ValueInfo x;
  x.name = "x";
  x.type.kind = ir::TypeInfo::Kind::kTensor;
  x.type.dtype = DType::kFloat16;
  x.type.has_shape = true;
  x.type.dims = {ir::Dim::named("batch"), ir::Dim::named("height"), ir::Dim::of(9), ir::Dim::of(64)};
  m.graph.inputs.push_back(x);
  m.graph.initializers["w"] = Tensor(DType::kFloat16, {256, 1, 1, 64});
  m.graph.initializers["w2"] = Tensor(DType::kFloat16, {128, 1, 1, 256});
  ir::Node n;
  n.name = "pair";
  n.op_type = "FusedConvPair";
  n.domain = "kiln";
  n.inputs = {"x", "w", "", "", "w2", ""};
  n.outputs = {"y", "y2"};
  n.attributes["output_strides"] = passes::ints_attribute({2, 4});
  m.graph.nodes.push_back(n);
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  EXPECT_EQ(m.graph.type_of("y")->to_string(), "float16[batch,?,3,256]");
  EXPECT_EQ(m.graph.type_of("y2")->to_string(), "float16[batch,height,9,128]");
}

// ---------------------------------------------------------------------------------------------------------
// The whole optimizer on ResNet-50's layer1.2 and layer2.0 (resnet_junction_model.h).

TEST(SamplePairOutput, ResNetLayer2JunctionThroughTheOptimizer) {
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "built without the CUDA backend (its layer table decides what runs in fp16)";
#else
  const OnnxConvGraph b = resnet_layer2_junction(rng());
  Logger quiet(Severity::kError);
  ir::Model m = b.m;
  const Status st = builder::optimize_graph(m, gpu_fp16_options(), quiet, nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const ir::Node* pair = find_op(m, "FusedConvPair");
  ASSERT_NE(pair, nullptr);
  ASSERT_NE(pair->attr("output_strides"), nullptr);
  EXPECT_EQ(pair->attr("output_strides")->ints, (std::vector<int64_t>{2, 2}));
  // The downsample, now of stride 1, folded into layer2.0's conv3 on fold_projection_shortcut's second run,
  // and the pair writes its sampled output into the shortcut's concatenation (write_concat_in_place).
  EXPECT_EQ(m.graph.type_of(pair->outputs[0])->to_string(), "float16[2,3,3,384]");
  EXPECT_EQ(find_op(m, "Concat"), nullptr);
  const ir::Node* write = find_op(m, "WriteChannels");
  ASSERT_NE(write, nullptr);
  EXPECT_EQ(write->inputs[0], pair->outputs[0]);
  bool folded = false;
  for (const ir::Node& n : m.graph.nodes) folded |= n.name.rfind("layer2.0.downsample + layer2.0.conv3", 0) == 0;
  EXPECT_TRUE(folded);
  expect_same_outputs(b.m, m, b.feeds, 2e-2);
#endif
}

}  // namespace
}  // namespace kiln::testing
