// The timing cache (DESIGN.md principle 5): tactic choices keyed by the device and a signature of the
// problem, kept in a JSON file ({"format": 1, "entries": {key: {"tactic": ..., "ms": ...}}}), so that a
// rebuild skips the timing and makes the same choices.
#pragma once

#include <map>
#include <string>

#include "backends/backend.h"
#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::builder {

class TimingCache {
 public:
  // A missing file is an empty cache; an unreadable or malformed one is an error that names it.
  static Result<TimingCache> load(const std::string& path);
  Status save(const std::string& path) const;
  const backends::TacticTime* find(const std::string& key) const;
  void put(const std::string& key, backends::TacticTime t);
  size_t size() const { return entries_.size(); }

 private:
  std::map<std::string, backends::TacticTime> entries_;
};

// The cache key of a node's problem on a device: op, opset, attributes, input and output types and shapes
// (and small constant inputs' values), and the precision allowed.
std::string problem_key(const ir::Node& node, const ir::Graph& graph, int opset, bool allow_tf32,
                        const std::string& device);

}  // namespace kiln::builder
