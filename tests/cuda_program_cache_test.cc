// An execution context's per-shape program cache (issue 5: CUDA graphs with dynamic shapes): one GPU engine
// over a model with a dynamic batch, contexts that alternate shapes and so reuse their programs and captured
// CUDA graphs, all sharing one activation arena per context; eviction, threads, optimization profiles with
// their own tactics and arena size. Every output is compared with the CPU engine's on fresh random inputs.
// The Cuda suites skip, saying why, where there is no GPU; ContextShapeCache runs everywhere.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda_skip.h"
#include "quiet_logger.h"
#include "engine/plan.h"
#include "graph_builder.h"
#include "kiln/kiln.h"
#include "random_tensors.h"
#include "test_models.h"
#ifdef KILN_HAVE_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

// x: float[N,3,8,8] -> Conv(pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax -> probs:
// float[N,5]. Every layer runs on the GPU, so a program can be captured into a CUDA graph.
onnx::ModelProto dynamic_batch_cnn() {
  onnx::ModelProto m = testing::new_model(17);
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"N", "3", "8", "8"});
  testing::set_type(g->add_output(), "probs", 1, {"N", "5"});
  std::mt19937 gen(5);
  testing::add_conv_classifier(g, gen);
  return m;
}

Result<std::shared_ptr<Engine>> build(const std::string& device) {
  Quiet logger;
  const std::string bytes = testing::serialize(dynamic_batch_cnn());
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  KILN_RETURN_IF_ERROR(parser.parse(bytes.data(), bytes.size()));
  BuilderConfig config;
  config.set_device(device);
  config.set_tf32(false);  // compared with the CPU at float32 tolerance
  Builder builder(logger);
  return builder.build_engine(network, config);
}

Shape batch(int64_t n) { return {n, 3, 8, 8}; }

// The cache's API on any engine: capacity >= 1, and no counts where no GPU program runs.
TEST(ContextShapeCache, CapacityMustBePositive) {
  auto cpu = build("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
  auto ctx = (*cpu)->create_execution_context();
  EXPECT_EQ(ctx->shape_cache_stats().capacity, 8);
  for (int bad : {0, -3}) {
    Status s = ctx->set_shape_cache_capacity(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find("at least 1"), std::string::npos) << s.to_string();
  }
  ASSERT_TRUE(ctx->set_shape_cache_capacity(3).ok());
  std::mt19937 gen(testing::random_seed("ContextShapeCache"));
  ASSERT_TRUE(ctx->execute({{"x", testing::random_tensor(gen, DType::kFloat32, batch(2), -1, 1)}}).ok());
  const ExecutionContext::ShapeCacheStats s = ctx->shape_cache_stats();
  EXPECT_EQ(s.capacity, 3);
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(s.size, 0);
}

#ifdef KILN_HAVE_CUDA

// Runs `ctx` and the CPU engine's context on one fresh random input of batch n and compares the outputs
// (a mismatch fails the test); false when a run failed.
bool run_and_compare(ExecutionContext& ctx, ExecutionContext& ref, int64_t n, std::mt19937& gen,
                     const std::string& what) {
  const Tensor x = testing::random_tensor(gen, DType::kFloat32, batch(n), -1, 1);
  auto want = ref.execute({{"x", x}});
  auto got = ctx.execute({{"x", x}});
  if (!want.ok() || !got.ok()) {
    ADD_FAILURE() << what << ": " << (want.ok() ? got.status().to_string() : want.status().to_string());
    return false;
  }
  testing::expect_close(got->at("probs"), want->at("probs"), 1e-4, what);
  return true;
}

class CudaProgramCache : public ::testing::Test {
 protected:
  void SetUp() override {
    KILN_SKIP_WITHOUT_GPU();
    auto cpu = build("cpu");
    auto gpu = build("cuda");
    ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
    ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
    cpu_ = *cpu;
    gpu_ = *gpu;
  }
  // Every layer on the GPU: what CUDA graphs and enqueue() need.
  void expect_all_on_gpu() const {
    for (const auto& l : gpu_->plan().layers) EXPECT_EQ(l.backend, "cuda") << l.name << ": " << l.fallback_reason;
  }
  std::shared_ptr<Engine> cpu_, gpu_;
};

TEST_F(CudaProgramCache, RepeatedShapesReuseTheirProgramAndArena) {
  std::mt19937 gen(testing::random_seed("CudaProgramCache"));
  auto ctx = gpu_->create_execution_context();
  auto ref = cpu_->create_execution_context();
  ctx->set_cuda_graph(true);
  expect_all_on_gpu();
  // A (4) plans the arena, B (2) fits in it; their repeats replay; C (6) needs more, so the arena grows and
  // the cache starts again (the old programs' graphs hold the old addresses).
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 4, gen, "A"));
  const size_t arena = ctx->arena_bytes(), workspace = ctx->workspace_bytes();
  EXPECT_GT(arena, 0u);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 2, gen, "B"));
  EXPECT_EQ(ctx->arena_bytes(), arena) << "B shares A's arena";
  EXPECT_EQ(ctx->workspace_bytes(), workspace) << "B needs more workspace than A: growing it empties the cache";
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 4, gen, "A again"));
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 2, gen, "B again"));
  ExecutionContext::ShapeCacheStats s = ctx->shape_cache_stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.capacity, 8);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 6, gen, "C"));
  s = ctx->shape_cache_stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.size, 1) << "growing the arena empties the cache";
  EXPECT_GT(ctx->arena_bytes(), arena);
  // Profiling applies to whichever program runs, cached or new; the times are the last run's.
  ctx->set_profiling(true);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 6, gen, "C profiled"));
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 3, gen, "D profiled"));
  const auto times = ctx->last_layer_times();
  EXPECT_FALSE(times.empty());
  for (const auto& t : times) EXPECT_EQ(t.where, "cuda") << t.layer;
  ctx->set_profiling(false);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 6, gen, "C after profiling"));
  EXPECT_TRUE(ctx->execute_compute_only().ok());
  s = ctx->shape_cache_stats();
  EXPECT_EQ(s.hits, 4u);
  EXPECT_EQ(s.misses, 4u);
}

TEST_F(CudaProgramCache, CapacityOneEvicts) {
  std::mt19937 gen(testing::random_seed("CudaProgramCache"));
  auto ctx = gpu_->create_execution_context();
  auto ref = cpu_->create_execution_context();
  ctx->set_cuda_graph(true);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 3, gen, "A"));
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 1, gen, "B"));
  EXPECT_EQ(ctx->shape_cache_stats().size, 2);
  ASSERT_TRUE(ctx->set_shape_cache_capacity(1).ok());
  EXPECT_EQ(ctx->shape_cache_stats().size, 1) << "shrinking drops the least recently used";
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 1, gen, "B again"));  // the one kept
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 3, gen, "A, evicted"));
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 1, gen, "B, evicted"));
  const ExecutionContext::ShapeCacheStats s = ctx->shape_cache_stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 4u);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.capacity, 1);
}

TEST_F(CudaProgramCache, ManyThreadsEachWithItsOwnShapes) {
  const unsigned seed = testing::random_seed("CudaProgramCache");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 gen(seed + t);
      auto ctx = gpu_->create_execution_context();
      auto ref = cpu_->create_execution_context();
      ctx->set_cuda_graph(t % 2 == 0);
      const int64_t shapes[] = {t + 3, t + 1};  // the larger first: the arena is planned once
      for (int i = 0; i < 6; ++i)
        if (!run_and_compare(*ctx, *ref, shapes[i % 2], gen, "thread " + std::to_string(t) + " run " + std::to_string(i)))
          ++failures;
      const ExecutionContext::ShapeCacheStats s = ctx->shape_cache_stats();
      if (s.hits != 4 || s.misses != 2 || s.size != 2) {
        ++failures;
        ADD_FAILURE() << "thread " << t << ": hits " << s.hits << ", misses " << s.misses << ", size " << s.size;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// enqueue() on one caller stream, alternating shapes without waiting: the two programs share the arena,
// and the stream orders them.
TEST_F(CudaProgramCache, EnqueueAlternatingShapesOnOneStream) {
  std::mt19937 gen(testing::random_seed("CudaProgramCache"));
  auto ctx = gpu_->create_execution_context();
  auto ref = cpu_->create_execution_context();
  ctx->set_cuda_graph(true);
  expect_all_on_gpu();
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  struct Run {
    int64_t n;
    Tensor x, want;
    void *dx = nullptr, *dy = nullptr;
  };
  std::vector<Run> runs;
  for (int64_t n : {4, 2, 4, 2}) {
    Run r{n, testing::random_tensor(gen, DType::kFloat32, batch(n), -1, 1), Tensor()};
    auto want = ref->execute({{"x", r.x}});
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    r.want = want->at("probs");
    ASSERT_EQ(cudaMalloc(&r.dx, r.x.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&r.dy, r.want.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(r.dx, r.x.raw_data(), r.x.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
    runs.push_back(std::move(r));
  }
  for (const Run& r : runs) {
    ASSERT_TRUE(ctx->set_input_shape("x", batch(r.n)).ok());
    ASSERT_TRUE(ctx->set_device_address("x", r.dx).ok());
    ASSERT_TRUE(ctx->set_device_address("probs", r.dy).ok());
    Status s = ctx->enqueue(stream);
    ASSERT_TRUE(s.ok()) << s.to_string();
  }
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  for (const Run& r : runs) {
    Tensor y(DType::kFloat32, {r.n, 5});
    ASSERT_EQ(cudaMemcpy(y.raw_data(), r.dy, y.nbytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    testing::expect_close(y, r.want, 1e-4, "batch " + std::to_string(r.n));
    cudaFree(r.dx);
    cudaFree(r.dy);
  }
  const ExecutionContext::ShapeCacheStats s = ctx->shape_cache_stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 2u);
  ctx.reset();  // waits for nothing more: the stream is done
  cudaStreamDestroy(stream);
}

// An engine with two optimization profiles and a plan per profile, made from the built one's plan: each
// profile runs its own tactics (a bad tactic in profile 1 fails only there) and plans its arena for its max
// shapes; changing the profile empties the cache.
TEST_F(CudaProgramCache, ProfilesHaveTheirOwnTacticsAndClearTheCache) {
  engine::Plan plan = gpu_->plan();
  plan.settings.profiles = {{{"x", ProfileShapes{batch(1), batch(2), batch(4)}}},
                            {{"x", ProfileShapes{batch(5), batch(6), batch(8)}}}};
  std::string conv_layer;  // profile plans name nodes of the optimized graph
  for (const auto& n : plan.model.graph.nodes)
    if (n.op_type.find("Conv") != std::string::npos) conv_layer = n.name;
  ASSERT_FALSE(conv_layer.empty()) << gpu_->inspect();
  constexpr size_t kProfile1Arena = 16 << 20;
  plan.profile_plans = {engine::ProfilePlan{{}, 0}, engine::ProfilePlan{{}, kProfile1Arena}};

  {  // Plans that do not fit the engine are refused.
    engine::Plan one = plan;
    one.profile_plans.pop_back();
    auto e = Engine::create(std::move(one));
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("optimization profiles"), std::string::npos) << e.status().to_string();
    engine::Plan stranger = plan;
    stranger.profile_plans[1].tactics["no_such_node"] = "whatever";
    e = Engine::create(std::move(stranger));
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("no_such_node"), std::string::npos) << e.status().to_string();
  }

  std::mt19937 gen(testing::random_seed("CudaProgramCache"));
  auto ref = cpu_->create_execution_context();
  auto engine = Engine::create(plan);
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  auto ctx = (*engine)->create_execution_context();
  ctx->set_cuda_graph(true);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 2, gen, "profile 0"));
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 2, gen, "profile 0 again"));
  EXPECT_EQ(ctx->shape_cache_stats().size, 1);
  EXPECT_EQ(ctx->shape_cache_stats().hits, 1u);
  ASSERT_TRUE(ctx->set_optimization_profile(1).ok());
  EXPECT_EQ(ctx->shape_cache_stats().size, 0);
  // Planned for profile 1's max: the arena grows once, to the measured size, and every shape fits it.
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 8, gen, "profile 1, batch 8"));
  EXPECT_EQ(ctx->arena_bytes(), kProfile1Arena);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 6, gen, "profile 1, batch 6"));
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 8, gen, "profile 1, batch 8 again"));
  EXPECT_EQ(ctx->shape_cache_stats().size, 2);
  EXPECT_EQ(ctx->arena_bytes(), kProfile1Arena);
  ASSERT_TRUE(ctx->set_optimization_profile(0).ok());
  EXPECT_EQ(ctx->shape_cache_stats().size, 0);
  ASSERT_TRUE(run_and_compare(*ctx, *ref, 4, gen, "back in profile 0"));

  // Profile 1's tactic for the convolution is its own: an unknown one fails there, not in profile 0.
  plan.profile_plans[1].tactics[conv_layer] = "no_such_tactic";
  auto bad = Engine::create(plan);
  ASSERT_TRUE(bad.ok()) << bad.status().to_string();
  auto bctx = (*bad)->create_execution_context();
  ASSERT_TRUE(run_and_compare(*bctx, *ref, 3, gen, "profile 0 of the engine with a bad profile 1"));
  ASSERT_TRUE(bctx->set_optimization_profile(1).ok());
  auto failed = bctx->execute({{"x", testing::random_tensor(gen, DType::kFloat32, batch(5), -1, 1)}});
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("no_such_tactic"), std::string::npos) << failed.status().to_string();
}

#endif  // KILN_HAVE_CUDA

}  // namespace
}  // namespace kiln
