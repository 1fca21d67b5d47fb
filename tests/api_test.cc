// The public API end to end: parse, build, serialize, deserialize, run; I/O reflection; threads; bad input.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>

#include "quiet_logger.h"
#include "engine/plan.h"

#include "kiln/kiln.h"
#include "test_models.h"

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

std::shared_ptr<Engine> build(const std::string& model_bytes, BuilderConfig config = BuilderConfig()) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  EXPECT_TRUE(parser.parse(model_bytes.data(), model_bytes.size()).ok());
  Builder builder(logger);
  auto plan = builder.build_serialized_network(network, config);
  EXPECT_TRUE(plan.ok()) << plan.status().to_string();
  Runtime runtime(logger);
  auto engine = runtime.deserialize_engine(plan->data(), plan->size());
  EXPECT_TRUE(engine.ok()) << engine.status().to_string();
  return *engine;
}

std::vector<float> reference_mlp(const std::vector<float>& x, int64_t batch) {
  const float w[12] = {0.1f, -0.2f, 0.3f, 0.4f, 0.5f, -0.6f, 0.7f, 0.8f, 0.9f, -1.0f, 1.1f, 1.2f};
  const float b[3] = {0.5f, -0.5f, 0.25f};
  std::vector<float> y(batch * 3);
  for (int64_t i = 0; i < batch; ++i)
    for (int j = 0; j < 3; ++j) {
      float s = b[j];
      for (int k = 0; k < 4; ++k) s += x[i * 4 + k] * w[k * 3 + j];
      y[i * 3 + j] = std::max(s, 0.0f);
    }
  return y;
}

Tensor random_input(int64_t batch, unsigned seed) {
  Tensor x(DType::kFloat32, {batch, 4});
  srand(seed);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = static_cast<float>(rand() % 2001 - 1000) / 500.0f;
  return x;
}

TEST(Api, BuildSerializeDeserializeRun) {
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()));
  ASSERT_EQ(engine->num_io_tensors(), 2);
  EXPECT_EQ(engine->io_tensor_name(0), "x");
  EXPECT_EQ(engine->tensor_io_mode("x"), TensorIOMode::kInput);
  EXPECT_EQ(engine->tensor_io_mode("y"), TensorIOMode::kOutput);
  EXPECT_EQ(engine->tensor_io_mode("nope"), TensorIOMode::kNone);
  EXPECT_EQ(engine->tensor_dtype("x"), DType::kFloat32);
  EXPECT_EQ(engine->tensor_shape("x"), (Shape{-1, 4}));
  auto ctx = engine->create_execution_context();
  Tensor x = random_input(5, 1);
  auto out = ctx->execute({{"x", x}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  const Tensor& y = out->at("y");
  ASSERT_EQ(y.shape(), (Shape{5, 3}));
  auto want = reference_mlp(std::vector<float>(x.data<float>(), x.data<float>() + 20), 5);
  for (int i = 0; i < 15; ++i) EXPECT_NEAR(y.data<float>()[i], want[i], 1e-5);
}

TEST(Api, BoundBuffers) {
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()));
  auto ctx = engine->create_execution_context();
  Tensor x = random_input(2, 2);
  std::vector<float> y(6, -1.0f);
  EXPECT_FALSE(ctx->execute().ok());  // nothing bound yet: input x is missing
  ASSERT_TRUE(ctx->set_input_shape("x", {2, 4}).ok());
  ASSERT_TRUE(ctx->set_tensor_address("x", x.raw_data()).ok());
  ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
  ASSERT_TRUE(ctx->execute().ok());
  auto want = reference_mlp(std::vector<float>(x.data<float>(), x.data<float>() + 8), 2);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(y[i], want[i], 1e-5);
  EXPECT_EQ(ctx->tensor_shape("y"), (Shape{2, 3}));
}

TEST(Api, FixedShapesFoldTheShapeChain) {
  BuilderConfig config;
  config.set_input_shape("x", {3, 4});
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()), config);
  EXPECT_EQ(engine->tensor_shape("x"), (Shape{3, 4}));
  // Shape, Gather and Concat are folded into a constant, the dead Neg is gone: MatMul, Add, Relu, Reshape.
  EXPECT_EQ(engine->plan().layers.size(), 4u) << engine->inspect();
  auto ctx = engine->create_execution_context();
  Tensor x = random_input(3, 3);
  auto out = ctx->execute({{"x", x}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  auto want = reference_mlp(std::vector<float>(x.data<float>(), x.data<float>() + 12), 3);
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(out->at("y").data<float>()[i], want[i], 1e-5);
}

TEST(Api, ContextsRunConcurrentlyOnOneEngine) {
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto ctx = engine->create_execution_context();
      for (int iter = 0; iter < 50; ++iter) {
        int64_t batch = 1 + (t + iter) % 7;
        Tensor x = random_input(batch, static_cast<unsigned>(t * 100 + iter));
        auto out = ctx->execute({{"x", x}});
        if (!out.ok()) {
          ++failures;
          continue;
        }
        auto want = reference_mlp(std::vector<float>(x.data<float>(), x.data<float>() + batch * 4), batch);
        for (int64_t i = 0; i < batch * 3; ++i)
          if (std::fabs(out->at("y").data<float>()[i] - want[i]) > 1e-5) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(Api, WrongInputsAreRefusedWithTheirNames) {
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()));
  auto ctx = engine->create_execution_context();
  auto missing = ctx->execute(std::map<std::string, Tensor>{});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("'x'"), std::string::npos);
  auto wrong_name = ctx->execute({{"z", random_input(1, 0)}});
  ASSERT_FALSE(wrong_name.ok());
  EXPECT_NE(wrong_name.status().message().find("'z'"), std::string::npos);
  auto wrong_shape = ctx->execute({{"x", Tensor(DType::kFloat32, {2, 5})}});
  ASSERT_FALSE(wrong_shape.ok());
  EXPECT_NE(wrong_shape.status().message().find("[2,5]"), std::string::npos) << wrong_shape.status().message();
  auto wrong_dtype = ctx->execute({{"x", Tensor(DType::kFloat64, {2, 4})}});
  ASSERT_FALSE(wrong_dtype.ok());
  EXPECT_NE(wrong_dtype.status().message().find("float64"), std::string::npos);
  EXPECT_FALSE(ctx->set_input_shape("x", {2, 4, 1}).ok());
  EXPECT_FALSE(ctx->set_tensor_address("nope", nullptr).ok());
}

TEST(Api, ParserReportsEveryUnsupportedNodeAtOnce) {
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2"});
  testing::set_type(g->add_output(), "z", 1, {"2"});
  testing::add_node(g, "FancyOp", {"x"}, {"y"}, "first");
  testing::add_node(g, "Relu", {"y"}, {"y2"}, "ok");
  testing::add_node(g, "OtherFancyOp", {"y2"}, {"z"}, "second");
  std::string bytes = testing::serialize(m);
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  Status st = parser.parse(bytes.data(), bytes.size());
  ASSERT_FALSE(st.ok());
  ASSERT_EQ(parser.errors().size(), 2u);
  EXPECT_EQ(parser.errors()[0].node_name, "first");
  EXPECT_EQ(parser.errors()[0].op_type, "FancyOp");
  EXPECT_EQ(parser.errors()[0].node_index, 0);
  EXPECT_EQ(parser.errors()[1].node_name, "second");
  EXPECT_EQ(parser.errors()[1].node_index, 2);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
}

TEST(Api, ParserRefusesMalformedModels) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  std::string garbage = "this is not a protobuf \xff\xff\xff";
  EXPECT_FALSE(parser.parse(garbage.data(), garbage.size()).ok());
  std::string good = testing::serialize(testing::mlp_with_shape_chain());
  for (size_t cut : {size_t{1}, good.size() / 3, good.size() - 1}) {
    std::string truncated = good.substr(0, cut);
    EXPECT_FALSE(parser.parse(truncated.data(), truncated.size()).ok()) << "cut at " << cut;
  }
  // A node reading a value nobody produces.
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_output(), "y", 1, {"2"});
  testing::add_node(g, "Relu", {"ghost"}, {"y"}, "reader");
  std::string bytes = testing::serialize(m);
  Status st = parser.parse(bytes.data(), bytes.size());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("'ghost'"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("reader"), std::string::npos);
  // A newer IR version than Kiln reads.
  onnx::ModelProto future = testing::mlp_with_shape_chain();
  future.set_ir_version(99);
  bytes = testing::serialize(future);
  st = parser.parse(bytes.data(), bytes.size());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("IR version 99"), std::string::npos);
  EXPECT_FALSE(parser.parse_from_file("/nonexistent/model.onnx").ok());
}

TEST(Api, WrongAttributeTypeNamesTheNode) {
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", "3"});
  testing::set_type(g->add_output(), "y", 1, {"3", "2"});
  auto* n = testing::add_node(g, "Transpose", {"x"}, {"y"}, "flip");
  auto* a = n->add_attribute();
  a->set_name("perm");
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s("1,0");
  auto engine = build(testing::serialize(m));
  auto ctx = engine->create_execution_context();
  auto out = ctx->execute({{"x", Tensor(DType::kFloat32, {2, 3})}});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("flip"), std::string::npos) << out.status().message();
  EXPECT_NE(out.status().message().find("perm"), std::string::npos) << out.status().message();
}

TEST(Api, CorruptedEngineIsRefused) {
  Quiet logger;
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()));
  auto bytes = engine->serialize();
  ASSERT_TRUE(bytes.ok());
  Runtime runtime(logger);
  std::vector<uint8_t> flipped = *bytes;
  flipped[flipped.size() / 2] ^= 0x40;
  auto bad = runtime.deserialize_engine(flipped.data(), flipped.size());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidEngine);
  auto truncated = runtime.deserialize_engine(bytes->data(), bytes->size() - 7);
  EXPECT_FALSE(truncated.ok());
  EXPECT_FALSE(runtime.deserialize_engine(nullptr, 0).ok());
}

TEST(Api, EnqueueAndProfilingOnACpuEngine) {
  BuilderConfig config;
  config.set_device("cpu");
  config.set_input_shape("x", {2, 4});
  auto engine = build(testing::serialize(testing::mlp_with_shape_chain()), config);
  ASSERT_NE(engine, nullptr);
  auto ctx = engine->create_execution_context();
  Status st = ctx->enqueue(nullptr);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("targets the CPU"), std::string::npos) << st.to_string();
  EXPECT_FALSE(ctx->set_device_address("nosuch", &st).ok());
  ctx->set_profiling(true);
  Tensor x(DType::kFloat32, {2, 4});
  ASSERT_TRUE(ctx->execute({{"x", x}}).ok());
  EXPECT_TRUE(ctx->last_layer_times().empty());  // layer times are a GPU engine's
  EXPECT_FALSE(ctx->execute_compute_only().ok());
  EXPECT_EQ(ctx->activation_bytes(), 0u);
}

}  // namespace
}  // namespace kiln
