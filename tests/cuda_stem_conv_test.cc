// The tactic "cuda.conv.stem" of kiln.FusedConv (src/backends/cuda/stem_conv.cu: a tensor-core direct
// convolution for NHWC inputs of 4 or 8 channels) against the CPU reference, on ResNet's stem at batch 2 and
// on odd sizes, strides, pads, kernels, channel counts and activations, in float16 and bfloat16; which specs
// list the tactic and which creates refuse it (no GPU needed); and, with KILN_BENCH=1, its time on ResNet-50's
// stem at batch 256 next to cuDNN's.
//
// Tolerances: a sum of K = R * S * C products of values in [-1, 1], its error growing like sqrt(K), plus the
// output's one rounding.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

const char* const kStem = "cuda.conv.stem";
const char* const kStemWgmma = "cuda.conv.stem.wgmma";  // 64 output channels a block, compute capability 9.0

bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  return cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 && minor == 0;
}

struct StemCase {
  Shape x;           // [N, H, W, C]
  int64_t k = 64;    // output channels
  int64_t r = 7, s = 7;
  int64_t sh = 2, sw = 2;
  int64_t pad = 3;   // on every side
  std::string act = "Relu";
  bool bias = true;
  Attrs extra;       // activation parameters
  bool with_inf = false;  // every 997th input element +inf
  bool pool = false;      // the 3x3 stride-2 pad-1 max pool of fuse_conv_pool
};

Attrs pool_attrs() {
  return {{"pool", string_attr("max")},
          {"pool_kernel_shape", ints_attr({3, 3})},
          {"pool_strides", ints_attr({2, 2})},
          {"pool_pads", ints_attr({1, 1, 1, 1})}};
}

Attrs stem_attrs(const StemCase& c) {
  Attrs a = {{"channels_last", int_attr(1)},
             {"activation", string_attr(c.act)},
             {"strides", ints_attr({c.sh, c.sw})},
             {"pads", ints_attr({c.pad, c.pad, c.pad, c.pad})}};
  for (const auto& [name, value] : c.extra) a[name] = value;
  if (c.pool)
    for (const auto& [name, value] : pool_attrs()) a[name] = value;
  return a;
}

std::string describe(const StemCase& c, DType t) {
  return shape_to_string(c.x) + " -> " + std::to_string(c.k) + ", kernel " + std::to_string(c.r) + "x" + std::to_string(c.s) +
         ", stride " + std::to_string(c.sh) + "," + std::to_string(c.sw) + ", pad " + std::to_string(c.pad) + ", act '" + c.act +
         "'" + (c.bias ? " +B " : " ") + (c.pool ? "+pool " : "") + dtype_name(t);
}

void expect_stem_variant_matches(const StemCase& c, DType t, const char* tactic) {
  SCOPED_TRACE(describe(c, t));
  Tensor x = random_float(c.x);
  const Tensor w = random_float({c.k, c.r, c.s, c.x[3]}), b = random_float({c.k});
  if (c.with_inf)
    for (int64_t i = 0; i < x.numel(); i += 997) x.data<float>()[i] = std::numeric_limits<float>::infinity();
  LayerCase lc;
  lc.op = "FusedConv";
  lc.domain = "kiln";
  lc.opset = 1;
  lc.inputs = {Value(x), Value(w), c.bias ? Value(b) : Value()};
  lc.attrs = stem_attrs(c);
  lc.precision = t;
  lc.only_tactic = tactic;
  const double root_k = std::sqrt(static_cast<double>(c.r * c.s * c.x[3]));
  lc.rtol = t == DType::kFloat16 ? 1e-2 : 2e-2;
  lc.atol = lc.rtol + 1e-3 * root_k;
  expect_layer_matches_reference(lc);
}

// Both variants of the tactic where they run: the mma.sync one always, the wgmma one for output channels a
// multiple of 64 on compute capability 9.0.
void expect_stem_matches(const StemCase& c, DType t) {
  for (const char* tactic : {kStem, kStemWgmma}) {
    if (tactic == kStemWgmma && (c.k % 64 != 0 || !device_is_sm90())) continue;
    SCOPED_TRACE(tactic);
    expect_stem_variant_matches(c, t, tactic);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaStemConv, ResNetStem) {
  KILN_SKIP_WITHOUT_GPU();
  StemCase c;
  c.x = {2, 224, 224, 8};  // convert_conv_layout pads the 3 channels to 8 (with zeros; random here)
  expect_stem_matches(c, DType::kFloat16);
  c.act = "";
  expect_stem_matches(c, DType::kBFloat16);
}

// 17 x 23 leaves partial tiles in both directions at every stride; 4 channels take the zero-padded chunk path.
TEST(CudaStemConv, OddSizes) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat16, DType::kBFloat16})
    for (int64_t kernel : {3, 7})
      for (int64_t stride : {1, 2})
        for (int64_t pad = 0; pad <= 3; ++pad) {
          StemCase c;
          c.x = {1, 17, 23, 4};
          c.r = c.s = kernel;
          c.sh = c.sw = stride;
          c.pad = pad;
          c.act = pad % 2 == 0 ? "Relu" : "";
          expect_stem_matches(c, t);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

// Output channels in blocks of 32 (K = 32, 96) and 64 (K = 128, two blocks); batches with more tiles than
// resident blocks (each block then loops, double-buffering the patch); non-square kernels and strides; no
// bias; Clip and LeakyRelu.
TEST(CudaStemConv, ChannelBlocksTilesAndActivations) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    StemCase a;
    a.x = {64, 17, 23, 8};
    a.k = 128;
    a.r = a.s = 3;
    a.sh = a.sw = 1;
    a.pad = 1;
    expect_stem_matches(a, t);
    StemCase b = a;
    b.x = {48, 17, 23, 4};
    b.k = 96;
    b.r = 5;
    b.s = 3;
    b.sh = 2;
    b.pad = 2;
    b.bias = false;
    b.act = "Clip";
    b.extra = {{"activation_min", float_attr_of(0.0f)}, {"activation_max", float_attr_of(6.0f)}};
    expect_stem_matches(b, t);
    StemCase c;
    c.x = {3, 31, 29, 8};
    c.k = 32;
    c.r = 1;
    c.s = 7;
    c.sh = 1;
    c.sw = 3;
    c.pad = 3;
    c.act = "LeakyRelu";
    c.extra = {{"activation_alpha", float_attr_of(0.2f)}};
    expect_stem_matches(c, t);
    StemCase d;  // an odd number of window positions with one k step (the tail half zeroed)
    d.x = {2, 9, 11, 8};
    d.r = d.s = 1;
    d.sh = d.sw = 1;
    d.pad = 0;
    expect_stem_matches(d, t);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// 4 channels at horizontal stride 2 take the paired layout (two window positions a chunk): ResNet's stem as
// convert_conv_layout now pads it; odd widths 3 and 7 (the pair past the window zeroed on every step or on odd
// ones), even widths, an odd position count (the tail), other vertical strides; width 5 keeps the unpaired
// layout. An inf in the input poisons exactly the outputs whose windows hold it, as in the reference: never
// those where it is only the zero-weight pixel past the window.
TEST(CudaStemConv, PairedPositions) {
  KILN_SKIP_WITHOUT_GPU();
  StemCase resnet;
  resnet.x = {2, 224, 224, 4};
  expect_stem_matches(resnet, DType::kFloat16);
  struct Shape2 {
    int64_t r, s, sh, pad;
  };
  for (DType t : {DType::kFloat16, DType::kBFloat16})
    for (Shape2 k : {Shape2{7, 7, 2, 3}, {3, 3, 2, 1}, {3, 2, 1, 0}, {2, 4, 2, 2}, {5, 6, 3, 1}, {1, 7, 2, 3}, {7, 5, 2, 2}})
      for (bool inf : {false, true}) {
        StemCase c;
        c.x = {3, 19, 37, 4};
        c.r = k.r;
        c.s = k.s;
        c.sh = k.sh;
        c.sw = 2;
        c.pad = k.pad;
        c.act = inf ? "" : "Relu";
        c.with_inf = inf;
        expect_stem_matches(c, t);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

// Every way the k-step loop ends: the kernel's windows of 3 (two steps, the second's tail zeroed), 4, 5, 6 and
// 16 positions leave one, two or three steps after the paired loop, with and without a padding position.
TEST(CudaStemConv, StepCounts) {
  KILN_SKIP_WITHOUT_GPU();
  for (auto [r, s] : std::vector<std::pair<int64_t, int64_t>>{{1, 3}, {2, 2}, {1, 5}, {2, 3}, {4, 4}}) {
    StemCase c;
    c.x = {2, 19, 21, 8};
    c.r = r;
    c.s = s;
    c.sh = c.sw = 1;
    c.pad = 1;
    expect_stem_matches(c, DType::kFloat16);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The fused 3x3 stride-2 max pool: ResNet's stem (7 x 7 tiles, pool outputs on tile boundaries that take the
// halos of the tiles above and to the left); partial tiles at the bottom and right (conv outputs 37 x 45 and
// 34 x 18: a last pool window that reaches past the image); two blocks of 64 channels; more tiles than
// resident blocks; no activation with infs in the input (inf and NaN conv outputs: NaN never wins a window,
// as in the separate pool).
TEST(CudaStemConv, FusedMaxPool) {
  KILN_SKIP_WITHOUT_GPU();
  StemCase resnet;
  resnet.x = {2, 224, 224, 4};
  resnet.pool = true;
  expect_stem_matches(resnet, DType::kFloat16);
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    StemCase a;
    a.x = {3, 37, 45, 8};
    a.r = a.s = 3;
    a.sh = a.sw = 1;
    a.pad = 1;
    a.pool = true;
    expect_stem_matches(a, t);
    StemCase b;
    b.x = {2, 67, 35, 4};
    b.k = 128;
    b.pool = true;
    b.act = "LeakyRelu";
    b.extra = {{"activation_alpha", float_attr_of(0.1f)}};
    expect_stem_matches(b, t);
    StemCase c;
    c.x = {80, 33, 47, 4};
    c.r = c.s = 3;
    c.pad = 1;
    c.pool = true;
    expect_stem_matches(c, t);
    StemCase d = b;
    d.k = 64;
    d.act = "";
    d.extra.clear();
    d.with_inf = true;
    expect_stem_matches(d, t);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// Relu's packed epilogue (rounded, then max with 0 keeping NaN) with infs in the input: -inf conv outputs
// become 0, +inf stays, NaN (inf - inf) stays NaN, as the reference's Relu; with the pool, NaN never wins a
// window. The ResNet layout (4 channels, paired) and 8 channels, float16 and bfloat16.
TEST(CudaStemConv, ReluWithInfinities) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat16, DType::kBFloat16})
    for (bool pool : {false, true})
      for (int64_t channels : {4, 8}) {
        StemCase c;
        c.x = {2, 41, 39, channels};
        c.act = "Relu";
        c.pool = pool;
        c.with_inf = true;
        expect_stem_matches(c, t);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

// ---------------------------------------------------------------------------------------------------------
// Which specs list the tactic, and what create refuses (neither needs a GPU).

cuda::LayerSpec stem_spec(ir::Node* node, std::vector<cuda::TensorDesc> ins, Attrs attrs) {
  node->name = "stem";
  node->op_type = "FusedConv";
  node->domain = "kiln";
  node->attributes = std::move(attrs);
  for (const auto& d : ins) node->inputs.push_back(d.present() ? "x" : "");
  node->outputs = {"y"};
  cuda::LayerSpec spec;
  spec.node = node;
  spec.opset = 1;
  spec.inputs = std::move(ins);
  spec.outputs = {desc(spec.inputs[0].dtype, {})};
  return spec;
}

struct SpecCase {
  std::string what;
  std::vector<cuda::TensorDesc> ins;
  Attrs attrs;
};

Attrs nhwc_attrs(int64_t group = 1) {
  return {{"channels_last", int_attr(1)}, {"pads", ints_attr({1, 1, 1, 1})}, {"group", int_attr(group)}, {"activation", string_attr("Relu")}};
}

// Specs the tactic does not run, each refused by the tactic list and by create with Unsupported.
std::vector<SpecCase> refused_specs() {
  const auto h = DType::kFloat16;
  std::vector<SpecCase> v;
  v.push_back({"16 channels", {desc(h, {1, 8, 8, 16}), desc(h, {64, 3, 3, 16}), desc(h, {64})}, nhwc_attrs()});
  v.push_back({"residual Z", {desc(h, {1, 8, 8, 8}), desc(h, {64, 3, 3, 8}), desc(h, {64}), desc(h, {1, 8, 8, 64})}, nhwc_attrs()});
  v.push_back({"group 2", {desc(h, {1, 8, 8, 8}), desc(h, {64, 3, 3, 4}), desc(h, {64})}, nhwc_attrs(2)});
  v.push_back({"float32", {desc(DType::kFloat32, {1, 8, 8, 8}), desc(DType::kFloat32, {64, 3, 3, 8})}, nhwc_attrs()});
  Attrs nchw = nhwc_attrs();
  nchw["channels_last"] = int_attr(0);
  v.push_back({"NCHW", {desc(h, {1, 8, 8, 8}), desc(h, {64, 8, 3, 3})}, nchw});
  v.push_back({"48 outputs", {desc(h, {1, 8, 8, 8}), desc(h, {48, 3, 3, 8})}, nhwc_attrs()});
  Attrs big = nhwc_attrs();
  big["pads"] = ints_attr({4, 4, 4, 4});
  v.push_back({"9x9 kernel", {desc(h, {1, 16, 16, 8}), desc(h, {64, 9, 9, 8})}, big});
  Attrs sigmoid = nhwc_attrs();
  sigmoid["activation"] = string_attr("Sigmoid");
  v.push_back({"Sigmoid", {desc(h, {1, 8, 8, 8}), desc(h, {64, 3, 3, 8})}, sigmoid});
  Attrs dilated = nhwc_attrs();
  dilated["dilations"] = ints_attr({2, 2});
  dilated["pads"] = ints_attr({2, 2, 2, 2});
  v.push_back({"dilation 2", {desc(h, {1, 8, 8, 8}), desc(h, {64, 3, 3, 8})}, dilated});
  Attrs pooled = nhwc_attrs();
  for (const auto& [name, value] : pool_attrs()) pooled[name] = value;
  v.push_back({"pool and 32 outputs", {desc(h, {1, 8, 8, 8}), desc(h, {32, 3, 3, 8})}, pooled});
  Attrs pool2 = pooled;
  pool2["pool_kernel_shape"] = ints_attr({2, 2});
  v.push_back({"2x2 pool", {desc(h, {1, 8, 8, 8}), desc(h, {64, 3, 3, 8})}, pool2});
  return v;
}

bool lists_stem(const cuda::LayerSpec& spec) {
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  const std::vector<std::string> t = kind->tactics(spec);
  return std::find(t.begin(), t.end(), kStem) != t.end();
}

TEST(CudaStemConvCheck, ListedForTheStem) {
  ASSERT_NE(cuda::layer_table().find("kiln.FusedConv"), nullptr);
  const Attrs stem = {{"channels_last", int_attr(1)}, {"pads", ints_attr({3, 3, 3, 3})}, {"strides", ints_attr({2, 2})},
                      {"activation", string_attr("Relu")}};
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    ir::Node a, b;
    EXPECT_TRUE(lists_stem(stem_spec(&a, {desc(t, {256, 224, 224, 8}), desc(t, {64, 7, 7, 8}), desc(t, {64})}, stem)));
    EXPECT_TRUE(lists_stem(stem_spec(&b, {desc(t, {-1, 224, 224, 4}), desc(t, {64, 7, 7, 4})}, stem)));  // symbolic batch
  }
}

// A fused pool lists the stem's two variants alone (no other tactic pools), and every other tactic's create
// refuses it.
TEST(CudaStemConvCheck, FusedPoolRunsInTheStemOnly) {
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  ASSERT_NE(kind, nullptr);
  Attrs attrs = {{"channels_last", int_attr(1)}, {"pads", ints_attr({3, 3, 3, 3})}, {"strides", ints_attr({2, 2})},
                 {"activation", string_attr("Relu")}};
  for (const auto& [name, value] : pool_attrs()) attrs[name] = value;
  ir::Node node;
  const auto h = DType::kFloat16;
  const cuda::LayerSpec spec = stem_spec(&node, {desc(h, {8, 224, 224, 4}), desc(h, {64, 7, 7, 4}), desc(h, {64})}, attrs);
  EXPECT_EQ(kind->tactics(spec), (std::vector<std::string>{kStem, kStemWgmma}));
  for (const char* other : {"cuda.cudnn.fused.algo1", "cuda.cudnn.graph.h0", "default"}) {
    auto layer = kind->create(spec, other, cuda::CudaHandles{});
    ASSERT_FALSE(layer.ok()) << other;
    EXPECT_EQ(layer.status().code(), StatusCode::kUnsupported) << layer.status().to_string();
  }
}

TEST(CudaStemConvCheck, RefusedElsewhereWithUnsupported) {
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  ASSERT_NE(kind, nullptr);
  for (const SpecCase& c : refused_specs()) {
    SCOPED_TRACE(c.what);
    ir::Node node;
    const cuda::LayerSpec spec = stem_spec(&node, c.ins, c.attrs);
    EXPECT_EQ(kind->check(spec), "");  // FusedConv itself runs them (through cuDNN)
    EXPECT_FALSE(lists_stem(spec));
    // create refuses before it touches the device.
    auto layer = kind->create(spec, kStem, cuda::CudaHandles{});
    ASSERT_FALSE(layer.ok());
    EXPECT_EQ(layer.status().code(), StatusCode::kUnsupported) << layer.status().to_string();
    EXPECT_NE(layer.status().message().find("cuda.conv.stem"), std::string::npos) << layer.status().to_string();
  }
}

// ---------------------------------------------------------------------------------------------------------
// ResNet-50's stem at batch 256 (X [256, 224, 224, 4] float16, W [64, 7, 7, 4], bias, Relu): the times of the
// stem tactic's two variants, with and without the fused max pool, and cuDNN's (default and
// IMPLICIT_PRECOMP_GEMM; they may refuse 4 channels), median of 20 runs after 5, printed. Their correctness is
// the tests' above. A benchmark, not a test: it runs only with KILN_BENCH=1 in the environment (bench scripts
// set it), so that the GPU test round stays short.
TEST(CudaStemConvBench, ResNetStemBatch256) {
  KILN_SKIP_UNLESS_BENCH();
  KILN_SKIP_WITHOUT_GPU();
  const auto h = DType::kFloat16;
  // As convert_conv_layout pads ResNet's RGB for the stem kernel: 4 channels (the paired layout).
  const Shape xs = {256, 224, 224, 4}, ws = {64, 7, 7, 4}, ys = {256, 112, 112, 64}, ps = {256, 56, 56, 64};
  const Attrs attrs = {{"channels_last", int_attr(1)}, {"pads", ints_attr({3, 3, 3, 3})}, {"strides", ints_attr({2, 2})},
                       {"activation", string_attr("Relu")}};
  ir::Node node;
  cuda::LayerSpec spec = stem_spec(&node, {desc(h, xs), desc(h, ws), desc(h, {64})}, attrs);
  spec.outputs = {desc(h, ys)};
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConv");
  ASSERT_NE(kind, nullptr);
  ASSERT_EQ(kind->check(spec), "");
  // The values do not matter for the time: bytes 0x3C make every element about 1.05 (float16 0x3C3C).
  detail::DeviceMem x(shape_numel(xs) * 2), w(shape_numel(ws) * 2), b(64 * 2), y(shape_numel(ys) * 2);
  ASSERT_EQ(cudaMemset(x.p, 0x3C, shape_numel(xs) * 2), cudaSuccess);
  ASSERT_EQ(cudaMemset(w.p, 0x3C, shape_numel(ws) * 2), cudaSuccess);
  ASSERT_EQ(cudaMemset(b.p, 0x3C, 64 * 2), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<cuda::DeviceTensor> ins = {{x.p, h, xs}, {w.p, h, ws}, {b.p, h, {64}}};
  const cuda::CudaHandles& handles = detail::test_handles();
  for (bool pool : {false, true}) {  // then with the max pool fused (fuse_conv_pool)
    if (pool) {
      for (const auto& [name, value] : pool_attrs()) node.attributes[name] = value;
      spec.outputs = {desc(h, ps)};
    }
    const std::vector<cuda::DeviceTensor> outs = {{y.p, h, pool ? ps : ys}};
    for (const char* tactic : {kStem, kStemWgmma, "default", "cuda.cudnn.fused.algo1"}) {
      auto layer = kind->create(spec, tactic, handles);
      if (!layer.ok()) {
        std::printf("  %s%s: not run (%s)\n", tactic, pool ? " + pool" : "", layer.status().to_string().c_str());
        continue;
      }
      double median = 0;
      ASSERT_NO_FATAL_FAILURE(time_created_layer_ms(**layer, ins, outs, handles, &median));
      std::printf("  ResNet-50 stem%s, batch 256, float16: %s %.3f ms (median of 20)\n", pool ? " + 3x3 max pool" : "", tactic,
                  median);
    }
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
