// A GraphBuilder for the tests of the passes that rewrite channels-last kiln.FusedConv nodes
// (fuse_conv_pair, fold_projection_shortcut): the nodes as convert_conv_layout leaves them, with random
// weights and biases of the builder's dtype drawn from the test's generator.
#pragma once

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln::testing {

// A conv's sizes and epilogue: c input and m output channels, a k x k window, the stride.
struct ConvSpec {
  int64_t c, m;
  std::string activation = "";
  int64_t k = 1, stride = 1;
  bool bias = true;
};

struct FusedConvGraphBuilder : GraphBuilder {
  DType dt;
  std::mt19937& gen;
  FusedConvGraphBuilder(DType t, std::mt19937& g, int opset = 17) : GraphBuilder(opset), dt(t), gen(g) {
    m.opsets["kiln"] = 1;
  }

  Tensor random(const Shape& s, float lo = -1.0f, float hi = 1.0f) { return random_tensor(gen, dt, s, lo, hi); }

  // A channels-last kiln.FusedConv named `name`: weights name_w [m, k, k, c], bias name_b [m], "same"
  // padding, residual `z` when given.
  ir::Node& conv(const std::string& name, const std::string& x, const std::string& y, const ConvSpec& s,
                 const std::string& z = "") {
    init(name + "_w", random({s.m, s.k, s.k, s.c}, -0.5f, 0.5f));
    std::vector<std::string> in = {x, name + "_w", ""};
    if (s.bias) {
      init(name + "_b", random({s.m}, -0.2f, 0.2f));
      in[2] = name + "_b";
    }
    if (!z.empty()) in.push_back(z);
    while (in.back().empty()) in.pop_back();
    ir::Node& n = node("FusedConv", in, {y}, name, "kiln");
    n.attributes["channels_last"] = passes::int_attribute(1);
    n.attributes["activation"] = passes::string_attribute(s.activation);
    n.attributes["kernel_shape"] = passes::ints_attribute({s.k, s.k});
    n.attributes["pads"] = passes::ints_attribute({s.k / 2, s.k / 2, s.k / 2, s.k / 2});
    n.attributes["strides"] = passes::ints_attribute({s.stride, s.stride});
    return n;
  }

  // The passes that rewrite pairs (sample_pair_output, write_concat_in_place): fuse_conv_pair first, expected
  // to make one pair, then `pass`, on the typed graph, compared with the graph before at tol 0 (both
  // rewrites move values without computing them). Returns `pass`'s count, -1 when it failed.
  int apply_after_pairing(const std::function<Status(ir::Model&, int*)>& pass) {
    return apply_counted_pass(
        [&](ir::Model& model, int* n) {
          int pairs = 0;
          KILN_RETURN_IF_ERROR(passes::fuse_conv_pair(model, &pairs));
          EXPECT_EQ(pairs, 1);
          KILN_RETURN_IF_ERROR(passes::infer_shapes(model));
          return pass(model, n);
        },
        0.0);
  }
};

}  // namespace kiln::testing
