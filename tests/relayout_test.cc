// kiln.Relayout's CPU reference (src/backends/cpu/ops/relayout.cc) against the ONNX chain it stands for,
// Pad(Cast(Transpose(X))), through the ONNX ops' own references on fresh random inputs; its shape inference and
// its errors; then the pass that makes it (fuse_relayout): the graph after it for each order of the links, the
// outputs before and after through the CPU executor (bit for bit), and the chains that must stay as they are.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/cast.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"

namespace kiln::testing {
namespace {

using Attrs = std::map<std::string, ir::Attribute>;

std::mt19937& rng() {
  static std::mt19937 gen(random_seed("relayout tests"));
  return gen;
}

// Uniform in +-[0.05, 4] (never zero), rounded to `dtype`.
Tensor random_tensor(const Shape& shape, DType dtype) { return random_signed_tensor(rng(), dtype, shape, 0.05f, 4.0f); }

Tensor run_one(const std::string& domain, const std::string& op, std::vector<Value> inputs, Attrs attrs, int opset) {
  OpRun r = run_kernel(domain, op, std::move(inputs), std::move(attrs), 1, opset, "n_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

Attrs relayout_attrs(std::vector<int64_t> perm, DType to, std::vector<int64_t> pads) {
  return {{"perm", ints_attr(std::move(perm))}, {"to", int_attr(static_cast<int64_t>(to))}, {"pads", ints_attr(std::move(pads))}};
}

// kiln.Relayout and the ONNX Transpose, Cast and Pad references in turn: equal, element for element.
void expect_matches_chain(const Shape& shape, DType from, const std::vector<int64_t>& perm, DType to,
                          const std::vector<int64_t>& pads) {
  SCOPED_TRACE(dtype_name(from) + shape_to_string(shape) + " perm " + shape_to_string(perm) + " -> " +
               dtype_name(to) + " pads " + shape_to_string(pads));
  const Tensor x = random_tensor(shape, from);
  const Tensor t = run_one("", "Transpose", {Value(x)}, {{"perm", ints_attr(perm)}}, 17);
  const Tensor c = run_one("", "Cast", {Value(t)}, {{"to", int_attr(static_cast<int64_t>(to))}}, 17);
  const Tensor want = run_one("", "Pad", {Value(c), Value(Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(pads.size())}, pads))}, {}, 17);
  const Tensor got = run_one("kiln", "Relayout", {Value(x)}, relayout_attrs(perm, to, pads), 1);
  ASSERT_EQ(got.dtype(), to);
  expect_close(got, want, 0.0, "relayout");
}

TEST(RelayoutOp, MatchesTheOnnxChain) {
  // ResNet's input: NCHW float32 to NHWC float16 with the channels padded 3 -> 8.
  expect_matches_chain({2, 3, 7, 5}, DType::kFloat32, {0, 2, 3, 1}, DType::kFloat16, {0, 0, 0, 0, 0, 0, 0, 5});
  expect_matches_chain({2, 3, 7, 5}, DType::kFloat32, {0, 2, 3, 1}, DType::kBFloat16, {0, 0, 0, 0, 0, 0, 0, 5});
  expect_matches_chain({2, 3, 7, 5}, DType::kFloat16, {0, 2, 3, 1}, DType::kFloat32, {0, 0, 0, 0, 0, 0, 0, 1});
  expect_matches_chain({3, 4, 5}, DType::kFloat32, {2, 0, 1}, DType::kFloat32, {1, 0, 2, 0, 3, 1});
  expect_matches_chain({2, 3, 1, 4, 2}, DType::kBFloat16, {4, 2, 0, 3, 1}, DType::kFloat16, {0, 1, 0, 2, 0, 1, 1, 0, 0, 3});
  expect_matches_chain({2, 1, 2, 1, 2, 3}, DType::kFloat64, {5, 4, 3, 2, 1, 0}, DType::kFloat32, {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1});
  expect_matches_chain({6}, DType::kFloat32, {0}, DType::kFloat16, {2, 3});
}

TEST(RelayoutOp, DefaultsAreIdentityNoCastNoPads) {
  const Tensor x = random_tensor({2, 3}, DType::kFloat16);
  const Tensor y = run_one("kiln", "Relayout", {Value(x)}, {}, 1);
  expect_close(y, x, 0.0, "identity");
}

TEST(RelayoutOp, ShapeInference) {
  GraphBuilder b;
  ir::ValueInfo x;
  x.name = "x";
  x.type.kind = ir::TypeInfo::Kind::kTensor;
  x.type.dtype = DType::kFloat32;
  x.type.has_shape = true;
  x.type.dims = {ir::Dim::named("N"), ir::Dim::of(3), ir::Dim::named("H"), ir::Dim::of(224)};
  b.m.graph.inputs.push_back(x);
  b.m.opsets["kiln"] = 1;
  b.node("Relayout", {"x"}, {"y"}, "r", "kiln").attributes = relayout_attrs({0, 2, 3, 1}, DType::kFloat16, {0, 0, 0, 0, 0, 1, 0, 5});
  b.output("y");
  ASSERT_TRUE(passes::infer_shapes(b.m).ok());
  ASSERT_NE(b.m.graph.type_of("y"), nullptr);
  EXPECT_EQ(b.m.graph.type_of("y")->to_string(), "float16[N,?,224,8]");
}

TEST(RelayoutOp, BadInputIsAnErrorNamingTheNode) {
  auto expect_error = [](const Tensor& x, Attrs attrs, const std::string& says) {
    OpRun r = run_kernel("kiln", "Relayout", {Value(x)}, std::move(attrs), 1, 1, "bad_relayout");
    ASSERT_FALSE(r.status.ok()) << says;
    EXPECT_NE(r.status.message().find("bad_relayout"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find(says), std::string::npos) << r.status.message();
  };
  const Tensor x = random_tensor({2, 3, 4}, DType::kFloat32);
  expect_error(x, relayout_attrs({0, 2}, DType::kFloat16, {0, 0, 0, 0, 0, 0}), "not a permutation");
  expect_error(x, relayout_attrs({0, 2, 2}, DType::kFloat16, {0, 0, 0, 0, 0, 0}), "not a permutation");
  expect_error(x, relayout_attrs({0, 1, 2}, DType::kFloat16, {0, 0, 0, 0}), "pads");
  expect_error(x, relayout_attrs({0, 1, 2}, DType::kFloat16, {0, 0, 0, 0, -1, 0}), "none negative");
  expect_error(x, relayout_attrs({0, 1, 2}, DType::kInt32, {0, 0, 0, 0, 0, 0}), "attribute to must be");
  expect_error(x, {{"perm", int_attr(1)}}, "perm must be a list");
  expect_error(random_tensor({1, 1, 1, 1, 1, 1, 2}, DType::kFloat32), {}, "rank 1 to 6");
  expect_error(Tensor::from_vector<int64_t>(DType::kInt64, {2}, {1, 2}), {}, "X must be float32");
}

// ---------------------------------------------------------------------------------------------------------
// The pass

// x [2, 3, 5, 4] float32 through the links given as (op, argument) in order, then an Identity reading the last.
struct ChainBuilder : GraphBuilder {
  std::string last = "x";
  int links = 0;
  ChainBuilder() { input("x", random_tensor({2, 3, 5, 4}, DType::kFloat32)); }
  ir::Node& link(const std::string& op, std::vector<std::string> extra = {}) {
    const std::string out = "v" + std::to_string(++links);
    std::vector<std::string> ins = {last};
    ins.insert(ins.end(), extra.begin(), extra.end());
    last = out;
    return node(op, ins, {out});
  }
  void cast(DType to) { link("Cast").attributes["to"] = int_attr(static_cast<int64_t>(to)); }
  void transpose(std::vector<int64_t> perm) { link("Transpose").attributes["perm"] = ints_attr(std::move(perm)); }
  void pad(std::vector<int64_t> pads, const std::string& value = "", const std::string& mode = "") {
    const std::string p = "pads" + std::to_string(links + 1);
    init(p, Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(pads.size())}, pads));
    ir::Node& n = value.empty() ? link("Pad", {p}) : link("Pad", {p, value});
    if (!mode.empty()) n.attributes["mode"] = string_attr(mode);
  }
  void finish() {
    node("Identity", {last}, {"y"});
    output("y");
    ASSERT_TRUE(passes::infer_shapes(m).ok());
  }
  // Runs the pass (and the dead-node pass, for the Pads' pads) and compares the outputs, bit for bit.
  int fuse() {
    int fused = -1;
    apply_and_compare([&](ir::Model& model) {
      KILN_RETURN_IF_ERROR(passes::fuse_relayout(model, &fused));
      KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(model));
      return passes::infer_shapes(model);
    }, 0.0);
    return fused;
  }
};

const ir::Node& relayout_of(const ir::Model& m) {
  const ir::Node* n = find_op(m, "Relayout");
  EXPECT_NE(n, nullptr);
  static const ir::Node none;
  return n ? *n : none;
}

TEST(FuseRelayout, ResNetInputChainBecomesOneNode) {
  ChainBuilder b;
  b.cast(DType::kFloat16);
  b.transpose({0, 2, 3, 1});
  b.pad({0, 0, 0, 0, 0, 0, 0, 5});
  b.finish();
  EXPECT_EQ(b.fuse(), 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.Relayout", "Identity"}));
  const ir::Node& r = relayout_of(b.m);
  EXPECT_EQ(r.name, "Cast_0 + Transpose_1 + Pad_2");
  EXPECT_EQ(r.inputs, std::vector<std::string>{"x"});
  EXPECT_EQ(r.attr("perm")->ints, (std::vector<int64_t>{0, 2, 3, 1}));
  EXPECT_EQ(r.attr("to")->i, static_cast<int64_t>(DType::kFloat16));
  EXPECT_EQ(r.attr("pads")->ints, (std::vector<int64_t>{0, 0, 0, 0, 0, 0, 0, 5}));
  EXPECT_EQ(b.m.graph.type_of("v3")->to_string(), "float16[2,5,4,8]");
  EXPECT_EQ(b.m.graph.type_of("v1"), nullptr);  // the vanished intermediates' types go too
  EXPECT_TRUE(b.m.graph.initializers.empty());  // the Pad's pads, no longer read
}

TEST(FuseRelayout, EveryOrderComposes) {
  using Build = std::function<void(ChainBuilder&)>;
  struct Case {
    const char* what;
    Build build;
    std::vector<int64_t> perm, pads;
    DType to;
  };
  const std::vector<Case> cases = {
      {"Transpose Cast Pad", [](ChainBuilder& b) { b.transpose({0, 2, 3, 1}); b.cast(DType::kBFloat16); b.pad({0, 0, 0, 0, 0, 0, 0, 5}); },
       {0, 2, 3, 1}, {0, 0, 0, 0, 0, 0, 0, 5}, DType::kBFloat16},
      {"Cast Transpose", [](ChainBuilder& b) { b.cast(DType::kFloat16); b.transpose({0, 2, 3, 1}); },
       {0, 2, 3, 1}, {0, 0, 0, 0, 0, 0, 0, 0}, DType::kFloat16},
      {"Transpose Cast", [](ChainBuilder& b) { b.transpose({3, 1, 0, 2}); b.cast(DType::kFloat16); },
       {3, 1, 0, 2}, {0, 0, 0, 0, 0, 0, 0, 0}, DType::kFloat16},
      {"Transpose Pad", [](ChainBuilder& b) { b.transpose({0, 2, 3, 1}); b.pad({0, 1, 0, 0, 0, 0, 2, 1}); },
       {0, 2, 3, 1}, {0, 1, 0, 0, 0, 0, 2, 1}, DType::kFloat32},
      // A Pad before a Transpose: its pads move with their axes.
      {"Pad Transpose Cast", [](ChainBuilder& b) { b.pad({1, 2, 0, 3, 0, 0, 4, 0}); b.transpose({0, 2, 3, 1}); b.cast(DType::kFloat16); },
       {0, 2, 3, 1}, {1, 0, 3, 2, 0, 4, 0, 0}, DType::kFloat16},
      // Two Transposes compose; two Pads add up.
      {"Transpose Transpose", [](ChainBuilder& b) { b.transpose({0, 2, 3, 1}); b.transpose({2, 0, 3, 1}); },
       {3, 0, 1, 2}, {0, 0, 0, 0, 0, 0, 0, 0}, DType::kFloat32},
      {"Pad Cast Pad", [](ChainBuilder& b) { b.pad({0, 0, 1, 0, 0, 0, 0, 1}); b.cast(DType::kFloat16); b.pad({0, 0, 1, 0, 0, 2, 0, 0}); },
       {0, 1, 2, 3}, {0, 0, 2, 0, 0, 2, 0, 1}, DType::kFloat16},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ChainBuilder b;
    c.build(b);
    b.finish();
    EXPECT_EQ(b.fuse(), 1);
    EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"kiln.Relayout", "Identity"}));
    const ir::Node& r = relayout_of(b.m);
    EXPECT_EQ(r.attr("perm")->ints, c.perm);
    EXPECT_EQ(r.attr("pads")->ints, c.pads);
    EXPECT_EQ(r.attr("to")->i, static_cast<int64_t>(c.to));
  }
}

TEST(FuseRelayout, ChainsThatStay) {
  auto expect_unfused = [](const char* what, const std::function<void(ChainBuilder&)>& build) {
    SCOPED_TRACE(what);
    ChainBuilder b;
    build(b);
    b.finish();
    const std::vector<std::string> before = op_types(b.m);
    EXPECT_EQ(b.fuse(), 0);
    EXPECT_EQ(op_types(b.m), before);
  };
  expect_unfused("a non-zero pad value", [](ChainBuilder& b) {
    b.scalar("one", 1.0f);
    b.transpose({0, 2, 3, 1});
    b.pad({0, 0, 0, 0, 0, 0, 0, 5}, "one");
  });
  expect_unfused("reflect mode", [](ChainBuilder& b) {
    b.transpose({0, 2, 3, 1});
    b.pad({0, 0, 0, 0, 0, 0, 0, 2}, "", "reflect");
  });
  expect_unfused("a negative pad (a crop)", [](ChainBuilder& b) {
    b.transpose({0, 2, 3, 1});
    b.pad({0, 0, 0, 0, 0, 0, 0, -1});
  });
  expect_unfused("a shared intermediate", [](ChainBuilder& b) {
    b.cast(DType::kFloat16);
    const std::string shared = b.last;
    b.transpose({0, 2, 3, 1});
    b.node("Neg", {shared}, {"other"});
    b.output("other");
  });
  expect_unfused("an intermediate graph output", [](ChainBuilder& b) {
    b.transpose({0, 2, 3, 1});
    b.output(b.last);
    b.cast(DType::kFloat16);
  });
  expect_unfused("a cast to an integer", [](ChainBuilder& b) {
    b.transpose({0, 2, 3, 1});
    b.cast(DType::kInt32);
  });
}

TEST(FuseRelayout, TwoCastsAreNotOne) {
  // float32 -> float16 -> float32 rounds: the first Cast stays, the second and the Transpose fuse.
  ChainBuilder b;
  b.cast(DType::kFloat16);
  b.cast(DType::kFloat32);
  b.transpose({0, 2, 3, 1});
  b.finish();
  EXPECT_EQ(b.fuse(), 1);
  EXPECT_EQ(op_types(b.m), (std::vector<std::string>{"Cast", "kiln.Relayout", "Identity"}));
}

}  // namespace
}  // namespace kiln::testing
