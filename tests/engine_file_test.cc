// The .kiln engine file (docs/engine-format.md) and the IR -> ONNX exporter it stores its graph with:
// round trips, every refusal of deserialize_plan, and a fuzz test (mutated engines give a Status, never a crash).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/engine_file.h"
#include "engine/plan.h"
#include "onnx/exporter.h"
#include "onnx/importer.h"
#include "onnx/onnx-ml.pb.h"

namespace kiln {
namespace {

using ir::Dim;
using ir::TypeInfo;

// ---------------------------------------------------------------- a hand-built model and its comparison

TypeInfo tensor_type(DType dt, std::vector<Dim> dims) {
  TypeInfo t;
  t.kind = TypeInfo::Kind::kTensor;
  t.dtype = dt;
  t.has_shape = true;
  t.dims = std::move(dims);
  return t;
}

ir::Node make_node(std::string name, std::string op, std::vector<std::string> in, std::vector<std::string> out, int index) {
  ir::Node n;
  n.name = std::move(name);
  n.op_type = std::move(op);
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  n.index = index;
  return n;
}

Tensor int4_tensor() {
  Tensor t(DType::kInt4, {5});
  const int8_t v[] = {-8, -1, 0, 3, 7};
  std::memcpy(t.raw_data(), v, 5);
  return t;
}

ir::Model make_model() {
  ir::Model m;
  m.ir_version = 8;
  m.opsets = {{"", 17}};
  m.producer_name = "kiln-test";
  m.producer_version = "0.0";
  ir::Graph& g = m.graph;
  g.name = "main";
  g.inputs.push_back({"x", tensor_type(DType::kFloat32, {Dim::named("batch"), Dim::of(4)})});
  g.inputs.push_back({"cond", tensor_type(DType::kBool, {})});
  TypeInfo seq;
  seq.kind = TypeInfo::Kind::kSequence;
  seq.dtype = DType::kInt64;
  g.inputs.push_back({"seq", seq});
  TypeInfo opt = tensor_type(DType::kFloat16, {Dim{}, Dim::of(2)});
  opt.kind = TypeInfo::Kind::kOptional;
  opt.optional_of = TypeInfo::Kind::kTensor;
  g.inputs.push_back({"opt", opt});
  TypeInfo unranked;
  unranked.kind = TypeInfo::Kind::kTensor;
  unranked.dtype = DType::kUInt8;
  g.inputs.push_back({"unranked", unranked});

  g.initializers["w"] = Tensor::from_vector<float>(DType::kFloat32, {4}, {1.5f, -2.f, 3.25f, 0.f});
  g.initializers["h"] = Tensor::from_vector<uint16_t>(DType::kFloat16, {3}, {0x3c00, 0xc000, 0x7bff});
  g.initializers["q"] = int4_tensor();
  g.initializers["u2"] = Tensor::from_vector<uint8_t>(DType::kUInt2, {7}, {0, 1, 2, 3, 3, 2, 1});
  g.initializers["b"] = Tensor::from_vector<uint8_t>(DType::kBool, {2}, {1, 0});
  g.initializers["i64"] = Tensor::from_vector<int64_t>(DType::kInt64, {2, 1}, {int64_t{1} << 40, -3});
  g.initializers["scalar"] = Tensor::scalar<double>(DType::kFloat64, 2.5);
  g.initializers["empty"] = Tensor(DType::kFloat32, {0, 3});
  Tensor s(DType::kString, {2});
  s.strings()[0] = "a";
  s.strings()[1] = std::string("h\xc3\xa9llo\0x", 8);
  g.initializers["s"] = s;

  g.nodes.push_back(make_node("add0", "Add", {"x", "w"}, {"y"}, 0));
  // If with two subgraphs; the then branch has its own initializers and reads `y` from the outer scope.
  auto then_g = std::make_shared<ir::Graph>();
  then_g->name = "then";
  then_g->initializers["sub_w"] = Tensor::from_vector<float>(DType::kFloat32, {4}, {9, 8, 7, 6});
  then_g->initializers["sub_q"] = int4_tensor();
  then_g->nodes.push_back(make_node("then_add", "Add", {"y", "sub_w"}, {"t_out"}, 0));
  then_g->outputs.push_back({"t_out", tensor_type(DType::kFloat32, {Dim::named("batch"), Dim::of(4)})});
  auto else_g = std::make_shared<ir::Graph>();
  else_g->name = "else";
  else_g->nodes.push_back(make_node("else_id", "Identity", {"x"}, {"e_out"}, 0));
  else_g->outputs.push_back({"e_out", tensor_type(DType::kFloat32, {Dim::named("batch"), Dim{}})});
  ir::Node if_node = make_node("if0", "If", {"cond"}, {"z"}, 1);
  if_node.attributes["then_branch"].type = ir::Attribute::Type::kGraph;
  if_node.attributes["then_branch"].g = then_g;
  if_node.attributes["else_branch"].type = ir::Attribute::Type::kGraph;
  if_node.attributes["else_branch"].g = else_g;
  g.nodes.push_back(if_node);

  // Every attribute type, on an Identity (the importer does not check attributes against the op).
  ir::Node id = make_node("id_attrs", "Identity", {"z", ""}, {"out", ""}, 2);
  using T = ir::Attribute::Type;
  auto& a = id.attributes;
  a["f"].type = T::kFloat; a["f"].f = -0.75f;
  a["i"].type = T::kInt; a["i"].i = -(int64_t{1} << 50);
  a["s"].type = T::kString; a["s"].s = std::string("bytes\0here", 10);
  a["t"].type = T::kTensor; a["t"].t = Tensor::from_vector<uint16_t>(DType::kFloat16, {2}, {0x3c00, 0x0001});
  a["fs"].type = T::kFloats; a["fs"].floats = {1, 2.5f};
  a["is"].type = T::kInts; a["is"].ints = {-1, 0, 7};
  a["ss"].type = T::kStrings; a["ss"].strings = {"x", ""};
  a["ts"].type = T::kTensors; a["ts"].tensors = {int4_tensor(), s};
  a["gs"].type = T::kGraphs; a["gs"].graphs = {else_g};
  a["tp"].type = T::kTypeProto; a["tp"].type_proto = seq;
  a["empty_ints"].type = T::kInts;
  g.nodes.push_back(id);

  g.outputs.push_back({"out", tensor_type(DType::kFloat32, {Dim::named("batch"), Dim::of(4)})});
  g.outputs.push_back({"y", tensor_type(DType::kFloat32, {Dim::named("batch"), Dim::of(4)})});
  g.value_types["z"] = tensor_type(DType::kFloat32, {Dim::named("batch"), Dim{}});
  return m;
}

engine::Plan make_plan() {
  engine::Plan p;
  p.kiln_version = "0.1.0-test";
  p.target_backend = "cpu";
  p.target_device = "x86_64 CPU (test)";
  p.settings.device = "cpu";
  p.settings.input_shapes = {{"x", {2, 4}}, {"cond", {}}};
  p.settings.opt_level = 2;
  // Two optimization profiles, so that the fuzz test mutates them too.
  p.settings.profiles = {{{"x", {{1, 4}, {2, 4}, {8, 4}}}}, {{"x", {{8, 4}, {16, 4}, {32, 4}}}, {"unranked", {{1}, {2}, {3}}}}};
  p.profile_plans = {{{{"add0", "cpu.reference"}}, 4096}, {{}, 0}};
  p.model = make_model();
  p.layers = {{"add0", "Add", "cpu", "cpu.reference"},
              {"if0", "If", "cpu", "cpu.reference"},
              {"id_attrs", "Identity", "cpu", "cpu.copy"}};
  return p;
}

std::string diff_type(const TypeInfo& a, const TypeInfo& b) {
  if (a.kind != b.kind || a.dtype != b.dtype || a.has_shape != b.has_shape || a.optional_of != b.optional_of ||
      a.to_string() != b.to_string() || a.dims.size() != b.dims.size())
    return a.to_string() + " vs " + b.to_string();
  for (size_t i = 0; i < a.dims.size(); ++i)
    if (a.dims[i].value != b.dims[i].value || a.dims[i].symbol != b.dims[i].symbol) return "dim " + std::to_string(i);
  return "";
}

std::string diff_tensor(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return a.description() + " vs " + b.description();
  if (a.dtype() == DType::kString) {
    for (int64_t i = 0; i < a.numel(); ++i)
      if (a.strings()[i] != b.strings()[i]) return "string " + std::to_string(i);
    return "";
  }
  if (a.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) != 0) return "data of " + a.description();
  return "";
}

std::string diff_graph(const ir::Graph& a, const ir::Graph& b);

std::string diff_attr(const ir::Attribute& a, const ir::Attribute& b) {
  if (a.type != b.type) return "type";
  if (a.f != b.f || a.i != b.i || a.s != b.s || a.floats != b.floats || a.ints != b.ints || a.strings != b.strings)
    return "scalar or list value";
  if (a.type == ir::Attribute::Type::kTensor) {
    if (auto d = diff_tensor(a.t, b.t); !d.empty()) return d;
  }
  if (a.tensors.size() != b.tensors.size() || a.graphs.size() != b.graphs.size()) return "list size";
  for (size_t i = 0; i < a.tensors.size(); ++i)
    if (auto d = diff_tensor(a.tensors[i], b.tensors[i]); !d.empty()) return "tensor " + std::to_string(i) + ": " + d;
  if (!a.g != !b.g) return "graph presence";
  if (a.g)
    if (auto d = diff_graph(*a.g, *b.g); !d.empty()) return "graph: " + d;
  for (size_t i = 0; i < a.graphs.size(); ++i)
    if (auto d = diff_graph(*a.graphs[i], *b.graphs[i]); !d.empty()) return "graph " + std::to_string(i) + ": " + d;
  if (a.type == ir::Attribute::Type::kTypeProto) return diff_type(a.type_proto, b.type_proto);
  return "";
}

std::string diff_values(const std::vector<ir::ValueInfo>& a, const std::vector<ir::ValueInfo>& b) {
  if (a.size() != b.size()) return "count " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name) return a[i].name + " vs " + b[i].name;
    if (auto d = diff_type(a[i].type, b[i].type); !d.empty()) return a[i].name + ": " + d;
  }
  return "";
}

std::string diff_graph(const ir::Graph& a, const ir::Graph& b) {
  if (a.name != b.name) return "name " + a.name + " vs " + b.name;
  if (auto d = diff_values(a.inputs, b.inputs); !d.empty()) return "inputs: " + d;
  if (auto d = diff_values(a.outputs, b.outputs); !d.empty()) return "outputs: " + d;
  if (a.value_types.size() != b.value_types.size()) return "value_types count";
  for (const auto& [name, t] : a.value_types) {
    if (!b.value_types.count(name)) return "value_types lacks " + name;
    if (auto d = diff_type(t, b.value_types.at(name)); !d.empty()) return "value_types " + name + ": " + d;
  }
  if (a.initializers.size() != b.initializers.size()) return "initializer count";
  for (const auto& [name, t] : a.initializers) {
    if (!b.initializers.count(name)) return "initializers lack " + name;
    if (auto d = diff_tensor(t, b.initializers.at(name)); !d.empty()) return "initializer " + name + ": " + d;
  }
  if (a.nodes.size() != b.nodes.size()) return "node count";
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    const ir::Node& x = a.nodes[i];
    const ir::Node& y = b.nodes[i];
    if (x.name != y.name || x.op_type != y.op_type || x.domain != y.domain || x.inputs != y.inputs ||
        x.outputs != y.outputs || x.index != y.index)
      return "node " + x.describe() + " vs " + y.describe();
    if (x.attributes.size() != y.attributes.size()) return x.describe() + ": attribute count";
    for (const auto& [name, attr] : x.attributes) {
      if (!y.attributes.count(name)) return x.describe() + " lacks attribute " + name;
      if (auto d = diff_attr(attr, y.attributes.at(name)); !d.empty()) return x.describe() + " attribute " + name + ": " + d;
    }
  }
  return "";
}

std::string diff_model(const ir::Model& a, const ir::Model& b) {
  if (a.ir_version != b.ir_version || a.opsets != b.opsets || a.producer_name != b.producer_name ||
      a.producer_version != b.producer_version)
    return "model header";
  return diff_graph(a.graph, b.graph);
}

// ---------------------------------------------------------------- exporter

TEST(EngineExporter, RoundTripThroughImporter) {
  ir::Model m = make_model();
  onnx::ModelProto mp;
  onnx_io::export_model(m, &mp);
  auto back = onnx_io::import_model_proto(mp, "");
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(diff_model(m, *back), "");
  // Exporting again gives the same bytes.
  onnx::ModelProto mp2;
  onnx_io::export_model(*back, &mp2);
  EXPECT_EQ(mp.SerializeAsString(), mp2.SerializeAsString());
}

TEST(EngineExporter, OldIrVersionListsInitializersAsInputs) {
  ir::Model m = make_model();
  m.ir_version = 3;
  onnx::ModelProto mp;
  onnx_io::export_model(m, &mp);
  EXPECT_EQ(mp.graph().input_size(), static_cast<int>(m.graph.initializers.size() + m.graph.inputs.size()));
  for (int i = 0; i < static_cast<int>(m.graph.initializers.size()); ++i)
    EXPECT_TRUE(m.graph.initializers.count(mp.graph().input(i).name())) << mp.graph().input(i).name();
  // Whether the importer keeps such inputs (inputs with a default) or drops them (constants), importing and
  // exporting again gives the same model.
  auto back = onnx_io::import_model_proto(mp, "");
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  onnx::ModelProto mp2;
  onnx_io::export_model(*back, &mp2);
  EXPECT_EQ(mp.SerializeAsString(), mp2.SerializeAsString());
}

// ---------------------------------------------------------------- engine file helpers

std::string engine_bytes() {
  auto bytes = engine::serialize_plan(make_plan());
  EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
  return bytes.ok() ? *bytes : std::string();
}

uint32_t u32_at(const std::string& b, size_t at) {
  uint32_t v;
  std::memcpy(&v, b.data() + at, 4);  // the test machines are little-endian
  return v;
}
uint64_t u64_at(const std::string& b, size_t at) {
  uint64_t v;
  std::memcpy(&v, b.data() + at, 8);
  return v;
}
void set_u32(std::string& b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); }
void set_u64(std::string& b, size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); }

// Makes the header's size and checksum agree with the bytes again, so a reader looks past them.
void reseal(std::string& b) {
  if (b.size() < engine::kHeaderSize) return;
  set_u64(b, 24, b.size());
  set_u64(b, 32, engine::engine_checksum(b));
}

// A well-formed file of the given sections, laid out as the format says.
std::string assemble(const std::vector<std::pair<uint32_t, std::string>>& sections) {
  size_t pos = (engine::kHeaderSize + engine::kSectionEntrySize * sections.size() + 63) / 64 * 64;
  std::string out(pos, '\0');
  std::memcpy(out.data(), engine::kMagic, 8);
  set_u32(out, 8, engine::kFormatVersion);
  set_u32(out, 12, 64);
  set_u32(out, 16, static_cast<uint32_t>(sections.size()));
  for (size_t i = 0; i < sections.size(); ++i) {
    out.resize((out.size() + 63) / 64 * 64, '\0');
    size_t at = engine::kHeaderSize + i * engine::kSectionEntrySize;
    set_u32(out, at, sections[i].first);
    set_u64(out, at + 8, out.size());
    set_u64(out, at + 16, sections[i].second.size());
    out += sections[i].second;
  }
  reseal(out);
  return out;
}

std::string section_bytes(const std::string& file, engine::SectionKind kind) {
  auto h = engine::read_engine_header(file);
  EXPECT_TRUE(h.ok());
  for (const auto& s : h->sections)
    if (s.kind == static_cast<uint32_t>(kind)) return file.substr(s.offset, s.size);
  return "";
}

std::string refusal(const std::string& bytes) {
  auto plan = engine::deserialize_plan(bytes);
  if (plan.ok()) return "(accepted)";
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidEngine) << plan.status().to_string();
  return plan.status().message();
}

#define EXPECT_REFUSED(bytes, text) EXPECT_NE(refusal(bytes).find(text), std::string::npos) << refusal(bytes)

// ---------------------------------------------------------------- engine file

TEST(EngineFile, RoundTrip) {
  engine::Plan p = make_plan();
  auto bytes = engine::serialize_plan(p);
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  auto back = engine::deserialize_plan(*bytes);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->kiln_version, p.kiln_version);
  EXPECT_EQ(back->target_backend, p.target_backend);
  EXPECT_EQ(back->target_device, p.target_device);
  EXPECT_EQ(back->settings.device, p.settings.device);
  EXPECT_EQ(back->settings.input_shapes, p.settings.input_shapes);
  EXPECT_EQ(back->settings.opt_level, p.settings.opt_level);
  EXPECT_EQ(back->settings.profiles, p.settings.profiles);
  ASSERT_EQ(back->profile_plans.size(), p.profile_plans.size());
  for (size_t k = 0; k < p.profile_plans.size(); ++k) {
    EXPECT_EQ(back->profile_plans[k].tactics, p.profile_plans[k].tactics);
    EXPECT_EQ(back->profile_plans[k].max_activation_bytes, p.profile_plans[k].max_activation_bytes);
  }
  ASSERT_EQ(back->layers.size(), p.layers.size());
  for (size_t i = 0; i < p.layers.size(); ++i) {
    EXPECT_EQ(back->layers[i].name, p.layers[i].name);
    EXPECT_EQ(back->layers[i].op_type, p.layers[i].op_type);
    EXPECT_EQ(back->layers[i].backend, p.layers[i].backend);
    EXPECT_EQ(back->layers[i].tactic, p.layers[i].tactic);
  }
  EXPECT_EQ(diff_model(p.model, back->model), "");
  // Writing is deterministic, and a loaded plan writes the same bytes.
  EXPECT_EQ(*engine::serialize_plan(p), *bytes);
  EXPECT_EQ(*engine::serialize_plan(*back), *bytes);
}

TEST(EngineFile, LayoutFollowsTheFormatDocument) {
  std::string b = engine_bytes();
  ASSERT_GE(b.size(), 64u);
  EXPECT_EQ(std::string(b.data(), 8), std::string("KILNENG\0", 8));
  EXPECT_EQ(u32_at(b, 8), engine::kFormatVersion);
  EXPECT_EQ(u32_at(b, 12), 64u);
  EXPECT_EQ(u32_at(b, 16), 3u);
  EXPECT_EQ(u32_at(b, 20), 0u);
  EXPECT_EQ(u64_at(b, 24), b.size());
  EXPECT_EQ(u64_at(b, 32), engine::engine_checksum(b));
  for (size_t i = 40; i < 64; ++i) EXPECT_EQ(b[i], 0);
  for (uint32_t i = 0; i < 3; ++i) {
    size_t at = 64 + 24 * i;
    EXPECT_EQ(u32_at(b, at), i + 1);  // META, GRAPH, WEIGHTS
    EXPECT_EQ(u64_at(b, at + 8) % 64, 0u);
  }
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  EXPECT_NE(meta.find("\"kiln_version\": \"0.1.0-test\""), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"tactic\": \"cpu.copy\""), std::string::npos) << meta;
  EXPECT_NE(meta.find("float32[batch,4]"), std::string::npos) << meta;
  auto meta_read = engine::read_engine_meta(b);
  ASSERT_TRUE(meta_read.ok());
  EXPECT_EQ(*meta_read, meta);

  // Numeric initializers (of subgraphs too) point into WEIGHTS at 64-byte-aligned offsets; strings stay inline.
  std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  onnx::ModelProto mp;
  ASSERT_TRUE(mp.ParseFromString(section_bytes(b, engine::SectionKind::kGraph)));
  int external = 0;
  auto check = [&](const onnx::GraphProto& g) {
    for (const auto& t : g.initializer()) {
      if (t.data_type() == onnx::TensorProto::STRING) {
        EXPECT_NE(t.data_location(), onnx::TensorProto::EXTERNAL);
        EXPECT_EQ(t.string_data_size(), 2);
        continue;
      }
      ++external;
      EXPECT_EQ(t.data_location(), onnx::TensorProto::EXTERNAL) << t.name();
      EXPECT_FALSE(t.has_raw_data()) << t.name();
      ASSERT_EQ(t.external_data_size(), 3);
      EXPECT_EQ(t.external_data(0).key(), "location");
      EXPECT_EQ(t.external_data(0).value(), "@weights");
      EXPECT_EQ(std::stoull(t.external_data(1).value()) % 64, 0u) << t.name();
      if (t.name() == "q" || t.name() == "sub_q") {  // int4 [-8,-1,0,3,7] packed low nibble first
        uint64_t off = std::stoull(t.external_data(1).value());
        EXPECT_EQ(t.external_data(2).value(), "3");
        EXPECT_EQ(weights.substr(off, 3), std::string("\xf8\x30\x07", 3));
      }
    }
  };
  check(mp.graph());
  for (const auto& n : mp.graph().node())
    for (const auto& a : n.attribute())
      if (a.has_g()) check(a.g());
  EXPECT_EQ(external, 8 + 2);
}

TEST(EngineFile, RefusesShortData) {
  EXPECT_EQ(refusal(""), "truncated: 0 bytes, the header alone is 64");
  EXPECT_EQ(refusal(engine_bytes().substr(0, 10)), "truncated: 10 bytes, the header alone is 64");
}

TEST(EngineFile, RefusesForeignData) {
  std::string b = engine_bytes();
  b[0] = 'X';
  EXPECT_REFUSED(b, "not a Kiln engine file");
  onnx::ModelProto mp;
  onnx_io::export_model(make_model(), &mp);
  EXPECT_REFUSED(mp.SerializeAsString(), "not a Kiln engine file");
}

TEST(EngineFile, RefusesOtherFormatVersions) {
  std::string b = engine_bytes();
  set_u32(b, 8, 7);
  EXPECT_EQ(refusal(b), "engine format version 7 is newer than this Kiln (format 3): rebuild the engine with this "
                        "Kiln, or upgrade Kiln");
  set_u32(b, 8, 0);
  EXPECT_REFUSED(b, "engine format version 0 is older than this Kiln (format 3) can read (formats 1 to 3)");
  EXPECT_REFUSED(b, "rebuild the engine");
}

TEST(EngineFile, RefusesSizeMismatch) {
  std::string b = engine_bytes();
  EXPECT_REFUSED(b.substr(0, b.size() - 1), "truncated: ");
  EXPECT_REFUSED(b.substr(0, 100), "truncated: 100 bytes where the header says the file has");
  EXPECT_REFUSED(b + "x", "trailing bytes");
}

TEST(EngineFile, RefusesChecksumMismatch) {
  std::string b = engine_bytes();
  for (size_t at : {size_t{70}, b.size() / 2, b.size() - 1}) {
    std::string c = b;
    c[at] ^= 0x10;
    EXPECT_EQ(refusal(c), "corrupted: checksum mismatch");
  }
}

TEST(EngineFile, RefusesBadHeaderFields) {
  std::string b = engine_bytes();
  std::string c = b;
  set_u32(c, 12, 128);
  EXPECT_REFUSED(c, "header size 128");
  c = b;
  set_u32(c, 20, 1);
  EXPECT_REFUSED(c, "unknown header flags");
  c = b;
  c[50] = 1;
  EXPECT_REFUSED(c, "reserved header bytes");
}

TEST(EngineFile, RefusesSectionsOutOfBounds) {
  std::string b = engine_bytes();
  std::string c = b;
  set_u64(c, 64 + 24 + 8, b.size() - 4);  // GRAPH offset: its size runs past the end
  reseal(c);
  EXPECT_REFUSED(c, "section 1 (GRAPH");
  EXPECT_REFUSED(c, "out of bounds");
  c = b;
  set_u64(c, 64 + 24 * 2 + 16, ~uint64_t{0});  // WEIGHTS size: overflows offset + size
  reseal(c);
  EXPECT_REFUSED(c, "out of bounds");
  c = b;
  set_u64(c, 64 + 8, 0);  // META inside the header
  reseal(c);
  EXPECT_REFUSED(c, "out of bounds");
  c = b;
  set_u32(c, 16, 1000000);  // section table past the end
  reseal(c);
  EXPECT_REFUSED(c, "section table");
}

TEST(EngineFile, RefusesMissingAndDuplicateSections) {
  std::string b = engine_bytes();
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  std::string graph = section_bytes(b, engine::SectionKind::kGraph);
  std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  EXPECT_REFUSED(assemble({{1, meta}, {3, weights}}), "the GRAPH section is missing");
  EXPECT_REFUSED(assemble({{2, graph}, {3, weights}}), "the META section is missing");
  EXPECT_REFUSED(assemble({{1, meta}, {2, graph}}), "the WEIGHTS section is missing");
  EXPECT_REFUSED(assemble({{1, meta}, {2, graph}, {3, weights}, {2, graph}}), "more than one GRAPH section");
}

TEST(EngineFile, SkipsUnknownSections) {
  std::string b = engine_bytes();
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  std::string graph = section_bytes(b, engine::SectionKind::kGraph);
  std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  // Same bytes by the assembler as by the writer.
  EXPECT_EQ(assemble({{1, meta}, {2, graph}, {3, weights}}), b);
  std::string future = assemble({{42, "a section from a later Kiln"}, {3, weights}, {1, meta}, {77, ""}, {2, graph}});
  auto plan = engine::deserialize_plan(future);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(diff_model(make_model(), plan->model), "");
}

TEST(EngineFile, RefusesBadMeta) {
  std::string b = engine_bytes();
  std::string graph = section_bytes(b, engine::SectionKind::kGraph);
  std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  EXPECT_REFUSED(assemble({{1, "{\"kiln_version\": "}, {2, graph}, {3, weights}}), "META section is not valid JSON");
  EXPECT_REFUSED(assemble({{1, "[1, 2]"}, {2, graph}, {3, weights}}), "META is not a JSON object");
  EXPECT_REFUSED(assemble({{1, "{\"kiln_version\": 3}"}, {2, graph}, {3, weights}}), "\"kiln_version\"");
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  size_t at = meta.find("\"opt_level\": 2");
  ASSERT_NE(at, std::string::npos);
  meta.replace(at, 14, "\"opt_level\": \"2\"");
  EXPECT_REFUSED(assemble({{1, meta}, {2, graph}, {3, weights}}), "opt_level");
}

TEST(EngineFile, RefusesBadGraph) {
  std::string b = engine_bytes();
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  EXPECT_REFUSED(assemble({{1, meta}, {2, std::string("\xff\xff\xff\xff garbage", 12)}, {3, weights}}),
                 "GRAPH section is not a valid serialized onnx.ModelProto");
  EXPECT_REFUSED(assemble({{1, meta}, {2, ""}, {3, weights}}), "the model has no graph");

  // A graph the importer rejects (an undefined input) is refused as an engine error too.
  onnx::ModelProto mp;
  ASSERT_TRUE(mp.ParseFromString(section_bytes(b, engine::SectionKind::kGraph)));
  mp.mutable_graph()->mutable_node(0)->set_input(0, "nowhere");
  EXPECT_REFUSED(assemble({{1, meta}, {2, mp.SerializeAsString()}, {3, weights}}), "GRAPH section: ");
  EXPECT_REFUSED(assemble({{1, meta}, {2, mp.SerializeAsString()}, {3, weights}}), "'nowhere'");
}

TEST(EngineFile, RefusesWeightsOutOfRange) {
  std::string b = engine_bytes();
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  std::string graph = section_bytes(b, engine::SectionKind::kGraph);
  std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  EXPECT_REFUSED(assemble({{1, meta}, {2, graph}, {3, weights.substr(0, weights.size() - 1)}}), "weights out of range");
  EXPECT_REFUSED(assemble({{1, meta}, {2, graph}, {3, ""}}), "weights out of range");

  onnx::ModelProto mp;
  ASSERT_TRUE(mp.ParseFromString(graph));
  auto edit = [&](const std::function<void(onnx::TensorProto*)>& f) {
    onnx::ModelProto m = mp;
    for (auto& t : *m.mutable_graph()->mutable_initializer())
      if (t.name() == "w") f(&t);
    return assemble({{1, meta}, {2, m.SerializeAsString()}, {3, weights}});
  };
  EXPECT_REFUSED(edit([](onnx::TensorProto* t) { t->mutable_external_data(1)->set_value("18446744073709551615"); }),
                 "weights out of range");
  EXPECT_REFUSED(edit([](onnx::TensorProto* t) { t->mutable_external_data(1)->set_value("-4"); }),
                 "needs a decimal offset and length");
  EXPECT_REFUSED(edit([](onnx::TensorProto* t) { t->mutable_external_data(0)->set_value("weights.bin"); }),
                 "refers to external data 'weights.bin'");
  // A length that disagrees with the tensor's shape.
  EXPECT_REFUSED(edit([](onnx::TensorProto* t) { t->mutable_external_data(2)->set_value("12"); }),
                 "has 12 bytes of data where 16 are expected");
  // A shape far larger than the file, refused before anything that size is allocated.
  EXPECT_REFUSED(edit([](onnx::TensorProto* t) { t->set_dims(0, int64_t{1} << 38); }), "claims more");
}

// Format 1 (before optimization profiles): the same layout, with no "profiles" in META's "build".
TEST(EngineFile, ReadsFormatVersion1) {
  std::string b = engine_bytes();
  std::string meta = section_bytes(b, engine::SectionKind::kMeta);
  nlohmann::json j = nlohmann::json::parse(meta);
  j["build"].erase("profiles");
  j.erase("profile_plans");
  j["format_version"] = 1;
  std::string v1 = assemble({{1, j.dump(2)},
                             {2, section_bytes(b, engine::SectionKind::kGraph)},
                             {3, section_bytes(b, engine::SectionKind::kWeights)}});
  set_u32(v1, 8, 1);
  reseal(v1);
  auto plan = engine::deserialize_plan(v1);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_TRUE(plan->settings.profiles.empty());
  EXPECT_EQ(plan->settings.input_shapes, make_plan().settings.input_shapes);
  EXPECT_EQ(diff_model(make_model(), plan->model), "");
}

TEST(EngineFile, RefusesBadProfiles) {
  std::string b = engine_bytes();
  const std::string graph = section_bytes(b, engine::SectionKind::kGraph);
  const std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  const nlohmann::json meta = nlohmann::json::parse(section_bytes(b, engine::SectionKind::kMeta));
  auto with_profiles = [&](const nlohmann::json& profiles) {
    nlohmann::json j = meta;
    j["build"]["profiles"] = profiles;
    j.erase("profile_plans");  // checked on their own below
    return assemble({{1, j.dump()}, {2, graph}, {3, weights}});
  };
  using nlohmann::json;
  EXPECT_REFUSED(with_profiles(json::object()), "\"build.profiles\" is not an array");
  EXPECT_REFUSED(with_profiles(json::array({1})), "optimization profile 0 is not an object");
  EXPECT_REFUSED(with_profiles(json::array({{{"x", {{"min", {1, 4}}, {"max", {2, 4}}}}}})),
                 "optimization profile 0, input 'x': needs \"min\", \"opt\" and \"max\"");
  EXPECT_REFUSED(with_profiles(json::array({{{"x", {{"min", {1, 4}}, {"opt", {1, "4"}}, {"max", {2, 4}}}}}})),
                 "optimization profile 0 opt of 'x' holds a non-integer");
  EXPECT_REFUSED(with_profiles(json::array({{{"x", {{"min", {3, 4}}, {"opt", {2, 4}}, {"max", {8, 4}}}}}})),
                 "optimization profile 0: input 'x' dim 0: needs min <= opt <= max, got min 3, opt 2, max 8");
  EXPECT_REFUSED(with_profiles(json::array({{{"x", {{"min", {1}}, {"opt", {2, 4}}, {"max", {8, 4}}}}}})),
                 "differ in rank");
  EXPECT_REFUSED(with_profiles(json::array({json::object(), {{"nope", {{"min", {1}}, {"opt", {1}}, {"max", {1}}}}}})),
                 "optimization profile 1 names 'nope', which is not an input of the engine");
  // Accepted: no profiles at all.
  auto none = engine::deserialize_plan(with_profiles(json::array()));
  ASSERT_TRUE(none.ok()) << none.status().to_string();
  EXPECT_TRUE(none->settings.profiles.empty());
}

// inspect() reports each profile's plan: how many kernels it chose, how many differ from profile 0's, and its
// activation memory at the max shapes.
TEST(EngineFile, InspectShowsProfilePlans) {
  engine::Plan p = make_plan();
  p.profile_plans = {{{{"add0", "cpu.reference"}, {"if0", "cpu.reference"}}, 4096},
                     {{{"add0", "cpu.other"}, {"if0", "cpu.reference"}}, 8192}};
  auto e = Engine::create(std::move(p));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  const std::string text = (*e)->inspect();
  EXPECT_NE(text.find("profile 0 plan: 2 layers' kernels chosen at its opt shapes, activation memory at its max "
                      "shapes 4096 bytes"), std::string::npos) << text;
  EXPECT_NE(text.find("profile 1 plan: 2 layers' kernels chosen at its opt shapes (1 differ from profile 0's), "
                      "activation memory at its max shapes 8192 bytes"), std::string::npos) << text;
}

TEST(EngineFile, RefusesBadProfilePlans) {
  std::string b = engine_bytes();
  const std::string graph = section_bytes(b, engine::SectionKind::kGraph);
  const std::string weights = section_bytes(b, engine::SectionKind::kWeights);
  const nlohmann::json meta = nlohmann::json::parse(section_bytes(b, engine::SectionKind::kMeta));
  auto with_plans = [&](const nlohmann::json& plans) {
    nlohmann::json j = meta;
    j["profile_plans"] = plans;
    return assemble({{1, j.dump()}, {2, graph}, {3, weights}});
  };
  using json = nlohmann::json;
  EXPECT_REFUSED(with_plans(json::object()), "\"profile_plans\" is not an array");
  EXPECT_REFUSED(with_plans(json::array({{{"tactics", json::object()}, {"max_activation_bytes", 0}}})),
                 "1 profile plans for 2 optimization profiles");
  const json good = {{"tactics", json::object()}, {"max_activation_bytes", 0}};
  EXPECT_REFUSED(with_plans(json::array({good, {{"tactics", json::object()}}})),
                 "the plan of optimization profile 1 needs");
  EXPECT_REFUSED(with_plans(json::array({good, {{"tactics", {{"add0", 3}}}, {"max_activation_bytes", 0}}})),
                 "the tactic of 'add0' is not a string");
  EXPECT_REFUSED(with_plans(json::array({good, {{"tactics", json::object()}, {"max_activation_bytes", -1}}})),
                 "needs \"tactics\"");
}

TEST(EngineFile, FuzzNeverCrashes) {
  const std::string b = engine_bytes();
  ASSERT_FALSE(b.empty());
  std::vector<std::pair<size_t, size_t>> regions;  // the sections, to aim some mutations past the checksum
  auto h = engine::read_engine_header(b);
  ASSERT_TRUE(h.ok());
  for (const auto& s : h->sections) regions.push_back({s.offset, s.size});
  // KILN_ENGINE_FUZZ_ITERS / _SEED run it longer or differently by hand; the default stays fast.
  const char* iters_env = std::getenv("KILN_ENGINE_FUZZ_ITERS");
  const char* seed_env = std::getenv("KILN_ENGINE_FUZZ_SEED");
  const int iters = iters_env ? std::atoi(iters_env) : 600;
  std::mt19937_64 rng(seed_env ? std::strtoull(seed_env, nullptr, 10) : 1234);
  int accepted = 0, past_header = 0;
  for (int iter = 0; iter < iters; ++iter) {
    std::string c = b;
    int mode = iter % 4;
    if (mode == 0) {  // truncate, header left as is
      c.resize(rng() % c.size());
    } else if (mode == 1) {  // flip random bits anywhere
      for (int k = 0, n = 1 + rng() % 4; k < n; ++k) c[rng() % c.size()] ^= static_cast<char>(1 + rng() % 255);
    } else {  // flip bytes inside one section (or the table), then fix size and checksum so parsing is reached
      auto [off, size] = regions[rng() % regions.size()];
      if (mode == 3 || size == 0) { off = 64; size = 24 * regions.size(); }
      bool nudge = rng() % 2 == 0;  // +-1 keeps protobuf and JSON framing more often than a random byte
      for (int k = 0, n = 1 + rng() % 3; k < n; ++k) {
        char& ch = c[off + rng() % size];
        ch = nudge ? static_cast<char>(ch + (rng() % 2 ? 1 : -1)) : static_cast<char>(rng());
      }
      if (rng() % 4 == 0) c.resize(c.size() - rng() % 200);
      reseal(c);
    }
    auto plan = engine::deserialize_plan(c);
    if (plan.ok()) {
      ++accepted;
      continue;
    }
    EXPECT_EQ(plan.status().code(), StatusCode::kInvalidEngine) << plan.status().to_string();
    const std::string msg = plan.status().message();
    if (msg.rfind("META", 0) == 0 || msg.rfind("GRAPH", 0) == 0 || msg.rfind("tensor", 0) == 0) ++past_header;
  }
  EXPECT_LT(accepted, iters);
  if (iters >= 600) {
    EXPECT_GT(past_header, 20);  // the sections' parsers were reached, not only the header checks
  }
}

}  // namespace
}  // namespace kiln
