// The CPU reference of kiln.ChannelsLastPool (src/backends/cpu/ops/channels_last_pool.cc) against what it
// stands for, Transpose(Pool(Transpose(X, [0,3,1,2])), [0,2,3,1]) with the ONNX pool's own reference, on
// fresh random inputs: every mode, with pads, strides, dilations, ceil_mode, count_include_pad and
// auto_pad, in float32, float16 and bfloat16; the shape inference of the op; then bad input, each an
// error naming the node.
#include <gtest/gtest.h>

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
  static std::mt19937 gen(random_seed("channels-last pool tests"));
  return gen;
}

// Uniform in [-4, 4] without zeros, rounded to `dtype`.
Tensor random_tensor(const Shape& shape, DType dtype) { return random_signed_tensor(rng(), dtype, shape, 0.05f, 4.0f); }

Tensor run_one(const std::string& op, const Tensor& x, Attrs attrs, int opset = 22) {
  OpRun r = run_kernel("", op, {Value(x)}, std::move(attrs), 1, opset, "ref_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

const char* onnx_op(const std::string& mode) {
  if (mode == "max") return "MaxPool";
  if (mode == "average") return "AveragePool";
  if (mode == "global_average") return "GlobalAveragePool";
  return "GlobalMaxPool";
}

// X [N, H, W, C] through kiln.ChannelsLastPool and through the ONNX composition: equal, element for element.
void expect_matches_composition(const std::string& mode, const Shape& nhwc, Attrs pool, DType dtype) {
  SCOPED_TRACE(mode + " " + dtype_name(dtype) + shape_to_string(nhwc));
  const Tensor x = random_tensor(nhwc, dtype);
  const Tensor nchw = run_one("Transpose", x, {{"perm", ints_attr({0, 3, 1, 2})}});
  const Tensor pooled = run_one(onnx_op(mode), nchw, pool);
  ASSERT_TRUE(pooled.defined());
  const Tensor want = run_one("Transpose", pooled, {{"perm", ints_attr({0, 2, 3, 1})}});

  Attrs attrs = pool;
  attrs["mode"] = string_attr(mode);
  OpRun r = run_kernel("kiln", "ChannelsLastPool", {Value(x)}, attrs, 1, 1, "clpool");
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  const Tensor& got = r.outputs[0].tensor();
  ASSERT_EQ(got.dtype(), dtype);
  ASSERT_EQ(got.shape(), want.shape());
  const Tensor g = widen_to_float32(got), w = widen_to_float32(want);
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data<float>()[i], w.data<float>()[i]) << "element " << i;
}

const DType kTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

TEST(ChannelsLastPool, MaxPoolMatchesTheComposition) {
  for (DType t : kTypes) {
    // ResNet's stem pool, smaller.
    expect_matches_composition("max", {2, 9, 10, 16},
                               {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})},
                                {"pads", ints_attr({1, 1, 1, 1})}},
                               t);
    expect_matches_composition("max", {1, 11, 8, 3},
                               {{"kernel_shape", ints_attr({3, 2})}, {"strides", ints_attr({2, 3})},
                                {"pads", ints_attr({0, 1, 2, 0})}, {"dilations", ints_attr({2, 1})},
                                {"ceil_mode", int_attr(1)}},
                               t);
  }
  expect_matches_composition("max", {2, 7, 7, 5}, {{"kernel_shape", ints_attr({2, 2})}, {"auto_pad", string_attr("SAME_UPPER")}},
                             DType::kFloat32);
  // Windows of padding only.
  expect_matches_composition("max", {1, 3, 3, 2}, {{"kernel_shape", ints_attr({2, 2})}, {"pads", ints_attr({2, 2, 2, 2})}},
                             DType::kFloat32);
}

TEST(ChannelsLastPool, AveragePoolMatchesTheComposition) {
  for (DType t : kTypes)
    for (int64_t include_pad : {0, 1}) {
      expect_matches_composition("average", {2, 9, 10, 16},
                                 {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})},
                                  {"pads", ints_attr({1, 1, 1, 1})}, {"count_include_pad", int_attr(include_pad)}},
                                 t);
      expect_matches_composition("average", {1, 10, 11, 3},
                                 {{"kernel_shape", ints_attr({2, 3})}, {"strides", ints_attr({3, 2})},
                                  {"pads", ints_attr({1, 0, 1, 2})}, {"ceil_mode", int_attr(1)},
                                  {"count_include_pad", int_attr(include_pad)}},
                                 t);
    }
  expect_matches_composition("average", {1, 6, 9, 4}, {{"kernel_shape", ints_attr({3, 3})}, {"auto_pad", string_attr("SAME_LOWER")}, {"strides", ints_attr({2, 2})}},
                             DType::kFloat32);
}

TEST(ChannelsLastPool, GlobalPoolsMatchTheComposition) {
  for (DType t : kTypes)
    for (const char* mode : {"global_average", "global_max"}) {
      expect_matches_composition(mode, {2, 7, 7, 24}, {}, t);
      expect_matches_composition(mode, {3, 1, 5, 3}, {}, t);
    }
}

// The op's shape inference: the pool's rule on the spatial dims, N and C where they were.
TEST(ChannelsLastPool, ShapeInference) {
  ir::Model m;
  m.opsets[""] = 18;
  m.opsets["kiln"] = 1;
  ir::ValueInfo x;
  x.name = "x";
  x.type.kind = ir::TypeInfo::Kind::kTensor;
  x.type.dtype = DType::kFloat16;
  x.type.has_shape = true;
  x.type.dims = {ir::Dim::named("N"), ir::Dim::of(112), ir::Dim::of(112), ir::Dim::of(64)};
  m.graph.inputs.push_back(x);
  auto pool = [](const std::string& name, const std::string& mode, const std::string& out) {
    ir::Node n;
    n.name = name;
    n.domain = "kiln";
    n.op_type = "ChannelsLastPool";
    n.inputs = {"x"};
    n.outputs = {out};
    n.attributes["mode"] = string_attr(mode);
    return n;
  };
  ir::Node maxp = pool("maxpool", "max", "m");
  maxp.attributes["kernel_shape"] = ints_attr({3, 3});
  maxp.attributes["strides"] = ints_attr({2, 2});
  maxp.attributes["pads"] = ints_attr({1, 1, 1, 1});
  m.graph.nodes.push_back(maxp);
  m.graph.nodes.push_back(pool("gap", "global_average", "g"));
  m.graph.outputs = {{"m", {}}, {"g", {}}};
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  ASSERT_NE(m.graph.type_of("m"), nullptr);
  EXPECT_EQ(m.graph.type_of("m")->to_string(), "float16[N,56,56,64]");
  ASSERT_NE(m.graph.type_of("g"), nullptr);
  EXPECT_EQ(m.graph.type_of("g")->to_string(), "float16[N,1,1,64]");
}

TEST(ChannelsLastPool, BadInputIsAnErrorNamingTheNode) {
  auto expect_error = [](const Tensor& x, Attrs attrs, const std::string& says) {
    OpRun r = run_kernel("kiln", "ChannelsLastPool", {Value(x)}, std::move(attrs), 1, 1, "bad_pool");
    ASSERT_FALSE(r.status.ok()) << says;
    EXPECT_NE(r.status.message().find("bad_pool"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find(says), std::string::npos) << r.status.message();
  };
  const Attrs window = {{"kernel_shape", ints_attr({2, 2})}};
  Attrs max = window;
  max["mode"] = string_attr("max");
  expect_error(random_tensor({2, 5, 4}, DType::kFloat32), max, "rank 4");
  Attrs bad = window;
  bad["mode"] = string_attr("median");
  expect_error(random_tensor({1, 4, 4, 2}, DType::kFloat32), bad, "median");
  expect_error(random_tensor({1, 4, 4, 2}, DType::kFloat32), window, "mode must be");  // no mode at all
  // The pool's own checks, still naming the node: a window larger than the input.
  Attrs large = max;
  large["kernel_shape"] = ints_attr({5, 5});
  expect_error(random_tensor({1, 4, 4, 2}, DType::kFloat32), large, "larger than the padded input");
}

}  // namespace
}  // namespace kiln::testing
