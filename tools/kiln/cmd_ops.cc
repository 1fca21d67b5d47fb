// kiln ops: the op table, for docs/operators.md (scripts/gen_operators.py) and for users.
#include <iostream>

#include <nlohmann/json.hpp>

#include "ir/op_registry.h"
#include "kiln/commands.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/layer.h"
#endif

namespace kiln::tools {

void add_ops_command(CLI::App& app, Action* run) {
  auto json = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("ops", "List the ops Kiln implements, with the opsets and backends that run them");
  cmd->add_flag("--json", *json, "Print JSON (one array of objects)");
  cmd->callback([json, run] {
    *run = [json] {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& [key, s] : ir::OpRegistry::global().all()) {
        // The CPU runs every op; the CUDA backend those of its layer table (which dtypes and attributes its
        // layer accepts, the build report tells).
        std::vector<std::string> backends{"cpu"};
#ifdef KILN_HAVE_CUDA
        if (s.domain.empty() && cuda::layer_table().find(s.op_type) != nullptr) backends.push_back("cuda");
#endif
        if (*json) {
          out.push_back({{"domain", s.domain}, {"op_type", s.op_type}, {"since_version", s.since_version},
                         {"family", s.family}, {"backends", backends}});
        } else {
          std::cout << (s.domain.empty() ? "" : s.domain + ".") << s.op_type << "  opset " << s.since_version << "+  "
                    << backends[0] << (backends.size() > 1 ? "," + backends[1] : "") << "  (" << s.family << ")\n";
        }
      }
      if (*json) std::cout << out.dump(1) << std::endl;
      return 0;
    };
  });
}

}  // namespace kiln::tools
