#include "ir/graph.h"

namespace kiln::ir {

bool TypeInfo::is_static() const {
  if (kind != Kind::kTensor || !has_shape) return false;
  for (const Dim& d : dims)
    if (!d.known()) return false;
  return true;
}

Shape TypeInfo::static_shape() const {
  Shape s;
  for (const Dim& d : dims) s.push_back(d.value);
  return s;
}

std::string TypeInfo::to_string() const {
  std::string dims_text;
  if (has_shape) {
    dims_text = "[";
    for (size_t i = 0; i < dims.size(); ++i) {
      if (i) dims_text += ",";
      dims_text += dims[i].known() ? std::to_string(dims[i].value) : (dims[i].symbol.empty() ? "?" : dims[i].symbol);
    }
    dims_text += "]";
  } else {
    dims_text = "[...]";
  }
  switch (kind) {
    case Kind::kUnknown: return "unknown";
    case Kind::kTensor: return dtype_name(dtype) + dims_text;
    case Kind::kSequence: return "sequence<" + dtype_name(dtype) + ">";
    case Kind::kOptional: return "optional<" + dtype_name(dtype) + ">";
  }
  return "?";
}

const char* attribute_type_name(Attribute::Type t) {
  switch (t) {
    case Attribute::Type::kUndefined: return "undefined";
    case Attribute::Type::kFloat: return "float";
    case Attribute::Type::kInt: return "int";
    case Attribute::Type::kString: return "string";
    case Attribute::Type::kTensor: return "tensor";
    case Attribute::Type::kGraph: return "graph";
    case Attribute::Type::kFloats: return "floats";
    case Attribute::Type::kInts: return "ints";
    case Attribute::Type::kStrings: return "strings";
    case Attribute::Type::kTensors: return "tensors";
    case Attribute::Type::kGraphs: return "graphs";
    case Attribute::Type::kTypeProto: return "type_proto";
  }
  return "?";
}

std::string Node::describe() const {
  return "node '" + name + "' (" + (domain.empty() ? "" : domain + ".") + op_type + ", #" + std::to_string(index) + ")";
}

const Node* Graph::node_named(const std::string& name) const {
  for (const Node& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

const TypeInfo* Graph::type_of(const std::string& value) const {
  for (const ValueInfo& v : inputs)
    if (v.name == value) return &v.type;
  // Inferred types (value_types) are at least as precise as a graph output's declared type.
  auto it = value_types.find(value);
  if (it != value_types.end()) return &it->second;
  for (const ValueInfo& v : outputs)
    if (v.name == value && v.type.kind != TypeInfo::Kind::kUnknown) return &v.type;
  return nullptr;
}

}  // namespace kiln::ir
