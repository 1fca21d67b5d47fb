// Bad-input tests for the control-flow, sequence, optional and recurrent kernels: each wrong shape or
// attribute gives a non-OK Status whose message names the node. A few positive checks keep them honest.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "ir/op_registry.h"
#include "kernel_harness.h"

namespace kiln {
namespace {

using OpRun = testing::OpRun;
using testing::int_attr;
using testing::string_attr;

// The subgraph runner echoes its inputs, which is enough for these tests.
OpRun run_op(const std::string& op, std::vector<Value> inputs, std::map<std::string, ir::Attribute> attrs = {},
             size_t num_outputs = 1, int opset = 18) {
  ir::SubgraphRunner echo = [](const ir::Graph&, std::vector<Value> in) -> Result<std::vector<Value>> { return in; };
  return testing::run_kernel("", op, std::move(inputs), std::move(attrs), num_outputs, opset, "test_node", echo);
}

ir::Attribute graph_attr(size_t num_inputs, size_t num_outputs) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kGraph;
  a.g = std::make_shared<ir::Graph>();
  a.g->inputs.resize(num_inputs);
  a.g->outputs.resize(num_outputs);
  return a;
}

Tensor floats(Shape shape) { return Tensor(DType::kFloat32, std::move(shape)); }
Tensor int64_scalar(int64_t v) { return Tensor::scalar<int64_t>(DType::kInt64, v); }

void expect_error_naming_node(const OpRun& run) {
  EXPECT_FALSE(run.status.ok());
  EXPECT_NE(run.status.message().find("test_node"), std::string::npos) << run.status.message();
}

TEST(ControlFlowOps, IfRejectsMultiElementCondition) {
  Tensor cond = Tensor::from_vector<bool>(DType::kBool, {2}, {true, false});
  expect_error_naming_node(run_op("If", {cond}, {{"then_branch", graph_attr(0, 0)}, {"else_branch", graph_attr(0, 0)}}));
}

TEST(ControlFlowOps, LoopRejectsNegativeTripCount) {
  expect_error_naming_node(run_op("Loop", {int64_scalar(-1), Tensor::scalar<bool>(DType::kBool, true)},
                                  {{"body", graph_attr(2, 1)}}));
}

TEST(ControlFlowOps, LoopRejectsUnboundedLoop) {
  expect_error_naming_node(run_op("Loop", {Value::none(), Value::none()}, {{"body", graph_attr(2, 1)}}));
}

TEST(ControlFlowOps, ScanRejectsMismatchedLengths) {
  expect_error_naming_node(
      run_op("Scan", {floats({3, 2}), floats({4, 2})}, {{"body", graph_attr(2, 2)}, {"num_scan_inputs", int_attr(2)}}, 2));
}

TEST(ControlFlowOps, ScanEchoStacksSlices) {
  // With an echoing body, one scan input comes back as a scan output equal to the input.
  Tensor x = Tensor::from_vector<float>(DType::kFloat32, {3, 2}, {1, 2, 3, 4, 5, 6});
  OpRun run = run_op("Scan", {x}, {{"body", graph_attr(1, 1)}, {"num_scan_inputs", int_attr(1)}}, 1);
  ASSERT_TRUE(run.status.ok()) << run.status.to_string();
  ASSERT_TRUE(run.outputs[0].is_tensor());
  EXPECT_EQ(run.outputs[0].tensor().shape(), (Shape{3, 2}));
  EXPECT_EQ(run.outputs[0].tensor().data<float>()[5], 6.0f);
}

TEST(SequenceOps, SequenceAtOutOfRange) {
  Value seq = Value::sequence({floats({2}), floats({3})}, DType::kFloat32);
  expect_error_naming_node(run_op("SequenceAt", {seq, int64_scalar(2)}));
  expect_error_naming_node(run_op("SequenceAt", {seq, int64_scalar(-3)}));
  EXPECT_TRUE(run_op("SequenceAt", {seq, int64_scalar(-2)}).status.ok());
}

TEST(SequenceOps, SequenceInsertWrongDtype) {
  Value seq = Value::sequence({floats({2})}, DType::kFloat32);
  expect_error_naming_node(run_op("SequenceInsert", {seq, int64_scalar(1)}));
}

TEST(SequenceOps, SplitToSequenceBadSplit) {
  Tensor split = Tensor::from_vector<int64_t>(DType::kInt64, {2}, {1, 1});
  expect_error_naming_node(run_op("SplitToSequence", {floats({3, 2}), split}));
  expect_error_naming_node(run_op("SplitToSequence", {floats({3, 2})}, {{"axis", int_attr(2)}}));
}

TEST(SequenceOps, ConcatFromSequenceMismatchedShapes) {
  Value seq = Value::sequence({floats({2, 3}), floats({2, 4})}, DType::kFloat32);
  expect_error_naming_node(run_op("ConcatFromSequence", {seq}, {{"axis", int_attr(0)}}));
  OpRun ok = run_op("ConcatFromSequence", {seq}, {{"axis", int_attr(1)}});
  ASSERT_TRUE(ok.status.ok()) << ok.status.to_string();
  EXPECT_EQ(ok.outputs[0].tensor().shape(), (Shape{2, 7}));
}

TEST(SequenceOps, OptionalGetElementOfEmpty) {
  expect_error_naming_node(run_op("OptionalGetElement", {Value::none()}));
}

TEST(RnnOps, LstmWrongWeightShape) {
  // X [seq 2, batch 1, input 3], hidden 4: W must be [1, 16, 3].
  OpRun run = run_op("LSTM", {floats({2, 1, 3}), floats({1, 16, 2}), floats({1, 16, 4})}, {}, 3);
  expect_error_naming_node(run);
}

TEST(RnnOps, GruBadDirection) {
  OpRun run = run_op("GRU", {floats({2, 1, 3}), floats({1, 12, 3}), floats({1, 12, 4})},
                   {{"direction", string_attr("sideways")}}, 2);
  expect_error_naming_node(run);
}

TEST(RnnOps, RnnSequenceLensOutOfRange) {
  Tensor lens = Tensor::from_vector<int32_t>(DType::kInt32, {1}, {5});
  OpRun run = run_op("RNN", {floats({2, 1, 3}), floats({1, 4, 3}), floats({1, 4, 4}), Value::none(), lens}, {}, 2);
  expect_error_naming_node(run);
}

}  // namespace
}  // namespace kiln
