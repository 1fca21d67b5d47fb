// The CUDA elementwise kernels against the CPU reference kernels (the oracle): every op and dtype, fresh
// random inputs (never zeros), the output poisoned before each run. Built only with the CUDA backend; on a
// machine without a GPU every test is reported as skipped, with the reason.
#ifdef KILN_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/kernels.h"
#include "core/cast.h"
#include "ir/op_registry.h"
#include "random_tensors.h"

namespace kiln {
namespace {

constexpr int kOpset = 24;

#define SKIP_WITHOUT_GPU()                                                       \
  do {                                                                           \
    if (!backends::cuda_device_available()) GTEST_SKIP() << "no CUDA device";    \
  } while (0)

std::mt19937& rng() {
  static std::mt19937 gen(testing::random_seed("cuda_kernels_test"));
  return gen;
}

// Uniform in [lo, hi], never exactly zero; with `random_sign` (and 0 < lo), each value's sign at random
// (random_tensors.h). Integer dtypes get the values rounded, a zero made 7.
Tensor random_tensor(DType dtype, const Shape& shape, float lo, float hi, bool random_sign = false) {
  const bool integer = dtype == DType::kInt32 || dtype == DType::kInt64;
  const DType drawn = integer ? DType::kFloat32 : dtype;
  const Tensor t = random_sign ? testing::random_signed_tensor(rng(), drawn, shape, lo, hi)
                               : testing::random_tensor(rng(), drawn, shape, lo, hi);
  if (!integer) return t;
  Tensor r(dtype, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t v = static_cast<int64_t>(std::lround(t.data<float>()[i]));
    if (v == 0) v = 7;
    if (dtype == DType::kInt32) r.data<int32_t>()[i] = static_cast<int32_t>(v);
    else r.data<int64_t>()[i] = v;
  }
  return r;
}

Tensor random_bool(const Shape& shape) { return testing::random_bool(rng(), shape); }

// Runs the CPU reference kernel of `op` on `inputs`; returns output 0.
Tensor run_reference(const std::string& op, const std::vector<Tensor>& inputs,
                     const std::map<std::string, ir::Attribute>& attrs = {}) {
  const ir::OpSchema* schema = ir::OpRegistry::global().find("", op);
  EXPECT_TRUE(schema != nullptr && schema->cpu_kernel != nullptr) << op;
  if (schema == nullptr || schema->cpu_kernel == nullptr) return Tensor();
  ir::Node node;
  node.name = "ref";
  node.op_type = op;
  node.attributes = attrs;
  std::vector<Value> values;
  for (size_t i = 0; i < inputs.size(); ++i) {
    node.inputs.push_back("in" + std::to_string(i));
    values.emplace_back(inputs[i]);
  }
  node.outputs = {"out"};
  std::vector<const Value*> ptrs;
  for (const Value& v : values) ptrs.push_back(&v);
  std::vector<Value> outs(1);
  ir::KernelContext ctx(node, kOpset, ptrs, &outs, {});
  Status st = schema->cpu_kernel(ctx);
  EXPECT_TRUE(st.ok()) << st.to_string();
  if (!st.ok()) return Tensor();
  return outs[0].tensor();
}

ir::Attribute float_attr(float f) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kFloat;
  a.f = f;
  return a;
}
ir::Attribute int_attr(int64_t i) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInt;
  a.i = i;
  return a;
}
ir::Attribute string_attr(const std::string& s) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kString;
  a.s = s;
  return a;
}

// Device memory for the length of a test; `offset_elems` shifts the pointer to test unaligned access.
class DeviceBuffer {
 public:
  DeviceBuffer(backends::Backend& be, size_t bytes, size_t offset_bytes = 0) : be_(be), offset_(offset_bytes) {
    auto p = be.allocate(bytes + offset_bytes);
    EXPECT_TRUE(p.ok()) << p.status().to_string();
    base_ = p.ok() ? *p : nullptr;
  }
  ~DeviceBuffer() { be_.free(base_); }
  void* get() const { return static_cast<char*>(base_) + offset_; }

 private:
  backends::Backend& be_;
  size_t offset_;
  void* base_ = nullptr;
};

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!backends::cuda_device_available()) return;
    auto be = backends::make_cuda_backend();
    ASSERT_TRUE(be.ok()) << be.status().to_string();
    backend_ = std::move(be).value();
  }

  // Uploads a tensor; the buffer lives until the test ends.
  void* upload(const Tensor& t, size_t offset_bytes = 0) {
    buffers_.push_back(std::make_unique<DeviceBuffer>(*backend_, t.nbytes(), offset_bytes));
    Status st = backend_->copy_to_device(buffers_.back()->get(), t.raw_data(), t.nbytes());
    EXPECT_TRUE(st.ok()) << st.to_string();
    return buffers_.back()->get();
  }
  // An output buffer filled with a poison pattern: NaN for float types, a value no test produces for ints.
  void* poisoned(DType dtype, const Shape& shape, size_t offset_bytes = 0) {
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    buffers_.push_back(std::make_unique<DeviceBuffer>(*backend_, bytes, offset_bytes));
    const int pattern = (dtype == DType::kInt32 || dtype == DType::kInt64) ? 0x7B : 0xFF;
    EXPECT_EQ(cudaMemset(buffers_.back()->get(), pattern, bytes), cudaSuccess);
    return buffers_.back()->get();
  }
  Tensor download(void* p, DType dtype, const Shape& shape) {
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());
    Tensor t(dtype, shape);
    Status st = backend_->copy_to_host(t.raw_data(), p, t.nbytes());
    EXPECT_TRUE(st.ok()) << st.to_string();
    return t;
  }

  std::unique_ptr<backends::Backend> backend_;
  std::vector<std::unique_ptr<DeviceBuffer>> buffers_;
};

// float32 within 1e-5 relative; float16 and bfloat16 within 1e-2; NaN never passes unless expected.
void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_TRUE(want.defined()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  if (got.dtype() == DType::kInt32 || got.dtype() == DType::kInt64) {
    const auto g = got.to_int64_vector(), w = want.to_int64_vector();
    int bad = 0;
    for (size_t i = 0; i < g.size() && bad < 5; ++i)
      if (g[i] != w[i]) {
        ++bad;
        ADD_FAILURE() << what << ": element " << i << ": got " << g[i] << ", want " << w[i];
      }
    return;
  }
  const bool low = got.dtype() != DType::kFloat32;
  const double rtol = low ? 1e-2 : 1e-5;
  const double atol = low ? 1e-3 : 1e-6;
  const Tensor g = widen_to_float32(got), w = widen_to_float32(want);
  int bad = 0;
  for (int64_t i = 0; i < g.numel() && bad < 5; ++i) {
    const double a = g.data<float>()[i], b = w.data<float>()[i];
    if (std::isnan(b) && std::isnan(a)) continue;
    if (std::isnan(a) || std::isnan(b) || std::fabs(a - b) > rtol * std::fabs(b) + atol) {
      ++bad;
      ADD_FAILURE() << what << ": element " << i << " of " << g.numel() << ": got " << a << ", want " << b;
    }
  }
}

const DType kFloatTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

struct UnaryCase {
  const char* onnx_op;
  cuda::UnaryOp op;
  float lo, hi;
  bool random_sign;
  std::map<std::string, ir::Attribute> attrs;
  cuda::UnaryParams params;
};

std::vector<UnaryCase> unary_cases() {
  using U = cuda::UnaryOp;
  cuda::UnaryParams none;
  cuda::UnaryParams leaky;
  leaky.alpha = 0.1f;
  cuda::UnaryParams elu;
  elu.alpha = 0.7f;
  cuda::UnaryParams hsig;
  hsig.alpha = 0.3f;
  hsig.beta = 0.4f;
  cuda::UnaryParams swish;
  swish.alpha = 1.5f;
  cuda::UnaryParams silu;
  silu.alpha = 1.0f;
  return {
      {"Abs", U::kAbs, -3, 3, false, {}, none},
      {"Neg", U::kNeg, -3, 3, false, {}, none},
      {"Exp", U::kExp, -4, 4, false, {}, none},
      {"Log", U::kLog, 0.05f, 8, false, {}, none},
      {"Sqrt", U::kSqrt, 0.05f, 8, false, {}, none},
      {"Reciprocal", U::kReciprocal, 0.2f, 4, true, {}, none},
      {"Sin", U::kSin, -4, 4, false, {}, none},
      {"Cos", U::kCos, -4, 4, false, {}, none},
      {"Tanh", U::kTanh, -3, 3, false, {}, none},
      {"Erf", U::kErf, -3, 3, false, {}, none},
      {"Floor", U::kFloor, -5, 5, false, {}, none},
      {"Ceil", U::kCeil, -5, 5, false, {}, none},
      {"Relu", U::kRelu, -3, 3, false, {}, none},
      {"LeakyRelu", U::kLeakyRelu, -3, 3, false, {{"alpha", float_attr(0.1f)}}, leaky},
      {"Elu", U::kElu, -3, 3, false, {{"alpha", float_attr(0.7f)}}, elu},
      {"Sigmoid", U::kSigmoid, -8, 8, false, {}, none},
      {"HardSigmoid", U::kHardSigmoid, -5, 5, false, {{"alpha", float_attr(0.3f)}, {"beta", float_attr(0.4f)}}, hsig},
      {"HardSwish", U::kHardSwish, -5, 5, false, {}, none},
      {"Gelu", U::kGeluErf, -4, 4, false, {}, none},
      {"Gelu", U::kGeluTanh, -4, 4, false, {{"approximate", string_attr("tanh")}}, none},
      {"Swish", U::kSwish, -6, 6, false, {{"alpha", float_attr(1.5f)}}, swish},
      {"Swish", U::kSwish, -6, 6, false, {}, silu},  // Silu
      {"Softplus", U::kSoftplus, -10, 10, false, {}, none},
  };
}

const Shape kUnaryShapes[] = {{3, 5, 67}, {2, 1024}, {7}};

TEST_F(CudaKernels, UnaryMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : kFloatTypes) {
    for (const UnaryCase& c : unary_cases()) {
      for (const Shape& shape : kUnaryShapes) {
        for (size_t offset : {size_t{0}, dtype_size(dtype)}) {  // aligned (vectorized) and unaligned
          const std::string what = std::string(cuda::unary_op_name(c.op)) + " " + dtype_name(dtype) +
                                   shape_to_string(shape) + (offset ? " unaligned" : "");
          SCOPED_TRACE(what);
          Tensor x = random_tensor(dtype, shape, c.lo, c.hi, c.random_sign);
          Tensor want = run_reference(c.onnx_op, {x}, c.attrs);
          void* dx = upload(x, offset);
          void* dy = poisoned(dtype, shape, offset);
          Status st = cuda::launch_unary(c.op, dtype, dx, dy, x.numel(), c.params, nullptr);
          ASSERT_TRUE(st.ok()) << st.to_string();
          expect_close(download(dy, dtype, shape), want, what);
        }
      }
    }
  }
}

TEST_F(CudaKernels, ClipMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : kFloatTypes) {
    for (auto [lo, hi] : {std::pair{-0.5f, 1.25f}, std::pair{0.75f, -0.25f}}) {  // min > max gives max
      const Shape shape{4, 33, 9};
      const std::string what = "Clip " + dtype_name(dtype) + " [" + std::to_string(lo) + "," + std::to_string(hi) + "]";
      SCOPED_TRACE(what);
      Tensor x = random_tensor(dtype, shape, -3, 3);
      Tensor tlo = *cast_tensor(Tensor::scalar<float>(DType::kFloat32, lo), dtype);
      Tensor thi = *cast_tensor(Tensor::scalar<float>(DType::kFloat32, hi), dtype);
      Tensor want = run_reference("Clip", {x, tlo, thi});
      cuda::UnaryParams p;
      p.lo = widen_to_float32(tlo).data<float>()[0];
      p.hi = widen_to_float32(thi).data<float>()[0];
      void* dx = upload(x);
      void* dy = poisoned(dtype, shape);
      Status st = cuda::launch_unary(cuda::UnaryOp::kClip, dtype, dx, dy, x.numel(), p, nullptr);
      ASSERT_TRUE(st.ok()) << st.to_string();
      expect_close(download(dy, dtype, shape), want, what);
    }
  }
}

struct BinaryCase {
  const char* onnx_op;
  cuda::BinaryOp op;
};
const BinaryCase kBinaryCases[] = {
    {"Add", cuda::BinaryOp::kAdd}, {"Sub", cuda::BinaryOp::kSub}, {"Mul", cuda::BinaryOp::kMul},
    {"Div", cuda::BinaryOp::kDiv}, {"Pow", cuda::BinaryOp::kPow}, {"Max", cuda::BinaryOp::kMax},
    {"Min", cuda::BinaryOp::kMin},
};
const std::pair<Shape, Shape> kBroadcastShapes[] = {
    {{2, 3, 4, 5}, {2, 3, 4, 5}}, {{2, 3, 4, 5}, {5}},       {{2, 3, 4, 5}, {}},     {{}, {3, 7}},
    {{2, 1, 4, 1}, {3, 1, 5}},    {{4, 1, 6}, {1, 5, 1}},    {{8, 16, 33}, {8, 1, 33}}, {{1, 64}, {32, 1}},
    {{6, 1, 1, 1, 2}, {1, 3, 2, 5, 1}},  {{1}, {1}},
};

TEST_F(CudaKernels, BinaryMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : kFloatTypes) {
    for (const BinaryCase& c : kBinaryCases) {
      for (const auto& [as, bs] : kBroadcastShapes) {
        Shape out;
        ASSERT_TRUE(cuda::broadcast_shape(as, bs, &out));
        const std::string what = std::string(c.onnx_op) + " " + dtype_name(dtype) + " " + shape_to_string(as) +
                                 " " + shape_to_string(bs);
        SCOPED_TRACE(what);
        const bool pow = c.op == cuda::BinaryOp::kPow, div = c.op == cuda::BinaryOp::kDiv;
        Tensor a = pow ? random_tensor(dtype, as, 0.5f, 2.0f) : random_tensor(dtype, as, -3, 3);
        Tensor b = pow ? random_tensor(dtype, bs, -2.0f, 2.0f)
                       : div ? random_tensor(dtype, bs, 0.5f, 2.0f, true) : random_tensor(dtype, bs, -3, 3);
        Tensor want = run_reference(c.onnx_op, {a, b});
        void* da = upload(a);
        void* db = upload(b);
        void* dy = poisoned(dtype, out);
        Status st = cuda::launch_binary(c.op, dtype, da, as, db, bs, dy, out, nullptr);
        ASSERT_TRUE(st.ok()) << st.to_string();
        expect_close(download(dy, dtype, out), want, what);
      }
    }
  }
}

TEST_F(CudaKernels, BinaryRejectsShapesThatDoNotBroadcast) {
  SKIP_WITHOUT_GPU();
  Status st = cuda::launch_binary(cuda::BinaryOp::kAdd, DType::kFloat32, nullptr, {2, 3}, nullptr, {4}, nullptr,
                                  {2, 3}, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("[2,3]"), std::string::npos) << st.message();
}

TEST_F(CudaKernels, WhereMatchesReference) {
  SKIP_WITHOUT_GPU();
  const Shape cases[][3] = {{{4, 9}, {4, 9}, {4, 9}}, {{2, 1, 5}, {3, 1}, {2, 3, 5}}, {{}, {6, 7}, {7}},
                            {{5, 1, 1}, {1, 8, 1}, {1, 1, 16}}};
  for (DType dtype : kFloatTypes) {
    for (const auto& s : cases) {
      Shape s1, out;
      ASSERT_TRUE(cuda::broadcast_shape(s[0], s[1], &s1));
      ASSERT_TRUE(cuda::broadcast_shape(s1, s[2], &out));
      const std::string what = "Where " + dtype_name(dtype) + " " + shape_to_string(s[0]) + " " +
                               shape_to_string(s[1]) + " " + shape_to_string(s[2]);
      SCOPED_TRACE(what);
      Tensor c = random_bool(s[0]);
      Tensor x = random_tensor(dtype, s[1], -3, 3);
      Tensor y = random_tensor(dtype, s[2], -3, 3);
      Tensor want = run_reference("Where", {c, x, y});
      void* dc = upload(c);
      void* dx = upload(x);
      void* dy = upload(y);
      void* dout = poisoned(dtype, out);
      Status st = cuda::launch_where(dtype, dc, s[0], dx, s[1], dy, s[2], dout, out, nullptr);
      ASSERT_TRUE(st.ok()) << st.to_string();
      expect_close(download(dout, dtype, out), want, what);
    }
  }
}

TEST_F(CudaKernels, CastMatchesReference) {
  SKIP_WITHOUT_GPU();
  const DType types[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32, DType::kInt64};
  const Shape shape{5, 201};
  for (DType from : types) {
    for (DType to : types) {
      const std::string what = "Cast " + dtype_name(from) + " -> " + dtype_name(to);
      SCOPED_TRACE(what);
      ASSERT_TRUE(cuda::cast_supports(from, to));
      Tensor x = random_tensor(from, shape, 0.25f, 200.0f, true);
      Tensor want = run_reference("Cast", {x}, {{"to", int_attr(static_cast<int64_t>(to))}});
      void* dx = upload(x);
      void* dy = poisoned(to, shape);
      Status st = cuda::launch_cast(from, dx, to, dy, x.numel(), nullptr);
      ASSERT_TRUE(st.ok()) << st.to_string();
      expect_close(download(dy, to, shape), want, what);
    }
  }
}

TEST_F(CudaKernels, BackendReportsDeviceAndSupport) {
  SKIP_WITHOUT_GPU();
  EXPECT_EQ(backend_->name(), "cuda");
  EXPECT_NE(backend_->device_name().find("sm_"), std::string::npos) << backend_->device_name();
  std::printf("CUDA device: %s\n", backend_->device_name().c_str());
  ir::Graph g;
  g.value_types["x"].kind = ir::TypeInfo::Kind::kTensor;
  g.value_types["x"].dtype = DType::kFloat16;
  g.value_types["i"].kind = ir::TypeInfo::Kind::kTensor;
  g.value_types["i"].dtype = DType::kInt8;
  ir::Node relu;
  relu.op_type = "Relu";
  relu.inputs = {"x"};
  relu.outputs = {"y"};
  std::string why;
  EXPECT_TRUE(backend_->supports(relu, g, kOpset, &why)) << why;
  relu.inputs = {"i"};
  EXPECT_FALSE(backend_->supports(relu, g, kOpset, &why));
  EXPECT_NE(why.find("int8"), std::string::npos) << why;
  ir::Node conv;
  conv.op_type = "ConvInteger";
  conv.inputs = {"x"};
  EXPECT_FALSE(backend_->supports(conv, g, kOpset, &why));
  EXPECT_FALSE(why.empty());
}

// Not a check: the bandwidth the kernels reach on large tensors (bytes read + written over the median of
// 20 timed runs after warm-up), printed for the GPU round's summary.
TEST_F(CudaKernels, BandwidthReport) {
  SKIP_WITHOUT_GPU();
  const int64_t n = int64_t{1} << 26;  // 64 Mi elements
  struct Case {
    const char* name;
    DType dtype;
    int kind;  // 0 relu, 1 add same shape, 2 add row broadcast, 3 cast to float16
  };
  const Case cases[] = {{"Relu float32", DType::kFloat32, 0}, {"Relu float16", DType::kFloat16, 0},
                        {"Gelu float16", DType::kFloat16, 4},
                        {"Add float32", DType::kFloat32, 1},  {"Add float16", DType::kFloat16, 1},
                        {"Add float16 [8192,8192]+[8192]", DType::kFloat16, 2},
                        {"Cast float32->float16", DType::kFloat32, 3}};
  for (const Case& c : cases) {
    const size_t es = dtype_size(c.dtype);
    Tensor x = random_tensor(c.dtype, {n}, -3, 3);
    void* dx = upload(x);
    void* db = upload(x);
    void* dy = poisoned(c.dtype, {n});
    double bytes = 0;
    auto launch = [&]() -> Status {
      switch (c.kind) {
        case 0: bytes = 2.0 * n * es; return cuda::launch_unary(cuda::UnaryOp::kRelu, c.dtype, dx, dy, n, {}, nullptr);
        case 4: bytes = 2.0 * n * es; return cuda::launch_unary(cuda::UnaryOp::kGeluErf, c.dtype, dx, dy, n, {}, nullptr);
        case 1: bytes = 3.0 * n * es; return cuda::launch_binary(cuda::BinaryOp::kAdd, c.dtype, dx, {n}, db, {n}, dy, {n}, nullptr);
        case 2: bytes = 2.0 * n * es; return cuda::launch_binary(cuda::BinaryOp::kAdd, c.dtype, dx, {8192, 8192}, db, {8192}, dy, {8192, 8192}, nullptr);
        default: bytes = n * (4.0 + 2.0); return cuda::launch_cast(c.dtype, dx, DType::kFloat16, dy, n, nullptr);
      }
    };
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(launch().ok());
    cudaEvent_t e0, e1;
    ASSERT_EQ(cudaEventCreate(&e0), cudaSuccess);
    ASSERT_EQ(cudaEventCreate(&e1), cudaSuccess);
    std::vector<float> ms;
    for (int i = 0; i < 20; ++i) {
      ASSERT_EQ(cudaEventRecord(e0, nullptr), cudaSuccess);
      ASSERT_TRUE(launch().ok());
      ASSERT_EQ(cudaEventRecord(e1, nullptr), cudaSuccess);
      ASSERT_EQ(cudaEventSynchronize(e1), cudaSuccess);
      float t = 0;
      ASSERT_EQ(cudaEventElapsedTime(&t, e0, e1), cudaSuccess);
      ms.push_back(t);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("bandwidth %-32s %8.3f ms  %7.1f GB/s\n", c.name, med, bytes / (med * 1e-3) / 1e9);
  }
}

// Runs everywhere: without a GPU the factory must fail with a message, never crash.
TEST(CudaBackend, FactoryFailsCleanlyWithoutDevice) {
  auto be = backends::make_cuda_backend();
  if (backends::cuda_device_available()) {
    EXPECT_TRUE(be.ok()) << be.status().to_string();
  } else {
    ASSERT_FALSE(be.ok());
    EXPECT_NE(be.status().message().find("no CUDA device"), std::string::npos) << be.status().message();
  }
}

}  // namespace
}  // namespace kiln

#endif  // KILN_HAVE_CUDA
