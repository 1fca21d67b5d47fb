// Kiln's Hopper GEMM (src/backends/cuda/gemm_sm90.cu, tactic "cuda.gemm.sm90") against the CPU
// reference on fresh random inputs: MatMul and kiln.FusedMatMul with every epilogue (bias, ReLU, both GELU
// forms, the residual Z), float16 and bfloat16, at sizes that are not multiples of the tile (TMA's zero fill,
// the epilogue's bounds) and at BERT's. Large products, where each block loops over many tiles and the
// stage ring wraps many times, are compared with cuBLASLt's result instead (the CPU reference would take
// minutes). The tests skip off compute capability 9.0, where the tactics are not offered.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backends/cuda/gemm_sm90.h"
#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"
#include "cuda_layer_harness.h"
#include "cuda_skip.h"

namespace kiln::testing {
namespace {

const char* kTactics[] = {"cuda.gemm.sm90"};

#define KILN_SKIP_WITHOUT_SM90()                                                           \
  do {                                                                                     \
    KILN_SKIP_WITHOUT_GPU();                                                               \
    if (!cuda::sm90_gemm_available()) GTEST_SKIP() << "the sm90 GEMM needs compute capability 9.0"; \
  } while (0)

LayerCase gemm_case(const Shape& a, const Shape& b, const std::string& activation, DType t, bool residual) {
  LayerCase c;
  if (activation == "none") {  // a plain MatMul
    c.op = "MatMul";
    c.opset = 13;
    c.inputs = {random_float(a), random_float(b)};
    c.constant_inputs = {1};
  } else {
    c.op = "FusedMatMul";
    c.domain = "kiln";
    c.opset = 1;
    c.inputs = {random_float(a), random_float(b), random_float({b.back()})};
    c.constant_inputs = {1, 2};
    c.attrs["activation"] = string_attr(activation);
    if (residual) {
      Shape y = a;
      y.back() = b.back();
      c.inputs.push_back(random_float(y));
    }
  }
  c.precision = t;
  c.rtol = 1e-2;
  c.atol = 1e-2;
  return c;
}

void expect_sm90_matches(const LayerCase& c) {
  for (const char* tactic : kTactics) {
    SCOPED_TRACE(tactic);
    LayerCase one = c;
    one.only_tactic = tactic;
    expect_layer_matches_reference(one);
  }
}

TEST(CudaGemmSm90, OddSizesEveryEpilogueAndType) {
  KILN_SKIP_WITHOUT_SM90();
  // M, N and K that are not multiples of the tile (128 x 256 or 128 x 128, k-steps of 64); a K of 8.
  const std::vector<std::pair<Shape, Shape>> shapes{{{300, 200}, {200, 264}}, {{2, 65, 8}, {8, 136}}, {{1, 24}, {24, 8}}};
  for (const auto& [a, b] : shapes)
    for (DType t : {DType::kFloat16, DType::kBFloat16})
      for (const char* act : {"none", "", "Relu", "GeluTanh", "Gelu"})
        for (bool residual : {false, true}) {
          if (residual && std::string(act) == "none") continue;
          SCOPED_TRACE(shape_to_string(a) + " x " + shape_to_string(b) + " '" + act + "' " + dtype_name(t) +
                       (residual ? " + Z" : ""));
          expect_sm90_matches(gemm_case(a, b, act, t, residual));
        }
}

TEST(CudaGemmSm90, BertShapes) {
  KILN_SKIP_WITHOUT_SM90();
  struct Case {
    Shape a, b;
    const char* act;
    bool residual;
  };
  const Case cases[] = {
      {{2, 128, 768}, {768, 2304}, "", false},       // fused QKV projection
      {{2, 128, 768}, {768, 768}, "", true},         // attention output + residual
      {{2, 128, 768}, {768, 3072}, "Gelu", false},   // intermediate + GELU
      {{2, 128, 3072}, {3072, 768}, "", true},       // output + residual
  };
  for (const Case& k : cases)
    for (DType t : {DType::kFloat16, DType::kBFloat16}) {
      SCOPED_TRACE(shape_to_string(k.a) + " x " + shape_to_string(k.b) + " " + dtype_name(t));
      expect_sm90_matches(gemm_case(k.a, k.b, k.act, t, k.residual));
    }
}

// Many tiles a block (the persistent loop, the ring's phases wrapping): the same inputs through cuBLASLt and
// through each sm90 tactic agree to float16's rounding of the output.
TEST(CudaGemmSm90, ManyTilesAgreeWithCublasLt) {
  KILN_SKIP_WITHOUT_SM90();
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    LayerCase c = gemm_case({4096, 768}, {768, 3072}, "GeluTanh", t, true);
    std::vector<Value> ins;
    for (const Value& v : c.inputs) ins.emplace_back(cast_tensor(v.tensor(), t).value());
    const std::vector<Tensor> shape_of{Tensor(DType::kFloat32, {4096, 3072})};
    auto want = run_cuda_layer(c, ins, shape_of, "cuda.cublaslt.h0");
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    for (const char* tactic : kTactics) {
      auto got = run_cuda_layer(c, ins, shape_of, tactic);
      ASSERT_TRUE(got.ok()) << tactic << ": " << got.status().to_string();
      detail::compare((*got)[0], (*want)[0], 1e-2, 2e-2, std::string(tactic) + " against cuBLASLt");
    }
  }
}

// Problems the kernel does not take are not offered, and create() refuses them with the reason.
TEST(CudaGemmSm90, RefusesWhatItDoesNotRun) {
  KILN_SKIP_WITHOUT_SM90();
  struct Case {
    const char* why;
    DType t;
    Shape a, b;
  };
  const Case cases[] = {
      {"float16 and bfloat16 only", DType::kFloat32, {64, 64}, {64, 64}},
      {"K to be a multiple of 8", DType::kFloat16, {64, 36}, {36, 64}},
      {"N to be a multiple of 8", DType::kFloat16, {64, 64}, {64, 36}},
      {"one [K, N] matrix B", DType::kFloat16, {2, 64, 64}, {2, 64, 64}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.why);
    LayerCase c = gemm_case(k.a, k.b, "", DType::kFloat32, false);
    std::vector<Value> ins;
    for (const Value& v : c.inputs) ins.emplace_back(k.t == DType::kFloat32 ? v.tensor() : cast_tensor(v.tensor(), k.t).value());
    c.precision = k.t;
    Shape y = k.a;
    y.back() = k.b.back();
    ir::Node node;
    const cuda::LayerSpec spec = detail::case_spec(c, ins, {Tensor(DType::kFloat32, y)}, &node);
    EXPECT_TRUE(cuda::sm90_gemm_tactics(spec).empty());
    auto layer = cuda::create_sm90_gemm_layer(spec, cuda::MatmulEpilogue::kBias, kTactics[0], detail::test_handles());
    ASSERT_FALSE(layer.ok());
    EXPECT_NE(layer.status().message().find(k.why), std::string::npos) << layer.status().to_string();
  }
}

// The builder times the kernel only where the product has a 128 x 128 tile for every SM: BERT's GEMMs at batch
// 128 (M = 16384), not at batch 1 (M = 128), where cuBLASLt's split-K algorithms spread the weights' reads.
TEST(CudaGemmSm90, OfferedOnlyWithATilePerSm) {
  KILN_SKIP_WITHOUT_SM90();
  for (const auto& [m, offered] : std::vector<std::pair<int64_t, bool>>{{128, false}, {16384, true}}) {
    ir::Node node;
    node.op_type = "FusedMatMul";
    node.domain = "kiln";
    node.name = "qkv";
    cuda::LayerSpec spec;
    spec.node = &node;
    spec.opset = 1;
    spec.inputs = {desc(DType::kFloat16, {m, 768}), desc(DType::kFloat16, {768, 2304}), desc(DType::kFloat16, {2304})};
    spec.outputs = {desc(DType::kFloat16, {m, 2304})};
    EXPECT_EQ(cuda::sm90_gemm_tactics(spec).size(), offered ? 1u : 0u) << "M = " << m;
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
