// The CUDA layer of kiln.MaskedSoftmax (src/backends/cuda/masked_softmax.cu) against its CPU reference, in
// float32, float16 and bfloat16: BERT-base's attention scores [2, 12, 128, 128] with a [2, 1, 128, 128] and a
// [2, 1, 1, 128] mask and none, odd rows (77), rows on a group of lanes (1000), on a block (3000) and past
// the registers (20000), fully masked rows with nan_to_zero 0 (NaN) and 1 (0). The check() tests need no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"
#include "cuda_layer_harness.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

const DType kPrecisions[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

// 0 where attended, -inf where not (about a quarter), and the first `full_rows` rows (of the mask's last
// dim) wholly -inf: X + Mask is -inf along them.
Tensor attention_mask(const Shape& shape, int64_t full_rows) {
  return random_mask(cuda_test_rng(), DType::kFloat32, shape, 0.25, full_rows);
}

LayerCase masked_case(const Shape& x, const Shape* mask, int nan_to_zero, DType precision, int64_t full_rows = 1,
                      float hi = 4.0f) {
  LayerCase c;
  c.op = "MaskedSoftmax";
  c.domain = "kiln";
  c.opset = 1;
  c.inputs = {random_float(x, 0.1f, hi)};
  if (mask) c.inputs.push_back(attention_mask(*mask, full_rows));
  c.attrs["nan_to_zero"] = int_attr(nan_to_zero);
  c.precision = precision;
  return c;
}

std::string trace(const Shape& x, const Shape* mask, int nz, DType p) {
  return shape_to_string(x) + " mask " + (mask ? shape_to_string(*mask) : "none") + " nan_to_zero " +
         std::to_string(nz) + " " + dtype_name(p);
}

TEST(CudaMaskedSoftmax, BertAttentionShapes) {
  KILN_SKIP_WITHOUT_GPU();
  const Shape x{2, 12, 128, 128};
  const Shape full{2, 1, 128, 128}, key_padding{2, 1, 1, 128};
  for (const Shape* mask : {&full, &key_padding, static_cast<const Shape*>(nullptr)})
    for (int nz : {0, 1})
      for (DType p : kPrecisions) {
        SCOPED_TRACE(trace(x, mask, nz, p));
        expect_layer_matches_reference(masked_case(x, mask, nz, p));
      }
  // Scores of BERT's size (|s| up to ~20): the max subtraction matters.
  for (DType p : kPrecisions) {
    SCOPED_TRACE(trace(x, &full, 1, p) + " wide");
    expect_layer_matches_reference(masked_case(x, &full, 1, p, 3, 20.0f));
  }
}

TEST(CudaMaskedSoftmax, RowLengthsAndMaskShapes) {
  KILN_SKIP_WITHOUT_GPU();
  struct Shapes {
    Shape x, mask;
    int64_t full_rows;  // wholly masked rows of the mask's last dim
  };
  const std::vector<Shapes> cases{
      {{3, 5, 77}, {3, 1, 77}, 1},      // odd rows: one element a vector
      {{3, 5, 77}, {3, 5, 1}, 2},       // one mask value a row
      {{6, 1000}, {1000}, 0},           // a group of lanes a row
      {{6, 1000}, {6, 1000}, 2},
      {{4, 3, 3000}, {4, 1, 3000}, 1},  // a block a row
      {{3, 20000}, {3, 20000}, 1},      // past the registers: the looping kernel
      {{2, 3, 4, 5, 16}, {3, 1, 5, 16}, 1},
      {{4, 8}, {}, 0},                  // a scalar mask (0 or -inf at random)
      {{4, 8}, {}, 1},                  // a scalar -inf: every row masked
      {{7}, {7}, 0},                    // one row
  };
  for (const Shapes& s : cases)
    for (int nz : {0, 1})
      for (DType p : kPrecisions) {
        SCOPED_TRACE(trace(s.x, &s.mask, nz, p) + " full rows " + std::to_string(s.full_rows));
        expect_layer_matches_reference(masked_case(s.x, &s.mask, nz, p, s.full_rows));
      }
  for (DType p : kPrecisions) {
    SCOPED_TRACE(std::string("no mask, L = 77 and 1000, ") + dtype_name(p));
    expect_layer_matches_reference(masked_case({5, 77}, nullptr, 0, p));
    expect_layer_matches_reference(masked_case({3, 2, 1000}, nullptr, 1, p));
  }
}

// Several fully masked rows in the middle of a tensor: NaN (nan_to_zero 0) or 0 (1) there, the rest exact.
TEST(CudaMaskedSoftmax, FullyMaskedRows) {
  KILN_SKIP_WITHOUT_GPU();
  const Shape x{2, 4, 16, 128}, mask{2, 1, 16, 128};
  for (int nz : {0, 1})
    for (DType p : kPrecisions) {
      SCOPED_TRACE(trace(x, &mask, nz, p));
      expect_layer_matches_reference(masked_case(x, &mask, nz, p, 9));
    }
}

// ---------------------------------------------------------------------------------------------------------
// check(): no GPU needed.

std::string check_masked(std::vector<cuda::TensorDesc> ins, std::map<std::string, ir::Attribute> attrs = {}) {
  const DType t = ins.empty() ? DType::kUndefined : ins[0].dtype;
  const Shape s = ins.empty() ? Shape{} : ins[0].shape;
  return check_of("kiln.MaskedSoftmax", std::move(ins), {desc(t, s)}, std::move(attrs), 1);
}

TEST(CudaMaskedSoftmaxCheck, RegisteredUnderTheKilnDomain) {
  ir::Node n;
  n.op_type = "MaskedSoftmax";
  n.domain = "kiln";
  const cuda::LayerKind* k = cuda::layer_table().find_for(n);
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->op_type, "kiln.MaskedSoftmax");
  EXPECT_TRUE(k->lowers_to_fp16);
}

TEST(CudaMaskedSoftmaxCheck, AcceptsAndRefuses) {
  const DType h = DType::kFloat16;
  for (DType t : kPrecisions) {
    EXPECT_EQ(check_masked({desc(t, {2, 12, 128, 128}), desc(t, {2, 1, 1, 128})}, {{"nan_to_zero", int_attr(1)}}), "");
    EXPECT_EQ(check_masked({desc(t, {-1, 12, 128, 128}), desc(t, {-1, 1, 128, 128})}), "");
    EXPECT_EQ(check_masked({desc(t, {4, 77})}), "");
  }
  auto refused = [](const std::string& why, const std::string& part) {
    EXPECT_NE(why, "");
    EXPECT_NE(why.find(part), std::string::npos) << why;
  };
  refused(check_masked({desc(h, {4, 8})}, {{"axis", int_attr(0)}}), "axis must be the last axis");
  refused(check_masked({desc(h, {4, 8})}, {{"nan_to_zero", int_attr(3)}}), "nan_to_zero must be 0 or 1");
  refused(check_masked({desc(h, {4, 8}), desc(h, {2, 4, 8})}), "does not broadcast to X's shape");
  refused(check_masked({desc(h, {4, 8}), desc(h, {4, 3})}), "does not broadcast to X's shape");
  refused(check_masked({desc(h, {4, 8}), desc(DType::kFloat32, {8})}), "differs from X's");
  refused(check_masked({desc(DType::kInt32, {4, 8})}), "is not supported");
  refused(check_masked({desc(h, {})}), "rank >= 1");
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
