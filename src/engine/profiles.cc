#include "engine/profiles.h"

#include <array>
#include <map>

namespace kiln::engine {

Status check_profile_range(const std::string& input, const ProfileShapes& r) {
  // A shape's dims are sizes, never negative; a shape tensor's values may be (Reshape's -1).
  const std::string what = "input '" + input + "'";
  const char* unit = r.values ? " value " : " dim ";
  if (r.min.size() != r.opt.size() || r.opt.size() != r.max.size())
    return InvalidArgument(what + (r.values ? ": values min " : ": min ") + shape_to_string(r.min) + ", opt " +
                           shape_to_string(r.opt) + " and max " + shape_to_string(r.max) +
                           (r.values ? " differ in length" : " differ in rank"));
  for (size_t i = 0; i < r.min.size(); ++i) {
    if (!r.values && r.min[i] < 0)
      return InvalidArgument(what + unit + std::to_string(i) + ": min " + std::to_string(r.min[i]) + " is negative");
    if (r.min[i] > r.opt[i] || r.opt[i] > r.max[i])
      return InvalidArgument(what + unit + std::to_string(i) + ": needs min <= opt <= max, got min " +
                             std::to_string(r.min[i]) + ", opt " + std::to_string(r.opt[i]) + ", max " +
                             std::to_string(r.max[i]));
  }
  return OkStatus();
}

Status check_shape_tensor_input(const ir::ValueInfo& in, const ProfileShapes& range) {
  const std::string what = "input '" + in.name + "' (" + in.type.to_string() + ")";
  if (in.type.kind != ir::TypeInfo::Kind::kTensor || (in.type.dtype != DType::kInt32 && in.type.dtype != DType::kInt64))
    return InvalidArgument(what + " has values in the profile, so it must be an int32 or int64 tensor");
  if (!in.type.has_shape || in.type.dims.size() > 1)
    return InvalidArgument(what + " has values in the profile, so it must have rank 0 or 1");
  const int64_t length = in.type.dims.empty() ? 1 : in.type.dims[0].known() ? in.type.dims[0].value : -1;
  if (length < 0) return InvalidArgument(what + " has values in the profile, so its length must be known");
  if (length != static_cast<int64_t>(range.min.size()))
    return InvalidArgument(what + " holds " + std::to_string(length) + " values, the profile gives " +
                           std::to_string(range.min.size()));
  return OkStatus();
}

namespace {
bool is_dynamic_tensor(const ir::ValueInfo& in) {
  if (in.type.kind != ir::TypeInfo::Kind::kTensor) return false;
  return !in.type.is_static();
}
}  // namespace

Status check_profiles(const ir::Graph& g, const std::vector<Profile>& profiles) {
  for (size_t k = 0; k < profiles.size(); ++k) {
    const std::string profile = "optimization profile " + std::to_string(k), where = profile + ": ";
    for (const auto& [name, range] : profiles[k]) {
      const ir::ValueInfo* in = nullptr;
      for (const auto& v : g.inputs)
        if (v.name == name && !g.initializers.count(name)) in = &v;
      if (in == nullptr) return InvalidArgument(where + "'" + name + "' is not an input of the model");
      if (in->type.kind != ir::TypeInfo::Kind::kTensor && in->type.kind != ir::TypeInfo::Kind::kUnknown)
        return InvalidArgument(where + "input '" + name + "' is not a tensor (" + in->type.to_string() + ")");
      KILN_RETURN_IF_ERROR(check_profile_range(name, range).with_context(profile));
      if (range.values) {
        KILN_RETURN_IF_ERROR(check_shape_tensor_input(*in, range).with_context(profile));
        continue;
      }
      if (!in->type.has_shape) continue;
      const auto& dims = in->type.dims;
      if (dims.size() != range.min.size())
        return InvalidArgument(where + "input '" + name + "' has rank " + std::to_string(dims.size()) + " (" +
                               in->type.to_string() + "), the profile gives rank " + std::to_string(range.min.size()));
      for (size_t i = 0; i < dims.size(); ++i)
        if (dims[i].known() && (range.min[i] != dims[i].value || range.max[i] != dims[i].value))
          return InvalidArgument(where + "input '" + name + "' dim " + std::to_string(i) + " is " +
                                 std::to_string(dims[i].value) + " in the model (" + in->type.to_string() +
                                 "), the profile gives min " + std::to_string(range.min[i]) + ", max " +
                                 std::to_string(range.max[i]));
    }
    // A dim the model names alike in several inputs ([batch, seq] of BERT's ids and mask) is one size at run
    // time: the profile must give it one range, or its opt shapes would be a shape the model cannot run.
    std::map<std::string, std::pair<std::string, std::array<int64_t, 3>>> named;  // symbol -> first input, range
    for (const auto& in : g.inputs) {
      auto r = profiles[k].find(in.name);
      if (r == profiles[k].end() || r->second.values || !in.type.has_shape) continue;
      for (size_t i = 0; i < in.type.dims.size(); ++i) {
        const std::string& symbol = in.type.dims[i].symbol;
        if (in.type.dims[i].known() || symbol.empty()) continue;
        const std::array<int64_t, 3> range{r->second.min[i], r->second.opt[i], r->second.max[i]};
        auto [it, first] = named.emplace(symbol, std::make_pair(in.name, range));
        if (!first && it->second.second != range) {
          auto text = [](const std::array<int64_t, 3>& v) {
            return "min " + std::to_string(v[0]) + ", opt " + std::to_string(v[1]) + ", max " + std::to_string(v[2]);
          };
          return InvalidArgument(where + "inputs '" + it->second.first + "' and '" + in.name + "' share dim '" +
                                 symbol + "', which the profile gives " + text(it->second.second) + " and " +
                                 text(range));
        }
      }
    }
    for (const auto& in : g.inputs)
      if (is_dynamic_tensor(in) && !g.initializers.count(in.name) && !profiles[k].count(in.name))
        return InvalidArgument(where + "input '" + in.name + "' has dynamic shape " + in.type.to_string() +
                               " and no min/opt/max in the profile");
  }
  return OkStatus();
}

Status check_shape_in_profile(const std::string& input, const Shape& shape, const Profile& profile, int index) {
  auto it = profile.find(input);
  if (it == profile.end() || it->second.values) return OkStatus();  // a shape tensor's shape is static
  const ProfileShapes& r = it->second;
  const std::string head = "input '" + input + "' shape " + shape_to_string(shape) + " is outside profile " +
                           std::to_string(index) + " (";
  if (shape.size() != r.min.size())
    return InvalidArgument(head + "rank " + std::to_string(r.min.size()) + ", min " + shape_to_string(r.min) +
                           ", max " + shape_to_string(r.max) + ")");
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < r.min[i]) return InvalidArgument(head + "min " + shape_to_string(r.min) + ")");
    if (shape[i] > r.max[i]) return InvalidArgument(head + "max " + shape_to_string(r.max) + ")");
  }
  return OkStatus();
}

Status check_values_in_profile(const std::string& input, const std::vector<int64_t>& values, const Profile& profile,
                               int index) {
  auto it = profile.find(input);
  if (it == profile.end() || !it->second.values) return OkStatus();
  const ProfileShapes& r = it->second;
  const std::string head = "input '" + input + "' values " + shape_to_string(values) + " are outside profile " +
                           std::to_string(index) + " (";
  if (values.size() != r.min.size())
    return InvalidArgument(head + std::to_string(r.min.size()) + " values, min " + shape_to_string(r.min) + ", max " +
                           shape_to_string(r.max) + ")");
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i] < r.min[i]) return InvalidArgument(head + "min " + shape_to_string(r.min) + ")");
    if (values[i] > r.max[i]) return InvalidArgument(head + "max " + shape_to_string(r.max) + ")");
  }
  return OkStatus();
}

Result<std::vector<int64_t>> shape_tensor_values(const std::string& input, const Tensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::kInt64) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = t.data<int64_t>()[i];
  } else if (t.dtype() == DType::kInt32) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = t.data<int32_t>()[i];
  } else {
    return InvalidArgument("input '" + input + "' is a shape tensor and must be int32 or int64, got " +
                           dtype_name(t.dtype()));
  }
  return v;
}

}  // namespace kiln::engine
