// kiln: build, run, check, inspect and benchmark engines from the command line.
#include <iostream>

#include "kiln/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kiln " KILN_VERSION ": an inference optimizer and runtime for ONNX models"};
  app.require_subcommand(1);
  kiln::tools::Action action;
  kiln::tools::add_build_command(app, &action);
  kiln::tools::add_run_command(app, &action);
  kiln::tools::add_check_command(app, &action);
  kiln::tools::add_inspect_command(app, &action);
  kiln::tools::add_ops_command(app, &action);
  kiln::tools::add_bench_command(app, &action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e, std::cout, std::cerr);
  }
  return action ? action() : 2;
}
