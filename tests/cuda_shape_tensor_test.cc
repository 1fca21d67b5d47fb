// Shape-tensor inputs of GPU engines (issue 5's last item): x float32[batch, 6] -> Relu -> Reshape(., target),
// target an int64[2] input with min/opt/max values in the profile. Built for the GPU, every layer runs there
// (the Reshape too: each context's program binds the target's values as constants); outputs equal the CPU
// engine's at several values; the program cache is keyed by the values; values outside the profile are
// refused; enqueue() takes them from set_input_values. The suite skips, saying why, where there is no GPU.
#include <gtest/gtest.h>

#include <random>

#include "cuda_skip.h"
#include "quiet_logger.h"
#include "engine/plan.h"
#include "kiln/kiln.h"
#include "random_tensors.h"
#include "shape_tensor_model.h"
#ifdef KILN_HAVE_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

Result<std::shared_ptr<Engine>> build(const std::string& device, const std::vector<OptimizationProfile>& profiles) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  const std::string bytes = testing::serialize(testing::reshape_by_shape_tensor());
  KILN_RETURN_IF_ERROR(parser.parse(bytes.data(), bytes.size()));
  BuilderConfig config;
  config.set_device(device);
  for (const auto& p : profiles) config.add_optimization_profile(p);
  return Builder(logger).build_engine(network, config);
}

// batch 1..4 (opt 2); target [2,3]..[4,6] (opt [4,3]): consistent with x at min ([1,6] -> [2,3]), opt
// ([2,6] -> [4,3]) and max ([4,6] -> [4,6]), and x [2,6] may take [4,3], [2,6] or [3,4].
OptimizationProfile gpu_profile() {
  OptimizationProfile p;
  EXPECT_TRUE(p.set_shape("x", {1, 6}, {2, 6}, {4, 6}).ok());
  EXPECT_TRUE(p.set_shape_values("target", {2, 3}, {4, 3}, {4, 6}).ok());
  return p;
}

class CudaShapeTensors : public ::testing::Test {
 protected:
  void SetUp() override {
    KILN_SKIP_WITHOUT_GPU();
    auto cpu = build("cpu", {});
    ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
    cpu_ = *cpu;
    auto gpu = build("cuda", {gpu_profile()});
    ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
    gpu_ = *gpu;
  }

  // Runs `ctx` on fresh random x [batch, 6] reshaped to [rows, cols] and expects the CPU engine's output.
  void expect_like_cpu(ExecutionContext& ctx, int64_t batch, int64_t rows, int64_t cols, std::mt19937& gen) {
    const std::string what = "x [" + std::to_string(batch) + ",6] to [" + std::to_string(rows) + "," +
                             std::to_string(cols) + "]";
    const Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {batch, 6}, 0.1f, 2.0f);
    const std::map<std::string, Tensor> feeds = {{"x", x}, {"target", testing::target_tensor(rows, cols)}};
    auto want = cpu_->create_execution_context()->execute(feeds);
    auto got = ctx.execute(feeds);
    ASSERT_TRUE(want.ok()) << what << ": " << want.status().to_string();
    ASSERT_TRUE(got.ok()) << what << ": " << got.status().to_string();
    const Tensor& y = got->at("y");
    ASSERT_EQ(y.shape(), (Shape{rows, cols})) << what;
    for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.data<float>()[i], want->at("y").data<float>()[i]) << what << " " << i;
  }

  std::shared_ptr<Engine> cpu_, gpu_;
};

TEST_F(CudaShapeTensors, EveryLayerOnTheGpu) {
  for (const auto& l : gpu_->plan().layers)
    EXPECT_EQ(l.backend, "cuda") << l.name << " (" << l.op_type << "): " << l.fallback_reason << "\n" << gpu_->inspect();
}

TEST_F(CudaShapeTensors, OutputsEqualTheCpuEnginesAndTheCacheIsKeyedByValues) {
  for (bool cuda_graph : {false, true}) {
    SCOPED_TRACE(cuda_graph ? "CUDA graph" : "no CUDA graph");
    auto ctx = gpu_->create_execution_context();
    ctx->set_cuda_graph(cuda_graph);
    std::mt19937 gen(testing::random_seed("CudaShapeTensors.Outputs"));
    expect_like_cpu(*ctx, 1, 2, 3, gen);  // min
    expect_like_cpu(*ctx, 2, 4, 3, gen);  // opt
    expect_like_cpu(*ctx, 4, 4, 6, gen);  // max
    expect_like_cpu(*ctx, 3, 3, 6, gen);  // between
    EXPECT_EQ(ctx->shape_cache_stats().misses, 4u);
    // The same x shape with other values: other programs (the values are constants in each).
    expect_like_cpu(*ctx, 2, 2, 6, gen);
    expect_like_cpu(*ctx, 2, 3, 4, gen);
    EXPECT_EQ(ctx->shape_cache_stats().misses, 6u);
    expect_like_cpu(*ctx, 2, 4, 3, gen);  // seen: replayed
    expect_like_cpu(*ctx, 2, 2, 6, gen);
    EXPECT_EQ(ctx->shape_cache_stats().hits, 2u);
    EXPECT_EQ(ctx->shape_cache_stats().size, 6);
  }
}

TEST_F(CudaShapeTensors, RefusesValuesOutsideTheProfile) {
  auto ctx = gpu_->create_execution_context();
  std::mt19937 gen(testing::random_seed("CudaShapeTensors.Outside"));
  const Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {4, 6}, 0.1f, 2.0f);
  auto out = ctx->execute({{"x", x}, {"target", testing::target_tensor(8, 3)}});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("input 'target' values [8,3] are outside profile 0 (max [4,6])"),
            std::string::npos)
      << out.status().to_string();
  EXPECT_EQ(ctx->shape_cache_stats().misses, 0u) << "refused before any program was made";
}

#ifdef KILN_HAVE_CUDA
TEST_F(CudaShapeTensors, EnqueueTakesTheValuesFromSetInputValues) {
  std::mt19937 gen(testing::random_seed("CudaShapeTensors.Enqueue"));
  const Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {2, 6}, 0.1f, 2.0f);
  auto want = cpu_->create_execution_context()->execute({{"x", x}, {"target", testing::target_tensor(3, 4)}});
  ASSERT_TRUE(want.ok()) << want.status().to_string();
  void *dx = nullptr, *dy = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, x.nbytes()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, x.nbytes()), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, x.raw_data(), x.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
  auto ctx = gpu_->create_execution_context();
  ASSERT_TRUE(ctx->set_input_shape("x", {2, 6}).ok());
  ASSERT_TRUE(ctx->set_device_address("x", dx).ok());
  ASSERT_TRUE(ctx->set_device_address("y", dy).ok());
  Status st = ctx->enqueue(nullptr);
  EXPECT_NE(st.message().find("input 'target' is a shape tensor in optimization profile 0: call set_input_values"),
            std::string::npos)
      << st.to_string();
  ASSERT_TRUE(ctx->set_input_values("target", {3, 4}).ok());
  auto shape = ctx->output_shape("y");
  ASSERT_TRUE(shape.ok()) << shape.status().to_string();
  EXPECT_EQ(*shape, (Shape{3, 4}));
  st = ctx->enqueue(nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  Tensor y(DType::kFloat32, {3, 4});
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(y.raw_data(), dy, y.nbytes(), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.data<float>()[i], want->at("y").data<float>()[i]) << i;
  cudaFree(dx);
  cudaFree(dy);
}
#endif

}  // namespace
}  // namespace kiln
