// Bad-input tests for the elementwise, activation, logical and cast kernels: each wrong shape, dtype or
// attribute gives a non-OK Status whose message names the node. A few positive checks keep them honest,
// including the fp8 / fp4 conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/cast.h"
#include "core/float_formats.h"
#include "ir/op_registry.h"
#include "kernel_harness.h"

namespace kiln {
namespace {

using OpRun = testing::OpRun;
using testing::int_attr;
using testing::string_attr;

OpRun run_op(const std::string& op, std::vector<Value> inputs, std::map<std::string, ir::Attribute> attrs = {},
             int opset = 21) {
  return testing::run_kernel("", op, std::move(inputs), std::move(attrs), 1, opset, "test_node");
}

Tensor floats(Shape shape, std::vector<float> v = {}) { return Tensor::from_vector<float>(DType::kFloat32, std::move(shape), v); }
Tensor int32s(Shape shape, std::vector<int32_t> v) { return Tensor::from_vector<int32_t>(DType::kInt32, std::move(shape), v); }

void expect_error_naming_node(const OpRun& run) {
  EXPECT_FALSE(run.status.ok());
  EXPECT_NE(run.status.message().find("test_node"), std::string::npos) << run.status.message();
}

TEST(ElementwiseOps, AddRejectsIncompatibleShapes) {
  expect_error_naming_node(run_op("Add", {floats({2, 3}), floats({4})}));
}

TEST(ElementwiseOps, AddRejectsMixedDtypes) {
  expect_error_naming_node(run_op("Add", {floats({2}), int32s({2}, {1, 2})}));
}

TEST(ElementwiseOps, AddBroadcasts) {
  OpRun run = run_op("Add", {floats({2, 2}, {1, 2, 3, 4}), floats({2}, {10, 20})});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  const Tensor& y = run.outputs[0].tensor();
  EXPECT_EQ(y.shape(), (Shape{2, 2}));
  EXPECT_EQ(y.data<float>()[3], 24.0f);
}

TEST(ElementwiseOps, IntegerDivisionByZeroIsAnError) {
  expect_error_naming_node(run_op("Div", {int32s({2}, {4, 5}), int32s({2}, {2, 0})}));
  expect_error_naming_node(run_op("Mod", {int32s({2}, {4, 5}), int32s({2}, {2, 0})}));
}

TEST(ElementwiseOps, IntegerModFollowsDivisorSign) {
  OpRun run = run_op("Mod", {int32s({2}, {-4, 7}), int32s({2}, {3, -3})});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  EXPECT_EQ(run.outputs[0].tensor().data<int32_t>()[0], 2);
  EXPECT_EQ(run.outputs[0].tensor().data<int32_t>()[1], -2);
}

TEST(ElementwiseOps, BadAttributes) {
  expect_error_naming_node(run_op("Mod", {floats({1}), floats({1})}, {{"fmod", int_attr(2)}}));
  Tensor u = Tensor::from_vector<uint8_t>(DType::kUInt8, {1}, {1});
  expect_error_naming_node(run_op("BitShift", {u, u}, {{"direction", string_attr("UP")}}));
  expect_error_naming_node(run_op("Gelu", {floats({1})}, {{"approximate", string_attr("erf")}}));
}

TEST(ElementwiseOps, FloatOnlyOpsRejectIntegers) {
  expect_error_naming_node(run_op("Sqrt", {int32s({1}, {4})}));
  expect_error_naming_node(run_op("Not", {floats({1})}));
}

TEST(ElementwiseOps, WhereNeedsBoolCondition) {
  expect_error_naming_node(run_op("Where", {floats({2}), floats({2}), floats({2})}));
}

TEST(ElementwiseOps, PReluSlopeMustBroadcastToX) {
  expect_error_naming_node(run_op("PRelu", {floats({2, 3}), floats({2})}));
  expect_error_naming_node(run_op("PRelu", {floats({3}), floats({2, 3})}));
}

TEST(ElementwiseOps, ClipBoundsMustBeScalars) {
  expect_error_naming_node(run_op("Clip", {floats({3}), floats({2}), Value::none()}));
}

TEST(ElementwiseOps, MissingInput) {
  expect_error_naming_node(run_op("Mul", {floats({2})}));
}

TEST(CastOps, BadTarget) {
  expect_error_naming_node(run_op("Cast", {floats({2})}, {{"to", int_attr(999)}}));
  expect_error_naming_node(run_op("Cast", {floats({2})}));  // 'to' missing
  expect_error_naming_node(run_op("Cast", {floats({2})}, {{"to", int_attr(1)}, {"round_mode", string_attr("odd")}}));
}

TEST(CastOps, NonNumericStringIsAnError) {
  Tensor s(DType::kString, {1});
  s.strings()[0] = "hello";
  expect_error_naming_node(run_op("Cast", {s}, {{"to", int_attr(1)}}));
}

TEST(CastOps, BitCastNeedsSameWidth) {
  expect_error_naming_node(run_op("BitCast", {floats({2})}, {{"to", int_attr(7)}}));
  OpRun run = run_op("BitCast", {floats({1}, {1.0f})}, {{"to", int_attr(6)}});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  EXPECT_EQ(run.outputs[0].tensor().data<int32_t>()[0], 0x3f800000);
}

TEST(FloatFormats, Fp8Conversions) {
  EXPECT_EQ(float_to_fp8e4m3fn(448.0f, true), 0x7e);
  EXPECT_EQ(float_to_fp8e4m3fn(1e6f, true), 0x7e);
  EXPECT_EQ(float_to_fp8e4m3fn(1e6f, false), 0x7f);  // NaN: no infinity in E4M3FN
  EXPECT_EQ(float_to_fp8e5m2(INFINITY, false), 0x7c);
  EXPECT_EQ(float_to_fp8e4m3fnuz(-0.0f, true), 0x00);  // no negative zero
  EXPECT_TRUE(std::isnan(fp8e4m3fnuz_to_float(0x80)));
  EXPECT_EQ(fp8e5m2_to_float(0x3c), 1.0f);
  EXPECT_EQ(float_to_fp4e2m1(0.75f, true), 0x2);  // tie rounds to even: 1.0
  EXPECT_EQ(fp4e2m1_to_float(0xf), -6.0f);
  EXPECT_EQ(float_to_fp8e8m0(3.0f, true, "up"), 128 + 1);
  EXPECT_EQ(fp8e8m0_to_float(127), 1.0f);
  for (int v = 0; v < 256; ++v) {  // every finite code survives a round trip
    float f = fp8e4m3fn_to_float(static_cast<uint8_t>(v));
    if (!std::isnan(f)) EXPECT_EQ(float_to_fp8e4m3fn(f, true), v) << v;
  }
}

TEST(FloatFormats, FloatToStringIsShortest) {
  Tensor x = Tensor::from_vector<float>(DType::kFloat32, {3}, {0.1f, 100.0f, 1e-5f});
  auto s = cast_tensor(x, DType::kString);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->strings()[0], "0.1");
  EXPECT_EQ(s->strings()[1], "100.0");
  EXPECT_EQ(s->strings()[2], "1e-05");
}

}  // namespace
}  // namespace kiln
