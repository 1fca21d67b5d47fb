// CUDA comparisons, And/Or/Xor, Not, IsNaN and IsInf (src/backends/cuda/logical.cu) against the CPU reference,
// on fresh random inputs with broadcasting; the check() refusals run without a GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "backends/cuda/layer.h"
#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

// Small integers as floats, so that equal pairs occur often enough to test Equal and the *OrEqual ops.
Tensor coarse_float(const Shape& shape) {
  Tensor t = random_int(DType::kInt64, shape, -3, 3);
  Tensor f(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) f.data<float>()[i] = static_cast<float>(t.data<int64_t>()[i]);
  return f;
}

Tensor random_bool(const Shape& shape) {
  Tensor b = random_int(DType::kInt64, shape, 0, 1);
  Tensor t(DType::kBool, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<bool>()[i] = b.data<int64_t>()[i] != 0;
  return t;
}

TEST(CudaLogical, ComparisonsMatchReference) {
  KILN_SKIP_WITHOUT_GPU();
  const std::pair<Shape, Shape> shapes[] = {{{4, 33}, {4, 33}}, {{2, 3, 17}, {17}}, {{2, 1, 5}, {1, 4, 1}}, {{7}, {}}};
  for (const char* op : {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}) {
    for (const auto& [a, b] : shapes) {
      LayerCase c;
      c.op = op;
      c.inputs = {Value(coarse_float(a)), Value(coarse_float(b))};
      expect_layer_matches_reference(c);
      c.inputs = {Value(random_int(DType::kInt64, a, -3, 3)), Value(random_int(DType::kInt64, b, -3, 3))};
      expect_layer_matches_reference(c);
      c.inputs = {Value(random_int(DType::kInt32, a, -3, 3)), Value(random_int(DType::kInt32, b, -3, 3))};
      expect_layer_matches_reference(c);
    }
  }
  // Half types are compared exactly after widening.
  LayerCase c;
  c.op = "Less";
  c.inputs = {Value(coarse_float({8, 9})), Value(coarse_float({9}))};
  c.precision = DType::kFloat16;
  expect_layer_matches_reference(c);
  c.precision = DType::kBFloat16;
  expect_layer_matches_reference(c);
}

TEST(CudaLogical, LogicalOpsAndNotMatchReference) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : {"And", "Or", "Xor"}) {
    LayerCase c;
    c.op = op;
    c.inputs = {Value(random_bool({2, 1, 16, 16})), Value(random_bool({2, 1, 1, 16}))};
    expect_layer_matches_reference(c);
  }
  LayerCase c;
  c.op = "Not";
  c.inputs = {Value(random_bool({3, 77}))};
  expect_layer_matches_reference(c);
}

TEST(CudaLogical, IsNaNAndIsInfMatchReference) {
  KILN_SKIP_WITHOUT_GPU();
  Tensor x = random_float({5, 41}, 0.1f, 10.0f);
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < x.numel(); i += 7) x.data<float>()[i] = std::nanf("");
  for (int64_t i = 3; i < x.numel(); i += 11) x.data<float>()[i] = i % 2 ? inf : -inf;
  for (DType p : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    LayerCase c;
    c.op = "IsNaN";
    c.inputs = {Value(x)};
    c.precision = p;
    expect_layer_matches_reference(c);
    c.op = "IsInf";
    expect_layer_matches_reference(c);
    c.attrs["detect_negative"] = ir::Attribute();
    c.attrs["detect_negative"].type = ir::Attribute::Type::kInt;
    c.attrs["detect_negative"].i = 0;
    expect_layer_matches_reference(c);
  }
}

TEST(CudaLogical, CastToAndFromBoolMatchesReference) {
  KILN_SKIP_WITHOUT_GPU();
  auto to = [](DType t) {
    ir::Attribute a;
    a.type = ir::Attribute::Type::kInt;
    a.i = static_cast<int64_t>(t);
    return a;
  };
  LayerCase c;
  c.op = "Cast";
  c.attrs["to"] = to(DType::kBool);
  c.inputs = {Value(random_int(DType::kInt64, {2, 130}, -2, 2))};  // BERT's attention mask, made bool
  expect_layer_matches_reference(c);
  c.inputs = {Value(coarse_float({2, 130}))};
  expect_layer_matches_reference(c);
  for (DType t : {DType::kFloat32, DType::kInt64, DType::kInt32}) {
    c.attrs["to"] = to(t);
    c.inputs = {Value(random_bool({3, 50}))};
    expect_layer_matches_reference(c);
  }
}

TEST(CudaLogical, CheckRefusesWhatItCannotRun) {
  const cuda::LayerKind* eq = cuda::layer_table().find("Equal");
  const cuda::LayerKind* and_op = cuda::layer_table().find("And");
  const cuda::LayerKind* is_nan = cuda::layer_table().find("IsNaN");
  ASSERT_NE(eq, nullptr);
  ASSERT_NE(and_op, nullptr);
  ASSERT_NE(is_nan, nullptr);
  ir::Node node;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = 17;
  auto desc = [](DType t, Shape s) {
    cuda::TensorDesc d;
    d.dtype = t;
    d.has_rank = true;
    d.shape = std::move(s);
    return d;
  };
  node.op_type = "Equal";
  spec.inputs = {desc(DType::kFloat32, {2}), desc(DType::kInt64, {2})};
  EXPECT_NE(eq->check(spec).find("inputs are float32 and int64"), std::string::npos) << eq->check(spec);
  spec.inputs = {desc(DType::kString, {2}), desc(DType::kString, {2})};
  EXPECT_FALSE(eq->check(spec).empty());
  node.op_type = "And";
  spec.inputs = {desc(DType::kInt64, {2}), desc(DType::kInt64, {2})};
  EXPECT_NE(and_op->check(spec).find("takes bool inputs"), std::string::npos) << and_op->check(spec);
  node.op_type = "IsNaN";
  spec.inputs = {desc(DType::kInt64, {2})};
  EXPECT_FALSE(is_nan->check(spec).empty());
  spec.inputs = {desc(DType::kFloat16, {2})};
  EXPECT_EQ(is_nan->check(spec), "");
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
