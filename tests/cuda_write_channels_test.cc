// The CUDA layer of kiln.WriteChannels (write_channels.cu) against its CPU reference, with its own output
// memory (the layer copies Base first; in an engine it updates Base in place, which write_concat_in_place's
// engine test covers): ResNet-50's layer2.0 shortcut (conv2's 128 channels into a 384-wide concatenation,
// 16-byte pieces), offsets and widths that are not (cudaMemcpy2DAsync), and every dtype. The refusals of
// check() need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

void expect_write_matches(DType t, const Shape& base, int64_t piece_channels, int64_t offset) {
  SCOPED_TRACE(what(t, base) + " piece " + std::to_string(piece_channels) + " at " + std::to_string(offset));
  LayerCase c = make_case("WriteChannels",
                          {Value(data_of(t, base)), Value(data_of(t, {base[0], base[1], base[2], piece_channels}))},
                          {{"offset", int_attr(offset)}}, t, 1);
  c.domain = "kiln";
  c.rtol = c.atol = 0.0;  // moved, not computed
  expect_layer_matches_reference(c);
}

TEST(CudaWriteChannels, ResNetShortcutAndOddPieces) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    expect_write_matches(t, {2, 7, 5, 384}, 128, 0);    // layer2.0: conv2's output before the sampled pair's
    expect_write_matches(t, {2, 7, 5, 384}, 256, 128);  // the other order
  }
  expect_write_matches(DType::kFloat16, {1, 3, 3, 24}, 5, 3);  // 10-byte pieces: cudaMemcpy2DAsync
  expect_write_matches(DType::kFloat16, {1, 3, 3, 20}, 8, 4);  // 16-byte pieces, 40-byte rows
  expect_write_matches(DType::kFloat16, {2, 4, 4, 16}, 16, 0);  // the whole of Base
}

TEST(CudaWriteChannels, EveryDtype) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) expect_write_matches(t, {2, 3, 4, 16}, 8, 8);
}

TEST(CudaWriteChannelsCheck, RefusesWhatItDoesNotRun) {
  const auto h = DType::kFloat16;
  const std::vector<cuda::TensorDesc> outs = {desc(h, {1, 2, 2, 16})};
  EXPECT_EQ(check_of("kiln.WriteChannels", {desc(h, {1, 2, 2, 16}), desc(h, {1, 2, 2, 8})}, outs), "");
  EXPECT_NE(check_of("kiln.WriteChannels", {desc(h, {1, 2, 2, 16})}, outs).find("2 inputs"), std::string::npos);
  EXPECT_NE(check_of("kiln.WriteChannels", {desc(h, {1, 2, 2, 16}), desc(DType::kFloat32, {1, 2, 2, 8})}, outs).find("dtype"),
            std::string::npos);
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
