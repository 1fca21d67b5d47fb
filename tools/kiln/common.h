// Pieces shared by the kiln subcommands.
#pragma once

#include <map>
#include <memory>
#include <string>

#include <vector>

#include <CLI/CLI.hpp>

#include "kiln/kiln.h"

namespace kiln::tools {

// The build options every command that may build an engine takes (build, run, check, bench).
struct BuildFlags {
  std::string shapes, device = "auto", timing_cache;
  int opt_level = 3;
  bool fp16 = false, bf16 = false, no_tf32 = false, strict_gpu = false;
  std::vector<std::string> layer_precisions;  // NAME:PRECISION
  // Optimization profiles: the k-th of each list makes profile k (name:DxD,... as --shapes).
  std::vector<std::string> min_shapes, opt_shapes, max_shapes;
  // Shape-tensor inputs' values (name:VxV,...; may be negative), the k-th of each joining profile k.
  std::vector<std::string> min_values, opt_values, max_values;
};
void add_build_flags(CLI::App* cmd, BuildFlags* flags);
// The BuilderConfig the flags describe; an error names the flag that is wrong. With profiles, --shapes
// fix the build's shapes (an error: they exclude each other) unless `shapes_run_in_profile`, where they are
// the shapes to run at (kiln run / bench), inside profile 0.
Result<BuilderConfig> make_builder_config(const BuildFlags& flags, bool shapes_run_in_profile = false);

// Parses "input:1x3x224x224,mask:1x128" (names may contain ':' only before the last one); `flag` names
// the option in errors.
Result<std::map<std::string, Shape>> parse_shapes(const std::string& text, const std::string& flag = "--shapes");
// Whether the file starts as a .kiln engine does (false when it cannot be read).
bool is_engine_file(const std::string& path);
// A .kiln file is loaded; anything else is treated as ONNX and built in memory with `config`.
Result<std::shared_ptr<Engine>> load_or_build(const std::string& path, const BuilderConfig& config, Logger& logger);
// Prints "error: ..." to stderr and returns 1.
int report(const Status& st);

}  // namespace kiln::tools
