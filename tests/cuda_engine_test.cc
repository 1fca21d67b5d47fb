// CUDA engines end to end, against the same model on the CPU reference: layer assignment and fallback
// with explicit copies, precisions (fp32, tf32, fp16, bf16, pins), CUDA graphs, several contexts on
// threads, the timing cache, and --strict-gpu. Skipped, saying why, where there is no GPU.
#ifdef KILN_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include "cuda_skip.h"
#include "quiet_logger.h"
#include "backends/cuda/cuda_backend.h"
#include "core/cast.h"
#include "engine/plan.h"
#include "kiln/kiln.h"
#include "random_tensors.h"
#include "test_models.h"

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

Result<std::shared_ptr<Engine>> build(const onnx::ModelProto& m, BuilderConfig config) {
  Quiet logger;
  const std::string bytes = testing::serialize(m);
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  KILN_RETURN_IF_ERROR(parser.parse(bytes.data(), bytes.size()));
  Builder builder(logger);
  KILN_ASSIGN_OR_RETURN(auto plan, builder.build_serialized_network(network, config));
  Runtime runtime(logger);
  return runtime.deserialize_engine(plan.data(), plan.size());
}

Tensor random_input(const Shape& shape, unsigned seed) {
  std::mt19937 gen(seed);
  return testing::random_tensor(gen, DType::kFloat32, shape, -1.0f, 1.0f);
}

void expect_close(const Tensor& got, const Tensor& want, double rtol, double atol) {
  ASSERT_EQ(got.shape(), want.shape());
  const Tensor g = widen_to_float32(got), w = widen_to_float32(want);
  int bad = 0;
  for (int64_t i = 0; i < g.numel() && bad < 5; ++i) {
    const double a = g.data<float>()[i], b = w.data<float>()[i];
    if (!(std::fabs(a - b) <= rtol * std::fabs(b) + atol)) {
      ++bad;
      ADD_FAILURE() << "element " << i << ": got " << a << ", want " << b;
    }
  }
}

// A small CNN head with a tail the GPU does not run (TopK's k computed at run time goes to the CPU when
// k is not constant; here NonZero, whose output shape comes from the data): Conv, Relu, GlobalAveragePool,
// Flatten, Gemm, Softmax, then NonZero of (softmax > 0.1) on the CPU, then Cast and ReduceSum back on the GPU.
onnx::ModelProto cnn_with_cpu_tail() {
  onnx::ModelProto m = testing::new_model(17);
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", "3", "8", "8"});
  testing::set_type(g->add_output(), "probs", 1, {"2", "5"});
  testing::set_type(g->add_output(), "count", 7, {});
  std::mt19937 gen(3);
  testing::add_conv_classifier(g, gen);
  testing::add_float_initializer(g, "threshold", {}, {0.1f});
  testing::add_node(g, "Greater", {"probs", "threshold"}, {"big"}, "greater");
  testing::add_node(g, "NonZero", {"big"}, {"where"}, "nonzero");
  testing::add_node(g, "Size", {"where"}, {"count"}, "size");
  return m;
}

BuilderConfig on(const std::string& device) {
  BuilderConfig c;
  c.set_device(device);
  return c;
}

TEST(CudaEngine, MatchesTheCpuWithExplicitFallback) {
  KILN_SKIP_WITHOUT_GPU();
  auto cpu = build(cnn_with_cpu_tail(), on("cpu"));
  ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
  BuilderConfig cfg = on("cuda");
  cfg.set_tf32(false);
  auto gpu = build(cnn_with_cpu_tail(), cfg);
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  const engine::Plan& plan = (*gpu)->plan();
  EXPECT_EQ(plan.target_backend, "cuda");
  int on_gpu = 0;
  for (const auto& l : plan.layers) {
    if (l.backend == "cuda") ++on_gpu;
    else EXPECT_FALSE(l.fallback_reason.empty()) << l.name;
  }
  EXPECT_GE(on_gpu, 5);
  const std::string text = (*gpu)->inspect();
  EXPECT_NE(text.find("backend=cuda"), std::string::npos) << text;
  EXPECT_NE(text.find("not on the GPU"), std::string::npos) << text;
  for (unsigned seed : {1u, 2u, 3u}) {
    const Tensor x = random_input({2, 3, 8, 8}, seed);
    auto want = (*cpu)->create_execution_context()->execute({{"x", x}});
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    auto ctx = (*gpu)->create_execution_context();
    auto got = ctx->execute({{"x", x}});
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    expect_close(got->at("probs"), want->at("probs"), 1e-5, 1e-6);
    EXPECT_EQ(got->at("count").to_int64_vector(), want->at("count").to_int64_vector());
    EXPECT_GT(ctx->activation_bytes(), 0u);
  }
  // A profiled run times every step, GPU layers, CPU layers and the copies between them.
  auto ctx = (*gpu)->create_execution_context();
  ctx->set_profiling(true);
  ASSERT_TRUE(ctx->execute({{"x", random_input({2, 3, 8, 8}, 4)}}).ok());
  std::set<std::string> where;
  for (const auto& t : ctx->last_layer_times()) {
    where.insert(t.where);
    EXPECT_GE(t.ms, 0.0) << t.layer;
  }
  EXPECT_EQ(where, (std::set<std::string>{"cuda", "cpu", "download"}));
}

TEST(CudaEngine, StrictGpuRefusesFallback) {
  KILN_SKIP_WITHOUT_GPU();
  BuilderConfig cfg = on("cuda");
  cfg.set_strict_gpu(true);
  auto gpu = build(cnn_with_cpu_tail(), cfg);
  ASSERT_FALSE(gpu.ok());
  EXPECT_NE(gpu.status().message().find("--strict-gpu"), std::string::npos) << gpu.status().to_string();
  EXPECT_NE(gpu.status().message().find("nonzero"), std::string::npos) << gpu.status().to_string();
}

TEST(CudaEngine, PrecisionsAndPins) {
  KILN_SKIP_WITHOUT_GPU();
  auto cpu = build(cnn_with_cpu_tail(), on("cpu"));
  ASSERT_TRUE(cpu.ok());
  const Tensor x = random_input({2, 3, 8, 8}, 9);
  auto want = (*cpu)->create_execution_context()->execute({{"x", x}});
  ASSERT_TRUE(want.ok());
  struct Case {
    const char* name;
    bool tf32, fp16, bf16;
    double tol;
  } cases[] = {{"tf32", true, false, false, 1e-3}, {"fp16", true, true, false, 1e-2}, {"bf16", true, false, true, 2e-2}};
  for (const Case& c : cases) {
    BuilderConfig cfg = on("cuda");
    cfg.set_tf32(c.tf32);
    cfg.set_fp16(c.fp16);
    cfg.set_bf16(c.bf16);
    cfg.set_layer_precision("fc", "fp32");  // a pin is honored whatever the global setting
    auto gpu = build(cnn_with_cpu_tail(), cfg);
    ASSERT_TRUE(gpu.ok()) << c.name << ": " << gpu.status().to_string();
    for (const auto& l : (*gpu)->plan().layers) {
      if (l.name == "fc") EXPECT_EQ(l.precision, "fp32") << c.name;
      if (l.name == "conv" && (c.fp16 || c.bf16)) EXPECT_EQ(l.precision, c.fp16 ? "fp16" : "bf16") << c.name;
    }
    auto got = (*gpu)->create_execution_context()->execute({{"x", x}});
    ASSERT_TRUE(got.ok()) << c.name << ": " << got.status().to_string();
    EXPECT_EQ(got->at("probs").dtype(), DType::kFloat32) << "graph outputs keep their type";
    expect_close(got->at("probs"), want->at("probs"), c.tol, c.tol);
  }
}

TEST(CudaEngine, CudaGraphAndManyContexts) {
  KILN_SKIP_WITHOUT_GPU();
  // Without the CPU tail the whole graph is on the GPU and can be captured.
  onnx::ModelProto m = cnn_with_cpu_tail();
  auto* g = m.mutable_graph();
  g->mutable_node()->DeleteSubrange(g->node_size() - 3, 3);
  g->mutable_output()->DeleteSubrange(1, 1);
  auto cpu = build(m, on("cpu"));
  auto gpu = build(m, on("cuda"));
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      auto ctx = (*gpu)->create_execution_context();
      auto ref = (*cpu)->create_execution_context();
      ctx->set_cuda_graph(t % 2 == 0);
      for (int i = 0; i < 5; ++i) {
        const Tensor x = random_input({2, 3, 8, 8}, 100 * t + i);
        auto want = ref->execute({{"x", x}});
        auto got = ctx->execute({{"x", x}});
        if (!want.ok() || !got.ok()) {
          if (failures++ < 4)
            ADD_FAILURE() << "thread " << t << " run " << i << ": "
                          << (want.ok() ? got.status().to_string() : want.status().to_string());
          continue;
        }
        const Tensor& a = got->at("probs");
        const Tensor& b = want->at("probs");
        for (int64_t k = 0; k < a.numel(); ++k)
          if (std::fabs(a.data<float>()[k] - b.data<float>()[k]) > 1e-3) {
            if (failures++ < 4)
              ADD_FAILURE() << "thread " << t << " (cuda graph " << (t % 2 == 0) << ") run " << i << ": element "
                            << k << " is " << a.data<float>()[k] << ", want " << b.data<float>()[k];
            break;
          }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// Graph inputs live from the start of the run: one read only by a later layer must not share arena memory
// with one read first (the bug behind the first CUDA conformance run's failures of *_expanded graphs).
TEST(CudaEngine, GraphInputsReadLateKeepTheirOwnMemory) {
  KILN_SKIP_WITHOUT_GPU();
  onnx::ModelProto m = testing::new_model(17);
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "a", 1, {"2", "4"});
  testing::set_type(g->add_input(), "b", 1, {"2", "4"});
  testing::set_type(g->add_output(), "y", 1, {"2", "4"});
  testing::add_node(g, "Sigmoid", {"a"}, {"s"}, "gate");
  testing::add_node(g, "Mul", {"s", "b"}, {"y"}, "mul");
  auto cpu = build(m, on("cpu"));
  auto gpu = build(m, on("cuda"));
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  const Tensor a = random_input({2, 4}, 11), b = random_input({2, 4}, 12);
  auto want = (*cpu)->create_execution_context()->execute({{"a", a}, {"b", b}});
  auto got = (*gpu)->create_execution_context()->execute({{"a", a}, {"b", b}});
  ASSERT_TRUE(want.ok() && got.ok());
  expect_close(got->at("y"), want->at("y"), 1e-5, 1e-6);
}

// TensorRT-style enqueue: device buffers bound by name, the caller's stream, no wait inside.
TEST(CudaEngine, EnqueueOnDeviceBuffersAndTheCallersStream) {
  KILN_SKIP_WITHOUT_GPU();
  onnx::ModelProto m = cnn_with_cpu_tail();
  auto* g = m.mutable_graph();
  g->mutable_node()->DeleteSubrange(g->node_size() - 3, 3);
  g->mutable_output()->DeleteSubrange(1, 1);
  auto cpu = build(m, on("cpu"));
  auto gpu = build(m, on("cuda"));
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  const Tensor x = random_input({2, 3, 8, 8}, 21);
  auto want = (*cpu)->create_execution_context()->execute({{"x", x}});
  ASSERT_TRUE(want.ok());
  void *dx = nullptr, *dy = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, x.nbytes()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, 2 * 5 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, x.raw_data(), x.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto ctx = (*gpu)->create_execution_context();
  EXPECT_FALSE(ctx->enqueue(stream).ok()) << "no addresses bound yet";
  ASSERT_TRUE(ctx->set_device_address("x", dx).ok());
  ASSERT_TRUE(ctx->set_device_address("probs", dy).ok());
  EXPECT_FALSE(ctx->set_device_address("nosuch", dy).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ctx->enqueue(stream).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  Tensor y(DType::kFloat32, {2, 5});
  ASSERT_EQ(cudaMemcpy(y.raw_data(), dy, y.nbytes(), cudaMemcpyDeviceToHost), cudaSuccess);
  expect_close(y, want->at("probs"), 1e-3, 1e-4);
  // An engine with a CPU layer cannot be enqueued on device buffers alone: a clear error.
  auto mixed = build(cnn_with_cpu_tail(), on("cuda"));
  ASSERT_TRUE(mixed.ok());
  auto mctx = (*mixed)->create_execution_context();
  ASSERT_TRUE(mctx->set_device_address("x", dx).ok());
  Status st = mctx->enqueue(stream);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("run on the CPU"), std::string::npos) << st.to_string();
  cudaStreamDestroy(stream);
  cudaFree(dx);
  cudaFree(dy);
}

TEST(CudaEngine, TimingCacheMakesRebuildsIdentical) {
  KILN_SKIP_WITHOUT_GPU();
  const std::string cache = (std::filesystem::temp_directory_path() / ("kiln_tc_" + std::to_string(::getpid()) + ".json")).string();
  std::remove(cache.c_str());
  BuilderConfig cfg = on("cuda");
  cfg.set_timing_cache(cache);
  cfg.set_fp16(true);
  auto first = build(cnn_with_cpu_tail(), cfg);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  ASSERT_TRUE(std::filesystem::exists(cache));
  auto second = build(cnn_with_cpu_tail(), cfg);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ((*first)->plan().layers.size(), (*second)->plan().layers.size());
  for (size_t i = 0; i < (*first)->plan().layers.size(); ++i)
    EXPECT_EQ((*first)->plan().layers[i].tactic, (*second)->plan().layers[i].tactic) << (*first)->plan().layers[i].name;
  std::remove(cache.c_str());
}

}  // namespace
}  // namespace kiln

#endif  // KILN_HAVE_CUDA
