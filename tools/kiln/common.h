// Pieces shared by the kiln subcommands.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "kiln/kiln.h"

namespace kiln::tools {

// Parses "input:1x3x224x224,mask:1x128" (names may contain ':' only before the last one).
Result<std::map<std::string, Shape>> parse_shapes(const std::string& text);
// A .kiln file is loaded; anything else is treated as ONNX and built in memory with `config`.
Result<std::shared_ptr<Engine>> load_or_build(const std::string& path, const BuilderConfig& config, Logger& logger);
// Prints "error: ..." to stderr and returns 1.
int report(const Status& st);

}  // namespace kiln::tools
