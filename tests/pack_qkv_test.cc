// kiln.FusedAttention with packed_qkv = 1 (src/backends/cpu/ops/fused_attention.cc): one input QKV
// [B, S, 3, H, D], against the unpacked op on its three slices; its errors and its shape inference; and the
// pass that makes it (pack_qkv_projections): the graph after it, its outputs before and after through the CPU
// executor on random inputs, and what it must leave alone.
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/cast.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261124);
  return gen;
}

// Uniform in [-2, 2], never zero.
Tensor random_tensor(const Shape& shape, DType dtype = DType::kFloat32) {
  return testing::random_tensor(rng(), dtype, shape, -2.0f, 2.0f);
}

// 0 where attended, -inf where not (about a third), the first row fully masked.
Tensor random_mask(const Shape& shape, DType dtype = DType::kFloat32) {
  return testing::random_mask(rng(), dtype, shape);
}

std::map<std::string, ir::Attribute> attention_attrs(bool packed, const std::string& layout = "BSHD") {
  std::map<std::string, ir::Attribute> a = {
      {"layout", string_attr(layout)}, {"scale", float_attr(0.4f)}, {"nan_to_zero", int_attr(1)}};
  if (packed) a["packed_qkv"] = int_attr(1);
  return a;
}

Tensor run_ok(const std::string& domain, const std::string& op, std::vector<Value> inputs,
              std::map<std::string, ir::Attribute> attrs, int opset) {
  OpRun r = run_kernel(domain, op, std::move(inputs), std::move(attrs), 1, opset, "n_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

// QKV[:, :, i] through ONNX Gather.
Tensor slice(const Tensor& qkv, int64_t i) {
  return run_ok("", "Gather", {qkv, Tensor::scalar<int64_t>(DType::kInt64, i)}, {{"axis", int_attr(2)}}, 17);
}

// ---------------------------------------------------------------------------------------------------------
// The op

TEST(PackedQkvAttentionOp, MatchesTheUnpackedOpOnItsSlices) {
  const int64_t B = 2, S = 5, H = 3, D = 8;
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64})
    for (const Shape& ms : std::vector<Shape>{{B, 1, S, S}, {B, 1, 1, S}, {}}) {
      SCOPED_TRACE(dtype_name(t) + " mask " + (ms.empty() ? "none" : shape_to_string(ms)));
      const Tensor qkv = random_tensor({B, S, 3, H, D}, t);
      const Value mask = ms.empty() ? Value::none() : Value(random_mask(ms, t));
      std::vector<Value> packed_in = {qkv};
      if (!ms.empty()) packed_in.push_back(mask);
      const Tensor got = run_ok("kiln", "FusedAttention", packed_in, attention_attrs(true), 1);
      const Tensor want =
          run_ok("kiln", "FusedAttention", {slice(qkv, 0), slice(qkv, 1), slice(qkv, 2), mask}, attention_attrs(false), 1);
      EXPECT_EQ(got.shape(), (Shape{B, S, H, D}));
      expect_close(got, want, 0.0, "packed");
    }
}

TEST(PackedQkvAttentionOp, ClearErrorsNamingTheNode) {
  const Tensor qkv = random_tensor({2, 5, 3, 2, 8});
  auto expect_error = [&](std::vector<Value> in, std::map<std::string, ir::Attribute> attrs, const std::string& part) {
    OpRun r = run_kernel("kiln", "FusedAttention", std::move(in), std::move(attrs), 1, 1, "attn_9");
    ASSERT_FALSE(r.status.ok()) << part;
    EXPECT_NE(r.status.message().find("attn_9"), std::string::npos) << r.status.to_string();
    EXPECT_NE(r.status.message().find(part), std::string::npos) << r.status.to_string();
  };
  expect_error({random_tensor({2, 5, 2, 8})}, attention_attrs(true), "QKV must be [B, S, 3, H, D] with packed_qkv, got [2,5,2,8]");
  expect_error({random_tensor({2, 5, 4, 2, 8})}, attention_attrs(true), "got [2,5,4,2,8]");
  expect_error({qkv}, attention_attrs(true, "BHSD"), "packed_qkv needs layout \"BSHD\", got \"BHSD\"");
  expect_error({qkv, qkv, qkv}, attention_attrs(true), "with packed_qkv takes 2 inputs (QKV, Mask), got 3");
  expect_error({qkv, cast_tensor(random_mask({5}), DType::kFloat16).value()}, attention_attrs(true), "Mask must have Q's dtype");
  expect_error({qkv, random_mask({2, 1, 6, 5})}, attention_attrs(true), "does not broadcast");
  expect_error({Value::none()}, attention_attrs(true), "input QKV is required");
  auto bad_flag = attention_attrs(true);
  bad_flag["packed_qkv"] = int_attr(2);
  expect_error({qkv}, bad_flag, "packed_qkv must be 0 or 1, got 2");
}

TEST(PackedQkvAttentionOp, ShapeInference) {
  GraphBuilder b;
  b.input("qkv", random_tensor({2, 5, 3, 4, 16}));
  b.node("FusedAttention", {"qkv"}, {"y"}, "attn", "kiln").attributes = attention_attrs(true);
  b.output("y");
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  ASSERT_NE(b.m.graph.type_of("y"), nullptr);
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,5,4,16]");
  // A symbolic batch stays symbolic.
  b.m.graph.inputs[0].type.dims[0] = ir::Dim::named("batch");
  b.m.graph.value_types.clear();
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  ASSERT_NE(b.m.graph.type_of("y"), nullptr);
  EXPECT_EQ(b.m.graph.type_of("y")->dims[0].symbol, "batch");
  EXPECT_EQ(b.m.graph.type_of("y")->dims[3].value, 16);
}

// ---------------------------------------------------------------------------------------------------------
// The pass

// A layer's attention as fuse_matmul_bias and fuse_attention leave it: h [2, 6, 16], three projections
// [16, 16] reshaped to [2, 6, H = 2, D = 8], kiln.FusedAttention BSHD with a [2, 1, 1, 6] mask.
struct Layer : GraphBuilder {
  std::vector<int64_t> heads = {2, 6, 2, 8};
  std::string layout = "BSHD";

  Layer() {
    input("h", random_tensor({2, 6, 16}));
    input("mask", random_mask({2, 1, 1, 6}));
  }
  void projection(const std::string& x, const std::string& a, const std::string& activation = "") {
    init("W" + x, random_tensor({16, 16}));
    init("b" + x, random_tensor({16}));
    node("FusedMatMul", {a, "W" + x, "b" + x}, {x}, x + "_proj", "kiln").attributes["activation"] = string_attr(activation);
  }
  void to_heads(const std::string& x) {
    init("heads", Tensor::from_vector<int64_t>(DType::kInt64, {4}, heads));
    node("Reshape", {x, "heads"}, {x + "4"}, x + "_heads");
  }
  void attention() {
    node("FusedAttention", {"q4", "k4", "v4", "mask"}, {"y"}, "attn", "kiln").attributes = attention_attrs(false, layout);
    output("y");
  }
  // The three projections of h, each followed by its Reshape, then the attention.
  void build() {
    for (const char* x : {"q", "k", "v"}) {
      projection(x, "h");
      to_heads(x);
    }
    attention();
  }
};

// Runs the pass (and the clean-up optimize_graph runs after it) comparing the outputs before and after within
// float32's 1e-5; returns how many attentions were packed.
int pack_and_compare(Layer& b) { return b.apply_counted_pass(passes::pack_qkv_projections, 1e-5, true); }

TEST(PackQkvProjections, ThreeProjectionsBecomeOneGemm) {
  Layer b;
  b.build();
  EXPECT_EQ(pack_and_compare(b), 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "Reshape", "kiln.FusedAttention"}));
  const ir::Node& mm = b.m.graph.nodes[0];
  const ir::Node& reshape = b.m.graph.nodes[1];
  const ir::Node& att = b.m.graph.nodes[2];
  EXPECT_EQ(mm.name, "q_proj + k_proj + v_proj");
  EXPECT_EQ(reshape.name, "q_heads + k_heads + v_heads");
  EXPECT_EQ(att.name, "attn");
  ASSERT_EQ(mm.inputs.size(), 3u);
  EXPECT_EQ(mm.inputs[0], "h");
  EXPECT_EQ(b.m.graph.initializers.at(mm.inputs[1]).shape(), (Shape{16, 48}));
  EXPECT_EQ(b.m.graph.initializers.at(mm.inputs[2]).shape(), (Shape{48}));
  EXPECT_EQ(b.m.graph.initializers.at(reshape.inputs[1]).to_int64_vector(), (std::vector<int64_t>{2, 6, 3, 2, 8}));
  EXPECT_EQ(att.inputs, (std::vector<std::string>{reshape.outputs[0], "mask"}));
  ASSERT_NE(att.attr("packed_qkv"), nullptr);
  EXPECT_EQ(att.attr("packed_qkv")->i, 1);
  EXPECT_EQ(att.attr("layout")->s, "BSHD");
  EXPECT_EQ(att.attr("nan_to_zero")->i, 1);
  EXPECT_FLOAT_EQ(att.attr("scale")->f, 0.4f);
  // The separate weights went with their nodes.
  for (const char* w : {"Wq", "Wk", "Wv", "bq", "bk", "bv"}) EXPECT_EQ(b.m.graph.initializers.count(w), 0u) << w;
  ASSERT_NE(b.m.graph.type_of(reshape.outputs[0]), nullptr);
  EXPECT_EQ(b.m.graph.type_of(reshape.outputs[0])->to_string(), "float32[2,6,3,2,8]");
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,6,2,8]");
}

TEST(PackQkvProjections, ProjectionsFirstNoMaskCopiedDims) {
  // All three GEMMs before the Reshapes, the shape [0, 0, H, D] (0 copies the product's dim), no mask.
  Layer b;
  b.heads = {0, 0, 2, 8};
  for (const char* x : {"q", "k", "v"}) b.projection(x, "h");
  for (const char* x : {"q", "k", "v"}) b.to_heads(x);
  b.node("FusedAttention", {"q4", "k4", "v4"}, {"y"}, "attn", "kiln").attributes = attention_attrs(false);
  b.output("y");
  EXPECT_EQ(pack_and_compare(b), 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "Reshape", "kiln.FusedAttention"}));
  EXPECT_EQ(b.m.graph.nodes[2].inputs.size(), 1u);
  EXPECT_EQ(b.m.graph.initializers.at(b.m.graph.nodes[1].inputs[1]).to_int64_vector(),
            (std::vector<int64_t>{0, 0, 3, 2, 8}));
}

// transformers' BERT reshapes with view(B, S, -1, D): H comes from the Reshape's inferred output type.
TEST(PackQkvProjections, HeadsInferredFromTheReshapesType) {
  Layer b;
  b.heads = {2, 6, -1, 8};
  b.build();
  EXPECT_EQ(pack_and_compare(b), 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "Reshape", "kiln.FusedAttention"}));
  EXPECT_EQ(b.m.graph.initializers.at(b.m.graph.nodes[1].inputs[1]).to_int64_vector(),
            (std::vector<int64_t>{2, 6, 3, 2, 8}));
}

TEST(PackQkvProjections, TwoLayersEachPacked) {
  Layer b;
  b.build();
  b.m.graph.outputs.clear();
  // A second layer reading the first's output (reshaped back to [2, 6, 16]).
  b.init("hidden", Tensor::from_vector<int64_t>(DType::kInt64, {3}, {2, 6, 16}));
  b.node("Reshape", {"y", "hidden"}, {"h2"}, "merge");
  for (const char* x : {"q2", "k2", "v2"}) {
    b.projection(x, "h2");
    b.to_heads(x);
  }
  b.node("FusedAttention", {"q24", "k24", "v24", "mask"}, {"y2"}, "attn2", "kiln").attributes = attention_attrs(false);
  b.output("y2");
  EXPECT_EQ(pack_and_compare(b), 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedMatMul", "Reshape", "kiln.FusedAttention", "Reshape",
                                                     "kiln.FusedMatMul", "Reshape", "kiln.FusedAttention"}));
  EXPECT_EQ(b.m.graph.nodes[1].inputs[1], b.m.graph.nodes[5].inputs[1]);  // one packed shape for both
}

// What the pass leaves alone: the graph comes back as it was.
void expect_untouched(Layer& b) {
  const std::vector<std::string> before = op_types(b.m);
  EXPECT_EQ(pack_and_compare(b), 0);
  EXPECT_EQ(op_types(b.m), before);
}

TEST(PackQkvProjections, LeavesAProjectionReadElsewhere) {
  {
    Layer b;
    b.build();
    b.output("k");  // the product is a graph output
    expect_untouched(b);
  }
  {
    Layer b;
    b.build();
    b.node("Relu", {"v4"}, {"r"}, "other_reader");  // the Reshape's output has another reader
    b.output("r");
    expect_untouched(b);
  }
}

TEST(PackQkvProjections, LeavesDifferentInputs) {
  Layer b;
  b.input("h_other", random_tensor({2, 6, 16}));
  for (const char* x : {"q", "k", "v"}) {
    b.projection(x, std::string(x) == "k" ? "h_other" : "h");
    b.to_heads(x);
  }
  b.attention();
  expect_untouched(b);
}

TEST(PackQkvProjections, LeavesAnActivationOrAResidual) {
  {
    Layer b;
    for (const char* x : {"q", "k", "v"}) {
      b.projection(x, "h", std::string(x) == "v" ? "Relu" : "");
      b.to_heads(x);
    }
    b.attention();
    expect_untouched(b);
  }
  {
    Layer b;
    b.build();
    b.m.graph.nodes[0].inputs.push_back("h");  // q = h Wq + bq + h
    expect_untouched(b);
  }
}

TEST(PackQkvProjections, LeavesBhsdAndWeightsThatAreNoInitializers) {
  {
    Layer b;
    b.layout = "BHSD";
    b.heads = {2, 2, 6, 8};
    b.build();
    expect_untouched(b);
  }
  {
    Layer b;
    b.build();
    b.input("Wk", b.m.graph.initializers.at("Wk"));  // fed at run time
    b.m.graph.initializers.erase("Wk");
    expect_untouched(b);
  }
}

}  // namespace
}  // namespace kiln::testing
