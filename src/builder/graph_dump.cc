#include "builder/graph_dump.h"

#include <charconv>
#include <map>
#include <sstream>

namespace kiln::builder {

namespace {

// The shortest text that reads back as the same float: the same on every platform, unlike %g's rounding.
std::string float_text(float v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// Lists longer than this show their first elements and their length: a dump line stays readable.
constexpr size_t kMaxListItems = 16;

template <class T, class F>
std::string list_text(const std::vector<T>& items, F&& text) {
  std::string s = "[";
  for (size_t i = 0; i < items.size() && i < kMaxListItems; ++i) s += (i ? "," : "") + text(items[i]);
  if (items.size() > kMaxListItems) s += ",...(" + std::to_string(items.size()) + ")";
  return s + "]";
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

std::string tensor_text(const Tensor& t) { return dtype_name(t.dtype()) + shape_to_string(t.shape()); }

std::string attribute_text(const ir::Attribute& a) {
  using T = ir::Attribute::Type;
  switch (a.type) {
    case T::kFloat: return float_text(a.f);
    case T::kInt: return std::to_string(a.i);
    case T::kString: return quoted(a.s);
    case T::kTensor: return tensor_text(a.t);
    case T::kGraph: return "graph(" + std::to_string(a.g ? a.g->nodes.size() : 0) + " nodes)";
    case T::kFloats: return list_text(a.floats, float_text);
    case T::kInts: return list_text(a.ints, [](int64_t v) { return std::to_string(v); });
    case T::kStrings: return list_text(a.strings, quoted);
    case T::kTensors: return list_text(a.tensors, tensor_text);
    case T::kGraphs:
      return list_text(a.graphs, [](const std::shared_ptr<ir::Graph>& g) {
        return "graph(" + std::to_string(g ? g->nodes.size() : 0) + " nodes)";
      });
    case T::kTypeProto: return a.type_proto.to_string();
    case T::kUndefined: break;
  }
  return "?";
}

std::string type_text(const ir::Graph& g, const std::string& value) {
  const ir::TypeInfo* t = g.type_of(value);
  return t ? t->to_string() : "unknown";
}

}  // namespace

std::string dump_graph(const ir::Model& m) {
  const ir::Graph& g = m.graph;
  std::ostringstream os;
  os << "opsets:";
  for (const auto& [domain, version] : m.opsets) os << " " << quoted(domain) << "=" << version;
  os << "\n";
  for (const auto& v : g.inputs) os << "input " << v.name << ": " << type_text(g, v.name) << "\n";
  for (const ir::Node& n : g.nodes) {
    os << n.name << ": " << (n.domain.empty() ? "" : n.domain + ".") << n.op_type << "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      os << (i ? ", " : "") << (n.inputs[i].empty() ? "\"\"" : n.inputs[i]);
      if (auto it = g.initializers.find(n.inputs[i]); it != g.initializers.end())
        os << ": " << tensor_text(it->second);
    }
    os << ")";
    for (const auto& [name, a] : n.attributes) {
      // kiln.Pointwise's compiled kernel (builder/build_plan.cc): its size, not its bytes.
      if (name == "cubin" && a.type == ir::Attribute::Type::kString) os << " cubin: " << a.s.size() << " bytes";
      else os << " " << name << "=" << attribute_text(a);
    }
    os << " ->";
    for (size_t i = 0; i < n.outputs.size(); ++i)
      os << (i ? ", " : " ") << (n.outputs[i].empty() ? "\"\"" : n.outputs[i] + ": " + type_text(g, n.outputs[i]));
    os << "\n";
  }
  for (const auto& v : g.outputs) os << "output " << v.name << ": " << type_text(g, v.name) << "\n";

  struct Count {
    size_t tensors = 0, bytes = 0;
  };
  Count all;
  std::map<std::string, Count> by_dtype;
  for (const auto& [name, t] : g.initializers) {
    for (Count* c : {&all, &by_dtype[dtype_name(t.dtype())]}) {
      c->tensors += 1;
      c->bytes += t.nbytes();
    }
  }
  auto count_text = [](const Count& c) {
    return std::to_string(c.tensors) + (c.tensors == 1 ? " tensor, " : " tensors, ") + std::to_string(c.bytes) +
           " bytes";
  };
  os << "initializers: " << count_text(all);
  const char* sep = " (";
  for (const auto& [dtype, c] : by_dtype) {
    os << sep << dtype << ": " << count_text(c);
    sep = "; ";
  }
  os << (by_dtype.empty() ? "" : ")") << "\n";
  return os.str();
}

}  // namespace kiln::builder
