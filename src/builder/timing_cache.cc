// The timing cache file and problem keys (timing_cache.h).
#include "builder/timing_cache.h"

#include <xxhash.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kiln::builder {

namespace {

using json = nlohmann::json;

std::string type_text(const ir::Graph& g, const std::string& name) {
  if (name.empty()) return "none";
  if (auto it = g.initializers.find(name); it != g.initializers.end())
    return dtype_name(it->second.dtype()) + shape_to_string(it->second.shape());
  const ir::TypeInfo* t = g.type_of(name);
  return t == nullptr ? "?" : t->to_string();
}

std::string attribute_text(const ir::Attribute& a) {
  std::ostringstream os;
  switch (a.type) {
    case ir::Attribute::Type::kFloat: os << a.f; break;
    case ir::Attribute::Type::kInt: os << a.i; break;
    case ir::Attribute::Type::kString: os << '"' << a.s << '"'; break;
    case ir::Attribute::Type::kFloats:
      for (float f : a.floats) os << f << ',';
      break;
    case ir::Attribute::Type::kInts:
      for (int64_t i : a.ints) os << i << ',';
      break;
    case ir::Attribute::Type::kStrings:
      for (const auto& s : a.strings) os << s << ',';
      break;
    case ir::Attribute::Type::kTensor:
      os << dtype_name(a.t.dtype()) << shape_to_string(a.t.shape()) << '#'
         << XXH64(a.t.raw_data(), a.t.dtype() == DType::kString ? 0 : a.t.nbytes(), 0);
      break;
    default: os << '?'; break;
  }
  return os.str();
}

}  // namespace

Result<TimingCache> TimingCache::load(const std::string& path) {
  TimingCache c;
  std::ifstream in(path);
  if (!in) return c;
  json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    return InvalidArgument("timing cache '" + path + "' is not valid JSON: " + e.what());
  }
  if (!j.is_object() || j.value("format", 0) != 1 || !j.contains("entries") || !j["entries"].is_object())
    return InvalidArgument("timing cache '" + path + "' is not a Kiln timing cache (format 1)");
  for (const auto& [key, e] : j["entries"].items()) {
    if (!e.is_object() || !e.contains("tactic") || !e["tactic"].is_string() || !e.contains("ms") ||
        !e["ms"].is_number())
      return InvalidArgument("timing cache '" + path + "': entry '" + key + "' is malformed");
    c.entries_[key] = backends::TacticTime{e["tactic"].get<std::string>(), e["ms"].get<double>(), ""};
  }
  return c;
}

Status TimingCache::save(const std::string& path) const {
  json j;
  j["format"] = 1;
  j["entries"] = json::object();
  for (const auto& [key, t] : entries_) j["entries"][key] = {{"tactic", t.tactic}, {"ms", t.ms}};
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(1) << "\n";
    if (!out) return IoError("cannot write the timing cache '" + path + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return IoError("cannot write the timing cache '" + path + "'");
  return OkStatus();
}

const backends::TacticTime* TimingCache::find(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

void TimingCache::put(const std::string& key, backends::TacticTime t) { entries_[key] = std::move(t); }

std::string problem_key(const ir::Node& node, const ir::Graph& graph, int opset, bool allow_tf32,
                        const std::string& device) {
  std::ostringstream os;
  os << device << '|' << node.domain << '.' << node.op_type << '/' << opset << (allow_tf32 ? "|tf32" : "|fp32");
  for (const auto& [name, a] : node.attributes) os << '|' << name << '=' << attribute_text(a);
  for (const auto& in : node.inputs) {
    os << "|in:" << type_text(graph, in);
    auto w = graph.initializers.find(in);
    if (w != graph.initializers.end() && w->second.dtype() != DType::kString && w->second.numel() <= 64)
      os << '#' << XXH64(w->second.raw_data(), w->second.nbytes(), 0);
  }
  for (const auto& out : node.outputs) {
    os << "|out:" << type_text(graph, out);
  }
  return os.str();
}


}  // namespace kiln::builder
