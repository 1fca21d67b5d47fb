// Optimization profiles (issue 5) on CPU engines: the API's checks, building with several profiles, running
// at min, opt, max and between against the engine built without profiles, refusals of shapes outside the
// context's profile, profile selection, one engine on many threads, and the engine file round trip.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "quiet_logger.h"
#include "kiln/kiln.h"
#include "random_tensors.h"
#include "test_models.h"

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

NetworkDefinition parse_mlp() {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  const std::string bytes = testing::serialize(testing::mlp_with_shape_chain());  // x: float32[batch,4]
  EXPECT_TRUE(parser.parse(bytes.data(), bytes.size()).ok());
  return network;
}

Result<std::shared_ptr<Engine>> build(const BuilderConfig& config) {
  Quiet logger;
  NetworkDefinition network = parse_mlp();
  return Builder(logger).build_engine(network, config);
}

OptimizationProfile batch_profile(int64_t min, int64_t opt, int64_t max) {
  OptimizationProfile p;
  EXPECT_TRUE(p.set_shape("x", {min, 4}, {opt, 4}, {max, 4}).ok());
  return p;
}

// Profile 0: batch 1..8 (opt 4); profile 1: batch 16..32 (opt 24).
BuilderConfig two_profiles() {
  BuilderConfig config;
  config.set_device("cpu");
  EXPECT_EQ(config.add_optimization_profile(batch_profile(1, 4, 8)), 0);
  EXPECT_EQ(config.add_optimization_profile(batch_profile(16, 24, 32)), 1);
  return config;
}

std::shared_ptr<Engine> profiled_engine() {
  auto e = build(two_profiles());
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? *e : nullptr;
}

std::shared_ptr<Engine> plain_engine() {
  BuilderConfig config;
  config.set_device("cpu");
  auto e = build(config);
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? *e : nullptr;
}

Tensor run_y(ExecutionContext& ctx, const Tensor& x) {
  auto out = ctx.execute({{"x", x}});
  EXPECT_TRUE(out.ok()) << out.status().to_string();
  return out.ok() ? out->at("y") : Tensor();
}

void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  for (int64_t i = 0; i < want.numel(); ++i)
    ASSERT_NEAR(got.data<float>()[i], want.data<float>()[i], 1e-6f) << what << " element " << i;
}

TEST(Profiles, SetShapeChecksTheRange) {
  OptimizationProfile p;
  Status st = p.set_shape("x", {1, 4}, {2, 4}, {8});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "optimization profile: input 'x': min [1,4], opt [2,4] and max [8] differ in rank");
  st = p.set_shape("x", {4, 4}, {2, 4}, {8, 4});
  EXPECT_EQ(st.message(), "optimization profile: input 'x' dim 0: needs min <= opt <= max, got min 4, opt 2, max 8");
  st = p.set_shape("x", {1, 4}, {2, 5}, {8, 4});
  EXPECT_EQ(st.message(), "optimization profile: input 'x' dim 1: needs min <= opt <= max, got min 4, opt 5, max 4");
  st = p.set_shape("mask", {-1, 4}, {2, 4}, {8, 4});
  EXPECT_EQ(st.message(), "optimization profile: input 'mask' dim 0: min -1 is negative");
  EXPECT_TRUE(p.shapes().empty());
  ASSERT_TRUE(p.set_shape("x", {1, 4}, {1, 4}, {1, 4}).ok());
  EXPECT_EQ(p.shapes().at("x").max, (Shape{1, 4}));
}

TEST(Profiles, RunsAnyShapeInsideItsProfileLikeTheEngineWithout) {
  auto engine = profiled_engine();
  auto plain = plain_engine();
  ASSERT_TRUE(engine && plain);
  std::mt19937 gen(testing::random_seed("Profiles.RunsAnyShapeInsideItsProfile"));
  auto plain_ctx = plain->create_execution_context();
  const std::vector<std::pair<int, std::vector<int64_t>>> cases = {{0, {1, 4, 8, 3, 6}}, {1, {16, 24, 32, 17, 30}}};
  for (const auto& [profile, batches] : cases) {
    auto ctx = engine->create_execution_context();
    ASSERT_TRUE(ctx->set_optimization_profile(profile).ok());
    EXPECT_EQ(ctx->optimization_profile(), profile);
    for (int64_t batch : batches) {
      const Tensor x = testing::random_tensor(gen, DType::kFloat32, {batch, 4}, -2.0f, 2.0f);
      const std::string what = "profile " + std::to_string(profile) + " batch " + std::to_string(batch);
      expect_same(run_y(*ctx, x), run_y(*plain_ctx, x), what);
      // The bound-buffer path: set_input_shape, set_tensor_address, execute().
      std::vector<float> y(batch * 3);
      ASSERT_TRUE(ctx->set_input_shape("x", {batch, 4}).ok()) << what;
      ASSERT_TRUE(ctx->set_tensor_address("x", const_cast<void*>(x.raw_data())).ok());
      ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
      ASSERT_TRUE(ctx->execute().ok()) << what;
      expect_same(Tensor::from_vector<float>(DType::kFloat32, {batch, 3}, y), run_y(*plain_ctx, x), what + " bound");
    }
  }
}

TEST(Profiles, RefusesShapesOutsideTheContextsProfile) {
  auto engine = profiled_engine();
  ASSERT_TRUE(engine);
  std::mt19937 gen(testing::random_seed("Profiles.RefusesShapesOutside"));
  auto ctx = engine->create_execution_context();
  Status st = ctx->set_input_shape("x", {9, 4});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "input 'x' shape [9,4] is outside profile 0 (max [8,4])");
  EXPECT_EQ(ctx->set_input_shape("x", {0, 4}).message(), "input 'x' shape [0,4] is outside profile 0 (min [1,4])");
  // A known dimension that differs is the engine's shape error, not the profile's.
  EXPECT_NE(ctx->set_input_shape("x", {2, 5}).message().find("does not match the engine's float32[batch,4]"),
            std::string::npos);
  auto out = ctx->execute({{"x", testing::random_tensor(gen, DType::kFloat32, {16, 4}, -1.0f, 1.0f)}});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "input 'x' shape [16,4] is outside profile 0 (max [8,4])");

  ASSERT_TRUE(ctx->set_optimization_profile(1).ok());
  out = ctx->execute({{"x", testing::random_tensor(gen, DType::kFloat32, {8, 4}, -1.0f, 1.0f)}});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "input 'x' shape [8,4] is outside profile 1 (min [16,4])");
  EXPECT_EQ(ctx->set_input_shape("x", {33, 4}).message(), "input 'x' shape [33,4] is outside profile 1 (max [32,4])");

  // A shape set under one profile is checked again at execute() after the context switches profile.
  auto bound = engine->create_execution_context();
  const Tensor x = testing::random_tensor(gen, DType::kFloat32, {4, 4}, -1.0f, 1.0f);
  std::vector<float> y(4 * 3);
  ASSERT_TRUE(bound->set_input_shape("x", {4, 4}).ok());
  ASSERT_TRUE(bound->set_tensor_address("x", const_cast<void*>(x.raw_data())).ok());
  ASSERT_TRUE(bound->set_tensor_address("y", y.data()).ok());
  ASSERT_TRUE(bound->set_optimization_profile(1).ok());
  EXPECT_EQ(bound->execute().message(), "input 'x' shape [4,4] is outside profile 1 (min [16,4])");
  ASSERT_TRUE(bound->set_optimization_profile(0).ok());
  EXPECT_TRUE(bound->execute().ok());
}

TEST(Profiles, SelectionAndReflection) {
  auto engine = profiled_engine();
  ASSERT_TRUE(engine);
  EXPECT_EQ(engine->num_optimization_profiles(), 2);
  auto p1 = engine->get_profile_shape("x", 1);
  ASSERT_TRUE(p1.ok()) << p1.status().to_string();
  EXPECT_EQ(p1->min, (Shape{16, 4}));
  EXPECT_EQ(p1->opt, (Shape{24, 4}));
  EXPECT_EQ(p1->max, (Shape{32, 4}));
  EXPECT_EQ(engine->get_profile_shape("x", 0)->opt, (Shape{4, 4}));
  EXPECT_EQ(engine->get_profile_shape("y", 0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine->get_profile_shape("x", 2).status().message(),
            "optimization profile 2 is out of range: the engine has 2 profiles");

  auto ctx = engine->create_execution_context();
  EXPECT_EQ(ctx->optimization_profile(), 0);
  Status st = ctx->set_optimization_profile(2);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "optimization profile 2 is out of range: the engine has 2 profiles (0 to 1)");
  EXPECT_FALSE(ctx->set_optimization_profile(-1).ok());
  EXPECT_EQ(ctx->optimization_profile(), 0);

  // Without profiles: profile 0 only, and any batch runs.
  auto plain = plain_engine();
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->num_optimization_profiles(), 0);
  auto pctx = plain->create_execution_context();
  EXPECT_TRUE(pctx->set_optimization_profile(0).ok());
  EXPECT_EQ(pctx->set_optimization_profile(1).message(),
            "optimization profile 1 is out of range: the engine has no profiles (only profile 0)");
  EXPECT_TRUE(pctx->set_input_shape("x", {1000, 4}).ok());
  EXPECT_FALSE(plain->get_profile_shape("x", 0).ok());
}

TEST(Profiles, RefusesBadProfilesAtBuild) {
  auto refusal = [](const BuilderConfig& config) {
    auto e = build(config);
    return e.ok() ? std::string("(built)") : e.status().message();
  };
  {
    BuilderConfig config;
    OptimizationProfile p;
    ASSERT_TRUE(p.set_shape("nope", {1, 4}, {1, 4}, {1, 4}).ok());
    config.add_optimization_profile(batch_profile(1, 2, 4));
    config.add_optimization_profile(p);
    EXPECT_EQ(refusal(config), "optimization profile 1: 'nope' is not an input of the model");
  }
  {
    BuilderConfig config;
    OptimizationProfile p;
    ASSERT_TRUE(p.set_shape("x", {1, 4, 1}, {1, 4, 1}, {1, 4, 1}).ok());
    config.add_optimization_profile(p);
    EXPECT_EQ(refusal(config),
              "optimization profile 0: input 'x' has rank 2 (float32[batch,4]), the profile gives rank 3");
  }
  {
    BuilderConfig config;
    OptimizationProfile p;
    ASSERT_TRUE(p.set_shape("x", {1, 4}, {2, 4}, {2, 5}).ok());
    config.add_optimization_profile(p);
    EXPECT_EQ(refusal(config),
              "optimization profile 0: input 'x' dim 1 is 4 in the model (float32[batch,4]), the profile gives min 4, "
              "max 5");
  }
  {
    BuilderConfig config;
    config.add_optimization_profile(batch_profile(1, 2, 4));
    config.add_optimization_profile(OptimizationProfile());
    EXPECT_EQ(refusal(config),
              "optimization profile 1: input 'x' has dynamic shape float32[batch,4] and no min/opt/max in the profile");
  }
  {
    BuilderConfig config;
    config.add_optimization_profile(batch_profile(1, 2, 4));
    config.set_input_shape("x", {2, 4});
    EXPECT_NE(refusal(config).find("fixed input shapes (--shapes) and optimization profiles exclude each other"),
              std::string::npos);
  }
}

// transformers' BERT names [batch, seq] in all three inputs: a profile must give each shared dim one range.
TEST(Profiles, SharedDimsNeedOneRange) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  ASSERT_TRUE(parser.parse_from_file(std::string(KILN_SOURCE_DIR) + "/tests/models/tiny_bert_dyn.onnx").ok());
  auto config_with = [](int64_t mask_opt_seq) {
    BuilderConfig config;
    config.set_device("cpu");
    OptimizationProfile p;
    EXPECT_TRUE(p.set_shape("input_ids", {1, 1}, {2, 64}, {4, 128}).ok());
    EXPECT_TRUE(p.set_shape("token_type_ids", {1, 1}, {2, 64}, {4, 128}).ok());
    EXPECT_TRUE(p.set_shape("attention_mask", {1, 1}, {2, mask_opt_seq}, {4, 128}).ok());
    config.add_optimization_profile(p);
    return config;
  };
  auto bad = Builder(logger).build_engine(network, config_with(32));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "optimization profile 0: inputs 'input_ids' and 'attention_mask' share dim 'seq', which the profile gives "
            "min 1, opt 64, max 128 and min 1, opt 32, max 128");
  auto good = Builder(logger).build_engine(network, config_with(64));
  ASSERT_TRUE(good.ok()) << good.status().to_string();
}

TEST(Profiles, ManyThreadsEachWithItsOwnContextAndShapes) {
  auto engine = profiled_engine();
  auto plain = plain_engine();
  ASSERT_TRUE(engine && plain);
  const unsigned seed = testing::random_seed("Profiles.ManyThreads");
  std::atomic<int> failures{0}, runs{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 gen(seed + t);
      const int profile = t % 2;
      const int64_t lo = profile == 0 ? 1 : 16, hi = profile == 0 ? 8 : 32;
      auto ctx = engine->create_execution_context();
      auto ref = plain->create_execution_context();
      if (!ctx->set_optimization_profile(profile).ok()) ++failures;
      for (int i = 0; i < 25; ++i) {
        const int64_t batch = lo + static_cast<int64_t>(gen() % (hi - lo + 1));
        const Tensor x = testing::random_tensor(gen, DType::kFloat32, {batch, 4}, -2.0f, 2.0f);
        auto got = ctx->execute({{"x", x}});
        auto want = ref->execute({{"x", x}});
        if (!got.ok() || !want.ok()) {
          ++failures;
          continue;
        }
        const Tensor &g = got->at("y"), &w = want->at("y");
        bool same = g.shape() == w.shape() && g.shape() == Shape{batch, 3};
        for (int64_t k = 0; same && k < w.numel(); ++k) same = g.data<float>()[k] == w.data<float>()[k];
        if (!same) ++failures;
        // Every thread also tries a shape past its profile's max.
        if (ctx->set_input_shape("x", {hi + 1, 4}).ok()) ++failures;
        ++runs;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(runs.load(), 8 * 25);
}

TEST(Profiles, EngineFileRoundTrip) {
  auto engine = profiled_engine();
  ASSERT_TRUE(engine);
  auto bytes = engine->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  Quiet logger;
  auto loaded = Runtime(logger).deserialize_engine(bytes->data(), bytes->size());
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  ASSERT_EQ((*loaded)->num_optimization_profiles(), 2);
  for (int k = 0; k < 2; ++k) EXPECT_EQ(*(*loaded)->get_profile_shape("x", k), *engine->get_profile_shape("x", k));
  EXPECT_NE((*loaded)->inspect().find("profile 1: x min [16,4] opt [24,4] max [32,4]"), std::string::npos)
      << (*loaded)->inspect();
  std::mt19937 gen(testing::random_seed("Profiles.EngineFileRoundTrip"));
  auto ctx = (*loaded)->create_execution_context();
  auto ref = engine->create_execution_context();
  ASSERT_TRUE(ctx->set_optimization_profile(1).ok());
  ASSERT_TRUE(ref->set_optimization_profile(1).ok());
  const Tensor x = testing::random_tensor(gen, DType::kFloat32, {20, 4}, -2.0f, 2.0f);
  expect_same(run_y(*ctx, x), run_y(*ref, x), "loaded engine, profile 1 batch 20");
  EXPECT_EQ(ctx->set_input_shape("x", {40, 4}).message(), "input 'x' shape [40,4] is outside profile 1 (max [32,4])");
}

}  // namespace
}  // namespace kiln
