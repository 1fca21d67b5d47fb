// The CUDA kiln.FusedConv layer (src/backends/cuda/fused_conv.cc, cuDNN) against its CPU reference
// (src/backends/cpu/ops/fused_conv.cc) on ResNet-like problems, NCHW and NHWC, with and without B, Z and
// Relu, in float32 (exact and TF32), float16 and bfloat16; and what check() refuses, which needs no GPU.
//
// Every tactic runs. A fused tactic cuDNN declines (Unsupported at create, or refused by
// cudnnConvolutionBiasActivationForward at run time, which the tactic timer skips too) is listed, not failed;
// "cuda.cudnn.unfused" and "default" must run, and so must one fused tactic. Tolerances as in
// cuda_conv_test.cc: a sum of K = (C / group) * prod(kernel) products, its error growing like sqrt(K).
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backends/cuda/matmul.h"
#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

const char* precision_name(DType t, bool tf32) {
  if (t == DType::kFloat32) return tf32 ? "tf32" : "float32";
  return t == DType::kFloat16 ? "float16" : "bfloat16";
}

// FFT and Winograd algorithms (and "default", which may pick one) err relative to the transformed terms.
bool transform_based(const std::string& tactic) {
  if (tactic == "default" || tactic == "cuda.cudnn.unfused") return true;
  if (tactic.rfind("cuda.cudnn.graph.", 0) == 0) return true;  // hK may resolve to an FFT or Winograd engine
  return tactic.back() - '0' >= 4;
}

// A cuBLASLt tactic of a 1x1 channels-last conv whose index is past what cuBLASLt's heuristic offers.
bool gemm_tactic_not_offered(const std::string& tactic, const Status& s) {
  return tactic.rfind("cuda.cublaslt.", 0) == 0 && s.code() == StatusCode::kUnsupported &&
         (s.message().find("heuristic offers") != std::string::npos || s.message().find("has no algorithm") != std::string::npos);
}

void expect_fused_matches_reference(const LayerCase& c) {
  std::vector<Value> cuda_inputs, ref_inputs;
  for (const Value& v : c.inputs) {
    if (v.is_none() || c.precision == DType::kFloat32) {
      cuda_inputs.push_back(v);
      ref_inputs.push_back(v);
      continue;
    }
    auto low = cast_tensor(v.tensor(), c.precision);
    ASSERT_TRUE(low.ok()) << low.status().to_string();
    cuda_inputs.emplace_back(*low);
    ref_inputs.emplace_back(widen_to_float32(*low));
  }
  OpRun ref = run_kernel("kiln", "FusedConv", ref_inputs, c.attrs, 1, 1, "reference");
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  const std::vector<Tensor> want = {ref.outputs[0].tensor()};

  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  ASSERT_NE(kind, nullptr);
  ir::Node node;
  const cuda::LayerSpec spec = detail::case_spec(c, cuda_inputs, want, &node);
  // The cuDNN graph-API ranks past h0 are the same code with another engine: tests/cuda_cudnn_graph_conv_test.cc
  // runs h0..h2 of its own problems; here h0 stands for them (every rank made this suite take minutes).
  std::vector<std::string> tactics;
  for (const std::string& t : kind->tactics(spec))
    if (t.rfind("cuda.cudnn.graph.", 0) != 0 || t == "cuda.cudnn.graph.h0") tactics.push_back(t);
  tactics.push_back("default");
  std::string ran, declined;
  int fused_ran = 0;
  for (const std::string& tactic : tactics) {
    auto got = run_cuda_layer(c, cuda_inputs, want, tactic);
    // The graph-API tactics (hK: the K-th config cuDNN offers) may not exist for a problem: reported, not failed.
    const bool graph = tactic.rfind("cuda.cudnn.graph.", 0) == 0;
    const bool optional = graph || tactic.find(".fused.") != std::string::npos;
    if (!got.ok() && (optional || gemm_tactic_not_offered(tactic, got.status()))) {
      declined += " " + tactic.substr(tactic.rfind('.') + 1) + "(" + got.status().message().substr(0, 60) + ")";
      continue;
    }
    ASSERT_TRUE(got.ok()) << "tactic " << tactic << ": " << got.status().to_string();
    const double atol = c.atol * (c.precision == DType::kFloat32 && !c.allow_tf32 && transform_based(tactic) ? 10 : 1);
    detail::compare((*got)[0], want[0], c.rtol, atol, "tactic " + tactic + " (" + precision_name(c.precision, c.allow_tf32) + ")");
    ran += " " + tactic.substr(tactic.rfind('.') + 1);
    if (optional && !graph) ++fused_ran;
  }
  // The legacy fused call applies Relu only: with another activation every fused tactic must step aside.
  const std::string act = c.attrs.count("activation") ? c.attrs.at("activation").s : "";
  if (act.empty() || act == "Relu") EXPECT_GT(fused_ran, 0) << "cuDNN declined every fused tactic:" << declined;
  else EXPECT_EQ(fused_ran, 0) << "a legacy fused tactic ran activation " << act;
  std::printf("  kiln.FusedConv %s x %s (%s): ran%s; declined%s\n", shape_to_string(c.inputs[0].tensor().shape()).c_str(),
              shape_to_string(c.inputs[1].tensor().shape()).c_str(), precision_name(c.precision, c.allow_tf32), ran.c_str(),
              declined.empty() ? " none" : declined.c_str());
}

// [N, C, S...] -> [N, S..., C] (and W [M, C/g, k...] -> [M, k..., C/g]).
Tensor to_channels_last(const Tensor& t) {
  std::vector<int64_t> perm = {0};
  for (size_t i = 2; i < t.rank(); ++i) perm.push_back(static_cast<int64_t>(i));
  perm.push_back(1);
  OpRun r = run_kernel("", "Transpose", {Value(t)}, {{"perm", ints_attr(perm)}}, 1, 18, "to_nhwc");
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.outputs[0].tensor();
}

struct Problem {
  Shape x, w;  // ONNX layout
  Attrs conv;
  bool channels_last = false;
};

// One problem with B, Z and Relu as given, in float32, TF32, float16 and bfloat16; `act`, when given,
// replaces Relu by its activation attributes.
void expect_all_precisions(const Problem& p, bool bias, bool residual, bool relu, const Attrs& act = {}) {
  Tensor x = random_float(p.x), w = random_float(p.w);
  const Tensor b = random_float({p.w[0]});
  // Z's shape is Y's: the reference of the plain convolution gives it.
  OpRun shape_run = run_kernel("", "Conv", {Value(x), Value(w)}, p.conv, 1, 18, "shape");
  ASSERT_TRUE(shape_run.status.ok()) << shape_run.status.to_string();
  Tensor z = random_float(shape_run.outputs[0].tensor().shape());
  if (p.channels_last) {
    x = to_channels_last(x);
    w = to_channels_last(w);
    z = to_channels_last(z);
  }
  double k = static_cast<double>(p.w[1]);
  for (size_t i = 2; i < p.w.size(); ++i) k *= static_cast<double>(p.w[i]);
  const double root_k = std::sqrt(k);
  struct Mode {
    DType dtype;
    bool tf32;
    double rtol, atol;
  };
  const Mode modes[] = {{DType::kFloat32, false, 1e-4, 1e-5 * root_k},
                        {DType::kFloat32, true, 1e-3, 1e-3 * root_k},
                        {DType::kFloat16, false, 1e-2, 1e-2 + 1e-3 * root_k},
                        {DType::kBFloat16, false, 2e-2, 2e-2 + 1e-3 * root_k}};  // unfused: up to 3 roundings
  for (const Mode& mode : modes) {
    SCOPED_TRACE(shape_to_string(p.x) + " x " + shape_to_string(p.w) + (p.channels_last ? " NHWC" : " NCHW") +
                 (bias ? " +B" : "") + (residual ? " +Z" : "") + (relu ? " Relu " : " ") + precision_name(mode.dtype, mode.tf32));
    LayerCase c;
    c.op = "FusedConv";
    c.domain = "kiln";
    c.opset = 1;
    c.inputs = {Value(x), Value(w), bias ? Value(b) : Value(), residual ? Value(z) : Value()};
    c.attrs = p.conv;
    c.attrs["activation"] = string_attr(relu ? "Relu" : "");
    for (const auto& [name, value] : act) c.attrs[name] = value;
    c.attrs["channels_last"] = int_attr(p.channels_last ? 1 : 0);
    c.precision = mode.dtype;
    c.allow_tf32 = mode.tf32;
    c.rtol = mode.rtol;
    c.atol = mode.atol;
    expect_fused_matches_reference(c);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The epilogues ResNet's convolutions have (Relu; bias + Relu; bias + Z + Relu; bias alone), in both layouts.
void expect_resnet_epilogues(Problem p) {
  for (bool nhwc : {false, true}) {
    p.channels_last = nhwc;
    expect_all_precisions(p, true, false, true);
    expect_all_precisions(p, true, true, true);
    expect_all_precisions(p, false, false, true);
    expect_all_precisions(p, true, false, false);
    expect_all_precisions(p, false, true, false);
  }
}

TEST(CudaFusedConv, Pointwise1x1) {
  KILN_SKIP_WITHOUT_GPU();
  expect_resnet_epilogues({{2, 64, 14, 14}, {256, 64, 1, 1}, {}});
  expect_resnet_epilogues({{2, 64, 15, 15}, {128, 64, 1, 1}, {{"strides", ints_attr({2, 2})}}});  // downsample branch
}

TEST(CudaFusedConv, ThreeByThreeStride1) {
  KILN_SKIP_WITHOUT_GPU();
  expect_resnet_epilogues({{2, 64, 14, 14}, {64, 64, 3, 3}, {{"pads", ints_attr({1, 1, 1, 1})}}});
}

TEST(CudaFusedConv, ThreeByThreeStride2) {
  KILN_SKIP_WITHOUT_GPU();
  expect_resnet_epilogues({{2, 32, 15, 15}, {64, 32, 3, 3}, {{"pads", ints_attr({1, 1, 1, 1})}, {"strides", ints_attr({2, 2})}}});
}

TEST(CudaFusedConv, Stem7x7Stride2) {
  KILN_SKIP_WITHOUT_GPU();
  const Problem stem{{2, 3, 33, 35}, {64, 3, 7, 7}, {{"pads", ints_attr({3, 3, 3, 3})}, {"strides", ints_attr({2, 2})}}};
  expect_all_precisions(stem, true, false, true);
  expect_all_precisions(stem, false, false, false);
}

TEST(CudaFusedConv, GroupedAndOneD) {
  KILN_SKIP_WITHOUT_GPU();
  expect_all_precisions({{2, 32, 11, 13}, {64, 8, 3, 3}, {{"group", int_attr(4)}, {"pads", ints_attr({1, 1, 1, 1})}}}, true, true, true);
  expect_all_precisions({{2, 16, 29}, {24, 16, 3}, {{"pads", ints_attr({1, 1})}}}, true, true, true);
  expect_all_precisions({{2, 16, 29}, {24, 16, 3}, {{"pads", ints_attr({1, 1})}}, true}, true, false, true);
}

// The activations beyond Relu: ReLU6 (the graph tactics' clipped RELU_FWD), a Clip they refuse (lower bound
// not 0: only the unfused tactic runs it), LeakyRelu, Sigmoid, Silu (SWISH_FWD), HardSwish (unfused only).
std::vector<Attrs> other_activations() {
  auto act = [](const char* name) { return Attrs{{"activation", string_attr(name)}}; };
  Attrs relu6 = act("Clip"), clip = act("Clip"), leaky = act("LeakyRelu");
  relu6["activation_min"] = float_attr(0.0f);
  relu6["activation_max"] = float_attr(6.0f);
  clip["activation_min"] = float_attr(-0.5f);
  clip["activation_max"] = float_attr(0.75f);
  leaky["activation_alpha"] = float_attr(0.2f);
  return {relu6, clip, leaky, act("Sigmoid"), act("Silu"), act("HardSwish")};
}

// Each activation after B (+ Z): a 3x3 conv in both layouts, and a 1x1 channels-last one (whose cuBLASLt
// tactics are not listed for these activations), every precision; unfused and default must run.
TEST(CudaFusedConv, Activations) {
  KILN_SKIP_WITHOUT_GPU();
  for (const Attrs& act : other_activations()) {
    SCOPED_TRACE("activation " + act.at("activation").s);
    for (bool nhwc : {false, true}) {
      const Problem p{{2, 32, 9, 9}, {32, 32, 3, 3}, {{"pads", ints_attr({1, 1, 1, 1})}}, nhwc};
      expect_all_precisions(p, true, false, false, act);
      expect_all_precisions(p, true, true, false, act);
      if (::testing::Test::HasFatalFailure()) return;
    }
    expect_all_precisions({{2, 64, 7, 7}, {64, 64, 1, 1}, {}, true}, true, true, false, act);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------------------------
// check(), without a GPU.

std::string check_fused(std::vector<cuda::TensorDesc> ins, Attrs attrs = {}, DType out = DType::kFloat32) {
  return check_of("kiln.FusedConv", std::move(ins), {desc(out, {})}, std::move(attrs), 1);
}

TEST(CudaFusedConvCheck, AcceptsResNetShapes) {
  const auto f16 = DType::kFloat16;
  EXPECT_EQ(check_fused({desc(f16, {1, 56, 56, 64}), desc(f16, {64, 3, 3, 64}), desc(f16, {64}), desc(f16, {1, 56, 56, 64})},
                        {{"pads", ints_attr({1, 1, 1, 1})}, {"channels_last", int_attr(1)}, {"activation", string_attr("Relu")}}, f16),
            "");
  EXPECT_EQ(check_fused({desc(DType::kFloat32, {1, 3, 224, 224}), desc(DType::kFloat32, {64, 3, 7, 7})},
                        {{"pads", ints_attr({3, 3, 3, 3})}, {"strides", ints_attr({2, 2})}}),
            "");
}

TEST(CudaFusedConvCheck, AcceptsTheActivations) {
  const auto f = DType::kFloat32;
  for (const Attrs& act : other_activations())
    EXPECT_EQ(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3})}, act), "") << act.at("activation").s;
  Attrs nan_max = {{"activation", string_attr("Clip")}, {"activation_max", float_attr(NAN)}};
  EXPECT_NE(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3})}, nan_max).find("must not be NaN"), std::string::npos);
}

TEST(CudaFusedConvCheck, Refuses) {
  const auto f = DType::kFloat32;
  auto refuses = [](const std::string& why, const std::string& words) {
    EXPECT_NE(why.find(words), std::string::npos) << "'" << why << "' lacks '" << words << "'";
  };
  refuses(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3})}, {{"activation", string_attr("Tanh")}}), "activation 'Tanh'");
  refuses(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3})}, {{"channels_last", int_attr(3)}}), "channels_last 3");
  refuses(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3})}, {{"pads", ints_attr({0, 0, 1, 1})}}), "symmetric");
  refuses(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3}), desc(f, {4}), desc(f, {1, 4, 8, 8})}), "Z [1,4,8,8]");
  refuses(check_fused({desc(f, {1, 4, 8, 8}), desc(f, {4, 4, 3, 3}), desc(f, {5})}), "B [5]");
  refuses(check_fused({desc(f, {1, 4, 8, 8}), desc(DType::kFloat16, {4, 4, 3, 3})}), "W is float16");
  refuses(check_fused({desc(DType::kInt32, {1, 4, 8, 8}), desc(DType::kInt32, {4, 4, 3, 3})}), "dtype int32");
  // NHWC: W's last dim is C/group.
  refuses(check_fused({desc(f, {1, 8, 8, 4}), desc(f, {4, 3, 3, 2})}, {{"channels_last", int_attr(1)}}), "C/group");
}

// ---------------------------------------------------------------------------------------------------------
// The cuBLASLt GEMM tactics of 1x1, stride-1 channels-last convs (ResNet's layer3/4 at batch 1).

// The spec of a kiln.FusedConv with these inputs (no host values), as the tactic list and create() see it.
cuda::LayerSpec fused_conv_spec(ir::Node* node, std::vector<cuda::TensorDesc> ins, cuda::TensorDesc out, Attrs attrs,
                                bool allow_tf32 = false) {
  node->name = "conv_gemm";
  node->op_type = "FusedConv";
  node->domain = "kiln";
  node->attributes = std::move(attrs);
  for (const auto& d : ins) node->inputs.push_back(d.present() ? "x" : "");
  node->outputs = {"y"};
  cuda::LayerSpec spec;
  spec.node = node;
  spec.opset = 1;
  spec.allow_tf32 = allow_tf32;
  spec.inputs = std::move(ins);
  spec.outputs = {std::move(out)};
  return spec;
}

// X [N, H, W, C] * W [M, 1, 1, C] (+ B) (+ Z) (Relu), each cuBLASLt tactic against the CPU reference in
// float32, TF32, float16 and bfloat16; a tactic past what cuBLASLt's heuristic offers is listed, not failed,
// but h0 must run.
void expect_gemm_tactics(const Shape& x_shape, int64_t m, bool bias, bool residual, bool relu) {
  const int64_t c_in = x_shape[3];
  const Tensor x = random_float(x_shape), w = random_float({m, 1, 1, c_in}), b = random_float({m});
  const Shape y_shape = {x_shape[0], x_shape[1], x_shape[2], m};
  const Tensor z = random_float(y_shape);
  const double root_k = std::sqrt(static_cast<double>(c_in));
  struct Mode {
    DType dtype;
    bool tf32;
    double rtol, atol;
  };
  const Mode modes[] = {{DType::kFloat32, false, 1e-4, 1e-5 * root_k},
                        {DType::kFloat32, true, 1e-3, 1e-3 * root_k},
                        {DType::kFloat16, false, 1e-2, 1e-2 + 1e-3 * root_k},
                        {DType::kBFloat16, false, 2e-2, 2e-2 + 1e-3 * root_k}};
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  ASSERT_NE(kind, nullptr);
  for (const Mode& mode : modes) {
    const std::string what = shape_to_string(x_shape) + " x [" + std::to_string(m) + "]" + (bias ? " +B" : "") +
                             (residual ? " +Z" : "") + (relu ? " Relu " : " ") + precision_name(mode.dtype, mode.tf32);
    SCOPED_TRACE(what);
    LayerCase c;
    c.op = "FusedConv";
    c.domain = "kiln";
    c.opset = 1;
    c.inputs = {Value(x), Value(w), bias ? Value(b) : Value(), residual ? Value(z) : Value()};
    c.attrs = {{"activation", string_attr(relu ? "Relu" : "")}, {"channels_last", int_attr(1)}};
    c.precision = mode.dtype;
    c.allow_tf32 = mode.tf32;
    c.rtol = mode.rtol;
    c.atol = mode.atol;
    std::vector<cuda::TensorDesc> ins;
    for (const Value& v : c.inputs) ins.push_back(v.is_none() ? cuda::TensorDesc{} : desc(mode.dtype, v.tensor().shape()));
    ir::Node node;
    const cuda::LayerSpec spec = fused_conv_spec(&node, ins, desc(mode.dtype, y_shape), c.attrs, mode.tf32);
    std::string ran, declined;
    for (const std::string& tactic : cuda::matmul_tactics()) {
      auto probe = kind->create(spec, tactic, detail::test_handles());
      if (!probe.ok() && tactic != "cuda.cublaslt.h0" && gemm_tactic_not_offered(tactic, probe.status())) {
        declined += " " + tactic.substr(tactic.rfind('.') + 1);
        continue;
      }
      ASSERT_TRUE(probe.ok()) << tactic << ": " << probe.status().to_string();
      c.only_tactic = tactic;
      expect_layer_matches_reference(c);
      if (::testing::Test::HasFatalFailure()) return;
      ran += " " + tactic.substr(tactic.rfind('.') + 1);
    }
    std::printf("  kiln.FusedConv GEMM %s: ran%s; not offered%s\n", what.c_str(), ran.c_str(),
                declined.empty() ? " none" : declined.c_str());
  }
}

TEST(CudaFusedConv, Pointwise1x1ThroughCublasLt) {
  KILN_SKIP_WITHOUT_GPU();
  expect_gemm_tactics({1, 7, 7, 2048}, 512, true, false, true);   // layer4's reduce: 49 x 512 outputs
  expect_gemm_tactics({1, 14, 14, 256}, 1024, true, true, true);  // layer3's expand + residual + Relu
  expect_gemm_tactics({2, 7, 7, 64}, 64, false, false, true);     // no bias: the Relu epilogue alone
  expect_gemm_tactics({2, 7, 7, 64}, 64, false, true, false);     // no bias: Z through beta only
  expect_gemm_tactics({1, 1, 1, 64}, 64, true, true, true);       // one row: Z is [1, M] (not a bias vector)
}

TEST(CudaFusedConvCheck, GemmTacticsOnlyForPlain1x1ChannelsLast) {
  const auto h = DType::kFloat16;
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  ASSERT_NE(kind, nullptr);
  auto lists_gemm = [&](Shape x, Shape w, Attrs attrs) {
    ir::Node node;
    const cuda::LayerSpec spec = fused_conv_spec(&node, {desc(h, x), desc(h, w), desc(h, {w[0]})}, desc(h, {}), attrs);
    const std::vector<std::string> t = kind->tactics(spec);
    EXPECT_NE(std::find(t.begin(), t.end(), "cuda.cudnn.unfused"), t.end());
    return std::find(t.begin(), t.end(), "cuda.cublaslt.h0") != t.end();
  };
  const Attrs nhwc = {{"channels_last", int_attr(1)}};
  EXPECT_TRUE(lists_gemm({1, 7, 7, 2048}, {512, 1, 1, 2048}, nhwc));
  EXPECT_TRUE(lists_gemm({-1, 7, 7, 2048}, {512, 1, 1, 2048}, nhwc));  // a symbolic batch still is a GEMM
  Attrs explicit_ones = nhwc;
  explicit_ones["strides"] = ints_attr({1, 1});
  explicit_ones["pads"] = ints_attr({0, 0, 0, 0});
  explicit_ones["dilations"] = ints_attr({1, 1});
  EXPECT_TRUE(lists_gemm({1, 7, 7, 64}, {64, 1, 1, 64}, explicit_ones));
  EXPECT_FALSE(lists_gemm({1, 7, 7, 64}, {64, 3, 3, 64}, nhwc));                            // 3x3
  EXPECT_FALSE(lists_gemm({1, 64, 7, 7}, {64, 64, 1, 1}, {}));                               // NCHW
  Attrs strided = nhwc;
  strided["strides"] = ints_attr({2, 2});
  EXPECT_FALSE(lists_gemm({1, 14, 14, 64}, {128, 1, 1, 64}, strided));                       // downsample
  Attrs padded = nhwc;
  padded["pads"] = ints_attr({1, 1, 1, 1});
  EXPECT_FALSE(lists_gemm({1, 7, 7, 64}, {64, 1, 1, 64}, padded));
  Attrs grouped = nhwc;
  grouped["group"] = int_attr(2);
  EXPECT_FALSE(lists_gemm({1, 7, 7, 64}, {64, 1, 1, 32}, grouped));
  EXPECT_FALSE(lists_gemm({1, 7, 64}, {64, 1, 64}, nhwc));                                   // 1-D
  for (const Attrs& act : other_activations()) {  // cuBLASLt's epilogues apply Relu only
    Attrs a = nhwc;
    for (const auto& [name, value] : act) a[name] = value;
    EXPECT_FALSE(lists_gemm({1, 7, 7, 64}, {64, 1, 1, 64}, a)) << act.at("activation").s;
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
