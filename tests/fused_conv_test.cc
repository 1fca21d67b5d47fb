// The CPU reference of kiln.FusedConv (src/backends/cpu/ops/fused_conv.cc) against the ONNX ops it replaces,
// Conv (+ Add) (+ Relu), run through their own reference kernels on fresh random inputs; channels-last
// cases move X, W and Z with ONNX Transpose and Y back, so the layout code is checked by another op. Then
// the bad inputs, each an error naming the node.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/cast.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("fused conv tests"));
  return gen;
}

// Uniform in [-1, 1] without zeros, in float32, rounded to `dtype` when it is a half type.
Tensor random_tensor(const Shape& shape, DType dtype = DType::kFloat32) {
  return random_signed_tensor(rng(), dtype, shape, 0.05f, 1.0f);
}

Tensor run_one(const std::string& domain, const std::string& op, std::vector<Value> inputs, Attrs attrs = {}) {
  OpRun r = run_kernel(domain, op, std::move(inputs), std::move(attrs), 1, 18, "ref_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

// [N, C, S...] -> [N, S..., C] (to_last) or back, with ONNX Transpose.
Tensor transpose_channels(const Tensor& t, bool to_last) {
  const int64_t r = static_cast<int64_t>(t.rank());
  std::vector<int64_t> perm = {0};
  if (to_last) {
    for (int64_t i = 2; i < r; ++i) perm.push_back(i);
    perm.push_back(1);
  } else {
    perm.push_back(r - 1);
    for (int64_t i = 1; i + 1 < r; ++i) perm.push_back(i);
  }
  return run_one("", "Transpose", {Value(t)}, {{"perm", ints_attr(perm)}});
}

struct FusedCase {
  Shape x, w;  // ONNX layout: X [N, C, D...], W [M, C/group, k...]
  Attrs conv;  // Conv's attributes
  bool bias = false, residual = false, relu = false, channels_last = false;
  DType dtype = DType::kFloat32;
  std::string activation = "";  // when set, instead of relu: one of FusedConv's activations, with act_attrs
  Attrs act_attrs = {};         // activation_min / activation_max / activation_alpha
};

Tensor scalar(float v) {
  Tensor t(DType::kFloat32, {});
  t.data<float>()[0] = v;
  return t;
}

// The ONNX ops that the fused activation `name` replaces, applied to float32 `y`.
Tensor unfused_activation(const Tensor& y, const std::string& name, const Attrs& a) {
  auto f = [&](const char* attr, float dflt) {
    auto it = a.find(attr);
    return it == a.end() ? dflt : it->second.f;
  };
  if (name == "Clip")
    return run_one("", "Clip", {Value(y), Value(scalar(f("activation_min", -INFINITY))), Value(scalar(f("activation_max", INFINITY)))});
  if (name == "LeakyRelu") return run_one("", "LeakyRelu", {Value(y)}, {{"alpha", float_attr(f("activation_alpha", 0.01f))}});
  if (name == "Silu") return run_one("", "Mul", {Value(y), Value(run_one("", "Sigmoid", {Value(y)}))});
  return run_one("", name, {Value(y)});  // Relu, Sigmoid, HardSwish
}

void expect_fused_matches_unfused(const FusedCase& c) {
  SCOPED_TRACE("X " + shape_to_string(c.x) + " W " + shape_to_string(c.w) + (c.bias ? " +B" : "") +
               (c.residual ? " +Z" : "") + (c.relu ? " Relu" : "") + " " + c.activation + (c.channels_last ? " NHWC " : " NCHW ") +
               dtype_name(c.dtype));
  const Tensor x = random_tensor(c.x, c.dtype), w = random_tensor(c.w, c.dtype);
  const Tensor b = c.bias ? random_tensor({c.w[0]}, c.dtype) : Tensor();

  // The unfused ops, in float32 on the (rounded) inputs: the fused op rounds once, at the end.
  std::vector<Value> conv_in = {Value(widen_to_float32(x)), Value(widen_to_float32(w))};
  if (c.bias) conv_in.emplace_back(widen_to_float32(b));
  Tensor want = run_one("", "Conv", conv_in, c.conv);
  ASSERT_TRUE(want.defined());
  const Tensor z = c.residual ? random_tensor(want.shape(), c.dtype) : Tensor();
  if (c.residual) want = run_one("", "Add", {Value(want), Value(widen_to_float32(z))});
  if (c.relu) want = run_one("", "Relu", {Value(want)});
  if (!c.activation.empty()) want = unfused_activation(want, c.activation, c.act_attrs);
  if (c.dtype != DType::kFloat32) want = narrow_from_float32(want, c.dtype);

  Attrs attrs = c.conv;
  attrs["activation"] = string_attr(!c.activation.empty() ? c.activation : c.relu ? "Relu" : "");
  for (const auto& [k, v] : c.act_attrs) attrs[k] = v;
  attrs["channels_last"] = int_attr(c.channels_last ? 1 : 0);
  auto layout = [&](const Tensor& t) { return c.channels_last ? transpose_channels(t, true) : t; };
  std::vector<Value> in = {Value(layout(x)), Value(layout(w)), c.bias ? Value(b) : Value(),
                           c.residual ? Value(layout(z)) : Value()};
  OpRun r = run_kernel("kiln", "FusedConv", in, attrs, 1, 1, "fused");
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  Tensor got = r.outputs[0].tensor();
  ASSERT_EQ(got.dtype(), c.dtype);
  if (c.channels_last) {
    ASSERT_EQ(got.shape(), layout(want).shape());
    got = transpose_channels(got, false);
  }
  ASSERT_EQ(got.shape(), want.shape());
  // The same float32 operations in the same order: equal, up to a last-bit difference at most.
  const Tensor g = widen_to_float32(got), e = widen_to_float32(want);
  int bad = 0;
  for (int64_t i = 0; i < g.numel() && bad < 5; ++i) {
    const float a = g.data<float>()[i], v = e.data<float>()[i];
    if (std::fabs(a - v) > 1e-6f * std::fabs(v) + 1e-7f) {
      ++bad;
      ADD_FAILURE() << "element " << i << ": got " << a << ", want " << v;
    }
  }
}

// Every combination of bias, residual and activation, in both layouts, for one convolution.
void expect_all_epilogues(FusedCase c) {
  for (bool channels_last : {false, true})
    for (int mask = 0; mask < 8; ++mask) {
      c.channels_last = channels_last;
      c.bias = mask & 1;
      c.residual = mask & 2;
      c.relu = mask & 4;
      expect_fused_matches_unfused(c);
    }
}

TEST(FusedConvOps, Pointwise) { expect_all_epilogues({{2, 8, 5, 6}, {16, 8, 1, 1}, {}}); }

TEST(FusedConvOps, ThreeByThreePadded) {
  expect_all_epilogues({{1, 8, 7, 7}, {8, 8, 3, 3}, {{"pads", ints_attr({1, 1, 1, 1})}}});
}

TEST(FusedConvOps, StridedAsymmetricPads) {
  expect_all_epilogues({{2, 3, 9, 8}, {4, 3, 3, 2}, {{"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 0, 2, 1})}}});
}

TEST(FusedConvOps, Groups) {
  expect_all_epilogues({{1, 6, 6, 6}, {9, 2, 3, 3}, {{"group", int_attr(3)}, {"pads", ints_attr({1, 1, 1, 1})}}});
  expect_all_epilogues({{2, 4, 5, 5}, {4, 1, 3, 3}, {{"group", int_attr(4)}, {"strides", ints_attr({2, 1})}}});  // depthwise
}

TEST(FusedConvOps, DilationsAndAutoPad) {
  expect_all_epilogues({{1, 4, 9, 9}, {6, 4, 3, 3}, {{"dilations", ints_attr({2, 1})}, {"auto_pad", string_attr("SAME_UPPER")}}});
  expect_all_epilogues({{1, 2, 8, 7}, {3, 2, 2, 3}, {{"strides", ints_attr({2, 2})}, {"auto_pad", string_attr("SAME_LOWER")}}});
}

TEST(FusedConvOps, OneAndThreeSpatialDims) {
  expect_all_epilogues({{2, 4, 11}, {6, 4, 3}, {{"pads", ints_attr({1, 2})}, {"kernel_shape", ints_attr({3})}}});
  expect_all_epilogues({{1, 2, 4, 5, 3}, {4, 2, 2, 3, 1}, {{"strides", ints_attr({1, 2, 1})}}});
}

TEST(FusedConvOps, HalfTypesRoundOnce) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    FusedCase c{{1, 8, 6, 6}, {8, 8, 3, 3}, {{"pads", ints_attr({1, 1, 1, 1})}}};
    c.dtype = t;
    expect_all_epilogues(c);
  }
}

// Each activation (and Clip's and LeakyRelu's parameters) after conv + B [+ Z], both layouts, float32
// and float16: what Clip, LeakyRelu, Sigmoid, Mul(y, Sigmoid(y)) and HardSwish compute on the unfused sum.
TEST(FusedConvOps, Activations) {
  const std::vector<std::pair<std::string, Attrs>> acts = {
      {"Relu", {}},
      {"Clip", {{"activation_min", float_attr(0.0f)}, {"activation_max", float_attr(0.5f)}}},  // ReLU6-like
      {"Clip", {{"activation_min", float_attr(-0.25f)}, {"activation_max", float_attr(0.3f)}}},
      {"Clip", {{"activation_max", float_attr(0.2f)}}},  // no lower bound
      {"Clip", {{"activation_min", float_attr(0.4f)}, {"activation_max", float_attr(0.1f)}}},  // min > max: max everywhere
      {"LeakyRelu", {}},
      {"LeakyRelu", {{"activation_alpha", float_attr(0.2f)}}},
      {"Sigmoid", {}},
      {"Silu", {}},
      {"HardSwish", {}},
  };
  for (const auto& [name, attrs] : acts)
    for (DType t : {DType::kFloat32, DType::kFloat16})
      for (bool channels_last : {false, true})
        for (bool residual : {false, true}) {
          // Weights in [-1, 1] over 8 x 9 taps: sums of a few units, so that HardSwish's +-3 knees and
          // Clip's bounds both fall inside the values.
          FusedCase c{{2, 8, 5, 5}, {6, 8, 3, 3}, {{"pads", ints_attr({1, 1, 1, 1})}}};
          c.dtype = t;
          c.bias = true;
          c.residual = residual;
          c.channels_last = channels_last;
          c.activation = name;
          c.act_attrs = attrs;
          expect_fused_matches_unfused(c);
        }
}

TEST(FusedConvOps, NoAttributesMeansConvDefaults) {
  // Absent activation and channels_last: a plain Conv.
  const Tensor x = random_tensor({1, 3, 5, 5}), w = random_tensor({2, 3, 3, 3});
  OpRun r = run_kernel("kiln", "FusedConv", {Value(x), Value(w)}, {}, 1, 1, "fused");
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  const Tensor want = run_one("", "Conv", {Value(x), Value(w)});
  ASSERT_EQ(r.outputs[0].tensor().shape(), want.shape());
  for (int64_t i = 0; i < want.numel(); ++i) EXPECT_EQ(r.outputs[0].tensor().data<float>()[i], want.data<float>()[i]);
}

// ---------------------------------------------------------------------------------------------------------
// Shape inference (src/passes/infer_shapes.cc): Y's dtype and shape in both layouts, a symbolic batch kept.

std::string inferred_type(const Shape& x_spatial_last, const Shape& w, Attrs attrs, DType dtype) {
  ir::Model m;
  m.opsets = {{"", 17}, {"kiln", 1}};
  ir::ValueInfo x;
  x.name = "x";
  x.type.kind = ir::TypeInfo::Kind::kTensor;
  x.type.dtype = dtype;
  x.type.has_shape = true;
  x.type.dims.push_back(ir::Dim::named("batch"));
  for (int64_t d : x_spatial_last) x.type.dims.push_back(ir::Dim::of(d));
  m.graph.inputs.push_back(x);
  m.graph.initializers["w"] = Tensor(dtype, w);
  ir::Node n;
  n.name = "fc";
  n.op_type = "FusedConv";
  n.domain = "kiln";
  n.inputs = {"x", "w", "", ""};
  n.outputs = {"y"};
  n.attributes = std::move(attrs);
  m.graph.nodes.push_back(n);
  EXPECT_TRUE(passes::infer_shapes(m).ok());
  const ir::TypeInfo* y = m.graph.type_of("y");
  return y ? y->to_string() : "unknown";
}

TEST(FusedConvOps, InferShapes) {
  const Attrs stem = {{"strides", ints_attr({2, 2})}, {"pads", ints_attr({3, 3, 3, 3})}, {"activation", string_attr("Relu")}};
  EXPECT_EQ(inferred_type({3, 224, 224}, {64, 3, 7, 7}, stem, DType::kFloat16), "float16[batch,64,112,112]");
  Attrs nhwc = stem;
  nhwc["channels_last"] = int_attr(1);
  EXPECT_EQ(inferred_type({224, 224, 3}, {64, 7, 7, 3}, nhwc, DType::kFloat16), "float16[batch,112,112,64]");
  EXPECT_EQ(inferred_type({56, 56, 64}, {256, 1, 1, 64}, {{"channels_last", int_attr(1)}}, DType::kFloat32),
            "float32[batch,56,56,256]");
  EXPECT_EQ(inferred_type({7, 9, 8}, {4, 3, 3, 8}, {{"channels_last", int_attr(1)}, {"auto_pad", string_attr("SAME_UPPER")}, {"strides", ints_attr({2, 2})}},
                          DType::kFloat32),
            "float32[batch,4,5,4]");
}

// ---------------------------------------------------------------------------------------------------------
// Bad input.

void expect_error(std::vector<Value> in, Attrs attrs, const std::string& words) {
  OpRun r = run_kernel("kiln", "FusedConv", std::move(in), std::move(attrs), 1, 1, "bad_fused_conv");
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.message().find("bad_fused_conv"), std::string::npos) << r.status.message();
  EXPECT_NE(r.status.message().find(words), std::string::npos) << r.status.message();
}

TEST(FusedConvOps, BadActivation) {
  expect_error({Value(random_tensor({1, 2, 4, 4})), Value(random_tensor({2, 2, 3, 3}))}, {{"activation", string_attr("Gelu")}},
               "activation 'Gelu'");
}

TEST(FusedConvOps, NaNActivationParameter) {
  expect_error({Value(random_tensor({1, 2, 4, 4})), Value(random_tensor({2, 2, 3, 3}))},
               {{"activation", string_attr("Clip")}, {"activation_max", float_attr(NAN)}}, "must not be NaN");
}

TEST(FusedConvOps, BadChannelsLast) {
  expect_error({Value(random_tensor({1, 2, 4, 4})), Value(random_tensor({2, 2, 3, 3}))}, {{"channels_last", int_attr(2)}},
               "channels_last 2");
}

TEST(FusedConvOps, ResidualShapeMustBeYs) {
  const Value x(random_tensor({1, 2, 4, 4})), w(random_tensor({3, 2, 3, 3}));
  expect_error({x, w, Value(), Value(random_tensor({1, 3, 4, 4}))}, {}, "Z float32[1,3,4,4] must have Y's shape [1,3,2,2]");
  // In NHWC, an NCHW-shaped Z is wrong.
  expect_error({Value(random_tensor({1, 4, 4, 2})), Value(random_tensor({3, 3, 3, 2})), Value(), Value(random_tensor({1, 3, 2, 2}))},
               {{"channels_last", int_attr(1)}}, "must have Y's shape [1,2,2,3]");
}

TEST(FusedConvOps, BiasSizeMustBeM) {
  expect_error({Value(random_tensor({1, 2, 4, 4})), Value(random_tensor({3, 2, 3, 3})), Value(random_tensor({2}))}, {},
               "B must be a 1-D tensor of 3");
}

TEST(FusedConvOps, Ranks) {
  expect_error({Value(random_tensor({2, 4})), Value(random_tensor({2, 4}))}, {}, "X must be");
  expect_error({Value(random_tensor({1, 2, 4, 4})), Value(random_tensor({2, 2, 3}))}, {}, "must have X's rank");
}

TEST(FusedConvOps, ChannelsLastChannelMismatch) {
  // NHWC X with 4 channels, KRSC W expecting 3.
  expect_error({Value(random_tensor({1, 5, 5, 4})), Value(random_tensor({2, 3, 3, 3}))}, {{"channels_last", int_attr(1)}},
               "input channels");
}

TEST(FusedConvOps, DtypesMustMatch) {
  const Value x(random_tensor({1, 2, 4, 4})), w(random_tensor({3, 2, 3, 3}));
  expect_error({x, w, Value(random_tensor({3}, DType::kFloat16))}, {}, "B ");
  expect_error({x, w, Value(), Value(random_tensor({1, 3, 2, 2}, DType::kFloat16))}, {}, "Z ");
  expect_error({x, Value(random_tensor({3, 2, 3, 3}, DType::kFloat16))}, {}, "same dtype");
}

TEST(FusedConvOps, MissingWeights) { expect_error({Value(random_tensor({1, 2, 4, 4}))}, {}, "required"); }

}  // namespace
}  // namespace kiln::testing
