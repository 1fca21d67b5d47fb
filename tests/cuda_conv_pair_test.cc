// The CUDA layer of kiln.FusedConvPair (conv_pair.cu) against its CPU reference: ResNet-50's layer1
// junctions (C0 64 or 128, C1 256, C2 64 or 128; with and without the residual Z), every C1 the kernel is
// built for, partial last tiles and more tiles than resident blocks, float16 and bfloat16, and inf in X (NaN
// through the products must stay NaN). The refusals of check() need no GPU. A benchmark (KILN_BENCH=1) times
// the pair against the two kiln.FusedConv layers it replaces.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

struct PairCase {
  Shape x;  // [N, H, W, C0]
  int64_t c1 = 256, c2 = 64;
  bool z = true, bias = true, relu = true, relu2 = true, with_inf = false;
  int64_t x2 = 0;  // X2's channels (input 6: the Concat fuse_conv_pair folded), 0 for none
  std::vector<int64_t> y_strides = {};  // output_strides (sample_pair_output's), none when empty
};

std::string describe(const PairCase& c, DType t) {
  return shape_to_string(c.x) + (c.x2 ? " + X2 " + std::to_string(c.x2) : "") + " -> " + std::to_string(c.c1) +
         " -> " + std::to_string(c.c2) + (c.z ? " +Z" : "") + (c.bias ? " +B" : "") + (c.relu ? " relu" : "") +
         (c.relu2 ? " relu2" : "") + (c.with_inf ? " inf" : "") +
         (c.y_strides.empty() ? "" : " Y sampled " + shape_to_string(c.y_strides)) + " " + dtype_name(t);
}

void expect_pair_matches(const PairCase& c, DType t) {
  SCOPED_TRACE(describe(c, t));
  const int64_t c0 = c.x[3] + c.x2;  // W's K: X's channels, then X2's
  Tensor x = random_float(c.x);
  if (c.with_inf)
    for (int64_t i = 0; i < x.numel(); i += 997) x.data<float>()[i] = std::numeric_limits<float>::infinity();
  // Weights scaled by 1/sqrt(K) so that Y and Y2 stay near 1 (float16's precision there).
  const Tensor w = random_float({c.c1, 1, 1, c0}, 0.1f / std::sqrt(float(c0)), 2.0f / std::sqrt(float(c0)));
  const Tensor w2 = random_float({c.c2, 1, 1, c.c1}, 0.1f / std::sqrt(float(c.c1)), 2.0f / std::sqrt(float(c.c1)));
  const Shape ys = {c.x[0], c.x[1], c.x[2], c.c1};
  LayerCase lc;
  lc.op = "FusedConvPair";
  lc.domain = "kiln";
  lc.opset = 1;
  lc.inputs = {Value(x), Value(w), c.bias ? Value(random_float({c.c1})) : Value(), c.z ? Value(random_float(ys)) : Value(),
               Value(w2), c.bias ? Value(random_float({c.c2})) : Value()};
  if (c.x2 > 0) lc.inputs.push_back(Value(random_float({c.x[0], c.x[1], c.x[2], c.x2})));
  lc.constant_inputs = {1, 2, 4, 5};
  if (c.relu) lc.attrs["activation"] = string_attr("Relu");
  if (c.relu2) lc.attrs["second_activation"] = string_attr("Relu");
  if (!c.y_strides.empty()) lc.attrs["output_strides"] = ints_attr(c.y_strides);
  lc.num_outputs = 2;
  lc.precision = t;
  // Y2 reads Y rounded: where the GPU's and the reference's sums round Y differently (1 ulp), Y2 moves by
  // that ulp times a weight.
  lc.rtol = t == DType::kFloat16 ? 1e-2 : 3e-2;
  lc.atol = lc.rtol;
  expect_layer_matches_reference(lc);
}

const DType kHalfTypes[] = {DType::kFloat16, DType::kBFloat16};

// ResNet-50's three layer1 junctions: layer1.0's folded shortcut (C0 128, no Z) into layer1.1's conv1,
// layer1.1 into layer1.2, and layer1.2 into layer2.0's conv1 (C2 128); and the first as fuse_conv_pair
// leaves it, the shortcut's Concat folded: X (conv2's output) and X2 (the pooled stem), 64 channels each.
// 20 x 17 pixels: 680 rows, a partial last tile.
TEST(CudaConvPair, ResNetLayer1Junctions) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kHalfTypes) {
    expect_pair_matches({{2, 20, 17, 128}, 256, 64, false}, t);
    expect_pair_matches({{2, 20, 17, 64}, 256, 64, true}, t);
    expect_pair_matches({{2, 20, 17, 64}, 256, 128, true}, t);
    expect_pair_matches({{2, 20, 17, 64}, 256, 64, false, true, true, true, false, 64}, t);
  }
}

// C1 64, 128 and 192; no biases, no activations; C2 192 (three 64-column passes).
TEST(CudaConvPair, EveryWidthWithoutBiasesOrActivations) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kHalfTypes) {
    expect_pair_matches({{1, 5, 7, 64}, 64, 192, true, false, false, false}, t);
    expect_pair_matches({{1, 9, 9, 128}, 128, 64, false, true, false, true}, t);
    expect_pair_matches({{1, 3, 11, 64}, 192, 64, true, true, true, false}, t);
  }
}

// 4 x 56 x 56 = 12,544 rows: 196 tiles, more than one per SM, so each block cycles its stages; and a single
// row (one tile, 63 rows of it past the end).
TEST(CudaConvPair, ManyTilesAndOneRow) {
  KILN_SKIP_WITHOUT_GPU();
  expect_pair_matches({{4, 56, 56, 64}, 256, 64, true}, DType::kFloat16);
  expect_pair_matches({{1, 1, 1, 128}, 256, 64, false}, DType::kBFloat16);
}

// Y written at a stride (sample_pair_output): ResNet-50's layer1.2 -> layer2.0 junction, whose Y only the
// stride-2 downsample reads; sizes that the strides do not divide (20 x 17 at 2 and 3), one axis only, and
// many tiles.
TEST(CudaConvPair, SampledY) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kHalfTypes) {
    PairCase c{{2, 20, 17, 64}, 256, 128, true};
    for (std::vector<int64_t> s : {std::vector<int64_t>{2, 2}, {3, 2}, {1, 2}, {5, 1}}) {
      c.y_strides = s;
      expect_pair_matches(c, t);
    }
  }
  PairCase many{{4, 56, 56, 64}, 256, 128, true};
  many.y_strides = {2, 2};
  expect_pair_matches(many, DType::kFloat16);
}

// Y written into channels [offset, offset + C1) of a wider tensor (write_concat_in_place), sampled as at
// ResNet-50's layer2.0 and not: those channels equal the reference's, and the others keep what the output
// memory held (the harness fills it with 0xFF bytes), for the kiln.WriteChannels after it to fill.
TEST(CudaConvPair, YIntoAWiderTensor) {
  KILN_SKIP_WITHOUT_GPU();
  const int64_t c0 = 64, c1 = 256, c2 = 128, wide = 384;
  for (const auto& [offset, strides] : {std::pair<int64_t, std::vector<int64_t>>{128, {2, 2}}, {0, {1, 1}}, {64, {1, 2}}}) {
    SCOPED_TRACE("offset " + std::to_string(offset) + " strides " + shape_to_string(strides));
    const Shape xs = {2, 9, 10, c0};
    LayerCase lc;
    lc.op = "FusedConvPair";
    lc.domain = "kiln";
    lc.opset = 1;
    lc.precision = DType::kFloat16;
    lc.attrs = {{"activation", string_attr("Relu")}, {"output_strides", ints_attr(strides)},
                {"output_channels", int_attr(wide)}, {"output_channel_offset", int_attr(offset)}};
    lc.num_outputs = 2;
    lc.constant_inputs = {1, 2, 4, 5};
    std::vector<Value> in;
    for (const Shape& s : {xs, Shape{c1, 1, 1, c0}, Shape{c1}, Shape{xs[0], xs[1], xs[2], c1}, Shape{c2, 1, 1, c1}, Shape{c2}}) {
      const float scale = s.size() == 4 && s[1] == 1 ? 1.0f / std::sqrt(float(s[3])) : 1.0f;
      auto h = cast_tensor(random_float(s, 0.1f * scale, scale), DType::kFloat16);
      ASSERT_TRUE(h.ok());
      in.emplace_back(*h);
    }
    std::vector<Value> ref_in;
    for (const Value& v : in) ref_in.emplace_back(widen_to_float32(v.tensor()));
    OpRun ref = run_kernel("kiln", "FusedConvPair", ref_in, lc.attrs, 2, 1, "reference");
    ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
    const std::vector<Tensor> want = {ref.outputs[0].tensor(), ref.outputs[1].tensor()};
    auto got = run_cuda_layer(lc, in, want, "cuda.conv.pair");
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    const Tensor& y = (*got)[0];
    ASSERT_EQ(y.shape(), want[0].shape());
    const auto* bits = static_cast<const uint16_t*>(y.raw_data());
    for (int64_t i = 0; i < y.numel(); ++i) {
      const int64_t c = i % wide;
      if (c >= offset && c < offset + c1) {
        const double g = y.scalar_as_double(i), w = want[0].scalar_as_double(i);
        ASSERT_NEAR(g, w, 1e-2 * std::max(1.0, std::fabs(w))) << "element " << i;
      } else {
        ASSERT_EQ(bits[i], 0xFFFF) << "element " << i << " (channel " << c << ") was written";
      }
    }
    detail::compare((*got)[1], want[1], 1e-2, 1e-2, "Y2");
  }
}

// inf in X: products give +-inf and inf - inf NaN; Relu keeps NaN (as the reference's does).
TEST(CudaConvPair, InfinityAndNaN) {
  KILN_SKIP_WITHOUT_GPU();
  PairCase c{{2, 8, 9, 64}, 256, 64, true};
  c.with_inf = true;
  for (DType t : kHalfTypes) expect_pair_matches(c, t);
}

// Two layers of one kernel (C1 256) that need different shared memory (C0 128 without Z: 4 groups; C0 64, C2
// 128 with Z: 3 groups), the larger created first: both must still launch (in ResNet-50 the
// second create once capped the kernel's shared memory below the first layer's need).
TEST(CudaConvPair, LayersOfOneKernelWithDifferentSharedMemory) {
  KILN_SKIP_WITHOUT_GPU();
  const auto h = DType::kFloat16;
  const cuda::CudaHandles& handles = detail::test_handles();
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedConvPair");
  ASSERT_NE(kind, nullptr);
  const cuda::TensorDesc none;
  std::vector<std::unique_ptr<cuda::Layer>> layers;
  std::vector<ir::Node> nodes(2);
  const int64_t c0s[] = {128, 64}, c2s[] = {64, 128};
  for (int i = 0; i < 2; ++i) {
    nodes[i].name = "pair" + std::to_string(i);
    nodes[i].domain = "kiln";
    nodes[i].op_type = "FusedConvPair";
    cuda::LayerSpec s;
    s.node = &nodes[i];
    s.opset = 1;
    s.inputs = {desc(h, {1, 8, 8, c0s[i]}), desc(h, {256, 1, 1, c0s[i]}), none, i == 1 ? desc(h, {1, 8, 8, 256}) : none,
                desc(h, {c2s[i], 1, 1, 256}), none};
    s.outputs = {desc(h, {1, 8, 8, 256}), desc(h, {1, 8, 8, c2s[i]})};
    auto layer = kind->create(s, "cuda.conv.pair", handles);
    ASSERT_TRUE(layer.ok()) << layer.status().to_string();
    layers.push_back(std::move(*layer));
  }
  detail::DeviceMem x(64 * 128 * 2), w(256 * 128 * 2), z(64 * 256 * 2), w2(128 * 256 * 2), y(64 * 256 * 2), y2(64 * 128 * 2);
  for (int i = 0; i < 2; ++i) {
    const std::vector<cuda::DeviceTensor> ins = {{x.p, h, {1, 8, 8, c0s[i]}}, {w.p, h, {256, 1, 1, c0s[i]}}, {},
                                                 i == 1 ? cuda::DeviceTensor{z.p, h, {1, 8, 8, 256}} : cuda::DeviceTensor{},
                                                 {w2.p, h, {c2s[i], 1, 1, 256}}, {}};
    const Status st = layers[i]->run(ins, {{y.p, h, {1, 8, 8, 256}}, {y2.p, h, {1, 8, 8, c2s[i]}}}, nullptr, handles);
    EXPECT_TRUE(st.ok()) << "layer " << i << ": " << st.to_string();
  }
  EXPECT_EQ(cudaStreamSynchronize(handles.stream), cudaSuccess);
}

TEST(CudaConvPairCheck, RefusesWhatTheKernelDoesNotRun) {
  const auto h = DType::kFloat16;
  const auto junction = [&](DType t, Shape w, Shape w2) {
    return std::vector<cuda::TensorDesc>{desc(t, {2, 8, 8, w[3]}), desc(t, w), desc(t, {w[0]}), desc(t, {2, 8, 8, w[0]}),
                                         desc(t, w2), desc(t, {w2[0]})};
  };
  const std::vector<cuda::TensorDesc> outs = {desc(h, {2, 8, 8, 256}), desc(h, {2, 8, 8, 64})};
  EXPECT_EQ(check_of("kiln.FusedConvPair", junction(h, {256, 1, 1, 64}, {64, 1, 1, 256}), outs), "");
  const std::string f32 = check_of("kiln.FusedConvPair", junction(DType::kFloat32, {256, 1, 1, 64}, {64, 1, 1, 256}), outs);
  EXPECT_NE(f32.find("float16 and bfloat16"), std::string::npos) << f32;
  const std::string wide = check_of("kiln.FusedConvPair", junction(h, {512, 1, 1, 128}, {128, 1, 1, 512}), outs);
  EXPECT_NE(wide.find("96 KiB"), std::string::npos) << wide;
  const std::string odd = check_of("kiln.FusedConvPair", junction(h, {256, 1, 1, 48}, {64, 1, 1, 256}), outs);
  EXPECT_NE(odd.find("multiples of 64"), std::string::npos) << odd;
  const std::string k3 = check_of("kiln.FusedConvPair", junction(h, {256, 3, 3, 64}, {64, 1, 1, 256}), outs);
  EXPECT_NE(k3.find("[C1, 1, 1, C0]"), std::string::npos) << k3;
  const std::string act =
      check_of("kiln.FusedConvPair", junction(h, {256, 1, 1, 64}, {64, 1, 1, 256}), outs, {{"activation", string_attr("Sigmoid")}});
  EXPECT_NE(act.find("Sigmoid"), std::string::npos) << act;
  const std::string one_out = check_of("kiln.FusedConvPair", junction(h, {256, 1, 1, 64}, {64, 1, 1, 256}), {outs[0]});
  EXPECT_NE(one_out.find("two outputs"), std::string::npos) << one_out;
}

// ---------------------------------------------------------------------------------------------------------
// ResNet-50's layer1.1 -> layer1.2 junction at batch 256 (X [256, 56, 56, 64], W [256, 1, 1, 64], Z, W2
// [64, 1, 1, 256], float16): the pair's time against the two kiln.FusedConv layers it replaces (each at the
// best of its tactics), median of 20 runs after 5, printed. KILN_BENCH=1 only.
TEST(CudaConvPairBench, ResNetLayer1JunctionBatch256) {
  KILN_SKIP_UNLESS_BENCH();
  KILN_SKIP_WITHOUT_GPU();
  const auto h = DType::kFloat16;
  const cuda::CudaHandles& handles = detail::test_handles();
  for (const auto& [c0, c2] : std::vector<std::pair<int64_t, int64_t>>{{64, 64}, {128, 64}, {64, 128}}) {
    const bool z = c0 == 64;
    const Shape xs = {256, 56, 56, c0}, ws = {256, 1, 1, c0}, ys = {256, 56, 56, 256}, w2s = {c2, 1, 1, 256},
                y2s = {256, 56, 56, c2};
    detail::DeviceMem x(shape_numel(xs) * 2), w(shape_numel(ws) * 2), b(256 * 2), zm(shape_numel(ys) * 2),
        w2(shape_numel(w2s) * 2), b2(c2 * 2), y(shape_numel(ys) * 2), y2(shape_numel(y2s) * 2);
    // The values do not matter for the time: bytes 0x3C make every element about 1.05 (float16 0x3C3C).
    const std::vector<std::pair<void*, int64_t>> filled = {{x.p, shape_numel(xs)}, {w.p, shape_numel(ws)}, {b.p, 256},
                                                           {zm.p, shape_numel(ys)}, {w2.p, shape_numel(w2s)}, {b2.p, c2}};
    for (const auto& [p, n] : filled) ASSERT_EQ(cudaMemset(p, 0x3C, n * 2), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const cuda::TensorDesc none;
    // The pair.
    ir::Node pair_node;
    pair_node.name = "pair";
    pair_node.domain = "kiln";
    pair_node.op_type = "FusedConvPair";
    pair_node.attributes = {{"activation", string_attr("Relu")}, {"second_activation", string_attr("Relu")}};
    cuda::LayerSpec ps;
    ps.node = &pair_node;
    ps.opset = 1;
    ps.inputs = {desc(h, xs), desc(h, ws), desc(h, {256}), z ? desc(h, ys) : none, desc(h, w2s), desc(h, {c2})};
    ps.outputs = {desc(h, ys), desc(h, y2s)};
    const cuda::LayerKind* pair_kind = cuda::layer_table().find("kiln.FusedConvPair");
    ASSERT_NE(pair_kind, nullptr);
    ASSERT_EQ(pair_kind->check(ps), "");
    auto pair = pair_kind->create(ps, "cuda.conv.pair", handles);
    ASSERT_TRUE(pair.ok()) << pair.status().to_string();
    double pair_ms = 0;
    ASSERT_NO_FATAL_FAILURE(time_created_layer_ms(**pair, {{x.p, h, xs}, {w.p, h, ws}, {b.p, h, {256}},
                                                            {z ? zm.p : nullptr, z ? h : DType::kUndefined, z ? ys : Shape{}},
                                                            {w2.p, h, w2s}, {b2.p, h, {c2}}},
                                                  {{y.p, h, ys}, {y2.p, h, y2s}}, handles, &pair_ms));
    // The two FusedConv layers, each at its best tactic.
    const cuda::LayerKind* conv_kind = cuda::layer_table().find("kiln.FusedConv");
    double apart_ms = 0;
    for (int which = 0; which < 2; ++which) {
      ir::Node node;
      node.name = which == 0 ? "conv3" : "conv1";
      node.domain = "kiln";
      node.op_type = "FusedConv";
      node.attributes = {{"channels_last", int_attr(1)}, {"activation", string_attr("Relu")}};
      cuda::LayerSpec s;
      s.node = &node;
      s.opset = 1;
      if (which == 0) s.inputs = {desc(h, xs), desc(h, ws), desc(h, {256}), z ? desc(h, ys) : none};
      else s.inputs = {desc(h, ys), desc(h, w2s), desc(h, {c2})};
      s.outputs = {desc(h, which == 0 ? ys : y2s)};
      std::vector<cuda::DeviceTensor> ins;
      if (which == 0) ins = {{x.p, h, xs}, {w.p, h, ws}, {b.p, h, {256}}, {z ? zm.p : nullptr, z ? h : DType::kUndefined, z ? ys : Shape{}}};
      else ins = {{y.p, h, ys}, {w2.p, h, w2s}, {b2.p, h, {c2}}};
      const std::vector<cuda::DeviceTensor> outs = {which == 0 ? cuda::DeviceTensor{y.p, h, ys} : cuda::DeviceTensor{y2.p, h, y2s}};
      std::vector<std::pair<std::string, double>> times;
      ASSERT_NO_FATAL_FAILURE(time_every_tactic_ms(*conv_kind, s, ins, outs, handles, &times));
      double best = 1e30;
      for (const auto& [tactic, ms] : times) best = std::min(best, ms);
      apart_ms += best;
    }
    const double bytes = 2.0 * (shape_numel(xs) + (z ? shape_numel(ys) : 0) + shape_numel(ys) + shape_numel(y2s));
    std::printf("  ResNet-50 layer1 junction C0 %lld -> 256 -> %lld%s, batch 256, float16: pair %.3f ms (%.2f TB/s), "
                "two FusedConv %.3f ms, ratio %.3f\n",
                static_cast<long long>(c0), static_cast<long long>(c2), z ? " +Z" : "", pair_ms, bytes / pair_ms / 1e9,
                apart_ms, pair_ms / apart_ms);
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
