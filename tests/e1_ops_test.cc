// Bad-input tests for the resize, image, signal and quantize op families: each must give a non-OK Status
// whose message names the node, never crash.
#include <gtest/gtest.h>

#include "core/value.h"
#include "ir/op_registry.h"
#include "kernel_harness.h"

namespace kiln {
namespace {

using Run = testing::OpRun;
using testing::int_attr;
using testing::string_attr;

Run run_op(const std::string& op, std::vector<Value> inputs, std::map<std::string, ir::Attribute> attrs = {},
           int opset = 21, int num_outputs = 1) {
  return testing::run_kernel("", op, std::move(inputs), std::move(attrs), static_cast<size_t>(num_outputs), opset,
                             "bad_" + op);
}

Tensor floats(Shape shape, std::vector<float> v = {}) {
  Tensor t(DType::kFloat32, shape);
  for (size_t i = 0; i < v.size() && static_cast<int64_t>(i) < t.numel(); ++i) t.data<float>()[i] = v[i];
  return t;
}
Tensor ints(Shape shape, std::vector<int64_t> v) { return Tensor::from_vector<int64_t>(DType::kInt64, shape, v); }

void expect_error(const Run& r, const std::string& op) {
  EXPECT_FALSE(r.status.ok()) << op;
  EXPECT_NE(r.status.message().find("bad_" + op), std::string::npos) << r.status.message();
}

TEST(E1Ops, ResizeWrongScalesCount) {
  Value none;
  auto r = run_op("Resize", {floats({1, 1, 2, 2}), none, floats({3}, {1, 2, 2})}, {}, 19);
  expect_error(r, "Resize");
}

TEST(E1Ops, ResizeNegativeScale) {
  Value none;
  auto r = run_op("Resize", {floats({1, 1, 2, 2}), none, floats({4}, {1, 1, -2, 2})}, {}, 19);
  expect_error(r, "Resize");
}

TEST(E1Ops, ResizeUnknownMode) {
  Value none;
  auto r = run_op("Resize", {floats({1, 1, 2, 2}), none, floats({4}, {1, 1, 2, 2})}, {{"mode", string_attr("magic")}}, 19);
  expect_error(r, "Resize");
}

TEST(E1Ops, ResizeUpsamplesNearest) {
  Value none;
  auto r = run_op("Resize", {floats({1, 1, 1, 2}, {1, 2}), none, floats({4}, {1, 1, 1, 2})}, {}, 19);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const Tensor& y = r.outputs[0].tensor();
  ASSERT_EQ(y.shape(), (Shape{1, 1, 1, 4}));
  EXPECT_EQ(y.data<float>()[0], 1);
  EXPECT_EQ(y.data<float>()[3], 2);
}

TEST(E1Ops, GridSampleGridShapeMismatch) {
  auto r = run_op("GridSample", {floats({1, 1, 3, 3}), floats({1, 2, 2, 3})}, {}, 20);
  expect_error(r, "GridSample");
}

TEST(E1Ops, RoiAlignBatchIndexOutOfRange) {
  auto r = run_op("RoiAlign", {floats({1, 1, 4, 4}), floats({1, 4}, {0, 0, 1, 1}), ints({1}, {5})}, {}, 16);
  expect_error(r, "RoiAlign");
}

TEST(E1Ops, RoiAlignEmptyFeatureMap) {
  auto r = run_op("RoiAlign", {floats({1, 1, 0, 0}), floats({1, 4}, {0, 0, 1, 1}), ints({1}, {0})}, {}, 16);
  expect_error(r, "RoiAlign");
}

TEST(E1Ops, NonMaxSuppressionShapeMismatch) {
  auto r = run_op("NonMaxSuppression", {floats({1, 3, 4}), floats({1, 1, 2})}, {}, 11);
  expect_error(r, "NonMaxSuppression");
}

TEST(E1Ops, DftBadLastDim) {
  auto r = run_op("DFT", {floats({1, 4, 3})}, {}, 20);
  expect_error(r, "DFT");
}

TEST(E1Ops, WindowNegativeSize) {
  auto r = run_op("HannWindow", {ints({}, {-3})}, {}, 17);
  expect_error(r, "HannWindow");
}

TEST(E1Ops, QuantizeScaleWrongSize) {
  Tensor zp(DType::kUInt8, {2});
  auto r = run_op("QuantizeLinear", {floats({2, 3}), floats({2}, {1, 1}), zp}, {{"axis", int_attr(1)}}, 21);
  expect_error(r, "QuantizeLinear");
}

TEST(E1Ops, DequantizeAxisOutOfRange) {
  Tensor x(DType::kUInt8, {2, 3});
  auto r = run_op("DequantizeLinear", {x, floats({3}, {1, 1, 1})}, {{"axis", int_attr(5)}}, 21);
  expect_error(r, "DequantizeLinear");
}

TEST(E1Ops, QuantizeRoundsHalfToEven) {
  Tensor zp(DType::kUInt8, {});
  auto r = run_op("QuantizeLinear", {floats({3}, {0.5f, 1.5f, 300.f}), floats({}, {1}), zp}, {}, 21);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const uint8_t* y = r.outputs[0].tensor().data<uint8_t>();
  EXPECT_EQ(y[0], 0);
  EXPECT_EQ(y[1], 2);
  EXPECT_EQ(y[2], 255);
}

}  // namespace
}  // namespace kiln
