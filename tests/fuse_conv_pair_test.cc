// kiln.FusedConvPair: its CPU reference (src/backends/cpu/ops/fused_conv.cc) against the two channels-last
// kiln.FusedConv nodes it replaces, to the bit, on fresh random inputs, and every bad input an error naming
// the node; its shape inference; and the pass fuse_conv_pair on graphs of channels-last kiln.FusedConv built
// by hand (as convert_conv_layout leaves them): the ResNet junction it fuses, computing exactly what the
// graph did, the pairs it must leave, and two bottleneck blocks through the whole optimizer for a GPU engine.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "builder/optimize_graph.h"
#include "fused_conv_graph_builder.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "gpu_optimize_options.h"
#endif

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("fused conv pair tests"));
  return gen;
}

Tensor random(DType dt, const Shape& s, float lo = -1.0f, float hi = 1.0f) { return random_tensor(rng(), dt, s, lo, hi); }

// Same dtype, shape and bytes; reports the first element that differs.
void expect_same_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const size_t es = dtype_size(want.dtype());
  const auto* g = static_cast<const unsigned char*>(got.raw_data());
  const auto* w = static_cast<const unsigned char*>(want.raw_data());
  for (int64_t i = 0; i < want.numel(); ++i)
    if (std::memcmp(g + i * es, w + i * es, es) != 0) {
      ADD_FAILURE() << what << ": element " << i << " differs: got " << got.scalar_as_double(i) << ", want "
                    << want.scalar_as_double(i);
      return;
    }
}

// ---------------------------------------------------------------------------------------------------------
// The CPU reference.

Value maybe(const Tensor& t) { return t.defined() ? Value(t) : Value(); }

// One channels-last kiln.FusedConv, as the pass's input graph runs it.
Tensor fused_conv(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& z, const std::string& act) {
  Attrs attrs = {{"channels_last", int_attr(1)}, {"activation", string_attr(act)}};
  OpRun r = run_kernel("kiln", "FusedConv", {Value(x), Value(w), maybe(b), maybe(z)}, attrs, 1, 1, "conv");
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

struct PairCase {
  DType dt;
  int64_t c0, c1, c2;
  bool b, z, b2;
  std::string act, act2;
};

void expect_pair_matches_two_convs(const PairCase& c) {
  SCOPED_TRACE(dtype_name(c.dt) + " C " + std::to_string(c.c0) + "/" + std::to_string(c.c1) + "/" + std::to_string(c.c2) +
               (c.b ? " +B" : "") + (c.z ? " +Z" : "") + (c.b2 ? " +B2" : "") + " '" + c.act + "' '" + c.act2 + "'");
  const Shape xs = {2, 3, 5, c.c0}, ys = {2, 3, 5, c.c1};
  const Tensor x = random(c.dt, xs), w = random(c.dt, {c.c1, 1, 1, c.c0}, -0.5f, 0.5f);
  const Tensor w2 = random(c.dt, {c.c2, 1, 1, c.c1}, -0.5f, 0.5f);
  const Tensor b = c.b ? random(c.dt, {c.c1}, -0.2f, 0.2f) : Tensor();
  const Tensor z = c.z ? random(c.dt, ys) : Tensor();
  const Tensor b2 = c.b2 ? random(c.dt, {c.c2}, -0.2f, 0.2f) : Tensor();
  const Tensor y = fused_conv(x, w, b, z, c.act);
  ASSERT_TRUE(y.defined());
  const Tensor y2 = fused_conv(y, w2, b2, Tensor(), c.act2);
  ASSERT_TRUE(y2.defined());

  Attrs attrs = {{"activation", string_attr(c.act)}, {"second_activation", string_attr(c.act2)}};
  OpRun r = run_kernel("kiln", "FusedConvPair", {Value(x), Value(w), maybe(b), maybe(z), Value(w2), maybe(b2)}, attrs,
                       2, 1, "pair");
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  expect_same_bits(r.outputs[0].tensor(), y, "Y");
  expect_same_bits(r.outputs[1].tensor(), y2, "Y2");
}

TEST(FusedConvPairOps, EqualsTwoFusedConvsToTheBit) {
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64})
    for (int mask = 0; mask < 8; ++mask) {
      const bool relu = mask & 1, relu2 = (mask >> 1) & 1;
      expect_pair_matches_two_convs({dt, 16, 24, 8, bool(mask & 1), bool(mask & 2), bool(mask & 4),
                                     relu ? "Relu" : "", relu2 ? "" : "Relu"});
    }
}

TEST(FusedConvPairOps, ResNetJunctionSizes) {
  for (DType dt : {DType::kFloat16, DType::kFloat32})
    for (bool z : {false, true}) expect_pair_matches_two_convs({dt, 64, 256, 64, true, z, true, "Relu", "Relu"});
}

TEST(FusedConvPairOps, WithoutAttributesNoActivations) {
  const Tensor x = random(DType::kFloat32, {1, 2, 2, 4}), w = random(DType::kFloat32, {3, 1, 1, 4});
  const Tensor w2 = random(DType::kFloat32, {5, 1, 1, 3});
  OpRun r = run_kernel("kiln", "FusedConvPair", {Value(x), Value(w), Value(), Value(), Value(w2)}, {}, 2, 1, "pair");
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  const Tensor y = fused_conv(x, w, Tensor(), Tensor(), "");
  expect_same_bits(r.outputs[0].tensor(), y, "Y");
  expect_same_bits(r.outputs[1].tensor(), fused_conv(y, w2, Tensor(), Tensor(), ""), "Y2");
}

// The error cases' base: X [1, 2, 3, 4], W [6, 1, 1, 4], B [6], Z [1, 2, 3, 6], W2 [5, 1, 1, 6], B2 [5],
// float32, activation Relu: valid (ValidBaseCaseRuns), so that each error below comes from its one edit.
std::vector<Value> base_inputs() {
  const DType f = DType::kFloat32;
  return {Value(random(f, {1, 2, 3, 4})), Value(random(f, {6, 1, 1, 4})), Value(random(f, {6})),
          Value(random(f, {1, 2, 3, 6})), Value(random(f, {5, 1, 1, 6})), Value(random(f, {5}))};
}

TEST(FusedConvPairOps, ValidBaseCaseRuns) {
  OpRun r = run_kernel("kiln", "FusedConvPair", base_inputs(), {{"activation", string_attr("Relu")}}, 2, 1, "pair");
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  EXPECT_EQ(r.outputs[0].tensor().shape(), (Shape{1, 2, 3, 6}));
  EXPECT_EQ(r.outputs[1].tensor().shape(), (Shape{1, 2, 3, 5}));
}

TEST(FusedConvPairOps, BadInputsAreErrorsNamingTheNode) {
  const DType f = DType::kFloat32, h = DType::kFloat16;
  struct Case {
    size_t input;             // the input replaced (6: none; 7: an eighth added)
    Value value;              // its replacement (none: omitted)
    Attrs attrs;              // added to or replacing the base's
    std::string words;        // in the error
  };
  const std::vector<Case> cases = {
      {0, Value(), {}, "inputs X, W and W2 are required"},
      {7, Value(), {}, "has 7 inputs (X, W, B, Z, W2, B2, X2), got input 7"},
      {1, Value(), {}, "inputs X, W and W2 are required"},
      {4, Value(), {}, "inputs X, W and W2 are required"},
      {0, Value(random(f, {2, 3, 4})), {}, "X must be [N, H, W, C0], got float32[2,3,4]"},
      {0, Value(random(f, {1, 1, 2, 3, 4})), {}, "X must be [N, H, W, C0]"},
      {1, Value(random(f, {6, 3, 3, 4})), {}, "W float32[6,3,3,4] must be [C1, 1, 1, 4]"},
      {1, Value(random(f, {6, 1, 1, 5})), {}, "W float32[6,1,1,5] must be [C1, 1, 1, 4]"},
      {1, Value(random(f, {6, 4})), {}, "W float32[6,4] must be [C1, 1, 1, 4]"},
      {4, Value(random(f, {5, 1, 1, 4})), {}, "W2 float32[5,1,1,4] must be [C2, 1, 1, 6]"},
      {4, Value(random(f, {5, 1, 3, 6})), {}, "W2 float32[5,1,3,6] must be [C2, 1, 1, 6]"},
      {2, Value(random(f, {5})), {}, "B float32[5] must be [6]"},
      {2, Value(random(f, {1, 6})), {}, "B float32[1,6] must be [6]"},
      {3, Value(random(f, {1, 2, 3, 5})), {}, "Z float32[1,2,3,5] must be [1,2,3,6]"},
      {3, Value(random(f, {1, 3, 2, 6})), {}, "Z float32[1,3,2,6] must be [1,2,3,6]"},
      {5, Value(random(f, {6})), {}, "B2 float32[6] must be [5]"},
      {1, Value(random(h, {6, 1, 1, 4})), {}, "W float16[6,1,1,4] must have X's dtype float32"},
      {2, Value(random(h, {6})), {}, "B float16[6] must have X's dtype float32"},
      {3, Value(random(h, {1, 2, 3, 6})), {}, "Z float16[1,2,3,6] must have X's dtype float32"},
      {4, Value(random(h, {5, 1, 1, 6})), {}, "W2 float16[5,1,1,6] must have X's dtype float32"},
      {5, Value(random(h, {5})), {}, "B2 float16[5] must have X's dtype float32"},
      {0, Value(Tensor::from_vector<int32_t>(DType::kInt32, {1, 1, 1, 4}, {1, 2, 3, 4})), {}, "dtype int32 is not supported"},
      {6, Value(), {{"activation", string_attr("Sigmoid")}}, "activation 'Sigmoid' is not \"\" (none) or Relu"},
      {6, Value(), {{"second_activation", string_attr("Clip")}}, "second_activation 'Clip' is not"},
      {6, Value(), {{"strides", ints_attr({2, 2})}}, "attribute 'strides' is not accepted"},
      {6, Value(), {{"pads", ints_attr({1, 1, 1, 1})}}, "attribute 'pads' is not accepted"},
      {6, Value(), {{"group", int_attr(1)}}, "attribute 'group' is not accepted"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.words);
    std::vector<Value> in = base_inputs();
    if (c.input < in.size()) in[c.input] = c.value;
    if (c.input == 7) in.insert(in.end(), {Value(), in[0]});  // an eighth input
    Attrs attrs = {{"activation", string_attr("Relu")}};
    for (const auto& [k, v] : c.attrs) attrs[k] = v;
    OpRun r = run_kernel("kiln", "FusedConvPair", in, attrs, 2, 1, "bad_pair");
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("bad_pair"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find(c.words), std::string::npos) << r.status.message();
  }
}

// ---- input 6, X2: the first conv reads Concat(X, X2) along the channels.

// Concat(x, x2, axis = -1) by the ONNX reference.
Tensor concat_channels(const Tensor& x, const Tensor& x2) {
  OpRun r = run_kernel("", "Concat", {Value(x), Value(x2)}, {{"axis", int_attr(-1)}}, 1, 17, "concat");
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

TEST(FusedConvPairOps, X2EqualsThePairOnTheConcatenationToTheBit) {
  struct Split {
    int64_t a, b;
  };
  for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64})
    for (Split c : {Split{64, 64}, Split{8, 24}, Split{5, 3}})
      for (bool z : {false, true}) {
        SCOPED_TRACE(dtype_name(dt) + " X " + std::to_string(c.a) + " + X2 " + std::to_string(c.b) + (z ? " +Z" : ""));
        const int64_t c1 = 32, c2 = 16;
        const Tensor x = random(dt, {2, 3, 5, c.a}), x2 = random(dt, {2, 3, 5, c.b});
        const Tensor w = random(dt, {c1, 1, 1, c.a + c.b}, -0.5f, 0.5f), w2 = random(dt, {c2, 1, 1, c1}, -0.5f, 0.5f);
        const Tensor b = random(dt, {c1}, -0.2f, 0.2f), b2 = random(dt, {c2}, -0.2f, 0.2f);
        const Tensor zt = z ? random(dt, {2, 3, 5, c1}) : Tensor();
        const Tensor joined = concat_channels(x, x2);
        ASSERT_TRUE(joined.defined());
        const Attrs attrs = {{"activation", string_attr("Relu")}, {"second_activation", string_attr("Relu")}};
        OpRun want = run_kernel("kiln", "FusedConvPair", {Value(joined), Value(w), Value(b), maybe(zt), Value(w2), Value(b2)},
                                attrs, 2, 1, "pair");
        OpRun got = run_kernel("kiln", "FusedConvPair",
                               {Value(x), Value(w), Value(b), maybe(zt), Value(w2), Value(b2), Value(x2)}, attrs, 2, 1, "pair");
        ASSERT_TRUE(want.status.ok()) << want.status.to_string();
        ASSERT_TRUE(got.status.ok()) << got.status.to_string();
        expect_same_bits(got.outputs[0].tensor(), want.outputs[0].tensor(), "Y");
        expect_same_bits(got.outputs[1].tensor(), want.outputs[1].tensor(), "Y2");
        // And so the two FusedConv nodes on the concatenation.
        const Tensor y = fused_conv(joined, w, b, zt, "Relu");
        expect_same_bits(got.outputs[0].tensor(), y, "Y against FusedConv");
        expect_same_bits(got.outputs[1].tensor(), fused_conv(y, w2, b2, Tensor(), "Relu"), "Y2 against FusedConv");
      }
  // An absent X2 (an empty seventh input) is the pair without one.
  std::vector<Value> in = base_inputs();
  OpRun plain = run_kernel("kiln", "FusedConvPair", in, {}, 2, 1, "pair");
  in.push_back(Value());
  OpRun empty = run_kernel("kiln", "FusedConvPair", in, {}, 2, 1, "pair");
  ASSERT_TRUE(plain.status.ok() && empty.status.ok()) << empty.status.to_string();
  expect_same_bits(empty.outputs[1].tensor(), plain.outputs[1].tensor(), "Y2");
}

TEST(FusedConvPairOps, BadX2IsAnErrorNamingTheNode) {
  // The base: base_inputs() with W [6, 1, 1, 6] and X2 [1, 2, 3, 2] (X has 4 channels): valid.
  const DType f = DType::kFloat32;
  auto inputs = [&](const Value& x2) {
    std::vector<Value> in = base_inputs();
    in[1] = Value(random(f, {6, 1, 1, 6}));
    in.push_back(x2);
    return in;
  };
  OpRun ok = run_kernel("kiln", "FusedConvPair", inputs(Value(random(f, {1, 2, 3, 2}))), {}, 2, 1, "bad_pair");
  ASSERT_TRUE(ok.status.ok()) << ok.status.to_string();
  const std::vector<std::pair<Value, std::string>> cases = {
      {Value(random(DType::kFloat16, {1, 2, 3, 2})), "X2 float16[1,2,3,2] must have X's dtype float32"},
      {Value(random(f, {2, 3, 2})), "X2 float32[2,3,2] must be [1, 2, 3, C] (X's N, H and W)"},
      {Value(random(f, {1, 1, 2, 3, 2})), "X2 float32[1,1,2,3,2] must be [1, 2, 3, C]"},
      {Value(random(f, {2, 2, 3, 2})), "X2 float32[2,2,3,2] must be [1, 2, 3, C]"},
      {Value(random(f, {1, 3, 2, 2})), "X2 float32[1,3,2,2] must be [1, 2, 3, C]"},
      {Value(random(f, {1, 2, 3, 3})), "W float32[6,1,1,6] must be [C1, 1, 1, 7] (1x1, X's and X2's channels together)"},
  };
  for (const auto& [x2, words] : cases) {
    SCOPED_TRACE(words);
    OpRun r = run_kernel("kiln", "FusedConvPair", inputs(x2), {}, 2, 1, "bad_pair");
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("bad_pair"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find(words), std::string::npos) << r.status.message();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Shape inference (src/passes/infer_shapes.cc): both outputs in X's dtype, a symbolic batch kept, a channel
// count unknown where its weights' shape is.

struct InferCase {
  ir::Model m;
  InferCase(bool x_shaped, bool w2_known) {
    m.opsets = {{"", 17}, {"kiln", 1}};
    auto tensor_input = [&](const std::string& name, std::vector<ir::Dim> dims, bool shaped) {
      ir::ValueInfo v;
      v.name = name;
      v.type.kind = ir::TypeInfo::Kind::kTensor;
      v.type.dtype = DType::kFloat16;
      v.type.has_shape = shaped;
      if (shaped) v.type.dims = std::move(dims);
      m.graph.inputs.push_back(v);
    };
    tensor_input("x", {ir::Dim::named("batch"), ir::Dim::of(7), ir::Dim::of(9), ir::Dim::of(64)}, x_shaped);
    m.graph.initializers["w"] = Tensor(DType::kFloat16, {256, 1, 1, 64});
    if (w2_known) m.graph.initializers["w2"] = Tensor(DType::kFloat16, {128, 1, 1, 256});
    else tensor_input("w2", {}, false);
    ir::Node n;
    n.name = "pair";
    n.op_type = "FusedConvPair";
    n.domain = "kiln";
    n.inputs = {"x", "w", "", "", "w2", ""};
    n.outputs = {"y", "y2"};
    m.graph.nodes.push_back(n);
    EXPECT_TRUE(passes::infer_shapes(m).ok());
  }
  std::string type(const std::string& v) const {
    const ir::TypeInfo* t = m.graph.type_of(v);
    return t ? t->to_string() : "unknown";
  }
};

TEST(FusedConvPairOps, InferShapes) {
  {
    const InferCase c(true, true);
    EXPECT_EQ(c.type("y"), "float16[batch,7,9,256]");
    EXPECT_EQ(c.type("y2"), "float16[batch,7,9,128]");
  }
  {
    const InferCase c(true, false);
    EXPECT_EQ(c.type("y"), "float16[batch,7,9,256]");
    const ir::TypeInfo* y2 = c.m.graph.type_of("y2");
    ASSERT_NE(y2, nullptr);
    ASSERT_TRUE(y2->has_shape);
    ASSERT_EQ(y2->dims.size(), 4u);
    EXPECT_EQ(y2->dims[0].symbol, "batch");
    EXPECT_FALSE(y2->dims[3].known());
  }
  {
    const InferCase c(false, true);
    for (const char* v : {"y", "y2"}) {
      const ir::TypeInfo* t = c.m.graph.type_of(v);
      ASSERT_NE(t, nullptr) << v;
      EXPECT_EQ(t->dtype, DType::kFloat16) << v;
      EXPECT_FALSE(t->has_shape) << v;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// conv_pair_fits: the CUDA kernel's limits.

TEST(FuseConvPair, ConvPairFitsMirrorsTheKernelsLimits) {
  EXPECT_TRUE(passes::conv_pair_fits(64, 256, 64));    // ResNet-50 layer1: block's conv3 -> next conv1
  EXPECT_TRUE(passes::conv_pair_fits(128, 256, 64));   // layer1.0's folded shortcut: exactly 96 KiB
  EXPECT_TRUE(passes::conv_pair_fits(64, 256, 128));
  EXPECT_TRUE(passes::conv_pair_fits(64, 64, 64));
  EXPECT_FALSE(passes::conv_pair_fits(128, 256, 128));  // 128 KiB of weights
  EXPECT_FALSE(passes::conv_pair_fits(64, 512, 64));    // C1 > 256
  EXPECT_FALSE(passes::conv_pair_fits(32, 256, 64));    // not multiples of 64
  EXPECT_FALSE(passes::conv_pair_fits(64, 96, 64));
  EXPECT_FALSE(passes::conv_pair_fits(64, 256, 8));
  EXPECT_FALSE(passes::conv_pair_fits(0, 256, 64));
  EXPECT_FALSE(passes::conv_pair_fits(-64, 256, 64));
  EXPECT_FALSE(passes::conv_pair_fits(int64_t(1) << 62, 64, 64));  // no overflow
}

// ---------------------------------------------------------------------------------------------------------
// The pass.

struct Builder : FusedConvGraphBuilder {
  explicit Builder(DType t) : FusedConvGraphBuilder(t, rng()) {}
};

int fuse(Builder& b) {
  // tol 0: the pair computes what the two convs did, to the bit.
  return b.apply_counted_pass([](ir::Model& m, int* n) { return passes::fuse_conv_pair(m, n); }, 0.0);
}

// ResNet's junction: P = Relu(conv3(x) + b3 + z) [2, 3, 4, 256], read by the next block's conv1 Q (and by a
// Neg standing in for the next residual, and a graph output), Q = Relu(conv1(y) + b1) [2, 3, 4, 64].
Builder junction(DType dt, int64_t c0 = 64, int64_t c1 = 256, int64_t c2 = 64) {
  Builder b(dt);
  b.input("x", random(dt, {2, 3, 4, c0}));
  b.input("z", random(dt, {2, 3, 4, c1}));
  b.conv("block1.conv3", "x", "y", {c0, c1, "Relu"}, "z");
  b.node("Neg", {"y"}, {"residual"}, "next_residual");
  b.conv("block2.conv1", "y", "y2", {c1, c2, "Relu"});
  b.output("y2");
  b.output("residual");
  b.output("y");
  return b;
}

TEST(FuseConvPair, FusesTheResNetJunction) {
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(dt));
    Builder b = junction(dt);
    ASSERT_EQ(fuse(b), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "Neg"}));
    const ir::Node& f = b.m.graph.nodes[0];
    EXPECT_EQ(f.name, "block1.conv3 + block2.conv1");
    EXPECT_EQ(f.inputs, (std::vector<std::string>{"x", "block1.conv3_w", "block1.conv3_b", "z", "block2.conv1_w",
                                                  "block2.conv1_b"}));
    EXPECT_EQ(f.outputs, (std::vector<std::string>{"y", "y2"}));
    ASSERT_EQ(f.attributes.size(), 2u);
    EXPECT_EQ(f.attr("activation")->s, "Relu");
    EXPECT_EQ(f.attr("second_activation")->s, "Relu");
    EXPECT_EQ(b.m.graph.type_of("y")->to_string(), dtype_name(dt) + "[2,3,4,256]");
    EXPECT_EQ(b.m.graph.type_of("y2")->to_string(), dtype_name(dt) + "[2,3,4,64]");
    EXPECT_EQ(b.m.opsets.at("kiln"), 1);
  }
}

TEST(FuseConvPair, KeepsEmptySlotsAndEachActivation) {
  // No biases, no residual, activations none then Relu: the empty inputs keep their places.
  Builder b(DType::kFloat16);
  b.input("x", random(DType::kFloat16, {1, 2, 2, 128}));
  ConvSpec p{128, 256, ""}, q{256, 64, "Relu"};
  p.bias = q.bias = false;
  b.conv("p", "x", "y", p);
  b.conv("q", "y", "y2", q);
  b.output("y2");
  ASSERT_EQ(fuse(b), 1);
  const ir::Node& f = b.m.graph.nodes[0];
  EXPECT_EQ(f.inputs, (std::vector<std::string>{"x", "p_w", "", "", "q_w", ""}));
  EXPECT_EQ(f.attr("activation")->s, "");
  EXPECT_EQ(f.attr("second_activation")->s, "Relu");
}

TEST(FuseConvPair, FusesOnlyTheFirstOfTwoReadersAndEachNodeOnce) {
  {
    SCOPED_TRACE("two Qs read P");
    Builder b(DType::kFloat16);
    b.input("x", random(DType::kFloat16, {2, 2, 3, 64}));
    b.conv("p", "x", "y", {64, 256, "Relu"});
    b.conv("q1", "y", "y1", {256, 64, "Relu"});
    b.conv("q2", "y", "y2", {256, 128});
    b.output("y1");
    b.output("y2");
    ASSERT_EQ(fuse(b), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "kiln.FusedConv"}));
    EXPECT_EQ(b.m.graph.nodes[0].name, "p + q1");
    EXPECT_EQ(b.m.graph.nodes[1].name, "q2");
    EXPECT_EQ(b.m.graph.nodes[1].inputs[0], "y");
  }
  {
    SCOPED_TRACE("the first reader does not qualify (3x3), the second does");
    Builder b(DType::kFloat16);
    b.input("x", random(DType::kFloat16, {2, 2, 3, 64}));
    b.conv("p", "x", "y", {64, 256, "Relu"});
    b.conv("q1", "y", "y1", {256, 64, "Relu", 3});
    b.conv("q2", "y", "y2", {256, 64});
    b.output("y1");
    b.output("y2");
    ASSERT_EQ(fuse(b), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "kiln.FusedConv"}));
    EXPECT_EQ(b.m.graph.nodes[0].name, "p + q2");
    EXPECT_EQ(b.m.graph.nodes[1].name, "q1");
  }
  {
    SCOPED_TRACE("a chain of three: the first two, the third stays");
    Builder b(DType::kFloat16);
    b.input("x", random(DType::kFloat16, {2, 2, 3, 64}));
    b.conv("a", "x", "ya", {64, 128, "Relu"});
    b.conv("b", "ya", "yb", {128, 64, "Relu"});
    b.conv("c", "yb", "yc", {64, 64});
    b.output("yc");
    ASSERT_EQ(fuse(b), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "kiln.FusedConv"}));
    EXPECT_EQ(b.m.graph.nodes[0].name, "a + b");
  }
  {
    SCOPED_TRACE("two junctions in a row, with nodes between");
    Builder b(DType::kFloat16);
    b.input("x", random(DType::kFloat16, {1, 3, 3, 64}));
    b.conv("p1", "x", "y1", {64, 256, "Relu"});
    b.conv("q1", "y1", "a1", {256, 64, "Relu"});
    b.conv("mid", "a1", "m1", {64, 64, "Relu", 3});
    b.conv("p2", "m1", "y2", {64, 256, "Relu"}, "y1");
    b.node("Relu", {"y2"}, {"r2"}, "between");
    b.conv("q2", "y2", "a2", {256, 64, "Relu"});
    b.output("a2");
    b.output("r2");
    ASSERT_EQ(fuse(b), 2);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConvPair", "kiln.FusedConv", "kiln.FusedConvPair", "Relu"}));
    EXPECT_EQ(b.m.graph.nodes[2].name, "p2 + q2");
    EXPECT_EQ(b.m.graph.nodes[2].inputs[3], "y1");
  }
}

TEST(FuseConvPair, WhatMustNotFuse) {
  struct Case {
    const char* what;
    std::function<void(Builder&)> make;
  };
  const DType h = DType::kFloat16;
  auto x_input = [&](Builder& b, int64_t c) { b.input("x", random(b.dt, {2, 3, 4, c})); };
  const std::vector<Case> cases = {
      {"float32", [&](Builder&) {}},  // (run with the float32 builder below)
      {"3x3 Q",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 64, "Relu", 3});
         b.output("y2");
       }},
      {"3x3 P",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Relu", 3});
         b.conv("q", "y", "y2", {256, 64, "Relu"});
         b.output("y2");
       }},
      {"stride-2 Q",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 64, "Relu", 1, 2});
         b.output("y2");
       }},
      {"Q with a residual",
       [&](Builder& b) {
         x_input(b, 64);
         b.input("z2", random(b.dt, {2, 3, 4, 64}));
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 64, "Relu"}, "z2");
         b.output("y2");
       }},
      {"Q reading P's output as its residual",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.conv("q", "x", "y2", {64, 256, "Relu"}, "y");
         b.output("y2");
       }},
      {"P with Sigmoid",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Sigmoid"});
         b.conv("q", "y", "y2", {256, 64, "Relu"});
         b.output("y2");
       }},
      {"Q with Sigmoid",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 64, "Sigmoid"});
         b.output("y2");
       }},
      {"C1 = 512 (over the kernel's 256)",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 512, "Relu"});
         b.conv("q", "y", "y2", {512, 64, "Relu"});
         b.output("y2");
       }},
      {"weights over 96 KiB",
       [&](Builder& b) {
         x_input(b, 128);
         b.conv("p", "x", "y", {128, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 128, "Relu"});
         b.output("y2");
       }},
      {"C0 = 32 (not a multiple of 64)",
       [&](Builder& b) {
         x_input(b, 32);
         b.conv("p", "x", "y", {32, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 64, "Relu"});
         b.output("y2");
       }},
      {"P with a pool",
       [&](Builder& b) {
         x_input(b, 64);
         ir::Node& p = b.conv("p", "x", "y", {64, 256, "Relu"});
         p.attributes["pool"] = passes::string_attribute("max");
         p.attributes["pool_kernel_shape"] = passes::ints_attribute({3, 3});
         p.attributes["pool_strides"] = passes::ints_attribute({2, 2});
         p.attributes["pool_pads"] = passes::ints_attribute({1, 1, 1, 1});
         b.conv("q", "y", "y2", {256, 64, "Relu"});
         b.output("y2");
       }},
      {"channels_last 0 (NCHW convs)",
       [&](Builder& b) {
         b.input("x", random(b.dt, {2, 64, 3, 4}));
         b.init("p_w", random(b.dt, {256, 64, 1, 1}, -0.5f, 0.5f));
         b.init("q_w", random(b.dt, {64, 256, 1, 1}, -0.5f, 0.5f));
         b.node("FusedConv", {"x", "p_w"}, {"y"}, "p", "kiln").attributes["channels_last"] = passes::int_attribute(0);
         b.node("FusedConv", {"y", "q_w"}, {"y2"}, "q", "kiln").attributes["channels_last"] = passes::int_attribute(0);
         b.output("y2");
       }},
      {"Q's bias a graph input (not fixed at build time)",
       [&](Builder& b) {
         x_input(b, 64);
         b.input("q_bias", random(b.dt, {64}));
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.conv("q", "y", "y2", {256, 64, "Relu"}).inputs[2] = "q_bias";
         b.output("y2");
       }},
      {"Q's weights from a Constant node",
       [&](Builder& b) {
         x_input(b, 64);
         b.conv("p", "x", "y", {64, 256, "Relu"});
         b.node("Constant", {}, {"q_const_w"}, "q_weights").attributes["value"] = [&] {
           ir::Attribute a;
           a.type = ir::Attribute::Type::kTensor;
           a.t = random(b.dt, {64, 1, 1, 256}, -0.5f, 0.5f);
           return a;
         }();
         b.conv("q", "y", "y2", {256, 64, "Relu"}).inputs[1] = "q_const_w";
         b.output("y2");
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const bool f32 = std::string(c.what) == "float32";
    Builder b = f32 ? junction(DType::kFloat32) : Builder(h);
    c.make(b);
    const std::vector<std::string> ops = op_types(b.m);
    EXPECT_EQ(fuse(b), 0);
    EXPECT_EQ(op_types(b.m), ops);
  }
}

// ---- the Concat feeding P: absorbed as X2

// ResNet-50's layer1.0 after fold_projection_shortcut, scaled down: the stem's pooled output x [2, 3, 4, 64],
// conv2's output a (3x3, 64), their Concat along the channels (`axis`), conv3 (folded: 128 -> 256, Relu)
// reading it, and layer1.1's conv1 (256 -> 64, Relu) reading conv3's output y, itself a graph output (the
// next residual).
Builder layer1_0(DType dt, int64_t axis = 3) {
  Builder b(dt);
  b.input("x", random(dt, {2, 3, 4, 64}));
  b.conv("conv2", "x", "a", {64, 64, "Relu", 3});
  b.node("Concat", {"a", "x"}, {"cat"}, "conv3 shortcut concat").attributes["axis"] = passes::int_attribute(axis);
  b.conv("conv3", "cat", "y", {128, 256, "Relu"});
  b.conv("next.conv1", "y", "y2", {256, 64, "Relu"});
  b.output("y2");
  b.output("y");
  return b;
}

TEST(FuseConvPair, AbsorbsTheConcatFeedingP) {
  for (DType dt : {DType::kFloat16, DType::kBFloat16})
    for (int64_t axis : {3, -1}) {
      SCOPED_TRACE(dtype_name(dt) + " axis " + std::to_string(axis));
      Builder b = layer1_0(dt, axis);
      ASSERT_EQ(fuse(b), 1);  // and computes what the graph did, to the bit
      EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.FusedConv", "kiln.FusedConvPair"}));
      const ir::Node& f = b.m.graph.nodes[1];
      EXPECT_EQ(f.name, "conv3 + conv3 shortcut concat + next.conv1");
      EXPECT_EQ(f.inputs, (std::vector<std::string>{"a", "conv3_w", "conv3_b", "", "next.conv1_w", "next.conv1_b", "x"}));
      EXPECT_EQ(f.outputs, (std::vector<std::string>{"y", "y2"}));
      EXPECT_EQ(b.m.graph.type_of("cat"), nullptr);  // the Concat's output is gone, its type with it
      EXPECT_EQ(b.m.graph.type_of("y")->to_string(), dtype_name(dt) + "[2,3,4,256]");
      EXPECT_EQ(b.m.graph.type_of("y2")->to_string(), dtype_name(dt) + "[2,3,4,64]");
    }
  {
    SCOPED_TRACE("the Concat's name shares parts with P's: each once; P's layer names the pair first");
    Builder b = layer1_0(DType::kFloat16);
    b.m.graph.nodes[1].name = "conv3 + add + relu shortcut concat";
    b.m.graph.nodes[2].name = "downsample + conv3 + add + relu";
    std::map<std::string, std::string> made_from;
    int fused = 0;
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    ASSERT_TRUE(passes::fuse_conv_pair(b.m, &fused, &made_from).ok());
    ASSERT_EQ(fused, 1);
    const std::string name = "downsample + conv3 + add + relu + relu shortcut concat + next.conv1";
    EXPECT_EQ(b.m.graph.nodes[1].name, name);
    EXPECT_EQ(made_from, (std::map<std::string, std::string>{{name, "downsample + conv3 + add + relu"}}));
  }
}

TEST(FuseConvPair, LeavesAConcatItCannotAbsorb) {
  struct Case {
    const char* what;
    std::function<void(Builder&)> make;
  };
  const DType h = DType::kFloat16;
  // P = conv3 reading `cat` (c0 channels), Q = next.conv1, as layer1_0 has them.
  auto pair_on = [](Builder& b, int64_t c0) {
    b.conv("conv3", "cat", "y", {c0, 256, "Relu"});
    b.conv("next.conv1", "y", "y2", {256, 64, "Relu"});
    b.output("y2");
  };
  auto concat = [](Builder& b, std::vector<std::string> in, int64_t axis) {
    b.node("Concat", std::move(in), {"cat"}, "concat").attributes["axis"] = passes::int_attribute(axis);
  };
  const std::vector<Case> cases = {
      {"a second reader",
       [&](Builder& b) {
         b.input("a", random(h, {2, 3, 4, 64}));
         b.input("x", random(h, {2, 3, 4, 64}));
         concat(b, {"a", "x"}, 3);
         b.node("Neg", {"cat"}, {"other"}, "other_reader");
         pair_on(b, 128);
         b.output("other");
       }},
      {"a graph output",
       [&](Builder& b) {
         b.input("a", random(h, {2, 3, 4, 64}));
         b.input("x", random(h, {2, 3, 4, 64}));
         concat(b, {"a", "x"}, 3);
         pair_on(b, 128);
         b.output("cat");
       }},
      {"three inputs",
       [&](Builder& b) {
         b.input("a", random(h, {2, 3, 4, 64}));
         b.input("x", random(h, {2, 3, 4, 32}));
         b.input("x2", random(h, {2, 3, 4, 32}));
         concat(b, {"a", "x", "x2"}, 3);
         pair_on(b, 128);
       }},
      {"another axis (W)",
       [&](Builder& b) {
         b.input("a", random(h, {2, 3, 4, 64}));
         b.input("x", random(h, {2, 3, 4, 64}));
         concat(b, {"a", "x"}, 2);
         pair_on(b, 64);
       }},
      {"channels not multiples of 8 (60 + 68)",
       [&](Builder& b) {
         b.input("a", random(h, {2, 3, 4, 60}));
         b.input("x", random(h, {2, 3, 4, 68}));
         concat(b, {"a", "x"}, 3);
         pair_on(b, 128);
       }},
      {"P reads it as its residual too",
       [&](Builder& b) {
         b.input("a", random(h, {2, 3, 4, 64}));
         b.input("x", random(h, {2, 3, 4, 64}));
         concat(b, {"a", "x"}, 3);
         b.conv("conv3", "cat", "y", {128, 128, "Relu"}, "cat");
         b.conv("next.conv1", "y", "y2", {128, 64, "Relu"});
         b.output("y2");
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Builder b(h);
    c.make(b);
    ASSERT_EQ(fuse(b), 1);  // the pair, on the Concat's output
    ASSERT_NE(find_op(b.m, "Concat"), nullptr);
    const ir::Node* pair = find_op(b.m, "FusedConvPair");
    ASSERT_NE(pair, nullptr);
    const ir::Node& f = *pair;
    EXPECT_EQ(f.name, "conv3 + next.conv1");
    EXPECT_EQ(f.inputs.size(), 6u);
    EXPECT_EQ(f.inputs[0], "cat");
  }
}

// ---- the whole optimizer: two ResNet bottleneck blocks as torch exports them (NCHW Conv, Add, Relu), float32

struct OnnxBlocks : GraphBuilder {
  OnnxBlocks() : GraphBuilder(17) {}
  void conv(const std::string& name, const std::string& x, const std::string& y, int64_t c, int64_t m, int64_t k) {
    init(name + ".weight", random(DType::kFloat32, {m, c, k, k}, -0.25f, 0.25f));
    init(name + ".bias", random(DType::kFloat32, {m}, -0.2f, 0.2f));
    ir::Node& n = node("Conv", {x, name + ".weight", name + ".bias"}, {y}, name);
    n.attributes["kernel_shape"] = passes::ints_attribute({k, k});
    n.attributes["pads"] = passes::ints_attribute({k / 2, k / 2, k / 2, k / 2});
  }
  // A bottleneck: 1x1 (64) + Relu, 3x3 (64) + Relu, 1x1 (256), + the shortcut (`x`, or its 1x1 projection
  // when `project`), Relu.
  void block(const std::string& p, const std::string& x, const std::string& out, int64_t cin, bool project) {
    conv(p + ".conv1", x, p + ".c1", cin, 64, 1);
    node("Relu", {p + ".c1"}, {p + ".r1"}, p + ".relu1");
    conv(p + ".conv2", p + ".r1", p + ".c2", 64, 64, 3);
    node("Relu", {p + ".c2"}, {p + ".r2"}, p + ".relu2");
    conv(p + ".conv3", p + ".r2", p + ".c3", 64, 256, 1);
    std::string shortcut = x;
    if (project) {
      conv(p + ".downsample", x, p + ".d", cin, 256, 1);
      shortcut = p + ".d";
    }
    node("Add", {p + ".c3", shortcut}, {p + ".sum"}, p + ".add");
    node("Relu", {p + ".sum"}, {out}, p + ".relu3");
  }
};

TEST(FuseConvPair, ResNetBlocksThroughTheOptimizer) {
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "built without the CUDA backend (its layer table decides what runs in fp16)";
#else
  // layer1.0 (with its projection, folded into its conv3) and layer1.1: layer1.0's conv3 and layer1.1's conv1
  // meet at the junction (C0 = 64 + 64 after the fold, C1 = 256, C2 = 64: 96 KiB of weights, the limit).
  OnnxBlocks b;
  b.input("image", random(DType::kFloat32, {2, 64, 6, 6}));
  b.block("layer1.0", "image", "out0", 64, true);
  b.block("layer1.1", "out0", "out1", 256, false);
  b.node("GlobalAveragePool", {"out1"}, {"gap"}, "head.gap");
  b.output("gap");
  const builder::OptimizeOptions o = gpu_fp16_options();
  Logger quiet(Severity::kError);
  std::set<std::string> lowered;
  ir::Model m = b.m;
  const Status st = builder::optimize_graph(m, o, quiet, &lowered);
  ASSERT_TRUE(st.ok()) << st.to_string();
  std::vector<const ir::Node*> pairs;
  for (const ir::Node& n : m.graph.nodes)
    if (n.op_type == "FusedConvPair") pairs.push_back(&n);
  ASSERT_EQ(pairs.size(), 1u);
  const ir::Node& pair = *pairs[0];
  // The shortcut's Concat absorbed as X2: the pair reads conv2's output and the image directly.
  EXPECT_EQ(pair.name, "layer1.0.downsample + layer1.0.conv3 + layer1.0.add + layer1.0.relu3 + layer1.0.relu3 shortcut "
                       "concat + layer1.1.conv1 + layer1.1.relu1");
  ASSERT_EQ(pair.inputs.size(), 7u);
  EXPECT_EQ(find_op(m, "Concat"), nullptr);
  EXPECT_TRUE(lowered.count(pair.name));  // the pair keeps its convs' precision
  EXPECT_EQ(m.graph.type_of(pair.outputs[0])->dtype, DType::kFloat16);
  EXPECT_EQ(m.graph.type_of(pair.outputs[1])->dtype, DType::kFloat16);
  expect_same_outputs(b.m, m, b.feeds, 2e-2);
#endif
}

}  // namespace
}  // namespace kiln::testing
