#include "kiln/commands.h"

namespace kiln::tools {
void add_run_command(CLI::App& app, Action* run) {
  CLI::App* cmd = app.add_subcommand("run", "(not yet implemented)");
  cmd->callback([run] { *run = [] { return 2; }; });
}
}  // namespace kiln::tools
