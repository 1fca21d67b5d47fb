// Bad-input tests for the conv, pool, normalization, softmax, matmul and reduce kernels: each wrong shape or
// attribute gives a non-OK Status whose message names the node. A few positive checks keep them honest.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "ir/op_registry.h"
#include "kernel_harness.h"

namespace kiln {
namespace {

using NnRun = testing::OpRun;
using testing::ints_attr;
using testing::int_attr;
using testing::string_attr;

// Undefined tensors become omitted optional inputs.
NnRun run_nn_op(const std::string& op, std::vector<Tensor> inputs, std::map<std::string, ir::Attribute> attrs = {},
                int opset = 18, size_t num_outputs = 1) {
  std::vector<Value> values;
  for (auto& t : inputs) values.push_back(t.defined() ? Value(t) : Value());
  return testing::run_kernel("", op, std::move(values), std::move(attrs), num_outputs, opset, "nn_node");
}

Tensor floats(Shape shape, std::vector<float> v = {}) {
  if (v.empty()) v.assign(static_cast<size_t>(shape_numel(shape)), 1.0f);
  return Tensor::from_vector(DType::kFloat32, std::move(shape), v);
}

void expect_node_error(const NnRun& r) {
  EXPECT_FALSE(r.status.ok());
  EXPECT_NE(r.status.message().find("nn_node"), std::string::npos) << r.status.message();
}

TEST(ConvOps, ConvChannelMismatch) { expect_node_error(run_nn_op("Conv", {floats({1, 3, 5, 5}), floats({2, 2, 3, 3})})); }

TEST(ConvOps, ConvNegativePads) {
  expect_node_error(run_nn_op("Conv", {floats({1, 1, 5, 5}), floats({1, 1, 3, 3})}, {{"pads", ints_attr({-1, 0, 0, 0})}}));
}

TEST(ConvOps, ConvKernelLargerThanInput) { expect_node_error(run_nn_op("Conv", {floats({1, 1, 2, 2}), floats({1, 1, 3, 3})})); }

TEST(ConvOps, ConvBadAutoPad) {
  expect_node_error(run_nn_op("Conv", {floats({1, 1, 5, 5}), floats({1, 1, 3, 3})}, {{"auto_pad", string_attr("MIDDLE")}}));
}

TEST(ConvOps, ConvComputes) {
  // 3x3 ones convolved with a 2x2 ones kernel: every output is 4.
  NnRun r = run_nn_op("Conv", {floats({1, 1, 3, 3}), floats({1, 1, 2, 2})});
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const Tensor& y = r.outputs[0].tensor();
  ASSERT_EQ(y.shape(), (Shape{1, 1, 2, 2}));
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(y.data<float>()[i], 4.0f);
}

TEST(ConvOps, ConvTransposeBadWeights) {
  expect_node_error(run_nn_op("ConvTranspose", {floats({1, 2, 3, 3}), floats({3, 1, 2, 2})}));
}

TEST(PoolOps, MaxPoolNeedsKernelShape) { expect_node_error(run_nn_op("MaxPool", {floats({1, 1, 4, 4})})); }

TEST(PoolOps, AveragePoolBadStrides) {
  expect_node_error(run_nn_op("AveragePool", {floats({1, 1, 4, 4})},
                              {{"kernel_shape", ints_attr({2, 2})}, {"strides", ints_attr({0, 1})}}));
}

TEST(PoolOps, MaxUnpoolIndexOutOfRange) {
  Tensor ind = Tensor::from_vector<int64_t>(DType::kInt64, {1, 1, 1, 1}, {1000});
  expect_node_error(run_nn_op("MaxUnpool", {floats({1, 1, 1, 1}), ind}, {{"kernel_shape", ints_attr({2, 2})}}, 11));
}

TEST(NormalizationOps, LayerNormScaleShape) {
  expect_node_error(run_nn_op("LayerNormalization", {floats({2, 4}), floats({3})}, {}, 17, 3));
}

TEST(NormalizationOps, BatchNormChannelCount) {
  expect_node_error(run_nn_op("BatchNormalization", {floats({1, 3, 2, 2}), floats({2}), floats({3}), floats({3}), floats({3})}, {}, 15));
}

TEST(NormalizationOps, GroupNormGroupsDivideChannels) {
  expect_node_error(run_nn_op("GroupNormalization", {floats({1, 4, 2}), floats({3}), floats({3})}, {{"num_groups", int_attr(3)}}));
}

TEST(SoftmaxOps, AxisOutOfRange) { expect_node_error(run_nn_op("Softmax", {floats({2, 3})}, {{"axis", int_attr(2)}}, 13)); }

TEST(MatMulOps, InnerDimMismatch) { expect_node_error(run_nn_op("MatMul", {floats({2, 3}), floats({4, 2})})); }

TEST(MatMulOps, GemmNeeds2D) { expect_node_error(run_nn_op("Gemm", {floats({2, 3, 1}), floats({3, 2})})); }

TEST(MatMulOps, EinsumTermCount) {
  expect_node_error(run_nn_op("Einsum", {floats({2, 3})}, {{"equation", string_attr("ij,jk->ik")}}, 12));
}

TEST(MatMulOps, EinsumRepeatedOutputLabel) {
  expect_node_error(run_nn_op("Einsum", {floats({3, 3})}, {{"equation", string_attr("ij->ii")}}, 12));
}

TEST(MatMulOps, MatMulComputes) {
  NnRun r = run_nn_op("MatMul", {floats({2, 2}, {1, 2, 3, 4}), floats({2, 2}, {5, 6, 7, 8})});
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const float* y = r.outputs[0].tensor().data<float>();
  EXPECT_FLOAT_EQ(y[0], 19);
  EXPECT_FLOAT_EQ(y[1], 22);
  EXPECT_FLOAT_EQ(y[2], 43);
  EXPECT_FLOAT_EQ(y[3], 50);
}

TEST(ReduceOps, AxisOutOfRange) {
  Tensor axes = Tensor::from_vector<int64_t>(DType::kInt64, {1}, {5});
  expect_node_error(run_nn_op("ReduceSum", {floats({2, 3}), axes}, {}, 13));
}

TEST(ReduceOps, RepeatedAxis) {
  expect_node_error(run_nn_op("ReduceMax", {floats({2, 3})}, {{"axes", ints_attr({1, -1})}}, 13));
}

TEST(ReduceOps, EmptyMaxIsMinusInfinity) {
  Tensor axes = Tensor::from_vector<int64_t>(DType::kInt64, {1}, {1});
  NnRun r = run_nn_op("ReduceMax", {floats({2, 0}), axes}, {}, 18);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const Tensor& y = r.outputs[0].tensor();
  ASSERT_EQ(y.shape(), (Shape{2, 1}));
  EXPECT_TRUE(std::isinf(y.data<float>()[0]) && y.data<float>()[0] < 0);
}

}  // namespace
}  // namespace kiln
