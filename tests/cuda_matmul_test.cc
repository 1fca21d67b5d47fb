// The cuBLASLt MatMul and Gemm layers (src/backends/cuda/matmul.cc) against the CPU reference kernels:
// numpy-style batching and broadcasting, 1-D operands, every Gemm transpose, alpha/beta and C shape, the
// fused bias/ReLU/GELU epilogues, operands that are not 16-byte aligned (the fallback plan), in float32,
// TF32, float16 and bfloat16. Every tactic cuBLASLt's heuristic offers is run. The refusal tests need no GPU.
#ifdef KILN_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"
#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using cuda::MatmulEpilogue;

// Tolerances by precision and K. Inputs are uniform in [-1, 1] (magnitude >= 0.1), so a dot product of
// length K has partial sums around sqrt(K)/3 and its rounding error grows with K; cuBLASLt and the
// reference also sum in different orders. float32: ~K ulps of the partial sums in the worst case seen, so
// atol scales with K. TF32 rounds every input to 10 mantissa bits: error ~ 2^-11 * sqrt(K) per output.
// float16 / bfloat16 accumulate in float32 and round the output once: the default 1e-2 holds.
void set_tolerance(LayerCase& c, int64_t K) {
  const double k = static_cast<double>(K < 1 ? 1 : K);
  if (c.precision != DType::kFloat32) {
    c.rtol = 1e-2;
    c.atol = 1e-2;
  } else if (c.allow_tf32) {
    c.rtol = 1e-3;
    c.atol = 5e-4 * std::sqrt(k) + 1e-3;
  } else {
    c.rtol = 1e-5;
    c.atol = 1e-6 * (k / 8.0 < 1.0 ? 1.0 : k / 8.0);
  }
}

struct Precision {
  DType dtype;
  bool tf32;
};
const std::vector<Precision>& all_precisions() {
  static const std::vector<Precision> p{
      {DType::kFloat32, false}, {DType::kFloat32, true}, {DType::kFloat16, false}, {DType::kBFloat16, false}};
  return p;
}

// The case's inputs as the layer sees them (rounded to its precision) and as the reference sees them.
void round_inputs(const LayerCase& c, std::vector<Value>* cuda_inputs, std::vector<Value>* ref_inputs) {
  for (const Value& v : c.inputs) {
    if (v.is_none() || c.precision == DType::kFloat32) {
      cuda_inputs->push_back(v);
      ref_inputs->push_back(v);
      continue;
    }
    auto low = cast_tensor(v.tensor(), c.precision);
    ASSERT_TRUE(low.ok()) << low.status().to_string();
    cuda_inputs->emplace_back(*low);
    ref_inputs->emplace_back(widen_to_float32(*low));
  }
}

bool heuristic_short(const Status& s) {
  return s.code() == StatusCode::kUnsupported && s.message().find("heuristic offers") != std::string::npos;
}

// The harness runs every tactic the kind lists; cuBLASLt's heuristic may offer fewer than four algorithms for
// a small problem (then create() says so), so each tactic is tried first and run through the harness only
// when it exists. h0 must always exist.
void expect_matmul(LayerCase c, int64_t K) {
  set_tolerance(c, K);
  std::vector<Value> cuda_inputs, ref_inputs;
  round_inputs(c, &cuda_inputs, &ref_inputs);
  OpRun ref = run_kernel("", c.op, ref_inputs, c.attrs, 1, c.opset, "reference");
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  const std::vector<Tensor> want{ref.outputs[0].tensor()};
  for (const std::string& tactic : cuda::matmul_tactics()) {
    auto probe = run_cuda_layer(c, cuda_inputs, want, tactic);
    if (!probe.ok() && tactic != "cuda.cublaslt.h0" && heuristic_short(probe.status())) continue;
    ASSERT_TRUE(probe.ok()) << c.op << " " << tactic << ": " << probe.status().to_string();
    LayerCase one = c;
    one.only_tactic = tactic;
    expect_layer_matches_reference(one);
  }
}

void expect_matmul_all_precisions(const LayerCase& base, int64_t K) {
  for (const Precision& p : all_precisions()) {
    SCOPED_TRACE(dtype_name(p.dtype) + (p.tf32 ? " (tf32)" : ""));
    LayerCase c = base;
    c.precision = p.dtype;
    c.allow_tf32 = p.tf32;
    expect_matmul(c, K);
  }
}

LayerCase matmul_case(const Shape& a, const Shape& b) {
  LayerCase c;
  c.op = "MatMul";
  c.opset = 13;
  c.inputs = {random_float(a), random_float(b)};
  return c;
}

int64_t k_of(const Shape& a) { return a.back(); }

TEST(CudaMatMul, TwoDimOddSizes) {
  KILN_SKIP_WITHOUT_GPU();
  for (const auto& [m, k, n] : std::vector<std::array<int64_t, 3>>{{17, 33, 9}, {1, 64, 1}, {128, 256, 64}, {1, 1, 1}, {5, 3, 130}, {64, 7, 3}}) {
    SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n));
    expect_matmul_all_precisions(matmul_case({m, k}, {k, n}), k);
  }
}

TEST(CudaMatMul, OneDimOperands) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<Shape, Shape>> cases{
      {{33}, {33, 9}},      // [K] x [K,N] -> [N]
      {{17, 33}, {33}},     // [M,K] x [K] -> [M]
      {{33}, {33}},         // [K] x [K] -> scalar
      {{33}, {2, 33, 9}},   // [K] x [B,K,N] -> [B,N]: A broadcast across the batch
      {{2, 17, 33}, {33}},  // [B,M,K] x [K] -> [B,M]: folds into one GEMM
      {{1}, {1, 5}},
  };
  for (const auto& [a, b] : cases) {
    SCOPED_TRACE(shape_to_string(a) + " x " + shape_to_string(b));
    expect_matmul_all_precisions(matmul_case(a, b), k_of(a));
  }
}

TEST(CudaMatMul, BatchedAndBroadcast) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<Shape, Shape>> cases{
      {{2, 3, 17, 33}, {33, 9}},           // B unbatched: folded into M
      {{4, 17, 33}, {4, 33, 9}},           // plain strided batch
      {{2, 1, 17, 33}, {1, 3, 33, 9}},     // two groups of a strided batch (A stride 0)
      {{1, 3, 17, 33}, {2, 1, 33, 9}},     // two groups, B stride 0 inside each
      {{2, 3, 17, 33}, {3, 33, 9}},        // B's batch repeats every 3
      {{17, 33}, {3, 33, 9}},              // A unbatched, broadcast with stride 0
      {{3, 1, 17, 33}, {4, 33, 9}},        // [3,4] batches
      {{2, 1, 3, 5, 7}, {1, 2, 1, 7, 4}},  // rank 5
      {{1, 1, 1}, {1, 1, 1}},              // size-1 everywhere
      {{1, 17, 33}, {1, 33, 9}},
      {{5, 1, 6}, {6, 1}},                 // M = 1, N = 1
  };
  for (const auto& [a, b] : cases) {
    SCOPED_TRACE(shape_to_string(a) + " x " + shape_to_string(b));
    expect_matmul_all_precisions(matmul_case(a, b), k_of(a));
  }
}

TEST(CudaMatMul, EmptyAndZeroK) {
  KILN_SKIP_WITHOUT_GPU();
  for (const auto& [a, b] : std::vector<std::pair<Shape, Shape>>{{{0, 5}, {5, 3}}, {{2, 0, 5}, {5, 3}}, {{3, 0}, {0, 4}}, {{2, 3, 0}, {2, 0, 4}}}) {
    SCOPED_TRACE(shape_to_string(a) + " x " + shape_to_string(b));
    LayerCase c = matmul_case(a, b);
    expect_matmul(c, 1);
  }
}

LayerCase gemm_case(int64_t M, int64_t K, int64_t N, bool ta, bool tb, const Shape* c_shape, float alpha, float beta) {
  LayerCase c;
  c.op = "Gemm";
  c.opset = 13;
  c.inputs = {random_float(ta ? Shape{K, M} : Shape{M, K}), random_float(tb ? Shape{N, K} : Shape{K, N})};
  if (c_shape != nullptr) c.inputs.push_back(random_float(*c_shape));
  c.attrs["transA"] = int_attr(ta ? 1 : 0);
  c.attrs["transB"] = int_attr(tb ? 1 : 0);
  c.attrs["alpha"] = float_attr_of(alpha);
  c.attrs["beta"] = float_attr_of(beta);
  return c;
}

TEST(CudaGemm, EveryTransposeAndScale) {
  KILN_SKIP_WITHOUT_GPU();
  const int64_t M = 17, K = 33, N = 9;
  const Shape full{M, N};
  for (int t = 0; t < 4; ++t)
    for (const auto& [alpha, beta] : std::vector<std::pair<float, float>>{{1.0f, 1.0f}, {0.5f, 2.0f}, {-1.25f, 0.0f}}) {
      SCOPED_TRACE("transA " + std::to_string(t & 1) + " transB " + std::to_string(t >> 1) + " alpha " +
                   std::to_string(alpha) + " beta " + std::to_string(beta));
      expect_matmul_all_precisions(gemm_case(M, K, N, t & 1, t >> 1, &full, alpha, beta), K);
      expect_matmul_all_precisions(gemm_case(M, K, N, t & 1, t >> 1, nullptr, alpha, beta), K);
    }
}

TEST(CudaGemm, EveryCShape) {
  KILN_SKIP_WITHOUT_GPU();
  const int64_t M = 13, K = 21, N = 11;
  const std::vector<Shape> shapes{{}, {1}, {N}, {1, N}, {M, 1}, {M, N}, {1, 1}};
  for (const Shape& s : shapes)
    for (float beta : {1.0f, 0.75f}) {  // beta 1 with a [N] / [1,N] C takes the bias epilogue
      SCOPED_TRACE("C " + shape_to_string(s) + " beta " + std::to_string(beta));
      expect_matmul_all_precisions(gemm_case(M, K, N, false, true, &s, 1.5f, beta), K);
    }
}

TEST(CudaGemm, LargerAndDegenerate) {
  KILN_SKIP_WITHOUT_GPU();
  const Shape bias{64};
  expect_matmul_all_precisions(gemm_case(128, 256, 64, false, true, &bias, 1.0f, 1.0f), 256);
  const Shape c1{1, 1};
  expect_matmul_all_precisions(gemm_case(1, 64, 1, true, false, &c1, 1.0f, 1.0f), 64);
  // K = 0: Y = beta * C.
  const Shape cm{3, 1};
  expect_matmul(gemm_case(3, 0, 4, false, false, &cm, 1.0f, 0.5f), 1);
  // Older opsets: C required (opset 6 still has the 'broadcast' attribute).
  for (int opset : {6, 7, 9, 11}) {
    const Shape full{7, 5};
    LayerCase c = gemm_case(7, 9, 5, true, false, &full, 1.0f, 1.0f);
    c.opset = opset;
    if (opset == 6) c.attrs["broadcast"] = int_attr(1);
    expect_matmul(c, 9);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Layers made directly through matmul.h: fused epilogues and misaligned operands.

struct DirectCase {
  std::string op = "MatMul";
  std::vector<Value> inputs;  // float32; Gemm's C may be Value::none()
  std::map<std::string, ir::Attribute> attrs;
  MatmulEpilogue epilogue = MatmulEpilogue::kNone;
  Tensor bias;  // [N] float32, for the bias epilogues
  DType precision = DType::kFloat32;
  bool misalign = false;  // every operand one element past a 256-byte boundary
  int64_t K = 1;
};

float apply_act(MatmulEpilogue e, float v) {
  if (e == MatmulEpilogue::kRelu || e == MatmulEpilogue::kBiasRelu) return v < 0 ? 0 : v;
  if (e == MatmulEpilogue::kGelu || e == MatmulEpilogue::kBiasGelu) {
    const double x = v, k = 0.79788456080286535588;
    return static_cast<float>(0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x))));
  }
  return v;
}

void expect_direct(const DirectCase& dc) {
  const bool has_bias = cuda::matmul_epilogue_has_bias(dc.epilogue);
  const bool gemm = dc.op == "Gemm";
  // The layer's inputs: the op's, then (with a bias epilogue) the bias at index 2 (MatMul) or 3 (Gemm).
  std::vector<Value> all = dc.inputs;
  if (has_bias) {
    while (all.size() < (gemm ? 3u : 2u)) all.push_back(Value::none());
    all.push_back(dc.bias);
  }
  LayerCase lc;
  lc.inputs = all;
  lc.precision = dc.precision;
  std::vector<Value> cuda_inputs, ref_inputs;
  round_inputs(lc, &cuda_inputs, &ref_inputs);
  std::vector<Value> op_inputs(ref_inputs.begin(), ref_inputs.begin() + static_cast<long>(dc.inputs.size()));
  OpRun ref = run_kernel("", dc.op, op_inputs, dc.attrs, 1, 13, "reference");
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  Tensor want = ref.outputs[0].tensor();
  const int64_t N = want.rank() == 0 ? 1 : want.shape().back();
  for (int64_t i = 0; i < want.numel(); ++i) {
    float v = want.data<float>()[i];
    if (has_bias) v += ref_inputs.back().tensor().data<float>()[i % N];
    want.data<float>()[i] = apply_act(dc.epilogue, v);
  }

  ir::Node node;
  node.name = "direct_" + dc.op;
  node.op_type = dc.op;
  node.attributes = dc.attrs;
  node.outputs = {"out0"};
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = 13;
  spec.allow_tf32 = false;
  for (size_t i = 0; i < cuda_inputs.size(); ++i) {
    node.inputs.push_back(cuda_inputs[i].is_none() ? "" : "in" + std::to_string(i));
    cuda::TensorDesc d;
    if (!cuda_inputs[i].is_none()) {
      d.dtype = cuda_inputs[i].tensor().dtype();
      d.has_rank = true;
      d.shape = cuda_inputs[i].tensor().shape();
    }
    spec.inputs.push_back(d);
  }
  cuda::TensorDesc od;
  od.dtype = dc.precision;
  od.has_rank = true;
  od.shape = want.shape();
  spec.outputs.push_back(od);
  ASSERT_EQ(cuda::check_matmul_layer(spec, dc.epilogue), "");

  const size_t es = dtype_size(dc.precision);
  const size_t shift = dc.misalign ? es : 0;
  const cuda::CudaHandles& h = detail::test_handles();
  for (const std::string& tactic : cuda::matmul_tactics()) {
    auto layer = cuda::create_matmul_layer(spec, dc.epilogue, tactic, h);
    if (!layer.ok() && tactic != "cuda.cublaslt.h0" && heuristic_short(layer.status())) continue;
    ASSERT_TRUE(layer.ok()) << tactic << ": " << layer.status().to_string();
    std::vector<std::unique_ptr<detail::DeviceMem>> mem;
    std::vector<cuda::DeviceTensor> ins, outs;
    for (const Value& v : cuda_inputs) {
      cuda::DeviceTensor t;
      if (!v.is_none()) {
        const Tensor& host = v.tensor();
        mem.push_back(std::make_unique<detail::DeviceMem>(host.nbytes() + 256));
        char* p = static_cast<char*>(mem.back()->p) + shift;
        ASSERT_EQ(cudaMemcpy(p, host.raw_data(), host.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
        t = cuda::DeviceTensor{p, host.dtype(), host.shape()};
      }
      ins.push_back(t);
    }
    const size_t out_bytes = static_cast<size_t>(want.numel()) * es;
    mem.push_back(std::make_unique<detail::DeviceMem>(out_bytes + 256));
    char* op = static_cast<char*>(mem.back()->p) + shift;
    ASSERT_EQ(cudaMemset(op, 0xFF, out_bytes), cudaSuccess);
    outs.push_back(cuda::DeviceTensor{op, dc.precision, want.shape()});
    std::unique_ptr<detail::DeviceMem> ws;
    if ((*layer)->workspace_bytes() > 0) ws = std::make_unique<detail::DeviceMem>((*layer)->workspace_bytes());
    // The copies and the memset ran on the legacy default stream, which the layer's non-blocking stream does
    // not wait for (a pageable copy may return before its DMA lands, a memset is asynchronous): without this
    // the GEMM sometimes read zeros or had its output overwritten with 0xFF (got 0 / NaN, now and then).
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const Status st = (*layer)->run(ins, outs, ws ? ws->p : nullptr, h);
    ASSERT_TRUE(st.ok()) << tactic << ": " << st.to_string();
    ASSERT_EQ(cudaStreamSynchronize(h.stream), cudaSuccess);
    Tensor got(dc.precision, want.shape());
    ASSERT_EQ(cudaMemcpy(got.raw_data(), op, out_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    const bool low = dc.precision != DType::kFloat32;
    const double k = static_cast<double>(dc.K < 8 ? 8 : dc.K);
    // GELU: cuBLASLt's epilogue may evaluate tanh with a fast approximation.
    const bool gelu = dc.epilogue == MatmulEpilogue::kGelu || dc.epilogue == MatmulEpilogue::kBiasGelu;
    const double rtol = low ? 1e-2 : gelu ? 1e-4 : 1e-5;
    // Some cuBLASLt algorithms round alpha * A B to the output type before adding C and the bias: in bfloat16
    // (8 mantissa bits) a product of magnitude 2 to 4 then moves by up to 2^-7, and a result near 0 is off by
    // that much (0.0113 at K = 24 seen on the H100, 2026-11-25).
    const double atol = dc.precision == DType::kBFloat16 ? 2.5e-2 : low ? 1e-2 : 1e-6 * k / 8.0 + (gelu ? 1e-4 : 0.0);
    detail::compare(got, want, rtol, atol,
                    dc.op + " epilogue " + cuda::matmul_epilogue_name(dc.epilogue) + " tactic " + tactic + " (" +
                        dtype_name(dc.precision) + (dc.misalign ? ", misaligned" : "") + ")");
  }
}

TEST(CudaMatMulEpilogue, EveryEpilogueAndPrecision) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<MatmulEpilogue> epilogues{MatmulEpilogue::kNone, MatmulEpilogue::kRelu, MatmulEpilogue::kGelu,
                                              MatmulEpilogue::kBias, MatmulEpilogue::kBiasRelu, MatmulEpilogue::kBiasGelu};
  const std::vector<std::pair<Shape, Shape>> shapes{
      {{17, 33}, {33, 9}}, {{2, 3, 17, 33}, {33, 9}}, {{3, 17, 33}, {3, 33, 9}}, {{2, 1, 5, 7}, {1, 3, 7, 6}}};
  for (MatmulEpilogue e : epilogues)
    for (const auto& [a, b] : shapes)
      for (DType p : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
        for (bool misalign : {false, true}) {
          SCOPED_TRACE(std::string(cuda::matmul_epilogue_name(e)) + " " + shape_to_string(a) + " x " + shape_to_string(b));
          DirectCase dc;
          dc.inputs = {random_float(a), random_float(b)};
          dc.epilogue = e;
          dc.bias = random_float({b.back()});
          dc.precision = p;
          dc.misalign = misalign;
          dc.K = a.back();
          expect_direct(dc);
        }
}

TEST(CudaMatMulEpilogue, GemmWithCAndBiasRelu) {
  KILN_SKIP_WITHOUT_GPU();
  const int64_t M = 19, K = 24, N = 10;
  for (const Shape& cs : std::vector<Shape>{{M, N}, {N}, {M, 1}})
    for (bool has_c : {true, false})
      for (DType p : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
        for (bool misalign : {false, true})
          for (MatmulEpilogue e : {MatmulEpilogue::kBiasRelu, MatmulEpilogue::kRelu, MatmulEpilogue::kBiasGelu}) {
            SCOPED_TRACE("C " + (has_c ? shape_to_string(cs) : std::string("none")) + " " + cuda::matmul_epilogue_name(e));
            DirectCase dc;
            dc.op = "Gemm";
            dc.inputs = {random_float({M, K}), random_float({N, K})};
            dc.inputs.push_back(has_c ? Value(random_float(cs)) : Value::none());
            dc.attrs["transB"] = int_attr(1);
            dc.attrs["alpha"] = float_attr_of(0.75f);
            dc.attrs["beta"] = float_attr_of(1.0f);
            dc.epilogue = e;
            dc.bias = random_float({N});
            dc.precision = p;
            dc.misalign = misalign;
            dc.K = K;
            expect_direct(dc);
          }
}

// Plain layers on operands one element off a 16-byte boundary: the fallback plan (element-aligned algorithm,
// bias and C through the prefill kernel).
TEST(CudaMatMulEpilogue, MisalignedPlainLayers) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (const auto& [a, b] : std::vector<std::pair<Shape, Shape>>{{{17, 33}, {33, 9}}, {{2, 1, 17, 33}, {1, 3, 33, 9}}, {{33}, {33, 9}}}) {
      DirectCase dc;
      dc.inputs = {random_float(a), random_float(b)};
      dc.precision = p;
      dc.misalign = true;
      dc.K = 33;
      expect_direct(dc);
    }
    for (const Shape& cs : std::vector<Shape>{{9}, {17, 9}, {}}) {
      DirectCase dc;
      dc.op = "Gemm";
      dc.inputs = {random_float({33, 17}), random_float({33, 9}), random_float(cs)};
      dc.attrs["transA"] = int_attr(1);
      dc.attrs["beta"] = float_attr_of(1.0f);
      dc.precision = p;
      dc.misalign = true;
      dc.K = 33;
      expect_direct(dc);
    }
  }
}

TEST(CudaMatMulEpilogue, UnknownTacticAndShortHeuristic) {
  KILN_SKIP_WITHOUT_GPU();
  ir::Node node;
  node.op_type = "MatMul";
  cuda::LayerSpec spec;
  spec.node = &node;
  for (const Shape& s : {Shape{4, 8}, Shape{8, 4}}) {
    cuda::TensorDesc d;
    d.dtype = DType::kFloat32;
    d.has_rank = true;
    d.shape = s;
    spec.inputs.push_back(d);
  }
  cuda::TensorDesc o;
  o.dtype = DType::kFloat32;
  o.has_rank = true;
  o.shape = {4, 4};
  spec.outputs.push_back(o);
  auto r = cuda::create_matmul_layer(spec, MatmulEpilogue::kNone, "cuda.cublaslt.h9", detail::test_handles());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnsupported);
  spec.outputs[0].shape = {4, 5};
  r = cuda::create_matmul_layer(spec, MatmulEpilogue::kNone, "cuda.cublaslt.h0", detail::test_handles());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("output shape"), std::string::npos) << r.status().to_string();
}

// ---------------------------------------------------------------------------------------------------------
// check(): what the layers refuse (no GPU needed).

struct CheckSpec {
  ir::Node node;
  cuda::LayerSpec spec;
  CheckSpec(const std::string& op, const std::vector<std::pair<DType, Shape>>& inputs, DType out = DType::kUndefined) {
    node.op_type = op;
    node.name = "n";
    spec.node = &node;
    spec.opset = 13;
    for (const auto& [dtype, shape] : inputs) {
      cuda::TensorDesc d;
      d.dtype = dtype;
      d.has_rank = dtype != DType::kUndefined;
      d.shape = shape;
      spec.inputs.push_back(d);
    }
    cuda::TensorDesc o;
    o.dtype = out == DType::kUndefined && !inputs.empty() ? inputs[0].first : out;
    spec.outputs.push_back(o);
  }
  std::string check() const { return cuda::layer_table().find(node.op_type)->check(spec); }
};

TEST(CudaMatMulCheck, RegistersMatMulAndGemm) {
  for (const char* op : {"MatMul", "Gemm"}) {
    const cuda::LayerKind* k = cuda::layer_table().find(op);
    ASSERT_NE(k, nullptr) << op;
    ASSERT_TRUE(k->tactics);
    CheckSpec s(op, {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}});
    const std::vector<std::string> t = k->tactics(s.spec);
    std::vector<std::string> all;  // every algorithm of cuBLASLt's heuristic list (8)
    for (int i = 0; i < 8; ++i) all.push_back("cuda.cublaslt.h" + std::to_string(i));
    EXPECT_EQ(t, all);
    EXPECT_TRUE(k->lowers_to_fp16);
    EXPECT_FALSE(k->output_is_view_of_input0);
  }
}

TEST(CudaMatMulCheck, AcceptsFloatsAndUnknownShapes) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    EXPECT_EQ(CheckSpec("MatMul", {{t, {2, 3, 4}}, {t, {4, 5}}}).check(), "");
    EXPECT_EQ(CheckSpec("Gemm", {{t, {2, 3}}, {t, {3, 4}}, {t, {4}}}).check(), "");
  }
  CheckSpec unknown("MatMul", {{DType::kFloat32, {}}, {DType::kFloat32, {-1, 8}}});
  unknown.spec.inputs[0].has_rank = false;
  EXPECT_EQ(unknown.check(), "");
  EXPECT_EQ(CheckSpec("Gemm", {{DType::kFloat32, {-1, 3}}, {DType::kFloat32, {3, -1}}}).check(), "");
  EXPECT_EQ(CheckSpec("MatMul", {{DType::kFloat32, {7}}, {DType::kFloat32, {7}}}).check(), "");
}

void expect_refused(const std::string& why, const std::string& part) {
  EXPECT_NE(why, "");
  EXPECT_NE(why.find(part), std::string::npos) << why;
}

TEST(CudaMatMulCheck, RefusesIntegersAndOtherTypes) {
  for (DType t : {DType::kInt32, DType::kInt64, DType::kInt8, DType::kUInt8, DType::kFloat64}) {
    expect_refused(CheckSpec("MatMul", {{t, {2, 3}}, {t, {3, 4}}}).check(), "dtype " + dtype_name(t) + " is not supported");
    expect_refused(CheckSpec("Gemm", {{t, {2, 3}}, {t, {3, 4}}}).check(), "dtype " + dtype_name(t) + " is not supported");
  }
}

TEST(CudaMatMulCheck, RefusesMismatchesAndRanks) {
  expect_refused(CheckSpec("MatMul", {{DType::kFloat32, {2, 3}}, {DType::kFloat16, {3, 4}}}).check(), "differ in dtype");
  expect_refused(CheckSpec("MatMul", {{DType::kFloat16, {2, 3}}, {DType::kFloat16, {3, 4}}}, DType::kFloat32).check(),
                 "output dtype");
  expect_refused(CheckSpec("MatMul", {{DType::kFloat32, {}}, {DType::kFloat32, {3, 4}}}).check(), "rank >= 1");
  expect_refused(CheckSpec("Gemm", {{DType::kFloat32, {2, 2, 3}}, {DType::kFloat32, {3, 4}}}).check(), "2-D");
  expect_refused(CheckSpec("Gemm", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3}}}).check(), "2-D");
  expect_refused(CheckSpec("Gemm", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}, {DType::kFloat32, {1, 2, 4}}}).check(),
                 "rank <= 2");
  expect_refused(CheckSpec("Gemm", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}, {DType::kFloat16, {4}}}).check(),
                 "C's dtype");
  CheckSpec missing("MatMul", {{DType::kFloat32, {2, 3}}, {DType::kUndefined, {}}});
  expect_refused(missing.check(), "inputs A and B are required");
  expect_refused(CheckSpec("MatMul", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}, {DType::kFloat32, {4}}}).check(),
                 "too many inputs");
}

TEST(CudaMatMulCheck, FusedEpilogueBias) {
  CheckSpec ok("MatMul", {{DType::kFloat16, {2, 3}}, {DType::kFloat16, {3, 4}}, {DType::kFloat16, {4}}});
  for (MatmulEpilogue e : {MatmulEpilogue::kBias, MatmulEpilogue::kBiasRelu, MatmulEpilogue::kBiasGelu})
    EXPECT_EQ(cuda::check_matmul_layer(ok.spec, e), "") << cuda::matmul_epilogue_name(e);
  CheckSpec gemm_ok("Gemm", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}, {DType::kUndefined, {}}, {DType::kFloat32, {1, 4}}});
  EXPECT_EQ(cuda::check_matmul_layer(gemm_ok.spec, MatmulEpilogue::kBiasRelu), "");
  CheckSpec plain("MatMul", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}});
  EXPECT_EQ(cuda::check_matmul_layer(plain.spec, MatmulEpilogue::kRelu), "");
  EXPECT_EQ(cuda::check_matmul_layer(plain.spec, MatmulEpilogue::kGelu), "");
  expect_refused(cuda::check_matmul_layer(plain.spec, MatmulEpilogue::kBias), "needs a bias input");
  CheckSpec wrong_type("MatMul", {{DType::kFloat16, {2, 3}}, {DType::kFloat16, {3, 4}}, {DType::kFloat32, {4}}});
  expect_refused(cuda::check_matmul_layer(wrong_type.spec, MatmulEpilogue::kBias), "bias dtype");
  CheckSpec wrong_shape("MatMul", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}, {DType::kFloat32, {2, 4}}});
  expect_refused(cuda::check_matmul_layer(wrong_shape.spec, MatmulEpilogue::kBiasGelu), "[N] or [1,N]");
  CheckSpec other("Conv", {{DType::kFloat32, {2, 3}}, {DType::kFloat32, {3, 4}}});
  expect_refused(cuda::check_matmul_layer(other.spec, MatmulEpilogue::kNone), "not MatMul or Gemm");
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
