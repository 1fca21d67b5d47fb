#include "kiln/commands.h"

namespace kiln::tools {
void add_build_command(CLI::App& app, Action* run) {
  CLI::App* cmd = app.add_subcommand("build", "(not yet implemented)");
  cmd->callback([run] { *run = [] { return 2; }; });
}
}  // namespace kiln::tools
