// The `kiln` subcommands; each registers itself on the CLI11 app and returns its exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace kiln::tools {

// Each add_* function adds a subcommand and sets *run to its action when it is selected.
using Action = std::function<int()>;
void add_check_command(CLI::App& app, Action* run);
void add_build_command(CLI::App& app, Action* run);
void add_run_command(CLI::App& app, Action* run);
void add_inspect_command(CLI::App& app, Action* run);
void add_ops_command(CLI::App& app, Action* run);
void add_bench_command(CLI::App& app, Action* run);

}  // namespace kiln::tools
