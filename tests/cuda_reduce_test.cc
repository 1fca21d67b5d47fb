// The CUDA reduction layers (reduce.cu) against the CPU reference: the ten Reduce ops, ArgMax, ArgMin,
// CumSum and TopK, over shapes that reach each kernel path (short and long rows, columns, splits of long
// reductions, non-contiguous axes reduced in several passes, chunked scans and sorts), in float32,
// float16, bfloat16 and the integer types each op accepts. The check() refusals need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const DType kFloatTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

std::string where(const std::string& op, const Shape& shape, DType precision) {
  return op + " " + shape_to_string(shape) + " " + dtype_name(precision);
}

// Floats with small integer values: many exact ties, exact in every precision.
Tensor small_int_floats(const Shape& shape, int lo, int hi) {
  Tensor i = random_int(DType::kInt64, shape, lo, hi);
  Tensor f(DType::kFloat32, shape);
  for (int64_t k = 0; k < f.numel(); ++k) f.data<float>()[k] = static_cast<float>(i.data<int64_t>()[k]);
  return f;
}

Tensor cast_to(const Tensor& t, DType dtype) {
  auto r = cast_tensor(t, dtype);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return *r;
}

// ---------------------------------------------------------------------------------------------------------
// Reduce ops

struct ReduceShape {
  Shape shape;
  std::vector<int64_t> axes;  // empty: all axes
};

// Every kernel path: short rows (a sub-warp per row), warp rows, block rows (with 16-byte loads when the
// row length allows), split rows, columns, split columns, non-contiguous axes (several passes), size-1 dims.
const ReduceShape kReduceShapes[] = {
    {{7}, {0}},
    {{3, 5}, {1}},
    {{3, 5}, {0}},
    {{3, 5}, {-1}},
    {{2, 3, 5}, {1}},
    {{2, 3, 5}, {0, 2}},
    {{2, 3, 5}, {}},
    {{2, 3, 5}, {-2, -1}},
    {{2, 1, 3, 4, 5}, {1, 3}},
    {{2, 1, 3, 4, 5}, {0, -1}},
    {{2, 1, 3, 4, 5}, {1}},
    {{4, 33, 7}, {1}},
    {{6, 1000}, {1}},
    {{4, 4096}, {1}},
    {{3, 2050}, {-1}},
    {{2, 20000}, {1}},
    {{5000, 3}, {0}},
    {{64, 2048}, {}},
    {{300, 4, 300}, {0, 2}},
    {{3, 7, 5, 9}, {0, 2}},
    {{3, 7, 5, 9}, {1, 3}},
};

const char* kReduceOps[] = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                            "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"};

int axes_input_since(const std::string& op) { return op == "ReduceSum" ? 13 : 18; }

int64_t reduced_count(const ReduceShape& s) {
  const int64_t rank = static_cast<int64_t>(s.shape.size());
  if (s.axes.empty()) return shape_numel(s.shape);
  int64_t n = 1;
  for (int64_t a : s.axes) n *= s.shape[a < 0 ? a + rank : a];
  return n;
}

// Inputs whose results are well conditioned for the op (positive where a log is taken, near 1 for products).
Tensor reduce_input(const std::string& op, const Shape& shape) {
  if (op == "ReduceProd") return random_float(shape, 0.97f, 1.03f, true);
  if (op == "ReduceLogSum") return random_float(shape, 0.1f, 1.0f, false);
  return random_float(shape, 0.1f, 1.0f, true);
}

// Whether the op's result over `count` inputs stays inside float16's range (the reference's does not round).
bool fits_float16(const std::string& op, DType precision, int64_t count) {
  if (precision != DType::kFloat16) return true;
  if (op == "ReduceProd") return count <= 5000;
  if (op == "ReduceL1" || op == "ReduceSumSquare") return count <= 30000;
  return true;
}

// float32 accumulates in float32 on the GPU and in double in the reference.
void set_reduce_tolerance(LayerCase& c, int64_t count) {
  if (c.precision != DType::kFloat32) return;
  c.rtol = 1e-5 + (c.op == "ReduceProd" ? 2e-7 * static_cast<double>(count) : 0.0);
  c.atol = 1e-6 + 1e-8 * static_cast<double>(count);
}

LayerCase reduce_case(const std::string& op, const Tensor& x, const std::vector<int64_t>& axes, bool all_axes,
                      int keepdims, int opset) {
  LayerCase c;
  c.op = op;
  c.opset = opset;
  c.inputs = {x};
  c.attrs["keepdims"] = int_attr(keepdims);
  if (opset >= axes_input_since(op)) {
    if (!all_axes) {
      c.inputs.push_back(ints_tensor(axes));
      c.constant_inputs = {1};
    }
  } else if (!all_axes) {
    c.attrs["axes"] = ints_attr(axes);
  }
  return c;
}

TEST(CudaReduce, FloatOpsShapesAndPrecisions) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : kReduceOps) {
    for (const ReduceShape& s : kReduceShapes) {
      for (DType precision : kFloatTypes) {
        if (!fits_float16(op, precision, reduced_count(s))) continue;
        for (int keepdims : {0, 1}) {
          LayerCase c = reduce_case(op, reduce_input(op, s.shape), s.axes, s.axes.empty(), keepdims, 18);
          c.precision = precision;
          set_reduce_tolerance(c, reduced_count(s));
          SCOPED_TRACE(where(op, s.shape, precision) + " keepdims " + std::to_string(keepdims));
          expect_layer_matches_reference(c);
        }
      }
    }
  }
}

TEST(CudaReduce, AxesAsAttributeInOlderOpsets) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : kReduceOps) {
    for (int opset : {11, 13}) {
      if (opset >= axes_input_since(op)) continue;
      for (const ReduceShape& s : {ReduceShape{{4, 6, 5}, {1}}, ReduceShape{{4, 6, 5}, {0, -1}},
                                   ReduceShape{{4, 6, 5}, {}}}) {
        LayerCase c = reduce_case(op, reduce_input(op, s.shape), s.axes, s.axes.empty(), 1, opset);
        SCOPED_TRACE(where(op, s.shape, c.precision) + " opset " + std::to_string(opset));
        expect_layer_matches_reference(c);
      }
    }
  }
}

TEST(CudaReduce, IntegerOps) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : {"ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"}) {
    for (DType dtype : {DType::kInt32, DType::kInt64}) {
      for (const ReduceShape& s : kReduceShapes) {
        const bool prod = std::string(op) == "ReduceProd";
        for (int keepdims : {0, 1}) {
          // Products of many factors wrap; both sides wrap the same way, so they still compare exactly.
          LayerCase c = reduce_case(op, random_int(dtype, s.shape, prod ? -3 : -1000, prod ? 3 : 1000), s.axes,
                                    s.axes.empty(), keepdims, 18);
          SCOPED_TRACE(where(op, s.shape, dtype) + " keepdims " + std::to_string(keepdims));
          expect_layer_matches_reference(c);
        }
      }
    }
  }
}

TEST(CudaReduce, IntegerSumWrapsLikeTheReference) {
  KILN_SKIP_WITHOUT_GPU();
  Tensor x = random_int(DType::kInt32, {3, 1000}, 2000000, 2100000000);
  expect_layer_matches_reference(reduce_case("ReduceSum", x, {1}, false, 0, 18));
}

TEST(CudaReduce, EmptyAxes) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : kReduceOps) {
    for (int noop : {0, 1}) {
      for (bool empty_tensor : {false, true}) {
        const Shape shape{3, 4, 5};
        LayerCase c = reduce_case(op, reduce_input(op, shape), {}, true, 1, 18);
        c.attrs["noop_with_empty_axes"] = int_attr(noop);
        if (empty_tensor) {  // an axes input with no elements means the same as none
          c.inputs.push_back(ints_tensor({}));
          c.constant_inputs = {1};
        }
        set_reduce_tolerance(c, noop ? 1 : shape_numel(shape));
        SCOPED_TRACE(std::string(op) + " noop_with_empty_axes " + std::to_string(noop) +
                     (empty_tensor ? " (empty axes tensor)" : " (no axes input)"));
        expect_layer_matches_reference(c);
      }
    }
  }
}

TEST(CudaReduce, EmptyReductionsAndEmptyOutputs) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : kReduceOps) {
    for (DType precision : kFloatTypes) {
      // Reducing a zero-length axis gives each op's identity (NaN for Mean, -inf for LogSum).
      LayerCase c = reduce_case(op, Tensor(DType::kFloat32, {2, 0, 3}), {1}, false, 0, 18);
      c.precision = precision;
      SCOPED_TRACE(where(op, {2, 0, 3}, precision));
      expect_layer_matches_reference(c);
      LayerCase e = reduce_case(op, Tensor(DType::kFloat32, {0, 3}), {1}, false, 1, 18);
      e.precision = precision;
      expect_layer_matches_reference(e);
    }
  }
  LayerCase i = reduce_case("ReduceMax", Tensor(DType::kInt32, {2, 0}), {1}, false, 1, 18);
  expect_layer_matches_reference(i);
}

TEST(CudaReduce, ScalarInput) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : kReduceOps) {
    Tensor x = Tensor::scalar<float>(DType::kFloat32, 0.75f);
    LayerCase c = reduce_case(op, x, {}, true, 1, 18);
    SCOPED_TRACE(op);
    expect_layer_matches_reference(c);
  }
}

TEST(CudaReduce, MaxMinPropagateNaN) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : {"ReduceMax", "ReduceMin", "ReduceSum"}) {
    for (const ReduceShape& s : {ReduceShape{{4, 5000}, {1}}, ReduceShape{{5000, 4}, {0}}}) {
      Tensor x = random_float(s.shape);
      x.data<float>()[1234] = std::numeric_limits<float>::quiet_NaN();
      LayerCase c = reduce_case(op, x, s.axes, false, 0, 18);
      set_reduce_tolerance(c, 5000);
      SCOPED_TRACE(where(op, s.shape, c.precision));
      expect_layer_matches_reference(c);
    }
  }
}

TEST(CudaReduce, LargeFullReduction) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : {"ReduceSum", "ReduceMax", "ReduceL2", "ReduceLogSumExp"}) {
    LayerCase c = reduce_case(op, reduce_input(op, {1 << 21}), {}, true, 0, 18);
    set_reduce_tolerance(c, 1 << 21);
    SCOPED_TRACE(op);
    expect_layer_matches_reference(c);
  }
}

// ---------------------------------------------------------------------------------------------------------
// ArgMax, ArgMin

struct AxisShape {
  Shape shape;
  int64_t axis;
};
const AxisShape kArgShapes[] = {
    {{7}, 0},        {{3, 5}, 0},          {{3, 5}, 1},           {{3, 5}, -1},      {{2, 3, 4, 5}, 2},
    {{2, 1, 3}, 1},  {{2, 3, 4, 5}, -4},   {{3, 5000}, 1},        {{2, 20000}, -1},  {{5000, 3}, 0},
    {{4, 64, 33}, 1}, {{2, 3, 1, 4, 5}, 4},
};

TEST(CudaReduce, ArgMaxArgMin) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* op : {"ArgMax", "ArgMin"}) {
    for (const AxisShape& s : kArgShapes) {
      for (int keepdims : {0, 1}) {
        for (int last : {0, 1}) {
          for (bool ties : {false, true}) {
            Tensor x = ties ? small_int_floats(s.shape, -3, 3) : random_float(s.shape, 0.1f, 10.0f);
            for (DType precision : kFloatTypes) {
              LayerCase c;
              c.op = op;
              c.opset = 13;
              c.inputs = {x};
              c.attrs = {{"axis", int_attr(s.axis)}, {"keepdims", int_attr(keepdims)},
                         {"select_last_index", int_attr(last)}};
              c.precision = precision;
              SCOPED_TRACE(where(op, s.shape, precision) + " axis " + std::to_string(s.axis) + " keepdims " +
                           std::to_string(keepdims) + " select_last_index " + std::to_string(last) +
                           (ties ? " ties" : ""));
              expect_layer_matches_reference(c);
            }
            for (DType dtype : {DType::kInt32, DType::kInt64}) {
              LayerCase c;
              c.op = op;
              c.opset = 13;
              c.inputs = {cast_to(small_int_floats(s.shape, ties ? -3 : -100000, ties ? 3 : 100000), dtype)};
              c.attrs = {{"axis", int_attr(s.axis)}, {"keepdims", int_attr(keepdims)},
                         {"select_last_index", int_attr(last)}};
              SCOPED_TRACE(where(op, s.shape, dtype) + " axis " + std::to_string(s.axis));
              expect_layer_matches_reference(c);
            }
          }
        }
      }
    }
  }
}

TEST(CudaReduce, ArgMaxNaNIsLargest) {
  KILN_SKIP_WITHOUT_GPU();
  Tensor x = random_float({4, 300});
  x.data<float>()[17] = std::numeric_limits<float>::quiet_NaN();
  x.data<float>()[400] = std::numeric_limits<float>::quiet_NaN();
  x.data<float>()[450] = std::numeric_limits<float>::quiet_NaN();
  for (const char* op : {"ArgMax", "ArgMin"}) {
    for (int last : {0, 1}) {
      LayerCase c;
      c.op = op;
      c.inputs = {x};
      c.attrs = {{"axis", int_attr(1)}, {"select_last_index", int_attr(last)}};
      expect_layer_matches_reference(c);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// CumSum

const AxisShape kScanShapes[] = {
    {{7}, 0},         {{3, 5}, 1},      {{3, 5}, 0},       {{3, 5}, -1},       {{2, 3, 4}, 1},
    {{2, 1, 3}, 1},   {{2, 3, 4, 5, 6}, 3}, {{5, 300}, 1},  {{4, 10000}, 1},    {{1, 100000}, -1},
    {{3, 3000, 2}, 1}, {{129, 37}, -1},
};

TEST(CudaReduce, CumSum) {
  KILN_SKIP_WITHOUT_GPU();
  for (const AxisShape& s : kScanShapes) {
    for (int exclusive : {0, 1}) {
      for (int reverse : {0, 1}) {
        const std::string mode = " axis " + std::to_string(s.axis) + " exclusive " + std::to_string(exclusive) +
                                 " reverse " + std::to_string(reverse);
        for (DType precision : kFloatTypes) {
          LayerCase c;
          c.op = "CumSum";
          c.opset = 14;
          c.inputs = {random_float(s.shape), ints_tensor({s.axis})};
          c.constant_inputs = {1};
          c.attrs = {{"exclusive", int_attr(exclusive)}, {"reverse", int_attr(reverse)}};
          c.precision = precision;
          if (precision == DType::kFloat32) {
            // Both add in float32, the reference in sequence and the GPU in chunks and trees: partial sums
            // (up to about sqrt(length)) differ by a few ulps.
            c.rtol = 1e-5;
            const int64_t rank = static_cast<int64_t>(s.shape.size());
            c.atol = 1e-6 + 5e-8 * static_cast<double>(s.shape[s.axis < 0 ? s.axis + rank : s.axis]);
          }
          SCOPED_TRACE(where("CumSum", s.shape, precision) + mode);
          expect_layer_matches_reference(c);
        }
        for (DType dtype : {DType::kInt32, DType::kInt64}) {
          for (DType axis_dtype : {DType::kInt32, DType::kInt64}) {
            LayerCase c;
            c.op = "CumSum";
            c.opset = 14;
            c.inputs = {random_int(dtype, s.shape, -1000, 1000), cast_to(ints_tensor({s.axis}), axis_dtype)};
            c.constant_inputs = {1};
            c.attrs = {{"exclusive", int_attr(exclusive)}, {"reverse", int_attr(reverse)}};
            SCOPED_TRACE(where("CumSum", s.shape, dtype) + mode + " axis as " + dtype_name(axis_dtype));
            expect_layer_matches_reference(c);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// TopK

struct TopkShape {
  Shape shape;
  int64_t axis;
  int64_t k;
};
// The register-list select (k <= 32, <= 64, <= 128) and the bitonic sort (larger k), each on rows done by
// one block and on rows cut into chunks whose winners are selected again (once or twice); k = 1, k = the
// axis length, k = 0, axes other than the last.
const TopkShape kTopkShapes[] = {
    {{7}, 0, 3},           {{3, 5}, 1, 1},         {{3, 5}, 1, 5},        {{3, 5}, 0, 2},
    {{3, 5}, -1, 0},       {{2, 3, 4, 5}, 2, 2},   {{2, 1, 3}, 1, 1},     {{4, 100}, -1, 10},
    {{2, 4096}, 1, 64},    {{3, 5000}, 1, 50},     {{5, 3000, 2}, 1, 7},  {{2, 33, 3}, 1, 33},
    {{1, 70000}, -1, 5},   {{4, 2000}, 1, 64},     {{4, 3000}, -1, 100},  {{2, 130000}, 1, 128},
    {{3, 300}, 1, 200},    {{2, 4096}, 1, 4096},   {{2, 5000}, 1, 129},   {{2, 20000}, 1, 1024},
    {{3, 700, 2}, 1, 300},
};

LayerCase topk_case(const Tensor& x, const TopkShape& s, int largest, int sorted) {
  LayerCase c;
  c.op = "TopK";
  c.opset = 11;
  c.num_outputs = 2;
  c.inputs = {x, ints_tensor({s.k})};
  c.constant_inputs = {1};
  c.attrs = {{"axis", int_attr(s.axis)}, {"largest", int_attr(largest)}, {"sorted", int_attr(sorted)}};
  return c;
}

TEST(CudaReduce, TopK) {
  KILN_SKIP_WITHOUT_GPU();
  for (const TopkShape& s : kTopkShapes) {
    for (int largest : {0, 1}) {
      for (bool ties : {false, true}) {
        const std::string mode = " axis " + std::to_string(s.axis) + " k " + std::to_string(s.k) + " largest " +
                                 std::to_string(largest) + (ties ? " ties" : "");
        // Rounding to float16 / bfloat16 makes more ties; the reference sees the rounded values too.
        Tensor x = ties ? small_int_floats(s.shape, -4, 4) : random_float(s.shape, 0.1f, 100.0f);
        for (DType precision : kFloatTypes) {
          LayerCase c = topk_case(x, s, largest, 1);
          c.precision = precision;
          SCOPED_TRACE(where("TopK", s.shape, precision) + mode);
          expect_layer_matches_reference(c);
        }
        for (DType dtype : {DType::kInt32, DType::kInt64}) {
          LayerCase c = topk_case(cast_to(small_int_floats(s.shape, ties ? -4 : -1000000, ties ? 4 : 1000000), dtype),
                                  s, largest, 1);
          SCOPED_TRACE(where("TopK", s.shape, dtype) + mode);
          expect_layer_matches_reference(c);
        }
      }
    }
  }
}

TEST(CudaReduce, TopKTiesInRoundedPrecisions) {
  KILN_SKIP_WITHOUT_GPU();
  // Values that float16 and bfloat16 round together: ties appear after rounding; indices still match.
  for (DType precision : {DType::kFloat16, DType::kBFloat16}) {
    for (const TopkShape& s : {TopkShape{{4, 1000}, 1, 20}, TopkShape{{2, 9000}, 1, 100}}) {
      LayerCase c = topk_case(random_float(s.shape, 0.1f, 4.0f), s, 1, 1);
      c.precision = precision;
      SCOPED_TRACE(where("TopK", s.shape, precision));
      expect_layer_matches_reference(c);
    }
  }
}

TEST(CudaReduce, TopKUnsortedAttributeAndOpset1) {
  KILN_SKIP_WITHOUT_GPU();
  // sorted = 0 allows any order; the layer (like the reference) always sorts.
  const TopkShape s{{6, 50}, 1, 8};
  expect_layer_matches_reference(topk_case(random_float(s.shape), s, 1, 0));
  LayerCase c;
  c.op = "TopK";
  c.opset = 1;
  c.num_outputs = 2;
  c.inputs = {random_float({6, 50})};
  c.attrs = {{"axis", int_attr(1)}, {"k", int_attr(4)}};
  expect_layer_matches_reference(c);
}

TEST(CudaReduce, TopKWithNaN) {
  KILN_SKIP_WITHOUT_GPU();
  Tensor x = random_float({3, 40});
  x.data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  x.data<float>()[7] = std::numeric_limits<float>::quiet_NaN();
  x.data<float>()[90] = std::numeric_limits<float>::quiet_NaN();
  for (int largest : {0, 1}) expect_layer_matches_reference(topk_case(x, TopkShape{{3, 40}, 1, 40}, largest, 1));
}

// ---------------------------------------------------------------------------------------------------------
// Refusals (no GPU needed)

cuda::TensorDesc desc(DType dtype, const Shape& shape, const Tensor* constant = nullptr) {
  cuda::TensorDesc d;
  d.dtype = dtype;
  d.has_rank = true;
  d.shape = shape;
  d.constant = constant;
  return d;
}

std::string check_of(const std::string& op, int opset, const std::vector<cuda::TensorDesc>& inputs,
                     const std::map<std::string, ir::Attribute>& attrs = {}) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  if (kind == nullptr) return "no layer for " + op;
  ir::Node node;
  node.name = "n";
  node.op_type = op;
  node.attributes = attrs;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = opset;
  spec.inputs = inputs;
  spec.outputs = {desc(inputs[0].dtype, {})};
  return kind->check(spec);
}

void expect_refused(const std::string& why, const std::string& part) {
  EXPECT_NE(why.find(part), std::string::npos) << "reason: '" << why << "', expected it to say '" << part << "'";
}

TEST(CudaReduceCheck, EveryOpIsRegistered) {
  for (const char* op : kReduceOps) EXPECT_NE(cuda::layer_table().find(op), nullptr) << op;
  for (const char* op : {"ArgMax", "ArgMin", "CumSum", "TopK"}) EXPECT_NE(cuda::layer_table().find(op), nullptr) << op;
}

TEST(CudaReduceCheck, AcceptsWhatItRuns) {
  const Tensor axes = ints_tensor({1});
  EXPECT_EQ(check_of("ReduceSum", 13, {desc(DType::kFloat16, {2, 3}), desc(DType::kInt64, {1}, &axes)}), "");
  EXPECT_EQ(check_of("ReduceMean", 11, {desc(DType::kFloat32, {2, 3})}, {{"axes", ints_attr({1})}}), "");
  EXPECT_EQ(check_of("ReduceMax", 18, {desc(DType::kInt64, {-1, 3}), desc(DType::kInt64, {1}, &axes)}), "");
  cuda::TensorDesc unranked;
  unranked.dtype = DType::kBFloat16;
  EXPECT_EQ(check_of("ReduceL2", 18, {unranked, desc(DType::kInt64, {1}, &axes)}), "");
  EXPECT_EQ(check_of("ArgMin", 13, {desc(DType::kInt32, {4, -1})}, {{"axis", int_attr(-1)}}), "");
  EXPECT_EQ(check_of("CumSum", 14, {desc(DType::kFloat32, {4, 5}), desc(DType::kInt64, {1}, &axes)}), "");
  const Tensor k = ints_tensor({3});
  EXPECT_EQ(check_of("TopK", 11, {desc(DType::kFloat32, {4, 100000}), desc(DType::kInt64, {1}, &k)}), "");
}

TEST(CudaReduceCheck, RefusesAxesThatAreNotConstant) {
  for (const char* op : kReduceOps) {
    const int opset = std::string(op) == "ReduceSum" ? 13 : 18;
    expect_refused(check_of(op, opset, {desc(DType::kFloat32, {2, 3}), desc(DType::kInt64, {1})}),
                   "axes must be a constant");
  }
  expect_refused(check_of("CumSum", 14, {desc(DType::kFloat32, {2, 3}), desc(DType::kInt64, {})}),
                 "axis must be a constant");
  expect_refused(check_of("TopK", 11, {desc(DType::kFloat32, {2, 3}), desc(DType::kInt64, {1})}),
                 "K must be a constant");
}

TEST(CudaReduceCheck, RefusesDtypesAndBadAxes) {
  const Tensor axes = ints_tensor({1});
  for (const char* op : {"ReduceMean", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
    expect_refused(check_of(op, 18, {desc(DType::kInt32, {2, 3}), desc(DType::kInt64, {1}, &axes)}),
                   "dtype int32 is not implemented");
  expect_refused(check_of("ReduceSum", 18, {desc(DType::kFloat64, {2, 3}), desc(DType::kInt64, {1}, &axes)}),
                 "is not implemented");
  expect_refused(check_of("ReduceMax", 18, {desc(DType::kBool, {2, 3}), desc(DType::kInt64, {1}, &axes)}),
                 "is not implemented");
  expect_refused(check_of("ArgMax", 13, {desc(DType::kUInt8, {2, 3})}), "is not implemented");
  expect_refused(check_of("CumSum", 14, {desc(DType::kFloat64, {2, 3}), desc(DType::kInt64, {1}, &axes)}),
                 "is not implemented");
  const Tensor far = ints_tensor({3});
  expect_refused(check_of("ReduceSum", 13, {desc(DType::kFloat32, {2, 3}), desc(DType::kInt64, {1}, &far)}),
                 "out of range");
  const Tensor twice = ints_tensor({1, -1});
  expect_refused(check_of("ReduceSum", 13, {desc(DType::kFloat32, {2, 3}), desc(DType::kInt64, {2}, &twice)}),
                 "repeated");
  expect_refused(check_of("ArgMax", 13, {desc(DType::kFloat32, {})}), "rank-0");
  expect_refused(check_of("ArgMax", 13, {desc(DType::kFloat32, {2, 3})}, {{"axis", int_attr(2)}}), "out of range");
}

TEST(CudaReduceCheck, RefusesTopKItCannotSort) {
  const Tensor big_k = ints_tensor({2000});
  expect_refused(check_of("TopK", 11, {desc(DType::kFloat32, {2, 10000}), desc(DType::kInt64, {1}, &big_k)}),
                 "is not implemented");
  // The same k on a row short enough to sort whole is fine.
  EXPECT_EQ(check_of("TopK", 11, {desc(DType::kFloat32, {2, 4000}), desc(DType::kInt64, {1}, &big_k)}), "");
  const Tensor k = ints_tensor({9});
  expect_refused(check_of("TopK", 11, {desc(DType::kFloat32, {2, 5}), desc(DType::kInt64, {1}, &k)}), "larger than");
  expect_refused(check_of("TopK", 1, {desc(DType::kFloat32, {2, 5})}), "k must be given");
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
