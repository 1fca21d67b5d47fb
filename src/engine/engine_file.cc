// serialize_plan / deserialize_plan: the .kiln layout of docs/engine-format.md. Everything read here comes
// from a file, so every field is checked before it is used; any byte string gives a Status, never a crash.
#include "engine/engine_file.h"

#include <xxhash.h>

#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/profiles.h"
#include "onnx/exporter.h"
#include "onnx/importer.h"
#include "onnx/onnx-ml.pb.h"
#include "onnx/tensor_proto.h"

namespace kiln::engine {

namespace {

using json = nlohmann::json;

void put_u32(std::string& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
void put_u64(std::string& b, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
uint32_t get_u32(const std::string& b, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(b[at + i])) << (8 * i);
  return v;
}
uint64_t get_u64(const std::string& b, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(b[at + i])) << (8 * i);
  return v;
}
uint64_t align_up(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

// Calls f on every GraphProto: `g` and the subgraphs in its nodes' attributes, depth first.
template <class G, class F>
void for_each_graph(G* g, const F& f) {
  f(g);
  for (auto& node : *g->mutable_node())
    for (auto& a : *node.mutable_attribute()) {
      if (a.has_g()) for_each_graph(a.mutable_g(), f);
      for (auto& sub : *a.mutable_graphs()) for_each_graph(&sub, f);
    }
}

// Every TensorProto of a graph and its subgraphs: initializers and tensor attributes.
void for_each_tensor(onnx::GraphProto* g, const std::function<void(onnx::TensorProto*)>& f) {
  for_each_graph(g, [&](onnx::GraphProto* gp) {
    for (auto& t : *gp->mutable_initializer()) f(&t);
    for (auto& node : *gp->mutable_node())
      for (auto& a : *node.mutable_attribute()) {
        if (a.has_t()) f(a.mutable_t());
        for (auto& t : *a.mutable_tensors()) f(&t);
      }
  });
}

json type_json(const ir::TypeInfo& t) { return t.to_string(); }

json meta_json(const Plan& plan, uint64_t weight_bytes) {
  json j;
  j["kiln_version"] = plan.kiln_version;
  j["format_version"] = kFormatVersion;
  j["target"] = {{"backend", plan.target_backend}, {"device", plan.target_device}};
  json shapes = json::object();
  for (const auto& [name, shape] : plan.settings.input_shapes) shapes[name] = shape;
  json profiles = json::array();
  for (const Profile& p : plan.settings.profiles) {
    json inputs = json::object();
    for (const auto& [name, r] : p) {
      inputs[name] = {{"min", r.min}, {"opt", r.opt}, {"max", r.max}};
      if (r.values) inputs[name]["values"] = true;  // a shape tensor's values (absent: shapes)
    }
    profiles.push_back(inputs);
  }
  j["build"] = {{"device", plan.settings.device}, {"input_shapes", shapes}, {"opt_level", plan.settings.opt_level},
                {"tf32", plan.settings.tf32}, {"fp16", plan.settings.fp16}, {"bf16", plan.settings.bf16},
                {"layer_precisions", plan.settings.layer_precisions}, {"profiles", profiles}};
  json layers = json::array();
  for (const auto& l : plan.layers)
    layers.push_back({{"name", l.name}, {"op_type", l.op_type}, {"backend", l.backend}, {"tactic", l.tactic},
                      {"precision", l.precision}, {"fallback_reason", l.fallback_reason}, {"time_ms", l.time_ms}});
  j["layers"] = layers;
  if (!plan.profile_plans.empty()) {
    json plans = json::array();
    for (const ProfilePlan& p : plan.profile_plans)
      plans.push_back({{"tactics", p.tactics}, {"max_activation_bytes", p.max_activation_bytes}});
    j["profile_plans"] = plans;
  }
  json inputs = json::array(), outputs = json::array();
  for (const auto& v : plan.model.graph.inputs) inputs.push_back({{"name", v.name}, {"type", type_json(v.type)}});
  for (const auto& v : plan.model.graph.outputs) outputs.push_back({{"name", v.name}, {"type", type_json(v.type)}});
  j["io"] = {{"inputs", inputs}, {"outputs", outputs}};
  j["weight_bytes"] = weight_bytes;
  return j;
}

Status invalid(const std::string& what) { return InvalidEngine(what); }

// Decimal text of an external_data offset or length, without exceptions.
bool parse_u64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

// Replaces the "@weights" references of every tensor with the bytes they point at (so tensor_from_proto
// reads them like inline raw_data), and refuses any other external reference: an engine is one file.
// Also bounds each tensor's claimed size by the file's before the importer allocates it.
Status resolve_weights(onnx::GraphProto* graph, const std::string& file, const SectionInfo& weights) {
  Status st;
  for_each_tensor(graph, [&](onnx::TensorProto* t) {
    if (!st.ok()) return;
    const std::string where = "tensor '" + t->name() + "'";
    // Sub-byte elements take 2 or 4 to a byte; every other element at least one byte of the file.
    int bits = dtype_is_valid(t->data_type()) ? std::min(8, dtype_bits(static_cast<DType>(t->data_type()))) : 8;
    if (bits <= 0) bits = 8;
    uint64_t numel = 1;
    for (int64_t d : t->dims()) {
      if (d < 0) return;  // the importer names the negative dimension
      if (d != 0 && numel > file.size() * 8 / static_cast<uint64_t>(d)) {
        st = invalid(where + " claims more elements than the file could hold");
        return;
      }
      numel *= static_cast<uint64_t>(d);
    }
    if (t->data_type() == static_cast<int>(DType::kString)) {
      if (numel > static_cast<uint64_t>(t->string_data_size())) {
        st = invalid(where + " holds " + std::to_string(t->string_data_size()) + " strings for " +
                     std::to_string(numel) + " elements");
        return;
      }
    } else if ((numel * bits + 7) / 8 > file.size()) {
      st = invalid(where + " claims more data than the file holds");
      return;
    }
    if (t->data_location() != onnx::TensorProto::EXTERNAL) return;
    std::string location;
    uint64_t offset = 0, length = 0;
    bool has_offset = false, has_length = false;
    for (const auto& kv : t->external_data()) {
      if (kv.key() == "location") location = kv.value();
      else if (kv.key() == "offset") has_offset = parse_u64(kv.value(), &offset);
      else if (kv.key() == "length") has_length = parse_u64(kv.value(), &length);
    }
    if (location != kWeightsLocation) {
      st = invalid(where + " refers to external data '" + location + "'; an engine's weights must lie in its " +
                   "WEIGHTS section (location \"" + kWeightsLocation + "\")");
      return;
    }
    if (!has_offset || !has_length) {
      st = invalid(where + ": its \"@weights\" reference needs a decimal offset and length");
      return;
    }
    if (t->data_type() == static_cast<int>(DType::kString)) {
      st = invalid(where + ": string tensors are stored inline, not in WEIGHTS");
      return;
    }
    if (offset > weights.size || length > weights.size - offset) {
      st = invalid(where + ": weights out of range (offset " + std::to_string(offset) + ", length " +
                   std::to_string(length) + ", the WEIGHTS section holds " + std::to_string(weights.size) + " bytes)");
      return;
    }
    t->set_raw_data(file.data() + weights.offset + offset, length);
    t->clear_external_data();
    t->clear_data_location();
  });
  return st;
}

Result<std::string> string_at(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_string())
    return invalid(std::string("META: \"") + key + "\" is missing or not a string");
  return j[key].get<std::string>();
}

// An array of integers (a shape) from META; `what` names it in the error.
Result<Shape> shape_at(const json& dims, const std::string& what) {
  if (!dims.is_array()) return invalid("META: " + what + " is not an array");
  Shape s;
  for (const auto& d : dims) {
    if (!d.is_number_integer()) return invalid("META: " + what + " holds a non-integer");
    s.push_back(d.get<int64_t>());
  }
  return s;
}

// build.profiles (format 2; absent in format 1 files, which have none): [{input: {min, opt, max}}, ...];
// a shape tensor's entry has "values": true (absent in older files: shapes).
Status profiles_from_meta(const json& b, std::vector<Profile>* profiles) {
  if (!b.contains("profiles")) return OkStatus();
  if (!b["profiles"].is_array()) return invalid("META: \"build.profiles\" is not an array");
  for (const auto& p : b["profiles"]) {
    const std::string where = "optimization profile " + std::to_string(profiles->size());
    if (!p.is_object()) return invalid("META: " + where + " is not an object");
    Profile profile;
    for (const auto& [name, r] : p.items()) {
      if (!r.is_object() || !r.contains("min") || !r.contains("opt") || !r.contains("max"))
        return invalid("META: " + where + ", input '" + name + "': needs \"min\", \"opt\" and \"max\"");
      ProfileShapes range;
      KILN_ASSIGN_OR_RETURN(range.min, shape_at(r["min"], where + " min of '" + name + "'"));
      KILN_ASSIGN_OR_RETURN(range.opt, shape_at(r["opt"], where + " opt of '" + name + "'"));
      KILN_ASSIGN_OR_RETURN(range.max, shape_at(r["max"], where + " max of '" + name + "'"));
      if (r.contains("values")) {
        if (!r["values"].is_boolean())
          return invalid("META: " + where + ", input '" + name + "': \"values\" is not a boolean");
        range.values = r["values"].get<bool>();
      }
      const Status st = check_profile_range(name, range);
      if (!st.ok()) return invalid("META: " + where + ": " + st.message());
      profile[name] = std::move(range);
    }
    profiles->push_back(std::move(profile));
  }
  return OkStatus();
}

// profile_plans (GPU engines with optimization profiles): [{"tactics": {node: tactic}, "max_activation_bytes": N}],
// one per build.profiles entry.
Status profile_plans_from_meta(const json& j, Plan* plan) {
  if (!j.contains("profile_plans")) return OkStatus();
  if (!j["profile_plans"].is_array()) return invalid("META: \"profile_plans\" is not an array");
  if (j["profile_plans"].size() != plan->settings.profiles.size())
    return invalid("META: " + std::to_string(j["profile_plans"].size()) + " profile plans for " +
                   std::to_string(plan->settings.profiles.size()) + " optimization profiles");
  for (const auto& p : j["profile_plans"]) {
    const std::string where = "META: the plan of optimization profile " + std::to_string(plan->profile_plans.size());
    if (!p.is_object() || !p.contains("tactics") || !p["tactics"].is_object() || !p.contains("max_activation_bytes") ||
        !p["max_activation_bytes"].is_number_unsigned())
      return invalid(where + " needs \"tactics\" (an object) and \"max_activation_bytes\" (a count)");
    ProfilePlan pp;
    for (const auto& [node, tactic] : p["tactics"].items()) {
      if (!tactic.is_string()) return invalid(where + ": the tactic of '" + node + "' is not a string");
      pp.tactics[node] = tactic.get<std::string>();
    }
    pp.max_activation_bytes = p["max_activation_bytes"].get<size_t>();
    plan->profile_plans.push_back(std::move(pp));
  }
  return OkStatus();
}

Status plan_from_meta(const json& j, Plan* plan) {
  if (!j.is_object()) return invalid("META is not a JSON object");
  KILN_ASSIGN_OR_RETURN(plan->kiln_version, string_at(j, "kiln_version"));
  if (!j.contains("target") || !j["target"].is_object()) return invalid("META: \"target\" is missing");
  KILN_ASSIGN_OR_RETURN(plan->target_backend, string_at(j["target"], "backend"));
  KILN_ASSIGN_OR_RETURN(plan->target_device, string_at(j["target"], "device"));
  if (!j.contains("build") || !j["build"].is_object()) return invalid("META: \"build\" is missing");
  const json& b = j["build"];
  KILN_ASSIGN_OR_RETURN(plan->settings.device, string_at(b, "device"));
  if (!b.contains("opt_level") || !b["opt_level"].is_number_integer())
    return invalid("META: \"build.opt_level\" is missing or not an integer");
  plan->settings.opt_level = b["opt_level"].get<int>();
  if (b.contains("input_shapes")) {
    if (!b["input_shapes"].is_object()) return invalid("META: \"build.input_shapes\" is not an object");
    for (const auto& [name, dims] : b["input_shapes"].items()) {
      KILN_ASSIGN_OR_RETURN(plan->settings.input_shapes[name], shape_at(dims, "input shape of '" + name + "'"));
    }
  }
  KILN_RETURN_IF_ERROR(profiles_from_meta(b, &plan->settings.profiles));
  // Precision settings (absent in engines of the first CUDA-less builds: the defaults then hold).
  for (const char* key : {"tf32", "fp16", "bf16"}) {
    if (!b.contains(key)) continue;
    if (!b[key].is_boolean()) return invalid(std::string("META: \"build.") + key + "\" is not a boolean");
  }
  plan->settings.tf32 = b.value("tf32", true);
  plan->settings.fp16 = b.value("fp16", false);
  plan->settings.bf16 = b.value("bf16", false);
  if (b.contains("layer_precisions")) {
    if (!b["layer_precisions"].is_object()) return invalid("META: \"build.layer_precisions\" is not an object");
    for (const auto& [name, p] : b["layer_precisions"].items()) {
      if (!p.is_string()) return invalid("META: the precision of layer '" + name + "' is not a string");
      plan->settings.layer_precisions[name] = p.get<std::string>();
    }
  }
  if (!j.contains("layers") || !j["layers"].is_array()) return invalid("META: \"layers\" is missing or not an array");
  for (const auto& l : j["layers"]) {
    LayerInfo li;
    KILN_ASSIGN_OR_RETURN(li.name, string_at(l, "name"));
    KILN_ASSIGN_OR_RETURN(li.op_type, string_at(l, "op_type"));
    KILN_ASSIGN_OR_RETURN(li.backend, string_at(l, "backend"));
    KILN_ASSIGN_OR_RETURN(li.tactic, string_at(l, "tactic"));
    if (l.contains("precision")) {
      KILN_ASSIGN_OR_RETURN(li.precision, string_at(l, "precision"));
    }
    if (l.contains("fallback_reason")) {
      KILN_ASSIGN_OR_RETURN(li.fallback_reason, string_at(l, "fallback_reason"));
    }
    if (l.contains("time_ms")) {
      if (!l["time_ms"].is_number()) return invalid("META: the time of layer '" + li.name + "' is not a number");
      li.time_ms = l["time_ms"].get<double>();
    }
    plan->layers.push_back(std::move(li));
  }
  return profile_plans_from_meta(j, plan);
}

}  // namespace

const char* section_kind_name(uint32_t kind) {
  switch (kind) {
    case static_cast<uint32_t>(SectionKind::kMeta): return "META";
    case static_cast<uint32_t>(SectionKind::kGraph): return "GRAPH";
    case static_cast<uint32_t>(SectionKind::kWeights): return "WEIGHTS";
    default: return "unknown";
  }
}

uint64_t engine_checksum(const std::string& bytes) {
  if (bytes.size() <= kHeaderSize) return XXH64(nullptr, 0, 0);
  return XXH64(bytes.data() + kHeaderSize, bytes.size() - kHeaderSize, 0);
}

Result<std::string> serialize_plan(const Plan& plan) {
  onnx::ModelProto mp;
  onnx_io::export_model(plan.model, &mp);

  // Move every numeric initializer's bytes (tensor_to_proto wrote them as raw_data) into WEIGHTS.
  std::string weights;
  Status st;
  for_each_graph(mp.mutable_graph(), [&](onnx::GraphProto* g) {
    for (auto& t : *g->mutable_initializer()) {
      if (!dtype_is_valid(t.data_type())) {
        if (st.ok()) st = InvalidArgument("initializer '" + t.name() + "' has no data (dtype " + std::to_string(t.data_type()) + ")");
        continue;
      }
      if (t.data_type() == static_cast<int>(DType::kString)) continue;
      weights.resize(align_up(weights.size()), '\0');
      uint64_t offset = weights.size();
      weights += t.raw_data();
      t.clear_raw_data();
      t.set_data_location(onnx::TensorProto::EXTERNAL);
      auto add = [&](const char* k, const std::string& v) {
        auto* e = t.add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      add("location", kWeightsLocation);
      add("offset", std::to_string(offset));
      add("length", std::to_string(weights.size() - offset));
    }
  });
  KILN_RETURN_IF_ERROR(st);
  std::string graph;
  if (!mp.SerializeToString(&graph))
    return Unsupported("the optimized graph cannot be serialized (protobuf messages are limited to 2 GiB)");
  std::string meta = meta_json(plan, weights.size()).dump(2, ' ', false, json::error_handler_t::replace);

  const std::vector<std::pair<SectionKind, const std::string*>> sections = {
      {SectionKind::kMeta, &meta}, {SectionKind::kGraph, &graph}, {SectionKind::kWeights, &weights}};
  uint64_t pos = align_up(kHeaderSize + kSectionEntrySize * sections.size());
  std::vector<uint64_t> offsets;
  for (const auto& s : sections) {
    offsets.push_back(pos);
    pos = align_up(pos + s.second->size());
  }
  // The file ends right after the last section (no padding after it).
  uint64_t file_size = offsets.back() + sections.back().second->size();
  std::string out(file_size, '\0');
  std::memcpy(out.data(), kMagic, sizeof(kMagic));
  put_u32(out, 8, kFormatVersion);
  put_u32(out, 12, static_cast<uint32_t>(kHeaderSize));
  put_u32(out, 16, static_cast<uint32_t>(sections.size()));
  put_u32(out, 20, 0);
  put_u64(out, 24, file_size);
  for (size_t i = 0; i < sections.size(); ++i) {
    size_t at = kHeaderSize + i * kSectionEntrySize;
    put_u32(out, at, static_cast<uint32_t>(sections[i].first));
    put_u32(out, at + 4, 0);
    put_u64(out, at + 8, offsets[i]);
    put_u64(out, at + 16, sections[i].second->size());
    if (!sections[i].second->empty())
      std::memcpy(out.data() + offsets[i], sections[i].second->data(), sections[i].second->size());
  }
  put_u64(out, 32, engine_checksum(out));
  return out;
}

Result<EngineHeader> read_engine_header(const std::string& bytes) {
  if (bytes.size() < kHeaderSize)
    return invalid("truncated: " + std::to_string(bytes.size()) + " bytes, the header alone is " +
                   std::to_string(kHeaderSize));
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    return invalid("not a Kiln engine file (the magic bytes \"KILNENG\\0\" are missing)");
  EngineHeader h;
  h.format_version = get_u32(bytes, 8);
  const std::string this_kiln = "this Kiln (format " + std::to_string(kFormatVersion) + ")";
  if (h.format_version > kFormatVersion)
    return invalid("engine format version " + std::to_string(h.format_version) + " is newer than " + this_kiln +
                   ": rebuild the engine with this Kiln, or upgrade Kiln");
  if (h.format_version < kMinFormatVersion)
    return invalid("engine format version " + std::to_string(h.format_version) + " is older than " + this_kiln +
                   " can read (formats " + std::to_string(kMinFormatVersion) + " to " + std::to_string(kFormatVersion) +
                   "): rebuild the engine with this Kiln");
  uint32_t header_size = get_u32(bytes, 12);
  if (header_size != kHeaderSize)
    return invalid("corrupted: header size " + std::to_string(header_size) + " where format " +
                   std::to_string(h.format_version) + " has " + std::to_string(kHeaderSize));
  uint32_t count = get_u32(bytes, 16);
  h.flags = get_u32(bytes, 20);
  h.file_size = get_u64(bytes, 24);
  h.checksum = get_u64(bytes, 32);
  if (h.file_size != bytes.size()) {
    if (h.file_size > bytes.size())
      return invalid("truncated: " + std::to_string(bytes.size()) + " bytes where the header says the file has " +
                     std::to_string(h.file_size));
    return invalid("trailing bytes: " + std::to_string(bytes.size()) + " bytes where the header says the file has " +
                   std::to_string(h.file_size));
  }
  uint64_t actual = engine_checksum(bytes);
  if (actual != h.checksum) return invalid("corrupted: checksum mismatch");
  if (h.flags != 0)
    return invalid("unknown header flags " + std::to_string(h.flags) + " (format " + std::to_string(h.format_version) +
                   " defines none)");
  for (size_t i = 40; i < kHeaderSize; ++i)
    if (bytes[i] != 0) return invalid("corrupted: reserved header bytes are not zero");
  uint64_t table_end = kHeaderSize + kSectionEntrySize * static_cast<uint64_t>(count);
  if (table_end > bytes.size())
    return invalid("corrupted: the section table (" + std::to_string(count) + " sections) runs past the end of the file");
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = kHeaderSize + i * kSectionEntrySize;
    SectionInfo s{get_u32(bytes, at), get_u64(bytes, at + 8), get_u64(bytes, at + 16)};
    if (s.offset < table_end || s.offset > bytes.size() || s.size > bytes.size() - s.offset)
      return invalid("corrupted: section " + std::to_string(i) + " (" + section_kind_name(s.kind) + ", offset " +
                     std::to_string(s.offset) + ", size " + std::to_string(s.size) + ") is out of bounds of the " +
                     std::to_string(bytes.size()) + "-byte file");
    for (const auto& o : h.sections)
      if (o.kind == s.kind && s.kind >= 1 && s.kind <= 3)
        return invalid(std::string("corrupted: more than one ") + section_kind_name(s.kind) + " section");
    h.sections.push_back(s);
  }
  for (uint32_t kind = 1; kind <= 3; ++kind) {
    bool found = false;
    for (const auto& s : h.sections) found = found || s.kind == kind;
    if (!found) return invalid(std::string("corrupted: the ") + section_kind_name(kind) + " section is missing");
  }
  return h;
}

namespace {
const SectionInfo& section(const EngineHeader& h, SectionKind kind) {
  for (const auto& s : h.sections)
    if (s.kind == static_cast<uint32_t>(kind)) return s;
  assert(false && "read_engine_header checked that every known section is present");
  return h.sections.front();
}
}  // namespace

Result<std::string> read_engine_meta(const std::string& bytes) {
  KILN_ASSIGN_OR_RETURN(EngineHeader h, read_engine_header(bytes));
  const SectionInfo& m = section(h, SectionKind::kMeta);
  return bytes.substr(m.offset, m.size);
}

Result<Plan> deserialize_plan(const std::string& bytes) {
  KILN_ASSIGN_OR_RETURN(EngineHeader h, read_engine_header(bytes));
  Plan plan;

  const SectionInfo& m = section(h, SectionKind::kMeta);
  json meta = json::parse(bytes.begin() + m.offset, bytes.begin() + m.offset + m.size, nullptr, false);
  if (meta.is_discarded()) return invalid("META section is not valid JSON");
  try {
    KILN_RETURN_IF_ERROR(plan_from_meta(meta, &plan));
  } catch (const json::exception& e) {
    return invalid(std::string("META section: ") + e.what());
  }

  const SectionInfo& g = section(h, SectionKind::kGraph);
  if (g.size > static_cast<uint64_t>(std::numeric_limits<int>::max()))
    return invalid("GRAPH section is larger than 2 GiB, which protobuf cannot parse");
  onnx::ModelProto mp;
  if (!mp.ParseFromArray(bytes.data() + g.offset, static_cast<int>(g.size)))
    return invalid("GRAPH section is not a valid serialized onnx.ModelProto");
  if (!mp.has_graph()) return invalid("GRAPH section: the model has no graph");
  KILN_RETURN_IF_ERROR(resolve_weights(mp.mutable_graph(), bytes, section(h, SectionKind::kWeights)));
  auto model = onnx_io::import_model_proto(mp, "");
  if (!model.ok()) return invalid("GRAPH section: " + model.status().message());
  plan.model = std::move(model).value();
  // A profile may name only the engine's inputs (the run-time checks look shapes up by those names), and
  // values only those of a shape tensor (the GPU binds them as constants of that type).
  for (size_t k = 0; k < plan.settings.profiles.size(); ++k)
    for (const auto& [name, r] : plan.settings.profiles[k]) {
      const ir::ValueInfo* found = nullptr;
      for (const auto& in : plan.model.graph.inputs)
        if (in.name == name) found = &in;
      if (found == nullptr)
        return invalid("META: optimization profile " + std::to_string(k) + " names '" + name +
                       "', which is not an input of the engine");
      if (Status st = r.values ? check_shape_tensor_input(*found, r) : OkStatus(); !st.ok())
        return invalid("META: optimization profile " + std::to_string(k) + ": " + st.message());
    }
  return plan;
}

}  // namespace kiln::engine
