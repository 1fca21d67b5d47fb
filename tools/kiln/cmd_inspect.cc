// kiln inspect: what an engine holds. --graph prints its optimized graph in the format of the golden files
// (tests/golden/: one line per node, no tactics or times), to diff two builds or check a golden by hand.
#include <iostream>

#include "builder/graph_dump.h"
#include "engine/plan.h"
#include "kiln/commands.h"
#include "kiln/common.h"

namespace kiln::tools {

namespace {
struct InspectOptions {
  std::string path;
  BuildFlags flags;
  bool graph = false;
};
}  // namespace

void add_inspect_command(CLI::App& app, Action* run) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "Show an engine's I/O tensors, layers with their kernels, and memory");
  cmd->add_option("engine", o->path, "A .kiln engine (or an ONNX model, built in memory first with the build flags)")
      ->required();
  cmd->add_flag("--graph", o->graph,
                "Print the optimized graph, one line per node (the golden-file format); of an ONNX model it is "
                "planned without a device (--device cuda works on a machine with no GPU)");
  add_build_flags(cmd, &o->flags);
  cmd->callback([o, run] {
    *run = [o] {
      Logger logger(Severity::kWarning);
      auto config = make_builder_config(o->flags);
      if (!config.ok()) return report(config.status());
      if (o->graph && !is_engine_file(o->path)) {
        // The graph alone needs no device and no tactic timing: a GPU engine's graph on any machine.
        NetworkDefinition network;
        OnnxParser parser(network, logger);
        if (Status st = parser.parse_from_file(o->path); !st.ok()) return report(st);
        auto text = Builder(logger).optimized_graph(network, *config);
        if (!text.ok()) return report(text.status());
        std::cout << *text;
        return 0;
      }
      auto engine = load_or_build(o->path, *config, logger);
      if (!engine.ok()) return report(engine.status());
      std::cout << (o->graph ? builder::dump_graph((*engine)->plan().model) : (*engine)->inspect());
      return 0;
    };
  });
}

}  // namespace kiln::tools
