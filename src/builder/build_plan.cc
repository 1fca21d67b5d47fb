#include "builder/build_plan.h"

#include <chrono>
#include <thread>

#include "backends/backend.h"
#include "ir/op_registry.h"
#include "passes/passes.h"

namespace kiln::builder {

std::string cpu_device_name() {
#if defined(__x86_64__)
  const char* arch = "x86_64";
#elif defined(__aarch64__)
  const char* arch = "aarch64";
#else
  const char* arch = "unknown";
#endif
  return std::string(arch) + " CPU";
}

Result<engine::Plan> build_plan(const ir::Model& model, const engine::BuildSettings& settings, Logger& logger) {
  if (settings.device != "cpu")
    return Unsupported("device '" + settings.device + "' is not available: this Kiln build targets the CPU only");
  engine::Plan plan;
  plan.kiln_version = KILN_VERSION;
  plan.target_backend = "cpu";
  plan.target_device = cpu_device_name();
  plan.settings = settings;
  plan.model = model;
  ir::Model& m = plan.model;

  KILN_RETURN_IF_ERROR(passes::apply_input_shapes(m, settings.input_shapes));
  if (settings.opt_level > 0) {
    int folded = 0, removed = 0;
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    KILN_RETURN_IF_ERROR(passes::fold_constants(m, &folded));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    KILN_RETURN_IF_ERROR(passes::fold_constants(m, &folded));  // Shape of newly static values
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    logger.log(Severity::kInfo, "optimizer: folded " + std::to_string(folded) + " constant nodes, removed " +
                                    std::to_string(removed) + " dead nodes");
  }
  KILN_RETURN_IF_ERROR(passes::infer_shapes(m));

  // Assign every node to the first backend that supports it (today the CPU, which runs every op of the
  // op table; the CUDA backend will come first when the target is a GPU).
  std::vector<std::unique_ptr<backends::Backend>> candidates;
  candidates.push_back(backends::make_cpu_backend());
  for (const ir::Node& n : m.graph.nodes) {
    auto opset_it = m.opsets.find(n.domain);
    int opset = opset_it == m.opsets.end() ? 0 : opset_it->second;
    engine::LayerInfo layer;
    layer.name = n.name;
    layer.op_type = (n.domain.empty() ? "" : n.domain + ".") + n.op_type;
    std::string reasons;
    for (const auto& backend : candidates) {
      std::string why_not;
      if (!backend->supports(n, m.graph, opset, &why_not)) {
        reasons += (reasons.empty() ? "" : "; ") + backend->name() + ": " + why_not;
        continue;
      }
      layer.backend = backend->name();
      layer.tactic = backend->tactics(n, m.graph, opset).front().name;
      break;
    }
    if (layer.backend.empty() || layer.tactic.empty()) return Unsupported(n.describe() + ": no backend runs it (" + reasons + ")");
    plan.layers.push_back(std::move(layer));
  }
  return plan;
}

}  // namespace kiln::builder
