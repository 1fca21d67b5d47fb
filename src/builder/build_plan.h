// The build pipeline: imported model -> optimized Plan for one target.
#pragma once

#include "engine/plan.h"
#include "kiln/logger.h"

namespace kiln::builder {

Result<engine::Plan> build_plan(const ir::Model& model, const engine::BuildSettings& settings, Logger& logger);

// "x86_64 CPU, 2 threads"-style description of this machine's CPU target.
std::string cpu_device_name();

}  // namespace kiln::builder
