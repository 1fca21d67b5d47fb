// fold_projection_shortcut: a ResNet block's 1x1 projection shortcut D, read only as the residual of the
// block's last 1x1 conv, folded into that conv over the concatenation of their inputs. Graphs of
// channels-last kiln.FusedConv built by hand (as convert_conv_layout leaves them), float32 and float16: the
// folds and what they compute against the graph before, on the CPU reference with fresh random inputs; the
// patterns that must stay; and a ResNet-like block through the whole optimizer for a GPU engine.
#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <set>

#include "builder/optimize_graph.h"
#include "fused_conv_graph_builder.h"
#include "graph_builder.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "gpu_optimize_options.h"
#endif

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261124);
  return gen;
}

ConvSpec spec(int64_t c, int64_t m, int64_t k = 1, int64_t stride = 1, bool bias = true, std::string activation = "") {
  return ConvSpec{c, m, std::move(activation), k, stride, bias};
}

struct Builder : FusedConvGraphBuilder {
  explicit Builder(DType t, int opset = 17) : FusedConvGraphBuilder(t, rng(), opset) {}
};

// The block's tail: y = Relu(conv3(a) + down(x)), a [2, h, w, ca], x [2, h*s-ish, w*s-ish, cx] (odd sizes
// when strided, so that the Slice's rounding up is exercised), output channels m.
Builder block(DType dt, int64_t ca, int64_t cx, int64_t m, int64_t stride, bool b3 = true, bool bd = true,
              int opset = 17) {
  Builder b(dt, opset);
  const int64_t h = 3, w = 4;
  b.input("a", b.random({2, h, w, ca}));
  b.input("x", b.random({2, (h - 1) * stride + 1, (w - 1) * stride + 1, cx}));
  b.conv("down", "x", "d", spec(cx, m, 1, stride, bd));
  b.conv("conv3 + add + relu3", "a", "y", spec(ca, m, 1, 1, b3, "Relu"), "d");
  b.output("y");
  return b;
}

int fold(Builder& b, double tol) {
  return b.apply_counted_pass([](ir::Model& m, int* n) { return passes::fold_projection_shortcut(m, n); }, tol,
                              /*drop_dead=*/true);
}

// float16 rounds D before the sum; the folded conv does not.
double tol_of(DType dt) { return dt == DType::kFloat32 ? 1e-5 : 1e-2; }

TEST(FoldProjectionShortcut, StrideOneFoldsIntoOneConvOverTheConcat) {
  for (DType dt : {DType::kFloat32, DType::kFloat16})
    for (auto [b3, bd] : {std::pair{true, true}, {true, false}, {false, true}, {false, false}}) {
      SCOPED_TRACE(dtype_name(dt) + " b3 " + std::to_string(b3) + " bd " + std::to_string(bd));
      Builder b = block(dt, 8, 16, 32, 1, b3, bd);  // 2 * 24 < 2 * 32
      ASSERT_EQ(fold(b, tol_of(dt)), 1);
      EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Concat", "kiln.FusedConv"}));
      const ir::Node& cat = b.m.graph.nodes[0];
      const ir::Node& f = b.m.graph.nodes[1];
      EXPECT_EQ(cat.name, "conv3 + add + relu3 shortcut concat");
      EXPECT_EQ(cat.inputs, (std::vector<std::string>{"a", "x"}));
      EXPECT_EQ(cat.attr("axis")->i, 3);
      EXPECT_EQ(f.name, "down + conv3 + add + relu3");
      EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
      EXPECT_EQ(f.inputs.size(), b3 || bd ? 3u : 2u);
      EXPECT_EQ(f.inputs[0], cat.outputs[0]);
      EXPECT_EQ(f.attr("activation")->s, "Relu");
      EXPECT_EQ(f.attr("channels_last")->i, 1);
      const Tensor& w = b.m.graph.initializers.at(f.inputs[1]);
      EXPECT_EQ(w.shape(), (Shape{32, 1, 1, 24}));
      EXPECT_EQ(w.dtype(), dt);
      if (f.inputs.size() > 2) {
        EXPECT_EQ(b.m.graph.initializers.at(f.inputs[2]).dtype(), dt);
      }
      EXPECT_EQ(b.m.graph.type_of("d"), nullptr);  // D is gone
      EXPECT_EQ(b.m.graph.type_of(cat.outputs[0])->to_string(), dtype_name(dt) + "[2,3,4,24]");
    }
}

TEST(FoldProjectionShortcut, StrideTwoSamplesTheNarrowInputWithASlice) {
  for (DType dt : {DType::kFloat32, DType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dt));
    Builder b = block(dt, 8, 8, 40, 2);  // 2 * 16 + 2 * 8 < 2 * 40; x is [2, 5, 7, 8]
    ASSERT_EQ(fold(b, tol_of(dt)), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Slice", "Concat", "kiln.FusedConv"}));
    const ir::Node& slice = b.m.graph.nodes[0];
    EXPECT_EQ(slice.name, "conv3 + add + relu3 shortcut slice");
    ASSERT_EQ(slice.inputs.size(), 5u);
    EXPECT_EQ(slice.inputs[0], "x");
    EXPECT_EQ(b.m.graph.initializers.at(slice.inputs[3]).to_int64_vector(), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(b.m.graph.initializers.at(slice.inputs[4]).to_int64_vector(), (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(b.m.graph.type_of(slice.outputs[0])->to_string(), dtype_name(dt) + "[2,3,4,8]");
    EXPECT_EQ(b.m.graph.nodes[1].inputs, (std::vector<std::string>{"a", slice.outputs[0]}));
    EXPECT_EQ(b.m.graph.nodes[2].name, "down + conv3 + add + relu3");
  }
}

TEST(FoldProjectionShortcut, FoldsEachBlockAndKeepsTheNodesAround) {
  // Two blocks in a row, the first's output the second's X, with a node before and after: each folds, in
  // its place, and what reads the output still does.
  Builder b(DType::kFloat32);
  b.input("x", b.random({1, 3, 3, 8}));
  b.node("Relu", {"x"}, {"x0"}, "pre");
  b.conv("a1", "x0", "a1", spec(8, 8, 3));
  b.conv("down1", "x0", "d1", spec(8, 32));
  b.conv("conv1", "a1", "y1", spec(8, 32, 1, 1, true, "Relu"), "d1");
  b.conv("a2", "y1", "a2", spec(32, 8));
  b.conv("down2", "y1", "d2", spec(32, 64));
  b.conv("conv2", "a2", "y2", spec(8, 64), "d2");
  b.node("Neg", {"y2"}, {"out"}, "post");
  b.output("out");
  ASSERT_EQ(fold(b, 1e-5), 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Relu", "kiln.FusedConv", "Concat", "kiln.FusedConv",
                                                     "kiln.FusedConv", "Concat", "kiln.FusedConv", "Neg"}));
  EXPECT_EQ(b.m.graph.nodes[3].name, "down1 + conv1");
  EXPECT_EQ(b.m.graph.nodes[6].name, "down2 + conv2");
}

TEST(FoldProjectionShortcut, WhatMustNotFold) {
  struct Case {
    const char* what;
    std::function<void(Builder&)> make;
  };
  auto tail = [](Builder& b, ConvSpec down, ConvSpec conv3) {
    b.input("a", b.random({2, 3, 3, conv3.c}));
    b.input("x", b.random({2, 2 * down.stride + 1, 2 * down.stride + 1, down.c}));
    b.conv("down", "x", "d", down);
    b.conv("conv3", "a", "y", conv3, "d");
    b.output("y");
  };
  const std::vector<Case> cases = {
      {"D read twice",
       [&](Builder& b) {
         tail(b, spec(8, 32), spec(8, 32));
         b.node("Neg", {"d"}, {"other"}, "other_reader");
         b.output("other");
       }},
      {"D a graph output",
       [&](Builder& b) {
         tail(b, spec(8, 32), spec(8, 32));
         b.output("d");
       }},
      {"D with an activation", [&](Builder& b) { tail(b, spec(8, 32, 1, 1, true, "Relu"), spec(8, 32)); }},
      {"W3 3x3", [&](Builder& b) { tail(b, spec(8, 32), spec(8, 32, 3)); }},
      {"Wd 3x3", [&](Builder& b) { tail(b, spec(8, 32, 3), spec(8, 32)); }},
      {"Y strided",
       [&](Builder& b) {
         b.input("x", b.random({2, 5, 5, 8}));
         b.conv("down", "x", "d", spec(8, 32, 1, 2));
         b.conv("conv3", "x", "y", spec(8, 32, 1, 2), "d");
         b.output("y");
       }},
      {"Ca not a multiple of 8", [&](Builder& b) { tail(b, spec(8, 32), spec(4, 32)); }},
      {"Cx not a multiple of 8", [&](Builder& b) { tail(b, spec(12, 48), spec(8, 48)); }},
      {"the traffic count: 2 * (8 + 8) = 2 * 16", [&](Builder& b) { tail(b, spec(8, 16), spec(8, 16)); }},
      {"the traffic count with the stride: 2 * (8 + 16) + 2 * 16 = 2 * 40",
       [&](Builder& b) { tail(b, spec(16, 40, 1, 2), spec(8, 40)); }},
  };
  for (DType dt : {DType::kFloat32, DType::kFloat16})
    for (const Case& c : cases) {
      SCOPED_TRACE(dtype_name(dt) + ": " + c.what);
      Builder b(dt);
      c.make(b);
      const std::vector<std::string> ops = op_types(b.m);
      EXPECT_EQ(fold(b, 0), 0);
      EXPECT_EQ(op_types(b.m), ops);
    }
  {
    SCOPED_TRACE("a strided shortcut at opset 9 (Slice without steps)");
    Builder b = block(DType::kFloat32, 8, 8, 40, 2, true, true, /*opset=*/9);
    EXPECT_EQ(fold(b, 0), 0);
  }
  {
    SCOPED_TRACE("an NCHW shortcut");
    Builder b = block(DType::kFloat32, 8, 16, 32, 1);
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    b.m.graph.nodes[0].attributes["channels_last"] = passes::int_attribute(0);
    int n = -1;
    ASSERT_TRUE(passes::fold_projection_shortcut(b.m, &n).ok());
    EXPECT_EQ(n, 0);
  }
}

// ---- the whole optimizer: a ResNet-like block as torch exports it (NCHW Conv, Add, Relu) in float32

struct OnnxBlock : GraphBuilder {
  OnnxBlock() : GraphBuilder(17) {}
  void conv(const std::string& name, const std::string& x, const std::string& y, int64_t c, int64_t m, int64_t k,
            int64_t stride = 1) {
    init(name + ".weight", random_tensor(rng(), DType::kFloat32, {m, c, k, k}, -0.5f, 0.5f));
    init(name + ".bias", random_tensor(rng(), DType::kFloat32, {m}, -0.2f, 0.2f));
    ir::Node& n = node("Conv", {x, name + ".weight", name + ".bias"}, {y}, name);
    n.attributes["kernel_shape"] = passes::ints_attribute({k, k});
    n.attributes["pads"] = passes::ints_attribute({k / 2, k / 2, k / 2, k / 2});
    n.attributes["strides"] = passes::ints_attribute({stride, stride});
  }
};

// Input [2, cin, 8, 8] -> 1x1 (width) + Relu -> 3x3 (stride s) + Relu -> 1x1 (cout), plus the 1x1 shortcut
// (stride s) of the input, Relu; then a global average pool.
OnnxBlock onnx_block(int64_t cin, int64_t width, int64_t cout, int64_t stride) {
  OnnxBlock b;
  b.input("image", random_tensor(rng(), DType::kFloat32, {2, cin, 8, 8}, -1.0f, 1.0f));
  b.conv("block.conv1", "image", "c1", cin, width, 1);
  b.node("Relu", {"c1"}, {"r1"}, "block.relu1");
  b.conv("block.conv2", "r1", "c2", width, width, 3, stride);
  b.node("Relu", {"c2"}, {"r2"}, "block.relu2");
  b.conv("block.conv3", "r2", "c3", width, cout, 1);
  b.conv("block.downsample", "image", "d", cin, cout, 1, stride);
  b.node("Add", {"c3", "d"}, {"sum"}, "block.add");
  b.node("Relu", {"sum"}, {"out"}, "block.relu3");
  b.node("GlobalAveragePool", {"out"}, {"gap"}, "head.gap");
  b.output("gap");
  return b;
}

void optimize_for_gpu_and_compare(OnnxBlock& b, bool expect_fold) {
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "built without the CUDA backend (its layer table decides what runs in fp16)";
#else
  const builder::OptimizeOptions o = gpu_fp16_options();
  Logger quiet(Severity::kError);
  std::set<std::string> lowered;
  ir::Model m = b.m;
  const Status st = builder::optimize_graph(m, o, quiet, &lowered);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const ir::Node* folded = m.graph.node_named("block.downsample + block.conv3 + block.add + block.relu3");
  const ir::Node* concat = find_op(m, "Concat");
  if (!expect_fold) {
    EXPECT_EQ(folded, nullptr);
    EXPECT_EQ(concat, nullptr);
  } else {
    ASSERT_NE(folded, nullptr);
    ASSERT_NE(concat, nullptr);
    EXPECT_EQ(concat->name, "block.conv3 + block.add + block.relu3 shortcut concat");
    // The new nodes keep the precision of the conv they replace.
    EXPECT_TRUE(lowered.count(folded->name));
    EXPECT_TRUE(lowered.count(concat->name));
    EXPECT_EQ(m.graph.type_of(folded->outputs[0])->dtype, DType::kFloat16);
    if (const ir::Node* slice = find_op(m, "Slice")) {
      EXPECT_TRUE(lowered.count(slice->name));
    }
  }
  expect_same_outputs(b.m, m, b.feeds, 2e-2);
#endif
}

TEST(FoldProjectionShortcut, ResNetBlockThroughTheOptimizerMatchesTheReference) {
  OnnxBlock b = onnx_block(16, 8, 64, 1);  // layer1.0's shape: 2 * (8 + 16) < 2 * 64
  optimize_for_gpu_and_compare(b, true);
}

TEST(FoldProjectionShortcut, StridedBlockThroughTheOptimizer) {
  {
    SCOPED_TRACE("narrow input: folds with a Slice");
    OnnxBlock b = onnx_block(8, 8, 64, 2);  // 2 * 16 + 2 * 8 < 2 * 64
    optimize_for_gpu_and_compare(b, true);
  }
  {
    SCOPED_TRACE("layer2.0's proportions: stays");
    OnnxBlock b = onnx_block(32, 16, 64, 2);  // 2 * 48 + 2 * 32 >= 2 * 64
    optimize_for_gpu_and_compare(b, false);
  }
}

}  // namespace
}  // namespace kiln::testing
