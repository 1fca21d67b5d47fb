// The CUDA Conv and ConvTranspose layers (src/backends/cuda/conv.cc, cuDNN) against the CPU reference: every
// cuDNN algorithm the layer lists that cuDNN accepts for the problem, plus "default", in float32 (exact and
// TF32), float16 and bfloat16; and what check() refuses, which needs no GPU.
//
// Tolerances. A convolution output is a sum of K = (C / group) * prod(kernel) products of inputs in
// [-1, 1], so its rounding error grows like sqrt(K) while a small output (a sum that nearly cancels) can be
// far below that; an absolute tolerance in sqrt(K) covers those. Float32: rtol 1e-4 rather than 1e-5, as
// the sums are long, and 1e-5 * sqrt(K) absolute; the FFT and Winograd algorithms transform their operands
// and err relative to the terms rather than the sum, so they get ten times that absolute tolerance. TF32
// rounds both operands to 10 mantissa bits (about 2^-11 each): rtol 1e-3 and 1e-3 * sqrt(K) absolute.
// Float16 and bfloat16 inputs are exact in float32 and products accumulate in float32, so the output's
// rounding dominates: 1e-2. (A bias that cuDNN cannot fuse is added in a second pass, a second rounding:
// at most one bfloat16 ulp, 0.8%, in all.)
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_layer_harness.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

const char* precision_name(DType t, bool tf32) {
  if (t == DType::kFloat32) return tf32 ? "tf32" : "float32";
  return t == DType::kFloat16 ? "float16" : "bfloat16";
}

// FFT and Winograd tactics (and "default", which may pick one): their float32 error is that of the
// transformed terms, up to about ten times what a direct sum of K products gives (WINOGRAD_NONFUSED on 3x3
// kernels: about 5e-6 of the output's range; the layer does not offer it on larger kernels, where it errs
// by 2e-3 and more).
bool transform_based(const std::string& tactic) {
  if (tactic == "default") return true;
  const int algo = tactic.back() - '0';
  return tactic.find(".fwd.") != std::string::npos ? algo >= 4 : algo >= 2;
}

// The harness's comparison, but a tactic that create() declines as Unsupported (cuDNN has no kernel of that
// algorithm for the problem, or its workspace is over the cap) is skipped and listed; "default" must run,
// and so must at least one named tactic.
void expect_conv_matches_reference(const LayerCase& c) {
  std::vector<Value> cuda_inputs, ref_inputs;
  for (const Value& v : c.inputs) {
    if (v.is_none() || c.precision == DType::kFloat32) {
      cuda_inputs.push_back(v);
      ref_inputs.push_back(v);
      continue;
    }
    auto low = cast_tensor(v.tensor(), c.precision);
    ASSERT_TRUE(low.ok()) << low.status().to_string();
    cuda_inputs.emplace_back(*low);
    ref_inputs.emplace_back(widen_to_float32(*low));
  }
  OpRun ref = run_kernel("", c.op, ref_inputs, c.attrs, 1, c.opset, "reference");
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  const std::vector<Tensor> want = {ref.outputs[0].tensor()};

  const cuda::LayerKind* kind = cuda::layer_table().find(c.op);
  ASSERT_NE(kind, nullptr) << "no CUDA layer for " << c.op;
  ASSERT_TRUE(kind->tactics);
  ir::Node node;
  node.op_type = c.op;
  node.attributes = c.attrs;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = c.opset;
  spec.allow_tf32 = c.allow_tf32;
  std::vector<std::string> tactics = kind->tactics(spec);
  ASSERT_FALSE(tactics.empty());
  tactics.push_back("default");

  // Per tactic, the largest error as a fraction of what the tolerance allows there: how close it came.
  std::string ran, declined;
  int named_ran = 0;
  for (const std::string& tactic : tactics) {
    auto got = run_cuda_layer(c, cuda_inputs, want, tactic);
    if (!got.ok() && got.status().code() == StatusCode::kUnsupported && tactic != "default") {
      declined += " " + tactic.substr(tactic.rfind('.') + 1);
      continue;
    }
    ASSERT_TRUE(got.ok()) << c.op << " tactic " << tactic << ": " << got.status().to_string();
    const double atol = c.atol * (c.precision == DType::kFloat32 && !c.allow_tf32 && transform_based(tactic) ? 10 : 1);
    detail::compare((*got)[0], want[0], c.rtol, atol,
                    c.op + " tactic " + tactic + " (" + precision_name(c.precision, c.allow_tf32) + ")");
    const Tensor g = widen_to_float32((*got)[0]);
    double used = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double a = g.data<float>()[i], b = want[0].data<float>()[i];
      used = std::max(used, std::fabs(a - b) / (c.rtol * std::fabs(b) + atol));
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, " %s:%.2f", tactic.substr(tactic.rfind('.') + 1).c_str(), used);
    ran += buf;
    if (tactic != "default") ++named_ran;
  }
  EXPECT_GT(named_ran, 0) << c.op << ": cuDNN declined every named tactic:" << declined;
  std::printf("  %s %s x %s (%s): tolerance used%s; declined%s\n", c.op.c_str(),
              shape_to_string(c.inputs[0].tensor().shape()).c_str(), shape_to_string(c.inputs[1].tensor().shape()).c_str(),
              precision_name(c.precision, c.allow_tf32), ran.c_str(), declined.empty() ? " none" : declined.c_str());
}

// Terms summed into one output: (C / group) * prod(kernel) for Conv; the same bound serves ConvTranspose.
double reduction_length(const std::string& op, const Shape& w, int64_t group) {
  double k = 1;
  for (size_t i = 2; i < w.size(); ++i) k *= static_cast<double>(w[i]);
  return k * static_cast<double>(op == "Conv" ? w[1] : w[0] / group);
}

// One problem in float32, TF32, float16 and bfloat16.
void expect_conv_all_precisions(const std::string& op, const Shape& x, const Shape& w, bool bias, const Attrs& attrs) {
  const int64_t group = attrs.count("group") ? attrs.at("group").i : 1;
  const int64_t m = op == "Conv" ? w[0] : w[1] * group;
  const Tensor xt = random_float(x), wt = random_float(w), bt = random_float({m});
  const double root_k = std::sqrt(reduction_length(op, w, group));
  struct Mode {
    DType dtype;
    bool tf32;
    double rtol, atol;
  };
  const Mode modes[] = {{DType::kFloat32, false, 1e-4, 1e-5 * root_k},
                        {DType::kFloat32, true, 1e-3, 1e-3 * root_k},
                        {DType::kFloat16, false, 1e-2, 1e-2 + 1e-3 * root_k},
                        {DType::kBFloat16, false, 1e-2, 1e-2 + 1e-3 * root_k}};
  for (const Mode& mode : modes) {
    SCOPED_TRACE(std::string(op) + " " + shape_to_string(x) + " x " + shape_to_string(w) + " " +
                 precision_name(mode.dtype, mode.tf32));
    LayerCase c;
    c.op = op;
    c.inputs = {Value(xt), Value(wt)};
    if (bias) c.inputs.push_back(Value(bt));
    c.attrs = attrs;
    c.precision = mode.dtype;
    c.allow_tf32 = mode.tf32;
    c.rtol = mode.rtol;
    c.atol = mode.atol;
    expect_conv_matches_reference(c);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Conv

TEST(CudaConv, ResNet3x3Pad1) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 64, 14, 14}, {64, 64, 3, 3}, true, {{"pads", ints_attr({1, 1, 1, 1})}});
}

TEST(CudaConv, ResNet3x3Stride2) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 64, 15, 15}, {128, 64, 3, 3}, true,
                             {{"pads", ints_attr({1, 1, 1, 1})}, {"strides", ints_attr({2, 2})}});
}

TEST(CudaConv, Pointwise1x1) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 64, 13, 11}, {256, 64, 1, 1}, false, {});
  expect_conv_all_precisions("Conv", {2, 64, 13, 11}, {32, 64, 1, 1}, true, {{"strides", ints_attr({2, 2})}});
}

TEST(CudaConv, Stem7x7Stride2Pad3) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 3, 33, 35}, {64, 3, 7, 7}, true,
                             {{"pads", ints_attr({3, 3, 3, 3})}, {"strides", ints_attr({2, 2})}, {"kernel_shape", ints_attr({7, 7})}});
}

TEST(CudaConv, Depthwise) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 32, 17, 19}, {32, 1, 3, 3}, true, {{"group", int_attr(32)}, {"pads", ints_attr({1, 1, 1, 1})}});
  // A channel multiplier of 2, stride 2.
  expect_conv_all_precisions("Conv", {1, 12, 9, 10}, {24, 1, 5, 5}, false,
                             {{"group", int_attr(12)}, {"pads", ints_attr({2, 2, 2, 2})}, {"strides", ints_attr({2, 2})}});
}

TEST(CudaConv, Grouped) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 32, 11, 13}, {64, 8, 3, 3}, true, {{"group", int_attr(4)}, {"pads", ints_attr({1, 1, 1, 1})}});
  expect_conv_all_precisions("Conv", {1, 6, 7, 5}, {9, 2, 3, 2}, false, {{"group", int_attr(3)}});
}

TEST(CudaConv, Dilated) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 16, 19, 17}, {24, 16, 3, 3}, true,
                             {{"dilations", ints_attr({2, 2})}, {"pads", ints_attr({2, 2, 2, 2})}});
  expect_conv_all_precisions("Conv", {1, 8, 20, 21}, {8, 8, 3, 3}, false, {{"dilations", ints_attr({3, 1})}, {"strides", ints_attr({1, 2})}});
}

TEST(CudaConv, OneD) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 5, 37}, {7, 5, 5}, true, {{"pads", ints_attr({2, 2})}, {"strides", ints_attr({2})}});
  expect_conv_all_precisions("Conv", {3, 8, 29}, {8, 2, 3}, false, {{"group", int_attr(4)}, {"dilations", ints_attr({2})}});
}

TEST(CudaConv, ThreeD) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {1, 4, 7, 9, 6}, {6, 4, 3, 3, 3}, true,
                             {{"pads", ints_attr({1, 1, 1, 1, 1, 1})}, {"strides", ints_attr({1, 2, 2})}});
  expect_conv_all_precisions("Conv", {2, 3, 5, 6, 7}, {4, 3, 1, 3, 2}, false, {});
}

TEST(CudaConv, SizeOneDims) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {1, 1, 1, 23}, {1, 1, 1, 3}, true, {{"pads", ints_attr({0, 1, 0, 1})}});
  expect_conv_all_precisions("Conv", {1, 3, 5, 5}, {1, 3, 5, 5}, false, {});  // one output per image
  expect_conv_all_precisions("Conv", {1, 1, 9}, {1, 1, 1}, true, {});
}

TEST(CudaConv, AutoPad) {
  KILN_SKIP_WITHOUT_GPU();
  // Stride 2 on an even size: the total pad is odd, SAME_UPPER puts the extra one at the end (X is
  // copied into a padded buffer) and SAME_LOWER at the begin (cuDNN's symmetric pad does it).
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER"}) {
    SCOPED_TRACE(mode);
    expect_conv_all_precisions("Conv", {2, 8, 16, 14}, {12, 8, 3, 3}, true,
                               {{"auto_pad", string_attr(mode)}, {"strides", ints_attr({2, 2})}});
    expect_conv_all_precisions("Conv", {1, 4, 9, 10}, {4, 4, 4, 4}, false, {{"auto_pad", string_attr(mode)}});
    expect_conv_all_precisions("Conv", {1, 3, 12}, {5, 3, 4}, true, {{"auto_pad", string_attr(mode)}});
  }
  expect_conv_all_precisions("Conv", {2, 8, 16, 14}, {12, 8, 3, 3}, true,
                             {{"auto_pad", string_attr("VALID")}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}});
}

TEST(CudaConv, AsymmetricPads) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("Conv", {2, 6, 11, 10}, {8, 6, 3, 3}, true, {{"pads", ints_attr({0, 2, 1, 0})}});
  // More at the begin, with no extra window at the end: no copy.
  expect_conv_all_precisions("Conv", {1, 4, 8, 8}, {4, 4, 3, 3}, false, {{"pads", ints_attr({1, 1, 0, 0})}, {"strides", ints_attr({2, 2})}});
  expect_conv_all_precisions("Conv", {1, 4, 5, 6, 7}, {3, 4, 2, 3, 3}, true,
                             {{"pads", ints_attr({1, 0, 2, 0, 1, 1})}, {"strides", ints_attr({1, 1, 2})}});
  expect_conv_all_precisions("Conv", {2, 3, 20}, {4, 3, 3}, false, {{"pads", ints_attr({0, 2})}});
}

TEST(CudaConv, EmptyBatch) {
  KILN_SKIP_WITHOUT_GPU();
  LayerCase c;
  c.op = "Conv";
  c.inputs = {Value(Tensor(DType::kFloat32, {0, 3, 5, 5})), Value(random_float({4, 3, 3, 3}))};
  c.rtol = 1e-4;
  c.atol = 1e-5;
  expect_conv_matches_reference(c);
}

// ---------------------------------------------------------------------------------------------------------
// ConvTranspose

TEST(CudaConvTranspose, Stride2OutputPadding) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("ConvTranspose", {2, 16, 7, 9}, {16, 8, 3, 3}, true,
                             {{"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}, {"output_padding", ints_attr({1, 1})}});
  expect_conv_all_precisions("ConvTranspose", {2, 32, 6, 5}, {32, 16, 4, 4}, false,
                             {{"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}});
  expect_conv_all_precisions("ConvTranspose", {1, 8, 5, 5}, {8, 4, 3, 3}, true, {});
}

TEST(CudaConvTranspose, Grouped) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("ConvTranspose", {2, 16, 6, 7}, {16, 3, 3, 3}, true,
                             {{"group", int_attr(4)}, {"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}});
  // Depthwise.
  expect_conv_all_precisions("ConvTranspose", {1, 8, 5, 6}, {8, 1, 4, 4}, false, {{"group", int_attr(8)}, {"strides", ints_attr({2, 2})}});
}

TEST(CudaConvTranspose, Dilated) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("ConvTranspose", {1, 6, 7, 8}, {6, 5, 3, 3}, true,
                             {{"dilations", ints_attr({2, 2})}, {"strides", ints_attr({2, 1})}, {"pads", ints_attr({2, 1, 2, 1})}});
}

TEST(CudaConvTranspose, OneDAndThreeD) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("ConvTranspose", {2, 6, 13}, {6, 4, 5}, true,
                             {{"strides", ints_attr({3})}, {"pads", ints_attr({2, 2})}, {"output_padding", ints_attr({2})}});
  expect_conv_all_precisions("ConvTranspose", {1, 4, 3, 4, 5}, {4, 3, 3, 3, 3}, true,
                             {{"strides", ints_attr({2, 2, 2})}, {"pads", ints_attr({1, 1, 1, 1, 1, 1})}, {"output_padding", ints_attr({1, 0, 1})}});
}

TEST(CudaConvTranspose, OutputShapeAndAutoPad) {
  KILN_SKIP_WITHOUT_GPU();
  // Pads computed from output_shape (N and C may be given too).
  expect_conv_all_precisions("ConvTranspose", {2, 8, 5, 6}, {8, 4, 3, 3}, true,
                             {{"strides", ints_attr({2, 2})}, {"output_shape", ints_attr({10, 12})}});
  expect_conv_all_precisions("ConvTranspose", {1, 8, 5, 6}, {8, 4, 3, 3}, false,
                             {{"strides", ints_attr({2, 2})}, {"output_shape", ints_attr({1, 4, 11, 13})}});
  // SAME: the output is in * stride; an odd total pad puts the extra one at the end (UPPER) or begin.
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER"}) {
    SCOPED_TRACE(mode);
    expect_conv_all_precisions("ConvTranspose", {2, 8, 5, 6}, {8, 4, 3, 3}, true,
                               {{"auto_pad", string_attr(mode)}, {"strides", ints_attr({2, 2})}});
    expect_conv_all_precisions("ConvTranspose", {1, 4, 7}, {4, 2, 4}, false, {{"auto_pad", string_attr(mode)}, {"strides", ints_attr({3})}});
    expect_conv_all_precisions("ConvTranspose", {1, 3, 3, 4, 5}, {3, 2, 3, 3, 3}, true,
                               {{"auto_pad", string_attr(mode)}, {"strides", ints_attr({2, 2, 2})}});
  }
  // output_shape larger than the unpadded result: negative pads, zeros (plus bias) beyond it.
  expect_conv_all_precisions("ConvTranspose", {1, 4, 4, 4}, {4, 3, 3, 3}, true,
                             {{"strides", ints_attr({2, 2})}, {"output_shape", ints_attr({12, 11})}});
  // output_shape together with explicit pads: the shape is as given, past the computed part is zeros.
  expect_conv_all_precisions("ConvTranspose", {1, 4, 4, 4}, {4, 3, 3, 3}, true,
                             {{"strides", ints_attr({2, 2})}, {"pads", ints_attr({1, 1, 1, 1})}, {"output_shape", ints_attr({10, 9})}});
}

TEST(CudaConvTranspose, AsymmetricPads) {
  KILN_SKIP_WITHOUT_GPU();
  expect_conv_all_precisions("ConvTranspose", {2, 6, 5, 7}, {6, 4, 3, 3}, true,
                             {{"strides", ints_attr({2, 2})}, {"pads", ints_attr({0, 2, 2, 1})}});
  expect_conv_all_precisions("ConvTranspose", {1, 3, 6}, {3, 5, 4}, false, {{"strides", ints_attr({2})}, {"pads", ints_attr({3, 0})}});
}

// ---------------------------------------------------------------------------------------------------------
// check(): what the layers refuse, and that unknown dims are not refused. No GPU needed.

cuda::TensorDesc desc(DType dtype, Shape shape) {
  cuda::TensorDesc d;
  d.dtype = dtype;
  d.has_rank = true;
  d.shape = std::move(shape);
  return d;
}

std::string check_of(const std::string& op, std::vector<cuda::TensorDesc> inputs, Attrs attrs = {}) {
  const cuda::LayerKind* kind = cuda::layer_table().find(op);
  EXPECT_NE(kind, nullptr) << op;
  if (kind == nullptr) return "no layer";
  ir::Node node;
  node.name = "n";
  node.op_type = op;
  node.attributes = std::move(attrs);
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.opset = 22;
  spec.inputs = std::move(inputs);
  cuda::TensorDesc out;
  out.dtype = spec.inputs.empty() ? DType::kUndefined : spec.inputs[0].dtype;
  spec.outputs = {out};
  return kind->check(spec);
}

void expect_refused(const std::string& why, const std::string& says) {
  EXPECT_NE(why.find(says), std::string::npos) << "check said: '" << why << "', expected it to mention '" << says << "'";
}

TEST(CudaConvCheck, RefusesIntegerAndDoubleData) {
  for (const char* op : {"Conv", "ConvTranspose"}) {
    for (DType t : {DType::kInt32, DType::kInt8, DType::kUInt8, DType::kInt64, DType::kFloat64}) {
      SCOPED_TRACE(std::string(op) + " " + dtype_name(t));
      expect_refused(check_of(op, {desc(t, {1, 4, 5, 5}), desc(t, {4, 4, 3, 3})}), "dtype " + dtype_name(t) + " is not supported");
    }
  }
}

TEST(CudaConvCheck, RefusesMixedDtypes) {
  expect_refused(check_of("Conv", {desc(DType::kFloat16, {1, 4, 5, 5}), desc(DType::kFloat32, {4, 4, 3, 3})}), "must match");
  expect_refused(check_of("Conv", {desc(DType::kFloat32, {1, 4, 5, 5}), desc(DType::kFloat32, {4, 4, 3, 3}), desc(DType::kFloat16, {4})}),
                 "must match");
}

TEST(CudaConvCheck, RefusesRanksOutsideOneToThreeSpatialDims) {
  for (const char* op : {"Conv", "ConvTranspose"}) {
    expect_refused(check_of(op, {desc(DType::kFloat32, {1, 4, 5, 5, 5, 5}), desc(DType::kFloat32, {4, 4, 3, 3, 3, 3})}),
                   "only 1-D, 2-D and 3-D");
    expect_refused(check_of(op, {desc(DType::kFloat32, {1, 4}), desc(DType::kFloat32, {4, 4})}), "only 1-D, 2-D and 3-D");
  }
  expect_refused(check_of("Conv", {desc(DType::kFloat32, {1, 4, 5, 5}), desc(DType::kFloat32, {4, 4, 3})}), "rank");
}

TEST(CudaConvCheck, RefusesBadAttributes) {
  const auto x = desc(DType::kFloat32, {1, 4, 5, 5});
  const auto w = desc(DType::kFloat32, {4, 4, 3, 3});
  expect_refused(check_of("Conv", {x, w}, {{"auto_pad", string_attr("MIDDLE")}}), "auto_pad 'MIDDLE'");
  expect_refused(check_of("ConvTranspose", {x, w}, {{"auto_pad", string_attr("MIDDLE")}}), "auto_pad 'MIDDLE'");
  expect_refused(check_of("Conv", {x, w}, {{"strides", ints_attr({1})}}), "strides");
  expect_refused(check_of("Conv", {x, w}, {{"dilations", ints_attr({0, 1})}}), "dilations");
  expect_refused(check_of("Conv", {x, w}, {{"pads", ints_attr({1, -1, 1, 1})}}), "pads");
  expect_refused(check_of("Conv", {x, w}, {{"kernel_shape", ints_attr({5, 5})}}), "kernel_shape");
  expect_refused(check_of("Conv", {x, w}, {{"group", int_attr(3)}}), "group 3");
  expect_refused(check_of("Conv", {x, desc(DType::kFloat32, {4, 2, 3, 3})}), "input channels");
  expect_refused(check_of("ConvTranspose", {x, w}, {{"output_padding", ints_attr({1, 1, 1})}}), "output_padding");
  expect_refused(check_of("ConvTranspose", {x, w}, {{"output_shape", ints_attr({1, 4, 9})}}), "output_shape");
  expect_refused(check_of("Conv", {desc(DType::kFloat32, {1, 4, 2, 2}), w}), "larger than the padded input");
  expect_refused(check_of("Conv", {x, w, desc(DType::kFloat32, {5})}), "B");
}

TEST(CudaConvCheck, AcceptsUnknownDimsAndPadsCuDnnCannotExpressAlone) {
  EXPECT_EQ(check_of("Conv", {desc(DType::kFloat16, {-1, 3, -1, -1}), desc(DType::kFloat16, {8, 3, 3, 3})},
                     {{"pads", ints_attr({0, 0, 1, 1})}}),
            "");
  cuda::TensorDesc unranked;
  unranked.dtype = DType::kBFloat16;
  EXPECT_EQ(check_of("Conv", {unranked, unranked}, {{"auto_pad", string_attr("SAME_UPPER")}}), "");
  EXPECT_EQ(check_of("ConvTranspose", {desc(DType::kFloat32, {2, 8, -1}), desc(DType::kFloat32, {8, 4, 3})},
                     {{"output_shape", ints_attr({17})}, {"strides", ints_attr({2})}}),
            "");
  EXPECT_EQ(check_of("Conv", {desc(DType::kFloat32, {1, 4, 8, 8}), desc(DType::kFloat32, {4, 4, 3, 3})},
                     {{"auto_pad", string_attr("SAME_UPPER")}, {"strides", ints_attr({2, 2})}}),
            "");
}

TEST(CudaConvCheck, ListsCuDnnAlgorithmsAsTactics) {
  ir::Node node;
  node.op_type = "Conv";
  cuda::LayerSpec spec;
  spec.node = &node;
  const auto fwd = cuda::layer_table().find("Conv")->tactics(spec);
  ASSERT_EQ(fwd.size(), 8u);
  EXPECT_EQ(fwd[0], "cuda.cudnn.fwd.algo1");
  const auto bwd = cuda::layer_table().find("ConvTranspose")->tactics(spec);
  ASSERT_EQ(bwd.size(), 6u);
  EXPECT_EQ(bwd[0], "cuda.cudnn.bwd_data.algo1");
}

// create() without running anything: the errors and refusals that come before cuDNN is asked to run.
Result<std::unique_ptr<cuda::Layer>> create_layer(const std::string& op, DType dtype, Shape x, Shape w, Shape y,
                                                   const std::string& tactic) {
  static auto handles = cuda::HandleSet::create();
  if (!handles.ok()) return handles.status();
  ir::Node node;
  node.op_type = op;
  cuda::LayerSpec spec;
  spec.node = &node;
  spec.inputs = {desc(dtype, std::move(x)), desc(dtype, std::move(w))};
  spec.outputs = {desc(dtype, std::move(y))};
  return cuda::layer_table().find(op)->create(spec, tactic, (*handles)->handles());
}

TEST(CudaConvCreate, UnknownTacticIsAnError) {
  KILN_SKIP_WITHOUT_GPU();
  auto layer = create_layer("Conv", DType::kFloat32, {1, 4, 5, 5}, {4, 4, 3, 3}, {1, 4, 3, 3}, "cuda.cudnn.fwd.algo9");
  ASSERT_FALSE(layer.ok());
  EXPECT_EQ(layer.status().code(), StatusCode::kInvalidArgument);
  layer = create_layer("ConvTranspose", DType::kFloat32, {1, 4, 5, 5}, {4, 4, 3, 3}, {1, 4, 7, 7}, "cuda.cudnn.fwd.algo1");
  ASSERT_FALSE(layer.ok());
  EXPECT_EQ(layer.status().code(), StatusCode::kInvalidArgument);
}

TEST(CudaConvCreate, DeclinesInaccurateAlgorithms) {
  KILN_SKIP_WITHOUT_GPU();
  // WINOGRAD_NONFUSED on a 5x5 kernel.
  auto layer = create_layer("Conv", DType::kFloat32, {2, 16, 20, 20}, {32, 16, 5, 5}, {2, 32, 16, 16}, "cuda.cudnn.fwd.algo7");
  ASSERT_FALSE(layer.ok());
  EXPECT_EQ(layer.status().code(), StatusCode::kUnsupported);
  expect_refused(layer.status().message(), "WINOGRAD_NONFUSED");
  // bwd_data ALGO_0's atomic adds in a half type.
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    layer = create_layer("ConvTranspose", t, {1, 8, 5, 5}, {8, 4, 3, 3}, {1, 4, 7, 7}, "cuda.cudnn.bwd_data.algo0");
    ASSERT_FALSE(layer.ok());
    EXPECT_EQ(layer.status().code(), StatusCode::kUnsupported);
    expect_refused(layer.status().message(), "atomic");
  }
  EXPECT_TRUE(create_layer("ConvTranspose", DType::kFloat32, {1, 8, 5, 5}, {8, 4, 3, 3}, {1, 4, 7, 7}, "cuda.cudnn.bwd_data.algo0").ok());
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
