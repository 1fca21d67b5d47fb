// Runs one CUDA layer from the CUDA op table and its CPU reference kernel (the oracle) on the same inputs,
// and compares them: the CUDA op tests state only the op, its inputs, attributes and precision. Every
// tactic the layer lists is run and compared. Outputs are poisoned (NaN / 0x7B bytes) before each run.
// Without a GPU the tests skip themselves, saying why.
#pragma once
#ifdef KILN_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/layer.h"
#include "core/cast.h"
#include "cuda_skip.h"
#include "kernel_harness.h"
#include "random_tensors.h"

namespace kiln::testing {

inline std::mt19937& cuda_test_rng() {
  static std::mt19937 gen(random_seed("cuda layer tests"));
  return gen;
}

// Uniform in [lo, hi] (0 < lo) with a random sign when `random_sign`; never exactly zero (random_tensors.h).
inline Tensor random_float(const Shape& shape, float lo = 0.1f, float hi = 1.0f, bool random_sign = true) {
  return random_sign ? random_signed_tensor(cuda_test_rng(), DType::kFloat32, shape, lo, hi)
                     : random_tensor(cuda_test_rng(), DType::kFloat32, shape, lo, hi);
}

// Integers in [lo, hi] of an integer dtype.
inline Tensor random_int(DType dtype, const Shape& shape, int64_t lo, int64_t hi) {
  return random_int(cuda_test_rng(), dtype, shape, lo, hi);
}

inline Tensor ints_tensor(const std::vector<int64_t>& v) {
  return Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(v.size())}, v);
}

inline ir::Attribute float_attr_of(float f) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kFloat;
  a.f = f;
  return a;
}

// One CUDA-vs-reference comparison.
struct LayerCase {
  std::string op;
  std::string domain;  // "" for the default domain; "kiln" for the optimizer's fused ops
  std::vector<Value> inputs;  // host tensors (float32 for float data); Value::none() for an omitted input
  std::map<std::string, ir::Attribute> attrs;
  size_t num_outputs = 1;
  int opset = 21;
  std::set<size_t> constant_inputs;  // inputs the layer sees as initializers (their host values)
  // The precision of the CUDA run: float32 inputs are rounded to it first (the reference computes in
  // float32 on the rounded values), except those in keep_fp32_inputs (Resize's scales, say).
  DType precision = DType::kFloat32;
  std::set<size_t> keep_fp32_inputs;
  bool allow_tf32 = false;
  std::string only_tactic;  // "" runs every tactic the layer kind lists
  double rtol = -1, atol = -1;  // -1: by precision (fp32 1e-5 / 1e-6, tf32 1e-3, fp16 and bf16 1e-2)
};

namespace detail {

inline const cuda::CudaHandles& test_handles() {
  // Never destroyed: at exit the CUDA runtime may already be gone.
  static cuda::HandleSet* hs = [] {
    auto r = cuda::HandleSet::create();
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    return r.ok() ? std::move(r).value().release() : nullptr;
  }();
  static cuda::CudaHandles none;
  return hs ? hs->handles() : none;
}

struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes == 0 ? 1 : bytes), cudaSuccess); }
  ~DeviceMem() { cudaFree(p); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

inline bool is_float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

inline void compare(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  if (!is_float_dtype(want.dtype())) {
    ASSERT_EQ(got.dtype(), want.dtype()) << what;
    const auto g = got.to_int64_vector(), w = want.to_int64_vector();
    int bad = 0;
    for (size_t i = 0; i < g.size() && bad < 5; ++i)
      if (g[i] != w[i]) {
        ++bad;
        ADD_FAILURE() << what << ": element " << i << " of " << g.size() << ": got " << g[i] << ", want " << w[i];
      }
    return;
  }
  const Tensor g = widen_to_float32(got), w = widen_to_float32(want);
  int bad = 0;
  for (int64_t i = 0; i < g.numel() && bad < 5; ++i) {
    const double a = g.data<float>()[i], b = w.data<float>()[i];
    if (std::isnan(b) && std::isnan(a)) continue;
    if (std::isinf(a) && std::isinf(b) && (a > 0) == (b > 0)) continue;
    if (std::isnan(a) || std::isnan(b) || std::fabs(a - b) > rtol * std::fabs(b) + atol) {
      ++bad;
      ADD_FAILURE() << what << ": element " << i << " of " << g.numel() << ": got " << a << ", want " << b;
    }
  }
}

// The node and spec of a case: its inputs as given (the constant ones with their values), its outputs
// shaped as the reference's, in the case's precision where the reference gives float32.
inline cuda::LayerSpec case_spec(const LayerCase& c, const std::vector<Value>& inputs,
                                 const std::vector<Tensor>& reference_outputs, ir::Node* node) {
  node->name = "cuda_" + c.op;
  node->op_type = c.op;
  node->domain = c.domain;
  node->attributes = c.attrs;
  cuda::LayerSpec spec;
  spec.node = node;
  spec.opset = c.opset;
  spec.allow_tf32 = c.allow_tf32;
  for (size_t i = 0; i < inputs.size(); ++i) {
    node->inputs.push_back(inputs[i].is_none() ? "" : "in" + std::to_string(i));
    cuda::TensorDesc d;
    if (!inputs[i].is_none()) {
      d.dtype = inputs[i].tensor().dtype();
      d.has_rank = true;
      d.shape = inputs[i].tensor().shape();
      if (c.constant_inputs.count(i)) d.constant = &inputs[i].tensor();
    }
    spec.inputs.push_back(d);
  }
  for (size_t i = 0; i < reference_outputs.size(); ++i) {
    node->outputs.push_back("out" + std::to_string(i));
    cuda::TensorDesc d;
    d.dtype = reference_outputs[i].dtype() == DType::kFloat32 ? c.precision : reference_outputs[i].dtype();
    d.has_rank = true;
    d.shape = reference_outputs[i].shape();
    spec.outputs.push_back(d);
  }
  return spec;
}

}  // namespace detail

// Runs the case's layer with one tactic; outputs come back in the case's precision (or their own dtype).
inline Result<std::vector<Tensor>> run_cuda_layer(const LayerCase& c, const std::vector<Value>& inputs,
                                                  const std::vector<Tensor>& reference_outputs,
                                                  const std::string& tactic) {
  const cuda::LayerKind* kind = cuda::layer_table().find(c.domain.empty() ? c.op : c.domain + "." + c.op);
  if (kind == nullptr) return Unsupported("no CUDA layer for " + c.op);
  ir::Node node;
  const cuda::LayerSpec spec = detail::case_spec(c, inputs, reference_outputs, &node);
  if (std::string why = kind->check(spec); !why.empty()) return Unsupported("check refused: " + why);
  const cuda::CudaHandles& h = detail::test_handles();

  std::vector<std::unique_ptr<detail::DeviceMem>> mem;
  std::vector<cuda::DeviceTensor> ins, outs;
  for (const Value& v : inputs) {
    cuda::DeviceTensor t;
    if (!v.is_none()) {
      const Tensor& host = v.tensor();
      mem.push_back(std::make_unique<detail::DeviceMem>(host.nbytes()));
      EXPECT_EQ(cudaMemcpy(mem.back()->p, host.raw_data(), host.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
      t = cuda::DeviceTensor{mem.back()->p, host.dtype(), host.shape()};
    }
    ins.push_back(t);
  }
  for (const auto& d : spec.outputs) {
    const size_t bytes = static_cast<size_t>(shape_numel(d.shape)) * dtype_size(d.dtype);
    mem.push_back(std::make_unique<detail::DeviceMem>(bytes));
    const int pattern = detail::is_float_dtype(d.dtype) ? 0xFF : 0x7B;
    EXPECT_EQ(cudaMemset(mem.back()->p, pattern, bytes), cudaSuccess);
    outs.push_back(cuda::DeviceTensor{mem.back()->p, d.dtype, d.shape});
  }

  // The copies and memsets above ran on the legacy default stream, which the layer's non-blocking stream
  // does not wait for: finish them first.
  KILN_CUDA_TRY(cudaDeviceSynchronize());
  if (kind->output_is_view_of_input0) {
    // No kernel: the executor aliases the memory; here the view is copied so that the test sees it.
    EXPECT_EQ(outs[0].nbytes(), ins[0].nbytes());
    EXPECT_EQ(cudaMemcpy(outs[0].data, ins[0].data, ins[0].nbytes(), cudaMemcpyDeviceToDevice), cudaSuccess);
  } else {
    KILN_ASSIGN_OR_RETURN(auto layer, kind->create(spec, tactic, h));
    std::unique_ptr<detail::DeviceMem> ws;
    if (layer->workspace_bytes() > 0) ws = std::make_unique<detail::DeviceMem>(layer->workspace_bytes());
    KILN_RETURN_IF_ERROR(layer->run(ins, outs, ws ? ws->p : nullptr, h));
    KILN_CUDA_TRY(cudaStreamSynchronize(h.stream));
  }
  std::vector<Tensor> result;
  for (const auto& o : outs) {
    Tensor t(o.dtype, o.shape);
    KILN_CUDA_TRY(cudaMemcpy(t.raw_data(), o.data, o.nbytes(), cudaMemcpyDeviceToHost));
    result.push_back(std::move(t));
  }
  return result;
}

// Runs the reference and every tactic (or c.only_tactic) and compares each output.
inline void expect_layer_matches_reference(const LayerCase& c) {
  // Round float32 inputs to the case's precision, so that reference and layer see the same values.
  std::vector<Value> cuda_inputs, ref_inputs;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const Value& v = c.inputs[i];
    if (v.is_none() || v.tensor().dtype() != DType::kFloat32 || c.precision == DType::kFloat32 ||
        c.keep_fp32_inputs.count(i)) {
      cuda_inputs.push_back(v);
      ref_inputs.push_back(v);
      continue;
    }
    auto low = cast_tensor(v.tensor(), c.precision);
    ASSERT_TRUE(low.ok()) << low.status().to_string();
    cuda_inputs.emplace_back(*low);
    ref_inputs.emplace_back(widen_to_float32(*low));
  }
  OpRun ref = run_kernel(c.domain, c.op, ref_inputs, c.attrs, c.num_outputs, c.opset, "reference");
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  std::vector<Tensor> want;
  for (const Value& v : ref.outputs) want.push_back(v.tensor());

  const cuda::LayerKind* kind = cuda::layer_table().find(c.domain.empty() ? c.op : c.domain + "." + c.op);
  ASSERT_NE(kind, nullptr) << "no CUDA layer for " << c.op;
  std::vector<std::string> tactics{c.only_tactic};
  if (c.only_tactic.empty()) {
    // The layer kind's own list, from a spec of the case's shapes (no handles needed to list them).
    ir::Node node;
    const cuda::LayerSpec spec = detail::case_spec(c, cuda_inputs, want, &node);
    tactics = kind->tactics ? kind->tactics(spec) : std::vector<std::string>{"default"};
    ASSERT_FALSE(tactics.empty()) << c.op << ": the layer lists no tactic";
  }
  const bool low = c.precision != DType::kFloat32;
  const double rtol = c.rtol >= 0 ? c.rtol : low ? 1e-2 : c.allow_tf32 ? 1e-3 : 1e-5;
  const double atol = c.atol >= 0 ? c.atol : low ? 1e-2 : c.allow_tf32 ? 1e-3 : 1e-6;
  for (const std::string& tactic : tactics) {
    auto got = run_cuda_layer(c, cuda_inputs, want, tactic);
    ASSERT_TRUE(got.ok()) << c.op << " tactic " << tactic << ": " << got.status().to_string();
    ASSERT_EQ(got->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      detail::compare((*got)[i], want[i], rtol, atol,
                      c.op + " tactic " + tactic + " output " + std::to_string(i) + " (" + dtype_name(c.precision) + ")");
  }
}

// Times a created layer on h.stream: 25 runs, the median of the last 20 in ms (in *median_ms), with a
// workspace of its size. A failed step fails the test: call it in ASSERT_NO_FATAL_FAILURE.
inline void time_created_layer_ms(const cuda::Layer& layer, const std::vector<cuda::DeviceTensor>& ins,
                                  const std::vector<cuda::DeviceTensor>& outs, const cuda::CudaHandles& h,
                                  double* median_ms) {
  std::unique_ptr<detail::DeviceMem> ws;
  if (layer.workspace_bytes() > 0) ws = std::make_unique<detail::DeviceMem>(layer.workspace_bytes());
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int it = 0; it < 25; ++it) {
    cudaEventRecord(e0, h.stream);
    ASSERT_TRUE(layer.run(ins, outs, ws ? ws->p : nullptr, h).ok());
    cudaEventRecord(e1, h.stream);
    ASSERT_EQ(cudaEventSynchronize(e1), cudaSuccess);
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    if (it >= 5) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  *median_ms = ms[ms.size() / 2];
}

// Times every tactic of `kind` that creates for `spec` (time_created_layer_ms), in the kind's order, into
// *times as (tactic, median ms); a tactic whose create fails for this spec is left out. A failed run fails
// the test: call it in ASSERT_NO_FATAL_FAILURE.
inline void time_every_tactic_ms(const cuda::LayerKind& kind, const cuda::LayerSpec& spec,
                                 const std::vector<cuda::DeviceTensor>& ins, const std::vector<cuda::DeviceTensor>& outs,
                                 const cuda::CudaHandles& h, std::vector<std::pair<std::string, double>>* times) {
  for (const std::string& tactic : kind.tactics(spec)) {
    auto layer = kind.create(spec, tactic, h);
    if (!layer.ok()) continue;
    double ms = 0;
    ASSERT_NO_FATAL_FAILURE(time_created_layer_ms(**layer, ins, outs, h, &ms));
    times->emplace_back(tactic, ms);
  }
}

// Times op's layer ("default" tactic) for spec on h.stream, as the bandwidth tests do (time_created_layer_ms).
inline void time_layer_ms(const std::string& op, const cuda::LayerSpec& spec,
                          const std::vector<cuda::DeviceTensor>& ins, const std::vector<cuda::DeviceTensor>& outs,
                          const cuda::CudaHandles& h, double* median_ms) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  ASSERT_NE(kind, nullptr);
  ASSERT_EQ(kind->check(spec), "");
  auto layer = kind->create(spec, "default", h);
  ASSERT_TRUE(layer.ok()) << layer.status().to_string();
  time_created_layer_ms(**layer, ins, outs, h, median_ms);
}

// Benchmarks written as tests (they print a time, never assert on one) run only when a bench script asks:
// KILN_BENCH=1, so the GPU test round stays short.
#define KILN_SKIP_UNLESS_BENCH()                                                              \
  do {                                                                                        \
    const char* kiln_bench_env = std::getenv("KILN_BENCH");                                   \
    if (kiln_bench_env == nullptr || std::string(kiln_bench_env) != "1")                      \
      GTEST_SKIP() << "a benchmark: set KILN_BENCH=1 to run it";                              \
  } while (0)

// ---------------------------------------------------------------------------------------------------------
// What the data-movement tests (cuda_index_ops_test.cc, cuda_shape_ops_test.cc) share

// The dtypes the data-movement tests run: the float ones through the harness's precision.
inline constexpr DType kAllTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt64,
                                      DType::kInt32,   DType::kInt8,    DType::kBool,     DType::kFloat64};

inline bool via_precision(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

// Random data of dtype t (float32 for the float types that go through the precision).
inline Tensor data_of(DType t, const Shape& shape) {
  if (via_precision(t)) return random_float(shape, 0.1f, 4.0f);
  if (t == DType::kBool) return random_bool(cuda_test_rng(), shape);
  Tensor i = random_int(DType::kInt64, shape, t == DType::kInt8 ? -120 : -100000, t == DType::kInt8 ? 120 : 100000);
  auto c = cast_tensor(i, t);
  EXPECT_TRUE(c.ok());
  return c.ok() ? *c : i;
}

inline LayerCase make_case(const std::string& op, std::vector<Value> inputs, std::map<std::string, ir::Attribute> attrs,
                           DType t, int opset = 21) {
  LayerCase c;
  c.op = op;
  c.inputs = std::move(inputs);
  c.attrs = std::move(attrs);
  c.opset = opset;
  if (via_precision(t)) c.precision = t;
  return c;
}

inline std::string what(DType t, const Shape& s) { return dtype_name(t) + shape_to_string(s); }

// A tensor as check() sees it.
inline cuda::TensorDesc desc(DType t, Shape shape, const Tensor* constant = nullptr, bool has_rank = true) {
  cuda::TensorDesc d;
  d.dtype = t;
  d.has_rank = has_rank;
  d.shape = std::move(shape);
  d.constant = constant;
  return d;
}

// What check() of op says ("" when it accepts) for a node with these inputs, outputs and attributes.
inline std::string check_of(const std::string& op, std::vector<cuda::TensorDesc> ins,
                            std::vector<cuda::TensorDesc> outs, std::map<std::string, ir::Attribute> attrs = {},
                            int opset = 21) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  if (kind == nullptr) return "<no CUDA layer for " + op + ">";
  ir::Node node;
  node.name = "n";
  node.op_type = op;
  node.attributes = std::move(attrs);
  for (const auto& d : ins) node.inputs.push_back(d.present() ? "x" : "");
  for (const auto& d : outs) node.outputs.push_back(d.present() ? "y" : "");
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = opset;
  spec.inputs = std::move(ins);
  spec.outputs = std::move(outs);
  return kind->check(spec);
}

}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
