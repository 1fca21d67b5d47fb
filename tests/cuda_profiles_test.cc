// GPU engines with optimization profiles (issue 5): transformers' BERT and GPT-2 (tiny configurations,
// exported with dynamic batch and sequence: tests/models/) built for the GPU with profiles over batch and
// sequence, run at min, opt, max and between, each against the CPU engine of the same model on fresh random
// tokens; a shape outside the profile is refused; several profiles; many threads with their own contexts and
// shapes; the engine file round trip. The suite skips, saying why, where there is no GPU.
#include <gtest/gtest.h>

#include <array>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "quiet_logger.h"
#include "graph_builder.h"
#include "cuda_skip.h"
#include "kiln/kiln.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

std::string model_path(const std::string& name) { return std::string(KILN_SOURCE_DIR) + "/tests/models/" + name + ".onnx"; }

Result<std::shared_ptr<Engine>> build(const std::string& name, const BuilderConfig& config) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  KILN_RETURN_IF_ERROR(parser.parse_from_file(model_path(name)));
  return Builder(logger).build_engine(network, config);
}

std::vector<std::string> inputs_of(const std::string& name) {
  if (name == "tiny_bert_dyn") return {"input_ids", "attention_mask", "token_type_ids"};
  return {"input_ids", "attention_mask"};
}

// One profile per [min, max] sequence range, every input [batch, seq].
BuilderConfig gpu_config(const std::string& name, bool fp16, const std::vector<std::array<int64_t, 6>>& ranges) {
  BuilderConfig config;
  config.set_device("cuda");
  config.set_fp16(fp16);
  config.set_tf32(false);
  for (const auto& [b0, s0, b1, s1, b2, s2] : ranges) {
    OptimizationProfile p;
    for (const auto& in : inputs_of(name)) EXPECT_TRUE(p.set_shape(in, {b0, s0}, {b1, s1}, {b2, s2}).ok());
    config.add_optimization_profile(p);
  }
  return config;
}

std::map<std::string, Tensor> tokens(const std::string& name, int64_t batch, int64_t seq, std::mt19937& gen) {
  std::map<std::string, Tensor> feeds;
  std::uniform_int_distribution<int64_t> token(0, 99);
  for (const auto& in : inputs_of(name)) {
    std::vector<int64_t> v(static_cast<size_t>(batch * seq));
    for (int64_t i = 0; i < batch * seq; ++i) {
      if (in == "input_ids") v[i] = token(gen);
      else if (in == "attention_mask") v[i] = i / seq < batch - 1 || i % seq <= seq / 2 ? 1 : 0;  // last row padded
      else v[i] = (i / 3) % 2;
    }
    feeds[in] = Tensor::from_vector<int64_t>(DType::kInt64, {batch, seq}, v);
  }
  return feeds;
}

class CudaProfiles : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    KILN_SKIP_WITHOUT_GPU();
    BuilderConfig cpu;
    cpu.set_device("cpu");
    auto e = build(GetParam(), cpu);
    ASSERT_TRUE(e.ok()) << e.status().to_string();
    cpu_ = *e;
  }

  // Runs `ctx` at [batch, seq] and expects the CPU engine's output within tol.
  void expect_like_cpu(ExecutionContext& ctx, int64_t batch, int64_t seq, double tol, std::mt19937& gen) {
    const std::string what = GetParam() + " at " + std::to_string(batch) + "x" + std::to_string(seq);
    const auto feeds = tokens(GetParam(), batch, seq, gen);
    auto ref = cpu_->create_execution_context();
    auto want = ref->execute(feeds);
    auto got = ctx.execute(feeds);
    ASSERT_TRUE(want.ok()) << what << ": " << want.status().to_string();
    ASSERT_TRUE(got.ok()) << what << ": " << got.status().to_string();
    testing::expect_close(got->at("out"), want->at("out"), tol, what);
  }

  std::shared_ptr<Engine> cpu_;
};

TEST_P(CudaProfiles, RunsMinOptMaxAndBetweenWithCudaGraphs) {
  for (bool fp16 : {false, true}) {
    SCOPED_TRACE(fp16 ? "fp16" : "fp32");
    auto gpu = build(GetParam(), gpu_config(GetParam(), fp16, {{1, 1, 4, 64, 8, 128}}));
    ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
    ASSERT_EQ((*gpu)->num_optimization_profiles(), 1);
    auto ctx = (*gpu)->create_execution_context();
    ctx->set_cuda_graph(true);
    std::mt19937 gen(fp16 ? 11 : 12);
    const double tol = fp16 ? 3e-2 : 1e-3;
    const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {4, 64}, {8, 128}, {3, 17}, {2, 100}, {3, 17}, {8, 128}};
    for (auto [batch, seq] : shapes) expect_like_cpu(*ctx, batch, seq, tol, gen);
    // The repeats (3x17, 8x128) replayed their programs.
    EXPECT_GE(ctx->shape_cache_stats().hits, 2);
  }
}

TEST_P(CudaProfiles, RefusesShapesOutsideTheProfile) {
  auto gpu = build(GetParam(), gpu_config(GetParam(), true, {{1, 1, 2, 16, 4, 32}}));
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  auto ctx = (*gpu)->create_execution_context();
  std::mt19937 gen(3);
  auto out = ctx->execute(tokens(GetParam(), 2, 33, gen));
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("is outside profile 0 (max [4,32])"), std::string::npos) << out.status().message();
}

TEST_P(CudaProfiles, SeveralProfilesEachWithItsOwnTacticsAndMemory) {
  auto gpu = build(GetParam(), gpu_config(GetParam(), true, {{1, 1, 1, 16, 2, 32}, {4, 33, 8, 96, 8, 160}}));
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  ASSERT_EQ((*gpu)->num_optimization_profiles(), 2);
  // Through the engine file, as a deployed engine is loaded.
  auto bytes = (*gpu)->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  Quiet logger;
  auto loaded = Runtime(logger).deserialize_engine(bytes->data(), bytes->size());
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  std::mt19937 gen(4);
  auto small = (*loaded)->create_execution_context();
  auto large = (*loaded)->create_execution_context();
  ASSERT_TRUE(large->set_optimization_profile(1).ok());
  expect_like_cpu(*small, 2, 20, 3e-2, gen);
  expect_like_cpu(*large, 5, 150, 3e-2, gen);
  auto wrong = large->execute(tokens(GetParam(), 2, 20, gen));
  EXPECT_FALSE(wrong.ok());
  // Memory planned for the max shapes: the larger profile's context holds at least as much as the smaller's.
  EXPECT_GT(large->arena_bytes(), 0u);
  EXPECT_GE(large->arena_bytes(), small->arena_bytes());
}

TEST_P(CudaProfiles, ManyThreadsEachWithItsOwnContextAndShapes) {
  auto gpu = build(GetParam(), gpu_config(GetParam(), true, {{1, 1, 4, 64, 8, 128}}));
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      auto ctx = (*gpu)->create_execution_context();
      ctx->set_cuda_graph(t % 2 == 0);
      std::mt19937 gen(100 + t);
      for (int i = 0; i < 3; ++i) expect_like_cpu(*ctx, 1 + (t + i) % 8, 8 + 29 * t + 7 * i, 3e-2, gen);
    });
  for (auto& th : threads) th.join();
}

INSTANTIATE_TEST_SUITE_P(Cuda, CudaProfiles, ::testing::Values("tiny_bert_dyn", "tiny_gpt2_dyn"));

}  // namespace
}  // namespace kiln
