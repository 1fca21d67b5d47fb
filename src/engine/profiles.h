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
// dimension. The error names the input and the dimension ("input 'x' dim 0: ...").
Status check_profile_range(const std::string& input, const ProfileShapes& range);

// Profiles against the inputs of a graph: each names only tensor inputs, agrees with their rank and known
// dimensions, and covers every input with a dynamic dimension. The error names the profile and the input.
Status check_profiles(const ir::Graph& graph, const std::vector<Profile>& profiles);

// Whether `shape` lies inside profile `index`'s range of `input` (an input the profile does not name is
// static and checked elsewhere). The error: "input 'x' shape [64,3,224,224] is outside profile 0 (max
// [32,3,224,224])".
Status check_shape_in_profile(const std::string& input, const Shape& shape, const Profile& profile, int index);

}  // namespace kiln::engine
