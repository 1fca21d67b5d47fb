// The CUDA layer of kiln.FusedAttention (src/backends/cuda/attention.cu) against its CPU reference: the
// tensor-core kernels (tactics cuda.flash.br16 .. br128 on mma.sync; cuda.flash.wgmma.pipe, .pipe.staggered,
// cuda.flash.wgmma and its lockstep schedule on Hopper's wgmma in attention_hopper.cu, which need an H100 /
// H200; float16 and bfloat16, head dims 64 and 128) and the
// one-warp-a-row kernel (cuda.attention.rows; every float type, head dims up to 256), on BERT-base's shapes
// (BSHD, a [B, 1, S, S] padding mask with a fully masked row), sequence lengths that are not multiples of the
// 64-key tile, Sq != Sk, causal masking, a key-padding mask [B, 1, 1, Sk], and both nan_to_zero settings.
// The check() cases need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/layer.h"
#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const char* const kWgmmaTactic = "cuda.flash.wgmma.pipe";  // the one tried first
const char* const kWgmmaTactics[] = {kWgmmaTactic, "cuda.flash.wgmma.pipe.staggered", "cuda.flash.wgmma",
                                     "cuda.flash.wgmma.lockstep"};
const char* const kFlashTactics[] = {kWgmmaTactic, "cuda.flash.wgmma.pipe.staggered", "cuda.flash.wgmma",
                                     "cuda.flash.wgmma.lockstep", "cuda.flash.br128", "cuda.flash.br64",
                                     "cuda.flash.br32", "cuda.flash.br16"};

// 0 where attended, -inf where not (about a fifth), and the first row of the mask's last two dims wholly -inf
// when `full_row`.
Tensor attention_mask(const Shape& shape, bool full_row) {
  std::bernoulli_distribution masked(0.2);
  Tensor t(DType::kFloat32, shape);
  const int64_t row = shape.back();
  const int64_t plane = shape.size() >= 2 ? shape[shape.size() - 2] * row : row;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const bool first_row = shape.size() >= 2 && i % plane < row;
    t.data<float>()[i] = (full_row && first_row) || masked(cuda_test_rng()) ? -std::numeric_limits<float>::infinity() : 0.0f;
  }
  return t;
}

struct AttentionCase {
  int64_t B = 2, H = 4, Sq = 128, Sk = 128, D = 64;
  bool bshd = false;
  const Shape* mask = nullptr;  // nullptr: no mask
  bool full_row = false;
  int causal = 0, nan_to_zero = 1;
};

Shape operand(const AttentionCase& a, int64_t seq) {
  return a.bshd ? Shape{a.B, seq, a.H, a.D} : Shape{a.B, a.H, seq, a.D};
}

LayerCase layer_case(const AttentionCase& a, DType precision, const std::string& tactic) {
  LayerCase c;
  c.op = "FusedAttention";
  c.domain = "kiln";
  c.opset = 1;
  c.inputs = {random_float(operand(a, a.Sq), 0.1f, 1.0f), random_float(operand(a, a.Sk), 0.1f, 1.0f),
              random_float(operand(a, a.Sk), 0.1f, 1.0f)};
  if (a.mask) c.inputs.push_back(attention_mask(*a.mask, a.full_row));
  c.attrs["layout"] = string_attr(a.bshd ? "BSHD" : "BHSD");
  c.attrs["scale"] = float_attr_of(1.0f / std::sqrt(static_cast<float>(a.D)) * 2.0f);  // peakier than usual
  c.attrs["causal"] = int_attr(a.causal);
  c.attrs["nan_to_zero"] = int_attr(a.nan_to_zero);
  c.precision = precision;
  c.only_tactic = tactic;
  return c;
}

std::string trace(const AttentionCase& a, DType p, const std::string& tactic) {
  return "B" + std::to_string(a.B) + " H" + std::to_string(a.H) + " Sq" + std::to_string(a.Sq) + " Sk" +
         std::to_string(a.Sk) + " D" + std::to_string(a.D) + (a.bshd ? " BSHD" : " BHSD") + " mask " +
         (a.mask ? shape_to_string(*a.mask) : "none") + " causal " + std::to_string(a.causal) + " nan_to_zero " +
         std::to_string(a.nan_to_zero) + " " + dtype_name(p) + " " + tactic;
}

// Every tactic that runs the case's dtype and head dim.
void expect_all_tactics(const AttentionCase& a) {
  for (DType p : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<std::string> tactics = {"cuda.attention.rows"};
    if (p != DType::kFloat32 && (a.D == 64 || a.D == 128)) tactics.insert(tactics.end(), std::begin(kFlashTactics), std::end(kFlashTactics));
    for (const std::string& t : tactics) {
      SCOPED_TRACE(trace(a, p, t));
      expect_layer_matches_reference(layer_case(a, p, t));
    }
  }
}

TEST(CudaFusedAttention, BertBaseShapesWithPaddingMask) {
  KILN_SKIP_WITHOUT_GPU();
  const Shape mask{2, 1, 128, 128};
  AttentionCase a;
  a.H = 12;
  a.bshd = true;
  a.mask = &mask;
  a.full_row = true;
  expect_all_tactics(a);
}

TEST(CudaFusedAttention, HeadDim128RaggedLengthsCausal) {
  KILN_SKIP_WITHOUT_GPU();
  for (int causal : {0, 1}) {
    AttentionCase a;
    a.D = 128;
    a.Sq = 77;
    a.Sk = 200;
    a.causal = causal;
    expect_all_tactics(a);
    a.Sq = a.Sk = 300;
    a.bshd = true;
    expect_all_tactics(a);
  }
}

TEST(CudaFusedAttention, KeyPaddingMaskAndFullyMaskedRows) {
  KILN_SKIP_WITHOUT_GPU();
  const Shape key_padding{2, 1, 1, 96};
  const Shape per_head{4, 96, 96};  // broadcast over the batch
  for (const Shape* m : {&key_padding, &per_head})
    for (int nz : {0, 1}) {
      AttentionCase a;
      a.Sq = a.Sk = 96;
      a.mask = m;
      a.full_row = true;
      a.nan_to_zero = nz;
      expect_all_tactics(a);
    }
}

TEST(CudaFusedAttention, OtherHeadDimsRunOnTheRowKernel) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t d : {16, 80, 256}) {
    AttentionCase a;
    a.D = d;
    a.Sq = 33;
    a.Sk = 70;
    expect_all_tactics(a);
  }
}

TEST(CudaFusedAttention, LongSequence) {
  KILN_SKIP_WITHOUT_GPU();
  AttentionCase a;
  a.B = 1;
  a.H = 2;
  a.Sq = a.Sk = 1024;
  a.D = 128;
  a.causal = 1;
  for (DType p : {DType::kFloat16, DType::kBFloat16})
    for (const char* t : kFlashTactics) {
      SCOPED_TRACE(trace(a, p, t));
      expect_layer_matches_reference(layer_case(a, p, t));
    }
}

// The Hopper kernel alone (its four schedules), each of its pieces: both dtypes and head dims, both layouts,
// lengths that are not multiples of its 128-row and 128-key tiles (one tile, a ragged last tile, Sq > Sk and
// Sq < Sk), causal (the diagonal tile, tiles one warpgroup skips), a padding mask with a fully masked row under
// both nan_to_zero settings, B > 1 and H > 1.
void expect_wgmma(const AttentionCase& a, const std::vector<std::string>& tactics = {std::begin(kWgmmaTactics),
                                                                                     std::end(kWgmmaTactics)}) {
  for (DType p : {DType::kFloat16, DType::kBFloat16})
    for (const std::string& t : tactics) {
      SCOPED_TRACE(trace(a, p, t));
      expect_layer_matches_reference(layer_case(a, p, t));
    }
}

TEST(CudaFusedAttentionWgmma, RaggedLengthsBothLayoutsBothHeadDims) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t d : {64, 128})
    for (bool bshd : {false, true})
      for (auto [sq, sk] : {std::pair<int64_t, int64_t>{77, 200}, {200, 77}, {128, 128}, {1, 5}, {129, 257}}) {
        AttentionCase a;
        a.B = 2;
        a.H = 3;
        a.D = d;
        a.bshd = bshd;
        a.Sq = sq;
        a.Sk = sk;
        expect_wgmma(a);
      }
}

TEST(CudaFusedAttentionWgmma, Causal) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t d : {64, 128})
    for (auto [sq, sk] : {std::pair<int64_t, int64_t>{77, 200}, {300, 300}, {260, 130}, {64, 512}}) {
      AttentionCase a;
      a.B = 2;
      a.H = 2;
      a.D = d;
      a.Sq = sq;
      a.Sk = sk;
      a.causal = 1;
      a.bshd = d == 128;
      expect_wgmma(a);
    }
}

TEST(CudaFusedAttentionWgmma, PaddingMaskAndFullyMaskedRows) {
  KILN_SKIP_WITHOUT_GPU();
  const Shape padding{2, 1, 200, 200};  // per batch, broadcast over heads; row 0 of each batch wholly masked
  const Shape key_padding{2, 1, 1, 200};
  for (const Shape* m : {&padding, &key_padding})
    for (int64_t d : {64, 128})
      for (int nz : {0, 1})
        for (int causal : {0, 1}) {
          AttentionCase a;
          a.B = 2;
          a.H = 3;
          a.D = d;
          a.Sq = a.Sk = 200;
          a.bshd = true;
          a.mask = m;
          a.full_row = m == &padding;  // (a key-padding mask's only row would be wholly masked)
          a.nan_to_zero = nz;
          a.causal = causal;
          expect_wgmma(a);
        }
}

// Masks that are the same for every query row are staged per key tile in shared memory when their rows are
// whole 16-byte chunks (Sk % 8 == 0), per batch, per head or for all; a ragged Sk reads them from global memory.
TEST(CudaFusedAttentionWgmma, KeyMasksStagedAndNot) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t sk : {136, 77}) {
    const Shape per_batch{2, 1, 1, sk}, per_head{2, 3, 1, sk}, shared{sk};
    for (const Shape* m : {&per_batch, &per_head, &shared})
      for (int64_t d : {64, 128})
        for (int causal : {0, 1}) {
          AttentionCase a;
          a.B = 2;
          a.H = 3;
          a.D = d;
          a.Sq = 130;
          a.Sk = sk;
          a.mask = m;
          a.causal = causal;
          expect_wgmma(a);
        }
  }
}

// ".short" (one tile of keys, two blocks an SM; V loads while S = Q K^T and the softmax run) and ".stream"
// (the same, persistent, fed by TMA; a mask that is not a staged key mask runs ".short"): head dim 64 and
// up to 128 keys, both layouts, ragged lengths, causal, a staged key mask, a per-row mask with a wholly
// masked row under both nan_to_zero settings, and BERT's shape; then more (batch, head, query tile) items
// than an H100 runs blocks at once (600 of 264, and of 132 for ".stream", whose ring of four stages wraps),
// under a key mask and causally.
TEST(CudaFusedAttentionWgmma, ShortScheduleOneTileOfKeys) {
  KILN_SKIP_WITHOUT_GPU();
  auto expect_short = [](const AttentionCase& a) {
    expect_wgmma(a, {"cuda.flash.wgmma.short", "cuda.flash.wgmma.stream"});
  };
  for (bool bshd : {false, true})
    for (auto [sq, sk] : {std::pair<int64_t, int64_t>{128, 128}, {77, 100}, {200, 128}, {1, 5}})
      for (int causal : {0, 1}) {
        AttentionCase a;
        a.B = 2;
        a.H = 3;
        a.Sq = sq;
        a.Sk = sk;
        a.bshd = bshd;
        a.causal = causal;
        expect_short(a);
      }
  const Shape key_padding{3, 1, 1, 128}, per_row{3, 1, 96, 96};
  for (const Shape* m : {&key_padding, &per_row})
    for (int nz : {0, 1}) {
      AttentionCase a;
      a.B = 3;
      a.H = 12;
      a.Sq = a.Sk = m->back();
      a.bshd = true;
      a.mask = m;
      a.full_row = m == &per_row;
      a.nan_to_zero = nz;
      expect_short(a);
    }
  const Shape many_keys{25, 1, 1, 120};
  for (int causal : {0, 1}) {
    AttentionCase a;
    a.B = 25;
    a.H = 12;
    a.Sq = 200;  // two query tiles an item's (batch, head)
    a.Sk = 120;
    a.bshd = true;
    a.causal = causal;
    a.mask = causal ? nullptr : &many_keys;
    expect_short(a);
  }
}

TEST(CudaFusedAttentionWgmma, LongSequenceManyHeads) {
  KILN_SKIP_WITHOUT_GPU();
  for (int causal : {0, 1}) {
    AttentionCase a;
    a.B = 1;
    a.H = 2;
    a.Sq = a.Sk = 2048;
    a.D = 128;
    a.causal = causal;
    expect_wgmma(a);
  }
}

// check() needs no GPU.
std::string check_of(const std::vector<cuda::TensorDesc>& inputs, const std::map<std::string, ir::Attribute>& attrs) {
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedAttention");
  EXPECT_NE(kind, nullptr);
  if (kind == nullptr) return "no layer";
  ir::Node node;
  node.op_type = "FusedAttention";
  node.domain = "kiln";
  node.attributes = attrs;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.inputs = inputs;
  return kind->check(spec);
}

cuda::TensorDesc desc(DType t, const Shape& s) {
  cuda::TensorDesc d;
  d.dtype = t;
  d.has_rank = true;
  d.shape = s;
  return d;
}

// The wgmma tactics decline what they do not run (float32, head dims other than 64 and 128) at create.
TEST(CudaFusedAttentionWgmma, RefusesFloat32AndOtherHeadDims) {
  KILN_SKIP_WITHOUT_GPU();
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedAttention");
  ASSERT_NE(kind, nullptr);
  for (auto [t, d] : {std::pair<DType, int64_t>{DType::kFloat32, 64}, {DType::kFloat16, 80}, {DType::kBFloat16, 256}}) {
    ir::Node node;
    node.op_type = "FusedAttention";
    node.domain = "kiln";
    node.attributes = {{"scale", float_attr_of(0.125f)}};
    cuda::LayerSpec spec;
    spec.node = &node;
    spec.inputs = {desc(t, {1, 2, 16, d}), desc(t, {1, 2, 16, d}), desc(t, {1, 2, 16, d})};
    spec.outputs = {desc(t, {1, 2, 16, d})};
    for (const char* tactic : kWgmmaTactics) {
      auto layer = kind->create(spec, tactic, detail::test_handles());
      ASSERT_FALSE(layer.ok()) << tactic << " " << dtype_name(t) << " D" << d;
      EXPECT_EQ(layer.status().code(), StatusCode::kUnsupported);
    }
  }
}

// It declines more than one tile of keys and head dim 128 (over its registers) at create.
TEST(CudaFusedAttentionWgmma, ShortScheduleRefusesLongKeysAndHeadDim128) {
  KILN_SKIP_WITHOUT_GPU();
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedAttention");
  ASSERT_NE(kind, nullptr);
  for (auto [sk, d] : {std::pair<int64_t, int64_t>{129, 64}, {128, 128}}) {
    ir::Node node;
    node.op_type = "FusedAttention";
    node.domain = "kiln";
    node.attributes = {{"scale", float_attr_of(0.125f)}};
    cuda::LayerSpec spec;
    spec.node = &node;
    const DType t = DType::kFloat16;
    spec.inputs = {desc(t, {1, 2, 16, d}), desc(t, {1, 2, sk, d}), desc(t, {1, 2, sk, d})};
    spec.outputs = {desc(t, {1, 2, 16, d})};
    for (const char* tactic : {"cuda.flash.wgmma.short", "cuda.flash.wgmma.stream"}) {
      auto layer = kind->create(spec, tactic, detail::test_handles());
      ASSERT_FALSE(layer.ok()) << tactic << " Sk " << sk << " D" << d;
      EXPECT_EQ(layer.status().code(), StatusCode::kUnsupported);
      EXPECT_NE(layer.status().message().find("at most 128 keys"), std::string::npos) << layer.status().message();
    }
  }
}

TEST(CudaFusedAttention, WgmmaTacticIsTriedFirst) {
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedAttention");
  ASSERT_NE(kind, nullptr);
  ir::Node node;
  cuda::LayerSpec spec;
  spec.node = &node;
  const std::vector<std::string> tactics = kind->tactics(spec);
  ASSERT_FALSE(tactics.empty());
  EXPECT_EQ(tactics[0], kWgmmaTactic);
}

TEST(CudaFusedAttention, CheckRefusesWhatItCannotRun) {
  std::map<std::string, ir::Attribute> attrs = {{"scale", float_attr_of(0.125f)}};
  const auto h = DType::kFloat16;
  EXPECT_EQ(check_of({desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 9, 64}), desc(h, {2, 4, 9, 64})}, attrs), "");
  EXPECT_NE(check_of({desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 9, 64}), desc(h, {2, 4, 10, 64})}, attrs)
                .find("do not agree"), std::string::npos);
  EXPECT_NE(check_of({desc(h, {2, 4, 8, 512}), desc(h, {2, 4, 8, 512}), desc(h, {2, 4, 8, 512})}, attrs)
                .find("over 256"), std::string::npos);
  EXPECT_NE(check_of({desc(DType::kInt32, {2, 4, 8, 64}), desc(DType::kInt32, {2, 4, 8, 64}),
                      desc(DType::kInt32, {2, 4, 8, 64})}, attrs).find("not supported"), std::string::npos);
  EXPECT_NE(check_of({desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 8, 64}), desc(h, {3, 1, 8, 8})}, attrs)
                .find("does not broadcast"), std::string::npos);
  EXPECT_NE(check_of({desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 8, 64})}, {}).find("scale"),
            std::string::npos);
  attrs["layout"] = string_attr("SBHD");
  EXPECT_NE(check_of({desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 8, 64}), desc(h, {2, 4, 8, 64})}, attrs).find("layout"),
            std::string::npos);
}

// packed_qkv = 1 (pack_qkv_projections): Q, K and V read in place from one QKV [B, S, 3, H, D], each with
// sequence stride 3 H D and K and V H D and 2 H D elements into the row, under every tactic the layer lists
// (the tensor-core ones for float16 / bfloat16 and head dims 64 and 128), with a padding mask whose first row
// is fully masked; BERT-base's shape and a ragged length.
TEST(CudaFusedAttention, PackedQkvEveryTactic) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : {DType::kFloat16, DType::kBFloat16})
    for (int64_t d : {64, 128})
      for (auto [b, s, h] : {std::tuple<int64_t, int64_t, int64_t>{1, 128, 12}, {2, 200, 3}}) {
        SCOPED_TRACE("packed B" + std::to_string(b) + " S" + std::to_string(s) + " H" + std::to_string(h) + " D" +
                     std::to_string(d) + " " + dtype_name(p));
        LayerCase c;
        c.op = "FusedAttention";
        c.domain = "kiln";
        c.opset = 1;
        c.inputs = {random_float({b, s, 3, h, d}, 0.1f, 1.0f), attention_mask({b, 1, s, s}, /*full_row=*/true)};
        c.attrs["layout"] = string_attr("BSHD");
        c.attrs["packed_qkv"] = int_attr(1);
        c.attrs["scale"] = float_attr_of(2.0f / std::sqrt(static_cast<float>(d)));
        c.attrs["nan_to_zero"] = int_attr(1);
        c.precision = p;
        expect_layer_matches_reference(c);  // only_tactic "": the layer's whole list
      }
}

TEST(CudaFusedAttention, PackedQkvCheck) {
  const auto h = DType::kFloat16;
  std::map<std::string, ir::Attribute> attrs = {
      {"scale", float_attr_of(0.125f)}, {"layout", string_attr("BSHD")}, {"packed_qkv", int_attr(1)}};
  EXPECT_EQ(check_of({desc(h, {2, 8, 3, 4, 64})}, attrs), "");
  EXPECT_EQ(check_of({desc(h, {2, 8, 3, 4, 64}), desc(h, {2, 1, 1, 8})}, attrs), "");
  EXPECT_NE(check_of({desc(h, {2, 8, 3, 4, 64}), desc(h, {2, 1, 1, 9})}, attrs).find("does not broadcast"),
            std::string::npos);
  EXPECT_NE(check_of({desc(h, {2, 8, 4, 64})}, attrs).find("[B, S, 3, H, D]"), std::string::npos);
  EXPECT_NE(check_of({desc(h, {2, 8, 2, 4, 64})}, attrs).find("[B, S, 3, H, D]"), std::string::npos);
  EXPECT_NE(check_of({desc(h, {2, 8, 3, 4, 64}), desc(h, {2, 1, 1, 8}), desc(h, {2, 1, 1, 8})}, attrs)
                .find("packed_qkv"), std::string::npos);
  attrs["layout"] = string_attr("BHSD");
  EXPECT_NE(check_of({desc(h, {2, 8, 3, 4, 64})}, attrs).find("needs layout BSHD"), std::string::npos);
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
