// Tactic autotuning (DESIGN.md principle 5): each candidate kernel of a node is created at the build
// shapes, warmed up and timed on the GPU with CUDA events. No CUDA type appears here.
#pragma once

#include <string>
#include <vector>

#include "backends/backend.h"
#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::cuda {

// Times every tactic of the node (static shapes required) and returns them in the given order.
Result<std::vector<backends::TacticTime>> time_tactics(const ir::Node& node, const ir::Graph& graph, int opset,
                                                       bool allow_tf32, const std::vector<std::string>& tactics);

}  // namespace kiln::cuda
