// The CUDA Resize, Upsample and Pad layers against the CPU reference. Resize: nearest (every nearest_mode)
// and linear (1-D to 3-D) under every coordinate_transformation_mode, scales and sizes (constant, and sizes
// computed), axes, keep_aspect_ratio_policy, exclude_outside, tf_crop_and_resize's roi and
// extrapolation_value, Resize-10, Resize-11's empty scales, Upsample-7 and -9, integer data. Pad: every
// mode at ranks 1 to 5 with negative pads, pads wider than the input, axes, constant values from attribute,
// constant input and computed input, dtypes of 1, 2, 4 and 8 bytes. Float data in float32, float16 and
// bfloat16. The refusals of check() need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

const DType kFloatTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
const char* kNearestModes[] = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"};
const char* kCoordModes[] = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"};

using Attrs = std::map<std::string, ir::Attribute>;

Tensor floats_tensor(const std::vector<float>& v) {
  return Tensor::from_vector<float>(DType::kFloat32, {static_cast<int64_t>(v.size())}, v);
}

ir::Attribute floats_attr(std::vector<float> v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kFloats;
  a.floats = std::move(v);
  return a;
}

// Resize-11+ inputs (X, roi, scales, sizes), all but X constant; an empty vector omits the input.
LayerCase resize_case(Tensor x, Attrs attrs, const std::vector<float>& scales, const std::vector<int64_t>& sizes,
                      DType precision = DType::kFloat32, const std::vector<float>& roi = {}) {
  LayerCase c;
  c.op = "Resize";
  c.opset = 19;
  c.inputs = {x, roi.empty() ? Value::none() : Value(floats_tensor(roi)),
              scales.empty() ? Value::none() : Value(floats_tensor(scales))};
  if (!sizes.empty()) c.inputs.push_back(ints_tensor(sizes));
  c.attrs = std::move(attrs);
  c.constant_inputs = {1, 2, 3};
  c.keep_fp32_inputs = {1, 2};
  c.precision = precision;
  return c;
}

Tensor int_data(DType dtype, const Shape& shape, int64_t lo, int64_t hi) {
  const Tensor wide = random_int(DType::kInt64, shape, lo, hi);
  Tensor t(dtype, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t v = wide.data<int64_t>()[i];
    switch (dtype) {
      case DType::kInt8: t.data<int8_t>()[i] = static_cast<int8_t>(v); break;
      case DType::kUInt8: t.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
      case DType::kBool: t.data<bool>()[i] = (v & 1) != 0; break;
      case DType::kInt32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
      default: t.data<int64_t>()[i] = v; break;
    }
  }
  return t;
}

// ---------------------------------------------------------------------------------------------------------
// Resize

TEST(CudaResize, NearestUpsample2xEveryMode) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* coord : kCoordModes) {
    for (const char* nm : kNearestModes) {
      for (DType p : kFloatTypes) {
        SCOPED_TRACE(std::string(coord) + " " + nm + " " + dtype_name(p));
        expect_layer_matches_reference(resize_case(
            random_float({1, 3, 5, 7}),
            {{"mode", string_attr("nearest")}, {"coordinate_transformation_mode", string_attr(coord)},
             {"nearest_mode", string_attr(nm)}},
            {1, 1, 2, 2}, {}, p));
      }
    }
  }
  // A feature map of a detection neck.
  expect_layer_matches_reference(resize_case(random_float({2, 64, 28, 28}),
                                             {{"mode", string_attr("nearest")},
                                              {"coordinate_transformation_mode", string_attr("asymmetric")},
                                              {"nearest_mode", string_attr("floor")}},
                                             {1, 1, 2, 2}, {}, DType::kFloat16));
}

TEST(CudaResize, NearestOddRatiosScalesAndSizes) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* coord : {"half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"}) {
    for (const char* nm : kNearestModes) {
      SCOPED_TRACE(std::string(coord) + " " + nm);
      const Attrs attrs = {{"mode", string_attr("nearest")},
                           {"coordinate_transformation_mode", string_attr(coord)},
                           {"nearest_mode", string_attr(nm)}};
      expect_layer_matches_reference(resize_case(random_float({2, 3, 9, 7}), attrs, {1, 1, 0.6f, 1.7f}, {}));
      expect_layer_matches_reference(resize_case(random_float({2, 3, 9, 7}), attrs, {}, {2, 3, 4, 11}));
      expect_layer_matches_reference(resize_case(random_float({2, 3, 9, 7}), attrs, {}, {1, 5, 13, 3}, DType::kBFloat16));
    }
  }
}

TEST(CudaResize, LinearDownsampleOddRatiosEveryCoordMode) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* coord : kCoordModes) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(std::string(coord) + " " + dtype_name(p));
      const Attrs attrs = {{"mode", string_attr("linear")}, {"coordinate_transformation_mode", string_attr(coord)}};
      expect_layer_matches_reference(resize_case(random_float({2, 3, 13, 17}), attrs, {}, {2, 3, 7, 5}, p));
      expect_layer_matches_reference(resize_case(random_float({2, 3, 13, 17}), attrs, {1, 1, 0.55f, 0.3f}, {}, p));
      expect_layer_matches_reference(resize_case(random_float({1, 2, 4, 5}), attrs, {1, 1, 2.5f, 1.5f}, {}, p));
      // Output size 1 along an axis: align_corners and pytorch_half_pixel special-case it.
      expect_layer_matches_reference(resize_case(random_float({1, 2, 6, 5}), attrs, {}, {1, 2, 1, 3}, p));
    }
  }
  expect_layer_matches_reference(resize_case(random_float({2, 8, 112, 112}),
                                             {{"mode", string_attr("linear")}}, {1, 1, 0.5f, 0.5f}, {}, DType::kFloat16));
}

TEST(CudaResize, TfCropAndResize) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"nearest", "linear"}) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(std::string(mode) + " " + dtype_name(p));
      const Attrs attrs = {{"mode", string_attr(mode)},
                           {"coordinate_transformation_mode", string_attr("tf_crop_and_resize")},
                           {"extrapolation_value", float_attr_of(0.75f)}};
      // The roi reaches outside the input on both image axes: those outputs take extrapolation_value.
      expect_layer_matches_reference(resize_case(random_float({1, 2, 8, 9}), attrs, {}, {1, 2, 5, 7}, p,
                                                 {0, 0, 0.1f, -0.2f, 1, 1, 0.9f, 1.3f}));
      expect_layer_matches_reference(resize_case(random_float({2, 3, 7, 6}), attrs, {1, 1, 1.5f, 0.7f}, {}, p,
                                                 {0, 0, 0.25f, 0.0f, 1, 1, 0.75f, 1.0f}));
    }
  }
}

TEST(CudaResize, Linear1DAnd3D) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) {
    SCOPED_TRACE(dtype_name(p));
    const Attrs attrs = {{"mode", string_attr("linear")}};
    expect_layer_matches_reference(resize_case(random_float({9}), attrs, {}, {4}, p));
    expect_layer_matches_reference(resize_case(random_float({3, 10}), attrs, {}, {3, 23}, p));
    expect_layer_matches_reference(resize_case(random_float({2, 3, 11}), attrs, {1, 1, 0.7f}, {}, p));
    // Trilinear.
    expect_layer_matches_reference(resize_case(random_float({1, 2, 4, 5, 6}), attrs, {}, {1, 2, 7, 3, 9}, p));
    expect_layer_matches_reference(resize_case(random_float({2, 1, 3, 4, 5}),
                                               {{"mode", string_attr("linear")},
                                                {"coordinate_transformation_mode", string_attr("align_corners")}},
                                               {1, 1, 2, 1.5f, 0.6f}, {}, p));
    // Four resized axes at once.
    expect_layer_matches_reference(resize_case(random_float({3, 4, 5, 6}), attrs, {}, {5, 3, 7, 4}, p));
  }
}

TEST(CudaResize, AxesAndKeepAspectRatio) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"nearest", "linear"}) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(std::string(mode) + " " + dtype_name(p));
      // NHWC: the channel axis, innermost, is copied.
      expect_layer_matches_reference(resize_case(random_float({2, 9, 11, 3}),
                                                 {{"mode", string_attr(mode)}, {"axes", ints_attr({1, 2})}},
                                                 {1.5f, 0.6f}, {}, p));
      expect_layer_matches_reference(resize_case(random_float({2, 9, 11, 3}),
                                                 {{"mode", string_attr(mode)}, {"axes", ints_attr({-2, -3})}}, {},
                                                 {5, 13}, p));
      for (const char* policy : {"stretch", "not_larger", "not_smaller"}) {
        SCOPED_TRACE(policy);
        expect_layer_matches_reference(resize_case(
            random_float({1, 3, 10, 15}),
            {{"mode", string_attr(mode)}, {"axes", ints_attr({2, 3})}, {"keep_aspect_ratio_policy", string_attr(policy)}},
            {}, {7, 7}, p));
      }
    }
  }
}

TEST(CudaResize, ExcludeOutside) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"nearest", "linear"}) {
    for (const char* coord : {"half_pixel", "tf_half_pixel_for_nn", "asymmetric"}) {
      SCOPED_TRACE(std::string(mode) + " " + coord);
      expect_layer_matches_reference(resize_case(random_float({1, 2, 5, 4}),
                                                 {{"mode", string_attr(mode)},
                                                  {"coordinate_transformation_mode", string_attr(coord)},
                                                  {"exclude_outside", int_attr(1)}},
                                                 {1, 1, 2.6f, 0.8f}, {}));
    }
  }
}

TEST(CudaResize, ComputedSizes) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"nearest", "linear"}) {
    LayerCase c = resize_case(random_float({2, 3, 8, 6}), {{"mode", string_attr(mode)}}, {}, {2, 3, 5, 11});
    c.constant_inputs = {1, 2};  // sizes are computed: the layer takes them from the output shape
    expect_layer_matches_reference(c);
  }
}

TEST(CudaResize, OlderOpsets) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"nearest", "linear"}) {
    for (DType p : kFloatTypes) {
      SCOPED_TRACE(std::string(mode) + " " + dtype_name(p));
      // Resize-10: (X, scales), asymmetric coordinates, legacy nearest rounding.
      LayerCase c;
      c.op = "Resize";
      c.opset = 10;
      c.inputs = {random_float({1, 2, 5, 7}), floats_tensor({1, 1, 0.6f, 2.5f})};
      c.attrs = {{"mode", string_attr(mode)}};
      c.constant_inputs = {1};
      c.keep_fp32_inputs = {1};
      c.precision = p;
      expect_layer_matches_reference(c);
      // Resize-11 with an empty scales next to sizes.
      LayerCase e = resize_case(random_float({1, 2, 5, 7}), {{"mode", string_attr(mode)}}, {}, {1, 2, 9, 4}, p);
      e.opset = 11;
      e.inputs = {e.inputs[0], floats_tensor({}), Tensor(DType::kFloat32, {0}), ints_tensor({1, 2, 9, 4})};
      expect_layer_matches_reference(e);
      // Upsample-9: scales as an input; Upsample-7: as an attribute.
      LayerCase u;
      u.op = "Upsample";
      u.opset = 9;
      u.inputs = {random_float({2, 3, 4, 5}), floats_tensor({1, 1, 2, 3})};
      u.attrs = {{"mode", string_attr(mode)}};
      u.constant_inputs = {1};
      u.keep_fp32_inputs = {1};
      u.precision = p;
      expect_layer_matches_reference(u);
      u.opset = 7;
      u.inputs = {random_float({2, 3, 4, 5})};
      u.attrs = {{"mode", string_attr(mode)}, {"scales", floats_attr({1, 1, 1.5f, 2})}};
      u.constant_inputs = {};
      expect_layer_matches_reference(u);
    }
  }
}

TEST(CudaResize, NearestIntegers) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType dt : {DType::kInt64, DType::kInt32, DType::kInt8, DType::kUInt8}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor x = int_data(dt, {2, 3, 6, 7}, 0, 100);
    expect_layer_matches_reference(resize_case(x, {{"mode", string_attr("nearest")}}, {1, 1, 1.5f, 0.6f}, {}));
    // Extrapolation into an integer output: rounded half to even (2.5 -> 2).
    expect_layer_matches_reference(resize_case(x,
                                               {{"mode", string_attr("nearest")},
                                                {"coordinate_transformation_mode", string_attr("tf_crop_and_resize")},
                                                {"extrapolation_value", float_attr_of(2.5f)}},
                                               {}, {2, 3, 5, 9}, DType::kFloat32, {0, 0, -0.3f, 0.1f, 1, 1, 0.8f, 1.4f}));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Pad

// Pad-19: (data, pads, constant_value, axes); pads and axes constant.
LayerCase pad_case(Tensor x, const std::string& mode, const std::vector<int64_t>& pads, DType precision = DType::kFloat32) {
  LayerCase c;
  c.op = "Pad";
  c.opset = 19;
  c.inputs = {x, ints_tensor(pads)};
  c.attrs = {{"mode", string_attr(mode)}};
  c.constant_inputs = {1, 3};
  c.precision = precision;
  return c;
}

struct PadShape {
  Shape shape;
  std::vector<int64_t> pads;
};

const std::vector<PadShape>& pad_shapes() {
  static const std::vector<PadShape> shapes = {
      {{7}, {3, -2}},
      {{5, 6}, {2, -1, 0, 4}},
      {{2, 1, 9}, {0, 2, 1, 1, 3, -4}},         // a size-1 axis padded (reflect of one element repeats it)
      {{2, 3, 5, 7}, {0, 0, 1, 2, 0, 0, 3, 1}},  // NCHW image
      {{2, 3, 5, 7}, {0, 0, 6, 9, 0, 0, 7, 8}},  // pads wider than the axes
      {{2, 5, 6, 8}, {0, 1, 2, 0, 0, 2, 1, 0}},  // NHWC: the innermost axis moves in 16-byte units
      {{1, 2, 3, 4, 5}, {0, 1, -1, 2, 0, 1, 0, 2, -2, 3}},
      {{4, 6, 8}, {-1, 0, -2, 0, -1, -3}},       // cropping only
      {{3, 4, 5}, {0, 0, 0, 0, 0, 0}},           // nothing: a copy
  };
  return shapes;
}

TEST(CudaPad, EveryModeRanks1To5) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"constant", "reflect", "edge", "wrap"}) {
    for (const PadShape& s : pad_shapes()) {
      for (DType p : kFloatTypes) {
        SCOPED_TRACE(std::string(mode) + " " + shape_to_string(s.shape) + " pads " + shape_to_string(s.pads) + " " +
                     dtype_name(p));
        expect_layer_matches_reference(pad_case(random_float(s.shape), mode, s.pads, p));
      }
    }
  }
}

TEST(CudaPad, ConstantValues) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType p : kFloatTypes) {
    SCOPED_TRACE(dtype_name(p));
    // Constant, and computed (the kernel reads it from device memory).
    for (bool constant : {true, false}) {
      LayerCase c = pad_case(random_float({2, 3, 5, 7}), "constant", {0, 1, 2, 3, 1, 0, 3, 2}, p);
      c.inputs.push_back(floats_tensor({2.5f}).reshaped({}));
      if (constant) c.constant_inputs.insert(2);
      expect_layer_matches_reference(c);
    }
    // Pad-2: pads and value as attributes.
    LayerCase old;
    old.op = "Pad";
    old.opset = 2;
    old.inputs = {random_float({3, 4, 5})};
    old.attrs = {{"mode", string_attr("constant")}, {"pads", ints_attr({1, 0, 2, 0, 3, 1})}, {"value", float_attr_of(-1.5f)}};
    old.precision = p;
    expect_layer_matches_reference(old);
    old.attrs["mode"] = string_attr("reflect");
    expect_layer_matches_reference(old);
  }
}

TEST(CudaPad, Axes) {
  KILN_SKIP_WITHOUT_GPU();
  for (const char* mode : {"constant", "reflect", "edge", "wrap"}) {
    SCOPED_TRACE(mode);
    LayerCase c = pad_case(random_float({2, 3, 5, 7}), mode, {1, 2, 3, 0});
    c.inputs.push_back(Value::none());
    c.inputs.push_back(ints_tensor({-1, 1}));
    expect_layer_matches_reference(c);
  }
}

TEST(CudaPad, IntegerAndBoolData) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType dt : {DType::kInt64, DType::kInt32, DType::kInt8, DType::kUInt8, DType::kBool}) {
    for (const char* mode : {"constant", "reflect", "edge", "wrap"}) {
      for (const PadShape& s : pad_shapes()) {
        SCOPED_TRACE(dtype_name(dt) + " " + mode + " " + shape_to_string(s.shape));
        LayerCase c = pad_case(int_data(dt, s.shape, -100, 100), mode, s.pads);
        if (dt == DType::kInt64 && std::string(mode) == "constant") {
          Tensor v(DType::kInt64, {});
          v.data<int64_t>()[0] = -7;
          c.inputs.push_back(v);
          c.constant_inputs.insert(2);
        }
        expect_layer_matches_reference(c);
      }
    }
  }
}

TEST(CudaPad, EmptyOutput) {
  KILN_SKIP_WITHOUT_GPU();
  expect_layer_matches_reference(pad_case(random_float({3, 4}), "constant", {0, -2, 0, -2}));
}

// ---------------------------------------------------------------------------------------------------------
// check() refusals: no GPU needed

struct CheckCase {
  std::string op;
  int opset = 19;
  Attrs attrs;
  std::vector<cuda::TensorDesc> inputs;
  std::vector<cuda::TensorDesc> outputs;
};

std::string check_of(const CheckCase& c) {
  const cuda::LayerKind* kind = cuda::layer_table().find(c.op);
  EXPECT_NE(kind, nullptr) << c.op;
  if (kind == nullptr) return "no layer";
  ir::Node node;
  node.name = "n";
  node.op_type = c.op;
  node.attributes = c.attrs;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = c.opset;
  spec.inputs = c.inputs;
  spec.outputs = c.outputs;
  return kind->check(spec);
}

cuda::TensorDesc desc(DType dt, Shape shape, const Tensor* constant = nullptr) {
  cuda::TensorDesc d;
  d.dtype = dt;
  d.has_rank = true;
  d.shape = std::move(shape);
  d.constant = constant;
  return d;
}

void expect_refused(const CheckCase& c, const std::string& says) {
  const std::string why = check_of(c);
  EXPECT_NE(why.find(says), std::string::npos) << "check said '" << why << "', expected it to mention '" << says << "'";
}

TEST(CudaResizeCheck, AcceptsWhatItRuns) {
  const Tensor scales = floats_tensor({1, 1, 2, 2});
  const Tensor sizes = ints_tensor({1, 3, 8, 8});
  const cuda::TensorDesc x = desc(DType::kFloat16, {-1, 3, -1, -1});
  EXPECT_EQ(check_of({"Resize", 19, {{"mode", string_attr("linear")}},
                      {x, {}, desc(DType::kFloat32, {4}, &scales)}, {x}}),
            "");
  // Computed sizes of known length, 'stretch'.
  EXPECT_EQ(check_of({"Resize", 19, {}, {x, {}, {}, desc(DType::kInt64, {4})}, {x}}), "");
  EXPECT_EQ(check_of({"Resize", 13, {}, {desc(DType::kInt64, {1, 3, 4, 4}), {}, {}, desc(DType::kInt64, {4}, &sizes)},
                      {desc(DType::kInt64, {1, 3, 8, 8})}}),
            "");
}

TEST(CudaResizeCheck, RefusesWhatItDoesNotRun) {
  const Tensor scales = floats_tensor({1, 1, 2, 2});
  const Tensor sizes = ints_tensor({1, 3, 8, 8});
  const cuda::TensorDesc x = desc(DType::kFloat32, {1, 3, 4, 4});
  const cuda::TensorDesc y = desc(DType::kFloat32, {1, 3, 8, 8});
  const cuda::TensorDesc cscales = desc(DType::kFloat32, {4}, &scales);
  expect_refused({"Resize", 19, {{"mode", string_attr("cubic")}}, {x, {}, cscales}, {y}}, "mode 'cubic' is not implemented");
  expect_refused({"Resize", 19, {{"mode", string_attr("linear")}, {"antialias", int_attr(1)}}, {x, {}, cscales}, {y}},
                 "antialias is not implemented");
  expect_refused({"Resize", 19, {}, {x, {}, desc(DType::kFloat32, {4})}, {y}}, "scales must be a constant input");
  expect_refused({"Resize", 19, {}, {x, {}, {}, desc(DType::kInt64, {-1})}, {y}}, "sizes must be a constant input");
  expect_refused({"Resize", 19, {{"keep_aspect_ratio_policy", string_attr("not_larger")}},
                  {x, {}, {}, desc(DType::kInt64, {4})}, {y}},
                 "needs constant sizes");
  expect_refused({"Resize", 19, {{"coordinate_transformation_mode", string_attr("tf_crop_and_resize")}},
                  {x, desc(DType::kFloat32, {8}), cscales}, {y}},
                 "needs a constant roi");
  expect_refused({"Resize", 19, {}, {x, {}, cscales, desc(DType::kInt64, {4}, &sizes)}, {y}}, "exactly one of scales and sizes");
  expect_refused({"Resize", 19, {{"mode", string_attr("linear")}},
                  {desc(DType::kInt32, {1, 3, 4, 4}), {}, cscales}, {desc(DType::kInt32, {1, 3, 8, 8})}},
                 "mode linear supports float32, float16 and bfloat16");
  expect_refused({"Resize", 19, {}, {desc(DType::kBool, {1, 3, 4, 4}), {}, cscales}, {desc(DType::kBool, {1, 3, 8, 8})}},
                 "dtype bool is not supported");
  expect_refused({"Resize", 19, {{"coordinate_transformation_mode", string_attr("sideways")}}, {x, {}, cscales}, {y}},
                 "unknown coordinate_transformation_mode 'sideways'");
  expect_refused({"Resize", 10, {}, {x, desc(DType::kFloat32, {4})}, {y}}, "scales must be a constant input");
  expect_refused({"Upsample", 9, {}, {x, desc(DType::kFloat32, {4})}, {y}}, "scales must be a constant input");
}

TEST(CudaPadCheck, RefusesWhatItDoesNotRun) {
  const Tensor pads = ints_tensor({0, 0, 1, 1, 0, 0, 1, 1});
  const cuda::TensorDesc x = desc(DType::kFloat32, {1, 3, 4, 4});
  const cuda::TensorDesc y = desc(DType::kFloat32, {1, 3, 6, 6});
  const cuda::TensorDesc cpads = desc(DType::kInt64, {8}, &pads);
  EXPECT_EQ(check_of({"Pad", 19, {{"mode", string_attr("wrap")}}, {x, cpads}, {y}}), "");
  EXPECT_EQ(check_of({"Pad", 19, {}, {x, cpads, desc(DType::kFloat32, {})}, {y}}), "");  // computed constant_value
  expect_refused({"Pad", 19, {{"mode", string_attr("mirror")}}, {x, cpads}, {y}}, "mode 'mirror' is not one of");
  expect_refused({"Pad", 19, {}, {x, desc(DType::kInt64, {8})}, {y}}, "pads must be a constant");
  expect_refused({"Pad", 19, {}, {x, cpads, {}, desc(DType::kInt64, {2})}, {y}}, "axes must be a constant");
  expect_refused({"Pad", 19, {}, {x, cpads, desc(DType::kFloat16, {})}, {y}}, "constant_value must have the input's dtype");
  expect_refused({"Pad", 19, {}, {desc(DType::kString, {1, 3, 4, 4}), cpads}, {desc(DType::kString, {1, 3, 6, 6})}},
                 "dtype string is not supported");
  expect_refused({"Pad", 2, {}, {x}, {y}}, "needs attribute pads");
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
