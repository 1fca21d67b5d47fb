// The CUDA layer of kiln.ChannelsLastPool against its CPU reference: every mode in float32, float16 and
// bfloat16, with C = 64 (16-byte vectors along C) and C = 3 (one channel a thread), ResNet-50's stem pool
// (3x3, stride 2, pad 1 on [2, 112, 112, 64]) and its global average on [2, 7, 7, 2048]; pads, dilations,
// ceil_mode and count_include_pad. The refusals of check() need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <limits>

#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const DType kFloatTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

using Attrs = std::map<std::string, ir::Attribute>;

void expect_pool(const std::string& mode, const Shape& nhwc, Attrs attrs, DType precision) {
  SCOPED_TRACE(mode + " " + dtype_name(precision) + shape_to_string(nhwc));
  LayerCase c;
  c.op = "ChannelsLastPool";
  c.domain = "kiln";
  c.opset = 1;
  c.inputs = {random_float(nhwc, 0.1f, 4.0f)};
  attrs["mode"] = string_attr(mode);
  c.attrs = std::move(attrs);
  c.precision = precision;
  expect_layer_matches_reference(c);
}

Attrs resnet_stem_pool() {
  return {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}};
}

TEST(CudaChannelsLastPool, ResNetStemMaxPool) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) expect_pool("max", {2, 112, 112, 64}, resnet_stem_pool(), p);
}

TEST(CudaChannelsLastPool, ResNetGlobalAverage) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) expect_pool("global_average", {2, 7, 7, 2048}, {}, p);
}

TEST(CudaChannelsLastPool, WindowedPoolsWideAndOddChannels) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<Attrs> windows = {
      resnet_stem_pool(),
      {{"kernel_shape", ints_attr({3, 2})}, {"strides", ints_attr({2, 3})}, {"pads", ints_attr({0, 1, 2, 0})},
       {"dilations", ints_attr({2, 1})}, {"ceil_mode", int_attr(1)}},
      {{"kernel_shape", ints_attr({2, 3})}, {"strides", ints_attr({3, 2})}, {"pads", ints_attr({1, 0, 1, 2})},
       {"ceil_mode", int_attr(1)}},
      {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})}, {"auto_pad", string_attr("SAME_UPPER")}},
      {{"kernel_shape", ints_attr({2, 2})}, {"pads", ints_attr({2, 2, 2, 2})}},  // windows of padding only
  };
  for (int64_t c : {64, 3})
    for (DType p : kFloatTypes)
      for (const Attrs& w : windows) {
        expect_pool("max", {2, 13, 11, c}, w, p);
        for (int64_t include_pad : {0, 1}) {
          Attrs a = w;
          a["count_include_pad"] = int_attr(include_pad);
          expect_pool("average", {2, 13, 11, c}, a, p);
        }
      }
}

// 3x3 max windows at their edges: windows of padding only (-inf), ceil_mode's last windows, strides 1 to 3,
// and NaN inputs (which never win, as in the reference).
TEST(CudaChannelsLastPool, ThreeByThreeMaxEdgesAndNaN) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<Attrs> windows = {
      {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({3, 3})}, {"pads", ints_attr({3, 3, 3, 3})}},
      {{"kernel_shape", ints_attr({3, 3})}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({0, 1, 2, 0})},
       {"ceil_mode", int_attr(1)}},
      {{"kernel_shape", ints_attr({3, 3})}},
  };
  for (int64_t c : {64, 3})
    for (DType p : kFloatTypes)
      for (const Attrs& w : windows) {
        SCOPED_TRACE(dtype_name(p) + " C" + std::to_string(c));
        LayerCase lc;
        lc.op = "ChannelsLastPool";
        lc.domain = "kiln";
        lc.opset = 1;
        Tensor x = random_float({2, 13, 11, c}, 0.1f, 4.0f);
        for (int64_t i = 0; i < x.numel(); i += 37) x.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
        lc.inputs = {x};
        lc.attrs = w;
        lc.attrs["mode"] = string_attr("max");
        lc.precision = p;
        expect_layer_matches_reference(lc);
      }
}

TEST(CudaChannelsLastPool, GlobalPoolsWideAndOddChannels) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t c : {64, 3})
    for (DType p : kFloatTypes)
      for (const char* mode : {"global_average", "global_max"}) {
        expect_pool(mode, {2, 7, 7, c}, {}, p);
        expect_pool(mode, {3, 40, 33, c}, {}, p);  // more positions than threads of a block
      }
}

TEST(CudaChannelsLastPool, CheckRefusals) {
  const ir::Attribute max = string_attr("max");
  const Attrs window = {{"mode", max}, {"kernel_shape", ints_attr({3, 3})}};
  const std::string op = "kiln.ChannelsLastPool";
  EXPECT_EQ(check_of(op, {desc(DType::kFloat16, {2, 8, 8, 64})}, {desc(DType::kFloat16, {2, 6, 6, 64})}, window), "");
  EXPECT_NE(check_of(op, {desc(DType::kInt32, {2, 8, 8, 64})}, {desc(DType::kInt32, {2, 6, 6, 64})}, window)
                .find("float32, float16 and bfloat16"),
            std::string::npos);
  EXPECT_NE(check_of(op, {desc(DType::kFloat16, {8, 8, 64})}, {desc(DType::kFloat16, {6, 6, 64})}, window).find("rank 4"),
            std::string::npos);
  EXPECT_NE(check_of(op, {desc(DType::kFloat16, {2, 8, 8, 64})}, {desc(DType::kFloat16, {2, 8, 8, 64})},
                     {{"mode", string_attr("median")}})
                .find("median"),
            std::string::npos);
  EXPECT_NE(check_of(op, {desc(DType::kFloat16, {2, 8, 8, 64})}, {desc(DType::kFloat16, {2, 8, 8, 64})}, {{"mode", max}})
                .find("kernel_shape"),
            std::string::npos);
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
