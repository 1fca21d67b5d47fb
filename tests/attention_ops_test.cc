// Bad-input tests for the attention, loss, string, ai.onnx.ml, training and misc kernels: each wrong
// shape or attribute gives a non-OK Status whose message names the node. A few positive checks too.
#include <gtest/gtest.h>

#include <cmath>
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
using testing::string_attr;

OpRun run_op(const std::string& domain, const std::string& op, std::vector<Value> inputs,
             std::map<std::string, ir::Attribute> attrs = {}, size_t num_outputs = 1, int opset = 24) {
  return testing::run_kernel(domain, op, std::move(inputs), std::move(attrs), num_outputs, opset, "test_node");
}

Tensor floats(Shape shape) { return Tensor(DType::kFloat32, std::move(shape)); }
Tensor strings(std::vector<std::string> v) {
  Tensor t(DType::kString, {static_cast<int64_t>(v.size())});
  for (size_t i = 0; i < v.size(); ++i) t.strings()[i] = v[i];
  return t;
}

void expect_error_naming_node(const OpRun& run) {
  EXPECT_FALSE(run.status.ok());
  EXPECT_NE(run.status.message().find("test_node"), std::string::npos) << run.status.message();
}

TEST(AttentionOps, AttentionRejectsMismatchedHeadSizes) {
  expect_error_naming_node(run_op("", "Attention", {floats({1, 2, 3, 8}), floats({1, 2, 4, 6}), floats({1, 2, 4, 8})}));
}

TEST(AttentionOps, AttentionRejectsNonDivisibleGqa) {
  expect_error_naming_node(run_op("", "Attention", {floats({1, 3, 3, 8}), floats({1, 2, 4, 8}), floats({1, 2, 4, 8})}));
}

TEST(AttentionOps, Attention3dNeedsHeadCounts) {
  expect_error_naming_node(run_op("", "Attention", {floats({1, 3, 8}), floats({1, 4, 8}), floats({1, 4, 8})}));
}

TEST(AttentionOps, AttentionRejectsTooLongMask) {
  expect_error_naming_node(
      run_op("", "Attention", {floats({1, 1, 2, 4}), floats({1, 1, 3, 4}), floats({1, 1, 3, 4}), floats({2, 5})}));
}

TEST(AttentionOps, AttentionUniformWhenScoresEqual) {
  // Q = 0 gives equal scores: Y is the mean of V's rows.
  Tensor v = Tensor::from_vector<float>(DType::kFloat32, {1, 1, 2, 1}, {1.0f, 3.0f});
  OpRun run = run_op("", "Attention", {floats({1, 1, 1, 2}), floats({1, 1, 2, 2}), v});
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_FLOAT_EQ(run.outputs[0].tensor().data<float>()[0], 2.0f);
}

TEST(AttentionOps, RotaryEmbeddingRejectsPositionOutOfRange) {
  Tensor pos = Tensor::from_vector<int64_t>(DType::kInt64, {1, 1}, {7});
  expect_error_naming_node(run_op("", "RotaryEmbedding", {floats({1, 1, 1, 4}), floats({4, 2}), floats({4, 2}), pos}));
}

TEST(AttentionOps, LinearAttentionRejectsMissingDecay) {
  expect_error_naming_node(run_op("", "LinearAttention", {floats({1, 2, 4}), floats({1, 2, 4}), floats({1, 2, 4})},
                                  {{"q_num_heads", int_attr(1)}, {"kv_num_heads", int_attr(1)}}, 2));
}

TEST(AttentionOps, NllLossRejectsTargetOutOfRange) {
  Tensor target = Tensor::from_vector<int64_t>(DType::kInt64, {2}, {0, 5});
  expect_error_naming_node(run_op("", "NegativeLogLikelihoodLoss", {floats({2, 3}), target}));
}

TEST(AttentionOps, SoftmaxCrossEntropyRejectsBadReduction) {
  Tensor target = Tensor::from_vector<int64_t>(DType::kInt64, {2}, {0, 1});
  expect_error_naming_node(run_op("", "SoftmaxCrossEntropyLoss", {floats({2, 3}), target}, {{"reduction", string_attr("avg")}}));
}

TEST(AttentionOps, RegexFullMatchRejectsInvalidPattern) {
  expect_error_naming_node(run_op("", "RegexFullMatch", {strings({"abc"})}, {{"pattern", string_attr("(unclosed")}}));
}

TEST(AttentionOps, StringSplitWhitespace) {
  OpRun run = run_op("", "StringSplit", {strings({"  a b  c "})}, {}, 2);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_EQ(run.outputs[0].tensor().shape(), (Shape{1, 3}));
  EXPECT_EQ(run.outputs[0].tensor().strings()[2], "c");
}

TEST(AttentionOps, TfIdfRejectsBadMode) {
  Tensor x = Tensor::from_vector<int64_t>(DType::kInt64, {3}, {1, 2, 3});
  expect_error_naming_node(run_op("", "TfIdfVectorizer", {x},
                                  {{"mode", string_attr("XX")}, {"min_gram_length", int_attr(1)}, {"max_gram_length", int_attr(1)},
                                   {"ngram_counts", ints_attr({0})}, {"ngram_indexes", ints_attr({0})}, {"pool_int64s", ints_attr({1})}}));
}

TEST(AttentionOps, ArrayFeatureExtractorRejectsIndexOutOfRange) {
  Tensor idx = Tensor::from_vector<int64_t>(DType::kInt64, {1}, {4});
  expect_error_naming_node(run_op("ai.onnx.ml", "ArrayFeatureExtractor", {floats({2, 3}), idx}));
}

TEST(AttentionOps, MomentumRejectsMismatchedShapes) {
  Tensor r = Tensor::scalar<float>(DType::kFloat32, 0.1f);
  Tensor t = Tensor::scalar<int64_t>(DType::kInt64, 0);
  ir::Attribute f;
  f.type = ir::Attribute::Type::kFloat;
  f.f = 0.9f;
  expect_error_naming_node(run_op("ai.onnx.preview.training", "Momentum", {r, t, floats({2}), floats({3}), floats({2})},
                                  {{"alpha", f}, {"beta", f}, {"norm_coefficient", f}, {"mode", string_attr("standard")}}, 2));
}

TEST(AttentionOps, SwiGLURejectsShapeMismatch) {
  expect_error_naming_node(run_op("", "SwiGLU", {floats({2, 4}), floats({2, 3})}));
}

TEST(AttentionOps, CausalConvRejectsBadPastState) {
  expect_error_naming_node(run_op("", "CausalConvWithState", {floats({1, 2, 5}), floats({2, 1, 3}), Value(), floats({1, 2, 1})}, {}, 2));
}

TEST(AttentionOps, ImageDecoderRejectsTruncatedImages) {
  // A PNG signature and an IHDR with no image data, a BMP header cut short, and a PNM missing pixels.
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                              0, 0, 0, 4, 0, 0, 0, 4, 8, 2, 0, 0, 0, 0, 0, 0, 0};
  std::vector<uint8_t> bmp = {'B', 'M', 1, 2, 3};
  std::vector<uint8_t> pnm = {'P', '6', '\n', '4', ' ', '4', '\n', '2', '5', '5', '\n', 1, 2, 3};
  for (const auto& bytes : {png, bmp, pnm}) {
    Tensor t = Tensor::from_vector<uint8_t>(DType::kUInt8, {static_cast<int64_t>(bytes.size())}, bytes);
    expect_error_naming_node(run_op("", "ImageDecoder", {t}));
  }
}

}  // namespace
}  // namespace kiln
