// The CUDA normalization layers (BatchNormalization, InstanceNormalization, LayerNormalization,
// GroupNormalization) against the CPU reference: shapes that take each kernel path (a group of lanes per
// row, a block per row, rows split in chunks; aligned vectors and odd lengths), every attribute, float32,
// float16 and bfloat16, parameters as initializers and as run-time inputs. The refusal tests need no GPU.
#ifdef KILN_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const DType kPrecisions[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

std::string trace(const Shape& s, DType p, const std::string& more = "") {
  return shape_to_string(s) + " " + dtype_name(p) + (more.empty() ? "" : " " + more);
}

// ---------------------------------------------------------------------------------------------------------
// BatchNormalization

LayerCase batch_norm_case(const Shape& x, DType precision, float eps, bool constant) {
  const int64_t c = x.size() > 1 ? x[1] : 1;
  LayerCase lc;
  lc.op = "BatchNormalization";
  lc.inputs = {random_float(x), random_float({c}), random_float({c}), random_float({c}),
               random_float({c}, 0.1f, 2.0f, /*random_sign=*/false)};
  lc.attrs["epsilon"] = float_attr_of(eps);
  lc.precision = precision;
  if (constant) lc.constant_inputs = {1, 2, 3, 4};
  return lc;
}

TEST(CudaNormalization, BatchNormShapesAndPrecisions) {
  KILN_SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {{2, 3},       {4, 5, 7},    {1, 3, 7, 9},   {2, 5, 4, 4},    {2, 3, 2, 3, 5},
                                     {3, 1, 8},    {1, 17, 33},  {2, 16, 32, 32}, {5, 7, 1, 1}, {1, 1, 1, 1}};
  for (DType p : kPrecisions)
    for (const Shape& s : shapes)
      for (bool constant : {false, true}) {
        SCOPED_TRACE(trace(s, p, constant ? "constant parameters" : "parameter inputs"));
        expect_layer_matches_reference(batch_norm_case(s, p, 1e-5f, constant));
      }
}

TEST(CudaNormalization, BatchNormEpsilonsAndOpsets) {
  KILN_SKIP_WITHOUT_GPU();
  for (float eps : {1e-3f, 0.5f})
    for (int opset : {9, 14, 15}) {
      SCOPED_TRACE("epsilon " + std::to_string(eps) + " opset " + std::to_string(opset));
      LayerCase lc = batch_norm_case({2, 6, 5, 3}, DType::kFloat32, eps, false);
      lc.opset = opset;
      expect_layer_matches_reference(lc);
    }
  // training_mode 0 stated explicitly is inference.
  LayerCase lc = batch_norm_case({2, 4, 9}, DType::kFloat16, 1e-5f, true);
  lc.attrs["training_mode"] = int_attr(0);
  expect_layer_matches_reference(lc);
}

// Opset 15 lets mean and var (T2), and scale and B (T1), be of another type than X: float32 statistics
// with float16 or bfloat16 data.
TEST(CudaNormalization, BatchNormFloat32ParametersWithLowPrecisionX) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : {DType::kFloat16, DType::kBFloat16})
    for (bool constant : {false, true}) {
      for (const std::set<size_t>& keep : {std::set<size_t>{3, 4}, std::set<size_t>{1, 2, 3, 4}}) {
        SCOPED_TRACE(trace({2, 8, 6, 6}, p, std::string(constant ? "constant" : "inputs") + " float32 params " +
                                                std::to_string(keep.size())));
        LayerCase lc = batch_norm_case({2, 8, 6, 6}, p, 1e-5f, constant);
        lc.opset = 15;
        lc.keep_fp32_inputs = keep;
        expect_layer_matches_reference(lc);
      }
    }
}

// ---------------------------------------------------------------------------------------------------------
// InstanceNormalization

TEST(CudaNormalization, InstanceNorm) {
  KILN_SKIP_WITHOUT_GPU();
  // Rows (one per (n, c)) of 5 to 16900 elements: lane groups, a block per row, split rows.
  const std::vector<Shape> shapes = {{2, 3, 5},      {1, 4, 6, 7},   {2, 3, 2, 3, 4}, {1, 2, 1},
                                     {3, 5, 1, 1},   {2, 4, 8, 16},  {2, 3, 40, 50},  {1, 2, 70, 70},
                                     {1, 3, 130, 130}};
  for (DType p : kPrecisions)
    for (const Shape& s : shapes)
      for (bool constant : {false, true}) {
        SCOPED_TRACE(trace(s, p, constant ? "constant parameters" : "parameter inputs"));
        LayerCase lc;
        lc.op = "InstanceNormalization";
        lc.inputs = {random_float(s), random_float({s[1]}), random_float({s[1]})};
        lc.precision = p;
        if (constant) lc.constant_inputs = {1, 2};
        expect_layer_matches_reference(lc);
      }
}

TEST(CudaNormalization, InstanceNormEpsilonAndManyLongRows) {
  KILN_SKIP_WITHOUT_GPU();
  for (float eps : {1e-2f, 1e-6f}) {
    SCOPED_TRACE("epsilon " + std::to_string(eps));
    LayerCase lc;
    lc.op = "InstanceNormalization";
    lc.inputs = {random_float({2, 3, 9, 11}), random_float({3}), random_float({3})};
    lc.attrs["epsilon"] = float_attr_of(eps);
    expect_layer_matches_reference(lc);
  }
  // 140 rows of 5120: enough rows for a block each.
  LayerCase lc;
  lc.op = "InstanceNormalization";
  lc.inputs = {random_float({2, 70, 64, 80}), random_float({70}), random_float({70})};
  expect_layer_matches_reference(lc);
}

// ---------------------------------------------------------------------------------------------------------
// LayerNormalization

LayerCase layer_norm_case(const Shape& x, int64_t axis, DType precision, bool bias, bool constant,
                          size_t num_outputs = 1) {
  const int64_t rank = static_cast<int64_t>(x.size());
  const int64_t a = axis < 0 ? axis + rank : axis;
  const Shape norm(x.begin() + a, x.end());
  LayerCase lc;
  lc.op = "LayerNormalization";
  lc.inputs = {random_float(x), random_float(norm)};
  if (bias) lc.inputs.push_back(random_float(norm));
  lc.attrs["axis"] = int_attr(axis);
  lc.num_outputs = num_outputs;
  lc.precision = precision;
  if (constant) lc.constant_inputs = {1, 2};
  return lc;
}

TEST(CudaNormalization, LayerNormShapesAxesAndPrecisions) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    Shape x;
    int64_t axis;
  };
  // Rows of 1 to 20000 elements: lane groups, blocks, split rows; multiples of the vector width and not.
  const std::vector<Case> cases = {{{7}, -1},           {{3, 5}, -1},         {{3, 5}, 0},         {{4, 768}, -1},
                                   {{2, 3, 768}, -1},   {{2, 3, 4, 5}, 1},    {{2, 3, 4, 5}, -2},  {{2, 3, 1, 4, 5}, 2},
                                   {{2, 3, 1, 4, 5}, -5}, {{6, 1023}, -1},    {{5, 1000}, -1},     {{3, 1}, -1},
                                   {{1, 1, 1}, -1},     {{9, 2000}, -1},      {{3, 5000}, -1},     {{2, 20000}, -1},
                                   {{5, 3, 13}, 1}};
  for (DType p : kPrecisions)
    for (const Case& c : cases)
      for (bool bias : {true, false}) {
        SCOPED_TRACE(trace(c.x, p, "axis " + std::to_string(c.axis) + (bias ? " with bias" : " no bias")));
        expect_layer_matches_reference(layer_norm_case(c.x, c.axis, p, bias, /*constant=*/bias));
      }
}

TEST(CudaNormalization, LayerNormParameterInputsAndManyLongRows) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kPrecisions) {
    SCOPED_TRACE(dtype_name(p));
    expect_layer_matches_reference(layer_norm_case({4, 2, 96}, -1, p, true, /*constant=*/false));
    expect_layer_matches_reference(layer_norm_case({3, 768}, -1, p, true, /*constant=*/false));  // prefetched
    expect_layer_matches_reference(layer_norm_case({140, 5000}, -1, p, true, /*constant=*/false));
    expect_layer_matches_reference(layer_norm_case({130, 16384}, -1, p, false, /*constant=*/true));
    // Thousands of rows of 768 (BERT's at batch 128 is 16384): the persistent kernel, the next row's loads
    // in flight; 744 leaves some lanes' last vector out of the row.
    expect_layer_matches_reference(layer_norm_case({3, 1500, 768}, -1, p, true, /*constant=*/true));
    expect_layer_matches_reference(layer_norm_case({4321, 744}, -1, p, true, /*constant=*/false));
  }
}

// Scale and B broadcast to the normalized shape.
TEST(CudaNormalization, LayerNormBroadcastParameters) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    Shape scale, bias;
  };
  const std::vector<Case> cases = {{{6}, {1, 6}}, {{4, 1}, {6}}, {{1}, {4, 6}}, {{1, 1}, {1}}};
  for (const Case& c : cases)
    for (bool constant : {false, true})
      for (DType p : {DType::kFloat32, DType::kFloat16}) {
        SCOPED_TRACE(shape_to_string(c.scale) + " " + shape_to_string(c.bias) + " " + dtype_name(p) +
                     (constant ? " constant" : ""));
        LayerCase lc;
        lc.op = "LayerNormalization";
        lc.inputs = {random_float({2, 3, 4, 6}), random_float(c.scale), random_float(c.bias)};
        lc.attrs["axis"] = int_attr(-2);
        lc.precision = p;
        if (constant) lc.constant_inputs = {1, 2};
        expect_layer_matches_reference(lc);
      }
}

// The optional Mean and InvStdDev outputs, on every kernel path.
TEST(CudaNormalization, LayerNormMeanAndInvStdDevOutputs) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    Shape x;
    int64_t axis;
  };
  const std::vector<Case> cases = {{{3, 7}, -1},    {{2, 3, 768}, -1}, {{4500, 768}, -1}, {{2, 5, 4, 3}, 1},
                                   {{9, 2000}, -1}, {{3, 5000}, -1},   {{2, 20000}, 1},    {{5}, 0}};
  for (DType p : kPrecisions)
    for (const Case& c : cases)
      for (size_t outputs : {2, 3}) {
        SCOPED_TRACE(trace(c.x, p, "axis " + std::to_string(c.axis) + " outputs " + std::to_string(outputs)));
        LayerCase lc = layer_norm_case(c.x, c.axis, p, true, true, outputs);
        lc.attrs["stash_type"] = int_attr(1);
        expect_layer_matches_reference(lc);
      }
}

TEST(CudaNormalization, LayerNormEpsilons) {
  KILN_SKIP_WITHOUT_GPU();
  for (float eps : {1e-2f, 1e-6f, 1.0f}) {
    SCOPED_TRACE("epsilon " + std::to_string(eps));
    LayerCase lc = layer_norm_case({6, 33}, -1, DType::kFloat32, true, false, 3);
    lc.attrs["epsilon"] = float_attr_of(eps);
    expect_layer_matches_reference(lc);
  }
}

// ---------------------------------------------------------------------------------------------------------
// GroupNormalization: opset 18 has a scale and bias per group, opset 21 per channel.

TEST(CudaNormalization, GroupNorm) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    Shape x;
    int64_t groups;
  };
  const std::vector<Case> cases = {{{2, 6, 5}, 3},     {{1, 8, 4, 4}, 1},    {{1, 8, 4, 4}, 2},  {{1, 8, 4, 4}, 8},
                                   {{2, 4, 3, 3, 3}, 2}, {{3, 6}, 3},        {{4, 16}, 2},       {{2, 8, 2, 2}, 2},
                                   {{2, 6, 7, 7}, 2},  {{1, 32, 64, 64}, 8}, {{2, 10, 9}, 5},    {{1, 4, 1, 1}, 4}};
  for (int opset : {18, 21})
    for (DType p : kPrecisions)
      for (const Case& c : cases)
        for (bool constant : {false, true}) {
          SCOPED_TRACE(trace(c.x, p, "groups " + std::to_string(c.groups) + " opset " + std::to_string(opset) +
                                         (constant ? " constant" : "")));
          const int64_t params = opset >= 21 ? c.x[1] : c.groups;
          LayerCase lc;
          lc.op = "GroupNormalization";
          lc.inputs = {random_float(c.x), random_float({params}), random_float({params})};
          lc.attrs["num_groups"] = int_attr(c.groups);
          lc.opset = opset;
          lc.precision = p;
          // float32: a group of two close values normalizes their difference, in which the rounding of their
          // mean (an ulp of an O(1) value) is amplified by up to 1 / sqrt(epsilon): about 2e-5 absolute, not
          // the harness's 1e-6 (an H100 run missed it by 4e-6 in 4 of 40 repeats).
          if (p == DType::kFloat32) lc.atol = 3e-5;
          if (constant) lc.constant_inputs = {1, 2};
          expect_layer_matches_reference(lc);
        }
}

TEST(CudaNormalization, GroupNormEpsilon) {
  KILN_SKIP_WITHOUT_GPU();
  for (float eps : {1e-2f, 1e-6f}) {
    SCOPED_TRACE("epsilon " + std::to_string(eps));
    LayerCase lc;
    lc.op = "GroupNormalization";
    lc.inputs = {random_float({2, 6, 5, 5}), random_float({6}), random_float({6})};
    lc.attrs["num_groups"] = int_attr(3);
    lc.attrs["epsilon"] = float_attr_of(eps);
    expect_layer_matches_reference(lc);
  }
}

// ---------------------------------------------------------------------------------------------------------
// What check() refuses (no GPU needed).

struct Desc {
  DType dtype;
  Shape shape;
  bool has_rank = true;
};

std::string check_of(const std::string& op, const std::vector<Desc>& inputs, std::map<std::string, ir::Attribute> attrs,
                     int opset, const std::vector<DType>& outputs = {DType::kFloat32}) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  EXPECT_NE(kind, nullptr) << op;
  if (kind == nullptr) return "no layer";
  ir::Node node;
  node.name = "n";
  node.op_type = op;
  node.attributes = std::move(attrs);
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = opset;
  for (const Desc& d : inputs) {
    cuda::TensorDesc t;
    t.dtype = d.dtype;
    t.has_rank = d.has_rank;
    t.shape = d.shape;
    spec.inputs.push_back(t);
    node.inputs.push_back(d.dtype == DType::kUndefined ? "" : "x");
  }
  for (DType o : outputs) {
    cuda::TensorDesc t;
    t.dtype = o;
    spec.outputs.push_back(t);
    node.outputs.push_back(o == DType::kUndefined ? "" : "y");
  }
  return kind->check(spec);
}

void expect_refused(const std::string& why, const std::string& mentions) {
  EXPECT_FALSE(why.empty());
  EXPECT_NE(why.find(mentions), std::string::npos) << why;
}

TEST(CudaNormalization, RefusesWhatItDoesNotSupport) {
  const DType f32 = DType::kFloat32;
  const std::vector<Desc> bn = {{f32, {2, 3, 4}}, {f32, {3}}, {f32, {3}}, {f32, {3}}, {f32, {3}}};
  EXPECT_EQ(check_of("BatchNormalization", bn, {}, 15), "");
  expect_refused(check_of("BatchNormalization", bn, {{"training_mode", int_attr(1)}}, 15), "training_mode");
  expect_refused(check_of("BatchNormalization", bn, {}, 15, {f32, f32, f32}), "training");
  expect_refused(check_of("BatchNormalization", bn, {{"spatial", int_attr(0)}}, 7), "spatial");
  std::vector<Desc> bn_int = bn;
  bn_int[0].dtype = DType::kInt32;
  expect_refused(check_of("BatchNormalization", bn_int, {}, 15), "int32");
  bn_int[0].dtype = DType::kFloat64;
  expect_refused(check_of("BatchNormalization", bn_int, {}, 15), "float64");
  std::vector<Desc> bn_int_mean = bn;
  bn_int_mean[3].dtype = DType::kInt64;
  expect_refused(check_of("BatchNormalization", bn_int_mean, {}, 15), "input_mean");

  const std::vector<Desc> in = {{f32, {2, 3, 4}}, {f32, {3}}, {f32, {3}}};
  EXPECT_EQ(check_of("InstanceNormalization", in, {}, 6), "");
  expect_refused(check_of("InstanceNormalization", {{DType::kInt32, {2, 3, 4}}, {f32, {3}}, {f32, {3}}}, {}, 6),
                 "int32");
  expect_refused(check_of("InstanceNormalization", {{f32, {2, 3}}, {f32, {3}}, {f32, {3}}}, {}, 6), "rank");

  EXPECT_EQ(check_of("LayerNormalization", {{f32, {2, 5}}, {f32, {5}}}, {}, 17), "");
  EXPECT_EQ(check_of("LayerNormalization", {{f32, {2, 5}}, {f32, {5}}, {f32, {5}}}, {}, 17, {f32, f32, f32}), "");
  expect_refused(check_of("LayerNormalization", {{DType::kInt64, {2, 5}}, {DType::kInt64, {5}}}, {}, 17), "int64");
  expect_refused(check_of("LayerNormalization", {{f32, {2, 5}}, {f32, {5}}}, {{"axis", int_attr(2)}}, 17), "axis");
  expect_refused(check_of("LayerNormalization", {{f32, {2, 5}}, {f32, {5}}}, {{"axis", int_attr(-3)}}, 17), "axis");
  expect_refused(check_of("LayerNormalization", {{f32, {2, 5}}, {f32, {5}}}, {}, 17, {f32, DType::kInt32}), "Mean");

  const std::vector<Desc> gn = {{f32, {2, 4, 3}}, {f32, {2}}, {f32, {2}}};
  EXPECT_EQ(check_of("GroupNormalization", gn, {{"num_groups", int_attr(2)}}, 18), "");
  expect_refused(check_of("GroupNormalization", gn, {}, 18), "num_groups");
  expect_refused(check_of("GroupNormalization", {{DType::kInt32, {2, 4, 3}}, {f32, {2}}, {f32, {2}}},
                          {{"num_groups", int_attr(2)}}, 18), "int32");

  // Unknown dims and ranks at check time are fine.
  EXPECT_EQ(check_of("LayerNormalization", {{f32, {}, false}, {f32, {-1}}}, {}, 17), "");
  EXPECT_EQ(check_of("InstanceNormalization",
                     {{DType::kFloat16, {-1, 3, -1, -1}}, {DType::kFloat16, {3}}, {DType::kFloat16, {3}}}, {}, 6),
            "");
}

// ---------------------------------------------------------------------------------------------------------
// Not a check: the bandwidth the row kernels reach on model shapes (bytes of x read and y written over the
// median of 20 timed runs after warm-up), printed for the GPU round's summary.

TEST(CudaNormalization, BandwidthReport) {
  KILN_SKIP_WITHOUT_GPU();
  struct Case {
    const char* name;
    const char* op;
    Shape x;
    DType dtype;
  };
  const Case cases[] = {
      {"LayerNorm [16384,768] float32", "LayerNormalization", {16384, 768}, DType::kFloat32},
      {"LayerNorm [16384,768] float16", "LayerNormalization", {16384, 768}, DType::kFloat16},
      {"LayerNorm [4096,4096] bfloat16", "LayerNormalization", {4096, 4096}, DType::kBFloat16},
      {"GroupNorm [2,320,64,64]/32 float16", "GroupNormalization", {2, 320, 64, 64}, DType::kFloat16},
      {"InstanceNorm [8,64,128,128] float32", "InstanceNormalization", {8, 64, 128, 128}, DType::kFloat32},
      {"BatchNorm [32,256,56,56] float16", "BatchNormalization", {32, 256, 56, 56}, DType::kFloat16},
  };
  const cuda::CudaHandles& h = detail::test_handles();
  for (const Case& c : cases) {
    const std::string op = c.op;
    const int64_t ch = c.x[1];
    ir::Node node;
    node.op_type = op;
    std::vector<Shape> shapes = {c.x};
    if (op == "LayerNormalization") shapes.insert(shapes.end(), {{c.x.back()}, {c.x.back()}});
    else if (op == "GroupNormalization") {
      node.attributes["num_groups"] = int_attr(32);
      shapes.insert(shapes.end(), {{ch}, {ch}});
    } else if (op == "InstanceNormalization") shapes.insert(shapes.end(), {{ch}, {ch}});
    else shapes.insert(shapes.end(), {{ch}, {ch}, {ch}, {ch}});
    cuda::LayerSpec spec;
    spec.node = &node;
    spec.opset = 21;
    std::vector<std::unique_ptr<detail::DeviceMem>> mem;
    std::vector<std::unique_ptr<Tensor>> hosts;
    std::vector<cuda::DeviceTensor> ins, outs;
    for (const Shape& s : shapes) {
      cuda::TensorDesc d;
      d.dtype = c.dtype;
      d.has_rank = true;
      d.shape = s;
      Tensor host = *cast_tensor(random_float(s, 0.5f, 1.0f, false), c.dtype);
      hosts.push_back(std::make_unique<Tensor>(host));
      if (spec.inputs.size() > 0) d.constant = hosts.back().get();  // parameters are initializers, as in models
      spec.inputs.push_back(d);
      mem.push_back(std::make_unique<detail::DeviceMem>(host.nbytes()));
      ASSERT_EQ(cudaMemcpy(mem.back()->p, host.raw_data(), host.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
      ins.push_back(cuda::DeviceTensor{mem.back()->p, c.dtype, s});
    }
    spec.outputs.push_back(spec.inputs[0]);
    mem.push_back(std::make_unique<detail::DeviceMem>(ins[0].nbytes()));
    outs.push_back(cuda::DeviceTensor{mem.back()->p, c.dtype, c.x});
    double med = 0;
    ASSERT_NO_FATAL_FAILURE(time_layer_ms(op, spec, ins, outs, h, &med));
    const double bytes = 2.0 * static_cast<double>(ins[0].nbytes());
    std::printf("bandwidth %-38s %8.3f ms  %7.1f GB/s\n", c.name, med, bytes / (med * 1e-3) / 1e9);
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
