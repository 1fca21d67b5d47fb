// Lower precision (--fp16, --bf16): the accepted nodes compute in float16 or bfloat16. A float32 value
// crossing into a lowered node is converted once (an initializer at build time, a computed value by one
// Cast however many lowered nodes read it), and a lowered value crossing back into a float32 node or out of
// the graph is converted back once (not for Shape and Size, which read the lowered value's dims). Graph inputs
// and outputs keep their float32 types.
#include <map>
#include <set>

#include "core/cast.h"
#include "passes/passes.h"
#include "runtime/executor.h"

namespace kiln::passes {

namespace {

// Inputs that an op's schema fixes to float32 whatever its data type (they must not be converted).
bool input_stays_fp32(const ir::Node& n, size_t i) {
  if (n.op_type == "Resize") return i == 1 || i == 2;  // roi, scales
  if (n.op_type == "Upsample") return i == 1;          // scales
  return false;
}
// Outputs that stay float32 when the data is lowered (LayerNormalization's Mean and InvStdDev: stash_type).
bool output_stays_fp32(const ir::Node& n, size_t i) { return n.op_type == "LayerNormalization" && i > 0; }

ir::Node make_cast(const std::string& name, const std::string& from, const std::string& to, DType dtype) {
  ir::Node c;
  c.name = name;
  c.op_type = "Cast";
  c.inputs = {from};
  c.outputs = {to};
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInt;
  a.i = static_cast<int64_t>(dtype);
  c.attributes["to"] = a;
  return c;
}

}  // namespace

Status lower_precision(ir::Model& model, DType low, const std::function<bool(const ir::Node&)>& lower,
                       std::set<std::string>* lowered) {
  if (low != DType::kFloat16 && low != DType::kBFloat16)
    return InvalidArgument("lower_precision: " + dtype_name(low) + " is not float16 or bfloat16");
  ir::Graph& g = model.graph;
  const std::string tag = low == DType::kFloat16 ? "fp16" : "bf16";
  auto is_fp32 = [&](const std::string& name) {
    if (name.empty()) return false;
    if (auto it = g.initializers.find(name); it != g.initializers.end()) return it->second.dtype() == DType::kFloat32;
    const ir::TypeInfo* t = g.type_of(name);
    return t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor && t->dtype == DType::kFloat32;
  };

  auto has_known_dtype = [&](const std::string& name) {
    const ir::TypeInfo* t = g.type_of(name);
    return t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor && t->dtype != DType::kUndefined;
  };

  std::map<std::string, std::string> low_name;  // float32 value -> its lowered twin
  std::set<std::string> fp32_missing;           // float32 values that exist only in lowered form so far
  std::vector<ir::Node> out;
  out.reserve(g.nodes.size());
  auto need_fp32 = [&](const std::string& name) {
    if (!fp32_missing.count(name)) return;
    out.push_back(make_cast(name + "__to_fp32", low_name.at(name), name, DType::kFloat32));
    fp32_missing.erase(name);
  };

  for (ir::Node& n : g.nodes) {
    bool lowers = lower(n);
    if (lowers) {
      lowers = false;
      for (size_t i = 0; i < n.inputs.size(); ++i)
        if (is_fp32(n.inputs[i]) && !input_stays_fp32(n, i)) lowers = true;
      // An output whose type shape inference does not know could not be told lowered: its readers would take
      // half-precision data for float32 (a Tile, say). Such a node stays in float32.
      for (const auto& o : n.outputs)
        if (!o.empty() && !has_known_dtype(o)) lowers = false;
    }
    if (!lowers) {
      // Shape and Size read only their input's dims, the same in either dtype: the lowered value serves, and
      // no Cast back to float32 is made for them (a dynamic BERT's Shape of the embeddings' LayerNorm output
      // cost a kernel writing 50 MB at batch 128).
      if (n.domain.empty() && (n.op_type == "Shape" || n.op_type == "Size") && n.inputs.size() == 1 &&
          fp32_missing.count(n.inputs[0]))
        n.inputs[0] = low_name.at(n.inputs[0]);
      for (const auto& r : runtime::node_reads(n)) need_fp32(r);
      out.push_back(std::move(n));
      continue;
    }
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const std::string name = n.inputs[i];
      if (!is_fp32(name) || input_stays_fp32(n, i)) continue;
      if (auto it = low_name.find(name); it != low_name.end()) {
        n.inputs[i] = it->second;
        continue;
      }
      const std::string twin = name + "__" + tag;
      if (auto w = g.initializers.find(name); w != g.initializers.end()) {
        KILN_ASSIGN_OR_RETURN(Tensor t, cast_tensor(w->second, low));
        g.initializers[twin] = std::move(t);
      } else {
        out.push_back(make_cast(name + "__to_" + tag, name, twin, low));
      }
      low_name[name] = twin;
      n.inputs[i] = twin;
    }
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      const std::string name = n.outputs[i];
      if (!is_fp32(name) || output_stays_fp32(n, i)) continue;
      const std::string twin = name + "__" + tag;
      low_name[name] = twin;
      fp32_missing.insert(name);
      n.outputs[i] = twin;
    }
    if (lowered) lowered->insert(n.name);
    out.push_back(std::move(n));
  }
  for (const auto& o : g.outputs) need_fp32(o.name);
  g.nodes = std::move(out);
  return infer_shapes(model);
}

}  // namespace kiln::passes
