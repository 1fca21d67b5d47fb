// kiln bench: throughput and latency of an engine, in the spirit of trtexec. Random inputs (float data
// uniform in [-1, 1], integers 0 or 1, so that ids, masks and indices stay valid), a warm-up, then at least
// --iterations runs and at least --duration seconds, on --streams contexts at once (one thread each).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <map>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/cast.h"
#include "engine/plan.h"
#include "kiln/commands.h"
#include "kiln/common.h"

namespace kiln::tools {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchOptions {
  std::string model, json_file;
  BuildFlags flags;
  int iterations = 10;
  double duration_s = 3.0;
  double warmup_ms = 200;
  bool cuda_graph = false, no_data_transfers = false, profile = false;
  int streams = 1;
  int optimization_profile = 0;
};

struct Sample {
  double latency_ms, enqueue_ms, h2d_ms, compute_ms, d2h_ms;
};

// The shapes are --shapes, else (an engine with profiles) the chosen profile's opt shapes, else the engine's.
Result<std::map<std::string, Tensor>> random_inputs(const Engine& engine, const std::map<std::string, Shape>& shapes,
                                                    int profile) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::map<std::string, Tensor> feeds;
  for (int i = 0; i < engine.num_io_tensors(); ++i) {
    const std::string name = engine.io_tensor_name(i);
    if (engine.tensor_io_mode(name) != TensorIOMode::kInput) continue;
    Shape shape = engine.tensor_shape(name);
    if (auto it = shapes.find(name); it != shapes.end()) {
      shape = it->second;
    } else if (engine.num_optimization_profiles() > 0) {
      if (auto range = engine.get_profile_shape(name, profile); range.ok()) shape = range->opt;
    }
    for (int64_t d : shape)
      if (d < 0)
        return InvalidArgument("input '" + name + "' has dynamic shape " + shape_to_string(shape) +
                               ": give it with --shapes " + name + ":DxDx...");
    const DType dtype = engine.tensor_dtype(name);
    Tensor f(DType::kFloat32, shape);
    const bool is_float = dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16 ||
                          dtype == DType::kFloat64;
    for (int64_t k = 0; k < f.numel(); ++k) f.data<float>()[k] = is_float ? uni(gen) : static_cast<float>(gen() & 1);
    // A shape tensor takes its profile's opt values, which the opt shapes of the other inputs agree with.
    if (engine.num_optimization_profiles() > 0)
      if (auto v = engine.get_profile_shape_values(name, profile); v.ok() && static_cast<int64_t>(v->opt.size()) == f.numel())
        for (int64_t k = 0; k < f.numel(); ++k) f.data<float>()[k] = static_cast<float>(v->opt[k]);
    if (dtype == DType::kString) return Unsupported("input '" + name + "' holds strings: kiln bench feeds numbers");
    KILN_ASSIGN_OR_RETURN(feeds[name], cast_tensor(f, dtype));
  }
  return feeds;
}

json stats(std::vector<double> v) {
  if (v.empty()) return json::object();
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) { return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5))]; };
  double sum = 0;
  for (double x : v) sum += x;
  return {{"min", v.front()}, {"mean", sum / v.size()}, {"median", pct(50)}, {"p90", pct(90)},
          {"p95", pct(95)}, {"p99", pct(99)}, {"max", v.back()}};
}

std::string line(const char* what, const json& s) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(4) << std::setw(16) << std::left << what << " min " << s.value("min", 0.0)
     << "  mean " << s.value("mean", 0.0) << "  median " << s.value("median", 0.0) << "  p90 " << s.value("p90", 0.0)
     << "  p95 " << s.value("p95", 0.0) << "  p99 " << s.value("p99", 0.0) << " ms";
  return os.str();
}

int run_bench(const BenchOptions& o) {
  Logger logger(Severity::kWarning);
  auto config = make_builder_config(o.flags, /*shapes_run_in_profile=*/true);
  if (!config.ok()) return report(config.status());
  auto run_shapes = parse_shapes(o.flags.shapes);
  if (!run_shapes.ok()) return report(run_shapes.status());
  if (o.streams < 1 || o.iterations < 1 || o.duration_s < 0 || o.warmup_ms < 0)
    return report(InvalidArgument("--streams and --iterations must be at least 1, --duration and --warmup not negative"));
  auto engine = load_or_build(o.model, *config, logger);
  if (!engine.ok()) return report(engine.status());
  if (Status st = (*engine)->create_execution_context()->set_optimization_profile(o.optimization_profile); !st.ok())
    return report(st);  // before the inputs are made at its shapes
  auto feeds = random_inputs(**engine, *run_shapes, o.optimization_profile);
  if (!feeds.ok()) return report(feeds.status());
  const bool gpu = (*engine)->plan().target_backend == "cuda";
  if (o.no_data_transfers && !gpu) std::cerr << "note: --no-data-transfers has no effect on a CPU engine\n";
  if (o.profile && !gpu) std::cerr << "note: --profile times the layers of GPU engines only\n";

  // One context per stream, each on its own thread; every context runs once before the clock starts.
  std::vector<std::unique_ptr<ExecutionContext>> contexts;
  for (int s = 0; s < o.streams; ++s) {
    contexts.push_back((*engine)->create_execution_context());
    contexts.back()->set_cuda_graph(o.cuda_graph);
    if (Status st = contexts.back()->set_optimization_profile(o.optimization_profile); !st.ok()) return report(st);
    auto r = contexts.back()->execute(*feeds);
    if (!r.ok()) return report(r.status());
  }
  auto run_once = [&](ExecutionContext& ctx, Sample* sample) -> Status {
    const auto t0 = Clock::now();
    if (o.no_data_transfers && gpu) {
      KILN_RETURN_IF_ERROR(ctx.execute_compute_only());
    } else {
      auto r = ctx.execute(*feeds);
      if (!r.ok()) return r.status();
    }
    const auto t1 = Clock::now();
    const ExecutionContext::RunTimes t = ctx.last_run_times();
    const double wall_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    *sample = Sample{wall_ms, gpu ? t.enqueue_ms : wall_ms,  // a CPU run is synchronous: enqueue is the run
                     o.no_data_transfers ? 0.0 : t.h2d_ms, t.compute_ms, o.no_data_transfers ? 0.0 : t.d2h_ms};
    return OkStatus();
  };

  // Warm-up, then the timed runs: each thread runs until both the iteration count and the duration are met.
  std::vector<std::vector<Sample>> samples(o.streams);
  std::vector<Status> errors(o.streams);
  auto worker = [&](int s, double ms, int min_iters, bool keep) {
    const auto start = Clock::now();
    for (int i = 0;; ++i) {
      const double elapsed = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      if (i >= min_iters && elapsed >= ms) break;
      Sample sample{};
      Status st = run_once(*contexts[s], &sample);
      if (!st.ok()) {
        errors[s] = st;
        return;
      }
      if (keep) samples[s].push_back(sample);
    }
  };
  auto run_all = [&](double ms, int min_iters, bool keep) {
    std::vector<std::thread> threads;
    for (int s = 0; s < o.streams; ++s) threads.emplace_back(worker, s, ms, min_iters, keep);
    for (auto& t : threads) t.join();
  };
  run_all(o.warmup_ms, 1, false);
  const auto t0 = Clock::now();
  run_all(o.duration_s * 1000.0, o.iterations, true);
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const Status& st : errors)
    if (!st.ok()) return report(st);

  std::vector<double> lat, enq, h2d, comp, d2h;
  for (const auto& per : samples)
    for (const Sample& x : per) {
      lat.push_back(x.latency_ms);
      enq.push_back(x.enqueue_ms);
      h2d.push_back(x.h2d_ms);
      comp.push_back(x.compute_ms);
      d2h.push_back(x.d2h_ms);
    }
  const double qps = lat.size() / wall_s;
  json shapes = json::object();
  for (const auto& [name, t] : *feeds) shapes[name] = t.shape();
  json j = {{"model", o.model},
            {"backend", (*engine)->plan().target_backend},
            {"device", (*engine)->plan().target_device},
            {"input_shapes", shapes},
            {"settings", {{"fp16", o.flags.fp16}, {"bf16", o.flags.bf16}, {"tf32", !o.flags.no_tf32},
                          {"cuda_graph", o.cuda_graph}, {"no_data_transfers", o.no_data_transfers},
                          {"streams", o.streams}}},
            {"iterations", lat.size()},
            {"wall_s", wall_s},
            {"throughput_qps", qps},
            {"latency_ms", stats(lat)},
            {"enqueue_ms", stats(enq)},
            {"activation_bytes", contexts[0]->activation_bytes()},
            {"arena_bytes", contexts[0]->arena_bytes()}, {"workspace_bytes", contexts[0]->workspace_bytes()}};
  if (gpu) {
    j["h2d_ms"] = stats(h2d);
    j["gpu_compute_ms"] = stats(comp);
    j["d2h_ms"] = stats(d2h);
  }
  std::cout << "kiln bench: " << o.model << " on " << (*engine)->plan().target_device << ", " << o.streams
            << " stream(s)" << (o.cuda_graph ? ", CUDA graph" : "") << (o.no_data_transfers ? ", no data transfers" : "")
            << "\n";
  std::cout << "iterations: " << lat.size() << " in " << std::fixed << std::setprecision(3) << wall_s << " s\n";
  std::cout << "throughput: " << std::setprecision(2) << qps << " queries/s (each one run of the engine on its inputs)\n";
  std::cout << line("latency", j["latency_ms"]) << "\n" << line("enqueue", j["enqueue_ms"]) << "\n";
  if (gpu)
    std::cout << line("H2D", j["h2d_ms"]) << "\n" << line("GPU compute", j["gpu_compute_ms"]) << "\n"
              << line("D2H", j["d2h_ms"]) << "\n";
  if (o.profile && gpu) {
    // One more run, each layer timed: the layers and op types that take the time.
    contexts[0]->set_profiling(true);
    auto r = contexts[0]->execute(*feeds);
    if (!r.ok()) return report(r.status());
    const auto times = contexts[0]->last_layer_times();
    contexts[0]->set_profiling(false);
    std::map<std::string, std::pair<double, int>> by_op;
    double total = 0;
    json layers = json::array();
    for (const auto& t : times) {
      auto& e = by_op[t.where == "cuda" || t.where == "cpu" ? t.op_type + " (" + t.where + ")" : t.where];
      e.first += t.ms;
      e.second += 1;
      total += t.ms;
      layers.push_back({{"layer", t.layer}, {"op_type", t.op_type}, {"where", t.where}, {"ms", t.ms}});
    }
    std::vector<std::pair<double, std::string>> ranked;
    for (const auto& [op, e] : by_op) ranked.push_back({e.first, op});
    std::sort(ranked.rbegin(), ranked.rend());
    std::cout << "profile (one run, each layer timed; " << std::setprecision(4) << total << " ms in all):\n";
    for (const auto& [ms, op] : ranked)
      std::cout << "  " << std::setw(28) << std::left << op << std::right << std::setw(4) << by_op[op].second
                << " layers " << std::setw(9) << ms << " ms " << std::setw(5) << std::setprecision(3)
                << 100.0 * ms / std::max(total, 1e-9) << "%\n" << std::setprecision(4);
    j["profile"] = layers;
  }
  if (!o.json_file.empty()) {
    std::ofstream out(o.json_file);
    out << j.dump(2) << "\n";
    if (!out) return report(IoError("cannot write '" + o.json_file + "'"));
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Action* run) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure throughput and latency of an engine (or an ONNX model)");
  cmd->add_option("model", o->model, "A .kiln engine or an ONNX model")->required();
  add_build_flags(cmd, &o->flags);
  cmd->add_option("--iterations", o->iterations, "Run at least this many times")->capture_default_str();
  cmd->add_option("--duration", o->duration_s, "Run for at least this many seconds")->capture_default_str();
  cmd->add_option("--warmup", o->warmup_ms, "Warm up for this many milliseconds first")->capture_default_str();
  cmd->add_flag("--cuda-graph", o->cuda_graph, "Capture the GPU work into a CUDA graph and replay it");
  cmd->add_flag("--no-data-transfers", o->no_data_transfers, "Time the computation only, inputs already on the GPU");
  cmd->add_flag("--profile", o->profile, "After the timed runs, time each layer of one run (GPU engines)");
  cmd->add_option("--streams", o->streams, "Contexts running at once, each on its own stream and thread")->capture_default_str();
  cmd->add_option("--optimization-profile", o->optimization_profile,
                  "The optimization profile the contexts use (its opt shapes unless --shapes)")->capture_default_str();
  cmd->add_option("--json", o->json_file, "Also write the results as JSON to this file");
  cmd->callback([o, run] { *run = [o] { return run_bench(*o); }; });
}

}  // namespace kiln::tools
