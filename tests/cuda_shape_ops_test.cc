// The CUDA shape layers (src/backends/cuda/shape_ops.cu) against the CPU reference: the views (Reshape,
// Flatten, Squeeze, Unsqueeze, Identity, inference Dropout: no kernel, the harness copies the input, so
// these tests check check() and the output shapes), Transpose, Expand and Tile over ranks, odd sizes,
// size-1 dims and dtypes (float32, float16, bfloat16 through LayerCase::precision; int64, int32, int8,
// bool and float64 as raw data); and what check() refuses, which needs no GPU.
#ifdef KILN_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
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
// Views

TEST(CudaShapeOps, ReshapeAllowzeroAndInferredDims) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kInt64, DType::kBool}) {
    SCOPED_TRACE(dtype_name(t));
    // 0 copies the input's dim; -1 is inferred; the shape input not constant (accepted: shape inference knows).
    expect_layer_matches_reference(
        make_case("Reshape", {data_of(t, {2, 3, 5}), ints_tensor({0, -1})}, {}, t));
    LayerCase c = make_case("Reshape", {data_of(t, {7, 1, 3}), ints_tensor({3, 1, 7, 1})}, {{"allowzero", int_attr(1)}}, t);
    c.constant_inputs = {1};
    expect_layer_matches_reference(c);
  }
  // Rank 0 <-> rank 1, and the opset-1 shape attribute.
  expect_layer_matches_reference(make_case("Reshape", {data_of(DType::kFloat32, {}), ints_tensor({1})}, {}, DType::kFloat32));
  expect_layer_matches_reference(
      make_case("Reshape", {data_of(DType::kInt8, {4, 6})}, {{"shape", ints_attr({2, 12})}}, DType::kInt8, 1));
}

TEST(CudaShapeOps, FlattenAxes) {
  KILN_SKIP_WITHOUT_GPU();
  for (int64_t axis : {0, 1, 2, 3, -1, -3})
    expect_layer_matches_reference(
        make_case("Flatten", {data_of(DType::kFloat32, {2, 3, 1, 5})}, {{"axis", int_attr(axis)}}, DType::kFloat32));
  expect_layer_matches_reference(make_case("Flatten", {data_of(DType::kBFloat16, {7})}, {}, DType::kBFloat16));
}

TEST(CudaShapeOps, SqueezeAndUnsqueeze) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kInt32}) {
    SCOPED_TRACE(dtype_name(t));
    // Opset 13: axes as an input (constant or not); opset 11: the attribute; no axes: every size-1 dim.
    LayerCase sq = make_case("Squeeze", {data_of(t, {1, 3, 1, 5, 1}), ints_tensor({0, -1})}, {}, t, 13);
    expect_layer_matches_reference(sq);
    sq.constant_inputs = {1};
    expect_layer_matches_reference(sq);
    expect_layer_matches_reference(make_case("Squeeze", {data_of(t, {1, 3, 1, 5, 1})}, {}, t, 13));
    expect_layer_matches_reference(
        make_case("Squeeze", {data_of(t, {3, 1, 5})}, {{"axes", ints_attr({1})}}, t, 11));
    LayerCase un = make_case("Unsqueeze", {data_of(t, {3, 5}), ints_tensor({0, -1, 2})}, {}, t, 13);
    un.constant_inputs = {1};
    expect_layer_matches_reference(un);
    expect_layer_matches_reference(make_case("Unsqueeze", {data_of(t, {})}, {{"axes", ints_attr({0})}}, t, 11));
  }
}

TEST(CudaShapeOps, IdentityAndInferenceDropout) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes)
    expect_layer_matches_reference(make_case("Identity", {data_of(t, {3, 7, 2})}, {}, t));
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    // Opset 12+: ratio and a constant-false training_mode; opset 7: the ratio attribute only.
    LayerCase d = make_case("Dropout",
                            {data_of(t, {4, 9}), Tensor::scalar<float>(DType::kFloat32, 0.3f),
                             Tensor::scalar<bool>(DType::kBool, false)},
                            {}, t, 13);
    d.constant_inputs = {1, 2};
    d.keep_fp32_inputs = {1};
    expect_layer_matches_reference(d);
    expect_layer_matches_reference(make_case("Dropout", {data_of(t, {5})}, {{"ratio", float_attr_of(0.5f)}}, t, 7));
    // No training_mode input at all.
    expect_layer_matches_reference(make_case("Dropout", {data_of(t, {2, 3, 1})}, {}, t, 13));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Transpose

void expect_transpose(DType t, const Shape& shape, const std::vector<int64_t>& perm, bool with_perm = true) {
  SCOPED_TRACE(what(t, shape) + " perm " + shape_to_string(perm));
  Attrs attrs;
  if (with_perm) attrs["perm"] = ints_attr(perm);
  expect_layer_matches_reference(make_case("Transpose", {data_of(t, shape)}, attrs, t));
}

TEST(CudaShapeOps, TransposeAttentionHeads) {
  KILN_SKIP_WITHOUT_GPU();
  // [B,S,H,D] -> [B,H,S,D] and back (BERT, D = 64): rows of D stay contiguous.
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    expect_transpose(t, {2, 7, 12, 64}, {0, 2, 1, 3});
    expect_transpose(t, {2, 12, 7, 64}, {0, 2, 1, 3});
    expect_transpose(t, {1, 13, 3, 8}, {0, 2, 1, 3});  // D = 8: 16-byte runs in fp16, 32 in fp32
    expect_transpose(t, {2, 5, 3, 7}, {0, 2, 1, 3});   // odd D: element copies
    // K transposed for Q.K^T: [B,H,S,D] -> [B,H,D,S] (the innermost dim moves: tiled).
    expect_transpose(t, {2, 3, 37, 64}, {0, 1, 3, 2});
  }
}

TEST(CudaShapeOps, TransposeTiledAndSmallInnerDims) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    expect_transpose(t, {33, 65}, {}, false);                // default: reversed
    expect_transpose(t, {3, 37, 45}, {0, 2, 1});             // tiled with partial tiles
    expect_transpose(t, {2, 3, 17, 19}, {0, 2, 3, 1});       // NCHW -> NHWC, C = 3: gather
    expect_transpose(t, {2, 17, 19, 3}, {0, 3, 1, 2});       // NHWC -> NCHW
    expect_transpose(t, {2, 40, 3, 20}, {0, 3, 2, 1});       // tiled with a batch dim between
    expect_transpose(t, {16, 16}, {1, 0});                   // part of one tile
    expect_transpose(t, {2, 100, 36}, {0, 2, 1});            // packed accesses, partial tiles
    expect_transpose(t, {3, 130, 66}, {0, 2, 1});            // pairs but not quads
    expect_transpose(t, {130, 3, 68}, {2, 1, 0});            // packed, a batch dim between
  }
}

TEST(CudaShapeOps, TransposeSizeOneDimsAndCopies) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kInt64, DType::kBool}) {
    expect_transpose(t, {1, 5, 1, 7}, {3, 2, 1, 0});   // a real 2-D transpose once size-1 dims go
    expect_transpose(t, {1, 5, 1, 7}, {2, 1, 0, 3});   // only size-1 dims move: a copy
    expect_transpose(t, {11}, {0});                    // rank 1
    expect_transpose(t, {4, 5, 6}, {0, 1, 2});         // identity perm
    expect_transpose(t, {4, 5, 6}, {-3, -1, -2});      // negative perm entries
    expect_transpose(t, {2, 3, 4, 5, 6}, {4, 3, 2, 1, 0});
  }
}

TEST(CudaShapeOps, TransposeRandomPermsRanks2To6) {
  KILN_SKIP_WITHOUT_GPU();
  std::mt19937& rng = cuda_test_rng();
  std::uniform_int_distribution<int64_t> dim(1, 7);
  for (int rank = 2; rank <= 6; ++rank) {
    for (int trial = 0; trial < 6; ++trial) {
      Shape shape;
      for (int k = 0; k < rank; ++k) shape.push_back(dim(rng));
      if (trial == 0) shape.back() = 33;  // long enough rows for the tiled and widened paths
      if (trial == 1) shape.front() = 40;
      std::vector<int64_t> perm(rank);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      const DType t = kAllTypes[(rank * 6 + trial) % (sizeof(kAllTypes) / sizeof(kAllTypes[0]))];
      expect_transpose(t, shape, perm);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Expand and Tile

void expect_expand(DType t, const Shape& in, const std::vector<int64_t>& shape, bool constant) {
  SCOPED_TRACE(what(t, in) + " to " + shape_to_string(shape) + (constant ? " (constant)" : ""));
  LayerCase c = make_case("Expand", {data_of(t, in), ints_tensor(shape)}, {}, t, 13);
  if (constant) c.constant_inputs = {1};
  expect_layer_matches_reference(c);
}

TEST(CudaShapeOps, ExpandBroadcasts) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    expect_expand(t, {3, 1}, {2, 3, 4}, true);
    expect_expand(t, {1}, {5}, false);
    expect_expand(t, {}, {2, 3}, true);                  // a scalar
    expect_expand(t, {4, 1, 6}, {4, 5, 6}, false);       // inner rows contiguous (widened)
    expect_expand(t, {4, 1, 8}, {4, 5, 8}, true);
    expect_expand(t, {2, 1, 1, 3, 1}, {2, 4, 5, 3, 7}, true);  // rank 5
    expect_expand(t, {2, 3}, {3}, false);                // shape of lower rank
    expect_expand(t, {3, 4}, {1, 1}, true);              // ones: the input's own shape
    expect_expand(t, {1, 7}, {9, 1}, true);              // both broadcast
    expect_expand(t, {2, 3, 1}, {2, 3, 16}, true);       // a broadcast innermost dim: rows filled
    expect_expand(t, {}, {2, 3, 8}, false);
    expect_expand(t, {5, 1, 1}, {5, 3, 6}, true);
  }
}

void expect_tile(DType t, const Shape& in, const std::vector<int64_t>& repeats, bool constant = true) {
  SCOPED_TRACE(what(t, in) + " repeats " + shape_to_string(repeats));
  LayerCase c = make_case("Tile", {data_of(t, in), ints_tensor(repeats)}, {}, t, 13);
  if (constant) c.constant_inputs = {1};
  expect_layer_matches_reference(c);
}

TEST(CudaShapeOps, TileRepeats) {
  KILN_SKIP_WITHOUT_GPU();
  for (DType t : kAllTypes) {
    expect_tile(t, {2, 3}, {2, 2});
    expect_tile(t, {5}, {3});
    expect_tile(t, {2, 1, 3}, {1, 4, 2});
    expect_tile(t, {2, 4}, {3, 1});            // outer repeats of whole rows (widened)
    expect_tile(t, {3, 8}, {1, 3}, false);     // inner repeats of 8 (widened with wrap)
    expect_tile(t, {1, 2, 3, 1}, {2, 1, 2, 5});
    expect_tile(t, {2, 1, 3, 1, 2}, {1, 3, 1, 2, 2});  // rank 5
    expect_tile(t, {4, 5}, {1, 1});            // a copy
    expect_tile(t, {2, 3}, {0, 2});            // empty output
    expect_tile(t, {3, 1}, {1, 8});            // a size-1 innermost dim repeated: rows filled
  }
}

// ---------------------------------------------------------------------------------------------------------
// check(): what the layers refuse, and what they accept with unknown dims or non-constant inputs. No GPU.

// desc and check_of: cuda_layer_harness.h.

TEST(CudaShapeOpsCheck, ViewsAcceptNonConstantShapesAndUnknownDims) {
  const cuda::TensorDesc f = desc(DType::kFloat32, {-1, 3, 5});
  EXPECT_EQ(check_of("Reshape", {f, desc(DType::kInt64, {2})}, {desc(DType::kFloat32, {-1, 15})}), "");
  EXPECT_EQ(check_of("Reshape", {f, desc(DType::kInt64, {2})}, {desc(DType::kFloat32, {}, nullptr, false)},
                     {{"allowzero", int_attr(1)}}),
            "");
  EXPECT_EQ(check_of("Squeeze", {f, desc(DType::kInt64, {1})}, {desc(DType::kFloat32, {-1, 3, 5})}, {}, 13), "");
  EXPECT_EQ(check_of("Unsqueeze", {f, desc(DType::kInt64, {1})}, {desc(DType::kFloat32, {1, -1, 3, 5})}, {}, 13), "");
  EXPECT_EQ(check_of("Flatten", {f}, {desc(DType::kFloat32, {-1, -1})}, {{"axis", int_attr(-1)}}), "");
  EXPECT_EQ(check_of("Identity", {desc(DType::kBool, {-1})}, {desc(DType::kBool, {-1})}), "");
  for (const char* op : {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}) {
    const cuda::LayerKind* kind = cuda::layer_table().find(op);
    ASSERT_NE(kind, nullptr) << op;
    EXPECT_TRUE(kind->output_is_view_of_input0) << op;
    EXPECT_TRUE(kind->lowers_to_fp16) << op;
  }
}

TEST(CudaShapeOpsCheck, FlattenRefusesAnAxisOutOfRange) {
  const std::string why = check_of("Flatten", {desc(DType::kFloat32, {2, 3})}, {desc(DType::kFloat32, {6, 1})},
                                   {{"axis", int_attr(3)}});
  EXPECT_NE(why.find("axis 3"), std::string::npos) << why;
}

TEST(CudaShapeOpsCheck, DropoutOnlyAtInference) {
  const cuda::TensorDesc x = desc(DType::kFloat32, {4, 5});
  const Tensor ratio = Tensor::scalar<float>(DType::kFloat32, 0.5f);
  const Tensor zero_ratio = Tensor::scalar<float>(DType::kFloat32, 0.0f);
  const Tensor off = Tensor::scalar<bool>(DType::kBool, false), on = Tensor::scalar<bool>(DType::kBool, true);
  const cuda::TensorDesc y = desc(DType::kFloat32, {4, 5});
  EXPECT_EQ(check_of("Dropout", {x}, {y}, {}, 7), "");
  EXPECT_EQ(check_of("Dropout", {x, desc(DType::kFloat32, {}, &ratio), desc(DType::kBool, {}, &off)}, {y}, {}, 13), "");
  // The mask output absent (omitted) is fine; present is refused.
  EXPECT_EQ(check_of("Dropout", {x}, {y, cuda::TensorDesc()}, {}, 13), "");
  std::string why = check_of("Dropout", {x}, {y, desc(DType::kBool, {4, 5})}, {}, 13);
  EXPECT_NE(why.find("mask"), std::string::npos) << why;
  why = check_of("Dropout", {x, desc(DType::kFloat32, {}, &ratio), desc(DType::kBool, {})}, {y}, {}, 13);
  EXPECT_NE(why.find("training_mode must be a constant"), std::string::npos) << why;
  why = check_of("Dropout", {x, desc(DType::kFloat32, {}, &ratio), desc(DType::kBool, {}, &on)}, {y}, {}, 13);
  EXPECT_NE(why.find("training mode"), std::string::npos) << why;
  // Training with ratio 0 is still the identity.
  EXPECT_EQ(check_of("Dropout", {x, desc(DType::kFloat32, {}, &zero_ratio), desc(DType::kBool, {}, &on)}, {y}, {}, 13), "");
}

TEST(CudaShapeOpsCheck, TransposeRefusals) {
  const cuda::TensorDesc x = desc(DType::kFloat32, {2, 3, 4});
  const cuda::TensorDesc y = desc(DType::kFloat32, {4, 3, 2});
  EXPECT_EQ(check_of("Transpose", {x}, {y}), "");
  EXPECT_EQ(check_of("Transpose", {desc(DType::kFloat32, {-1, -1, 4})}, {y}, {{"perm", ints_attr({2, 0, 1})}}), "");
  EXPECT_EQ(check_of("Transpose", {desc(DType::kFloat32, {}, nullptr, false)}, {y}, {{"perm", ints_attr({2, 0, 1})}}), "");
  std::string why = check_of("Transpose", {x}, {y}, {{"perm", ints_attr({0, 0, 1})}});
  EXPECT_NE(why.find("not a permutation"), std::string::npos) << why;
  why = check_of("Transpose", {x}, {y}, {{"perm", ints_attr({1, 0})}});
  EXPECT_NE(why.find("not a permutation"), std::string::npos) << why;
  why = check_of("Transpose", {desc(DType::kString, {2, 3})}, {desc(DType::kString, {3, 2})});
  EXPECT_NE(why.find("string"), std::string::npos) << why;
  why = check_of("Transpose", {desc(DType::kComplex128, {2, 3})}, {desc(DType::kComplex128, {3, 2})});
  EXPECT_NE(why.find("complex128"), std::string::npos) << why;
  why = check_of("Transpose", {desc(DType::kFloat32, Shape(13, 2))}, {desc(DType::kFloat32, Shape(13, 2))});
  EXPECT_NE(why.find("rank 13"), std::string::npos) << why;
}

TEST(CudaShapeOpsCheck, ExpandAndTileAcceptNonConstantShapes) {
  // The output shape is concrete at create time: the shape / repeats input need not be a constant.
  EXPECT_EQ(check_of("Expand", {desc(DType::kFloat16, {3, 1}), desc(DType::kInt64, {3})},
                     {desc(DType::kFloat16, {-1, 3, -1})}),
            "");
  EXPECT_EQ(check_of("Tile", {desc(DType::kInt64, {3, 1}), desc(DType::kInt64, {2})}, {desc(DType::kInt64, {-1, -1})}), "");
  const std::string why =
      check_of("Tile", {desc(DType::kString, {3}), desc(DType::kInt64, {1})}, {desc(DType::kString, {6})});
  EXPECT_NE(why.find("string"), std::string::npos) << why;
}

}  // namespace
}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
