// The CUDA layer of kiln.Relayout (src/backends/cuda/relayout.cu) against its CPU reference, bit for bit (both
// convert through float32 with round-to-nearest-even): both tactics on ResNet-50's input at batch 2 (float32
// NCHW to float16 or bfloat16 NHWC, channels padded 3 -> 8), odd sizes through partial tiles and every store
// width of the channels-last tactic, float16 to float32, ranks 3 and 5, general perms and pads through the gather
// tactic; the time of both tactics at batch 256 (printed, for the GPU round); check()'s refusals and the tactic
// lists, which need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

const char* const kOp = "kiln.Relayout";
const char* const kChannelsLast = "cuda.relayout.channels_last";
const char* const kGather = "cuda.relayout.gather";

Attrs relayout_attrs(std::vector<int64_t> perm, DType to, std::vector<int64_t> pads) {
  return {{"perm", ints_attr(std::move(perm))}, {"to", int_attr(static_cast<int64_t>(to))}, {"pads", ints_attr(std::move(pads))}};
}

LayerCase relayout_case(const Tensor& x, Attrs attrs) {
  LayerCase c;
  c.op = "Relayout";
  c.domain = "kiln";
  c.opset = 1;
  c.inputs = {Value(x)};
  c.attrs = std::move(attrs);
  return c;
}

// The layer's tactics for the case (the spec of its shapes).
std::vector<std::string> tactics_of(const LayerCase& c, const Tensor& want) {
  const cuda::LayerKind* kind = cuda::layer_table().find(kOp);
  if (kind == nullptr) return {};
  ir::Node node;
  const cuda::LayerSpec spec = detail::case_spec(c, c.inputs, {want}, &node);
  return kind->tactics(spec);
}

// X of `shape` in `from` through every tactic the layer lists, equal to the reference element for element.
// `channels_last`: whether that tactic must be among them.
void expect_relayout(const Shape& shape, DType from, std::vector<int64_t> perm, DType to, std::vector<int64_t> pads,
                     bool channels_last) {
  SCOPED_TRACE(dtype_name(from) + shape_to_string(shape) + " perm " + shape_to_string(perm) + " -> " + dtype_name(to) +
               " pads " + shape_to_string(pads));
  Tensor x = random_float(shape, 0.05f, 4.0f);
  if (from != DType::kFloat32) x = cast_tensor(x, from).value();
  const LayerCase c = relayout_case(x, relayout_attrs(std::move(perm), to, std::move(pads)));
  OpRun ref = run_kernel("kiln", "Relayout", c.inputs, c.attrs, 1, 1, "reference");
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  const Tensor want = ref.outputs[0].tensor();
  const std::vector<std::string> tactics = tactics_of(c, want);
  EXPECT_EQ(std::count(tactics.begin(), tactics.end(), kChannelsLast), channels_last ? 1 : 0);
  EXPECT_EQ(std::count(tactics.begin(), tactics.end(), kGather), 1);
  for (const std::string& tactic : tactics) {
    auto got = run_cuda_layer(c, c.inputs, {want}, tactic);
    ASSERT_TRUE(got.ok()) << tactic << ": " << got.status().to_string();
    ASSERT_EQ(got->size(), 1u);
    ASSERT_EQ((*got)[0].dtype(), to);
    detail::compare((*got)[0], want, 0.0, 0.0, tactic);
  }
}

const std::vector<int64_t> kToNhwc = {0, 2, 3, 1};
std::vector<int64_t> channel_pad(int64_t extra) { return {0, 0, 0, 0, 0, 0, 0, extra}; }

TEST(CudaRelayout, ResNetInputAtBatch2) {
  KILN_SKIP_WITHOUT_GPU();
  expect_relayout({2, 3, 224, 224}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(5), true);
  expect_relayout({2, 3, 224, 224}, DType::kFloat32, kToNhwc, DType::kBFloat16, channel_pad(5), true);
}

TEST(CudaRelayout, ChannelsLastOddSizesAndStoreWidths) {
  KILN_SKIP_WITHOUT_GPU();
  // Fewer positions than a tile, several tiles with a partial last one, one position.
  expect_relayout({3, 3, 13, 17}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(5), true);
  expect_relayout({1, 3, 37, 29}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(5), true);
  expect_relayout({5, 3, 1, 1}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(5), true);
  // 8-byte pixels (4 float16, 2 float32 channels), 16-byte float32 pixels, and element stores (7 channels,
  // 3 without a pad, 16 float16 = 32 bytes).
  expect_relayout({2, 3, 19, 23}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(1), true);
  expect_relayout({2, 1, 19, 23}, DType::kFloat16, kToNhwc, DType::kFloat32, channel_pad(1), true);
  expect_relayout({2, 3, 19, 23}, DType::kFloat16, kToNhwc, DType::kFloat32, channel_pad(1), true);
  expect_relayout({2, 5, 19, 23}, DType::kBFloat16, kToNhwc, DType::kFloat16, channel_pad(2), true);
  expect_relayout({2, 3, 19, 23}, DType::kFloat32, kToNhwc, DType::kFloat32, channel_pad(0), true);
  expect_relayout({2, 16, 19, 23}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(0), true);
  // More channels than the tile holds, or a pad elsewhere: the gather tactic alone.
  expect_relayout({2, 17, 9, 7}, DType::kFloat32, kToNhwc, DType::kFloat16, channel_pad(7), false);
  expect_relayout({2, 3, 9, 7}, DType::kFloat32, kToNhwc, DType::kFloat16, {0, 1, 0, 2, 0, 0, 0, 5}, false);
}

TEST(CudaRelayout, Float16ToFloat32) {
  KILN_SKIP_WITHOUT_GPU();
  expect_relayout({2, 3, 31, 33}, DType::kFloat16, kToNhwc, DType::kFloat32, channel_pad(5), true);
  expect_relayout({2, 3, 31, 33}, DType::kFloat16, {3, 1, 2, 0}, DType::kFloat32, {1, 0, 2, 0, 0, 3, 0, 1}, false);
}

TEST(CudaRelayout, Rank3And5) {
  KILN_SKIP_WITHOUT_GPU();
  expect_relayout({2, 3, 1000}, DType::kFloat32, {0, 2, 1}, DType::kFloat16, {0, 0, 0, 0, 0, 5}, true);
  expect_relayout({3, 4, 5}, DType::kFloat32, {2, 0, 1}, DType::kBFloat16, {1, 0, 2, 0, 3, 1}, false);
  expect_relayout({2, 3, 4, 5, 6}, DType::kFloat32, {0, 2, 3, 4, 1}, DType::kFloat16, {0, 0, 0, 0, 0, 0, 0, 0, 0, 5}, true);
  expect_relayout({2, 3, 4, 5, 6}, DType::kBFloat16, {4, 2, 0, 3, 1}, DType::kFloat32, {0, 1, 0, 2, 0, 1, 1, 0, 0, 3}, false);
}

TEST(CudaRelayout, GeneralPerms) {
  KILN_SKIP_WITHOUT_GPU();
  expect_relayout({4, 5, 6, 7}, DType::kFloat32, {3, 2, 1, 0}, DType::kFloat32, {0, 0, 0, 0, 0, 0, 0, 0}, false);
  expect_relayout({4, 5, 6, 7}, DType::kFloat32, {0, 3, 1, 2}, DType::kFloat16, {2, 0, 0, 1, 0, 3, 1, 0}, false);
  expect_relayout({2, 3, 2, 3, 2, 3}, DType::kFloat16, {5, 0, 4, 1, 3, 2}, DType::kBFloat16,
                  {1, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0}, false);
  expect_relayout({1000003}, DType::kFloat32, {0}, DType::kFloat16, {3, 4}, false);
}

// ResNet-50's input at batch 256, both tactics: 154 MB read, 205 MB written. A benchmark, not a test: it
// prints the times, with KILN_BENCH=1 only.
TEST(CudaRelayout, ResNet50Batch256Time) {
  KILN_SKIP_UNLESS_BENCH();
  KILN_SKIP_WITHOUT_GPU();
  const Shape xs = {256, 3, 224, 224}, ys = {256, 224, 224, 8};
  const Tensor x_host(DType::kFloat32, xs), y_host(DType::kFloat16, ys);
  const LayerCase c = relayout_case(x_host, relayout_attrs(kToNhwc, DType::kFloat16, channel_pad(5)));
  ir::Node node;
  const cuda::LayerSpec spec = detail::case_spec(c, c.inputs, {y_host}, &node);
  const cuda::LayerKind* kind = cuda::layer_table().find(kOp);
  ASSERT_NE(kind, nullptr);
  ASSERT_EQ(kind->check(spec), "");
  const cuda::CudaHandles& h = detail::test_handles();
  detail::DeviceMem x(x_host.nbytes()), y(y_host.nbytes());
  ASSERT_EQ(cudaMemset(x.p, 0, x_host.nbytes()), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<cuda::DeviceTensor> ins = {{x.p, DType::kFloat32, xs}}, outs = {{y.p, DType::kFloat16, ys}};
  for (const std::string& tactic : kind->tactics(spec)) {
    auto layer = kind->create(spec, tactic, h);
    ASSERT_TRUE(layer.ok()) << layer.status().to_string();
    double median = 0;
    ASSERT_NO_FATAL_FAILURE(time_created_layer_ms(**layer, ins, outs, h, &median));
    const double gbs = static_cast<double>(x_host.nbytes() + y_host.nbytes()) / (median * 1e-3) / 1e9;
    std::printf("kiln.Relayout [256,3,224,224] float32 -> [256,224,224,8] float16, %s: %.3f ms (%.0f GB/s)\n",
                tactic.c_str(), median, gbs);
  }
}

TEST(CudaRelayout, CheckRefusalsAndTactics) {
  const Attrs resnet = relayout_attrs(kToNhwc, DType::kFloat16, channel_pad(5));
  EXPECT_EQ(check_of(kOp, {desc(DType::kFloat32, {2, 3, 8, 8})}, {desc(DType::kFloat16, {2, 8, 8, 8})}, resnet), "");
  EXPECT_NE(check_of(kOp, {desc(DType::kInt32, {2, 3, 8, 8})}, {desc(DType::kFloat16, {2, 8, 8, 8})}, resnet)
                .find("float32, float16 and bfloat16"),
            std::string::npos);
  EXPECT_NE(check_of(kOp, {desc(DType::kFloat32, {2, 3, 8, 8})}, {desc(DType::kFloat64, {2, 8, 8, 8})},
                     relayout_attrs(kToNhwc, DType::kFloat64, channel_pad(5)))
                .find("converts to"),
            std::string::npos);
  EXPECT_NE(check_of(kOp, {desc(DType::kFloat32, {2, 3, 8, 8})}, {desc(DType::kFloat32, {2, 8, 8, 8})}, resnet)
                .find("the output must have dtype float16"),
            std::string::npos);
  EXPECT_NE(check_of(kOp, {desc(DType::kFloat32, {2, 3, 8})}, {desc(DType::kFloat16, {2, 8, 8})}, resnet)
                .find("not a permutation"),
            std::string::npos);
  EXPECT_NE(check_of(kOp, {desc(DType::kFloat32, {1, 1, 1, 1, 1, 1, 2})}, {desc(DType::kFloat32, {1, 1, 1, 1, 1, 1, 2})}, {})
                .find("rank 1 to 6"),
            std::string::npos);
  // The rank unknown at check time: what can be checked is.
  EXPECT_EQ(check_of(kOp, {desc(DType::kFloat32, {}, nullptr, false)}, {desc(DType::kFloat16, {}, nullptr, false)}, resnet), "");

  // Tactics: the channels-last tactic first where it applies.
  const cuda::LayerKind* kind = cuda::layer_table().find(kOp);
  ASSERT_NE(kind, nullptr);
  auto tactics = [&](const Shape& x, const Attrs& attrs) {
    ir::Node node;
    node.name = "r";
    node.attributes = attrs;
    cuda::LayerSpec spec;
    spec.node = &node;
    spec.inputs = {desc(DType::kFloat32, x)};
    return kind->tactics(spec);
  };
  EXPECT_EQ(tactics({256, 3, 224, 224}, resnet), (std::vector<std::string>{kChannelsLast, kGather}));
  EXPECT_EQ(tactics({256, 17, 224, 224}, resnet), std::vector<std::string>{kGather});
  EXPECT_EQ(tactics({256, 3, 224, 224}, relayout_attrs({0, 3, 2, 1}, DType::kFloat16, channel_pad(5))),
            std::vector<std::string>{kGather});
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
