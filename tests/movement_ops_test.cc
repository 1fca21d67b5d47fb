// Bad-input tests for the shape, movement, indexing, sort/scan and generator kernels: each wrong shape,
// index or attribute gives a non-OK Status whose message names the node. A few positive checks too.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "ir/op_registry.h"
#include "kernel_harness.h"

namespace kiln {
namespace {

using OpRun = testing::OpRun;
using testing::int_attr;
using testing::ints_attr;

OpRun run_op(const std::string& op, std::vector<Value> inputs, std::map<std::string, ir::Attribute> attrs = {},
             size_t num_outputs = 1, int opset = 21) {
  return testing::run_kernel("", op, std::move(inputs), std::move(attrs), num_outputs, opset, "test_node");
}

Tensor floats(Shape shape) {
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(i);
  return t;
}
Tensor int64s(Shape shape, std::vector<int64_t> v) { return Tensor::from_vector(DType::kInt64, std::move(shape), v); }

void expect_node_error(const OpRun& run, const std::string& fragment) {
  ASSERT_FALSE(run.status.ok());
  EXPECT_NE(run.status.message().find("test_node"), std::string::npos) << run.status.message();
  EXPECT_NE(run.status.message().find(fragment), std::string::npos) << run.status.message();
}

TEST(MovementOps, ReshapeRejectsWrongElementCount) {
  expect_node_error(run_op("Reshape", {floats({2, 3}), int64s({2}, {4, 2})}), "cannot reshape");
  expect_node_error(run_op("Reshape", {floats({2, 3}), int64s({2}, {-1, -1})}), "more than one -1");
}

TEST(MovementOps, ReshapeInfersMinusOne) {
  OpRun run = run_op("Reshape", {floats({2, 3}), int64s({2}, {0, -1})});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  EXPECT_EQ(run.outputs[0].tensor().shape(), (Shape{2, 3}));
}

TEST(MovementOps, SqueezeRejectsNonUnitAxis) {
  expect_node_error(run_op("Squeeze", {floats({2, 1}), int64s({1}, {0})}), "cannot squeeze");
}

TEST(MovementOps, ExpandRejectsIncompatibleShape) {
  expect_node_error(run_op("Expand", {floats({3}), int64s({1}, {4})}), "cannot be broadcast");
}

TEST(MovementOps, ConstantOfShapeRejectsNegativeAndHugeShapes) {
  expect_node_error(run_op("ConstantOfShape", {int64s({1}, {-2})}), "negative");
  expect_node_error(run_op("ConstantOfShape", {int64s({3}, {1 << 20, 1 << 20, 1 << 20})}), "too large");
}

TEST(MovementOps, TransposeRejectsBadPerm) {
  expect_node_error(run_op("Transpose", {floats({2, 3})}, {{"perm", ints_attr({0, 0})}}), "not a permutation");
}

TEST(MovementOps, ConcatRejectsMismatchedDims) {
  expect_node_error(run_op("Concat", {floats({2, 3}), floats({2, 4})}, {{"axis", int_attr(0)}}), "cannot concatenate");
}

TEST(MovementOps, SplitRejectsBadSizes) {
  expect_node_error(run_op("Split", {floats({5}), int64s({2}, {2, 2})}, {}, 2), "does not sum");
}

TEST(MovementOps, SliceRejectsZeroStepAndClampsNegativeSteps) {
  expect_node_error(run_op("Slice", {floats({4}), int64s({1}, {0}), int64s({1}, {4}), int64s({1}, {0}),
                                     int64s({1}, {0})}),
                    "steps");
  OpRun run = run_op("Slice", {floats({4}), int64s({1}, {100}), int64s({1}, {-100}), int64s({1}, {0}),
                               int64s({1}, {-1})});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  const Tensor& y = run.outputs[0].tensor();
  ASSERT_EQ(y.shape(), (Shape{4}));
  EXPECT_EQ(y.data<float>()[0], 3.0f);
  EXPECT_EQ(y.data<float>()[3], 0.0f);
}

TEST(MovementOps, PadRejectsWrongPadCountAndMode) {
  expect_node_error(run_op("Pad", {floats({2, 2}), int64s({3}, {1, 1, 1})}), "pads");
  ir::Attribute mode;
  mode.type = ir::Attribute::Type::kString;
  mode.s = "mirror";
  expect_node_error(run_op("Pad", {floats({2, 2}), int64s({4}, {1, 1, 1, 1})}, {{"mode", mode}}), "unknown mode");
}

TEST(MovementOps, DepthToSpaceRejectsIndivisibleChannels) {
  expect_node_error(run_op("DepthToSpace", {floats({1, 3, 2, 2})}, {{"blocksize", int_attr(2)}}), "divisible");
}

TEST(IndexingOps, GatherRejectsOutOfRangeIndex) {
  expect_node_error(run_op("Gather", {floats({3, 2}), int64s({1}, {3})}), "out of range");
  OpRun run = run_op("Gather", {floats({3, 2}), int64s({1}, {-1})});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  EXPECT_EQ(run.outputs[0].tensor().data<float>()[0], 4.0f);
}

TEST(IndexingOps, ScatterNDRejectsOutOfRangeIndexAndBadUpdates) {
  expect_node_error(run_op("ScatterND", {floats({4}), int64s({1, 1}, {4}), floats({1})}), "out of range");
  expect_node_error(run_op("ScatterND", {floats({4}), int64s({1, 1}, {0}), floats({2})}), "updates");
}

TEST(IndexingOps, GatherElementsRejectsRankMismatch) {
  expect_node_error(run_op("GatherElements", {floats({2, 2}), int64s({2}, {0, 1})}), "rank");
}

TEST(IndexingOps, OneHotOutOfRangeIndexGivesOffRow) {
  OpRun run = run_op("OneHot", {int64s({2}, {1, 7}), int64s({}, {3}), floats({2})});
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  const Tensor& y = run.outputs[0].tensor();
  ASSERT_EQ(y.shape(), (Shape{2, 3}));
  EXPECT_EQ(y.data<float>()[1], 1.0f);
  for (int i = 3; i < 6; ++i) EXPECT_EQ(y.data<float>()[i], 0.0f);
}

TEST(SortScanOps, TopKRejectsTooLargeK) {
  expect_node_error(run_op("TopK", {floats({3}), int64s({1}, {4})}, {}, 2), "outside");
}

TEST(SortScanOps, TopKBreaksTiesByLowerIndex) {
  Tensor x = Tensor::from_vector<float>(DType::kFloat32, {4}, {1, 2, 2, 0});
  OpRun run = run_op("TopK", {x, int64s({1}, {2})}, {}, 2);
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  EXPECT_EQ(run.outputs[1].tensor().data<int64_t>()[0], 1);
  EXPECT_EQ(run.outputs[1].tensor().data<int64_t>()[1], 2);
}

TEST(SortScanOps, CumSumRejectsBadAxis) {
  expect_node_error(run_op("CumSum", {floats({3}), int64s({}, {2})}), "out of range");
}

TEST(GeneratorOps, RangeRejectsZeroDeltaAndHugeCounts) {
  auto f = [](float v) { return Tensor::scalar<float>(DType::kFloat32, v); };
  expect_node_error(run_op("Range", {f(0), f(10), f(0)}), "delta");
  expect_node_error(run_op("Range", {f(0), f(1e30f), f(1)}), "elements");
}

}  // namespace
}  // namespace kiln
