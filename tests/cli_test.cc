// The kiln command line, as a user runs it: exit codes, messages, files written, and bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "onnx/tensor_proto.h"
#include "test_models.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

// Whether `kiln build --device cuda` can work here: a GPU and the CUDA backend.
bool cuda_usable() {
  static const bool usable = [] {
    FILE* p = popen("nvidia-smi -L 2>/dev/null", "r");
    if (p == nullptr) return false;
    char buf[256];
    const bool any = fgets(buf, sizeof buf, p) != nullptr;
    pclose(p);
    return any;
  }();
  return usable;
}

struct Ran {
  int exit_code;
  std::string output;  // stdout and stderr together
};

Ran kiln(const std::string& args) {
  std::string cmd = std::string(KILN_CLI) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_cli_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    write(path("mlp.onnx"), testing::serialize(testing::mlp_with_shape_chain()));
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static void write(const std::string& p, const std::string& bytes) {
    std::ofstream f(p, std::ios::binary);
    f << bytes;
  }
  static std::string read(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  void write_input(const std::string& p, Shape shape) {
    Tensor x(DType::kFloat32, shape);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
    ASSERT_TRUE(onnx_io::write_tensor_file(x, "x", p).ok());
  }
  fs::path dir_;
};

TEST_F(Cli, BuildRunInspect) {
  Ran b = kiln("build " + path("mlp.onnx") + " -o " + path("mlp.kiln") + " --shapes x:2x4");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  ASSERT_TRUE(fs::exists(path("mlp.kiln")));
  Ran i = kiln("inspect " + path("mlp.kiln"));
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_NE(i.output.find("x: float32[2,4]"), std::string::npos) << i.output;
  EXPECT_NE(i.output.find("fc [MatMul]"), std::string::npos) << i.output;
  EXPECT_NE(i.output.find("weights:"), std::string::npos);
  write_input(path("x.pb"), {2, 4});
  Ran r = kiln("run " + path("mlp.kiln") + " --input x=" + path("x.pb") + " --output-dir " + path("out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("y: float32[2,3]"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(path("out/y.pb")));
  EXPECT_TRUE(fs::exists(path("out/y.npy")));
  // The .npy output reads back as an input, and an ONNX model runs directly too.
  Ran r2 = kiln("run " + path("mlp.onnx") + " --input x=" + path("x.pb") + " --output-dir " + path("out2"));
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_EQ(read(path("out/y.npy")), read(path("out2/y.npy")));
}

// The optimized graph of an ONNX model needs no device: a GPU engine's graph prints on a machine without one.
TEST_F(Cli, InspectGraphPlansWithoutADevice) {
  Ran cpu = kiln("inspect --graph --device cpu --shapes x:2x4 " + path("mlp.onnx"));
  ASSERT_EQ(cpu.exit_code, 0) << cpu.output;
  EXPECT_NE(cpu.output.find("fc: MatMul("), std::string::npos) << cpu.output;
  Ran gpu = kiln("inspect --graph --device cuda --fp16 --shapes x:2x4 " + path("mlp.onnx"));
#ifdef KILN_HAVE_CUDA
  ASSERT_EQ(gpu.exit_code, 0) << gpu.output;
  EXPECT_NE(gpu.output.find("kiln.FusedMatMul("), std::string::npos) << gpu.output;  // MatMul + bias fused
  EXPECT_NE(gpu.output.find("float16["), std::string::npos) << gpu.output;           // and lowered
#else
  EXPECT_NE(gpu.exit_code, 0);
  EXPECT_NE(gpu.output.find("without the CUDA backend"), std::string::npos) << gpu.output;
#endif
  Ran both = kiln("inspect --graph --device cuda --fp16 --bf16 " + path("mlp.onnx"));
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.output.find("exclude each other"), std::string::npos) << both.output;
  Ran missing = kiln("inspect --graph " + path("nothing.onnx"));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nothing.onnx"), std::string::npos) << missing.output;
}

TEST_F(Cli, HelpOnEverySubcommand) {
  for (const char* sub : {"build", "run", "check", "inspect", "ops"}) {
    Ran h = kiln(std::string(sub) + " --help");
    EXPECT_EQ(h.exit_code, 0) << sub;
    EXPECT_NE(h.output.find("Usage"), std::string::npos) << sub << ": " << h.output;
  }
  EXPECT_NE(kiln("").exit_code, 0);
  EXPECT_NE(kiln("frobnicate").exit_code, 0);
}

TEST_F(Cli, BadModelFiles) {
  Ran missing = kiln("build " + path("nope.onnx") + " -o " + path("x.kiln"));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nope.onnx"), std::string::npos) << missing.output;
  std::string good = read(path("mlp.onnx"));
  write(path("truncated.onnx"), good.substr(0, good.size() / 2));
  Ran truncated = kiln("build " + path("truncated.onnx") + " -o " + path("t.kiln"));
  EXPECT_NE(truncated.exit_code, 0);
  EXPECT_NE(truncated.output.find("truncated.onnx"), std::string::npos) << truncated.output;
  EXPECT_FALSE(fs::exists(path("t.kiln")));
  write(path("empty.onnx"), "");
  EXPECT_NE(kiln("build " + path("empty.onnx") + " -o " + path("e.kiln")).exit_code, 0);
}

TEST_F(Cli, BadShapesAndInputs) {
  Ran bad_name = kiln("build " + path("mlp.onnx") + " -o " + path("m.kiln") + " --shapes y:2x4");
  EXPECT_NE(bad_name.exit_code, 0);
  EXPECT_NE(bad_name.output.find("'y'"), std::string::npos) << bad_name.output;
  Ran bad_syntax = kiln("build " + path("mlp.onnx") + " -o " + path("m.kiln") + " --shapes x:2xq");
  EXPECT_NE(bad_syntax.exit_code, 0);
  ASSERT_EQ(kiln("build " + path("mlp.onnx") + " -o " + path("m.kiln") + " --shapes x:2x4").exit_code, 0);
  write_input(path("wrong.pb"), {3, 4});
  Ran wrong_shape = kiln("run " + path("m.kiln") + " --input x=" + path("wrong.pb") + " --output-dir " + path("o"));
  EXPECT_NE(wrong_shape.exit_code, 0);
  EXPECT_NE(wrong_shape.output.find("input 'x'"), std::string::npos) << wrong_shape.output;
  Ran wrong_input = kiln("run " + path("m.kiln") + " --input q=" + path("wrong.pb"));
  EXPECT_NE(wrong_input.exit_code, 0);
  EXPECT_NE(wrong_input.output.find("'q'"), std::string::npos) << wrong_input.output;
  Ran no_input = kiln("run " + path("m.kiln"));
  EXPECT_NE(no_input.exit_code, 0);
  EXPECT_NE(no_input.output.find("'x'"), std::string::npos) << no_input.output;
  Ran unreadable = kiln("run " + path("m.kiln") + " --input x=" + path("missing.npy"));
  EXPECT_NE(unreadable.exit_code, 0);
  EXPECT_NE(unreadable.output.find("missing.npy"), std::string::npos) << unreadable.output;
  write(path("garbage.npy"), "\x93NUMPY\x01\x00garbage");
  EXPECT_NE(kiln("run " + path("m.kiln") + " --input x=" + path("garbage.npy")).exit_code, 0);
}

TEST_F(Cli, CorruptedEngine) {
  ASSERT_EQ(kiln("build " + path("mlp.onnx") + " -o " + path("m.kiln")).exit_code, 0);
  std::string bytes = read(path("m.kiln"));
  std::string corrupted = bytes;
  corrupted[corrupted.size() - 10] ^= 0x5a;
  write(path("corrupted.kiln"), corrupted);
  Ran c = kiln("inspect " + path("corrupted.kiln"));
  EXPECT_NE(c.exit_code, 0);
  EXPECT_NE(c.output.find("corrupted.kiln"), std::string::npos) << c.output;
  EXPECT_NE(c.output.find("checksum"), std::string::npos) << c.output;
  write(path("short.kiln"), bytes.substr(0, 40));
  Ran s = kiln("inspect " + path("short.kiln"));
  EXPECT_NE(s.exit_code, 0);
  EXPECT_NE(s.output.find("truncated"), std::string::npos) << s.output;
}

TEST_F(Cli, CheckReportsPassFailAndSummary) {
  // A passing test folder made from the model and its own output, and a failing one with a wrong output.
  fs::create_directories(path("suite/good/test_data_set_0"));
  fs::create_directories(path("suite/bad/test_data_set_0"));
  for (const char* t : {"good", "bad"}) write(path(std::string("suite/") + t + "/model.onnx"), read(path("mlp.onnx")));
  write_input(path("suite/good/test_data_set_0/input_0.pb"), {2, 4});
  write_input(path("suite/bad/test_data_set_0/input_0.pb"), {2, 4});
  ASSERT_EQ(kiln("run " + path("mlp.onnx") + " --input x=" + path("suite/good/test_data_set_0/input_0.pb") +
                 " --output-dir " + path("suite/good/test_data_set_0")).exit_code, 0);
  fs::rename(path("suite/good/test_data_set_0/y.pb"), path("suite/good/test_data_set_0/output_0.pb"));
  Tensor wrong(DType::kFloat32, {2, 3});
  wrong.data<float>()[0] = 42.0f;
  ASSERT_TRUE(onnx_io::write_tensor_file(wrong, "y", path("suite/bad/test_data_set_0/output_0.pb")).ok());
  Ran c = kiln("check " + path("suite"));
  EXPECT_EQ(c.exit_code, 1) << c.output;
  EXPECT_NE(c.output.find("PASS good"), std::string::npos) << c.output;
  EXPECT_NE(c.output.find("FAIL bad"), std::string::npos) << c.output;
  EXPECT_NE(c.output.find("1 passed, 1 failed, 0 skipped"), std::string::npos) << c.output;
  // Listed as an expected failure, the failing test is skipped; a listed test that passes is an error.
  write(path("xfail.txt"), "bad: wrong on purpose\n");
  EXPECT_EQ(kiln("check --expected-failures " + path("xfail.txt") + " " + path("suite")).exit_code, 0);
  write(path("xfail2.txt"), "bad: wrong on purpose\ngood: claims to fail\n");
  EXPECT_NE(kiln("check --expected-failures " + path("xfail2.txt") + " " + path("suite")).exit_code, 0);
  // ... unless its reason says it is random (a random op's test can match its data by chance).
  write(path("xfail3.txt"), "bad: wrong on purpose\ngood: random op; may match by chance\n");
  Ran r = kiln("check --expected-failures " + path("xfail3.txt") + " " + path("suite"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("passed by chance"), std::string::npos) << r.output;
  EXPECT_NE(kiln("check " + path("does-not-exist")).exit_code, 0);
}

TEST_F(Cli, DeviceAndPrecisionFlags) {
  // --device cuda on a machine without a usable GPU fails and says why; auto falls back to the CPU.
  if (!cuda_usable()) {
    Ran c = kiln("build " + path("mlp.onnx") + " -o " + path("c.kiln") + " --device cuda");
    EXPECT_EQ(c.exit_code, 1) << c.output;
    EXPECT_NE(c.output.find("--device cuda"), std::string::npos) << c.output;
    EXPECT_FALSE(fs::exists(path("c.kiln")));
    Ran a = kiln("build " + path("mlp.onnx") + " -o " + path("a.kiln") + " --shapes x:2x4 --fp16");
    EXPECT_EQ(a.exit_code, 0) << a.output;
    EXPECT_NE(a.output.find("targets the CPU"), std::string::npos) << a.output;  // --fp16 has nothing to lower
  }
  Ran bad = kiln("build " + path("mlp.onnx") + " -o " + path("b.kiln") + " --layer-precision fc:fp64");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("'fp64' is not fp32, fp16 or bf16"), std::string::npos) << bad.output;
  Ran unknown = kiln("build " + path("mlp.onnx") + " -o " + path("b.kiln") + " --layer-precision nosuch:fp32");
  EXPECT_EQ(unknown.exit_code, 1) << unknown.output;
  EXPECT_NE(unknown.output.find("no layer named 'nosuch'"), std::string::npos) << unknown.output;
  Ran both = kiln("build " + path("mlp.onnx") + " -o " + path("b.kiln") + " --fp16 --bf16");
  EXPECT_EQ(both.exit_code, 1) << both.output;
  Ran dev = kiln("build " + path("mlp.onnx") + " -o " + path("b.kiln") + " --device tpu");
  EXPECT_NE(dev.exit_code, 0) << dev.output;
  EXPECT_FALSE(fs::exists(path("b.kiln")));
}

TEST_F(Cli, BenchOnTheCpuWritesJson) {
  Ran b = kiln("bench " + path("mlp.onnx") + " --device cpu --shapes x:2x4 --iterations 20 --duration 0 --warmup 0 "
               "--streams 2 --json " + path("bench.json"));
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("throughput:"), std::string::npos) << b.output;
  EXPECT_NE(b.output.find("p99"), std::string::npos) << b.output;
  const std::string j = read(path("bench.json"));
  for (const char* key : {"\"throughput_qps\"", "\"latency_ms\"", "\"median\"", "\"p95\"", "\"enqueue_ms\""})
    EXPECT_NE(j.find(key), std::string::npos) << key << " in " << j;
  EXPECT_NE(j.find("\"iterations\": 40"), std::string::npos) << j;  // 20 on each of 2 streams
  // Dynamic input without --shapes: a clear error.
  Ran dyn = kiln("bench " + path("mlp.onnx") + " --device cpu --duration 0");
  EXPECT_EQ(dyn.exit_code, 1) << dyn.output;
  EXPECT_NE(dyn.output.find("give it with --shapes x:"), std::string::npos) << dyn.output;
  Ran zero = kiln("bench " + path("mlp.onnx") + " --device cpu --shapes x:2x4 --streams 0");
  EXPECT_EQ(zero.exit_code, 1) << zero.output;
}

TEST_F(Cli, TimingCacheErrorsNameTheFile) {
  write(path("cache.json"), "{not json");
  Ran r = kiln("build " + path("mlp.onnx") + " -o " + path("t.kiln") + " --shapes x:2x4 --timing-cache " + path("cache.json"));
  if (cuda_usable()) {
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("cache.json"), std::string::npos) << r.output;
  } else {
    EXPECT_EQ(r.exit_code, 0) << r.output;  // a CPU build times nothing and reads no cache
  }
}

// Optimization profiles (issue 5) on the command line: two profiles by repeating the three flags.
TEST_F(Cli, ProfilesBuildInspectRunAndBench) {
  const std::string profiles =
      " --min-shapes x:1x4 --opt-shapes x:4x4 --max-shapes x:8x4 --min-shapes x:16x4 --opt-shapes x:24x4 "
      "--max-shapes x:32x4";
  Ran b = kiln("build " + path("mlp.onnx") + " -o " + path("p.kiln") + " --device cpu" + profiles);
  ASSERT_EQ(b.exit_code, 0) << b.output;
  Ran plain = kiln("build " + path("mlp.onnx") + " -o " + path("plain.kiln") + " --device cpu");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  Ran i = kiln("inspect " + path("p.kiln"));
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_NE(i.output.find("optimization profiles (2):"), std::string::npos) << i.output;
  EXPECT_NE(i.output.find("profile 0: x min [1,4] opt [4,4] max [8,4]"), std::string::npos) << i.output;
  EXPECT_NE(i.output.find("profile 1: x min [16,4] opt [24,4] max [32,4]"), std::string::npos) << i.output;

  // Inside profile 0: the same outputs as the engine without profiles.
  write_input(path("x3.pb"), {3, 4});
  Ran r = kiln("run " + path("p.kiln") + " -i x=" + path("x3.pb") + " --output-dir " + path("out_p"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Ran rp = kiln("run " + path("plain.kiln") + " -i x=" + path("x3.pb") + " --output-dir " + path("out_plain"));
  ASSERT_EQ(rp.exit_code, 0) << rp.output;
  EXPECT_EQ(read(path("out_p/y.npy")), read(path("out_plain/y.npy")));
  EXPECT_FALSE(read(path("out_p/y.npy")).empty());
  // Outside profile 0: a non-zero exit and the message.
  write_input(path("x9.pb"), {9, 4});
  Ran out = kiln("run " + path("p.kiln") + " -i x=" + path("x9.pb") + " --output-dir " + path("out_9"));
  EXPECT_EQ(out.exit_code, 1) << out.output;
  EXPECT_NE(out.output.find("input 'x' shape [9,4] is outside profile 0 (max [8,4])"), std::string::npos) << out.output;
  // --shapes with a profiled engine: inside profile 0 and agreeing with the input's file.
  Ran shaped = kiln("run " + path("p.kiln") + " -i x=" + path("x3.pb") + " --shapes x:3x4 --output-dir " + path("o3"));
  EXPECT_EQ(shaped.exit_code, 0) << shaped.output;
  Ran disagree = kiln("run " + path("p.kiln") + " -i x=" + path("x3.pb") + " --shapes x:2x4 --output-dir " + path("o2"));
  EXPECT_EQ(disagree.exit_code, 1) << disagree.output;
  EXPECT_NE(disagree.output.find("input 'x': --shapes gives [2,4], its file holds [3,4]"), std::string::npos)
      << disagree.output;
  Ran shaped_out = kiln("run " + path("p.kiln") + " -i x=" + path("x9.pb") + " --shapes x:9x4 --output-dir " + path("o9"));
  EXPECT_EQ(shaped_out.exit_code, 1) << shaped_out.output;
  EXPECT_NE(shaped_out.output.find("input 'x' shape [9,4] is outside profile 0 (max [8,4])"), std::string::npos)
      << shaped_out.output;
  // An ONNX model built in memory with the profile flags runs the same way.
  Ran onnx = kiln("run " + path("mlp.onnx") + " --device cpu -i x=" + path("x9.pb") + profiles);
  EXPECT_EQ(onnx.exit_code, 1) << onnx.output;
  EXPECT_NE(onnx.output.find("is outside profile 0 (max [8,4])"), std::string::npos) << onnx.output;

  // kiln bench without --shapes: profile 0's opt shapes; with --shapes: those, inside profile 0.
  Ran opt = kiln("bench " + path("p.kiln") + " --iterations 2 --duration 0 --warmup 0 --json " + path("b.json"));
  ASSERT_EQ(opt.exit_code, 0) << opt.output;
  std::string j = read(path("b.json"));
  j.erase(std::remove_if(j.begin(), j.end(), [](char c) { return c == ' ' || c == '\n'; }), j.end());
  EXPECT_NE(j.find("\"input_shapes\":{\"x\":[4,4]}"), std::string::npos) << j;
  Ran given = kiln("bench " + path("p.kiln") + " --shapes x:6x4 --iterations 2 --duration 0 --warmup 0 --json " +
                   path("b6.json"));
  ASSERT_EQ(given.exit_code, 0) << given.output;
  j = read(path("b6.json"));
  j.erase(std::remove_if(j.begin(), j.end(), [](char c) { return c == ' ' || c == '\n'; }), j.end());
  EXPECT_NE(j.find("\"input_shapes\":{\"x\":[6,4]}"), std::string::npos) << j;
  Ran outside = kiln("bench " + path("p.kiln") + " --shapes x:20x4 --iterations 2 --duration 0 --warmup 0");
  EXPECT_EQ(outside.exit_code, 1) << outside.output;
  EXPECT_NE(outside.output.find("input 'x' shape [20,4] is outside profile 0 (max [8,4])"), std::string::npos)
      << outside.output;
  Ran onnx_bench = kiln("bench " + path("mlp.onnx") + " --device cpu --shapes x:2x4 --iterations 2 --duration 0 "
                        "--warmup 0" + profiles);
  EXPECT_EQ(onnx_bench.exit_code, 0) << onnx_bench.output;

  // --optimization-profile picks the context's profile in run and bench (bench then times its opt shapes).
  write_input(path("x20.pb"), {20, 4});
  Ran r1 = kiln("run " + path("p.kiln") + " --optimization-profile 1 -i x=" + path("x20.pb") + " --output-dir " + path("o20"));
  EXPECT_EQ(r1.exit_code, 0) << r1.output;
  Ran r1_out = kiln("run " + path("p.kiln") + " --optimization-profile 1 -i x=" + path("x3.pb") + " --output-dir " + path("o31"));
  EXPECT_EQ(r1_out.exit_code, 1) << r1_out.output;
  EXPECT_NE(r1_out.output.find("input 'x' shape [3,4] is outside profile 1 (min [16,4])"), std::string::npos) << r1_out.output;
  Ran b1 = kiln("bench " + path("p.kiln") + " --optimization-profile 1 --iterations 2 --duration 0 --warmup 0 --json " +
                path("b1.json"));
  ASSERT_EQ(b1.exit_code, 0) << b1.output;
  j = read(path("b1.json"));
  j.erase(std::remove_if(j.begin(), j.end(), [](char c) { return c == ' ' || c == '\n'; }), j.end());
  EXPECT_NE(j.find("\"input_shapes\":{\"x\":[24,4]}"), std::string::npos) << j;
  Ran no_such = kiln("bench " + path("p.kiln") + " --optimization-profile 2 --iterations 1 --duration 0 --warmup 0");
  EXPECT_EQ(no_such.exit_code, 1) << no_such.output;
  EXPECT_NE(no_such.output.find("optimization profile 2 is out of range: the engine has 2 profiles (0 to 1)"),
            std::string::npos) << no_such.output;
}

TEST_F(Cli, ProfileFlagErrorsNameWhatIsWrong) {
  auto build = [&](const std::string& flags) {
    return kiln("build " + path("mlp.onnx") + " -o " + path("e.kiln") + " --device cpu " + flags);
  };
  auto expect_error = [&](const std::string& flags, const std::string& text) {
    Ran r = build(flags);
    EXPECT_EQ(r.exit_code, 1) << flags << "\n" << r.output;
    EXPECT_NE(r.output.find(text), std::string::npos) << flags << "\n" << r.output;
    EXPECT_FALSE(fs::exists(path("e.kiln"))) << flags;
  };
  expect_error("--min-shapes x:1x4 --opt-shapes x:2x4",
               "--min-shapes is given 1 times, --opt-shapes 1, --max-shapes 0: give the three once per profile");
  expect_error("--min-shapes x:1x4 --opt-shapes x:2x4 --max-shapes x:4x4 --min-shapes x:5x4",
               "--min-shapes is given 2 times");
  expect_error("--min-shapes x:1x4,z:1 --opt-shapes x:2x4 --max-shapes x:4x4",
               "profile 0: input 'z' is in --min-shapes but not in --opt-shapes");
  expect_error("--min-shapes x:1x4 --opt-shapes x:2x4 --max-shapes x:4x4 --min-shapes x:5x4 --opt-shapes x:6x4 "
               "--max-shapes y:8x4",
               "profile 1: input 'x' is in --min-shapes but not in --max-shapes");
  expect_error("--min-shapes x:1xA --opt-shapes x:2x4 --max-shapes x:4x4",
               "--min-shapes (profile 0): dimension 'A' of 'x' is not a non-negative integer");
  expect_error("--min-shapes x:1x4 --opt-shapes x:2x4 --max-shapes x4x4", "--max-shapes (profile 0): 'x4x4' is not NAME:DxDxD");
  expect_error("--min-shapes x:4x4 --opt-shapes x:2x4 --max-shapes x:8x4",
               "optimization profile 0: input 'x' dim 0: needs min <= opt <= max, got min 4, opt 2, max 8");
  expect_error("--min-shapes x:1x4 --opt-shapes x:2x4 --max-shapes x:4x4 --shapes x:2x4",
               "fixed input shapes (--shapes) and optimization profiles exclude each other");
  expect_error("--min-shapes w:1x4 --opt-shapes w:2x4 --max-shapes w:4x4",
               "optimization profile 0: 'w' is not an input of the model");
  expect_error("--min-shapes x:1x5 --opt-shapes x:2x5 --max-shapes x:4x5",
               "optimization profile 0: input 'x' dim 1 is 4 in the model");
}

}  // namespace
}  // namespace kiln
