// kiln ops: the op table, for docs/operators.md (scripts/gen_operators.py) and for users.
#include <iostream>

#include <nlohmann/json.hpp>

#include "ir/op_registry.h"
#include "kiln/commands.h"

namespace kiln::tools {

void add_ops_command(CLI::App& app, Action* run) {
  auto json = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("ops", "List the ops Kiln implements, with the opsets and backends that run them");
  cmd->add_flag("--json", *json, "Print JSON (one array of objects)");
  cmd->callback([json, run] {
    *run = [json] {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& [key, s] : ir::OpRegistry::global().all()) {
        if (*json) {
          out.push_back({{"domain", s.domain}, {"op_type", s.op_type}, {"since_version", s.since_version},
                         {"family", s.family}, {"backends", {"cpu"}}});
        } else {
          std::cout << (s.domain.empty() ? "" : s.domain + ".") << s.op_type << "  opset " << s.since_version
                    << "+  cpu  (" << s.family << ")\n";
        }
      }
      if (*json) std::cout << out.dump(1) << std::endl;
      return 0;
    };
  });
}

}  // namespace kiln::tools
