// Small ONNX models built in code, for tests of the parser, passes, engine and command line.
#pragma once

#include <random>
#include <string>
#include <vector>

#include "onnx/onnx-ml.pb.h"
#include "random_tensors.h"

namespace kiln::testing {

inline void set_type(onnx::ValueInfoProto* v, const std::string& name, int dtype, const std::vector<std::string>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(dtype);
  auto* shape = t->mutable_shape();
  for (const auto& d : dims) {
    auto* dim = shape->add_dim();
    if (!d.empty() && std::isdigit(static_cast<unsigned char>(d[0]))) dim->set_dim_value(std::stoll(d));
    else dim->set_dim_param(d);
  }
}

inline onnx::NodeProto* add_node(onnx::GraphProto* g, const std::string& op, const std::vector<std::string>& ins,
                                 const std::vector<std::string>& outs, const std::string& name = "") {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name.empty() ? op + "_" + std::to_string(g->node_size() - 1) : name);
  for (const auto& i : ins) n->add_input(i);
  for (const auto& o : outs) n->add_output(o);
  return n;
}

inline void add_float_initializer(onnx::GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
                                  const std::vector<float>& values) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(1);
  for (int64_t d : dims) t->add_dims(d);
  for (float v : values) t->add_float_data(v);
}

inline void add_int64_initializer(onnx::GraphProto* g, const std::string& name, const std::vector<int64_t>& values) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(7);
  t->add_dims(static_cast<int64_t>(values.size()));
  for (int64_t v : values) t->add_int64_data(v);
}

inline onnx::ModelProto new_model(int opset = 17) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  m.mutable_graph()->set_name("test");
  return m;
}

// y = Relu(x * w + b) reshaped through a Shape -> Gather -> Concat -> Reshape chain, x: float[batch,4].
inline onnx::ModelProto mlp_with_shape_chain() {
  onnx::ModelProto m = new_model();
  auto* g = m.mutable_graph();
  set_type(g->add_input(), "x", 1, {"batch", "4"});
  set_type(g->add_output(), "y", 1, {"batch", "3"});
  add_float_initializer(g, "w", {4, 3}, {0.1f, -0.2f, 0.3f, 0.4f, 0.5f, -0.6f, 0.7f, 0.8f, 0.9f, -1.0f, 1.1f, 1.2f});
  add_float_initializer(g, "b", {3}, {0.5f, -0.5f, 0.25f});
  add_int64_initializer(g, "zero", {0});
  add_int64_initializer(g, "minus_one", {-1});
  add_node(g, "MatMul", {"x", "w"}, {"xw"}, "fc");
  add_node(g, "Add", {"xw", "b"}, {"xwb"}, "bias");
  add_node(g, "Relu", {"xwb"}, {"act"}, "relu");
  add_node(g, "Shape", {"act"}, {"act_shape"}, "shape");
  auto* gather = add_node(g, "Gather", {"act_shape", "zero"}, {"batch_dim"}, "gather");
  auto* axis = gather->add_attribute();
  axis->set_name("axis");
  axis->set_type(onnx::AttributeProto::INT);
  axis->set_i(0);
  auto* concat = add_node(g, "Concat", {"batch_dim", "minus_one"}, {"new_shape"}, "concat");
  auto* caxis = concat->add_attribute();
  caxis->set_name("axis");
  caxis->set_type(onnx::AttributeProto::INT);
  caxis->set_i(0);
  add_node(g, "Reshape", {"act", "new_shape"}, {"y"}, "reshape");
  add_node(g, "Neg", {"x"}, {"unused"}, "dead");  // nothing reads it
  return m;
}

inline std::string serialize(const onnx::ModelProto& m) {
  std::string s;
  m.SerializeToString(&s);
  return s;
}

// x [N,3,8,8] -> Conv (4 filters 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (5) -> Softmax
// -> probs [N,5], weights uniform in [-0.5, 0.5) from `gen`; the caller declares x and probs (and may read on
// from probs). Every layer has a GPU kernel: the CUDA engine tests' model.
inline void add_conv_classifier(onnx::GraphProto* g, std::mt19937& gen) {
  auto init = [&](const std::string& name, std::vector<int64_t> dims) {
    const Tensor t = random_tensor(gen, DType::kFloat32, dims, -0.5f, 0.5f);
    add_float_initializer(g, name, dims, {t.data<float>(), t.data<float>() + t.numel()});
  };
  init("w", {4, 3, 3, 3});
  init("b", {4});
  init("fw", {4, 5});
  init("fb", {5});
  auto* conv = add_node(g, "Conv", {"x", "w", "b"}, {"c"}, "conv");
  auto* pads = conv->add_attribute();
  pads->set_name("pads");
  pads->set_type(onnx::AttributeProto::INTS);
  for (int i = 0; i < 4; ++i) pads->add_ints(1);
  add_node(g, "Relu", {"c"}, {"r"}, "relu");
  add_node(g, "GlobalAveragePool", {"r"}, {"p"}, "pool");
  add_node(g, "Flatten", {"p"}, {"f"}, "flatten");
  add_node(g, "Gemm", {"f", "fw", "fb"}, {"logits"}, "fc");
  add_node(g, "Softmax", {"logits"}, {"probs"}, "softmax");
}

}  // namespace kiln::testing
