#include "onnx/importer.h"

#include <set>

#include "ir/op_registry.h"
#include "onnx/onnx-ml.pb.h"
#include "onnx/tensor_proto.h"

namespace kiln::onnx_io {

std::string ImportError::to_string() const {
  std::string where;
  if (!node_name.empty() || !op_type.empty())
    where = "node '" + node_name + "' (" + op_type + ", #" + std::to_string(node_index) + "): ";
  return where + description;
}

ir::TypeInfo type_from_proto(const onnx::TypeProto& t) {
  ir::TypeInfo info;
  if (t.has_tensor_type()) {
    info.kind = ir::TypeInfo::Kind::kTensor;
    info.dtype = static_cast<DType>(t.tensor_type().elem_type());
    if (t.tensor_type().has_shape()) {
      info.has_shape = true;
      for (const auto& d : t.tensor_type().shape().dim()) {
        if (d.has_dim_value()) info.dims.push_back(ir::Dim::of(d.dim_value()));
        else info.dims.push_back(ir::Dim::named(d.dim_param()));
      }
    }
  } else if (t.has_sequence_type()) {
    info.kind = ir::TypeInfo::Kind::kSequence;
    ir::TypeInfo elem = type_from_proto(t.sequence_type().elem_type());
    info.dtype = elem.dtype;
  } else if (t.has_optional_type()) {
    info.kind = ir::TypeInfo::Kind::kOptional;
    ir::TypeInfo elem = type_from_proto(t.optional_type().elem_type());
    info.dtype = elem.dtype;
    info.optional_of = elem.kind;
    info.has_shape = elem.has_shape;
    info.dims = elem.dims;
  }
  return info;
}

namespace {

class Importer {
 public:
  Importer(const std::string& base_dir, const ir::OpsetMap& opsets, int64_t ir_version)
      : base_dir_(base_dir), opsets_(opsets), ir_version_(ir_version) {}

  std::vector<ImportError> errors;

  // `outer` holds the names visible from enclosing graphs (for subgraphs of If, Loop, Scan).
  void import_graph(const onnx::GraphProto& gp, ir::Graph* g, const std::set<std::string>& outer) {
    g->name = gp.name();
    std::set<std::string> defined = outer;
    for (const auto& init : gp.initializer()) {
      auto t = tensor_from_proto(init, base_dir_);
      if (!t.ok()) {
        add_error(t.status().code(), "initializer '" + init.name() + "': " + t.status().message());
        continue;
      }
      g->initializers[init.name()] = std::move(t).value();
      defined.insert(init.name());
    }
    for (const auto& sp : gp.sparse_initializer()) {
      add_error(StatusCode::kUnsupported, "sparse initializer '" + sp.values().name() + "' is not supported");
    }
    for (const auto& in : gp.input()) {
      // Before IR version 4 every initializer had to be listed as an input too: it is a constant. From
      // version 4 on, an input that is also an initializer is an input with a default value.
      if (ir_version_ < 4 && g->initializers.count(in.name())) continue;
      g->inputs.push_back({in.name(), type_from_proto(in.type())});
      defined.insert(in.name());
    }
    for (const auto& vi : gp.value_info()) g->value_types[vi.name()] = type_from_proto(vi.type());

    std::set<std::string> produced;
    int index = 0;
    for (const auto& np : gp.node()) {
      ir::Node n;
      n.op_type = np.op_type();
      n.domain = np.domain() == "ai.onnx" ? "" : np.domain();
      n.index = index++;
      n.name = np.name().empty() ? n.op_type + "_" + std::to_string(n.index) : np.name();
      for (const auto& in : np.input()) n.inputs.push_back(in);
      for (const auto& out : np.output()) n.outputs.push_back(out);
      check_node(n, np, defined, produced);
      for (const auto& ap : np.attribute()) {
        ir::Attribute a;
        if (import_attribute(ap, n, defined, &a)) n.attributes[ap.name()] = std::move(a);
      }
      for (const auto& out : n.outputs)
        if (!out.empty()) defined.insert(out);
      g->nodes.push_back(std::move(n));
    }
    for (const auto& out : gp.output()) {
      g->outputs.push_back({out.name(), type_from_proto(out.type())});
      if (!defined.count(out.name()))
        add_error(StatusCode::kInvalidModel, "graph '" + gp.name() + "' output '" + out.name() +
                                                 "' is not produced by any node, input or initializer");
    }
  }

 private:
  void add_error(StatusCode code, std::string desc, const ir::Node* n = nullptr) {
    ImportError e;
    e.code = code;
    e.description = std::move(desc);
    if (n) {
      e.node_name = n->name;
      e.op_type = (n->domain.empty() ? "" : n->domain + ".") + n->op_type;
      e.node_index = n->index;
    }
    errors.push_back(std::move(e));
  }

  void check_node(const ir::Node& n, const onnx::NodeProto& np, const std::set<std::string>& defined,
                  std::set<std::string>& produced) {
    const ir::OpSchema* schema = ir::OpRegistry::global().find(n.domain, n.op_type);
    auto opset_it = opsets_.find(n.domain);
    if (opset_it == opsets_.end()) {
      add_error(StatusCode::kInvalidModel, "the model imports no opset for domain '" + n.domain + "'", &n);
    } else if (schema == nullptr) {
      add_error(StatusCode::kUnsupported, "unsupported op: no kernel for " +
                                              (n.domain.empty() ? std::string("ONNX") : "domain '" + n.domain + "'") +
                                              " op '" + n.op_type + "'", &n);
    } else if (opset_it->second < schema->since_version) {
      add_error(StatusCode::kUnsupported, "op '" + n.op_type + "' is supported from opset " +
                                              std::to_string(schema->since_version) + ", the model uses opset " +
                                              std::to_string(opset_it->second), &n);
    }
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      if (!n.inputs[i].empty() && !defined.count(n.inputs[i]))
        add_error(StatusCode::kInvalidModel, "input " + std::to_string(i) + " '" + n.inputs[i] +
                                                 "' is not produced by any earlier node, graph input or initializer", &n);
    }
    for (const auto& out : n.outputs) {
      if (out.empty()) continue;
      if (!produced.insert(out).second)
        add_error(StatusCode::kInvalidModel, "output '" + out + "' is produced by more than one node", &n);
    }
  }

  bool import_attribute(const onnx::AttributeProto& ap, const ir::Node& n, const std::set<std::string>& scope,
                        ir::Attribute* a) {
    using T = ir::Attribute::Type;
    if (!ap.ref_attr_name().empty()) {
      add_error(StatusCode::kUnsupported, "attribute '" + ap.name() + "' refers to a function attribute", &n);
      return false;
    }
    auto tensor = [&](const onnx::TensorProto& tp, Tensor* out) {
      auto t = tensor_from_proto(tp, base_dir_);
      if (!t.ok()) {
        add_error(t.status().code(), "attribute '" + ap.name() + "': " + t.status().message(), &n);
        return false;
      }
      *out = std::move(t).value();
      return true;
    };
    switch (ap.type()) {
      case onnx::AttributeProto::FLOAT: a->type = T::kFloat; a->f = ap.f(); return true;
      case onnx::AttributeProto::INT: a->type = T::kInt; a->i = ap.i(); return true;
      case onnx::AttributeProto::STRING: a->type = T::kString; a->s = ap.s(); return true;
      case onnx::AttributeProto::FLOATS: a->type = T::kFloats; a->floats.assign(ap.floats().begin(), ap.floats().end()); return true;
      case onnx::AttributeProto::INTS: a->type = T::kInts; a->ints.assign(ap.ints().begin(), ap.ints().end()); return true;
      case onnx::AttributeProto::STRINGS: a->type = T::kStrings; a->strings.assign(ap.strings().begin(), ap.strings().end()); return true;
      case onnx::AttributeProto::TENSOR: a->type = T::kTensor; return tensor(ap.t(), &a->t);
      case onnx::AttributeProto::TENSORS:
        a->type = T::kTensors;
        for (const auto& tp : ap.tensors()) {
          Tensor t;
          if (!tensor(tp, &t)) return false;
          a->tensors.push_back(std::move(t));
        }
        return true;
      case onnx::AttributeProto::GRAPH: {
        a->type = T::kGraph;
        a->g = std::make_shared<ir::Graph>();
        import_graph(ap.g(), a->g.get(), scope);
        return true;
      }
      case onnx::AttributeProto::GRAPHS:
        a->type = T::kGraphs;
        for (const auto& gp : ap.graphs()) {
          auto g = std::make_shared<ir::Graph>();
          import_graph(gp, g.get(), scope);
          a->graphs.push_back(std::move(g));
        }
        return true;
      case onnx::AttributeProto::TYPE_PROTO: a->type = T::kTypeProto; a->type_proto = type_from_proto(ap.tp()); return true;
      default:
        // Old models may leave `type` unset; infer it from the field that is filled.
        if (ap.has_f()) { a->type = T::kFloat; a->f = ap.f(); return true; }
        if (ap.has_i()) { a->type = T::kInt; a->i = ap.i(); return true; }
        if (ap.has_s()) { a->type = T::kString; a->s = ap.s(); return true; }
        if (ap.has_t()) { a->type = T::kTensor; return tensor(ap.t(), &a->t); }
        if (ap.ints_size()) { a->type = T::kInts; a->ints.assign(ap.ints().begin(), ap.ints().end()); return true; }
        if (ap.floats_size()) { a->type = T::kFloats; a->floats.assign(ap.floats().begin(), ap.floats().end()); return true; }
        if (ap.strings_size()) { a->type = T::kStrings; a->strings.assign(ap.strings().begin(), ap.strings().end()); return true; }
        add_error(StatusCode::kUnsupported, "attribute '" + ap.name() + "' has an unsupported type " + std::to_string(ap.type()), &n);
        return false;
    }
  }

  std::string base_dir_;
  const ir::OpsetMap& opsets_;
  int64_t ir_version_;
};

Status summarize(const std::vector<ImportError>& errors) {
  std::string msg = std::to_string(errors.size()) + (errors.size() == 1 ? " problem" : " problems") + " in the model:";
  StatusCode code = errors.front().code;
  for (const auto& e : errors) msg += "\n  " + e.to_string();
  return Status(code, msg);
}

}  // namespace

Result<ir::Model> import_model_proto(const onnx::ModelProto& mp, const std::string& base_dir,
                                     std::vector<ImportError>* errors_out) {
  std::vector<ImportError> errors;
  auto fail = [&](StatusCode code, std::string desc) {
    errors.push_back(ImportError{code, std::move(desc), "", "", -1});
  };
  ir::Model model;
  model.ir_version = mp.ir_version();
  model.producer_name = mp.producer_name();
  model.producer_version = mp.producer_version();
  if (mp.ir_version() < kMinIrVersion || mp.ir_version() > kMaxIrVersion)
    fail(StatusCode::kUnsupported, "IR version " + std::to_string(mp.ir_version()) + " is not supported (Kiln reads " +
                                       std::to_string(kMinIrVersion) + " to " + std::to_string(kMaxIrVersion) + ")");
  for (const auto& os : mp.opset_import()) {
    std::string domain = os.domain() == "ai.onnx" ? "" : os.domain();
    model.opsets[domain] = static_cast<int>(os.version());
  }
  if (mp.opset_import_size() == 0) model.opsets[""] = 1;  // IR version 1-2 models with no opset_import
  int opset = model.default_opset();
  if (model.opsets.count("") && (opset < kMinOpset || opset > kMaxOpset))
    fail(StatusCode::kUnsupported, "default-domain opset " + std::to_string(opset) + " is not supported (Kiln reads " +
                                       std::to_string(kMinOpset) + " to " + std::to_string(kMaxOpset) + ")");
  if (mp.functions_size() > 0)
    fail(StatusCode::kUnsupported, "model-local functions are not supported (" + mp.functions(0).name() + ")");
  if (!mp.has_graph()) fail(StatusCode::kInvalidModel, "the model has no graph");
  if (errors.empty()) {
    Importer importer(base_dir, model.opsets, model.ir_version);
    importer.import_graph(mp.graph(), &model.graph, {});
    errors = std::move(importer.errors);
  }
  if (!errors.empty()) {
    Status st = summarize(errors);
    if (errors_out) *errors_out = std::move(errors);
    return st;
  }
  return model;
}

Result<ir::Model> import_model(const std::string& bytes, const std::string& base_dir,
                               std::vector<ImportError>* errors) {
  onnx::ModelProto mp;
  if (bytes.empty() || !mp.ParseFromString(bytes)) {
    Status st = InvalidModel("the data is not a valid ONNX model (protobuf parsing failed; truncated or not ONNX?)");
    if (errors) errors->push_back(ImportError{st.code(), st.message(), "", "", -1});
    return st;
  }
  return import_model_proto(mp, base_dir, errors);
}

Result<ir::Model> import_model_file(const std::string& path, std::vector<ImportError>* errors) {
  auto bytes = read_file(path);
  if (!bytes.ok()) {
    if (errors) errors->push_back(ImportError{bytes.status().code(), bytes.status().message(), "", "", -1});
    return bytes.status();
  }
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  auto model = import_model(*bytes, dir, errors);
  if (!model.ok()) return model.status().with_context(path);
  return model;
}

}  // namespace kiln::onnx_io
