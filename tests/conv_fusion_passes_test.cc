// The conv passes: fuse_conv_activation (Conv -> Add -> Relu into kiln.FusedConv), convert_conv_layout
// (channels-last convs with the transposes between them cancelled) and fuse_conv_pool (a stem's max pool into
// it). Each test checks the graph after the
// pass and that it computes what it did before, on the CPU reference, with fresh random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <string>

#include "builder/optimize_graph.h"
#include "graph_builder.h"
#include "ir/op_registry.h"
#include "kernel_harness.h"
#include "onnx/importer.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"
#include "test_models.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "gpu_optimize_options.h"
#endif

namespace kiln {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20240611);
  return gen;
}

// Uniform in [-1, 1] (random_tensors.h), as a vector for the initializers of ModelProtos.
std::vector<float> random_values(int64_t n) {
  const Tensor t = testing::random_tensor(rng(), DType::kFloat32, {n}, -1.0f, 1.0f);
  return {t.data<float>(), t.data<float>() + n};
}

void set_ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t i : v) a->add_ints(i);
}

// A Conv of weights `name`_w [m, c/group, k, k] (and bias `name`_b [m] when `bias`), "same" padding.
onnx::NodeProto* add_conv(onnx::GraphProto* g, const std::string& name, const std::string& x, const std::string& y,
                          int64_t c, int64_t m, int64_t k, bool bias = true, int64_t group = 1) {
  testing::add_float_initializer(g, name + "_w", {m, c / group, k, k}, random_values(m * (c / group) * k * k));
  std::vector<std::string> ins = {x, name + "_w"};
  if (bias) {
    testing::add_float_initializer(g, name + "_b", {m}, random_values(m));
    ins.push_back(name + "_b");
  }
  auto* n = testing::add_node(g, "Conv", ins, {y}, name);
  set_ints(n, "kernel_shape", {k, k});
  set_ints(n, "pads", {k / 2, k / 2, k / 2, k / 2});
  if (group != 1) {
    auto* a = n->add_attribute();
    a->set_name("group");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(group);
  }
  return n;
}

// Imported, with every value's type inferred (as the builder has it when the passes run).
ir::Model import(const onnx::ModelProto& p) {
  auto model = onnx_io::import_model(testing::serialize(p), ".");
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  ir::Model m = std::move(model).value();
  EXPECT_TRUE(passes::infer_shapes(m).ok());
  return m;
}

using testing::op_types;

int count_op(const ir::Model& m, const std::string& op) {
  int k = 0;
  for (const auto& n : m.graph.nodes) k += n.op_type == op;
  return k;
}

const ir::Node* find_node(const ir::Model& m, const std::string& name) {
  for (const auto& n : m.graph.nodes)
    if (n.name == name) return &n;
  return nullptr;
}

bool has_fused_conv_kernel() { return ir::OpRegistry::global().find("kiln", "FusedConv") != nullptr; }

std::map<std::string, Tensor> random_inputs(const ir::Model& m) {
  std::map<std::string, Tensor> in;
  for (const auto& v : m.graph.inputs) {
    Shape s = v.type.static_shape();
    in[v.name] = Tensor::from_vector(DType::kFloat32, s, random_values(shape_numel(s)));
  }
  return in;
}

// `after` computes what `before` computes on fresh random inputs, within `tol` (relative to values above 1).
void expect_same_outputs(const ir::Model& before, const ir::Model& after, double tol = 1e-5) {
  if (!has_fused_conv_kernel()) GTEST_SKIP() << "no CPU kernel for kiln.FusedConv in this build";
  testing::expect_same_outputs(before, after, random_inputs(before), tol);
}

std::string attr_s(const ir::Node& n, const std::string& name) { return n.attr(name) ? n.attr(name)->s : "<none>"; }
int64_t attr_i(const ir::Node& n, const std::string& name) { return n.attr(name) ? n.attr(name)->i : -1; }

// ResNet-50's bottleneck: 1x1 reduce + Relu, 3x3 + Relu, 1x1 expand, + x, Relu.
onnx::ModelProto bottleneck(const std::string& batch = "2") {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {batch, "16", "6", "6"});
  testing::set_type(g->add_output(), "y", 1, {batch, "16", "6", "6"});
  add_conv(g, "conv1", "x", "c1", 16, 8, 1);
  testing::add_node(g, "Relu", {"c1"}, {"r1"}, "relu1");
  add_conv(g, "conv2", "r1", "c2", 8, 8, 3);
  testing::add_node(g, "Relu", {"c2"}, {"r2"}, "relu2");
  add_conv(g, "conv3", "r2", "c3", 8, 16, 1);
  testing::add_node(g, "Add", {"c3", "x"}, {"s3"}, "add3");
  testing::add_node(g, "Relu", {"s3"}, {"y"}, "relu3");
  return p;
}

TEST(ConvFusionPasses, ConvReluBecomesOneFusedConv) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"1", "8", "5", "5"});
  testing::set_type(g->add_output(), "y", 1, {});
  add_conv(g, "conv", "x", "c", 8, 4, 3);
  testing::add_node(g, "Relu", {"c"}, {"y"}, "relu");
  ir::Model before = import(p), m = before;
  int fused = 0;
  ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  EXPECT_EQ(fused, 1);
  ASSERT_EQ(m.graph.nodes.size(), 1u);
  const ir::Node& f = m.graph.nodes[0];
  EXPECT_EQ(f.name, "conv + relu");
  EXPECT_EQ(f.domain, "kiln");
  EXPECT_EQ(f.op_type, "FusedConv");
  EXPECT_EQ(f.inputs, (std::vector<std::string>{"x", "conv_w", "conv_b"}));
  EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(attr_s(f, "activation"), "Relu");
  EXPECT_EQ(attr_i(f, "channels_last"), 0);
  EXPECT_EQ(f.attr("pads")->ints, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(m.opsets.at("kiln"), 1);
  expect_same_outputs(before, m);
}

TEST(ConvFusionPasses, ResidualAddInEitherOrderWithoutBias) {
  for (bool conv_first : {true, false}) {
    onnx::ModelProto p = testing::new_model();
    auto* g = p.mutable_graph();
    testing::set_type(g->add_input(), "x", 1, {"2", "4", "5", "5"});
    testing::set_type(g->add_input(), "z", 1, {"2", "6", "5", "5"});
    testing::set_type(g->add_output(), "y", 1, {});
    add_conv(g, "conv", "x", "c", 4, 6, 3, /*bias=*/false);
    testing::add_node(g, "Add", conv_first ? std::vector<std::string>{"c", "z"} : std::vector<std::string>{"z", "c"},
                      {"y"}, "add");
    ir::Model before = import(p), m = before;
    ASSERT_TRUE(passes::fuse_conv_activation(m).ok());
    ASSERT_EQ(m.graph.nodes.size(), 1u);
    const ir::Node& f = m.graph.nodes[0];
    EXPECT_EQ(f.name, "conv + add");
    EXPECT_EQ(f.inputs, (std::vector<std::string>{"x", "conv_w", "", "z"}));
    EXPECT_EQ(attr_s(f, "activation"), "");
    EXPECT_EQ(m.graph.type_of("c"), nullptr);  // the vanished intermediate value has no type left
    expect_same_outputs(before, m);
  }
}

TEST(ConvFusionPasses, FusedNodeTakesTheLastNodesPlace) {
  // The residual is computed after the conv: the fused node must come after it.
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"1", "4", "4", "4"});
  testing::set_type(g->add_output(), "y", 1, {});
  add_conv(g, "conv", "x", "c", 4, 4, 3);
  testing::add_node(g, "Sigmoid", {"x"}, {"z"}, "late_residual");
  testing::add_node(g, "Add", {"c", "z"}, {"s"}, "add");
  testing::add_node(g, "Relu", {"s"}, {"y"}, "relu");
  ir::Model before = import(p), m = before;
  ASSERT_TRUE(passes::fuse_conv_activation(m).ok());
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Sigmoid", "kiln.FusedConv"}));
  EXPECT_EQ(m.graph.nodes[1].name, "conv + add + relu");
  expect_same_outputs(before, m);
}

TEST(ConvFusionPasses, WhatMustNotFuse) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"1", "4", "5", "5"});
  testing::set_type(g->add_input(), "n", 1, {"N", "4", "5", "5"});
  for (const char* out : {"twice_a", "twice_b", "bcast", "out_c", "out_r", "sym", "lone", "partial", "add_twice"})
    testing::set_type(g->add_output(), out, 1, {});
  testing::add_float_initializer(g, "chan_bias", {1, 4, 1, 1}, random_values(4));
  // The conv output read twice.
  add_conv(g, "conv_twice", "x", "ct", 4, 4, 3);
  testing::add_node(g, "Relu", {"ct"}, {"twice_a"}, "relu_twice");
  testing::add_node(g, "Neg", {"ct"}, {"twice_b"}, "neg_twice");
  // An Add that broadcasts its other operand (and so the Relu behind it stays too).
  add_conv(g, "conv_bcast", "x", "cb", 4, 4, 3);
  testing::add_node(g, "Add", {"cb", "chan_bias"}, {"sb"}, "add_bcast");
  testing::add_node(g, "Relu", {"sb"}, {"bcast"}, "relu_bcast");
  // The conv output is a graph output.
  add_conv(g, "conv_out", "x", "out_c", 4, 4, 3);
  testing::add_node(g, "Relu", {"out_c"}, {"out_r"}, "relu_out");
  // A residual of symbolic shape: equal shapes cannot be proved.
  add_conv(g, "conv_sym", "n", "cs", 4, 4, 3);
  testing::add_node(g, "Add", {"cs", "n"}, {"sym"}, "add_sym");
  // Nothing to absorb.
  add_conv(g, "conv_lone", "x", "lone", 4, 4, 3);
  // The Add's output read twice: Conv + Add fuse, the Relu stays.
  add_conv(g, "conv_partial", "x", "cp", 4, 4, 3);
  testing::add_node(g, "Add", {"cp", "x"}, {"add_twice"}, "add_partial");
  testing::add_node(g, "Relu", {"add_twice"}, {"partial"}, "relu_partial");
  ir::Model before = import(p), m = before;
  int fused = 0;
  ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  EXPECT_EQ(fused, 1);
  for (const char* conv : {"conv_twice", "conv_bcast", "conv_out", "conv_sym", "conv_lone"}) {
    const ir::Node* n = find_node(m, conv);
    ASSERT_NE(n, nullptr) << conv;
    EXPECT_EQ(n->op_type, "Conv") << conv;
  }
  for (const char* kept : {"relu_twice", "add_bcast", "relu_bcast", "relu_out", "add_sym", "relu_partial"})
    EXPECT_NE(find_node(m, kept), nullptr) << kept;
  const ir::Node* f = find_node(m, "conv_partial + add_partial");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->outputs[0], "add_twice");
  // Nothing fused: no kiln opset either.
  ir::Model lone = import(bottleneck());
  lone.graph.nodes.erase(lone.graph.nodes.begin() + 1, lone.graph.nodes.end());
  lone.graph.outputs = {{"c1", {}}};
  ASSERT_TRUE(passes::fuse_conv_activation(lone, &fused).ok());
  EXPECT_EQ(fused, 0);
  EXPECT_FALSE(lone.opsets.count("kiln"));
}

void set_float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

float attr_f(const ir::Node& n, const std::string& name) { return n.attr(name) ? n.attr(name)->f : NAN; }

// One activation after Conv [+ residual]: which ONNX nodes, and what the fused node must say.
struct ActCase {
  std::string label;
  int opset = 17;
  // Adds the activation reading `in`, writing "y", with its constants; returns the absorbed nodes' names.
  std::function<std::vector<std::string>(onnx::GraphProto*, const std::string& in)> add;
  std::string activation;
  float min = NAN, max = NAN, alpha = NAN;  // NaN: the attribute must be absent
};

std::vector<ActCase> activation_cases() {
  using G = onnx::GraphProto;
  using Names = std::vector<std::string>;
  std::vector<ActCase> c;
  auto clip = [](float lo, float hi, bool with_min) {
    return [=](G* g, const std::string& in) {
      testing::add_float_initializer(g, "hi", {}, {hi});
      if (with_min) testing::add_float_initializer(g, "lo", {}, {lo});
      testing::add_node(g, "Clip", {in, with_min ? "lo" : "", "hi"}, {"y"}, "clip");
      return Names{"clip"};
    };
  };
  c.push_back({"relu", 17, [](G* g, const std::string& in) { testing::add_node(g, "Relu", {in}, {"y"}, "act"); return Names{"act"}; }, "Relu"});
  c.push_back({"relu6", 17, clip(0.0f, 6.0f, true), "Clip", 0.0f, 6.0f});
  c.push_back({"clip(-0.5, 0.5)", 13, clip(-0.5f, 0.5f, true), "Clip", -0.5f, 0.5f});
  c.push_back({"clip(max 0.25)", 17, clip(0.0f, 0.25f, false), "Clip", NAN, 0.25f});
  c.push_back({"clip-6 attributes", 10,
               [](G* g, const std::string& in) {
                 auto* n = testing::add_node(g, "Clip", {in}, {"y"}, "clip");
                 set_float(n, "min", 0.0f);
                 set_float(n, "max", 6.0f);
                 return Names{"clip"};
               },
               "Clip", 0.0f, 6.0f});
  c.push_back({"leaky relu", 17,
               [](G* g, const std::string& in) {
                 set_float(testing::add_node(g, "LeakyRelu", {in}, {"y"}, "act"), "alpha", 0.2f);
                 return Names{"act"};
               },
               "LeakyRelu", NAN, NAN, 0.2f});
  c.push_back({"leaky relu default", 17,
               [](G* g, const std::string& in) { testing::add_node(g, "LeakyRelu", {in}, {"y"}, "act"); return Names{"act"}; },
               "LeakyRelu", NAN, NAN, 0.01f});
  c.push_back({"sigmoid", 17, [](G* g, const std::string& in) { testing::add_node(g, "Sigmoid", {in}, {"y"}, "act"); return Names{"act"}; },
               "Sigmoid"});
  c.push_back({"hard swish", 17,
               [](G* g, const std::string& in) { testing::add_node(g, "HardSwish", {in}, {"y"}, "act"); return Names{"act"}; },
               "HardSwish"});
  for (bool sig_first : {false, true})
    c.push_back({sig_first ? "silu (sigmoid first)" : "silu", 17,
                 [=](G* g, const std::string& in) {
                   testing::add_node(g, "Sigmoid", {in}, {"sig"}, "sig");
                   testing::add_node(g, "Mul", sig_first ? Names{"sig", in} : Names{in, "sig"}, {"y"}, "mul");
                   return Names{"sig", "mul"};
                 },
                 "Silu"});
  return c;
}

TEST(ConvFusionPasses, EachActivationFuses) {
  for (const ActCase& a : activation_cases())
    for (bool residual : {false, true}) {
      SCOPED_TRACE(a.label + (residual ? " after a residual Add" : ""));
      onnx::ModelProto p = testing::new_model(a.opset);
      auto* g = p.mutable_graph();
      testing::set_type(g->add_input(), "x", 1, {"2", "8", "5", "5"});
      testing::set_type(g->add_input(), "z", 1, {"2", "6", "5", "5"});
      testing::set_type(g->add_output(), "y", 1, {});
      add_conv(g, "conv", "x", "c", 8, 6, 3);
      if (residual) testing::add_node(g, "Add", {"z", "c"}, {"s"}, "add");
      std::string want_name = residual ? "conv + add" : "conv";
      for (const std::string& n : a.add(g, residual ? "s" : "c")) want_name += " + " + n;
      ir::Model before = import(p), m = before;
      int fused = 0;
      ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
      EXPECT_EQ(fused, 1);
      ASSERT_EQ(op_types(m), (std::vector<std::string>{"kiln.FusedConv"}));
      const ir::Node& f = m.graph.nodes[0];
      EXPECT_EQ(f.name, want_name);
      EXPECT_EQ(f.outputs, (std::vector<std::string>{"y"}));
      EXPECT_EQ(f.inputs.size(), residual ? 4u : 3u);
      EXPECT_EQ(attr_s(f, "activation"), a.activation);
      for (auto [name, want] : {std::pair{"activation_min", a.min}, {"activation_max", a.max}, {"activation_alpha", a.alpha}}) {
        if (std::isnan(want)) EXPECT_EQ(f.attr(name), nullptr) << name;
        else EXPECT_EQ(attr_f(f, name), want) << name;
      }
      expect_same_outputs(before, m);
    }
}

TEST(ConvFusionPasses, ActivationsThatMustNotFuse) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"1", "4", "5", "5"});
  testing::set_type(g->add_input(), "lo", 1, {});
  for (const char* out : {"clip_in", "silu3", "silu3_extra", "sig_twice", "sig_twice_extra", "mul_other", "self_mul"})
    testing::set_type(g->add_output(), out, 1, {});
  testing::add_float_initializer(g, "six", {}, {6.0f});
  testing::add_float_initializer(g, "pair", {2}, {0.0f, 6.0f});
  // A bound that is computed (a graph input), and one of two elements: not constants of one value.
  add_conv(g, "conv_clip_in", "x", "cc", 4, 4, 3);
  testing::add_node(g, "Clip", {"cc", "lo", "six"}, {"clip_in"}, "clip_in");
  add_conv(g, "conv_clip_pair", "x", "cq", 4, 4, 3);
  testing::add_node(g, "Clip", {"cq", "pair", ""}, {"clip_pair"}, "clip_pair");
  testing::add_node(g, "Neg", {"clip_pair"}, {"mul_other"}, "neg_pair");
  // SiLU's input read by a third node.
  add_conv(g, "conv_silu3", "x", "c3", 4, 4, 3);
  testing::add_node(g, "Sigmoid", {"c3"}, {"s3"}, "sig3");
  testing::add_node(g, "Mul", {"c3", "s3"}, {"silu3"}, "mul3");
  testing::add_node(g, "Neg", {"c3"}, {"silu3_extra"}, "neg3");
  // The Sigmoid's output read by another node too.
  add_conv(g, "conv_sig_twice", "x", "c4", 4, 4, 3);
  testing::add_node(g, "Sigmoid", {"c4"}, {"s4"}, "sig4");
  testing::add_node(g, "Mul", {"c4", "s4"}, {"sig_twice"}, "mul4");
  testing::add_node(g, "Neg", {"s4"}, {"sig_twice_extra"}, "neg4");
  // Mul(c, c): no Sigmoid.
  add_conv(g, "conv_self_mul", "x", "c5", 4, 4, 3);
  testing::add_node(g, "Mul", {"c5", "c5"}, {"self_mul"}, "mul5");
  ir::Model before = import(p), m = before;
  int fused = 0;
  ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  EXPECT_EQ(fused, 0);
  for (const char* kept : {"conv_clip_in", "clip_in", "conv_clip_pair", "clip_pair", "conv_silu3", "sig3", "mul3", "conv_sig_twice",
                           "sig4", "mul4", "conv_self_mul", "mul5"})
    EXPECT_NE(find_node(m, kept), nullptr) << kept;
}

TEST(ConvFusionPasses, BottleneckThroughBothPasses) {
  ir::Model before = import(bottleneck()), m = before;
  int fused = 0, converted = 0;
  ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  EXPECT_EQ(fused, 3);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"kiln.FusedConv", "kiln.FusedConv", "kiln.FusedConv"}));
  EXPECT_EQ(m.graph.nodes[2].name, "conv3 + add3 + relu3");
  EXPECT_EQ(m.graph.nodes[2].inputs, (std::vector<std::string>{"r2", "conv3_w", "conv3_b", "x"}));
  expect_same_outputs(before, m);

  ir::Model nchw = m;
  ASSERT_TRUE(passes::convert_conv_layout(m, [](const ir::Node&) { return true; }, &converted).ok());
  EXPECT_EQ(converted, 3);
  // One transpose in (x, read by conv1 and as conv3's residual), one out (y); none between the convs.
  EXPECT_EQ(count_op(m, "Transpose"), 2);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Transpose", "kiln.FusedConv", "kiln.FusedConv", "kiln.FusedConv",
                                                   "Transpose"}));
  const ir::Node& in = m.graph.nodes[0];
  EXPECT_EQ(in.attr("perm")->ints, (std::vector<int64_t>{0, 2, 3, 1}));
  EXPECT_EQ(in.inputs[0], "x");
  const std::string x_nhwc = in.outputs[0];
  EXPECT_EQ(m.graph.type_of(x_nhwc)->to_string(), "float32[2,6,6,16]");
  for (size_t k = 1; k <= 3; ++k) {
    const ir::Node& f = m.graph.nodes[k];
    EXPECT_EQ(attr_i(f, "channels_last"), 1) << f.name;
    EXPECT_EQ(attr_s(f, "activation"), "Relu") << f.name;
    EXPECT_EQ(m.graph.type_of(f.outputs[0])->dims.back().value, k == 3 ? 16 : 8) << f.name;
  }
  EXPECT_EQ(m.graph.nodes[1].inputs[0], x_nhwc);
  EXPECT_EQ(m.graph.nodes[2].inputs[0], m.graph.nodes[1].outputs[0]);
  EXPECT_EQ(m.graph.nodes[3].inputs[0], m.graph.nodes[2].outputs[0]);
  EXPECT_EQ(m.graph.nodes[3].inputs[3], x_nhwc);
  const ir::Node& out = m.graph.nodes[4];
  EXPECT_EQ(out.attr("perm")->ints, (std::vector<int64_t>{0, 3, 1, 2}));
  EXPECT_EQ(out.outputs[0], "y");
  // The weights are KRSC copies; the NCHW ones are left for eliminate_dead_nodes.
  const Tensor& w2 = m.graph.initializers.at(m.graph.nodes[2].inputs[1]);
  EXPECT_EQ(w2.shape(), (Shape{8, 3, 3, 8}));
  const Tensor& w2_nchw = m.graph.initializers.at("conv2_w");
  for (int64_t o : {0, 7})
    for (int64_t c : {0, 5})
      for (int64_t r : {0, 2})
        for (int64_t s : {1, 2})
          EXPECT_EQ(w2.data<float>()[((o * 3 + r) * 3 + s) * 8 + c], w2_nchw.data<float>()[((o * 8 + c) * 3 + r) * 3 + s]);
  int removed = 0;
  ASSERT_TRUE(passes::eliminate_dead_nodes(m, &removed).ok());
  EXPECT_EQ(removed, 0);
  EXPECT_FALSE(m.graph.initializers.count("conv2_w"));
  expect_same_outputs(before, m);
}

TEST(ConvFusionPasses, PlainAndGroupedConvsAroundAMaxPool) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"N", "8", "7", "7"});
  testing::set_type(g->add_output(), "y", 1, {});
  testing::set_type(g->add_output(), "c0", 1, {});  // a graph output written by a converted conv
  add_conv(g, "stem", "x", "c0", 8, 8, 3);
  auto* pool = testing::add_node(g, "MaxPool", {"c0"}, {"pooled"}, "pool");
  set_ints(pool, "kernel_shape", {2, 2});
  add_conv(g, "grouped", "pooled", "cg", 8, 16, 3, /*bias=*/true, /*group=*/4);
  add_conv(g, "skipped", "cg", "y", 16, 8, 1);
  ir::Model before = import(p), m = before;
  int converted = 0;
  auto eligible = [](const ir::Node& n) { return n.name != "skipped"; };
  ASSERT_TRUE(passes::convert_conv_layout(m, eligible, &converted).ok());
  EXPECT_EQ(converted, 2);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Transpose", "kiln.FusedConv", "Transpose", "MaxPool",
                                                   "Transpose", "kiln.FusedConv", "Transpose", "Conv"}));
  const ir::Node* stem = find_node(m, "stem");
  ASSERT_NE(stem, nullptr);
  EXPECT_EQ(stem->domain, "kiln");
  EXPECT_EQ(attr_s(*stem, "activation"), "");
  EXPECT_EQ(attr_i(*stem, "channels_last"), 1);
  EXPECT_EQ(m.graph.type_of(stem->inputs[0])->to_string(), "float32[N,7,7,8]");
  EXPECT_EQ(m.graph.nodes[2].outputs[0], "c0");
  EXPECT_EQ(m.graph.initializers.at(find_node(m, "grouped")->inputs[1]).shape(), (Shape{16, 3, 3, 2}));
  EXPECT_EQ(attr_i(*find_node(m, "grouped"), "group"), 4);
  EXPECT_EQ(find_node(m, "skipped")->op_type, "Conv");
  EXPECT_EQ(m.opsets.at("kiln"), 1);
  // Static shapes for the run.
  for (ir::Model* model : {&before, &m}) {
    ASSERT_TRUE(passes::apply_input_shapes(*model, {{"x", {2, 8, 7, 7}}}).ok());
    ASSERT_TRUE(passes::infer_shapes(*model).ok());
  }
  expect_same_outputs(before, m);
  // Nothing eligible: the graph is left alone.
  ir::Model untouched = before;
  ASSERT_TRUE(passes::convert_conv_layout(untouched, [](const ir::Node&) { return false; }, &converted).ok());
  EXPECT_EQ(converted, 0);
  EXPECT_EQ(op_types(untouched), op_types(before));
}

// A float16 image stem, a 7x7 Conv of `c` channels to `m` (pads 3, the given stride) + Relu, as lower_precision
// leaves it.
ir::Model half_precision_stem(int64_t c, int64_t h, int64_t w, int64_t m, int64_t stride) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", std::to_string(c), std::to_string(h), std::to_string(w)});
  testing::set_type(g->add_output(), "y", 1, {});
  set_ints(add_conv(g, "stem", "x", "s", c, m, 7), "strides", {stride, stride});
  testing::add_node(g, "Relu", {"s"}, {"y"}, "relu");
  ir::Model model = import(p);
  EXPECT_TRUE(passes::lower_precision(model, DType::kFloat16, [](const ir::Node&) { return true; }).ok());
  return model;
}

// fuse_conv_activation, then convert_conv_layout of the convs conv_suits_channels_last accepts, as the builder
// runs them for a GPU; how many convs it converted.
int fuse_and_convert(ir::Model& m) {
  int fused = 0, converted = 0;
  EXPECT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  auto eligible = [&m](const ir::Node& n) { return passes::conv_suits_channels_last(m.graph, n); };
  EXPECT_TRUE(passes::convert_conv_layout(m, eligible, &converted).ok());
  return converted;
}

TEST(ConvFusionPasses, ImageStemChannelsArePaddedToEight) {
  // A 3-channel 7x7 stem (ResNet's, here at stride 1) in float16: channels-last with its input padded to 8
  // channels by a Pad of zeros on the NHWC input and its weights [16, 7, 7, 8] zero past channel 3.
  ir::Model m = half_precision_stem(3, 12, 12, 16, 1);
  ir::Model before = m;
  EXPECT_EQ(fuse_and_convert(m), 1);
  EXPECT_EQ(op_types(m),
            (std::vector<std::string>{"Cast", "Transpose", "Pad", "kiln.FusedConv", "Transpose", "Cast"}));
  const ir::Node& conv = *find_node(m, "stem + relu");
  EXPECT_EQ(m.graph.type_of(conv.inputs[0])->to_string(), "float16[2,12,12,8]");
  const Tensor& w = m.graph.initializers.at(conv.inputs[1]);
  EXPECT_EQ(w.shape(), (Shape{16, 7, 7, 8}));
  expect_same_outputs(before, m, 2e-2f);

  // Grouped convs with few channels, and 12 channels, are not padded (nor converted).
  onnx::ModelProto q = testing::new_model();
  auto* h = q.mutable_graph();
  testing::set_type(h->add_input(), "x", 1, {"1", "12", "5", "5"});
  testing::set_type(h->add_output(), "y", 1, {});
  add_conv(h, "conv", "x", "y", 12, 8, 3);
  ir::Model twelve = import(q);
  ASSERT_TRUE(passes::lower_precision(twelve, DType::kFloat16, [](const ir::Node&) { return true; }).ok());
  EXPECT_FALSE(passes::conv_suits_channels_last(twelve.graph, *find_node(twelve, "conv")));
}

TEST(ConvFusionPasses, StrideTwoImageStemIsPaddedToFour) {
  // ResNet's stem proper (stride 2): 4 channels, which the CUDA stem kernel pairs two window positions a chunk
  // with; a 4-channel input is not padded at all. With 24 output channels, which that kernel does not take,
  // cuDNN runs it: 8.
  {
    ir::Model m = half_precision_stem(3, 13, 12, 24, 2);
    EXPECT_EQ(fuse_and_convert(m), 1);
    EXPECT_EQ(m.graph.type_of(find_node(m, "stem + relu")->inputs[0])->to_string(), "float16[2,13,12,8]");
  }
  for (int64_t c : {3, 4}) {
    SCOPED_TRACE(std::to_string(c) + " channels");
    ir::Model m = half_precision_stem(c, 13, 12, 32, 2);
    ir::Model before = m;
    EXPECT_EQ(fuse_and_convert(m), 1);
    std::vector<std::string> ops{"Cast", "Transpose", "Pad", "kiln.FusedConv", "Transpose", "Cast"};
    if (c == 4) ops.erase(ops.begin() + 2);
    EXPECT_EQ(op_types(m), ops);
    const ir::Node& conv = *find_node(m, "stem + relu");
    EXPECT_EQ(m.graph.type_of(conv.inputs[0])->to_string(), "float16[2,13,12,4]");
    EXPECT_EQ(m.graph.initializers.at(conv.inputs[1]).shape(), (Shape{32, 7, 7, 4}));
    expect_same_outputs(before, m, 2e-2f);
  }
}

TEST(ConvFusionPasses, HalfPrecisionBottleneckGoesChannelsLast) {
  // As the builder runs them for --fp16 on a GPU: lowered first, then fused, then converted.
  ir::Model m = import(bottleneck());
  ASSERT_TRUE(passes::lower_precision(m, DType::kFloat16, [](const ir::Node&) { return true; }).ok());
  ir::Model before = m;
  int fused = 0, converted = 0;
  ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  EXPECT_EQ(fused, 3);
  auto eligible = [&m](const ir::Node& n) { return passes::conv_suits_channels_last(m.graph, n); };
  ASSERT_TRUE(passes::convert_conv_layout(m, eligible, &converted).ok());
  EXPECT_EQ(converted, 3);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Cast", "Transpose", "kiln.FusedConv", "kiln.FusedConv",
                                                   "kiln.FusedConv", "Transpose", "Cast"}));
  const Tensor& w = m.graph.initializers.at(m.graph.nodes[3].inputs[1]);
  EXPECT_EQ(w.dtype(), DType::kFloat16);
  EXPECT_EQ(w.shape(), (Shape{8, 3, 3, 8}));
  EXPECT_EQ(m.graph.type_of(m.graph.nodes[3].outputs[0])->to_string(), "float16[2,6,6,8]");
  // Fused, the residual and Relu see the conv's float32 sum before one rounding: close, not equal.
  expect_same_outputs(before, m, 2e-2f);

  // Not for float32, nor for channel counts that are not multiples of 8.
  ir::Model fp32 = import(bottleneck());
  EXPECT_FALSE(passes::conv_suits_channels_last(fp32.graph, fp32.graph.nodes[0]));
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"1", "8", "5", "5"});
  testing::set_type(g->add_output(), "y", 1, {});
  add_conv(g, "conv", "x", "y", 8, 4, 3);
  ir::Model narrow = import(p);
  ASSERT_TRUE(passes::lower_precision(narrow, DType::kFloat16, [](const ir::Node&) { return true; }).ok());
  EXPECT_FALSE(passes::conv_suits_channels_last(narrow.graph, *find_node(narrow, "conv")));
}

TEST(ConvFusionPasses, HalfPrecisionPoolsStayChannelsLast) {
  // ResNet's ends in small: a 3-channel stem + Relu, its MaxPool, a conv, then GlobalAveragePool and
  // Flatten before the classifier. In float16 the pools become kiln.ChannelsLastPool, so the activations
  // stay NHWC from the stem to the global pool, with no Transpose on the way.
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", "3", "12", "12"});
  testing::set_type(g->add_output(), "y", 1, {});
  add_conv(g, "stem", "x", "s", 3, 16, 7);
  testing::add_node(g, "Relu", {"s"}, {"r"}, "relu");
  auto* pool = testing::add_node(g, "MaxPool", {"r"}, {"pooled"}, "pool");
  set_ints(pool, "kernel_shape", {3, 3});
  set_ints(pool, "strides", {2, 2});
  set_ints(pool, "pads", {1, 1, 1, 1});
  add_conv(g, "conv", "pooled", "c", 16, 16, 3);
  testing::add_node(g, "GlobalAveragePool", {"c"}, {"gap"}, "gap");
  testing::add_node(g, "Flatten", {"gap"}, {"y"}, "flatten");
  ir::Model m = import(p);
  ASSERT_TRUE(passes::lower_precision(m, DType::kFloat16, [](const ir::Node&) { return true; }).ok());
  ir::Model before = m;
  int fused = 0, converted = 0, removed = 0;
  ASSERT_TRUE(passes::fuse_conv_activation(m, &fused).ok());
  auto eligible = [&m](const ir::Node& n) { return passes::conv_suits_channels_last(m.graph, n); };
  ASSERT_TRUE(passes::convert_conv_layout(m, eligible, &converted).ok());
  EXPECT_EQ(converted, 2);
  // As the builder does next: the stem's Transpose back, which the pool no longer reads, goes.
  ASSERT_TRUE(passes::eliminate_dead_nodes(m, &removed).ok());
  ASSERT_TRUE(passes::infer_shapes(m).ok());
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Cast", "Transpose", "Pad", "kiln.FusedConv",
                                                   "kiln.ChannelsLastPool", "kiln.FusedConv", "kiln.ChannelsLastPool",
                                                   "Transpose", "Flatten", "Cast"}));
  const ir::Node* max = find_node(m, "pool");
  ASSERT_NE(max, nullptr);
  EXPECT_EQ(max->domain, "kiln");
  EXPECT_EQ(attr_s(*max, "mode"), "max");
  EXPECT_EQ(max->attr("pads")->ints, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(max->inputs[0], find_node(m, "stem + relu")->outputs[0]);
  EXPECT_EQ(m.graph.type_of(max->outputs[0])->to_string(), "float16[2,6,6,16]");
  const ir::Node* gap = find_node(m, "gap");
  ASSERT_NE(gap, nullptr);
  EXPECT_EQ(attr_s(*gap, "mode"), "global_average");
  EXPECT_EQ(gap->inputs[0], find_node(m, "conv")->outputs[0]);
  EXPECT_EQ(m.graph.type_of(gap->outputs[0])->to_string(), "float16[2,1,1,16]");
  // The Transpose back writes the name the Flatten reads.
  const ir::Node* back = &m.graph.nodes[7];
  EXPECT_EQ(back->inputs[0], gap->outputs[0]);
  EXPECT_EQ(back->outputs[0], find_node(m, "flatten")->inputs[0]);
  EXPECT_EQ(m.graph.type_of(back->outputs[0])->to_string(), "float16[2,16,1,1]");
  expect_same_outputs(before, m, 2e-2f);

  // In float32 (as in PlainAndGroupedConvsAroundAMaxPool) the pools stay ONNX pools.
  ir::Model fp32 = import(p);
  ASSERT_TRUE(passes::convert_conv_layout(fp32, [](const ir::Node&) { return true; }, &converted).ok());
  EXPECT_EQ(count_op(fp32, "ChannelsLastPool"), 0);
  EXPECT_EQ(count_op(fp32, "MaxPool"), 1);
  EXPECT_EQ(count_op(fp32, "GlobalAveragePool"), 1);
}

// A float16 image stem (`c` channels, 7x7 stride 2 to `m`) + Relu + a MaxPool with `kernel` / stride 2 / pads 1
// (or an AveragePool), then a Neg, brought as far as the builder brings it before fuse_conv_pool: lowered,
// fused, channels-last, dead nodes gone, shapes inferred.
ir::Model stem_and_pool(int64_t c, int64_t m_out, const char* pool_op, int64_t kernel) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", std::to_string(c), "37", "29"});
  testing::set_type(g->add_output(), "y", 1, {});
  set_ints(add_conv(g, "stem", "x", "s", c, m_out, 7), "strides", {2, 2});
  testing::add_node(g, "Relu", {"s"}, {"r"}, "relu");
  auto* pool = testing::add_node(g, pool_op, {"r"}, {"pooled"}, "pool");
  set_ints(pool, "kernel_shape", {kernel, kernel});
  set_ints(pool, "strides", {2, 2});
  set_ints(pool, "pads", {1, 1, 1, 1});
  testing::add_node(g, "Neg", {"pooled"}, {"y"}, "neg");
  ir::Model m = import(p);
  EXPECT_TRUE(passes::lower_precision(m, DType::kFloat16, [](const ir::Node&) { return true; }).ok());
  fuse_and_convert(m);
  int removed = 0;
  EXPECT_TRUE(passes::eliminate_dead_nodes(m, &removed).ok());
  EXPECT_TRUE(passes::infer_shapes(m).ok());
  return m;
}

TEST(ConvFusionPasses, StemMaxPoolBecomesOneFusedConv) {
  for (int64_t c : {3, 8}) {
    SCOPED_TRACE(std::to_string(c) + " channels");
    ir::Model m = stem_and_pool(c, 64, "MaxPool", 3);
    ir::Model before = m;
    int fused = 0;
    ASSERT_TRUE(passes::fuse_conv_pool(m, &fused).ok());
    ASSERT_TRUE(passes::infer_shapes(m).ok());
    EXPECT_EQ(fused, 1);
    EXPECT_EQ(count_op(m, "ChannelsLastPool"), 0);
    const ir::Node* f = find_node(m, "stem + relu + pool");
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->op_type, "FusedConv");
    EXPECT_EQ(attr_s(*f, "pool"), "max");
    EXPECT_EQ(f->attr("pool_kernel_shape")->ints, (std::vector<int64_t>{3, 3}));
    EXPECT_EQ(f->attr("pool_strides")->ints, (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(f->attr("pool_pads")->ints, (std::vector<int64_t>{1, 1, 1, 1}));
    // conv 37 x 29 -> 19 x 15, pooled -> 10 x 8
    EXPECT_EQ(m.graph.type_of(f->outputs[0])->to_string(), "float16[2,10,8,64]");
    // The CPU reference pools the rounded conv output, as the separate pool did: equal to the bit.
    expect_same_outputs(before, m, 0.0);
  }
}

// Through the whole optimizer for a float16 GPU engine: the stem is lowered as "stem + relu" (the conv fusion
// runs first), and the pooled stem "stem + relu + pool" must be lowered too, or the build reports the layer
// that computes in float16 as fp32 (the bookkeeping once looked up "stem", a name no lowered layer had).
TEST(ConvFusionPasses, PooledStemKeepsTheStemsPrecisionThroughTheOptimizer) {
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "built without the CUDA backend (its layer table decides what runs in fp16)";
#else
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2", "3", "37", "29"});
  testing::set_type(g->add_output(), "y", 1, {});
  set_ints(add_conv(g, "stem", "x", "s", 3, 64, 7), "strides", {2, 2});
  testing::add_node(g, "Relu", {"s"}, {"r"}, "relu");
  auto* pool = testing::add_node(g, "MaxPool", {"r"}, {"pooled"}, "pool");
  set_ints(pool, "kernel_shape", {3, 3});
  set_ints(pool, "strides", {2, 2});
  set_ints(pool, "pads", {1, 1, 1, 1});
  add_conv(g, "conv1", "pooled", "y", 64, 64, 1);
  const ir::Model before = import(p);
  ir::Model m = before;
  const builder::OptimizeOptions o = testing::gpu_fp16_options();
  Logger quiet(Severity::kError);
  std::set<std::string> lowered;
  const Status st = builder::optimize_graph(m, o, quiet, &lowered);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const ir::Node* stem = find_node(m, "stem + relu + pool");
  ASSERT_NE(stem, nullptr);
  ASSERT_NE(stem->attr("pool"), nullptr);
  EXPECT_EQ(m.graph.type_of(stem->outputs[0])->dtype, DType::kFloat16);
  EXPECT_TRUE(lowered.count(stem->name)) << "the pooled stem runs in float16 but is not in the lowered set";
  EXPECT_TRUE(lowered.count("conv1"));
  // float16 through a 147-term sum (stem values of order 4, rounded by about 2e-3) and a 64-term one: errors of
  // about 1e-2 (rms) on outputs of order 20, compared absolutely below 1.
  expect_same_outputs(before, m, 0.1);
#endif
}

TEST(ConvFusionPasses, WhatTheStemPoolFusionLeaves) {
  struct Case {
    const char* what;
    int64_t m_out;
    const char* pool;
    int64_t kernel;
  };
  for (const Case& k : {Case{"48 outputs (no stem kernel)", 48, "MaxPool", 3}, Case{"an average pool", 64, "AveragePool", 3},
                        Case{"a 2x2 pool", 64, "MaxPool", 2}}) {
    SCOPED_TRACE(k.what);
    ir::Model m = stem_and_pool(3, k.m_out, k.pool, k.kernel);
    const std::vector<std::string> ops = op_types(m);
    int fused = -1;
    ASSERT_TRUE(passes::fuse_conv_pool(m, &fused).ok());
    EXPECT_EQ(fused, 0);
    EXPECT_EQ(op_types(m), ops);
  }
}

// The CPU reference of a FusedConv with a pool: the pooled shape, and errors that name the node for a pool mode
// it does not know and for a pool on an NCHW conv.
TEST(ConvFusionPasses, FusedConvPoolReferenceChecksItsAttributes) {
  if (!has_fused_conv_kernel()) GTEST_SKIP() << "no CPU kernel for kiln.FusedConv in this build";
  const Tensor x = testing::random_tensor(rng(), DType::kFloat32, {1, 8, 8, 4}, -1.0f, 1.0f);
  const Tensor w = testing::random_tensor(rng(), DType::kFloat32, {32, 3, 3, 4}, -1.0f, 1.0f);
  auto ints = [](std::vector<int64_t> v) { return passes::ints_attribute(std::move(v)); };
  std::map<std::string, ir::Attribute> attrs = {{"channels_last", passes::int_attribute(1)},
                                                {"pads", ints({1, 1, 1, 1})},
                                                {"pool", passes::string_attribute("max")},
                                                {"pool_kernel_shape", ints({3, 3})},
                                                {"pool_strides", ints({2, 2})},
                                                {"pool_pads", ints({1, 1, 1, 1})}};
  testing::OpRun ok = testing::run_kernel("kiln", "FusedConv", {Value(x), Value(w)}, attrs, 1, 1, "stem_pool");
  ASSERT_TRUE(ok.status.ok()) << ok.status.to_string();
  EXPECT_EQ(ok.outputs[0].tensor().shape(), (Shape{1, 4, 4, 32}));

  attrs["pool"] = passes::string_attribute("avg");
  testing::OpRun bad_mode = testing::run_kernel("kiln", "FusedConv", {Value(x), Value(w)}, attrs, 1, 1, "stem_pool");
  ASSERT_FALSE(bad_mode.status.ok());
  EXPECT_NE(bad_mode.status.message().find("stem_pool"), std::string::npos) << bad_mode.status.message();
  EXPECT_NE(bad_mode.status.message().find("avg"), std::string::npos) << bad_mode.status.message();

  attrs["pool"] = passes::string_attribute("max");
  attrs["channels_last"] = passes::int_attribute(0);
  const Tensor x_nchw = testing::random_tensor(rng(), DType::kFloat32, {1, 4, 8, 8}, -1.0f, 1.0f);
  const Tensor w_nchw = testing::random_tensor(rng(), DType::kFloat32, {32, 4, 3, 3}, -1.0f, 1.0f);
  testing::OpRun nchw = testing::run_kernel("kiln", "FusedConv", {Value(x_nchw), Value(w_nchw)}, attrs, 1, 1, "stem_pool");
  ASSERT_FALSE(nchw.status.ok());
  EXPECT_NE(nchw.status.message().find("channels_last = 1"), std::string::npos) << nchw.status.message();
}

// infer_shapes gives a pooled FusedConv the pooled shape, and unknown spatial dims (not the conv's unpooled
// ones) where the pool's window is larger than the padded conv output: the node's error is the CPU's, at run.
TEST(ConvFusionPasses, PooledFusedConvShapes) {
  for (int64_t pool_pad : {1, 0}) {
    SCOPED_TRACE("pool pads " + std::to_string(pool_pad));
    testing::GraphBuilder b;
    b.input("x", testing::random_tensor(rng(), DType::kFloat32, {1, 2, 2, 4}, -1.0f, 1.0f));  // conv output 1 x 1
    b.init("w", testing::random_tensor(rng(), DType::kFloat32, {32, 3, 3, 4}, -1.0f, 1.0f));
    ir::Node& f = b.node("FusedConv", {"x", "w"}, {"y"}, "stem_pool", "kiln");
    f.attributes = {{"channels_last", passes::int_attribute(1)},
                    {"strides", passes::ints_attribute({2, 2})},
                    {"pads", passes::ints_attribute({1, 1, 1, 1})},
                    {"pool", passes::string_attribute("max")},
                    {"pool_kernel_shape", passes::ints_attribute({3, 3})},
                    {"pool_strides", passes::ints_attribute({2, 2})},
                    {"pool_pads", passes::ints_attribute({pool_pad, pool_pad, pool_pad, pool_pad})}};
    b.output("y");
    b.m.opsets["kiln"] = 1;
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    const ir::TypeInfo* y = b.m.graph.type_of("y");
    ASSERT_NE(y, nullptr);
    ASSERT_TRUE(y->has_shape);
    ASSERT_EQ(y->dims.size(), 4u);
    EXPECT_EQ(y->dims[3].value, 32);
    for (int i : {1, 2}) {
      if (pool_pad == 1) EXPECT_EQ(y->dims[i].value, 1) << "dim " << i;  // floor((1 + 2 - 3) / 2) + 1
      else EXPECT_FALSE(y->dims[i].known()) << "dim " << i;           // 1 + 0 - 3 < 0
    }
  }
}

TEST(ConvFusionPasses, WeightsThatDoNotFitAreAnError) {
  onnx::ModelProto p = testing::new_model();
  auto* g = p.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"1", "4", "5", "5"});
  testing::set_type(g->add_output(), "y", 1, {});
  testing::add_float_initializer(g, "w", {4, 4, 3}, random_values(48));
  testing::add_node(g, "Conv", {"x", "w"}, {"y"}, "bad_conv");
  ir::Model m = import(p);
  Status st = passes::convert_conv_layout(m, [](const ir::Node&) { return true; });
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("bad_conv"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("float32[4,4,3]"), std::string::npos) << st.message();
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Conv"}));  // unchanged
}

}  // namespace
}  // namespace kiln
