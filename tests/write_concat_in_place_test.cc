// write_concat_in_place: a channel Concat one of whose inputs is a kiln.FusedConvPair's first output (read by
// the Concat alone) becomes kiln.WriteChannels, the pair writing its output straight into the concatenation.
// The pass on graphs of channels-last kiln.FusedConv built by hand (paired by fuse_conv_pair first), computing
// exactly what they did, the pair's output either first or second; what it must leave; the CPU references of
// kiln.WriteChannels and of the pair's output_channels, with every bad input an error naming the node; shape
// inference; and ResNet-50's layer1.2 and layer2.0 through whole CPU and GPU engines (where the GPU runs
// WriteChannels in place).
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_skip.h"
#include "fused_conv_graph_builder.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "kiln/kiln.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "quiet_logger.h"
#include "random_tensors.h"
#include "resnet_junction_model.h"
#include "engine/plan.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("write concat in place tests"));
  return gen;
}

struct PairBuilder : FusedConvGraphBuilder {
  explicit PairBuilder(DType t) : FusedConvGraphBuilder(t, rng()) {}
};

// A pair (P: 64 -> 256 with residual z, Q: 256 -> 128) whose Y the Concat alone reads, beside A (128
// channels): Concat(A, Y) when `y_second`, else Concat(Y, A).
PairBuilder junction(bool y_second, DType dt = DType::kFloat16) {
  PairBuilder b(dt);
  b.input("x", b.random({2, 3, 5, 64}));
  b.input("z", b.random({2, 3, 5, 256}));
  b.input("a", b.random({2, 3, 5, 128}));
  b.conv("p", "x", "y", {64, 256, "Relu"}, "z");
  b.conv("q", "y", "y2", {256, 128, "Relu"});
  ir::Node& cat = b.node("Concat", y_second ? std::vector<std::string>{"a", "y"} : std::vector<std::string>{"y", "a"},
                         {"cat"}, "shortcut concat");
  cat.attributes["axis"] = passes::int_attribute(3);
  b.output("cat");
  b.output("y2");
  return b;
}

// fuse_conv_pair, then the pass (FusedConvGraphBuilder::apply_after_pairing); -1 on failure.
int rewrite(PairBuilder& b) { return b.apply_after_pairing([](ir::Model& m, int* n) { return passes::write_concat_in_place(m, n); }); }

TEST(WriteConcatInPlace, ThePairWritesIntoTheConcatenation) {
  for (bool y_second : {true, false}) {
    for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
      SCOPED_TRACE(std::string(y_second ? "Concat(A, Y) " : "Concat(Y, A) ") + dtype_name(dt));
      PairBuilder b = junction(y_second, dt);
      ASSERT_EQ(rewrite(b), 1);
      EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "kiln.WriteChannels"}));
      const ir::Node& pair = b.m.graph.nodes[0];
      EXPECT_EQ(pair.attr("output_channels")->i, 384);
      EXPECT_EQ(pair.attr("output_channel_offset")->i, y_second ? 128 : 0);
      EXPECT_EQ(b.m.graph.type_of("y")->to_string(), dtype_name(dt) + "[2,3,5,384]");
      const ir::Node& write = b.m.graph.nodes[1];
      EXPECT_EQ(write.name, "shortcut concat");
      EXPECT_EQ(write.inputs, (std::vector<std::string>{"y", "a"}));
      EXPECT_EQ(write.outputs, (std::vector<std::string>{"cat"}));
      EXPECT_EQ(write.attr("offset")->i, y_second ? 0 : 256);
      EXPECT_EQ(b.m.graph.type_of("cat")->to_string(), dtype_name(dt) + "[2,3,5,384]");
    }
  }
}

TEST(WriteConcatInPlace, WhatMustStayAConcat) {
  struct Case {
    const char* what;
    std::function<void(PairBuilder&)> change;  // of junction(true), before the passes
  };
  auto cat = [](PairBuilder& b) -> ir::Node& { return b.m.graph.nodes.back(); };
  const std::vector<Case> cases = {
      {"Y has another reader", [&](PairBuilder& b) { b.node("Neg", {"y"}, {"n"}, "other"); b.output("n"); }},
      {"Y is a graph output", [&](PairBuilder& b) { b.output("y"); }},
      {"axis 1", [&](PairBuilder& b) {
         b.m.graph.inputs[2].type.dims[1] = ir::Dim::of(6);
         b.feeds["a"] = b.random({2, 6, 5, 256});
         b.m.graph.inputs[2].type.dims[3] = ir::Dim::of(256);
         cat(b).attributes["axis"] = passes::int_attribute(1);
       }},
      {"three inputs", [&](PairBuilder& b) { cat(b).inputs.push_back("a"); }},
      {"A's channels not a multiple of 8", [&](PairBuilder& b) {
         b.m.graph.inputs[2].type.dims[3] = ir::Dim::of(12);
         b.feeds["a"] = b.random({2, 3, 5, 12});
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    PairBuilder b = junction(true);
    c.change(b);
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    ASSERT_TRUE(passes::fuse_conv_pair(b.m).ok());
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    int n = -1;
    ASSERT_TRUE(passes::write_concat_in_place(b.m, &n).ok());
    EXPECT_EQ(n, 0);
    EXPECT_NE(find_op(b.m, "Concat"), nullptr);
    EXPECT_EQ(find_op(b.m, "FusedConvPair")->attr("output_channels"), nullptr);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The CPU references.

TEST(WriteChannelsOps, ReplacesTheChannelsAndNothingElse) {
  PairBuilder b(DType::kFloat16);
  const Tensor base = b.random({2, 3, 4, 24}), piece = b.random({2, 3, 4, 8});
  for (int64_t offset : {0, 5, 16}) {
    SCOPED_TRACE(offset);
    OpRun r = run_kernel("kiln", "WriteChannels", {Value(base), Value(piece)}, {{"offset", int_attr(offset)}}, 1, 1, "write");
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    const Tensor& y = r.outputs[0].tensor();
    ASSERT_EQ(y.shape(), base.shape());
    for (int64_t p = 0; p < 24; ++p)
      for (int64_t c = 0; c < 24; ++c) {
        const bool in_piece = c >= offset && c < offset + 8;
        const double want = in_piece ? piece.scalar_as_double(p * 8 + c - offset) : base.scalar_as_double(p * 24 + c);
        ASSERT_EQ(y.scalar_as_double(p * 24 + c), want) << p << " " << c;
      }
  }
}

TEST(WriteChannelsOps, BadInputsAreErrorsNamingTheNode) {
  PairBuilder b(DType::kFloat16);
  const Tensor base = b.random({2, 3, 4, 24});
  const struct {
    std::vector<Value> in;
    int64_t offset;
    const char* words;
  } cases[] = {
      {{Value(base)}, 0, "required"},
      {{Value(base), Value(b.random({2, 3, 4, 8})), Value(base)}, 0, "takes 2 inputs"},
      {{Value(b.random({24})), Value(b.random({8}))}, 0, "[N, H, W, C]"},
      {{Value(base), Value(random_tensor(rng(), DType::kFloat32, {2, 3, 4, 8}, -1.0f, 1.0f))}, 0, "dtype"},
      {{Value(base), Value(b.random({2, 3, 5, 8}))}, 0, "N, H and W"},
      {{Value(base), Value(b.random({2, 3, 4, 8}))}, 17, "outside"},
      {{Value(base), Value(b.random({2, 3, 4, 8}))}, -1, "outside"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.words);
    OpRun r = run_kernel("kiln", "WriteChannels", c.in, {{"offset", int_attr(c.offset)}}, 1, 1, "bad_write");
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("bad_write"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find(c.words), std::string::npos) << r.status.message();
  }
}

TEST(WriteChannelsOps, ThePairsWiderOutput) {
  PairBuilder b(DType::kFloat16);
  const Tensor x = b.random({1, 2, 3, 64}), w = b.random({64, 1, 1, 64}, -0.5f, 0.5f), w2 = b.random({64, 1, 1, 64}, -0.5f, 0.5f);
  const std::vector<Value> in = {Value(x), Value(w), Value(), Value(), Value(w2)};
  OpRun plain = run_kernel("kiln", "FusedConvPair", in, {}, 2, 1, "pair");
  ASSERT_TRUE(plain.status.ok()) << plain.status.to_string();
  OpRun wide = run_kernel("kiln", "FusedConvPair", in, {{"output_channels", int_attr(96)}, {"output_channel_offset", int_attr(16)}},
                          2, 1, "pair");
  ASSERT_TRUE(wide.status.ok()) << wide.status.to_string();
  const Tensor& y = wide.outputs[0].tensor();
  ASSERT_EQ(y.shape(), (Shape{1, 2, 3, 96}));
  for (int64_t p = 0; p < 6; ++p)
    for (int64_t c = 0; c < 96; ++c) {
      const double want = c >= 16 && c < 80 ? plain.outputs[0].tensor().scalar_as_double(p * 64 + c - 16) : 0.0;
      ASSERT_EQ(y.scalar_as_double(p * 96 + c), want) << p << " " << c;
    }
  expect_close(wide.outputs[1].tensor(), plain.outputs[1].tensor(), 0.0, "Y2");
  for (const auto& [channels, offset] : {std::pair<int64_t, int64_t>{32, 0}, {96, 40}, {96, -8}}) {
    OpRun r = run_kernel("kiln", "FusedConvPair", in,
                         {{"output_channels", int_attr(channels)}, {"output_channel_offset", int_attr(offset)}}, 2, 1, "bad_pair");
    ASSERT_FALSE(r.status.ok()) << channels << " " << offset;
    EXPECT_NE(r.status.message().find("bad_pair"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find("output_channels"), std::string::npos) << r.status.message();
  }
}

// ---------------------------------------------------------------------------------------------------------
// ResNet-50's layer1.2 and layer2.0 (resnet_junction_model.h) through whole engines: the GPU engine's graph
// has the sampled pair, the folded shortcut and WriteChannels (every layer on the GPU), and computes what the
// CPU engine does.

Result<std::shared_ptr<Engine>> build(const ir::Model& m, const std::string& device) {
  QuietLogger logger;
  NetworkDefinition network;
  network.model() = m;
  BuilderConfig config;
  config.set_device(device);
  config.set_fp16(device == "cuda");
  return kiln::Builder(logger).build_engine(network, config);
}

TEST(WriteConcatInPlace, ResNetLayer2JunctionOnTheGpu) {
  KILN_SKIP_WITHOUT_GPU();
  const OnnxConvGraph b = resnet_layer2_junction(rng());
  auto cpu = build(b.m, "cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
  auto gpu = build(b.m, "cuda");
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  bool wrote = false;
  for (const auto& l : (*gpu)->plan().layers) {
    EXPECT_EQ(l.backend, "cuda") << l.name << " (" << l.op_type << "): " << l.fallback_reason;
    wrote |= l.op_type.find("WriteChannels") != std::string::npos;
  }
  EXPECT_TRUE(wrote) << (*gpu)->inspect();
  auto want = (*cpu)->create_execution_context()->execute(b.feeds);
  ASSERT_TRUE(want.ok()) << want.status().to_string();
  auto ctx = (*gpu)->create_execution_context();
  for (int run = 0; run < 2; ++run) {  // the second run starts from the first's memory
    auto got = ctx->execute(b.feeds);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    expect_close(got->at("out2"), want->at("out2"), 2e-2, "out2");
  }
}

}  // namespace
}  // namespace kiln::testing
