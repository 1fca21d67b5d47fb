// Benchmarks, not tests (KILN_BENCH=1 only): every tactic the CUDA layer lists, timed on the layers of
// ResNet-50 and BERT-base that sit furthest below the device's limits, so that a change to how many
// candidates the builder times (cuDNN's engine configs, cuBLASLt's heuristic results) is judged on them:
//   - ResNet-50's layer1 3x3 convs (X [256, 56, 56, 64] channels-last, W [64, 3, 3, 64], bias, Relu): 59
//     GFLOP, about 0.147 ms at the builder's choice (400 TFLOP/s, against 640 to 760 for the later stages');
//   - BERT-base's four GEMMs at batch 128, sequence 128 (M = 16384): QKV [768 -> 2304] + bias, the attention
//     output [768 -> 768] + bias + residual, the FFN's [768 -> 3072] + bias + GELU and [3072 -> 768] + bias +
//     residual.
// Each line: the tactic and its median of 20 runs after 5, then the best.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

// Times every tactic of `op` for the node described by ins / outs / attrs (device buffers of 0x3C bytes:
// float16 values near 1.05; the values do not change the time).
void sweep(const std::string& what, const std::string& op, const std::vector<cuda::TensorDesc>& ins,
           const std::vector<cuda::TensorDesc>& outs, const Attrs& attrs) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  ASSERT_NE(kind, nullptr);
  ir::Node node;
  node.name = what;
  node.domain = "kiln";
  node.op_type = op.substr(op.find('.') + 1);
  node.attributes = attrs;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = 1;
  spec.inputs = ins;
  spec.outputs = outs;
  ASSERT_EQ(kind->check(spec), "");
  std::vector<std::unique_ptr<detail::DeviceMem>> mem;
  auto device = [&](const std::vector<cuda::TensorDesc>& ds) {
    std::vector<cuda::DeviceTensor> ts;
    for (const cuda::TensorDesc& d : ds) {
      const size_t bytes = static_cast<size_t>(shape_numel(d.shape)) * dtype_size(d.dtype);
      mem.push_back(std::make_unique<detail::DeviceMem>(bytes));
      EXPECT_EQ(cudaMemset(mem.back()->p, 0x3C, bytes), cudaSuccess);
      ts.push_back({mem.back()->p, d.dtype, d.shape});
    }
    return ts;
  };
  const std::vector<cuda::DeviceTensor> in = device(ins), out = device(outs);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const cuda::CudaHandles& handles = detail::test_handles();
  std::vector<std::pair<std::string, double>> times;
  ASSERT_NO_FATAL_FAILURE(time_every_tactic_ms(*kind, spec, in, out, handles, &times));
  std::string best;
  double best_ms = 1e30;
  for (const auto& [tactic, ms] : times) {
    std::printf("  %s: %s %.4f ms\n", what.c_str(), tactic.c_str(), ms);
    if (ms < best_ms) {
      best_ms = ms;
      best = tactic;
    }
  }
  std::printf("  %s: best %s %.4f ms\n", what.c_str(), best.c_str(), best_ms);
}

TEST(CudaTacticSweepBench, ResNetLayer1Conv3x3Batch256) {
  KILN_SKIP_UNLESS_BENCH();
  KILN_SKIP_WITHOUT_GPU();
  const auto h = DType::kFloat16;
  sweep("resnet50 layer1 conv2 b256", "kiln.FusedConv",
        {desc(h, {256, 56, 56, 64}), desc(h, {64, 3, 3, 64}), desc(h, {64})}, {desc(h, {256, 56, 56, 64})},
        {{"channels_last", int_attr(1)}, {"pads", ints_attr({1, 1, 1, 1})}, {"activation", string_attr("Relu")}});
}

TEST(CudaTacticSweepBench, BertGemmsBatch128) {
  KILN_SKIP_UNLESS_BENCH();
  KILN_SKIP_WITHOUT_GPU();
  const auto h = DType::kFloat16;
  const int64_t m = 128 * 128;
  sweep("bert qkv b128", "kiln.FusedMatMul", {desc(h, {m, 768}), desc(h, {768, 2304}), desc(h, {2304})},
        {desc(h, {m, 2304})}, {});
  sweep("bert attention output b128", "kiln.FusedMatMul",
        {desc(h, {m, 768}), desc(h, {768, 768}), desc(h, {768}), desc(h, {m, 768})}, {desc(h, {m, 768})}, {});
  sweep("bert ffn up + gelu b128", "kiln.FusedMatMul", {desc(h, {m, 768}), desc(h, {768, 3072}), desc(h, {3072})},
        {desc(h, {m, 3072})}, {{"activation", string_attr("Gelu")}});
  sweep("bert ffn down b128", "kiln.FusedMatMul",
        {desc(h, {m, 3072}), desc(h, {3072, 768}), desc(h, {768}), desc(h, {m, 768})}, {desc(h, {m, 768})}, {});
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
