// Tactic selection, build_plan's last step: each GPU layer with more than one candidate kernel is timed on
// the device at static shapes and gets the fastest. An engine with optimization profiles times each profile
// at its opt shapes and keeps only tactics that its min and max shapes also list, so that the choice is
// valid over the whole range (a kernel that needs a sequence length divisible by 8, say, is not chosen for
// a profile whose range holds other lengths).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "builder/timing_cache.h"
#include "ir/graph.h"
#include "kiln/logger.h"

namespace kiln::builder {

struct TacticChoice {
  std::string tactic;
  double ms = -1;  // its time at the timed shapes
};

// For each node of `timed` (a graph with static shapes) named in `gpu_layers` (node name -> whether its
// float32 math may use TF32) that has more than one tactic there: its fastest tactic among those every graph
// of `also_valid_in` (the same graph specialized to other shapes) lists for the node of the same name.
// Timings go through `cache` (by problem key).
Result<std::map<std::string, TacticChoice>> choose_tactics(backends::Backend& gpu, const ir::Model& timed,
                                                           const std::vector<ir::Model>& also_valid_in,
                                                           const std::map<std::string, bool>& gpu_layers,
                                                           TimingCache& cache, Logger& logger);

// `model` with its inputs fixed to `shapes`, its shape-tensor inputs bound to `values` (constants), and
// what that makes constant folded: the graph a context runs there (node names kept), for timing tactics.
Result<ir::Model> specialize_to_shapes(const ir::Model& model, const std::map<std::string, Shape>& shapes,
                                       const std::map<std::string, std::vector<int64_t>>& values = {});

}  // namespace kiln::builder
