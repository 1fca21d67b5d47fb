#include "builder/choose_tactics.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <set>

#include "passes/passes.h"

namespace kiln::builder {

namespace {

// "[=====>      ] 120/300 layers timed", redrawn in place on a terminal.
class Progress {
 public:
  Progress(int total, bool enabled) : total_(total), enabled_(enabled && isatty(2)) {}
  void update(int done) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30, filled = total_ ? width * done / total_ : width;
    std::cerr << "\r[" << std::string(filled, '=') << (filled < width ? ">" : "")
              << std::string(width - filled - (filled < width ? 1 : 0), ' ') << "] " << done << "/" << total_
              << " layers timed" << (done == total_ ? "\n" : "") << std::flush;
  }

 private:
  int total_;
  bool enabled_;
  std::chrono::steady_clock::time_point last_{};
};

// Those of `candidates` that `gpu` lists for the node named `name` in every graph of `graphs` that still has
// it (one folded away at its shapes runs nothing there).
std::set<std::string> listed_everywhere(backends::Backend& gpu, const std::vector<ir::Model>& graphs,
                                        const std::string& name, const std::vector<std::string>& candidates) {
  std::set<std::string> ok(candidates.begin(), candidates.end());
  for (const ir::Model& m : graphs) {
    const ir::Node* n = m.graph.node_named(name);
    if (n == nullptr) continue;  // folded away at those shapes: nothing runs there
    std::set<std::string> here;
    if (gpu.supports(*n, m.graph, m.opset_of(*n), nullptr))
      for (const auto& t : gpu.tactics(*n, m.graph, m.opset_of(*n))) here.insert(t.name);
    std::set<std::string> both;
    for (const auto& t : ok)
      if (here.count(t)) both.insert(t);
    ok = std::move(both);
  }
  return ok;
}

}  // namespace

Result<ir::Model> specialize_to_shapes(const ir::Model& model, const std::map<std::string, Shape>& shapes,
                                       const std::map<std::string, std::vector<int64_t>>& values) {
  ir::Model m = model;
  KILN_RETURN_IF_ERROR(passes::specialize_to_inputs(m, shapes, values));  // as CudaProgram specializes it
  return m;
}

Result<std::map<std::string, TacticChoice>> choose_tactics(backends::Backend& gpu, const ir::Model& timed,
                                                           const std::vector<ir::Model>& also_valid_in,
                                                           const std::map<std::string, bool>& gpu_layers,
                                                           TimingCache& cache, Logger& logger) {
  const ir::Graph& g = timed.graph;
  struct ToTime {
    size_t node;
    std::vector<std::string> names;  // candidates valid at every shape given
    bool tf32;
  };
  std::vector<ToTime> to_time;
  std::map<std::string, TacticChoice> chosen;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const ir::Node& n = g.nodes[i];
    auto layer = gpu_layers.find(n.name);
    if (layer == gpu_layers.end() || !gpu.supports(n, g, timed.opset_of(n), nullptr)) continue;
    std::vector<std::string> names;
    for (const auto& t : gpu.tactics(n, g, timed.opset_of(n))) names.push_back(t.name);
    if (!also_valid_in.empty()) {
      const std::set<std::string> valid = listed_everywhere(gpu, also_valid_in, n.name, names);
      std::erase_if(names, [&](const std::string& t) { return !valid.count(t); });
      if (names.empty())
        return Unsupported(n.describe() + ": no tactic runs it at every shape of the optimization profile");
    }
    if (names.size() > 1) to_time.push_back({i, std::move(names), layer->second});
    else if (!also_valid_in.empty()) chosen[n.name] = {names.front(), -1};  // the one valid everywhere
  }

  Progress progress(static_cast<int>(to_time.size()), to_time.size() > 8);
  const auto start = std::chrono::steady_clock::now();
  int timed_count = 0, cached = 0;
  for (size_t k = 0; k < to_time.size(); ++k) {
    const auto& [index, names, tf32] = to_time[k];
    const ir::Node& n = g.nodes[index];
    const int opset = timed.opset_of(n);
    const std::string key = problem_key(n, g, opset, tf32, gpu.device_name());
    if (const backends::TacticTime* hit = cache.find(key);
        hit != nullptr && std::find(names.begin(), names.end(), hit->tactic) != names.end()) {
      chosen[n.name] = {hit->tactic, hit->ms};
      ++cached;
      progress.update(static_cast<int>(k + 1));
      continue;
    }
    const auto timing_start = std::chrono::steady_clock::now();
    auto times = gpu.time_tactics(n, g, opset, tf32, names);
    const double timing_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - timing_start).count();
    if (!times.ok()) {
      logger.log(Severity::kInfo, n.describe() + ": tactics not timed (" + times.status().message() + ")");
      chosen[n.name] = {names.front(), -1};
    } else {
      const backends::TacticTime* best = nullptr;
      for (const auto& t : *times)
        if (t.ms >= 0 && (best == nullptr || t.ms < best->ms)) best = &t;  // strict <: ties keep the earlier
      if (best == nullptr)
        return Internal(n.describe() + ": none of its " + std::to_string(names.size()) +
                        " tactics ran at the build shapes (first: " + times->front().error + ")");
      chosen[n.name] = {best->tactic, best->ms};
      cache.put(key, *best);
      ++timed_count;
      // Where build time goes (kiln build --verbose): the slowest tactic to set up, and all of them.
      const backends::TacticTime* slowest = &times->front();
      double setup = 0;
      for (const auto& t : *times) {
        setup += std::max(t.setup_ms, 0.0);
        if (t.setup_ms > slowest->setup_ms) slowest = &t;
      }
      char line[200];
      std::snprintf(line, sizeof(line), ": %s at %.4f ms; %zu tactics timed in %.0f ms, set up in %.0f ms (slowest %s, %.0f ms)",
                    best->tactic.c_str(), best->ms, times->size(), timing_ms, setup, slowest->tactic.c_str(),
                    slowest->setup_ms);
      logger.log(Severity::kInfo, "tactics of " + n.name + line);
    }
    progress.update(static_cast<int>(k + 1));
  }
  if (!to_time.empty())
    logger.log(Severity::kInfo, "tactics: " + std::to_string(timed_count) + " layers timed, " + std::to_string(cached) +
                                    " from the timing cache, in " +
                                    std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()) +
                                    " s");
  return chosen;
}

}  // namespace kiln::builder
