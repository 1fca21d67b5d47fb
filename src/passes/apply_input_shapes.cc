#include "passes/passes.h"

#include <algorithm>

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

Status apply_input_values(ir::Model& model, const std::map<std::string, std::vector<int64_t>>& values) {
  for (const auto& [name, v] : values) {
    auto input = std::find_if(model.graph.inputs.begin(), model.graph.inputs.end(),
                              [&](const ir::ValueInfo& in) { return in.name == name; });
    if (input == model.graph.inputs.end())
      return InvalidArgument("values for '" + name + "', which is not an input of the model");
    const ir::TypeInfo& t = input->type;
    const std::string what = "input '" + name + "' (" + t.to_string() + ")";
    if (t.dtype != DType::kInt32 && t.dtype != DType::kInt64)
      return InvalidArgument(what + " takes values only as an int32 or int64 tensor");
    // The declared rank (a scalar or a vector); the length is the values'.
    const Shape shape = t.has_shape && t.dims.empty() ? Shape{} : Shape{static_cast<int64_t>(v.size())};
    if ((shape.empty() && v.size() != 1) || (t.has_shape && t.dims.size() > 1) ||
        (t.has_shape && t.dims.size() == 1 && t.dims[0].known() && t.dims[0].value != static_cast<int64_t>(v.size())))
      return InvalidArgument(what + ": values " + shape_to_string(v) + " do not fit its shape");
    Tensor constant = t.dtype == DType::kInt64
                          ? Tensor::from_vector<int64_t>(t.dtype, shape, v)
                          : Tensor::from_vector<int32_t>(t.dtype, shape, std::vector<int32_t>(v.begin(), v.end()));
    model.graph.initializers[name] = std::move(constant);
    model.graph.value_types.erase(name);
    model.graph.inputs.erase(input);
  }
  return OkStatus();
}

Status specialize_to_inputs(ir::Model& model, const std::map<std::string, Shape>& shapes,
                            const std::map<std::string, std::vector<int64_t>>& values) {
  KILN_RETURN_IF_ERROR(apply_input_shapes(model, shapes));
  KILN_RETURN_IF_ERROR(apply_input_values(model, values));
  KILN_RETURN_IF_ERROR(fold_constants_to_fixpoint(model));
  // Values read only for their shapes (a graph kept shape-generic computes masks and targets from Shape)
  // are gone now; BERT's padding mask, built with a Range that now folds to an all-true constant, can narrow.
  KILN_RETURN_IF_ERROR(eliminate_dead_nodes(model));
  int narrowed = 0;
  KILN_RETURN_IF_ERROR(narrow_attention_mask(model, &narrowed));
  return narrowed > 0 ? eliminate_dead_nodes(model) : OkStatus();
}

}  // namespace kiln::passes
