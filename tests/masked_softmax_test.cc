// kiln.MaskedSoftmax (src/backends/cpu/ops/fused_attention.cc) against its ONNX decomposition Add -> Softmax ->
// IsNaN -> Where(isnan, 0, P), fully masked rows included, and the pass that makes it (fuse_masked_softmax):
// the graph after it, its outputs before and after through the CPU executor on random inputs, and the
// graphs it must leave (in part) as they are.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/cast.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20260117);
  return gen;
}

// Uniform in [-3, 3], never zero.
Tensor random_tensor(const Shape& shape) { return testing::random_tensor(rng(), DType::kFloat32, shape, -3.0f, 3.0f); }

// A torch-style additive mask, its first row fully masked (random_tensors.h).
Tensor random_mask(const Shape& shape) { return testing::random_mask(rng(), DType::kFloat32, shape); }

int64_t count_nans(const Tensor& t) {
  const Tensor f = widen_to_float32(t);
  int64_t n = 0;
  for (int64_t i = 0; i < f.numel(); ++i) n += std::isnan(f.data<float>()[i]) ? 1 : 0;
  return n;
}

Tensor run_ok(const std::string& domain, const std::string& op, std::vector<Value> inputs,
              std::map<std::string, ir::Attribute> attrs = {}, int opset = 17) {
  OpRun r = run_kernel(domain, op, std::move(inputs), std::move(attrs), 1, opset, "n_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

Tensor masked_softmax(const Tensor& x, const Value& mask, int nan_to_zero) {
  return run_ok("kiln", "MaskedSoftmax", {x, mask}, {{"nan_to_zero", int_attr(nan_to_zero)}}, 1);
}

// What torch's SDPA export computes, op by op, in the inputs' dtype.
Tensor decomposed(const Tensor& x, const Value& mask, bool nan_to_zero) {
  const Tensor a = mask.is_none() ? x : run_ok("", "Add", {x, mask});
  const Tensor p = run_ok("", "Softmax", {a}, {{"axis", int_attr(-1)}});
  if (!nan_to_zero) return p;
  const Tensor zero = cast_tensor(Tensor::from_vector<float>(DType::kFloat32, {}, {0.0f}), x.dtype()).value();
  return run_ok("", "Where", {run_ok("", "IsNaN", {p}), zero, p});
}

// ---------------------------------------------------------------------------------------------------------
// The op

TEST(MaskedSoftmaxOp, MatchesDecompositionForEachMaskShape) {
  const Shape xs{2, 3, 5, 7};
  const std::vector<Shape> masks{{2, 1, 5, 7}, {2, 1, 1, 7}, {7}, {2, 3, 5, 7}};
  for (const Shape& ms : masks)
    for (int nz : {0, 1}) {
      SCOPED_TRACE(shape_to_string(ms) + " nan_to_zero " + std::to_string(nz));
      const Tensor x = random_tensor(xs), mask = random_mask(ms);
      const Tensor got = masked_softmax(x, mask, nz);
      expect_close(got, decomposed(x, mask, nz), 1e-6, "float32");
      // The fully masked first row: NaN, or 0 with nan_to_zero; the other rows hold no NaN.
      EXPECT_EQ(count_nans(got), nz ? 0 : count_nans(decomposed(x, mask, false)));
      EXPECT_GT(count_nans(decomposed(x, mask, false)), 0);
      if (nz) {
        for (int64_t i = 0; i < xs.back(); ++i) EXPECT_EQ(got.data<float>()[i], 0.0f);
      }
    }
}

TEST(MaskedSoftmaxOp, WithoutMaskIsSoftmax) {
  const Tensor x = random_tensor({4, 33});
  expect_close(masked_softmax(x, Value::none(), 1), run_ok("", "Softmax", {x}, {{"axis", int_attr(-1)}}), 0.0, "no mask");
  // The last axis may be named by its index too.
  const Tensor y = run_ok("kiln", "MaskedSoftmax", {x}, {{"axis", int_attr(1)}}, 1);
  expect_close(y, masked_softmax(x, Value::none(), 0), 0.0, "axis 1 of 2");
}

TEST(MaskedSoftmaxOp, HalfTypesComputeInFloat32AndRoundOnce) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor x = cast_tensor(random_tensor({2, 4, 6, 16}), t).value();
    const Tensor mask = cast_tensor(random_mask({2, 1, 6, 16}), t).value();
    const Tensor got = masked_softmax(x, mask, 1);
    const Tensor exact = masked_softmax(widen_to_float32(x), widen_to_float32(mask), 1);
    expect_close(got, narrow_from_float32(exact, t), 0.0, "rounded once");
    expect_close(got, decomposed(x, mask, true), t == DType::kFloat16 ? 1e-2 : 5e-2, "decomposition");
  }
}

TEST(MaskedSoftmaxOp, ClearErrorsNamingTheNode) {
  const Tensor x = random_tensor({2, 3, 4});
  auto expect_error = [](std::vector<Value> in, std::map<std::string, ir::Attribute> attrs, const std::string& part) {
    OpRun r = run_kernel("kiln", "MaskedSoftmax", std::move(in), std::move(attrs), 1, 1, "attn_sm3");
    ASSERT_FALSE(r.status.ok()) << part;
    EXPECT_NE(r.status.message().find("attn_sm3"), std::string::npos) << r.status.to_string();
    EXPECT_NE(r.status.message().find(part), std::string::npos) << r.status.to_string();
  };
  expect_error({x}, {{"axis", int_attr(1)}}, "axis must be the last axis (-1 or 2), got 1");
  expect_error({x}, {{"nan_to_zero", int_attr(2)}}, "nan_to_zero must be 0 or 1");
  expect_error({x, random_tensor({2, 2, 3, 4})}, {}, "does not broadcast to X's shape [2,3,4]");
  expect_error({x, random_tensor({5, 1})}, {}, "does not broadcast to X's shape");
  expect_error({x, cast_tensor(random_tensor({4}), DType::kFloat16).value()}, {}, "Mask must have X's dtype");
  expect_error({Value::none(), random_tensor({4})}, {}, "input X is required");
  expect_error({Tensor(DType::kInt32, {2, 3})}, {}, "X must be a float tensor");
  expect_error({x, x, x}, {}, "takes 2 inputs");
}

// ---------------------------------------------------------------------------------------------------------
// The pass, on graphs built in code

struct Builder : GraphBuilder {
  using GraphBuilder::GraphBuilder;
  // torch's attention probabilities: Add(s, mask) -> Softmax(-1) -> IsNaN -> Where(isnan, zero, p).
  void sdpa_softmax(const std::string& s, const std::string& mask, const std::string& y, bool mask_first = false) {
    scalar("zero", 0.0f);
    node("Add", mask_first ? std::vector<std::string>{mask, s} : std::vector<std::string>{s, mask}, {"a"}, "add");
    node("Softmax", {"a"}, {"p"}, "softmax").attributes["axis"] = int_attr(-1);
    node("IsNaN", {"p"}, {"nan"}, "isnan");
    node("Where", {"nan", "zero", "p"}, {y}, "where");
  }
};

int64_t attr_i(const ir::Node& n, const std::string& name) {
  const ir::Attribute* a = n.attr(name);
  return a ? a->i : -99;
}

// Runs fuse_masked_softmax after shape inference, comparing the graph's outputs before and after.
int fuse_and_compare(Builder& b) { return b.apply_counted_pass(passes::fuse_masked_softmax, 1e-6); }

TEST(FuseMaskedSoftmax, SdpaPatternBecomesOneNode) {
  for (bool mask_first : {false, true})
    for (const Shape& ms : {Shape{2, 1, 6, 6}, Shape{2, 1, 1, 6}}) {
      SCOPED_TRACE(shape_to_string(ms) + (mask_first ? " mask first" : ""));
      Builder b;
      b.input("s", random_tensor({2, 3, 6, 6}));
      b.input("mask", random_mask(ms));  // a fully masked row: NaN before the Where
      b.sdpa_softmax("s", "mask", "y", mask_first);
      b.output("y");
      EXPECT_EQ(fuse_and_compare(b), 1);
      ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.MaskedSoftmax"}));
      const ir::Node& f = b.m.graph.nodes[0];
      EXPECT_EQ(f.name, "add + softmax + isnan + where");
      EXPECT_EQ(f.inputs, (std::vector<std::string>{"s", "mask"}));
      EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
      EXPECT_EQ(attr_i(f, "nan_to_zero"), 1);
      EXPECT_EQ(attr_i(f, "axis"), -1);
      EXPECT_EQ(b.m.opsets["kiln"], 1);
      ASSERT_NE(b.m.graph.type_of("y"), nullptr);
      EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float32[2,3,6,6]");
    }
}

TEST(FuseMaskedSoftmax, AddAloneOrTailAlone) {
  {
    Builder b;  // Add -> Softmax(axis 3 of 4)
    b.input("s", random_tensor({2, 3, 5, 8}));
    b.input("mask", random_mask({1, 1, 5, 8}));
    b.node("Add", {"s", "mask"}, {"a"}, "add");
    b.node("Softmax", {"a"}, {"y"}, "softmax").attributes["axis"] = int_attr(3);
    b.output("y");
    EXPECT_EQ(fuse_and_compare(b), 1);
    ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.MaskedSoftmax"}));
    EXPECT_EQ(b.m.graph.nodes[0].name, "add + softmax");
    EXPECT_EQ(attr_i(b.m.graph.nodes[0], "nan_to_zero"), 0);
  }
  {
    Builder b;  // Softmax -> IsNaN -> Where: no mask input
    b.input("s", random_tensor({4, 9}));
    b.scalar("zero", 0.0f);
    b.node("Softmax", {"s"}, {"p"}, "softmax");
    b.node("IsNaN", {"p"}, {"nan"}, "isnan");
    b.node("Where", {"nan", "zero", "p"}, {"y"}, "where");
    b.output("y");
    EXPECT_EQ(fuse_and_compare(b), 1);
    ASSERT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.MaskedSoftmax"}));
    EXPECT_EQ(b.m.graph.nodes[0].inputs, (std::vector<std::string>{"s"}));
    EXPECT_EQ(attr_i(b.m.graph.nodes[0], "nan_to_zero"), 1);
  }
}

TEST(FuseMaskedSoftmax, LeavesWhatItMustNotAbsorb) {
  struct Case {
    const char* why;
    std::function<void(Builder&)> change;
    std::vector<std::string> ops_after;
  };
  const std::vector<std::string> whole{"Add", "Softmax", "IsNaN", "Where"};
  const std::vector<Case> cases{
      {"P read by another node",
       [](Builder& b) {
         b.node("Neg", {"p"}, {"q"}, "neg");
         b.output("q");
       },
       {"kiln.MaskedSoftmax", "IsNaN", "Where", "Neg"}},
      {"P a graph output", [](Builder& b) { b.output("p"); }, {"kiln.MaskedSoftmax", "IsNaN", "Where"}},
      {"the IsNaN read elsewhere", [](Builder& b) { b.output("nan"); }, {"kiln.MaskedSoftmax", "IsNaN", "Where"}},
      {"Where's value 0.5",
       [](Builder& b) { b.m.graph.initializers["zero"] = Tensor::from_vector<float>(DType::kFloat32, {}, {0.5f}); },
       {"kiln.MaskedSoftmax", "IsNaN", "Where"}},
      {"Where's value not a constant",
       [](Builder& b) {
         b.m.graph.initializers.erase("zero");
         b.input("zero", Tensor::from_vector<float>(DType::kFloat32, {}, {0.0f}));
       },
       {"kiln.MaskedSoftmax", "IsNaN", "Where"}},
      {"Where's operands swapped",
       [](Builder& b) { std::swap(b.m.graph.nodes[3].inputs[1], b.m.graph.nodes[3].inputs[2]); },
       {"kiln.MaskedSoftmax", "IsNaN", "Where"}},
      {"the mask broadcast grows the scores",
       [](Builder& b) {
         b.m.graph.inputs[0].type.dims.erase(b.m.graph.inputs[0].type.dims.begin());  // s [3, 6, 6]
         b.feeds["s"] = random_tensor({3, 6, 6});
       },
       {"Add", "kiln.MaskedSoftmax"}},
      {"the sum read elsewhere", [](Builder& b) { b.output("a"); }, {"Add", "kiln.MaskedSoftmax"}},
      {"softmax along another axis",
       [](Builder& b) { b.m.graph.nodes[1].attributes["axis"] = int_attr(2); },
       whole},
      {"opset 12", [](Builder& b) { b.m.opsets[""] = 12; }, whole},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    Builder b;
    b.input("s", random_tensor({2, 3, 6, 6}));
    b.input("mask", random_mask({2, 1, 6, 6}));
    b.sdpa_softmax("s", "mask", "y");
    b.output("y");
    c.change(b);
    fuse_and_compare(b);
    EXPECT_EQ(op_types(b.m), c.ops_after);
  }
}

}  // namespace
}  // namespace kiln::testing
