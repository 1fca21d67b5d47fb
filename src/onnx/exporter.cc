#include "onnx/exporter.h"

#include "onnx/onnx-ml.pb.h"
#include "onnx/tensor_proto.h"

namespace kiln::onnx_io {

namespace {

void tensor_type_to_proto(const ir::TypeInfo& type, onnx::TypeProto_Tensor* tt) {
  tt->set_elem_type(static_cast<int32_t>(type.dtype));
  if (!type.has_shape) return;
  auto* shape = tt->mutable_shape();  // present even for rank 0: "a scalar", unlike no shape at all
  for (const auto& d : type.dims) {
    auto* dp = shape->add_dim();
    if (d.known()) dp->set_dim_value(d.value);
    else if (!d.symbol.empty()) dp->set_dim_param(d.symbol);
  }
}

void value_info_to_proto(const ir::ValueInfo& vi, onnx::ValueInfoProto* p) {
  p->set_name(vi.name);
  if (vi.type.kind != ir::TypeInfo::Kind::kUnknown) type_to_proto(vi.type, p->mutable_type());
}

void attribute_to_proto(const std::string& name, const ir::Attribute& a, int64_t ir_version,
                        onnx::AttributeProto* p) {
  using T = ir::Attribute::Type;
  p->set_name(name);
  switch (a.type) {
    case T::kFloat: p->set_type(onnx::AttributeProto::FLOAT); p->set_f(a.f); break;
    case T::kInt: p->set_type(onnx::AttributeProto::INT); p->set_i(a.i); break;
    case T::kString: p->set_type(onnx::AttributeProto::STRING); p->set_s(a.s); break;
    case T::kTensor:
      p->set_type(onnx::AttributeProto::TENSOR);
      tensor_to_proto(a.t, "", p->mutable_t());
      break;
    case T::kGraph:
      p->set_type(onnx::AttributeProto::GRAPH);
      if (a.g) export_graph(*a.g, p->mutable_g(), ir_version);
      else p->mutable_g();
      break;
    case T::kFloats:
      p->set_type(onnx::AttributeProto::FLOATS);
      for (float f : a.floats) p->add_floats(f);
      break;
    case T::kInts:
      p->set_type(onnx::AttributeProto::INTS);
      for (int64_t i : a.ints) p->add_ints(i);
      break;
    case T::kStrings:
      p->set_type(onnx::AttributeProto::STRINGS);
      for (const auto& s : a.strings) p->add_strings(s);
      break;
    case T::kTensors:
      p->set_type(onnx::AttributeProto::TENSORS);
      for (const auto& t : a.tensors) tensor_to_proto(t, "", p->add_tensors());
      break;
    case T::kGraphs:
      p->set_type(onnx::AttributeProto::GRAPHS);
      for (const auto& g : a.graphs) {
        auto* gp = p->add_graphs();
        if (g) export_graph(*g, gp, ir_version);
      }
      break;
    case T::kTypeProto:
      p->set_type(onnx::AttributeProto::TYPE_PROTO);
      type_to_proto(a.type_proto, p->mutable_tp());
      break;
    case T::kUndefined: break;
  }
}

}  // namespace

void type_to_proto(const ir::TypeInfo& type, onnx::TypeProto* p) {
  using K = ir::TypeInfo::Kind;
  p->Clear();
  switch (type.kind) {
    case K::kTensor: tensor_type_to_proto(type, p->mutable_tensor_type()); break;
    case K::kSequence:
      // The IR keeps only the element dtype of a sequence.
      p->mutable_sequence_type()->mutable_elem_type()->mutable_tensor_type()->set_elem_type(
          static_cast<int32_t>(type.dtype));
      break;
    case K::kOptional: {
      auto* elem = p->mutable_optional_type()->mutable_elem_type();
      if (type.optional_of == K::kTensor) {
        tensor_type_to_proto(type, elem->mutable_tensor_type());
      } else if (type.optional_of == K::kSequence) {
        elem->mutable_sequence_type()->mutable_elem_type()->mutable_tensor_type()->set_elem_type(
            static_cast<int32_t>(type.dtype));
      }
      break;
    }
    case K::kUnknown: break;
  }
}

void export_graph(const ir::Graph& g, onnx::GraphProto* p, int64_t ir_version) {
  p->Clear();
  p->set_name(g.name);
  for (const auto& [name, t] : g.initializers) tensor_to_proto(t, name, p->add_initializer());
  // Before IR 4 every initializer must also be a graph input; list those the IR does not already have as
  // inputs (first, as ONNX writers of that time did).
  if (ir_version < 4) {
    for (const auto& [name, t] : g.initializers) {
      bool listed = false;
      for (const auto& in : g.inputs) listed = listed || in.name == name;
      if (listed) continue;
      ir::ValueInfo vi{name, {}};
      vi.type.kind = ir::TypeInfo::Kind::kTensor;
      vi.type.dtype = t.dtype();
      vi.type.has_shape = true;
      for (int64_t d : t.shape()) vi.type.dims.push_back(ir::Dim::of(d));
      value_info_to_proto(vi, p->add_input());
    }
  }
  for (const auto& in : g.inputs) value_info_to_proto(in, p->add_input());
  for (const auto& out : g.outputs) value_info_to_proto(out, p->add_output());
  for (const auto& [name, type] : g.value_types) value_info_to_proto({name, type}, p->add_value_info());
  for (const auto& n : g.nodes) {
    auto* np = p->add_node();
    np->set_name(n.name);
    np->set_op_type(n.op_type);
    if (!n.domain.empty()) np->set_domain(n.domain);
    for (const auto& in : n.inputs) np->add_input(in);
    for (const auto& out : n.outputs) np->add_output(out);
    for (const auto& [name, a] : n.attributes)
      if (a.type != ir::Attribute::Type::kUndefined) attribute_to_proto(name, a, ir_version, np->add_attribute());
  }
}

void export_model(const ir::Model& m, onnx::ModelProto* p) {
  p->Clear();
  p->set_ir_version(m.ir_version);
  if (!m.producer_name.empty()) p->set_producer_name(m.producer_name);
  if (!m.producer_version.empty()) p->set_producer_version(m.producer_version);
  for (const auto& [domain, version] : m.opsets) {
    auto* os = p->add_opset_import();
    os->set_domain(domain);
    os->set_version(version);
  }
  export_graph(m.graph, p->mutable_graph(), m.ir_version);
}

}  // namespace kiln::onnx_io
