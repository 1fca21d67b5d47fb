// The CUDA pooling layers (MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool) against the CPU
// reference: ResNet's stem pool, ceil_mode, asymmetric pads, dilations, auto_pad, 1-D and 3-D windows,
// count_include_pad, MaxPool's Indices in both storage orders, integer MaxPool, and the global pools on
// small and large planes; in float32, float16 and bfloat16. The refusals of check() need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const DType kFloatTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

using Attrs = std::map<std::string, ir::Attribute>;

LayerCase pool_case(const std::string& op, const Shape& shape, Attrs attrs, DType precision = DType::kFloat32,
                    size_t num_outputs = 1) {
  LayerCase c;
  c.op = op;
  c.inputs = {random_float(shape, 0.1f, 4.0f)};
  c.attrs = std::move(attrs);
  c.precision = precision;
  c.num_outputs = num_outputs;
  return c;
}

// Integers of `dtype` (int8, uint8, int32, int64) in [lo, hi].
Tensor random_integers(DType dtype, const Shape& shape, int64_t lo, int64_t hi) {
  const Tensor wide = random_int(DType::kInt64, shape, lo, hi);
  Tensor t(dtype, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t v = wide.data<int64_t>()[i];
    switch (dtype) {
      case DType::kInt8: t.data<int8_t>()[i] = static_cast<int8_t>(v); break;
      case DType::kUInt8: t.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
      case DType::kInt32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
      default: t.data<int64_t>()[i] = v; break;
    }
  }
  return t;
}

TEST(CudaPool, MaxPoolResNetStem) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) {
    SCOPED_TRACE(dtype_name(p));
    expect_layer_matches_reference(pool_case(
        "MaxPool", {2, 64, 112, 112},
        {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}}, p));
  }
  // With the Indices output.
  expect_layer_matches_reference(pool_case(
      "MaxPool", {2, 8, 37, 41},
      {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}},
      DType::kFloat32, 2));
}

TEST(CudaPool, MaxPoolCeilModeAndStorageOrder) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t order : {0, 1}) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(dtype_name(p) + " storage_order " + std::to_string(order));
      expect_layer_matches_reference(pool_case("MaxPool", {1, 3, 10, 11},
                                               {{"kernel_shape", ints_attr({3, 3})},
                                                {"strides", ints_attr({2, 2})},
                                                {"ceil_mode", int_attr(1)},
                                                {"storage_order", int_attr(order)}},
                                               p, 2));
      expect_layer_matches_reference(pool_case("MaxPool", {2, 3, 9, 6},
                                               {{"kernel_shape", ints_attr({2, 3})},
                                                {"strides", ints_attr({3, 2})},
                                                {"pads", ints_attr({1, 0, 1, 2})},
                                                {"ceil_mode", int_attr(1)},
                                                {"storage_order", int_attr(order)}},
                                               p, 2));
    }
  }
}

TEST(CudaPool, MaxPoolAsymmetricPadsAndDilations) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) {
    SCOPED_TRACE(dtype_name(p));
    expect_layer_matches_reference(pool_case("MaxPool", {2, 5, 13, 9},
                                             {{"kernel_shape", ints_attr({3, 2})},
                                              {"strides", ints_attr({1, 2})},
                                              {"pads", ints_attr({0, 1, 2, 0})},
                                              {"dilations", ints_attr({2, 1})}},
                                             p, 2));
    expect_layer_matches_reference(pool_case("MaxPool", {1, 1, 17, 19},
                                             {{"kernel_shape", ints_attr({3, 3})},
                                              {"strides", ints_attr({2, 3})},
                                              {"pads", ints_attr({2, 1, 1, 2})},
                                              {"dilations", ints_attr({3, 2})},
                                              {"ceil_mode", int_attr(1)}},
                                             p, 2));
  }
}

// Pads as large as the window make windows that hold only padding: -inf, index 0 (as the reference).
TEST(CudaPool, MaxPoolWindowsOfPaddingOnly) {
  KILN_SKIP_WITHOUT_GPU();
  expect_layer_matches_reference(pool_case(
      "MaxPool", {1, 2, 3, 3}, {{"kernel_shape", ints_attr({2, 2})}, {"pads", ints_attr({2, 2, 2, 2})}},
      DType::kFloat32, 2));
}

TEST(CudaPool, MaxPool1DAnd3D) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) {
    SCOPED_TRACE(dtype_name(p));
    expect_layer_matches_reference(pool_case(
        "MaxPool", {3, 5, 17}, {{"kernel_shape", ints_attr({4})}, {"strides", ints_attr({3})}, {"pads", ints_attr({2, 1})}},
        p, 2));
    expect_layer_matches_reference(pool_case("MaxPool", {1, 1, 1},
                                             {{"kernel_shape", ints_attr({1})}}, p, 2));
    expect_layer_matches_reference(pool_case("MaxPool", {2, 3, 5, 6, 7},
                                             {{"kernel_shape", ints_attr({2, 3, 2})},
                                              {"strides", ints_attr({1, 2, 2})},
                                              {"pads", ints_attr({1, 0, 1, 0, 1, 1})},
                                              {"dilations", ints_attr({2, 1, 1})}},
                                             p, 2));
    for (int64_t order : {0, 1}) {
      expect_layer_matches_reference(pool_case("MaxPool", {1, 2, 4, 5, 6},
                                               {{"kernel_shape", ints_attr({2, 2, 3})},
                                                {"strides", ints_attr({2, 2, 2})},
                                                {"ceil_mode", int_attr(1)},
                                                {"storage_order", int_attr(order)}},
                                               p, 2));
    }
  }
}

TEST(CudaPool, MaxPoolAutoPad) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER", "VALID"}) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(std::string(mode) + " " + dtype_name(p));
      expect_layer_matches_reference(pool_case("MaxPool", {2, 3, 11, 8},
                                               {{"kernel_shape", ints_attr({4, 3})},
                                                {"strides", ints_attr({2, 3})},
                                                {"auto_pad", string_attr(mode)}},
                                               p, 2));
    }
  }
}

TEST(CudaPool, MaxPoolIntegers) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType dt : {DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64}) {
    SCOPED_TRACE(dtype_name(dt));
    const bool is_unsigned = dt == DType::kUInt8;
    LayerCase c;
    c.op = "MaxPool";
    c.inputs = {random_integers(dt, {2, 3, 9, 10}, is_unsigned ? 0 : -128, is_unsigned ? 255 : 127)};
    c.attrs = {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 0, 1, 1})},
               {"ceil_mode", int_attr(1)}};
    c.num_outputs = 2;
    expect_layer_matches_reference(c);
    // Integer windows of padding only: the type's lowest value.
    c.inputs = {random_integers(dt, {1, 2, 3, 3}, is_unsigned ? 0 : -128, is_unsigned ? 255 : 127)};
    c.attrs = {{"kernel_shape", ints_attr({2, 2})}, {"pads", ints_attr({2, 2, 2, 2})}};
    expect_layer_matches_reference(c);
  }
}

TEST(CudaPool, AveragePoolCountIncludePad) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t include : {0, 1}) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(dtype_name(p) + " count_include_pad " + std::to_string(include));
      expect_layer_matches_reference(pool_case("AveragePool", {2, 64, 56, 56},
                                               {{"kernel_shape", ints_attr({3, 3})},
                                                {"strides", ints_attr({2, 2})},
                                                {"pads", ints_attr({1, 1, 1, 1})},
                                                {"count_include_pad", int_attr(include)}},
                                               p));
      // Asymmetric pads with ceil_mode: the extra window past the end padding counts only what it covers.
      expect_layer_matches_reference(pool_case("AveragePool", {1, 3, 10, 13},
                                               {{"kernel_shape", ints_attr({3, 4})},
                                                {"strides", ints_attr({2, 3})},
                                                {"pads", ints_attr({1, 0, 0, 2})},
                                                {"ceil_mode", int_attr(1)},
                                                {"count_include_pad", int_attr(include)}},
                                               p));
      expect_layer_matches_reference(pool_case("AveragePool", {1, 2, 7, 7},
                                               {{"kernel_shape", ints_attr({3, 3})},
                                                {"auto_pad", string_attr("SAME_UPPER")},
                                                {"count_include_pad", int_attr(include)}},
                                               p));
      // Windows of padding only average to 0.
      expect_layer_matches_reference(pool_case(
          "AveragePool", {1, 2, 3, 3},
          {{"kernel_shape", ints_attr({2, 2})}, {"pads", ints_attr({2, 2, 2, 2})}, {"count_include_pad", int_attr(include)}},
          p));
    }
  }
}

TEST(CudaPool, AveragePoolDilations1DAnd3D) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) {
    SCOPED_TRACE(dtype_name(p));
    LayerCase c = pool_case("AveragePool", {2, 3, 15, 11},
                            {{"kernel_shape", ints_attr({3, 2})},
                             {"strides", ints_attr({2, 1})},
                             {"pads", ints_attr({2, 1, 1, 0})},
                             {"dilations", ints_attr({2, 3})},
                             {"count_include_pad", int_attr(1)}},
                            p);
    c.opset = 19;
    expect_layer_matches_reference(c);
    expect_layer_matches_reference(pool_case(
        "AveragePool", {3, 4, 23}, {{"kernel_shape", ints_attr({5})}, {"strides", ints_attr({4})}, {"pads", ints_attr({0, 3})}},
        p));
    expect_layer_matches_reference(pool_case("AveragePool", {1, 2, 6, 5, 7},
                                             {{"kernel_shape", ints_attr({3, 2, 3})},
                                              {"strides", ints_attr({2, 2, 2})},
                                              {"pads", ints_attr({1, 1, 0, 1, 0, 2})},
                                              {"ceil_mode", int_attr(1)},
                                              {"count_include_pad", int_attr(1)}},
                                             p));
  }
}

TEST(CudaPool, GlobalPools) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {
      {4, 2048, 7, 7},   // ResNet's head: one warp per plane
      {2, 3, 56, 57},    // planes past the warp limit, rows not 16-byte aligned
      {2, 4, 64, 64},    // planes past the warp limit, 16-byte loads
      {3, 5, 9},         // 1-D
      {1, 3, 4, 5, 6},   // 3-D
      {2, 7, 1, 1},      // nothing to reduce
      {5, 3},            // rank 2: no spatial dims
  };
  for (const char* op : {"GlobalAveragePool", "GlobalMaxPool"}) {
    for (const Shape& s : shapes) {
      for (DType p : kFloatTypes) {
        SCOPED_TRACE(std::string(op) + " " + shape_to_string(s) + " " + dtype_name(p));
        expect_layer_matches_reference(pool_case(op, s, {}, p));
      }
    }
  }
}

// --- check() refusals: no GPU needed ---

std::string check_of(const std::string& op, Attrs attrs, const std::vector<cuda::TensorDesc>& inputs,
                     const std::vector<cuda::TensorDesc>& outputs, int opset = 21) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  EXPECT_NE(kind, nullptr) << op;
  if (kind == nullptr) return "no layer";
  ir::Node node;
  node.name = "n";
  node.op_type = op;
  node.attributes = std::move(attrs);
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = opset;
  spec.inputs = inputs;
  spec.outputs = outputs;
  return kind->check(spec);
}

cuda::TensorDesc desc(DType dt, Shape shape) {
  cuda::TensorDesc d;
  d.dtype = dt;
  d.has_rank = true;
  d.shape = std::move(shape);
  return d;
}

TEST(CudaPoolCheck, AcceptsWhatItRuns) {
  EXPECT_EQ(check_of("MaxPool", {{"kernel_shape", ints_attr({3, 3})}}, {desc(DType::kFloat16, {-1, 64, -1, -1})},
                     {desc(DType::kFloat16, {-1, 64, -1, -1}), desc(DType::kInt64, {-1, 64, -1, -1})}),
            "");
  EXPECT_EQ(check_of("MaxPool", {{"kernel_shape", ints_attr({2})}}, {desc(DType::kInt8, {1, 2, 8})},
                     {desc(DType::kInt8, {1, 2, 7})}),
            "");
  cuda::TensorDesc unranked;
  unranked.dtype = DType::kBFloat16;
  EXPECT_EQ(check_of("AveragePool", {{"kernel_shape", ints_attr({2, 2, 2})}}, {unranked}, {unranked}), "");
  EXPECT_EQ(check_of("GlobalAveragePool", {}, {desc(DType::kFloat32, {-1, 2048, 7, 7})},
                     {desc(DType::kFloat32, {-1, 2048, 1, 1})}),
            "");
}

TEST(CudaPoolCheck, RefusesWhatItDoesNotRun) {
  const std::string four_d = check_of("MaxPool", {{"kernel_shape", ints_attr({2, 2, 2, 2})}},
                                      {desc(DType::kFloat32, {1, 1, 4, 4, 4, 4})}, {desc(DType::kFloat32, {})});
  EXPECT_NE(four_d.find("4-D windows are not implemented"), std::string::npos) << four_d;
  const std::string int_avg = check_of("AveragePool", {{"kernel_shape", ints_attr({2, 2})}},
                                       {desc(DType::kInt32, {1, 1, 4, 4})}, {desc(DType::kInt32, {1, 1, 3, 3})});
  EXPECT_NE(int_avg.find("int32"), std::string::npos) << int_avg;
  const std::string f64 = check_of("MaxPool", {{"kernel_shape", ints_attr({2, 2})}},
                                   {desc(DType::kFloat64, {1, 1, 4, 4})}, {desc(DType::kFloat64, {1, 1, 3, 3})});
  EXPECT_NE(f64.find("float64"), std::string::npos) << f64;
  const std::string order = check_of("MaxPool", {{"kernel_shape", ints_attr({2, 2})}, {"storage_order", int_attr(2)}},
                                     {desc(DType::kFloat32, {1, 1, 4, 4})}, {desc(DType::kFloat32, {1, 1, 3, 3})});
  EXPECT_NE(order.find("storage_order"), std::string::npos) << order;
  const std::string pad = check_of("MaxPool", {{"kernel_shape", ints_attr({2, 2})}, {"auto_pad", string_attr("SAME")}},
                                   {desc(DType::kFloat32, {1, 1, 4, 4})}, {desc(DType::kFloat32, {1, 1, 4, 4})});
  EXPECT_NE(pad.find("auto_pad 'SAME'"), std::string::npos) << pad;
  const std::string rank = check_of("MaxPool", {{"kernel_shape", ints_attr({2, 2})}}, {desc(DType::kFloat32, {1, 4, 4})},
                                    {desc(DType::kFloat32, {1, 3, 3})});
  EXPECT_NE(rank.find("rank 3"), std::string::npos) << rank;
  const std::string no_kernel = check_of("AveragePool", {}, {desc(DType::kFloat32, {1, 1, 4, 4})},
                                         {desc(DType::kFloat32, {1, 1, 4, 4})});
  EXPECT_NE(no_kernel.find("kernel_shape"), std::string::npos) << no_kernel;
  const std::string global_int = check_of("GlobalMaxPool", {}, {desc(DType::kInt64, {1, 3, 4, 4})},
                                          {desc(DType::kInt64, {1, 3, 1, 1})});
  EXPECT_NE(global_int.find("int64"), std::string::npos) << global_int;
  const std::string global_rank = check_of("GlobalAveragePool", {}, {desc(DType::kFloat32, {7})}, {desc(DType::kFloat32, {7})});
  EXPECT_NE(global_rank.find("rank >= 2"), std::string::npos) << global_rank;
  EXPECT_EQ(cuda::layer_table().find("LpPool"), nullptr);
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
