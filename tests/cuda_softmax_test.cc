// The CUDA Softmax and LogSoftmax layers against the CPU reference: the innermost axis on every kernel path
// (a group of lanes per row, a block per row, rows split in chunks; aligned vectors and odd lengths), other
// axes (the strided kernel), the opset < 13 semantics (2-D at axis, default 1), float32, float16 and
// bfloat16, and infinities. The refusal tests need no GPU.
#ifdef KILN_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const DType kPrecisions[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
const char* const kOps[] = {"Softmax", "LogSoftmax"};

LayerCase softmax_case(const std::string& op, const Shape& x, int opset, DType precision, bool has_axis,
                       int64_t axis = 0, float lo = 0.1f, float hi = 4.0f) {
  LayerCase lc;
  lc.op = op;
  lc.inputs = {random_float(x, lo, hi)};
  if (has_axis) lc.attrs["axis"] = int_attr(axis);
  lc.opset = opset;
  lc.precision = precision;
  return lc;
}

std::string trace(const std::string& op, const Shape& s, DType p, const std::string& more) {
  return op + " " + shape_to_string(s) + " " + dtype_name(p) + " " + more;
}

// The last axis: short rows (7) to long ones (100000), BERT's attention rows, odd lengths.
TEST(CudaSoftmax, LastAxis) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {{7},       {3, 7},       {1, 1},       {4, 1},        {2, 3, 128},    {96, 128},
                                     {4, 5, 33}, {6, 1023},   {5, 1000},    {2, 3, 1024},  {9, 2000},      {7, 5000},
                                     {140, 5000}, {3, 16384}, {2, 20000},   {1, 100000},   {2, 2, 3, 4, 5}};
  for (const char* op : kOps)
    for (DType p : kPrecisions)
      for (const Shape& s : shapes) {
        SCOPED_TRACE(trace(op, s, p, "axis -1"));
        expect_layer_matches_reference(softmax_case(op, s, 13, p, false));
      }
}

// Wider inputs: the max subtraction matters.
TEST(CudaSoftmax, LargeInputs) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : kOps)
    for (const Shape& s : std::vector<Shape>{{5, 37}, {4, 3000}, {2, 40000}}) {
      SCOPED_TRACE(trace(op, s, DType::kFloat32, "inputs up to 60"));
      expect_layer_matches_reference(softmax_case(op, s, 13, DType::kFloat32, false, 0, 1.0f, 60.0f));
    }
}

// Axes other than the last one: the strided kernel (and the row kernel where the trailing dims are 1).
TEST(CudaSoftmax, OtherAxes) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    Shape x;
    int64_t axis;
  };
  const std::vector<Case> cases = {{{5, 6, 7}, 0},     {{5, 6, 7}, 1},     {{5, 6, 7}, -2},     {{5, 6, 7}, -3},
                                   {{2, 3, 4, 5}, 0},  {{2, 3, 4, 5}, 1},  {{2, 3, 4, 5}, 2},   {{2, 3, 4, 5}, -2},
                                   {{2, 3, 1, 4, 5}, 2}, {{2, 3, 1, 4, 5}, -4}, {{3, 4, 1}, 1},  {{700, 3, 4}, 0},
                                   {{3, 2000, 40}, 1}, {{16, 3, 1000}, 1}, {{1, 1, 1}, 0}};
  for (const char* op : kOps)
    for (DType p : kPrecisions)
      for (const Case& c : cases) {
        SCOPED_TRACE(trace(op, c.x, p, "axis " + std::to_string(c.axis)));
        expect_layer_matches_reference(softmax_case(op, c.x, 13, p, true, c.axis));
      }
}

// Opset < 13: the input is coerced to 2-D at axis (default 1).
TEST(CudaSoftmax, Opset11CoercesTo2D) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    Shape x;
    bool has_axis;
    int64_t axis;
  };
  const std::vector<Case> cases = {{{2, 3, 4, 5}, false, 0}, {{2, 3, 4, 5}, true, 2}, {{2, 3, 4, 5}, true, -1},
                                   {{2, 3, 4, 5}, true, 0},  {{3, 7}, false, 0},      {{4, 3, 50, 50}, false, 0},
                                   {{6, 5}, true, -2},       {{2, 2, 2, 3, 5}, true, 3}};
  for (int opset : {1, 11})
    for (const char* op : kOps)
      for (DType p : kPrecisions)
        for (const Case& c : cases) {
          SCOPED_TRACE(trace(
              op, c.x, p,
              "opset " + std::to_string(opset) + (c.has_axis ? " axis " + std::to_string(c.axis) : " default axis")));
          expect_layer_matches_reference(softmax_case(op, c.x, opset, p, c.has_axis, c.axis));
        }
  // Opset 13 on the same input differs: one axis, default -1.
  for (const char* op : kOps) {
    SCOPED_TRACE(std::string(op) + " opset 13 default axis");
    expect_layer_matches_reference(softmax_case(op, {2, 3, 4, 5}, 13, DType::kFloat32, false));
  }
}

// -inf entries (masked attention), a row of -inf only (NaN, as the reference gives), +inf; on each path.
TEST(CudaSoftmax, Infinities) {
  KILN_SKIP_WITHOUT_GPU();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    Shape x;
    int64_t axis;
  };
  const std::vector<Case> cases = {{{4, 9}, -1}, {{4, 2000}, -1}, {{4, 9000}, -1}, {{4, 9, 3}, 1}};
  for (const char* op : kOps)
    for (DType p : {DType::kFloat32, DType::kFloat16})
      for (const Case& c : cases) {
        SCOPED_TRACE(trace(op, c.x, p, "axis " + std::to_string(c.axis)));
        LayerCase lc = softmax_case(op, c.x, 13, p, true, c.axis);
        Tensor x = random_float(c.x, 0.1f, 4.0f);
        float* d = x.data<float>();
        const int64_t n = c.x[1], inner = c.x.size() > 2 ? c.x[2] : 1;
        auto at = [&](int64_t o, int64_t k, int64_t i) -> float& { return d[(o * n + k) * inner + i]; };
        for (int64_t i = 0; i < inner; ++i) {
          for (int64_t k = 0; k < n; k += 3) at(0, k, i) = -inf;  // some -inf
          for (int64_t k = 0; k < n; ++k) at(1, k, i) = -inf;     // all -inf
          at(2, n / 2, i) = inf;                                  // one +inf
        }
        lc.inputs = {Value(x)};
        expect_layer_matches_reference(lc);
      }
}

// ---------------------------------------------------------------------------------------------------------
// What check() refuses (no GPU needed).

std::string check_of(const std::string& op, DType dtype, const Shape& shape, std::map<std::string, ir::Attribute> attrs,
                     int opset, bool has_rank = true) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  EXPECT_NE(kind, nullptr) << op;
  if (kind == nullptr) return "no layer";
  ir::Node node;
  node.op_type = op;
  node.inputs = {"x"};
  node.outputs = {"y"};
  node.attributes = std::move(attrs);
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = opset;
  cuda::TensorDesc d;
  d.dtype = dtype;
  d.has_rank = has_rank;
  d.shape = shape;
  spec.inputs = {d};
  spec.outputs = {d};
  return kind->check(spec);
}

void expect_refused(const std::string& why, const std::string& mentions) {
  EXPECT_FALSE(why.empty());
  EXPECT_NE(why.find(mentions), std::string::npos) << why;
}

TEST(CudaSoftmax, RefusesWhatItDoesNotSupport) {
  for (const char* op : kOps) {
    SCOPED_TRACE(op);
    EXPECT_EQ(check_of(op, DType::kFloat32, {2, 3}, {}, 13), "");
    EXPECT_EQ(check_of(op, DType::kBFloat16, {-1, -1, 7}, {{"axis", int_attr(-3)}}, 13), "");
    EXPECT_EQ(check_of(op, DType::kFloat16, {}, {{"axis", int_attr(5)}}, 13, /*has_rank=*/false), "");
    expect_refused(check_of(op, DType::kInt32, {2, 3}, {}, 13), "int32");
    expect_refused(check_of(op, DType::kInt64, {2, 3}, {}, 13), "int64");
    expect_refused(check_of(op, DType::kFloat64, {2, 3}, {}, 13), "float64");
    expect_refused(check_of(op, DType::kFloat32, {}, {}, 13), "scalar");
    expect_refused(check_of(op, DType::kFloat32, {2, 3}, {{"axis", int_attr(2)}}, 13), "axis");
    expect_refused(check_of(op, DType::kFloat32, {2, 3}, {{"axis", int_attr(-3)}}, 11), "axis");
    // The opset < 13 default axis is 1: out of range for rank 1.
    expect_refused(check_of(op, DType::kFloat32, {5}, {}, 11), "axis");
  }
}

// ---------------------------------------------------------------------------------------------------------
// Not a check: the bandwidth on model shapes (bytes read and written over the median of 20 timed runs
// after warm-up), printed for the GPU round's summary.

TEST(CudaSoftmax, BandwidthReport) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    const char* name;
    Shape x;
    DType dtype;
    int64_t axis;
  };
  const Case cases[] = {
      {"Softmax [B*12*128,128] B=32 float16", {32 * 12 * 128, 128}, DType::kFloat16, -1},
      {"Softmax [B*12*128,128] B=32 float32", {32 * 12 * 128, 128}, DType::kFloat32, -1},
      {"Softmax [8*32*512,512] float16", {8 * 32 * 512, 512}, DType::kFloat16, -1},
      {"Softmax [64,32000] float32", {64, 32000}, DType::kFloat32, -1},
      {"Softmax [4,1048576] float32", {4, 1 << 20}, DType::kFloat32, -1},
      {"Softmax [64,1000,256] axis 1 float32", {64, 1000, 256}, DType::kFloat32, 1},
  };
  const cuda::CudaHandles& h = detail::test_handles();
  for (const Case& c : cases) {
    ir::Node node;
    node.op_type = "Softmax";
    node.attributes["axis"] = int_attr(c.axis);
    cuda::LayerSpec spec;
    spec.node = &node;
    spec.opset = 13;
    cuda::TensorDesc d;
    d.dtype = c.dtype;
    d.has_rank = true;
    d.shape = c.x;
    spec.inputs = {d};
    spec.outputs = {d};
    Tensor host = *cast_tensor(random_float(c.x, 0.1f, 4.0f), c.dtype);
    detail::DeviceMem dx(host.nbytes()), dy(host.nbytes());
    ASSERT_EQ(cudaMemcpy(dx.p, host.raw_data(), host.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
    const std::vector<cuda::DeviceTensor> ins = {{dx.p, c.dtype, c.x}}, outs = {{dy.p, c.dtype, c.x}};
    double med = 0;
    ASSERT_NO_FATAL_FAILURE(time_layer_ms("Softmax", spec, ins, outs, h, &med));
    std::printf("bandwidth %-38s %8.3f ms  %7.1f GB/s\n", c.name, med, 2.0 * host.nbytes() / (med * 1e-3) / 1e9);
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
