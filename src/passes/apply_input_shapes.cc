#include "passes/passes.h"

namespace kiln::passes {

Status apply_input_shapes(ir::Model& model, const std::map<std::string, Shape>& shapes) {
  for (const auto& [name, shape] : shapes) {
    ir::ValueInfo* input = nullptr;
    for (auto& in : model.graph.inputs)
      if (in.name == name) input = &in;
    if (input == nullptr) {
      std::string names;
      for (const auto& in : model.graph.inputs) names += (names.empty() ? "" : ", ") + in.name;
      return InvalidArgument("--shapes names '" + name + "', which is not an input of the model (inputs: " + names + ")");
    }
    for (int64_t d : shape)
      if (d < 0) return InvalidArgument("--shapes for '" + name + "': dimensions must be >= 0, got " + shape_to_string(shape));
    ir::TypeInfo& t = input->type;
    if (t.has_shape && t.dims.size() != shape.size())
      return InvalidArgument("--shapes for '" + name + "': rank " + std::to_string(shape.size()) +
                             " does not match the model's " + t.to_string());
    for (size_t i = 0; t.has_shape && i < shape.size(); ++i) {
      if (t.dims[i].known() && t.dims[i].value != shape[i])
        return InvalidArgument("--shapes for '" + name + "': dimension " + std::to_string(i) + " is " +
                               std::to_string(t.dims[i].value) + " in the model, not " + std::to_string(shape[i]));
    }
    t.kind = ir::TypeInfo::Kind::kTensor;
    t.has_shape = true;
    t.dims.clear();
    for (int64_t d : shape) t.dims.push_back(ir::Dim::of(d));
  }
  return OkStatus();
}

}  // namespace kiln::passes
