// Optimization profiles: the checks of a profile at build (against the model's inputs), in an engine file
// (against itself) and at run time (an input shape against the context's profile).
#pragma once

#include <string>
#include <vector>

#include "engine/plan.h"
#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::engine {

// One input's range on its own: the same rank for min, opt and max, and 0 <= min <= opt <= max in every
// dimension ("input 'x' dim 0: ..."); for a shape tensor's values (range.values), the same length and
// min <= opt <= max elementwise, negative values allowed (Reshape's -1): "input 't' value 0: ...".
Status check_profile_range(const std::string& input, const ProfileShapes& range);

// A values entry against its input: an int32/int64 tensor of rank 0 or 1 with a known length equal to the
// values' (the length is what the profile cannot vary). The error names the input.
Status check_shape_tensor_input(const ir::ValueInfo& input, const ProfileShapes& range);

// Profiles against the inputs of a graph: each names only tensor inputs, agrees with their rank and known
// dimensions, and covers every input with a dynamic dimension; an entry with values names an int32/int64
// input of rank 0 or 1 whose known length is the values'. The error names the profile and the input.
Status check_profiles(const ir::Graph& graph, const std::vector<Profile>& profiles);

// Whether `shape` lies inside profile `index`'s range of `input` (an input the profile does not name is
// static and checked elsewhere). The error: "input 'x' shape [64,3,224,224] is outside profile 0 (max
// [32,3,224,224])".
Status check_shape_in_profile(const std::string& input, const Shape& shape, const Profile& profile, int index);

// Whether a shape-tensor input's values lie inside profile `index`'s values range of `input` (none named:
// OkStatus). "input 'target' values [1,900] are outside profile 0 (max [4,512])".
Status check_values_in_profile(const std::string& input, const std::vector<int64_t>& values, const Profile& profile,
                               int index);

// The values of an int32/int64 tensor, for the checks above and for binding them as constants.
Result<std::vector<int64_t>> shape_tensor_values(const std::string& input, const Tensor& t);

}  // namespace kiln::engine
