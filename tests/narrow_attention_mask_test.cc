// narrow_attention_mask: the padding mask of transformers' BERT export, And(all-true [1,1,S,1], pad
// [B,1,1,S]) -> Expand [B,1,S,S] -> Where(., 0, lowest), read by kiln.FusedAttention, loses its And and
// Expand and reaches the attention as [B,1,1,S]; the graph after the pass, its outputs before and after
// through the CPU executor on random inputs (a random 0/1 padding mask), and what the pass must leave alone.
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261125);
  return gen;
}

// Uniform in [-2, 2], never zero.
Tensor random_tensor(const Shape& shape) {
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = dist(rng());
    t.data<float>()[i] = v == 0.0f ? 0.375f : v;
  }
  return t;
}

// A random 0/1 int64 padding mask [B, S]: each row attends its first key and pads at least one other.
Tensor random_padding(int64_t B, int64_t S) {
  std::bernoulli_distribution keep(0.6);
  std::uniform_int_distribution<int64_t> pick(1, S - 1);
  std::vector<int64_t> v(B * S);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < S; ++j) v[b * S + j] = j == 0 || keep(rng()) ? 1 : 0;
    v[b * S + pick(rng())] = 0;
  }
  return Tensor::from_vector<int64_t>(DType::kInt64, {B, S}, v);
}

Tensor bools(const Shape& shape, const std::vector<int64_t>& v) {
  Tensor t(DType::kBool, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<bool>()[i] = v[i] != 0;
  return t;
}

// An attention of q, k, v [B = 2, S = 6, H = 2, D = 8] (BSHD; packed: one qkv [2, 6, 3, 2, 8]) behind the
// mask BERT builds from a padding mask [2, 6].
struct Bert : GraphBuilder {
  static constexpr int64_t B = 2, S = 6;
  bool packed = false;

  Bert() { input("attention_mask", random_padding(B, S)); }
  // pad = Reshape(Cast(attention_mask, bool), [B, 1, 1, S]).
  void padding() {
    node("Cast", {"attention_mask"}, {"pad_bool"}, "cast").attributes["to"] = int_attr(9);
    init("pad_shape", Tensor::from_vector<int64_t>(DType::kInt64, {4}, {B, 1, 1, S}));
    node("Reshape", {"pad_bool", "pad_shape"}, {"pad"}, "reshape");
  }
  // And(c, pad) with c [1, 1, S, 1] true but where `falses` says.
  void and_constant(const std::vector<int64_t>& falses = {}) {
    std::vector<int64_t> v(S, 1);
    for (int64_t i : falses) v[i] = 0;
    init("c", bools({1, 1, S, 1}, v));
    node("And", {"c", "pad"}, {"anded"}, "and");
  }
  void expand(const std::string& x) {
    init("full", Tensor::from_vector<int64_t>(DType::kInt64, {4}, {B, 1, S, S}));
    node("Expand", {x, "full"}, {"expanded"}, "expand");
  }
  // mask = Where(cond, 0, lowest float).
  void where(const std::string& cond) {
    scalar("zero", 0.0f);
    scalar("lowest", std::numeric_limits<float>::lowest());
    node("Where", {cond, "zero", "lowest"}, {"mask"}, "where");
  }
  void attention(const std::string& mask = "mask", const std::string& y = "y") {
    if (!feeds.count(packed ? "qkv" : "q")) {
      if (packed) input("qkv", random_tensor({B, S, 3, 2, 8}));
      else
        for (const char* x : {"q", "k", "v"}) input(x, random_tensor({B, S, 2, 8}));
    }
    std::vector<std::string> ins = packed ? std::vector<std::string>{"qkv", mask} : std::vector<std::string>{"q", "k", "v", mask};
    ir::Node& n = node("FusedAttention", ins, {y}, "attn_" + y, "kiln");
    n.attributes = {{"layout", string_attr("BSHD")}, {"scale", passes::float_attribute(0.35f)}, {"nan_to_zero", int_attr(1)}};
    if (packed) n.attributes["packed_qkv"] = int_attr(1);
    output(y);
  }
  // The whole chain of the export.
  void build() {
    padding();
    and_constant();
    expand("anded");
    where("expanded");
    attention();
  }
};

// Runs the pass (and the clean-up optimize_graph runs after it) comparing the outputs before and after: the
// same arithmetic on the same mask values, so within float32 rounding. Returns the number bypassed.
int narrow_and_compare(Bert& b) { return b.apply_counted_pass(passes::narrow_attention_mask, 1e-6, true); }

std::string type_string(const ir::Model& m, const std::string& value) {
  const ir::TypeInfo* t = m.graph.type_of(value);
  return t == nullptr ? "(none)" : t->to_string();
}

TEST(NarrowAttentionMask, BertPaddingMaskBecomesKeyOnly) {
  Bert b;
  b.build();
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,6,6]");
  EXPECT_EQ(narrow_and_compare(b), 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Cast", "Reshape", "Where", "kiln.FusedAttention"}));
  const ir::Node& where = b.m.graph.nodes[2];
  EXPECT_EQ(where.name, "where");  // survivors keep their names and outputs
  EXPECT_EQ(where.inputs[0], "pad");
  EXPECT_EQ(b.m.graph.nodes[3].inputs[3], "mask");
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,1,6]");
  EXPECT_EQ(type_string(b.m, "y"), "float32[2,6,2,8]");
  for (const char* gone : {"c", "full"}) EXPECT_EQ(b.m.graph.initializers.count(gone), 0u) << gone;
  EXPECT_EQ(b.m.graph.value_types.count("expanded"), 0u);
  EXPECT_EQ(b.m.graph.value_types.count("anded"), 0u);
}

TEST(NarrowAttentionMask, PackedAttentionReadsTheMaskSecond) {
  Bert b;
  b.packed = true;
  b.build();
  EXPECT_EQ(narrow_and_compare(b), 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Cast", "Reshape", "Where", "kiln.FusedAttention"}));
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,1,6]");
}

// Two layers read one mask (eliminate_common_subexpressions merges their Wheres): narrowed for both.
TEST(NarrowAttentionMask, MaskSharedByTwoLayers) {
  Bert b;
  b.build();
  b.attention("mask", "y2");
  EXPECT_EQ(narrow_and_compare(b), 2);
  EXPECT_EQ(op_types(b.m),
            (std::vector<std::string>{"Cast", "Reshape", "Where", "kiln.FusedAttention", "kiln.FusedAttention"}));
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,1,6]");
}

// A longer broadcasting chain: Not, Or with an all-false constant, Cast to float and Mul by a big negative
// number, as other exporters write the additive mask, from a key mask [1, S] that all batch rows share. The
// Or and the Expand go, and the mask's rank drops to 2 (aligned to the right of [B, H, Sq, Sk]).
TEST(NarrowAttentionMask, ThroughABroadcastingChainAndAnAllFalseOr) {
  Bert b;
  b.input("keys", bools({1, Bert::S}, random_padding(1, Bert::S).to_int64_vector()));
  b.node("Not", {"keys"}, {"padded"}, "not");
  b.init("none", bools({1, 1, Bert::S, 1}, std::vector<int64_t>(Bert::S, 0)));
  b.node("Or", {"padded", "none"}, {"ored"}, "or");
  b.expand("ored");
  b.node("Cast", {"expanded"}, {"padded_f"}, "cast_f").attributes["to"] = int_attr(1);
  b.scalar("big", -1e4f);
  b.node("Mul", {"padded_f", "big"}, {"mask"}, "mul");
  b.attention();
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,6,6]");
  EXPECT_EQ(narrow_and_compare(b), 2);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Not", "Cast", "Mul", "kiln.FusedAttention"}));
  EXPECT_EQ(type_string(b.m, "mask"), "float32[1,6]");
}

// GPT-2's causal mask: the And's constant is lower-triangular, not all true; it stays, the Expand goes.
TEST(NarrowAttentionMask, CausalAndIsKept) {
  Bert b;
  b.padding();
  std::vector<int64_t> causal(Bert::S * Bert::S);
  for (int64_t i = 0; i < Bert::S; ++i)
    for (int64_t j = 0; j < Bert::S; ++j) causal[i * Bert::S + j] = j <= i;
  b.init("c", bools({1, 1, Bert::S, Bert::S}, causal));
  b.node("And", {"c", "pad"}, {"anded"}, "and");
  b.expand("anded");
  b.where("expanded");
  b.attention();
  EXPECT_EQ(narrow_and_compare(b), 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Cast", "Reshape", "And", "Where", "kiln.FusedAttention"}));
  EXPECT_EQ(b.m.graph.nodes[3].inputs[0], "anded");
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,6,6]");
}

// What the pass leaves alone: the graph comes back as it was, types included.
void expect_untouched(Bert& b) {
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  const std::vector<std::string> before = op_types(b.m);
  const std::string mask_type = type_string(b.m, "mask");
  EXPECT_EQ(narrow_and_compare(b), 0);
  EXPECT_EQ(op_types(b.m), before);
  EXPECT_EQ(type_string(b.m, "mask"), mask_type);
}

TEST(NarrowAttentionMask, LeavesAValueReadByAnOpThatDoesNotBroadcast) {
  {
    Bert b;
    b.build();
    // Counts S times more elements than the narrow one would have (a Cast between: it broadcasts, its reader
    // does not).
    b.node("Cast", {"expanded"}, {"expanded_i"}, "to_int").attributes["to"] = int_attr(7);
    b.node("ReduceSum", {"expanded_i"}, {"count"}, "count");
    b.output("count");
    expect_untouched(b);
  }
  {
    Bert b;
    b.build();
    b.node("ReduceSum", {"mask"}, {"mask_sum"}, "mask_sum");  // further down: the chain stays whole
    b.output("mask_sum");
    expect_untouched(b);
  }
}

TEST(NarrowAttentionMask, LeavesAGraphOutput) {
  {
    Bert b;
    b.build();
    b.output("expanded");
    expect_untouched(b);
  }
  {
    Bert b;
    b.build();
    b.output("mask");
    expect_untouched(b);
  }
}

TEST(NarrowAttentionMask, KeepsAnAndWhoseConstantIsNotAllTrue) {
  Bert b;
  b.padding();
  b.and_constant({2});
  b.where("anded");
  b.attention();
  expect_untouched(b);
  EXPECT_EQ(type_string(b.m, "mask"), "float32[2,1,6,6]");
}

// A mask read by an attention as K as well as its mask is not only a mask.
TEST(NarrowAttentionMask, LeavesAValueTheAttentionReadsAsAnOperand) {
  Bert b;
  b.input("q", random_tensor({Bert::B, 4, Bert::S, Bert::S}));
  b.input("x", random_tensor({Bert::B, 1, 1, Bert::S}));
  b.init("full", Tensor::from_vector<int64_t>(DType::kInt64, {4}, {Bert::B, 4, Bert::S, Bert::S}));
  b.node("Expand", {"x", "full"}, {"mask"}, "expand");
  ir::Node& n = b.node("FusedAttention", {"q", "mask", "q", "mask"}, {"y"}, "attn", "kiln");
  n.attributes = {{"layout", string_attr("BHSD")}, {"scale", passes::float_attribute(0.5f)}};
  b.output("y");
  expect_untouched(b);
}

}  // namespace
}  // namespace kiln::testing
