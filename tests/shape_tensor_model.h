// The model of the shape-tensor tests (CPU: shape_tensor_test.cc, GPU: cuda_shape_tensor_test.cc): x
// float32[batch, 6] -> Relu -> Reshape(., target) -> y, with target an int64[2] input (a shape tensor), and
// the profile they build it with: batch 1..4 (opt 2), target [2,3]..[8,3] (opt [4,3]), i.e. [batch*2, 3].
#pragma once

#include <gtest/gtest.h>

#include "kiln/kiln.h"
#include "test_models.h"

namespace kiln::testing {

inline onnx::ModelProto reshape_by_shape_tensor() {
  onnx::ModelProto m = new_model();
  auto* g = m.mutable_graph();
  set_type(g->add_input(), "x", 1, {"batch", "6"});
  set_type(g->add_input(), "target", 7, {"2"});
  auto* y = g->add_output();  // its shape is the target's values: not declared
  y->set_name("y");
  y->mutable_type()->mutable_tensor_type()->set_elem_type(1);
  add_node(g, "Relu", {"x"}, {"act"}, "relu");
  add_node(g, "Reshape", {"act", "target"}, {"y"}, "reshape");
  return m;
}

inline OptimizationProfile shape_tensor_profile() {
  OptimizationProfile p;
  EXPECT_TRUE(p.set_shape("x", {1, 6}, {2, 6}, {4, 6}).ok());
  EXPECT_TRUE(p.set_shape_values("target", {2, 3}, {4, 3}, {8, 3}).ok());
  return p;
}

inline Tensor target_tensor(int64_t rows, int64_t cols) {
  return Tensor::from_vector<int64_t>(DType::kInt64, {2}, std::vector<int64_t>{rows, cols});
}

}  // namespace kiln::testing
