// The CUDA index layers (src/backends/cuda/index_ops.cu) against the CPU reference: Concat (1, 2 and 70
// inputs: past the 64 pieces of one launch), Split (attribute, input, num_outputs, equal parts), Slice
// (opset-1 attributes, opset-10+ inputs, negative steps and axes, clamping), Gather and GatherElements
// (int32 / int64 indices, negative ones), Range (constant and device-read bounds, float and int types),
// over ranks 1 to 5, odd sizes and dtypes (float32, float16, bfloat16 through LayerCase::precision; int64,
// int32, int8, bool and float64 as raw data); and what check() refuses, which needs no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"
#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

// kAllTypes, via_precision, data_of, make_case and what: cuda_layer_harness.h.

// ---------------------------------------------------------------------------------------------------------
// Concat

void expect_concat(DType t, const std::vector<Shape>& shapes, int64_t axis) {
  SCOPED_TRACE(dtype_name(t) + " concat of " + std::to_string(shapes.size()) + " on axis " + std::to_string(axis) +
               ", first " + shape_to_string(shapes[0]));
  std::vector<Value> inputs;
  for (const Shape& s : shapes) inputs.emplace_back(data_of(t, s));
  expect_layer_matches_reference(make_case("Concat", inputs, {{"axis", int_attr(axis)}}, t));
}

TEST(CudaIndexOps, ConcatOneAndTwoInputs) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    expect_concat(t, {{3, 5}}, 1);
    expect_concat(t, {{7}, {4}}, 0);                            // rank 1
    expect_concat(t, {{2, 3, 5}, {2, 4, 5}}, 1);
    expect_concat(t, {{2, 3, 5}, {2, 3, 2}}, -1);
    expect_concat(t, {{1, 3, 8}, {1, 5, 8}}, -2);               // rows of 8: widened
    expect_concat(t, {{2, 1, 3, 1, 4}, {2, 1, 3, 1, 4}}, 3);    // rank 5, size-1 axis
    expect_concat(t, {{3, 2}, {0, 2}, {4, 2}}, 0);              // an empty input
    expect_concat(t, {{2, 12, 7, 64}, {2, 12, 5, 64}}, 2);      // a KV-cache append
  }
}

TEST(CudaIndexOps, ConcatSeventyInputs) {
  KILN_SKIP_WITHOUT_GPU();
  std::uniform_int_distribution<int64_t> len(1, 3);
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kInt64, DType::kBool}) {
    for (int64_t axis : {0, 1, -1}) {
      std::vector<Shape> shapes;
      for (int i = 0; i < 70; ++i) {
        Shape s{2, 3, 4};
        s[axis < 0 ? 2 : axis] = len(cuda_test_rng());
        shapes.push_back(s);
      }
      expect_concat(t, shapes, axis);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Split

void expect_split(LayerCase c, size_t outputs) {
  c.num_outputs = outputs;
  expect_layer_matches_reference(c);
}

TEST(CudaIndexOps, SplitAllWaysOfSizing) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    SCOPED_TRACE(dtype_name(t));
    // Opset 11: the split attribute; equal parts when absent.
    expect_split(make_case("Split", {data_of(t, {5, 7})}, {{"axis", int_attr(1)}, {"split", ints_attr({2, 1, 4})}}, t, 11), 3);
    expect_split(make_case("Split", {data_of(t, {6, 3})}, {}, t, 11), 3);
    // Opset 13: the split input, constant or not (the outputs' shapes say the sizes).
    LayerCase c = make_case("Split", {data_of(t, {2, 9, 3}), ints_tensor({4, 0, 5})}, {{"axis", int_attr(-2)}}, t, 13);
    expect_split(c, 3);
    c.constant_inputs = {1};
    expect_split(c, 3);
    // Opset 18: num_outputs, the last part smaller.
    expect_split(make_case("Split", {data_of(t, {3, 11})}, {{"axis", int_attr(-1)}, {"num_outputs", int_attr(4)}}, t, 18), 4);
    // Rank 1 and rank 5, and parts of 8 (widened).
    expect_split(make_case("Split", {data_of(t, {13})}, {{"split", ints_attr({6, 7})}}, t, 11), 2);
    expect_split(make_case("Split", {data_of(t, {2, 3, 1, 4, 5})}, {{"axis", int_attr(3)}}, t, 13), 2);
    expect_split(make_case("Split", {data_of(t, {3, 16, 8})}, {{"axis", int_attr(1)}, {"split", ints_attr({8, 8})}}, t, 11), 2);
    expect_split(make_case("Split", {data_of(t, {4, 5})}, {}, t, 13), 1);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Slice

LayerCase slice_case(DType t, const Shape& shape, std::vector<int64_t> starts, std::vector<int64_t> ends,
                     std::vector<int64_t> axes, std::vector<int64_t> steps) {
  std::vector<Value> inputs{data_of(t, shape), ints_tensor(starts), ints_tensor(ends)};
  inputs.push_back(axes.empty() ? Value::none() : Value(ints_tensor(axes)));
  if (!steps.empty()) inputs.emplace_back(ints_tensor(steps));
  LayerCase c = make_case("Slice", inputs, {}, t, 13);
  c.constant_inputs = {1, 2, 3, 4};
  return c;
}

TEST(CudaIndexOps, SliceInputsStepsAndClamping) {
  constexpr int64_t kBig = std::numeric_limits<int64_t>::max();
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    SCOPED_TRACE(dtype_name(t));
    expect_layer_matches_reference(slice_case(t, {10}, {2}, {9}, {}, {}));                    // contiguous: a copy
    expect_layer_matches_reference(slice_case(t, {10}, {-1}, {-kBig}, {}, {-1}));             // full reverse
    expect_layer_matches_reference(slice_case(t, {5, 7}, {1, -1}, {kBig, 0}, {}, {2, -2}));   // negative step, clamped end
    expect_layer_matches_reference(slice_case(t, {4, 6, 5}, {-1000, 1}, {1000, 5}, {-1, 1}, {})); // clamping, axes
    expect_layer_matches_reference(slice_case(t, {3, 4, 16}, {1, 0}, {3, 8}, {0, 2}, {}));    // rows of 8: widened
    expect_layer_matches_reference(slice_case(t, {2, 3, 4, 5, 6}, {0, 4, 1}, {kBig, -kBig, 6}, {1, 3, -1}, {2, -3, 2}));
    expect_layer_matches_reference(slice_case(t, {6, 4}, {4}, {2}, {0}, {}));                 // empty
    expect_layer_matches_reference(slice_case(t, {6, 4}, {2}, {3}, {0}, {kBig}));             // huge step
    // Only some of the optional inputs: steps without axes.
    expect_layer_matches_reference(slice_case(t, {5, 5}, {4, 3}, {0, -kBig}, {}, {-1, -2}));
  }
}

TEST(CudaIndexOps, SliceOpset1Attributes) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kInt64, DType::kBool}) {
    expect_layer_matches_reference(make_case(
        "Slice", {data_of(t, {4, 7, 3})},
        {{"starts", ints_attr({1, -5})}, {"ends", ints_attr({3, 1000})}, {"axes", ints_attr({0, -2})}}, t, 9));
    expect_layer_matches_reference(
        make_case("Slice", {data_of(t, {9})}, {{"starts", ints_attr({2})}, {"ends", ints_attr({-2})}}, t, 1));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Gather and GatherElements

void expect_gather(DType t, const Shape& data, int64_t axis, const Shape& ishape, DType index_type) {
  SCOPED_TRACE(what(t, data) + " axis " + std::to_string(axis) + " indices " + what(index_type, ishape));
  const int64_t r = static_cast<int64_t>(data.size());
  const int64_t dim = data[axis < 0 ? axis + r : axis];
  LayerCase c = make_case("Gather", {data_of(t, data), random_int(index_type, ishape, -dim, dim - 1)},
                          {{"axis", int_attr(axis)}}, t);
  expect_layer_matches_reference(c);
}

TEST(CudaIndexOps, GatherAxesAndIndexRanks) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    for (DType it : {DType::kInt64, DType::kInt32}) {
      expect_gather(t, {50, 64}, 0, {3, 7}, it);          // an embedding lookup (rows widened)
      expect_gather(t, {9}, 0, {5}, it);                  // rank 1
      expect_gather(t, {5, 7, 3}, 1, {4}, it);
      expect_gather(t, {5, 7, 3}, -1, {2, 2}, it);        // the innermost axis
      expect_gather(t, {5, 7, 3}, 0, {}, it);             // a scalar index: the axis goes
      expect_gather(t, {2, 3, 1, 4, 5}, 3, {3, 1}, it);   // rank 5
      expect_gather(t, {2, 3, 4}, -3, {0}, it);           // no indices: empty output
    }
  }
}

void expect_gather_elements(DType t, const Shape& data, int64_t axis, const Shape& ishape, DType index_type) {
  SCOPED_TRACE(what(t, data) + " axis " + std::to_string(axis) + " indices " + what(index_type, ishape));
  const int64_t r = static_cast<int64_t>(data.size());
  const int64_t dim = data[axis < 0 ? axis + r : axis];
  expect_layer_matches_reference(make_case(
      "GatherElements", {data_of(t, data), random_int(index_type, ishape, -dim, dim - 1)}, {{"axis", int_attr(axis)}}, t));
}

TEST(CudaIndexOps, GatherElementsAxesAndSmallerIndices) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    for (DType it : {DType::kInt64, DType::kInt32}) {
      expect_gather_elements(t, {7}, 0, {11}, it);                // rank 1, more indices than data
      expect_gather_elements(t, {4, 5}, 1, {4, 3}, it);
      expect_gather_elements(t, {4, 5}, 0, {2, 5}, it);
      expect_gather_elements(t, {3, 4, 5}, -1, {2, 3, 7}, it);    // smaller in the other dims
      expect_gather_elements(t, {2, 3, 1, 4, 5}, 2, {2, 3, 3, 4, 5}, it);  // rank 5
      expect_gather_elements(t, {3, 4}, 1, {3, 0}, it);           // empty
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Range

template <class T>
LayerCase range_case(DType t, T start, T limit, T delta, bool constant) {
  LayerCase c;
  c.op = "Range";
  c.opset = 11;
  c.inputs = {Tensor::scalar<T>(t, start), Tensor::scalar<T>(t, limit), Tensor::scalar<T>(t, delta)};
  if (constant) c.constant_inputs = {0, 1, 2};
  return c;
}

TEST(CudaIndexOps, RangeFloatAndIntTypes) {
  KILN_SKIP_WITHOUT_GPU();
  for (bool constant : {true, false}) {
    SCOPED_TRACE(constant ? "constant bounds" : "bounds read on the device");
    expect_layer_matches_reference(range_case<float>(DType::kFloat32, 0.5f, 37.3f, 0.7f, constant));
    expect_layer_matches_reference(range_case<float>(DType::kFloat32, 10.0f, -3.0f, -0.3f, constant));
    expect_layer_matches_reference(range_case<float>(DType::kFloat32, 1.0f, 1.0f, 1.0f, constant));  // empty
    expect_layer_matches_reference(range_case<float>(DType::kFloat32, 0.0f, 5000.0f, 0.1f, constant));
    expect_layer_matches_reference(range_case<double>(DType::kFloat64, -2.5, 19.0, 0.37, constant));
    expect_layer_matches_reference(range_case<int64_t>(DType::kInt64, -7, 100, 3, constant));
    expect_layer_matches_reference(range_case<int64_t>(DType::kInt64, 5, -20, -4, constant));
    expect_layer_matches_reference(range_case<int32_t>(DType::kInt32, 3, 1000, 7, constant));
    expect_layer_matches_reference(range_case<int16_t>(DType::kInt16, -9, 9, 2, constant));
    for (DType low : {DType::kFloat16, DType::kBFloat16}) {
      LayerCase c = range_case<float>(DType::kFloat32, -3.0f, 12.5f, 0.25f, constant);
      c.precision = low;
      expect_layer_matches_reference(c);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// check(): what the layers refuse, and what they accept with unknown dims. No GPU.

// desc and check_of: cuda_layer_harness.h.

void expect_refused(const std::string& why, const std::string& part) {
  EXPECT_NE(why.find(part), std::string::npos) << "wanted \"" << part << "\" in \"" << why << "\"";
}

TEST(CudaIndexOpsCheck, ConcatRefusals) {
  const cuda::TensorDesc a = desc(DType::kFloat32, {2, -1}), b = desc(DType::kFloat32, {2, 3});
  EXPECT_EQ(check_of("Concat", {a, b}, {desc(DType::kFloat32, {2, -1})}, {{"axis", int_attr(1)}}), "");
  expect_refused(check_of("Concat", {a, b}, {desc(DType::kFloat32, {2, -1})}), "missing the axis");
  expect_refused(check_of("Concat", {a, desc(DType::kInt64, {2, 3})}, {desc(DType::kFloat32, {2, -1})},
                          {{"axis", int_attr(1)}}),
                 "different dtypes");
  expect_refused(check_of("Concat", {a, b}, {desc(DType::kFloat32, {2, -1})}, {{"axis", int_attr(2)}}), "axis 2");
  expect_refused(check_of("Concat", {desc(DType::kString, {2}), desc(DType::kString, {2})},
                          {desc(DType::kString, {4})}, {{"axis", int_attr(0)}}),
                 "string");
}

TEST(CudaIndexOpsCheck, SplitAndSliceRefusals) {
  const cuda::TensorDesc x = desc(DType::kFloat16, {4, 6});
  // A split input that is not a constant is fine: the outputs' shapes give the sizes.
  EXPECT_EQ(check_of("Split", {x, desc(DType::kInt64, {2})}, {desc(DType::kFloat16, {4, -1}), desc(DType::kFloat16, {4, -1})},
                     {{"axis", int_attr(1)}}, 13),
            "");
  expect_refused(check_of("Split", {x}, {x}, {{"axis", int_attr(-3)}}, 13), "axis -3");

  const Tensor starts = ints_tensor({1}), ends = ints_tensor({3});
  const Tensor fstarts = Tensor::from_vector<float>(DType::kFloat32, {1}, {1.0f});
  const cuda::TensorDesc cs = desc(DType::kInt64, {1}, &starts), ce = desc(DType::kInt64, {1}, &ends);
  EXPECT_EQ(check_of("Slice", {x, cs, ce}, {x}, {}, 13), "");
  EXPECT_EQ(check_of("Slice", {x}, {x}, {{"starts", ints_attr({1})}, {"ends", ints_attr({2})}}, 9), "");
  expect_refused(check_of("Slice", {x, desc(DType::kInt64, {1}), ce}, {x}, {}, 13), "starts must be a constant");
  expect_refused(check_of("Slice", {x, cs, ce, desc(DType::kInt64, {1})}, {x}, {}, 13), "axes must be a constant");
  expect_refused(check_of("Slice", {x, cs, ce, cuda::TensorDesc(), desc(DType::kInt64, {1})}, {x}, {}, 13),
                 "steps must be a constant");
  expect_refused(check_of("Slice", {x, desc(DType::kFloat32, {1}, &fstarts), ce}, {x}, {}, 13), "int32 or int64");
  expect_refused(check_of("Slice", {x, cs}, {x}, {}, 13), "missing the ends");
  expect_refused(check_of("Slice", {x}, {x}, {{"starts", ints_attr({1})}}, 9), "missing starts or ends");
  expect_refused(check_of("Slice", {desc(DType::kFloat32, Shape(13, 1)), cs, ce}, {x}, {}, 13), "rank 13");
}

TEST(CudaIndexOpsCheck, GatherRefusals) {
  const cuda::TensorDesc x = desc(DType::kBFloat16, {5, -1});
  EXPECT_EQ(check_of("Gather", {x, desc(DType::kInt32, {-1})}, {desc(DType::kBFloat16, {-1, -1})}), "");
  expect_refused(check_of("Gather", {x, desc(DType::kFloat32, {3})}, {x}), "int32 or int64");
  expect_refused(check_of("Gather", {x, desc(DType::kInt64, {3})}, {x}, {{"axis", int_attr(2)}}), "axis 2");
  expect_refused(check_of("Gather", {desc(DType::kFloat32, {}), desc(DType::kInt64, {})}, {x}), "rank >= 1");
  EXPECT_EQ(check_of("GatherElements", {x, desc(DType::kInt64, {5, 2})}, {x}, {{"axis", int_attr(-1)}}), "");
  expect_refused(check_of("GatherElements", {x, desc(DType::kInt64, {5})}, {x}), "rank of data");
  expect_refused(check_of("GatherElements", {x, desc(DType::kInt8, {5, 2})}, {x}), "int32 or int64");
}

TEST(CudaIndexOpsCheck, RangeRefusals) {
  const cuda::TensorDesc f = desc(DType::kFloat32, {});
  EXPECT_EQ(check_of("Range", {f, f, f}, {desc(DType::kFloat32, {-1})}, {}, 11), "");
  const cuda::TensorDesc u = desc(DType::kUInt8, {});
  expect_refused(check_of("Range", {u, u, u}, {desc(DType::kUInt8, {-1})}, {}, 11), "uint8");
  expect_refused(check_of("Range", {f, desc(DType::kFloat64, {}), f}, {desc(DType::kFloat32, {-1})}, {}, 11), "one dtype");
}

TEST(CudaIndexOpsCheck, EveryOpIsRegistered) {
  for (const char* op : {"Concat", "Split", "Slice", "Gather", "GatherElements", "Range"}) {
    const cuda::LayerKind* kind = cuda::layer_table().find(op);
    ASSERT_NE(kind, nullptr) << op;
    EXPECT_FALSE(kind->output_is_view_of_input0) << op;
    EXPECT_TRUE(kind->lowers_to_fp16) << op;
  }
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
