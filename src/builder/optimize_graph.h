// The graph-optimization half of the build: input shapes, the level-1 cleanups, the GPU fusions, lower
// precision and channels-last convolutions. It needs no device: what it must know of the target comes in
// OptimizeOptions (build_plan asks the CUDA backend; the golden-graph test asks the CUDA layer table), so
// the graph a GPU engine would get can be made, printed and reviewed on a machine without a GPU.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>

#include "ir/graph.h"
#include "kiln/logger.h"
#include "kiln/status.h"

namespace kiln::builder {

enum class Precision { kFloat32, kFloat16, kBFloat16 };

struct OptimizeOptions {
  bool for_gpu = false;  // the engine targets a GPU: fusions into kiln.* ops, half types, channels-last convs
  int opt_level = 3;
  Precision precision = Precision::kFloat32;  // --fp16 / --bf16: where layers may compute in half types
  std::map<std::string, Shape> input_shapes;  // --shapes
  std::map<std::string, std::string> layer_precisions;  // node name -> "fp32", "fp16", "bf16": always honored
  // Whether the target can run `node` in float16/bfloat16 (asked about the float32 graph, only for GPU
  // targets): the GPU backend supports the node and its layer takes half types. Unset: no node can.
  std::function<bool(const ir::Model&, const ir::Node&)> can_run_in_half;
};

// Rewrites `m` in place into the graph the engine runs. The names of the nodes lowered to a half type go to
// *lowered. Errors: a pin that names no layer, a half-precision pin the target cannot honor.
Status optimize_graph(ir::Model& m, const OptimizeOptions& o, Logger& logger,
                      std::set<std::string>* lowered = nullptr);

// A layer's pin ("fp32", "fp16", "bf16"; empty when none): a fused layer ("conv1 + add1 + relu1") answers to
// the names of the layers it was made from, and carries their pins.
std::string layer_pin(const ir::Node& n, const std::map<std::string, std::string>& layer_precisions);

}  // namespace kiln::builder
