// The intermediate representation: a Model holds a Graph of Nodes joined by named values, as in ONNX.
// The importer builds it from ONNX protobuf; passes rewrite it; the engine file stores it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/tensor.h"

namespace kiln::ir {

struct Graph;

// A dimension: a known size (value >= 0), a named symbol ("batch"), or unknown (value -1, empty symbol).
struct Dim {
  int64_t value = -1;
  std::string symbol;
  bool known() const { return value >= 0; }
  static Dim of(int64_t v) { return Dim{v, {}}; }
  static Dim named(std::string s) { return Dim{-1, std::move(s)}; }
};

// What is known about a value's type: kind, element dtype and (if known) its rank and dims.
struct TypeInfo {
  enum class Kind { kUnknown, kTensor, kSequence, kOptional };
  Kind kind = Kind::kUnknown;
  DType dtype = DType::kUndefined;  // element dtype (of the tensor, or of the sequence's / optional's tensors)
  bool has_shape = false;           // false: rank unknown
  std::vector<Dim> dims;
  // For kOptional: the kind of the contained type (kTensor or kSequence).
  Kind optional_of = Kind::kUnknown;

  bool is_static() const;  // a tensor with every dim known
  Shape static_shape() const;
  std::string to_string() const;  // "float32[batch,3,224,224]"
};

struct ValueInfo {
  std::string name;
  TypeInfo type;
};

struct Attribute {
  enum class Type { kUndefined, kFloat, kInt, kString, kTensor, kGraph, kFloats, kInts, kStrings, kTensors, kGraphs, kTypeProto };
  Type type = Type::kUndefined;
  float f = 0;
  int64_t i = 0;
  std::string s;
  Tensor t;
  std::shared_ptr<Graph> g;
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  std::vector<Tensor> tensors;
  std::vector<std::shared_ptr<Graph>> graphs;
  TypeInfo type_proto;  // for kTypeProto (e.g. SequenceEmpty, Optional)
};
const char* attribute_type_name(Attribute::Type t);

struct Node {
  std::string name;    // may be empty in ONNX; the importer names unnamed nodes "<op>_<index>"
  std::string op_type;
  std::string domain;  // "" for the default ONNX domain
  std::vector<std::string> inputs;   // "" marks an omitted optional input
  std::vector<std::string> outputs;  // "" marks an omitted optional output
  std::map<std::string, Attribute> attributes;
  int index = 0;  // position in the graph as imported, for error messages

  const Attribute* attr(const std::string& n) const {
    auto it = attributes.find(n);
    return it == attributes.end() ? nullptr : &it->second;
  }
  // "node 'conv_1' (Conv, #3)"
  std::string describe() const;
};

struct Graph {
  std::string name;
  std::vector<Node> nodes;  // in topological order
  std::vector<ValueInfo> inputs;   // graph inputs that are not initializers
  std::vector<ValueInfo> outputs;
  std::map<std::string, TypeInfo> value_types;  // inferred or declared types of intermediate values
  std::map<std::string, Tensor> initializers;

  const TypeInfo* type_of(const std::string& value) const;
  // The node of that name; null when there is none (node names are unique).
  const Node* node_named(const std::string& name) const;
};

// Opset version per domain ("" is the default domain).
using OpsetMap = std::map<std::string, int>;

struct Model {
  int64_t ir_version = 0;
  OpsetMap opsets;
  std::string producer_name;
  std::string producer_version;
  Graph graph;

  int default_opset() const { return opset_of_domain(""); }
  // The opset the model imports for the node's domain; 0 when it imports none.
  int opset_of(const Node& n) const { return opset_of_domain(n.domain); }
  int opset_of_domain(const std::string& domain) const {
    auto it = opsets.find(domain);
    return it == opsets.end() ? 0 : it->second;
  }
};

}  // namespace kiln::ir
