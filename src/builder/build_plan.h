// The build pipeline: imported model -> optimized Plan for one target.
#pragma once

#include "engine/plan.h"
#include "kiln/logger.h"

namespace kiln::builder {

Result<engine::Plan> build_plan(const ir::Model& model, const engine::BuildSettings& settings, Logger& logger);

// The optimized graph that build_plan would make for `settings`, planned without a device: for a "cuda"
// target the CUDA layer table answers which layers run in half precision, as it does with one (no tactic is
// timed: the graph does not depend on tactics). `kiln inspect --graph` on a machine without a GPU, and the
// golden dumps of tests/golden/, are made this way.
Result<ir::Model> plan_graph(ir::Model model, const engine::BuildSettings& settings, Logger& logger);

// "x86_64 CPU, 2 threads"-style description of this machine's CPU target.
std::string cpu_device_name();

}  // namespace kiln::builder
