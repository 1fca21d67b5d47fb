#include "ir/op_registry.h"

namespace kiln::ir {

void register_all_ops(OpRegistry& registry);  // op_table.cc

const OpRegistry& OpRegistry::global() {
  static const OpRegistry* registry = [] {
    auto* r = new OpRegistry();
    register_all_ops(*r);
    return r;
  }();
  return *registry;
}

void OpRegistry::add(OpSchema schema) {
  if (schema.family.empty()) schema.family = current_family;
  auto key = std::make_pair(schema.domain, schema.op_type);
  ops_[key] = std::move(schema);
}

void OpRegistry::add(const std::string& op_type, int since_version, KernelFn kernel) {
  OpSchema s;
  s.op_type = op_type;
  s.since_version = since_version;
  s.cpu_kernel = kernel;
  add(std::move(s));
}

const OpSchema* OpRegistry::find(const std::string& domain, const std::string& op_type) const {
  const std::string& d = domain == "ai.onnx" ? std::string() : domain;
  auto it = ops_.find(std::make_pair(d, op_type));
  return it == ops_.end() ? nullptr : &it->second;
}

// ---- KernelContext ----

const Tensor& KernelContext::input(size_t i) const {
  static const Tensor kUndefined;
  if (!has_input(i) || !inputs_[i]->is_tensor()) return kUndefined;
  return inputs_[i]->tensor();
}

const Value& KernelContext::input_value(size_t i) const {
  static const Value kNone;
  if (i >= inputs_.size() || inputs_[i] == nullptr) return kNone;
  return *inputs_[i];
}

void KernelContext::set_output(size_t i, Tensor t) { set_output_value(i, Value(std::move(t))); }

void KernelContext::set_output_value(size_t i, Value v) {
  if (i >= outputs_->size()) return;  // the node declares fewer outputs; nothing consumes this one
  (*outputs_)[i] = std::move(v);
}

bool KernelContext::check_attr(const Attribute* a, Attribute::Type want, const std::string& name) const {
  if (a == nullptr) return false;
  if (a->type == want) return true;
  if (attr_error_.empty())
    attr_error_ = "attribute '" + name + "' must be " + attribute_type_name(want) + ", got " +
                  attribute_type_name(a->type);
  return false;
}

int64_t KernelContext::attr_int(const std::string& name, int64_t dflt) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kInt, name) ? a->i : dflt;
}
float KernelContext::attr_float(const std::string& name, float dflt) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kFloat, name) ? a->f : dflt;
}
std::string KernelContext::attr_string(const std::string& name, const std::string& dflt) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kString, name) ? a->s : dflt;
}
std::vector<int64_t> KernelContext::attr_ints(const std::string& name, std::vector<int64_t> dflt) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kInts, name) ? a->ints : dflt;
}
std::vector<float> KernelContext::attr_floats(const std::string& name, std::vector<float> dflt) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kFloats, name) ? a->floats : dflt;
}
std::vector<std::string> KernelContext::attr_strings(const std::string& name, std::vector<std::string> dflt) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kStrings, name) ? a->strings : dflt;
}
const Tensor* KernelContext::attr_tensor(const std::string& name) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kTensor, name) ? &a->t : nullptr;
}
const Graph* KernelContext::attr_graph(const std::string& name) const {
  const Attribute* a = node_.attr(name);
  return check_attr(a, Attribute::Type::kGraph, name) ? a->g.get() : nullptr;
}

Result<std::vector<Value>> KernelContext::run_subgraph(const Graph& g, std::vector<Value> inputs) const {
  if (!run_subgraph_) return Internal(node_.describe() + ": no subgraph runner");
  return run_subgraph_(g, std::move(inputs));
}

Status KernelContext::error(const std::string& message) const { return InvalidArgument(node_.describe() + ": " + message); }
Status KernelContext::unsupported(const std::string& message) const { return Unsupported(node_.describe() + ": " + message); }

}  // namespace kiln::ir
