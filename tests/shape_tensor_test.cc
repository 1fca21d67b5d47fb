// Shape-tensor inputs in optimization profiles (issue 5's last item) on CPU engines: an int64 input whose
// values are Reshape's target gets min/opt/max values (OptimizationProfile::set_shape_values); the API's
// and the build's checks, runs inside the profile against the engine without profiles, refusals of values
// outside it (execute(), bound buffers, set_input_values), reflection, the engine file round trip, and the
// command line's --min-values/--opt-values/--max-values.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "quiet_logger.h"
#include "builder/choose_tactics.h"
#include "engine/plan.h"
#include "kiln/kiln.h"
#include "random_tensors.h"
#include "shape_tensor_model.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

using Quiet = testing::QuietLogger;

Result<std::shared_ptr<Engine>> build(const BuilderConfig& config) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  const std::string bytes = testing::serialize(testing::reshape_by_shape_tensor());
  KILN_RETURN_IF_ERROR(parser.parse(bytes.data(), bytes.size()));
  return Builder(logger).build_engine(network, config);
}

BuilderConfig cpu_config(const std::vector<OptimizationProfile>& profiles) {
  BuilderConfig config;
  config.set_device("cpu");
  for (const auto& p : profiles) config.add_optimization_profile(p);
  return config;
}

void expect_contains(const Status& st, const std::string& text) {
  EXPECT_FALSE(st.ok()) << "expected an error containing: " << text;
  EXPECT_NE(st.message().find(text), std::string::npos) << st.to_string();
}

void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  for (int64_t i = 0; i < want.numel(); ++i)
    ASSERT_EQ(got.data<float>()[i], want.data<float>()[i]) << what << " element " << i;
}

TEST(ShapeTensors, SetShapeValuesChecksTheRange) {
  OptimizationProfile p;
  expect_contains(p.set_shape_values("target", {2, 3}, {4, 3}, {8}),
                  "input 'target': values min [2,3], opt [4,3] and max [8] differ in length");
  expect_contains(p.set_shape_values("target", {2, 3}, {1, 3}, {8, 3}),
                  "input 'target' value 0: needs min <= opt <= max, got min 2, opt 1, max 8");
  EXPECT_TRUE(p.set_shape_values("target", {-1, 3}, {-1, 3}, {-1, 6}).ok());  // Reshape's -1 is a value
  ASSERT_EQ(p.shapes().count("target"), 1u);
  EXPECT_TRUE(p.shapes().at("target").values);
}

TEST(ShapeTensors, RefusesBadValuesAtBuild) {
  auto with_values = [](const std::string& name, std::vector<int64_t> min, std::vector<int64_t> max) {
    OptimizationProfile p;
    EXPECT_TRUE(p.set_shape("x", {1, 6}, {2, 6}, {4, 6}).ok());
    EXPECT_TRUE(p.set_shape_values(name, min, min, max).ok());
    return p;
  };
  // Values for a float input, for one of another length, for a name that is not an input.
  OptimizationProfile on_x;
  EXPECT_TRUE(on_x.set_shape_values("x", {1, 6}, {2, 6}, {4, 6}).ok());
  auto e = build(cpu_config({testing::shape_tensor_profile(), on_x}));
  ASSERT_FALSE(e.ok());
  expect_contains(e.status(), "optimization profile 1: input 'x'");
  expect_contains(e.status(), "must be an int32 or int64 tensor");
  e = build(cpu_config({with_values("target", {2, 3, 1}, {8, 3, 1})}));
  expect_contains(e.status(), "optimization profile 0: input 'target' (int64[2]) holds 2 values, the profile gives 3");
  e = build(cpu_config({with_values("nope", {1}, {2})}));
  expect_contains(e.status(), "optimization profile 0: 'nope' is not an input of the model");
}

TEST(ShapeTensors, RunsInsideTheProfileAndRefusesOutside) {
  auto profiled = build(cpu_config({testing::shape_tensor_profile()}));
  ASSERT_TRUE(profiled.ok()) << profiled.status().to_string();
  auto plain = build(cpu_config({}));
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  auto ctx = (*profiled)->create_execution_context();
  auto ref = (*plain)->create_execution_context();
  std::mt19937 gen(testing::random_seed("ShapeTensors.Runs"));
  for (int64_t batch : {1, 2, 3, 4}) {  // min, opt, between, max: target [batch*2, 3]
    const Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {batch, 6}, 0.1f, 2.0f);
    const Tensor target = testing::target_tensor(batch * 2, 3);
    auto got = ctx->execute({{"x", x}, {"target", target}});
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    auto want = ref->execute({{"x", x}, {"target", target}});
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    expect_same(got->at("y"), want->at("y"), "batch " + std::to_string(batch));
    EXPECT_EQ(got->at("y").shape(), (Shape{batch * 2, 3}));
  }
  // Outside: above max, below min; the message names the input, its values and the profile's bound.
  const Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {4, 6}, 0.1f, 2.0f);
  auto out = ctx->execute({{"x", x}, {"target", testing::target_tensor(4, 6)}});
  expect_contains(out.status(), "input 'target' values [4,6] are outside profile 0 (max [8,3])");
  out = ctx->execute({{"x", x}, {"target", testing::target_tensor(1, 24)}});
  expect_contains(out.status(), "input 'target' values [1,24] are outside profile 0 (min [2,3])");
  // The engine without profiles takes any values.
  EXPECT_TRUE(ref->execute({{"x", x}, {"target", testing::target_tensor(4, 6)}}).ok());
}

TEST(ShapeTensors, BoundBuffersAndSetInputValues) {
  auto e = build(cpu_config({testing::shape_tensor_profile()}));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  auto ctx = (*e)->create_execution_context();
  std::mt19937 gen(testing::random_seed("ShapeTensors.Bound"));
  Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {3, 6}, 0.1f, 2.0f);
  Tensor target = testing::target_tensor(6, 3);
  ASSERT_TRUE(ctx->set_input_shape("x", {3, 6}).ok());
  // Before the values are known, y's shape is not; set_input_values fixes it.
  EXPECT_FALSE(ctx->output_shape("y").ok());
  ASSERT_TRUE(ctx->set_input_values("target", {6, 3}).ok());
  auto shape = ctx->output_shape("y");
  ASSERT_TRUE(shape.ok()) << shape.status().to_string();
  EXPECT_EQ(*shape, (Shape{6, 3}));
  // execute() on bound buffers reads the values from the bound target: the output's buffer is sized by them.
  Tensor y(DType::kFloat32, {6, 3});
  ASSERT_TRUE(ctx->set_tensor_address("x", x.raw_data()).ok());
  ASSERT_TRUE(ctx->set_tensor_address("target", target.raw_data()).ok());
  ASSERT_TRUE(ctx->set_tensor_address("y", y.raw_data()).ok());
  Status st = ctx->execute();
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(y.data<float>()[i], std::max(x.data<float>()[i], 0.0f)) << i;
  target.data<int64_t>()[0] = 9;
  expect_contains(ctx->execute(), "input 'target' values [9,3] are outside profile 0 (max [8,3])");
  // set_input_values: outside, not a shape tensor, not an input.
  expect_contains(ctx->set_input_values("target", {1, 18}), "input 'target' values [1,18] are outside profile 0 (min [2,3])");
  expect_contains(ctx->set_input_values("x", {1}), "input 'x' is not a shape tensor: optimization profile 0 gives it no values");
  EXPECT_EQ(ctx->set_input_values("nope", {1}).code(), StatusCode::kNotFound);
  // enqueue is for GPU engines; a CPU engine says so.
  EXPECT_EQ(ctx->enqueue(nullptr).code(), StatusCode::kUnsupported);
}

TEST(ShapeTensors, ReflectionAndEngineFileRoundTrip) {
  auto e = build(cpu_config({testing::shape_tensor_profile()}));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  auto values = (*e)->get_profile_shape_values("target", 0);
  ASSERT_TRUE(values.ok()) << values.status().to_string();
  EXPECT_EQ(values->min, (Shape{2, 3}));
  EXPECT_EQ(values->opt, (Shape{4, 3}));
  EXPECT_EQ(values->max, (Shape{8, 3}));
  EXPECT_TRUE(values->values);
  auto shape = (*e)->get_profile_shape("target", 0);  // its shape is static
  ASSERT_TRUE(shape.ok()) << shape.status().to_string();
  EXPECT_EQ(shape->max, (Shape{2}));
  EXPECT_FALSE(shape->values);
  EXPECT_EQ((*e)->get_profile_shape_values("x", 0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ((*e)->get_profile_shape_values("target", 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE((*e)->inspect().find("profile 0: target values min [2,3] opt [4,3] max [8,3]"), std::string::npos)
      << (*e)->inspect();

  auto bytes = (*e)->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  const std::string text(bytes->begin(), bytes->end());
  EXPECT_NE(text.find("\"values\": true"), std::string::npos);
  Quiet logger;
  auto loaded = Runtime(logger).deserialize_engine(bytes->data(), bytes->size());
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ((*loaded)->plan().settings.profiles, (*e)->plan().settings.profiles);
  auto ctx = (*loaded)->create_execution_context();
  std::mt19937 gen(testing::random_seed("ShapeTensors.RoundTrip"));
  const Tensor x = testing::random_signed_tensor(gen, DType::kFloat32, {2, 6}, 0.1f, 2.0f);
  auto out = ctx->execute({{"x", x}, {"target", testing::target_tensor(4, 3)}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->at("y").shape(), (Shape{4, 3}));
  expect_contains(ctx->execute({{"x", x}, {"target", testing::target_tensor(12, 1)}}).status(),
                  "input 'target' values [12,1] are outside profile 0");
}

// What a GPU context's program and the build's placement see: the graph specialized to shapes and values,
// where the target is a constant and the Reshape's output static (so the GPU can run it).
TEST(ShapeTensors, SpecializingBindsTheValuesAsConstants) {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  const std::string bytes = testing::serialize(testing::reshape_by_shape_tensor());
  ASSERT_TRUE(parser.parse(bytes.data(), bytes.size()).ok());
  auto m = builder::specialize_to_shapes(network.model(), {{"x", {2, 6}}}, {{"target", {4, 3}}});
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_EQ(m->graph.inputs.size(), 1u);
  EXPECT_EQ(m->graph.inputs[0].name, "x");
  ASSERT_EQ(m->graph.initializers.count("target"), 1u);
  EXPECT_EQ(m->graph.initializers.at("target").data<int64_t>()[0], 4);
  const ir::TypeInfo* y = m->graph.type_of("y");
  ASSERT_NE(y, nullptr);
  ASSERT_TRUE(y->is_static()) << y->to_string();
  EXPECT_EQ(y->static_shape(), (Shape{4, 3}));
  // Values that do not fit the input, and values for a float input, are refused.
  expect_contains(builder::specialize_to_shapes(network.model(), {{"x", {2, 6}}}, {{"target", {4, 3, 1}}}).status(),
                  "input 'target' (int64[2]): values [4,3,1] do not fit its shape");
  expect_contains(builder::specialize_to_shapes(network.model(), {}, {{"x", {1}}}).status(),
                  "takes values only as an int32 or int64 tensor");
}

struct Ran {
  int exit_code;
  std::string output;  // stdout and stderr together
};

Ran run_kiln(const std::string& args) {
  FILE* p = popen((std::string(KILN_CLI) + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(ShapeTensors, CommandLineValuesFlags) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_shape_tensor_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string model = (dir / "reshape.onnx").string(), engine = (dir / "reshape.kiln").string();
  std::ofstream(model, std::ios::binary) << testing::serialize(testing::reshape_by_shape_tensor());
  const std::string shapes = " --min-shapes x:1x6 --opt-shapes x:2x6 --max-shapes x:4x6";
  Ran b = run_kiln("build " + model + " -o " + engine + " --device cpu" + shapes +
                   " --min-values target:2x3 --opt-values target:4x3 --max-values target:8x3");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  Ran i = run_kiln("inspect " + engine);
  EXPECT_NE(i.output.find("profile 0: target values min [2,3] opt [4,3] max [8,3]"), std::string::npos) << i.output;
  // Negative values (Reshape's -1) parse; a missing flag of the three, a bad value and min > opt are refused.
  b = run_kiln("build " + model + " -o " + engine + " --device cpu" + shapes +
               " --min-values target:-1x3 --opt-values target:-1x3 --max-values target:-1x6");
  EXPECT_EQ(b.exit_code, 0) << b.output;
  b = run_kiln("build " + model + " -o " + engine + " --device cpu" + shapes + " --min-values target:2x3");
  EXPECT_NE(b.exit_code, 0);
  EXPECT_NE(b.output.find("--min-values is given 1 times, --opt-values 0, --max-values 0"), std::string::npos) << b.output;
  b = run_kiln("build " + model + " -o " + engine + " --device cpu" + shapes +
               " --min-values target:2xa --opt-values target:4x3 --max-values target:8x3");
  EXPECT_NE(b.output.find("--min-values (profile 0): value 'a' of 'target' is not an integer"), std::string::npos)
      << b.output;
  b = run_kiln("build " + model + " -o " + engine + " --device cpu" + shapes +
               " --min-values target:5x3 --opt-values target:4x3 --max-values target:8x3");
  EXPECT_NE(b.output.find("optimization profile 0: input 'target' value 0: needs min <= opt <= max"),
            std::string::npos)
      << b.output;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
