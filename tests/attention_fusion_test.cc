// kiln.FusedAttention (src/backends/cpu/ops/fused_attention.cc) against its decomposition Transpose ->
// MatMul -> Mul(scale) -> kiln.MaskedSoftmax -> MatMul in both layouts, causal against a hand-built mask,
// and its errors; and the pass that makes it (fuse_attention, after fuse_masked_softmax): the graph after
// it, its outputs before and after through the CPU executor on random inputs, and what it must not fuse.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
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
#include "runtime/executor.h"

namespace kiln::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::mt19937& rng() {
  static std::mt19937 gen(20261125);
  return gen;
}

// Uniform in [-2, 2], never zero.
Tensor random_tensor(const Shape& shape, DType dtype = DType::kFloat32) {
  return testing::random_tensor(rng(), dtype, shape, -2.0f, 2.0f);
}

// A torch-style additive mask, its first row fully masked (random_tensors.h).
Tensor random_mask(const Shape& shape) { return testing::random_mask(rng(), DType::kFloat32, shape); }

int64_t count_nans(const Tensor& t) {
  const Tensor f = cast_tensor(t, DType::kFloat64).value();
  int64_t n = 0;
  for (int64_t i = 0; i < f.numel(); ++i) n += std::isnan(f.data<double>()[i]) ? 1 : 0;
  return n;
}

Tensor run_ok(const std::string& domain, const std::string& op, std::vector<Value> inputs,
              std::map<std::string, ir::Attribute> attrs = {}, int opset = 17) {
  OpRun r = run_kernel(domain, op, std::move(inputs), std::move(attrs), 1, opset, "n_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

Tensor transpose(const Tensor& x, std::vector<int64_t> perm) {
  return run_ok("", "Transpose", {x}, {{"perm", ints_attr(std::move(perm))}});
}

struct Attention {
  std::string layout = "BHSD";
  float scale = 0.5f;
  int causal = 0, nan_to_zero = 0;
  std::map<std::string, ir::Attribute> attrs() const {
    return {{"layout", string_attr(layout)}, {"scale", float_attr(scale)}, {"causal", int_attr(causal)},
            {"nan_to_zero", int_attr(nan_to_zero)}};
  }
};

Tensor fused_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Value& mask, const Attention& a) {
  return run_ok("kiln", "FusedAttention", {q, k, v, mask}, a.attrs(), 1);
}

// The same op by op, in the inputs' dtype: BSHD operands are transposed to BHSD and the result back.
Tensor decomposed(Tensor q, Tensor k, Tensor v, const Value& mask, const Attention& a) {
  const std::vector<int64_t> heads_first{0, 2, 1, 3};
  if (a.layout == "BSHD") {
    q = transpose(q, heads_first);
    k = transpose(k, heads_first);
    v = transpose(v, heads_first);
  }
  const Tensor scale = cast_tensor(Tensor::from_vector<float>(DType::kFloat32, {}, {a.scale}), q.dtype()).value();
  const Tensor s = run_ok("", "Mul", {run_ok("", "MatMul", {q, transpose(k, {0, 1, 3, 2})}), scale});
  const Tensor p = run_ok("kiln", "MaskedSoftmax", {s, mask}, {{"nan_to_zero", int_attr(a.nan_to_zero)}}, 1);
  const Tensor y = run_ok("", "MatMul", {p, v});
  return a.layout == "BSHD" ? transpose(y, heads_first) : y;
}

// [B, H, S, D] in `layout`.
Shape heads(const std::string& layout, int64_t b, int64_t h, int64_t s, int64_t d) {
  return layout == "BSHD" ? Shape{b, s, h, d} : Shape{b, h, s, d};
}

// ---------------------------------------------------------------------------------------------------------
// The op

TEST(FusedAttentionOp, MatchesDecompositionInBothLayouts) {
  const int64_t B = 2, H = 3, Sq = 5, Sk = 7, D = 8, Dv = 4;
  const std::vector<Shape> masks{{B, 1, Sq, Sk}, {B, 1, 1, Sk}, {Sk}, {B, H, Sq, Sk}, {}};
  for (const std::string layout : {"BHSD", "BSHD"})
    for (const Shape& ms : masks)
      for (int nz : {0, 1}) {
        const bool no_mask = ms.empty();
        SCOPED_TRACE(layout + " mask " + (no_mask ? "none" : shape_to_string(ms)) + " nan_to_zero " + std::to_string(nz));
        Attention a;
        a.layout = layout;
        a.scale = 0.35f;
        a.nan_to_zero = nz;
        const Tensor q = random_tensor(heads(layout, B, H, Sq, D)), k = random_tensor(heads(layout, B, H, Sk, D)),
                     v = random_tensor(heads(layout, B, H, Sk, Dv));
        const Value mask = no_mask ? Value::none() : Value(random_mask(ms));
        const Tensor got = fused_attention(q, k, v, mask, a);
        EXPECT_EQ(got.shape(), heads(layout, B, H, Sq, Dv));
        expect_close(got, decomposed(q, k, v, mask, a), 1e-5, "float32");
        // The fully masked row gives NaN, or 0 with nan_to_zero; nothing else is NaN.
        if (!no_mask) {
          a.nan_to_zero = 0;
          EXPECT_GT(count_nans(decomposed(q, k, v, mask, a)), 0);
        }
        if (nz || no_mask) EXPECT_EQ(count_nans(got), 0);
      }
}

TEST(FusedAttentionOp, CausalMatchesAHandBuiltMask) {
  // Top-left aligned, as torch's is_causal: query i sees keys 0..i, also when Sq != Sk.
  for (const auto& [sq, sk] : std::vector<std::pair<int64_t, int64_t>>{{6, 6}, {4, 9}, {9, 4}})
    for (const std::string layout : {"BHSD", "BSHD"}) {
      SCOPED_TRACE(layout + " Sq " + std::to_string(sq) + " Sk " + std::to_string(sk));
      Tensor tri(DType::kFloat32, {sq, sk});
      for (int64_t i = 0; i < sq; ++i)
        for (int64_t j = 0; j < sk; ++j) tri.data<float>()[i * sk + j] = j > i ? -kInf : 0.0f;
      const Tensor q = random_tensor(heads(layout, 2, 2, sq, 16)), k = random_tensor(heads(layout, 2, 2, sk, 16)),
                   v = random_tensor(heads(layout, 2, 2, sk, 16));
      Attention causal;
      causal.layout = layout;
      causal.causal = 1;
      Attention plain = causal;
      plain.causal = 0;
      expect_close(fused_attention(q, k, v, Value::none(), causal), decomposed(q, k, v, tri, plain), 1e-5, "causal");
      // With a mask as well: both apply.
      const Tensor pad = random_mask({2, 1, 1, sk});
      const Tensor both = run_ok("", "Add", {pad, tri});
      expect_close(fused_attention(q, k, v, pad, causal), decomposed(q, k, v, both, plain), 1e-5, "causal + mask");
    }
}

TEST(FusedAttentionOp, HalfTypesComputeInFloat32AndRoundOnceFloat64InFloat64) {
  Attention a;
  a.layout = "BSHD";
  a.nan_to_zero = 1;
  const Shape qs = heads("BSHD", 2, 4, 6, 32);
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor q = random_tensor(qs, t), k = random_tensor(qs, t), v = random_tensor(qs, t);
    const Tensor mask = cast_tensor(random_mask({2, 1, 6, 6}), t).value();
    const Tensor got = fused_attention(q, k, v, mask, a);
    const Tensor exact =
        fused_attention(widen_to_float32(q), widen_to_float32(k), widen_to_float32(v), widen_to_float32(mask), a);
    expect_close(got, narrow_from_float32(exact, t), 0.0, "rounded once");
  }
  const Tensor q = random_tensor(qs, DType::kFloat64), k = random_tensor(qs, DType::kFloat64),
               v = random_tensor(qs, DType::kFloat64);
  const Tensor mask = cast_tensor(random_mask({6}), DType::kFloat64).value();
  expect_close(fused_attention(q, k, v, mask, a), decomposed(q, k, v, mask, a), 1e-12, "float64");
}

TEST(FusedAttentionOp, ClearErrorsNamingTheNode) {
  const Tensor q = random_tensor({2, 3, 5, 8}), k = random_tensor({2, 3, 7, 8}), v = random_tensor({2, 3, 7, 8});
  const std::map<std::string, ir::Attribute> ok_attrs = Attention().attrs();
  auto expect_error = [&](std::vector<Value> in, std::map<std::string, ir::Attribute> changed, const std::string& part) {
    std::map<std::string, ir::Attribute> attrs = ok_attrs;
    for (auto& [name, a] : changed) attrs[name] = a;
    OpRun r = run_kernel("kiln", "FusedAttention", std::move(in), std::move(attrs), 1, 1, "attn_7");
    ASSERT_FALSE(r.status.ok()) << part;
    EXPECT_NE(r.status.message().find("attn_7"), std::string::npos) << r.status.to_string();
    EXPECT_NE(r.status.message().find(part), std::string::npos) << r.status.to_string();
  };
  expect_error({random_tensor({2, 5, 8}), k, v}, {}, "Q must have rank 4 (BHSD), got [2,5,8]");
  expect_error({q, random_tensor({2, 3, 7, 8, 1}), v}, {}, "K must have rank 4");
  expect_error({q, k, random_tensor({3, 7, 8})}, {}, "V must have rank 4");
  expect_error({q, random_tensor({1, 3, 7, 8}), v}, {}, "batch or heads of Q [2,3,5,8] and K [1,3,7,8] differ");
  expect_error({q, k, random_tensor({2, 4, 7, 8})}, {}, "batch or heads of Q [2,3,5,8] and V [2,4,7,8] differ");
  expect_error({q, random_tensor({2, 3, 7, 6}), v}, {}, "head size D of Q");
  expect_error({q, k, random_tensor({2, 3, 6, 8})}, {}, "key length Sk of K [2,3,7,8] and V [2,3,6,8] differ");
  // In BSHD the heads are axis 2: the same tensors mismatch there.
  expect_error({q, k, v}, {{"layout", string_attr("BSHD")}}, "batch or heads of Q [2,3,5,8] and K [2,3,7,8] differ (layout BSHD)");
  expect_error({q, k, v, random_tensor({2, 1, 7, 7})}, {}, "Mask [2,1,7,7] does not broadcast to [B,H,Sq,Sk] [2,3,5,7]");
  expect_error({q, k, v, random_tensor({1, 2, 3, 5, 7})}, {}, "Mask [1,2,3,5,7] does not broadcast");
  expect_error({q, k, v}, {{"layout", string_attr("BHDS")}}, "layout must be \"BHSD\" or \"BSHD\", got \"BHDS\"");
  expect_error({q, k, v}, {{"causal", int_attr(2)}}, "causal must be 0 or 1, got 2");
  expect_error({q, k, v}, {{"nan_to_zero", int_attr(-1)}}, "nan_to_zero must be 0 or 1, got -1");
  expect_error({q, cast_tensor(k, DType::kFloat16).value(), v}, {}, "K must have Q's dtype float");
  expect_error({q, k, v, cast_tensor(random_tensor({7}), DType::kFloat64).value()}, {}, "Mask must have Q's dtype");
  expect_error({Tensor(DType::kInt32, {2, 3, 5, 8}), k, v}, {}, "Q must be float16, bfloat16, float32 or float64");
  expect_error({q, Value::none(), v}, {}, "input K is required");
  expect_error({q, k, v, Value::none(), q}, {}, "takes 4 inputs");
  OpRun r = run_kernel("kiln", "FusedAttention", {q, k, v}, {}, 1, 1, "attn_7");
  EXPECT_NE(r.status.message().find("attribute scale is required"), std::string::npos) << r.status.to_string();
}

// ---------------------------------------------------------------------------------------------------------
// The pass, on graphs built in code

struct Builder : GraphBuilder {
  using GraphBuilder::GraphBuilder;
  void transpose(const std::string& x, const std::string& y, std::vector<int64_t> perm, const std::string& name) {
    node("Transpose", {x}, {y}, name).attributes["perm"] = ints_attr(std::move(perm));
  }

  // BERT's attention as torch's SDPA export writes it: Q, K, V [B, S, H, D] to heads, each of Q and K^T
  // scaled by sqrt(1/sqrt(D)), the masked softmax with its NaN guard (or a plain Softmax without a mask),
  // the output back to [B, S, H, D].
  void sdpa(bool with_mask) {
    const float c = std::sqrt(1.0f / std::sqrt(8.0f));
    scalar("c1", c);
    scalar("c2", c);
    transpose("q", "qt", {0, 2, 1, 3}, "tq");
    transpose("k", "kt", {0, 2, 3, 1}, "tk");
    transpose("v", "vt", {0, 2, 1, 3}, "tv");
    node("Mul", {"qt", "c1"}, {"qs"}, "mq");
    node("Mul", {"kt", "c2"}, {"ks"}, "mk");
    node("MatMul", {"qs", "ks"}, {"s"}, "qk");
    if (with_mask) {
      scalar("zero", 0.0f);
      node("Add", {"s", "mask"}, {"a"}, "add");
      node("Softmax", {"a"}, {"p0"}, "softmax").attributes["axis"] = int_attr(-1);
      node("IsNaN", {"p0"}, {"nan"}, "isnan");
      node("Where", {"nan", "zero", "p0"}, {"p"}, "where");
    } else {
      node("Softmax", {"s"}, {"p"}, "softmax").attributes["axis"] = int_attr(-1);
    }
    node("MatMul", {"p", "vt"}, {"o"}, "pv");
    transpose("o", "y", {0, 2, 1, 3}, "to");
  }
};

// Q, K, V [B = 2, S = 6, H = 3, D] in BSHD; a [2,1,6,6] mask whose first row is fully masked.
Builder bert_like(bool with_mask, int64_t d = 8) {
  Builder b;
  b.input("q", random_tensor({2, 6, 3, d}));
  b.input("k", random_tensor({2, 6, 3, d}));
  b.input("v", random_tensor({2, 6, 3, d}));
  if (with_mask) b.input("mask", random_mask({2, 1, 6, 6}));
  b.sdpa(with_mask);
  b.output("y");
  return b;
}

// Runs fuse_masked_softmax (unless told not to) and fuse_attention after shape inference, comparing the
// graph's outputs before and after; returns how many attentions were fused.
int fuse_and_compare(Builder& b, bool masked_softmax_first = true) {
  EXPECT_TRUE(passes::infer_shapes(b.m).ok());
  int fused = -1;
  b.apply_and_compare(
      [&](ir::Model& m) -> Status {
        if (masked_softmax_first) KILN_RETURN_IF_ERROR(passes::fuse_masked_softmax(m));
        KILN_RETURN_IF_ERROR(passes::fuse_attention(m, &fused));
        KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m));
        return passes::infer_shapes(m);
      },
      1e-5);
  return fused;
}

const ir::Attribute& attr(const ir::Node& n, const std::string& name) {
  static const ir::Attribute none;
  const ir::Attribute* a = n.attr(name);
  EXPECT_NE(a, nullptr) << name;
  return a ? *a : none;
}

TEST(FuseAttention, BertPatternBecomesOneBshdNode) {
  for (bool with_mask : {true, false}) {
    SCOPED_TRACE(with_mask ? "masked softmax" : "plain softmax");
    Builder b = bert_like(with_mask);
    EXPECT_EQ(fuse_and_compare(b), 1);
    ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedAttention"}));
    const ir::Node& f = b.m.graph.nodes[0];
    EXPECT_EQ(f.name, with_mask ? "tq + tk + tv + mq + mk + qk + add + softmax + isnan + where + pv + to"
                                : "tq + tk + tv + mq + mk + qk + softmax + pv + to");
    EXPECT_EQ(f.inputs, with_mask ? (std::vector<std::string>{"q", "k", "v", "mask"})
                                  : (std::vector<std::string>{"q", "k", "v"}));
    EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
    EXPECT_EQ(attr(f, "layout").s, "BSHD");
    EXPECT_NEAR(attr(f, "scale").f, 1.0 / std::sqrt(8.0), 1e-6);
    EXPECT_EQ(attr(f, "nan_to_zero").i, with_mask ? 1 : 0);
    EXPECT_EQ(f.attr("causal"), nullptr);  // never made by the pass
    EXPECT_EQ(b.m.opsets["kiln"], 1);
    ASSERT_NE(b.m.graph.type_of("y"), nullptr);
    EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,6,3,8]");
  }
}

TEST(FuseAttention, SoftmaxOfAddWithoutTheMaskedSoftmaxPass) {
  Builder b = bert_like(true);
  // Drop the NaN guard: Add -> Softmax -> MatMul, the fully masked row NaN before and after.
  b.m.graph.nodes.erase(b.m.graph.nodes.begin() + 8, b.m.graph.nodes.begin() + 10);  // isnan, where
  b.m.graph.nodes[7].outputs[0] = "p";
  EXPECT_EQ(fuse_and_compare(b, /*masked_softmax_first=*/false), 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedAttention"}));
  EXPECT_EQ(b.m.graph.nodes[0].inputs, (std::vector<std::string>{"q", "k", "v", "mask"}));
  EXPECT_EQ(attr(b.m.graph.nodes[0], "nan_to_zero").i, 0);
  EXPECT_GT(count_nans(b.run()[0]), 0);
}

TEST(FuseAttention, BhsdPatternWithDivScaling) {
  // Q, K, V already [B, H, S, D]: K^T by Transpose [0,1,3,2], the scores divided by sqrt(D).
  Builder b;
  b.input("q", random_tensor({2, 3, 5, 16}));
  b.input("k", random_tensor({2, 3, 7, 16}));
  b.input("v", random_tensor({2, 3, 7, 16}));
  b.scalar("sqrt_d", 4.0f);
  b.transpose("k", "kt", {0, 1, 3, 2}, "tk");
  b.node("MatMul", {"q", "kt"}, {"s"}, "qk");
  b.node("Div", {"s", "sqrt_d"}, {"sd"}, "div");
  b.node("Softmax", {"sd"}, {"p"}, "softmax").attributes["axis"] = int_attr(3);
  b.node("MatMul", {"p", "v"}, {"y"}, "pv");
  b.output("y");
  EXPECT_EQ(fuse_and_compare(b), 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedAttention"}));
  const ir::Node& f = b.m.graph.nodes[0];
  EXPECT_EQ(f.name, "tk + qk + div + softmax + pv");
  EXPECT_EQ(f.inputs, (std::vector<std::string>{"q", "k", "v"}));
  EXPECT_EQ(attr(f, "layout").s, "BHSD");
  EXPECT_FLOAT_EQ(attr(f, "scale").f, 0.25f);
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,3,5,16]");
}

TEST(FuseAttention, WithoutScalingTheScaleIsOne) {
  Builder b = bert_like(false);
  b.m.graph.nodes.erase(b.m.graph.nodes.begin() + 3, b.m.graph.nodes.begin() + 5);  // mq, mk
  b.m.graph.nodes[3].inputs = {"qt", "kt"};
  EXPECT_EQ(fuse_and_compare(b), 1);
  ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedAttention"}));
  EXPECT_EQ(attr(b.m.graph.nodes[0], "scale").f, 1.0f);
  EXPECT_EQ(attr(b.m.graph.nodes[0], "layout").s, "BSHD");
}

TEST(FuseAttention, MixedLayoutsFuseInBhsdKeepingTheTransposesNeeded) {
  {
    // Q transposed from BSHD, K^T of a BHSD K, V BHSD, the output left in BHSD: Q's Transpose stays.
    Builder b;
    b.input("q", random_tensor({2, 5, 3, 8}));
    b.input("k", random_tensor({2, 3, 5, 8}));
    b.input("v", random_tensor({2, 3, 5, 8}));
    b.scalar("c", 0.3f);
    b.transpose("q", "qt", {0, 2, 1, 3}, "tq");
    b.transpose("k", "kt", {0, 1, 3, 2}, "tk");
    b.node("MatMul", {"qt", "kt"}, {"s"}, "qk");
    b.node("Mul", {"c", "s"}, {"ss"}, "scale");
    b.node("Softmax", {"ss"}, {"p"}, "softmax");
    b.node("MatMul", {"p", "v"}, {"y"}, "pv");
    b.output("y");
    EXPECT_EQ(fuse_and_compare(b), 1);
    ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"Transpose", "kiln.FusedAttention"}));
    const ir::Node& f = b.m.graph.nodes[1];
    EXPECT_EQ(f.inputs, (std::vector<std::string>{"qt", "k", "v"}));
    EXPECT_EQ(attr(f, "layout").s, "BHSD");
    EXPECT_FLOAT_EQ(attr(f, "scale").f, 0.3f);
  }
  {
    // The BERT pattern whose output Transpose has gone: K^T came from a BSHD K, which no BHSD node can read.
    Builder b = bert_like(true);
    b.m.graph.nodes.pop_back();
    b.m.graph.outputs[0].name = "o";
    fuse_and_compare(b);
    EXPECT_EQ(find_op(b.m, "FusedAttention"), nullptr);
  }
  {
    // K's Transpose read elsewhere as well: fused, reading K before it, the Transpose kept for its reader.
    Builder b = bert_like(true);
    b.output("kt");
    EXPECT_EQ(fuse_and_compare(b), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Transpose", "kiln.FusedAttention"}));
    EXPECT_EQ(b.m.graph.nodes[1].inputs[1], "k");
    EXPECT_EQ(b.m.graph.nodes[1].name, "tq + tv + mq + mk + qk + add + softmax + isnan + where + pv + to");
  }
}

TEST(FuseAttention, LeavesWhatItMustNotFuse) {
  struct Case {
    const char* why;
    std::function<void(Builder&)> change;
  };
  const std::vector<Case> cases{
      {"the scores read by two nodes",
       [](Builder& b) {
         b.node("Neg", {"s"}, {"ns"}, "neg");
         b.output("ns");
       }},
      {"the scores a graph output", [](Builder& b) { b.output("s"); }},
      {"the probabilities read elsewhere", [](Builder& b) { b.output("p"); }},
      {"softmax along another axis", [](Builder& b) { b.m.graph.nodes[6].attributes["axis"] = int_attr(2); }},
      {"a scale that is no constant",
       [](Builder& b) {
         b.m.graph.initializers.erase("c1");
         b.input("c1", Tensor::from_vector<float>(DType::kFloat32, {}, {0.5f}));
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b = bert_like(false);
    c.change(b);
    EXPECT_EQ(fuse_and_compare(b), 0);
    EXPECT_EQ(find_op(b.m, "FusedAttention"), nullptr);
  }
  {
    SCOPED_TRACE("D = 300: past the fused kernel's head size");
    Builder b = bert_like(true, 300);
    EXPECT_EQ(fuse_and_compare(b), 0);
    EXPECT_EQ(find_op(b.m, "FusedAttention"), nullptr);
    EXPECT_NE(find_op(b.m, "MaskedSoftmax"), nullptr);  // the softmax fusion still happened
  }
  {
    SCOPED_TRACE("K^T without a Transpose producing it");
    Builder b;
    b.input("q", random_tensor({2, 3, 5, 8}));
    b.input("kt", random_tensor({2, 3, 8, 5}));
    b.input("v", random_tensor({2, 3, 5, 8}));
    b.node("MatMul", {"q", "kt"}, {"s"}, "qk");
    b.node("Softmax", {"s"}, {"p"}, "softmax");
    b.node("MatMul", {"p", "v"}, {"y"}, "pv");
    b.output("y");
    EXPECT_EQ(fuse_and_compare(b), 0);
  }
  {
    SCOPED_TRACE("K broadcast over the batch by the MatMul");
    Builder b;
    b.input("q", random_tensor({2, 3, 5, 8}));
    b.input("k", random_tensor({1, 3, 5, 8}));
    b.input("v", random_tensor({2, 3, 5, 8}));
    b.transpose("k", "kt", {0, 1, 3, 2}, "tk");
    b.node("MatMul", {"q", "kt"}, {"s"}, "qk");
    b.node("Softmax", {"s"}, {"p"}, "softmax");
    b.node("MatMul", {"p", "v"}, {"y"}, "pv");
    b.output("y");
    EXPECT_EQ(fuse_and_compare(b), 0);
  }
}

}  // namespace
}  // namespace kiln::testing
