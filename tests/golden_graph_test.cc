// Golden dumps of the optimized graph (issue 4, DESIGN.md principle 10): four models, each optimized as a
// GPU engine in fp16 and as a CPU engine, at opt level 3, are printed by dump_graph and compared with the
// files of tests/golden/, so that every change to the optimizer shows up in review as a change to them.
// The GPU graph is made without a GPU: optimize_graph asks the CUDA layer table (which needs no device)
// which nodes may run in half types. Each optimized graph is also run by the CPU executor against the
// model as imported, on random inputs, so a golden file never records a graph that computes something else.
//
// After an intended change: KILN_UPDATE_GOLDEN=1 build-cuda/tests/kiln_tests --gtest_filter='GoldenGraph*'
// rewrites the files in the source tree; review and commit them with the change.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "builder/build_plan.h"
#include "builder/choose_tactics.h"
#include "builder/graph_dump.h"
#include "builder/optimize_graph.h"
#include "core/cast.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "onnx/importer.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/layer.h"
#endif

namespace kiln::testing {
namespace {

using builder::Precision;

struct Target {
  std::string tag;  // the golden file's suffix
  bool gpu;
  Precision precision;
  int opt_level;
};
const Target kGpuFp16{"gpu_fp16_opt3", true, Precision::kFloat16, 3};
const Target kCpu{"cpu_opt3", false, Precision::kFloat32, 3};

Result<ir::Model> optimized(ir::Model m, const Target& t) {
  builder::OptimizeOptions o;
  o.for_gpu = t.gpu;
  o.opt_level = t.opt_level;
  o.precision = t.precision;
#ifdef KILN_HAVE_CUDA
  if (t.gpu) o.can_run_in_half = backends::cuda_runs_in_half;
#endif
  Logger quiet(Severity::kError);
  KILN_RETURN_IF_ERROR(builder::optimize_graph(m, o, quiet));
  return m;
}

// ---- the golden files

std::string golden_path(const std::string& name) {
  return std::string(KILN_SOURCE_DIR) + "/tests/golden/" + name + ".txt";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A unified-style diff (hunks with 3 lines of context) from the longest common subsequence of lines; the
// dumps are a few hundred lines at most, so the quadratic table is small.
std::string unified_diff(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> lcs(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = n; i-- > 0;)
    for (size_t j = m; j-- > 0;)
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
  struct Edit {
    char kind;  // ' ', '-', '+'
    size_t ia, ib;  // line numbers (0-based) in a and b where this edit stands
  };
  std::vector<Edit> edits;
  size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] == b[j]) edits.push_back({' ', i++, j++});
    else if (i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1])) edits.push_back({'-', i++, j});
    else edits.push_back({'+', i, j++});
  }
  constexpr size_t kContext = 3;
  std::ostringstream out;
  for (size_t k = 0; k < edits.size();) {
    if (edits[k].kind == ' ') {
      ++k;
      continue;
    }
    // A hunk: from kContext lines before this change to kContext lines after the last change that is
    // within 2 * kContext unchanged lines of the one before it.
    const size_t begin = k > kContext ? k - kContext : 0;
    size_t end = k, quiet = 0;
    for (size_t e = k; e < edits.size() && quiet <= 2 * kContext; ++e) {
      quiet = edits[e].kind == ' ' ? quiet + 1 : 0;
      if (edits[e].kind != ' ') end = e + 1;
    }
    end = std::min(edits.size(), end + kContext);
    size_t na = 0, nb = 0;
    for (size_t e = begin; e < end; ++e) {
      na += edits[e].kind != '+';
      nb += edits[e].kind != '-';
    }
    out << "@@ -" << edits[begin].ia + 1 << "," << na << " +" << edits[begin].ib + 1 << "," << nb << " @@\n";
    for (size_t e = begin; e < end; ++e)
      out << edits[e].kind << (edits[e].kind == '+' ? b[edits[e].ib] : a[edits[e].ia]) << "\n";
    k = end;
  }
  return out.str();
}

void expect_matches_golden(const std::string& name, const std::string& dump) {
  const std::string path = golden_path(name);
  if (const char* update = std::getenv("KILN_UPDATE_GOLDEN"); update != nullptr && std::string(update) == "1") {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << dump;
    std::cout << "wrote " << path << "\n";
    return;
  }
  const std::string regenerate =
      "If the change is intended, regenerate the golden files and review them with the change:\n"
      "  KILN_UPDATE_GOLDEN=1 build-cuda/tests/kiln_tests --gtest_filter='GoldenGraph*'";
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    ADD_FAILURE() << "no golden file " << path << ".\n" << regenerate << "\nThe dump:\n" << dump;
    return;
  }
  std::stringstream want;
  want << f.rdbuf();
  if (want.str() == dump) return;
  ADD_FAILURE() << "the optimized graph differs from " << path << " (- golden, + now):\n"
                << unified_diff(lines_of(want.str()), lines_of(dump)) << regenerate;
}

// ---- the optimized graph computes what the model does

std::mt19937& rng() {
  static std::mt19937 gen(20261124);
  return gen;
}

// Uniform in [lo, hi], never exactly zero.
Tensor random_tensor(const Shape& shape, float lo = -1.0f, float hi = 1.0f) {
  return testing::random_tensor(rng(), DType::kFloat32, shape, lo, hi);
}

// The model's outputs on the CPU executor (graph_builder.h's run_graph), widened to float64 for comparing.
std::vector<Tensor> run_cpu(const ir::Model& m, const std::map<std::string, Tensor>& feeds) {
  std::vector<Tensor> r;
  for (const Tensor& t : run_graph(m, feeds)) r.push_back(cast_tensor(t, DType::kFloat64).value());
  return r;
}

// Each output within tol of the model's, relative to 1 + the largest |output| (half types round every
// layer's result; the error grows with the values, not with each element's).
void expect_same_outputs(const ir::Model& model, const ir::Model& opt, const std::map<std::string, Tensor>& feeds,
                         double tol, const std::string& what) {
  ir::Model typed = model;
  ASSERT_TRUE(passes::infer_shapes(typed).ok());
  const std::vector<Tensor> want = run_cpu(typed, feeds), got = run_cpu(opt, feeds);
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t k = 0; k < want.size(); ++k) {
    ASSERT_EQ(want[k].shape(), got[k].shape()) << what << ": output " << k;
    double scale = 0;
    for (int64_t i = 0; i < want[k].numel(); ++i) scale = std::max(scale, std::fabs(want[k].data<double>()[i]));
    int bad = 0;
    for (int64_t i = 0; i < want[k].numel() && bad < 5; ++i) {
      const double w = want[k].data<double>()[i], g = got[k].data<double>()[i];
      if (!(std::fabs(g - w) <= tol * (1 + scale))) {
        ++bad;
        ADD_FAILURE() << what << ": output " << k << " element " << i << ": got " << g << ", want " << w;
      }
    }
  }
}

// Optimizes `model` for both targets: golden file "<name>.<target>.txt", outputs against the model's.
void check_model(const std::string& name, const ir::Model& model, const std::map<std::string, Tensor>& feeds) {
  for (const Target& t : {kGpuFp16, kCpu}) {
    SCOPED_TRACE(name + " for " + t.tag);
#ifndef KILN_HAVE_CUDA
    if (t.gpu) {
      std::cout << "[  SKIPPED ] " << name << "." << t.tag << ": built without the CUDA backend (its layer table "
                << "decides what runs in fp16)\n";
      continue;
    }
#endif
    auto opt = optimized(model, t);
    ASSERT_TRUE(opt.ok()) << opt.status().to_string();
    expect_matches_golden(name + "." + t.tag, builder::dump_graph(*opt));
    expect_same_outputs(model, *opt, feeds, t.precision == Precision::kFloat32 ? 1e-4 : 2e-2, t.tag);
  }
}

// ---- models built in code

struct Builder {
  ir::Model m;
  std::map<std::string, Tensor> feeds;
  Builder() {
    m.ir_version = 8;
    m.opsets[""] = 17;
  }
  void input(const std::string& name, const Tensor& value) {
    ir::ValueInfo v{name, {}};
    v.type.kind = ir::TypeInfo::Kind::kTensor;
    v.type.dtype = value.dtype();
    v.type.has_shape = true;
    for (int64_t d : value.shape()) v.type.dims.push_back(ir::Dim::of(d));
    m.graph.inputs.push_back(v);
    feeds[name] = value;
  }
  void output(const std::string& name) { m.graph.outputs.push_back(ir::ValueInfo{name, {}}); }
  const std::string& weight(const std::string& name, const Tensor& t) {
    m.graph.initializers[name] = t;
    return name;
  }
  std::string scalar(const std::string& name, float v) {
    return weight(name, Tensor::from_vector<float>(DType::kFloat32, {}, {v}));
  }
  std::string shape(const std::string& name, std::vector<int64_t> dims) {
    const int64_t rank = static_cast<int64_t>(dims.size());
    return weight(name, Tensor::from_vector<int64_t>(DType::kInt64, {rank}, std::move(dims)));
  }
  ir::Node& node(const std::string& op, std::vector<std::string> ins, const std::string& out, const std::string& name) {
    ir::Node n;
    n.op_type = op;
    n.name = name;
    n.inputs = std::move(ins);
    n.outputs = {out};
    n.index = static_cast<int>(m.graph.nodes.size());
    m.graph.nodes.push_back(std::move(n));
    return m.graph.nodes.back();
  }
  // Conv with bias, "same" padding for odd kernels.
  void conv(const std::string& x, const std::string& y, int64_t cin, int64_t cout, int64_t k, const std::string& name,
            int64_t stride = 1) {
    weight(name + ".weight", random_tensor({cout, cin, k, k}, -0.5f, 0.5f));
    weight(name + ".bias", random_tensor({cout}, -0.2f, 0.2f));
    ir::Node& n = node("Conv", {x, name + ".weight", name + ".bias"}, y, name);
    n.attributes["kernel_shape"] = ints_attr({k, k});
    n.attributes["pads"] = ints_attr({k / 2, k / 2, k / 2, k / 2});
    if (stride != 1) n.attributes["strides"] = ints_attr({stride, stride});
  }
  // An inference BatchNormalization over `c` channels (scale, bias, mean and variance as initializers).
  void batch_norm(const std::string& x, const std::string& y, int64_t c, const std::string& name) {
    weight(name + ".scale", random_tensor({c}, 0.5f, 1.5f));
    weight(name + ".bias", random_tensor({c}, -0.2f, 0.2f));
    weight(name + ".mean", random_tensor({c}, -0.2f, 0.2f));
    weight(name + ".var", random_tensor({c}, 0.5f, 1.5f));
    node("BatchNormalization", {x, name + ".scale", name + ".bias", name + ".mean", name + ".var"}, y, name);
  }
  // A max pool, 3x3 stride 2 pads 1: ResNet's.
  void resnet_max_pool(const std::string& x, const std::string& y, const std::string& name) {
    ir::Node& pool = node("MaxPool", {x}, y, name);
    pool.attributes["kernel_shape"] = ints_attr({3, 3});
    pool.attributes["strides"] = ints_attr({2, 2});
    pool.attributes["pads"] = ints_attr({1, 1, 1, 1});
  }
  // MatMul by a [k, n] weight, then Add of its bias: a torch Linear.
  void linear(const std::string& x, const std::string& y, int64_t k, int64_t n, const std::string& name) {
    weight(name + ".weight", random_tensor({k, n}, -0.5f, 0.5f));
    weight(name + ".bias", random_tensor({n}, -0.2f, 0.2f));
    node("MatMul", {x, name + ".weight"}, y + ".mm", name + ".matmul");
    node("Add", {y + ".mm", name + ".bias"}, y, name + ".add");
  }
  void layer_norm(const std::string& x, const std::string& y, int64_t n, const std::string& name) {
    weight(name + ".weight", random_tensor({n}, 0.5f, 1.5f));
    weight(name + ".bias", random_tensor({n}, -0.2f, 0.2f));
    node("LayerNormalization", {x, name + ".weight", name + ".bias"}, y, name).attributes["axis"] = int_attr(-1);
  }
};

// A ResNet stem and one bottleneck block, as torch exports them in eval mode (the block's BatchNorms folded
// into its convs by the exporter; the stem's left as a node): Conv 3x3 (3 -> 16) -> BatchNorm -> Relu ->
// MaxPool, then Conv 1x1 -> Relu -> Conv 3x3 -> Relu -> Conv 1x1 -> Add(shortcut) -> Relu, then global
// average pool -> Flatten -> Gemm (10 classes). Image [2, 3, 32, 32].
Builder resnet_bottleneck() {
  Builder b;
  b.input("image", random_tensor({2, 3, 32, 32}));
  b.conv("image", "stem", 3, 16, 3, "stem.conv");
  b.batch_norm("stem", "stem.n", 16, "stem.bn");
  b.node("Relu", {"stem.n"}, "stem.r", "stem.relu");
  b.resnet_max_pool("stem.r", "pooled", "stem.pool");
  b.conv("pooled", "c1", 16, 8, 1, "block.conv1");
  b.node("Relu", {"c1"}, "r1", "block.relu1");
  b.conv("r1", "c2", 8, 8, 3, "block.conv2");
  b.node("Relu", {"c2"}, "r2", "block.relu2");
  b.conv("r2", "c3", 8, 16, 1, "block.conv3");
  b.node("Add", {"c3", "pooled"}, "sum", "block.add");
  b.node("Relu", {"sum"}, "block", "block.relu3");
  b.node("GlobalAveragePool", {"block"}, "gap", "head.gap");
  b.node("Flatten", {"gap"}, "flat", "head.flatten").attributes["axis"] = int_attr(1);
  b.weight("head.fc.weight", random_tensor({10, 16}, -0.5f, 0.5f));
  b.weight("head.fc.bias", random_tensor({10}, -0.2f, 0.2f));
  b.node("Gemm", {"flat", "head.fc.weight", "head.fc.bias"}, "logits", "head.fc").attributes["transB"] = int_attr(1);
  b.output("logits");
  return b;
}

// ResNet-50's front at a small image, with torch's node names: the stem (Conv 7x7 stride 2, 3 -> 64 ->
// BatchNorm left as a node, as in resnet_bottleneck -> Relu -> MaxPool 3x3 stride 2) and layer1.0, the
// bottleneck whose shortcut is a projection (1x1 64 -> 64 -> Relu -> 3x3 64 -> 64 -> Relu -> 1x1 64 -> 256,
// plus downsample 1x1 64 -> 256 of the pool's output, added after conv3 as torchvision's forward does; the
// block's BatchNorms folded by the exporter). Image [2, 3, 32, 32], output [2, 256, 8, 8]. Made to show the
// two GPU fusions of ResNet's front: the max pool into the stem conv (fuse_conv_pool) and the projection
// shortcut into conv3 (fold_projection_shortcut: 2 (64 + 64) elements moved a pixel against 2 * 256).
Builder resnet_front() {
  const std::string l = "/layer1/layer1.0/";
  Builder b;
  b.input("input", random_tensor({2, 3, 32, 32}));
  b.conv("input", "conv1", 3, 64, 7, "/conv1/Conv", 2);
  b.batch_norm("conv1", "bn1", 64, "/bn1/BatchNormalization");
  b.node("Relu", {"bn1"}, "relu", "/relu/Relu");
  b.resnet_max_pool("relu", "maxpool", "/maxpool/MaxPool");
  b.conv("maxpool", "l1.conv1", 64, 64, 1, l + "conv1/Conv");
  b.node("Relu", {"l1.conv1"}, "l1.relu", l + "relu/Relu");
  b.conv("l1.relu", "l1.conv2", 64, 64, 3, l + "conv2/Conv");
  b.node("Relu", {"l1.conv2"}, "l1.relu_1", l + "relu_1/Relu");
  b.conv("l1.relu_1", "l1.conv3", 64, 256, 1, l + "conv3/Conv");
  b.conv("maxpool", "l1.downsample", 64, 256, 1, l + "downsample/downsample.0/Conv");
  b.node("Add", {"l1.conv3", "l1.downsample"}, "l1.add", l + "Add");
  b.node("Relu", {"l1.add"}, "output", l + "relu_2/Relu");
  b.output("output");
  return b;
}

// Two BERT layers as torch exports them: Q, K, V projections to heads, attention through SDPA (scales on Q
// and K^T, the additive mask, Softmax with its NaN guard), the output projection + residual -> LayerNorm,
// the FFN with an erf GELU + residual -> LayerNorm. Hidden 16 = 2 heads of 8, sequence 8, batch 2.
Builder bert_like() {
  constexpr int64_t kB = 2, kS = 8, kH = 2, kD = 8, kHidden = kH * kD, kFfn = 32;
  Builder b;
  b.input("hidden", random_tensor({kB, kS, kHidden}));
  Tensor mask(DType::kFloat32, {kB, 1, 1, kS});  // the second sequence is padded after 5 tokens
  for (int64_t i = 0; i < mask.numel(); ++i)
    mask.data<float>()[i] = i >= kS && i % kS >= 5 ? -std::numeric_limits<float>::infinity() : 0.0f;
  b.input("mask", mask);
  const float c = std::sqrt(1.0f / std::sqrt(static_cast<float>(kD)));
  std::string x = "hidden";
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "l" + std::to_string(layer) + ".";
    // Each layer writes its own constants, as the exporter does (CSE makes them one).
    b.shape(p + "heads_shape", {kB, kS, kH, kD});
    b.shape(p + "hidden_shape", {kB, kS, kHidden});
    b.scalar(p + "scale_q", c);
    b.scalar(p + "scale_k", c);
    b.scalar(p + "zero", 0.0f);
    b.scalar(p + "sqrt2", std::sqrt(2.0f));
    b.scalar(p + "one", 1.0f);
    b.scalar(p + "half", 0.5f);
    for (const char* proj : {"q", "k", "v"}) {
      b.linear(x, p + proj, kHidden, kHidden, p + proj + "_proj");
      b.node("Reshape", {p + proj, p + "heads_shape"}, p + proj + "4", p + proj + "_heads");
    }
    b.node("Transpose", {p + "q4"}, p + "qt", p + "tq").attributes["perm"] = ints_attr({0, 2, 1, 3});
    b.node("Transpose", {p + "k4"}, p + "kt", p + "tk").attributes["perm"] = ints_attr({0, 2, 3, 1});
    b.node("Transpose", {p + "v4"}, p + "vt", p + "tv").attributes["perm"] = ints_attr({0, 2, 1, 3});
    b.node("Mul", {p + "qt", p + "scale_q"}, p + "qs", p + "mq");
    b.node("Mul", {p + "kt", p + "scale_k"}, p + "ks", p + "mk");
    b.node("MatMul", {p + "qs", p + "ks"}, p + "scores", p + "qk");
    b.node("Add", {p + "scores", "mask"}, p + "masked", p + "add_mask");
    b.node("Softmax", {p + "masked"}, p + "p0", p + "softmax").attributes["axis"] = int_attr(-1);
    b.node("IsNaN", {p + "p0"}, p + "nan", p + "isnan");
    b.node("Where", {p + "nan", p + "zero", p + "p0"}, p + "probs", p + "where");
    b.node("MatMul", {p + "probs", p + "vt"}, p + "o", p + "pv");
    b.node("Transpose", {p + "o"}, p + "ot", p + "to").attributes["perm"] = ints_attr({0, 2, 1, 3});
    b.node("Reshape", {p + "ot", p + "hidden_shape"}, p + "attn", p + "merge_heads");
    b.linear(p + "attn", p + "proj", kHidden, kHidden, p + "out_proj");
    b.node("Add", {p + "proj", x}, p + "res1", p + "residual1");
    b.layer_norm(p + "res1", p + "h1", kHidden, p + "ln1");
    b.linear(p + "h1", p + "f1", kHidden, kFfn, p + "ffn1");
    b.node("Div", {p + "f1", p + "sqrt2"}, p + "g0", p + "gelu.div");
    b.node("Erf", {p + "g0"}, p + "g1", p + "gelu.erf");
    b.node("Add", {p + "g1", p + "one"}, p + "g2", p + "gelu.add");
    b.node("Mul", {p + "f1", p + "g2"}, p + "g3", p + "gelu.mul");
    b.node("Mul", {p + "g3", p + "half"}, p + "gelu", p + "gelu.half");
    b.linear(p + "gelu", p + "f2", kFfn, kHidden, p + "ffn2");
    b.node("Add", {p + "f2", p + "h1"}, p + "res2", p + "residual2");
    b.layer_norm(p + "res2", p + "out", kHidden, p + "ln2");
    x = p + "out";
  }
  b.output(x);
  return b;
}

TEST(GoldenGraph, MnistCnn) {
  auto model = onnx_io::import_model_file(std::string(KILN_SOURCE_DIR) + "/samples/mnist/mnist_cnn.onnx");
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  ASSERT_EQ(model->graph.inputs.size(), 1u);
  check_model("mnist_cnn", *model, {{model->graph.inputs[0].name, random_tensor({3, 1, 28, 28}, 0.0f, 1.0f)}});
}

TEST(GoldenGraph, ResNetBottleneck) {
  Builder b = resnet_bottleneck();
  check_model("resnet_bottleneck", b.m, b.feeds);
}

TEST(GoldenGraph, BertLikeTwoLayers) {
  Builder b = bert_like();
  check_model("bert_like_2_layers", b.m, b.feeds);
}

// Models exported with dynamic batch and sequence (transformers' BERT and GPT-2, tiny configurations, by
// torch.onnx.export with dynamic_axes, as bench/seq_sweep.py exports the full ones): optimized with no input
// shapes, their graphs keep [batch, seq] and still fuse what fixed shapes fuse (attention, packed QKV,
// residuals, pointwise chains), the Reshapes reading constant targets instead of shape computations; the
// optimized graph computes what the model does at several shapes.
std::map<std::string, Tensor> token_feeds(const ir::Model& m, int64_t batch, int64_t seq) {
  std::map<std::string, Tensor> feeds;
  std::uniform_int_distribution<int64_t> token(0, 99);
  for (const auto& in : m.graph.inputs) {
    std::vector<int64_t> v(static_cast<size_t>(batch * seq));
    for (int64_t i = 0; i < batch * seq; ++i) {
      if (in.name == "input_ids") v[i] = token(rng());
      else if (in.name == "attention_mask") v[i] = i / seq < batch - 1 || i % seq < seq / 2 ? 1 : 0;  // last row padded
      else v[i] = i % 2;  // token_type_ids
    }
    feeds[in.name] = Tensor::from_vector<int64_t>(DType::kInt64, {batch, seq}, v);
  }
  return feeds;
}

void check_dynamic_model(const std::string& name) {
  auto model = onnx_io::import_model_file(std::string(KILN_SOURCE_DIR) + "/tests/models/" + name + ".onnx");
  ASSERT_TRUE(model.ok()) << model.status().to_string();
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "built without the CUDA backend (its layer table decides what runs in fp16)";
#else
  for (const Target& t : {kGpuFp16, Target{"gpu_fp32_opt3", true, Precision::kFloat32, 3}}) {
    SCOPED_TRACE(name + " for " + t.tag);
    auto opt = optimized(*model, t);
    ASSERT_TRUE(opt.ok()) << opt.status().to_string();
    const std::string dump = builder::dump_graph(*opt);
    if (t.precision == Precision::kFloat16) expect_matches_golden(name + "." + t.tag, dump);
    EXPECT_NE(dump.find("kiln.FusedAttention"), std::string::npos);
    EXPECT_EQ(dump.find("unknown"), std::string::npos) << "a value without a type";
    for (auto [batch, seq] : {std::pair<int64_t, int64_t>{2, 7}, {3, 40}, {1, 1}}) {
      const std::string at = t.tag + " at " + std::to_string(batch) + "x" + std::to_string(seq);
      const auto feeds = token_feeds(*model, batch, seq);
      const double tol = t.precision == Precision::kFloat32 ? 1e-4 : 2e-2;
      expect_same_outputs(*model, *opt, feeds, tol, at);
      // As a GPU context runs it: specialized to the shapes (builder::specialize_to_shapes, what CudaProgram does).
      std::map<std::string, Shape> shapes;
      for (const auto& [name, v] : feeds) shapes[name] = v.shape();
      auto specialized = builder::specialize_to_shapes(*opt, shapes);
      ASSERT_TRUE(specialized.ok()) << at << ": " << specialized.status().to_string();
      expect_same_outputs(*model, *specialized, feeds, tol, at + ", specialized");
      if (name == "tiny_bert_dyn")  // the padding mask's Range folds: the mask narrows to [B,1,1,S] there
        for (const auto& n : specialized->graph.nodes)
          if (n.op_type == "FusedAttention") {
            const ir::TypeInfo* mask = specialized->graph.type_of(n.inputs.back());
            ASSERT_NE(mask, nullptr);
            EXPECT_EQ(mask->to_string().substr(mask->to_string().find('[')),
                      "[" + std::to_string(batch) + ",1,1," + std::to_string(seq) + "]") << at;
          }
    }
  }
#endif
}

TEST(GoldenGraph, DynamicBert) { check_dynamic_model("tiny_bert_dyn"); }
TEST(GoldenGraph, DynamicGpt2) { check_dynamic_model("tiny_gpt2_dyn"); }

// Both fusions of ResNet's front show in the fp16 GPU graph, checked here by name as well as by the golden
// file, so that a change that loses either fails by saying which.
TEST(GoldenGraph, ResNetFront) {
  Builder b = resnet_front();
  check_model("resnet_front", b.m, b.feeds);
#ifdef KILN_HAVE_CUDA
  auto opt = optimized(b.m, kGpuFp16);
  ASSERT_TRUE(opt.ok()) << opt.status().to_string();
  const std::string dump = builder::dump_graph(*opt);
  int stems = 0, folded = 0, concats = 0;
  for (const std::string& line : lines_of(dump)) {
    const bool fused_conv = line.find(": kiln.FusedConv(") != std::string::npos;
    if (fused_conv && line.find(" + /maxpool/MaxPool") != std::string::npos) {
      ++stems;
      EXPECT_EQ(line.rfind("/conv1/Conv + ", 0), 0u) << line;
      for (const char* attr : {"pool=\"max\"", "pool_kernel_shape=[3,3]", "pool_strides=[2,2]", "pool_pads=[1,1,1,1]"})
        EXPECT_NE(line.find(attr), std::string::npos) << "no " << attr << " in the stem: " << line;
    }
    if (fused_conv && line.rfind("/layer1/layer1.0/downsample/downsample.0/Conv + /layer1/layer1.0/conv3/Conv + ", 0) == 0)
      ++folded;
    if (line.find(": Concat(") != std::string::npos && line.find(" shortcut concat") != std::string::npos) ++concats;
  }
  EXPECT_EQ(stems, 1) << "the max pool is not fused into the stem conv (fuse_conv_pool):\n" << dump;
  EXPECT_EQ(folded, 1) << "the projection shortcut is not folded into conv3 (fold_projection_shortcut):\n" << dump;
  EXPECT_EQ(concats, 1) << "no Concat of conv3's input and the shortcut's:\n" << dump;
  EXPECT_EQ(dump.find("kiln.ChannelsLastPool"), std::string::npos) << "a pool left:\n" << dump;
#endif
}

// build_plan makes the same graph through optimize_graph: the CPU golden of a model equals the graph of a
// CPU engine, and on a machine with a GPU the fp16 golden equals a CUDA engine's (the layer table answered
// as the backend does).
TEST(GoldenGraph, BuildPlanMakesTheSameGraph) {
  Builder b = resnet_bottleneck();
  for (const Target& t : {kCpu, kGpuFp16}) {
    SCOPED_TRACE(t.tag);
    engine::BuildSettings s;
    s.device = t.gpu ? "cuda" : "cpu";
    s.opt_level = t.opt_level;
    s.fp16 = t.precision == Precision::kFloat16;
#ifdef KILN_HAVE_CUDA
    if (t.gpu && !backends::cuda_device_available()) continue;  // no CUDA device here
#else
    if (t.gpu) continue;
#endif
    Logger quiet(Severity::kError);
    auto plan = builder::build_plan(b.m, s, quiet);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    auto opt = optimized(b.m, t);
    ASSERT_TRUE(opt.ok()) << opt.status().to_string();
    EXPECT_EQ(builder::dump_graph(plan->model), builder::dump_graph(*opt));
  }
}

// `kiln inspect --graph` prints the same dump for an engine it builds from the model: a golden can be
// checked, or two builds diffed, from the command line.
TEST(GoldenGraph, InspectGraphPrintsTheGoldenFormat) {
  if (!std::filesystem::exists(KILN_CLI)) GTEST_SKIP() << "the kiln command line is not built (" << KILN_CLI << ")";
  std::vector<std::pair<std::string, std::string>> runs = {{"--device cpu", "mnist_cnn.cpu_opt3"}};
#ifdef KILN_HAVE_CUDA
  if (backends::cuda_device_available()) runs.push_back({"--device cuda --fp16", "mnist_cnn.gpu_fp16_opt3"});
#endif
  for (const auto& [flags, golden] : runs) {
    SCOPED_TRACE(flags);
    const std::string cmd = std::string(KILN_CLI) + " inspect --graph " + flags + " " + KILN_SOURCE_DIR +
                            "/samples/mnist/mnist_cnn.onnx 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string out;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    ASSERT_EQ(pclose(p), 0) << cmd;
    std::ifstream f(golden_path(golden), std::ios::binary);
    std::stringstream want;
    want << f.rdbuf();
    EXPECT_EQ(unified_diff(lines_of(want.str()), lines_of(out)), "") << cmd;
  }
}

TEST(GoldenGraph, DiffShowsTheChangedLinesWithContext) {
  const std::vector<std::string> a = {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"};
  std::vector<std::string> b = a;
  b[5] = "six";
  b.push_back("13");
  EXPECT_EQ(unified_diff(a, b), "@@ -3,10 +3,11 @@\n 3\n 4\n 5\n-6\n+six\n 7\n 8\n 9\n 10\n 11\n 12\n+13\n");
  EXPECT_EQ(unified_diff(a, a), "");
}

// Bad options fail naming what is wrong, as a build does.
TEST(OptimizeGraph, ClearErrors) {
  Builder b = resnet_bottleneck();
  Logger quiet(Severity::kError);
  builder::OptimizeOptions o;
  o.layer_precisions["no_such_layer"] = "fp32";
  ir::Model m = b.m;
  Status st = builder::optimize_graph(m, o, quiet);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no layer named 'no_such_layer'"), std::string::npos) << st.message();

  o.layer_precisions = {{"block.conv2", "fp16"}};  // the CPU computes in the model's types
  m = b.m;
  st = builder::optimize_graph(m, o, quiet);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("the CPU target computes in the model's types"), std::string::npos) << st.message();

  o.for_gpu = true;  // a GPU target without a half-precision answer cannot honor an fp16 pin
  m = b.m;
  st = builder::optimize_graph(m, o, quiet);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("block.conv2:fp16 cannot be honored"), std::string::npos) << st.message();

  o.input_shapes = {{"image", {2, 3}}};  // a rank change
  m = b.m;
  EXPECT_FALSE(builder::optimize_graph(m, o, quiet).ok());
}

// A pinned layer keeps its pin through the fusions: the fp32 pin on block.conv2 (fused with block.relu2)
// keeps that fused layer, and only it, in float32 in the GPU graph.
TEST(OptimizeGraph, PinsFollowFusedLayers) {
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "built without the CUDA backend";
#else
  Builder b = resnet_bottleneck();
  builder::OptimizeOptions o;
  o.for_gpu = true;
  o.precision = Precision::kFloat16;
  o.layer_precisions = {{"block.conv2", "fp32"}};
  o.can_run_in_half = backends::cuda_runs_in_half;
  Logger quiet(Severity::kError);
  std::set<std::string> lowered;
  ASSERT_TRUE(builder::optimize_graph(b.m, o, quiet, &lowered).ok());
  bool found = false;
  for (const ir::Node& n : b.m.graph.nodes) {
    if (builder::layer_pin(n, o.layer_precisions) != "fp32") continue;
    found = true;
    EXPECT_EQ(n.name, "block.conv2 + block.relu2");
    EXPECT_EQ(lowered.count(n.name), 0u);
    EXPECT_EQ(b.m.graph.type_of(n.outputs[0])->dtype, DType::kFloat32);
  }
  EXPECT_TRUE(found);
  EXPECT_FALSE(lowered.empty());
#endif
}

}  // namespace
}  // namespace kiln::testing
