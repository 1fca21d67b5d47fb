// kiln inspect: what an engine holds.
#include <iostream>

#include "kiln/commands.h"
#include "kiln/common.h"

namespace kiln::tools {

void add_inspect_command(CLI::App& app, Action* run) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "Show an engine's I/O tensors, layers with their kernels, and memory");
  cmd->add_option("engine", *path, "A .kiln engine (or an ONNX model, built in memory first)")->required();
  cmd->callback([path, run] {
    *run = [path] {
      Logger logger(Severity::kWarning);
      auto engine = load_or_build(*path, BuilderConfig(), logger);
      if (!engine.ok()) return report(engine.status());
      std::cout << (*engine)->inspect();
      return 0;
    };
  });
}

}  // namespace kiln::tools
