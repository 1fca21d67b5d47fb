// The CUDA layers of kiln.FusedMatMul (cuBLASLt with the bias / bias+ReLU / bias+GELU epilogue) and kiln.Gelu
// (src/backends/cuda/fused_matmul.cc) against their CPU references, at BERT-base's shapes: [B*128, 768] x
// [768, 3072] and back, batched [2, 128, 768] activations, in float32, TF32, float16 and bfloat16, every
// activation, every tactic cuBLASLt's heuristic offers; the residual Z (cuBLASLt's C) in the fast plan, the
// fallback plan (misaligned operands) and in place. The check() tests need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"
#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

struct Precision {
  DType dtype;
  bool tf32;
};
const Precision kPrecisions[] = {
    {DType::kFloat32, false}, {DType::kFloat32, true}, {DType::kFloat16, false}, {DType::kBFloat16, false}};

// Tolerances as tests/cuda_matmul_test.cc argues them: float32 error grows with K (summation order), TF32
// rounds inputs to 10 mantissa bits (~2^-11 sqrt(K) per output), half types round the output once.
void set_tolerance(LayerCase& c, int64_t K) {
  const double k = static_cast<double>(K);
  if (c.precision != DType::kFloat32) {
    c.rtol = 1e-2;
    c.atol = 1e-2;
  } else if (c.allow_tf32) {
    c.rtol = 1e-3;
    c.atol = 5e-4 * std::sqrt(k) + 1e-3;
  } else {
    c.rtol = 1e-5;
    c.atol = 1e-6 * std::max(1.0, k / 8.0);
  }
}

LayerCase fused_case(const Shape& a, const Shape& b, const std::string& activation, Precision p) {
  LayerCase c;
  c.op = "FusedMatMul";
  c.domain = "kiln";
  c.opset = 1;
  c.inputs = {random_float(a), random_float(b), random_float({b.back()})};
  c.constant_inputs = {1, 2};  // weights and bias are initializers in a real graph
  c.attrs["activation"] = string_attr(activation);
  c.precision = p.dtype;
  c.allow_tf32 = p.tf32;
  set_tolerance(c, a.back());
  // cuBLASLt's GELU epilogue evaluates its tanh differently from the reference's tanhf: 3e-6 apart at
  // |y| ~ 0.1 in float32 (measured on the H100), more than K = 7 leaves room for.
  if (activation == "GeluTanh" && p.dtype == DType::kFloat32 && !p.tf32) c.atol = std::max(c.atol, 2e-5);
  return c;
}

// Every tactic that cuBLASLt offers for the problem (h0 always; fewer than four is not an error).
void expect_fused_matches(const LayerCase& c) {
  for (const std::string& tactic : cuda::matmul_tactics()) {
    LayerCase one = c;
    one.only_tactic = tactic;
    if (tactic != "cuda.cublaslt.h0") {
      std::vector<Value> ins;
      for (const Value& v : c.inputs)
        ins.push_back(c.precision == DType::kFloat32 ? v : Value(cast_tensor(v.tensor(), c.precision).value()));
      // Only the output's shape matters to the probe: numpy matmul's, batch dims broadcast.
      const Shape& a = c.inputs[0].tensor().shape();
      const Shape& b = c.inputs[1].tensor().shape();
      Shape out(std::max(a.size(), b.size()) - 2, 1);
      for (const Shape* s : {&a, &b})
        for (size_t i = 0; i + 2 < s->size(); ++i) {
          int64_t& d = out[out.size() - (s->size() - 2) + i];
          d = std::max(d, (*s)[i]);
        }
      out.push_back(a[a.size() - 2]);
      out.push_back(b.back());
      auto probe = run_cuda_layer(c, ins, {Tensor(DType::kFloat32, out)}, tactic);
      if (!probe.ok() && probe.status().message().find("heuristic offers") != std::string::npos) continue;
    }
    SCOPED_TRACE(tactic);
    expect_layer_matches_reference(one);
  }
}

TEST(CudaFusedMatMul, BertShapesEveryActivationAndPrecision) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<Shape, Shape>> shapes{
      {{128, 768}, {768, 3072}},  // intermediate dense, batch 1
      {{256, 3072}, {3072, 768}},  // output dense, batch 2
      {{256, 768}, {768, 768}},    // attention projections
  };
  for (const auto& [a, b] : shapes)
    for (const char* act : {"", "Relu", "GeluTanh", "Gelu"})
      for (const Precision& p : kPrecisions) {
        if (std::string(act) == "Gelu" && p.dtype == DType::kFloat32) continue;  // exact GELU: half types only
        SCOPED_TRACE(shape_to_string(a) + " x " + shape_to_string(b) + " '" + act + "' " + dtype_name(p.dtype) +
                     (p.tf32 ? " tf32" : ""));
        expect_fused_matches(fused_case(a, b, act, p));
      }
}

TEST(CudaFusedMatMul, BatchedActivations) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* act : {"", "GeluTanh"})
    for (const Precision& p : kPrecisions) {
      SCOPED_TRACE(std::string(act) + " " + dtype_name(p.dtype) + (p.tf32 ? " tf32" : ""));
      expect_fused_matches(fused_case({2, 128, 768}, {768, 3072}, act, p));
    }
  // Batched weights too (broadcast over A's leading dim), and odd sizes the fast plan cannot align.
  for (const Precision& p : kPrecisions) {
    SCOPED_TRACE(dtype_name(p.dtype));
    expect_fused_matches(fused_case({3, 1, 17, 33}, {2, 33, 9}, "Relu", p));
    expect_fused_matches(fused_case({5, 7}, {7, 3}, "GeluTanh", p));
  }
}

// The residual Z: the output's shape, added with the bias before the activation, at BERT's attention-output
// and FFN-output shapes (rank 2, and rank 3 folded into one GEMM), and batched products (strided batches,
// and groups of them for a broadcast B) where Z must advance as the output does.
TEST(CudaFusedMatMul, ResidualEveryPrecisionRank2And3) {
  KILN_SKIP_WITHOUT_GPU();
  struct Shapes {
    Shape a, b, y;
  };
  const std::vector<Shapes> shapes{
      {{256, 768}, {768, 768}, {256, 768}},            // attention output dense, batch 2
      {{2, 128, 3072}, {3072, 768}, {2, 128, 768}},    // output dense, rank 3
      {{3, 17, 33}, {3, 33, 9}, {3, 17, 9}},           // strided batches, odd sizes
      {{3, 1, 17, 33}, {2, 33, 9}, {3, 2, 17, 9}},     // groups of strided batches
  };
  for (const Shapes& s : shapes)
    for (const char* act : {"", "Relu"})
      for (const Precision& p : kPrecisions) {
        SCOPED_TRACE(shape_to_string(s.a) + " x " + shape_to_string(s.b) + " + Z '" + act + "' " + dtype_name(p.dtype) +
                     (p.tf32 ? " tf32" : ""));
        LayerCase c = fused_case(s.a, s.b, act, p);
        c.inputs.push_back(random_float(s.y));
        expect_fused_matches(c);
      }
  for (const Precision& p : kPrecisions) {
    SCOPED_TRACE(std::string("GeluTanh ") + dtype_name(p.dtype) + (p.tf32 ? " tf32" : ""));
    LayerCase c = fused_case({2, 128, 768}, {768, 768}, "GeluTanh", p);
    c.inputs.push_back(random_float({2, 128, 768}));
    expect_fused_matches(c);
  }
}

// The residual where the harness's aligned, separate buffers do not take it: every operand one element past
// a 256-byte boundary (the fallback plan: Z and the bias through the prefill kernel), and Z in the output's
// own buffer (cuBLASLt's in-place form, C == D).
TEST(CudaFusedMatMul, ResidualMisalignedAndInPlace) {
  KILN_SKIP_WITHOUT_GPU();
  const cuda::LayerKind* kind = cuda::layer_table().find("kiln.FusedMatMul");
  ASSERT_NE(kind, nullptr);
  const cuda::CudaHandles& h = detail::test_handles();
  struct Shapes {
    Shape a, b, y;
  };
  const std::vector<Shapes> shapes{{{17, 33}, {33, 9}, {17, 9}},
                                   {{2, 3, 17, 32}, {32, 16}, {2, 3, 17, 16}},
                                   {{3, 16, 33}, {3, 33, 9}, {3, 16, 9}}};
  for (const Shapes& s : shapes)
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
      for (const char* act : {"", "Relu"})
        for (const auto& [misalign, in_place] : std::vector<std::pair<bool, bool>>{{true, false}, {false, true}, {true, true}})
        for (const std::string tactic : {"cuda.cublaslt.h0", "cuda.gemm.sm90"}) {
          SCOPED_TRACE(shape_to_string(s.a) + " x " + shape_to_string(s.b) + " '" + act + "' " + dtype_name(t) +
                       (misalign ? " misaligned" : "") + (in_place ? " in place" : "") + " " + tactic);
          LayerCase c = fused_case(s.a, s.b, act, Precision{t, false});
          c.inputs.push_back(random_float(s.y));
          std::vector<Value> cuda_inputs, ref_inputs;
          for (const Value& v : c.inputs) {
            const Tensor low = t == DType::kFloat32 ? v.tensor() : cast_tensor(v.tensor(), t).value();
            cuda_inputs.emplace_back(low);
            ref_inputs.emplace_back(widen_to_float32(low));
          }
          OpRun ref = run_kernel("kiln", "FusedMatMul", ref_inputs, c.attrs, 1, 1, "reference");
          ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
          const Tensor want = ref.outputs[0].tensor();
          ASSERT_EQ(want.shape(), s.y);

          ir::Node node;
          const cuda::LayerSpec spec = detail::case_spec(c, cuda_inputs, {want}, &node);
          ASSERT_EQ(kind->check(spec), "");
          // Kiln's Hopper GEMM where it takes the problem: a misaligned operand goes to its cuBLASLt fallback.
          auto layer = kind->create(spec, tactic, h);
          if (tactic != "cuda.cublaslt.h0" && !layer.ok() && layer.status().code() == StatusCode::kUnsupported) continue;
          ASSERT_TRUE(layer.ok()) << layer.status().to_string();
          const size_t shift = misalign ? dtype_size(t) : 0;
          std::vector<std::unique_ptr<detail::DeviceMem>> mem;
          std::vector<cuda::DeviceTensor> ins;
          for (const Value& v : cuda_inputs) {
            const Tensor& host = v.tensor();
            mem.push_back(std::make_unique<detail::DeviceMem>(host.nbytes() + 256));
            char* ptr = static_cast<char*>(mem.back()->p) + shift;
            ASSERT_EQ(cudaMemcpy(ptr, host.raw_data(), host.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
            ins.push_back(cuda::DeviceTensor{ptr, host.dtype(), host.shape()});
          }
          const size_t out_bytes = static_cast<size_t>(want.numel()) * dtype_size(t);
          void* y = ins[3].data;  // in place: the output overwrites Z
          if (!in_place) {
            mem.push_back(std::make_unique<detail::DeviceMem>(out_bytes + 256));
            y = static_cast<char*>(mem.back()->p) + shift;
            ASSERT_EQ(cudaMemset(y, 0xFF, out_bytes), cudaSuccess);
          }
          const std::vector<cuda::DeviceTensor> outs{cuda::DeviceTensor{y, t, want.shape()}};
          std::unique_ptr<detail::DeviceMem> ws;
          if ((*layer)->workspace_bytes() > 0) ws = std::make_unique<detail::DeviceMem>((*layer)->workspace_bytes());
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the copies ran on the legacy stream
          const Status st = (*layer)->run(ins, outs, ws ? ws->p : nullptr, h);
          ASSERT_TRUE(st.ok()) << st.to_string();
          ASSERT_EQ(cudaStreamSynchronize(h.stream), cudaSuccess);
          Tensor got(t, want.shape());
          ASSERT_EQ(cudaMemcpy(got.raw_data(), y, out_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
          detail::compare(got, want, c.rtol, c.atol, "FusedMatMul with Z");
        }
}

TEST(CudaKilnGelu, MatchesReferenceBothForms) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* form : {"none", "tanh"})
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      SCOPED_TRACE(std::string(form) + " " + dtype_name(t));
      LayerCase c;
      c.op = "Gelu";
      c.domain = "kiln";
      c.opset = 1;
      c.inputs = {random_float({256, 3072}, 0.1f, 4.0f)};
      c.attrs["approximate"] = string_attr(form);
      c.precision = t;
      if (t == DType::kFloat32) {
        c.rtol = 1e-5;
        c.atol = 1e-5;
      }
      expect_layer_matches_reference(c);
    }
}

// ---------------------------------------------------------------------------------------------------------
// check(): no GPU needed.

struct Spec {
  ir::Node node;
  cuda::LayerSpec spec;
  Spec(const std::string& op, const std::vector<std::pair<DType, Shape>>& inputs, const std::string& activation = "") {
    node.op_type = op;
    node.domain = "kiln";
    node.name = "fused";
    node.attributes["activation"] = string_attr(activation);
    spec.node = &node;
    spec.opset = 1;
    for (const auto& [dtype, shape] : inputs) {
      cuda::TensorDesc d;
      d.dtype = dtype;
      d.has_rank = dtype != DType::kUndefined;
      d.shape = shape;
      spec.inputs.push_back(d);
    }
    cuda::TensorDesc o;
    o.dtype = inputs.empty() ? DType::kUndefined : inputs[0].first;
    spec.outputs.push_back(o);
  }
  std::string check() const { return cuda::layer_table().find_for(node)->check(spec); }
};

void expect_refused(const std::string& why, const std::string& part) {
  EXPECT_NE(why, "");
  EXPECT_NE(why.find(part), std::string::npos) << why;
}

TEST(CudaFusedMatMulCheck, RegisteredUnderTheKilnDomain) {
  ir::Node n;
  n.op_type = "FusedMatMul";
  n.domain = "kiln";
  const cuda::LayerKind* k = cuda::layer_table().find_for(n);
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->op_type, "kiln.FusedMatMul");
  EXPECT_TRUE(k->lowers_to_fp16);
  Spec s("FusedMatMul", {{DType::kFloat16, {4, 8}}, {DType::kFloat16, {8, 16}}, {DType::kFloat16, {16}}});
  ASSERT_TRUE(k->tactics);
  const std::vector<std::string> tactics = k->tactics(s.spec);  // cuBLASLt's, then (sm90) Kiln's GEMM's
  ASSERT_GE(tactics.size(), cuda::matmul_tactics().size());
  EXPECT_EQ(std::vector<std::string>(tactics.begin(), tactics.begin() + cuda::matmul_tactics().size()),
            cuda::matmul_tactics());
  n.op_type = "Gelu";
  const cuda::LayerKind* g = cuda::layer_table().find_for(n);
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->op_type, "kiln.Gelu");
  EXPECT_TRUE(g->lowers_to_fp16);
}

TEST(CudaFusedMatMulCheck, AcceptsEachActivationAndFloatType) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (const char* act : {"", "Relu", "GeluTanh"})
      EXPECT_EQ(Spec("FusedMatMul", {{t, {2, 128, 768}}, {t, {768, 3072}}, {t, {3072}}}, act).check(), "") << act;
  Spec unknown("FusedMatMul", {{DType::kFloat16, {-1, 768}}, {DType::kFloat16, {768, 3072}}, {DType::kFloat16, {3072}}});
  EXPECT_EQ(unknown.check(), "");
}

TEST(CudaFusedMatMulCheck, Refusals) {
  const DType f = DType::kFloat16;
  expect_refused(Spec("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}, {f, {16}}}, "Elu").check(), "activation 'Elu'");
  // The exact GELU rides cuBLASLt's tanh-form epilogue, which is within half precision only.
  expect_refused(Spec("FusedMatMul", {{DType::kFloat32, {4, 8}}, {DType::kFloat32, {8, 16}}, {DType::kFloat32, {16}}}, "Gelu").check(),
                 "runs in float16 / bfloat16 only");
  for (DType t : {DType::kFloat16, DType::kBFloat16})
    EXPECT_EQ(Spec("FusedMatMul", {{t, {4, 8}}, {t, {8, 16}}, {t, {16}}}, "Gelu").check(), "") << dtype_name(t);
  expect_refused(Spec("FusedMatMul", {{f, {4, 8}}, {f, {8}}, {f, {1}}}).check(), "B must have rank >= 2");
  expect_refused(Spec("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}, {f, {1, 16}}}).check(), "bias must be 1-D");
  expect_refused(Spec("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}}).check(), "needs a bias input");
  expect_refused(Spec("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}, {DType::kFloat32, {16}}}).check(), "bias dtype");
  expect_refused(Spec("FusedMatMul", {{DType::kInt32, {4, 8}}, {DType::kInt32, {8, 16}}, {DType::kInt32, {16}}}).check(),
                 "is not supported");
  // The residual Z: A's dtype, the output's shape (no broadcasting), and nothing after it.
  Spec z_type("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}, {f, {16}}, {DType::kFloat32, {4, 16}}});
  expect_refused(z_type.check(), "Z's dtype float32");
  Spec z_shape("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}, {f, {16}}, {f, {1, 16}}});
  z_shape.spec.outputs[0].has_rank = true;
  z_shape.spec.outputs[0].shape = {4, 16};
  expect_refused(z_shape.check(), "must have the output's shape");
  z_shape.spec.inputs[3].shape = {16};
  expect_refused(z_shape.check(), "must have the output's shape");
  expect_refused(Spec("FusedMatMul", {{f, {4, 8}}, {f, {8, 16}}, {f, {16}}, {f, {4, 16}}, {f, {4, 16}}}).check(),
                 "too many inputs");
}

TEST(CudaFusedMatMulCheck, AcceptsAResidual) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    Spec s("FusedMatMul", {{t, {2, 128, 768}}, {t, {768, 768}}, {t, {768}}, {t, {2, 128, 768}}}, "Relu");
    EXPECT_EQ(s.check(), "") << dtype_name(t);
    s.spec.outputs[0].has_rank = true;
    s.spec.outputs[0].shape = {-1, 128, 768};  // a dim not known yet is no mismatch
    EXPECT_EQ(s.check(), "") << dtype_name(t);
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
