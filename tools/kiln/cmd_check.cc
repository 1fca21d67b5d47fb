// kiln check: runs ONNX test folders (model.onnx + test_data_set_N/{input,output}_K.pb) and compares.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "kiln/commands.h"
#include "kiln/compare.h"
#include "onnx/importer.h"
#include "onnx/tensor_proto.h"
#include <nlohmann/json.hpp>

#include "kiln/kiln.h"

namespace fs = std::filesystem;

namespace kiln::tools {

namespace {

struct CheckOptions {
  std::vector<std::string> dirs;
  std::string device = "auto";
  Tolerance tol;
  std::string expected_failures_file;
  std::string tolerances_file;
  std::string json_file;
  bool quiet = false;
};

std::string kind_of(const ir::TypeInfo& t) {
  switch (t.kind) {
    case ir::TypeInfo::Kind::kSequence: return "sequence";
    case ir::TypeInfo::Kind::kOptional: return "optional";
    default: return "tensor";
  }
}

std::vector<fs::path> numbered(const fs::path& dir, const std::string& prefix) {
  std::vector<std::pair<int, fs::path>> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && e.path().extension() == ".pb") {
      try {
        found.emplace_back(std::stoi(name.substr(prefix.size())), e.path());
      } catch (...) {
      }
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [i, p] : found) out.push_back(p);
  return out;
}

struct TestOutcome {
  bool passed = false;
  double max_abs = 0, max_rel = 0;
  std::string message;
};

// Runs one test folder through import, preparation and execution; every data set must match.
TestOutcome run_test(const fs::path& dir, const Tolerance& tol, const std::string& device) {
  TestOutcome out;
  // The same path as a user's: parse, build, serialize, load, run.
  Logger logger(Severity::kError);
  logger.set_min_severity(static_cast<Severity>(-1));  // errors are reported in the test line instead
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  if (Status st = parser.parse_from_file((dir / "model.onnx").string()); !st.ok()) {
    out.message = st.to_string();
    return out;
  }
  Builder builder(logger);
  BuilderConfig config;
  config.set_device(device);
  auto plan = builder.build_serialized_network(network, config);
  if (!plan.ok()) {
    out.message = plan.status().to_string();
    return out;
  }
  Runtime runtime(logger);
  auto engine = runtime.deserialize_engine(plan->data(), plan->size());
  if (!engine.ok()) {
    out.message = engine.status().to_string();
    return out;
  }
  auto context = (*engine)->create_execution_context();
  std::vector<fs::path> sets;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().rfind("test_data_set_", 0) == 0) sets.push_back(e.path());
  std::sort(sets.begin(), sets.end());
  if (sets.empty()) {
    out.message = "no test_data_set_* folders in " + dir.string();
    return out;
  }
  const ir::Graph& g = network.model().graph;
  for (const auto& set : sets) {
    std::map<std::string, Value> feeds;
    auto input_files = numbered(set, "input_");
    // Input files bind, in order, to the graph inputs that have no initializer (no default value).
    std::vector<const ir::ValueInfo*> bindable;
    for (const auto& in : g.inputs)
      if (!g.initializers.count(in.name)) bindable.push_back(&in);
    for (size_t i = 0; i < input_files.size() && i < bindable.size(); ++i) {
      auto v = onnx_io::read_value_file(input_files[i].string(), kind_of(bindable[i]->type));
      if (!v.ok()) {
        out.message = v.status().to_string();
        return out;
      }
      feeds[bindable[i]->name] = std::move(v).value();
    }
    auto results = context->execute_values(feeds);
    if (!results.ok()) {
      out.message = results.status().to_string();
      return out;
    }
    auto output_files = numbered(set, "output_");
    for (size_t i = 0; i < output_files.size() && i < g.outputs.size(); ++i) {
      auto expected = onnx_io::read_value_file(output_files[i].string(), kind_of(g.outputs[i].type));
      if (!expected.ok()) {
        out.message = expected.status().to_string();
        return out;
      }
      CompareResult c = compare_values((*results)[i], *expected, tol);
      out.max_abs = std::max(out.max_abs, c.max_abs_error);
      out.max_rel = std::max(out.max_rel, c.max_rel_error);
      if (!c.ok) {
        out.message = set.filename().string() + " output '" + g.outputs[i].name + "': " + c.message;
        return out;
      }
    }
  }
  out.passed = true;
  return out;
}

// Reads "test_name: reason" lines; '#' starts a comment.
std::map<std::string, std::string> read_expected_failures(const std::string& path, bool* ok) {
  std::map<std::string, std::string> out;
  std::ifstream f(path);
  *ok = static_cast<bool>(f);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t colon = line.find(':');
    std::string name = line.substr(0, colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
    out[name] = colon == std::string::npos ? "" : line.substr(colon + 1);
  }
  return out;
}

// A listed test whose reason starts with "random" (a random op: expected values drawn from a generator no
// other implementation reproduces) fails almost always but can match by chance; such a pass is no error.
bool random_outcome(const std::string& reason) {
  const size_t start = reason.find_first_not_of(" \t");
  return start != std::string::npos && reason.compare(start, 6, "random") == 0;
}

// Reads "test_name rtol atol  # reason" lines: tests whose reference data needs looser bounds.
bool read_tolerances(const std::string& path, std::map<std::string, Tolerance>* out) {
  std::ifstream f(path);
  if (!f) return false;
  std::string line;
  while (std::getline(f, line)) {
    line = line.substr(0, line.find('#'));
    std::istringstream ss(line);
    std::string name;
    Tolerance t;
    if (!(ss >> name)) continue;
    if (!(ss >> t.rtol >> t.atol)) return false;
    (*out)[name] = t;
  }
  return true;
}

int run_check(const CheckOptions& opts) {
  std::map<std::string, Tolerance> tolerances;
  if (!opts.tolerances_file.empty() && !read_tolerances(opts.tolerances_file, &tolerances)) {
    std::cerr << "error: cannot read tolerance list '" << opts.tolerances_file
              << "' (lines: test_name rtol atol  # reason)\n";
    return 2;
  }
  std::map<std::string, std::string> expected_fail;
  if (!opts.expected_failures_file.empty()) {
    bool ok;
    expected_fail = read_expected_failures(opts.expected_failures_file, &ok);
    if (!ok) {
      std::cerr << "error: cannot read expected-failure list '" << opts.expected_failures_file << "'\n";
      return 2;
    }
  }
  // A folder is a test if it holds model.onnx; otherwise its subfolders are the tests.
  std::vector<fs::path> tests;
  for (const auto& d : opts.dirs) {
    fs::path p(d);
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      std::cerr << "error: '" << d << "' is not a folder\n";
      return 2;
    }
    if (fs::exists(p / "model.onnx")) {
      tests.push_back(p);
      continue;
    }
    std::vector<fs::path> sub;
    for (const auto& e : fs::directory_iterator(p))
      if (e.is_directory() && fs::exists(e.path() / "model.onnx")) sub.push_back(e.path());
    std::sort(sub.begin(), sub.end());
    tests.insert(tests.end(), sub.begin(), sub.end());
  }
  int passed = 0, failed = 0, skipped = 0, unexpected_pass = 0, expected_failed = 0;
  nlohmann::json report = nlohmann::json::array();
  for (const auto& t : tests) {
    std::string name = t.filename().string();
    auto tol = tolerances.find(name);
    TestOutcome r = run_test(t, tol == tolerances.end() ? opts.tol : tol->second, opts.device);
    bool listed = expected_fail.count(name) > 0;
    report.push_back({{"test", name}, {"passed", r.passed}, {"expected_failure", listed},
                      {"max_abs_error", r.max_abs}, {"max_rel_error", r.max_rel}, {"message", r.message}});
    char buf[96];
    std::snprintf(buf, sizeof buf, " (max abs %.3g, max rel %.3g)", r.max_abs, r.max_rel);
    if (r.passed) {
      ++passed;
      if (listed && random_outcome(expected_fail[name])) {
        if (!opts.quiet) std::cout << "PASS " << name << buf << "  (listed as random: passed by chance)\n";
      } else if (listed) {
        ++unexpected_pass;
        std::cout << "PASS " << name << buf << "  [listed as expected failure: remove it from the list]\n";
      } else if (!opts.quiet) {
        std::cout << "PASS " << name << buf << "\n";
      }
    } else if (listed) {
      ++expected_failed;
      ++skipped;
      if (!opts.quiet) std::cout << "SKIP " << name << " (expected failure:" << expected_fail[name] << ")\n";
    } else {
      ++failed;
      std::cout << "FAIL " << name << ": " << r.message << "\n";
    }
  }
  std::cout << passed << " passed, " << failed << " failed, " << skipped << " skipped" << std::endl;
  if (!opts.json_file.empty()) {
    nlohmann::json doc = {{"passed", passed}, {"failed", failed}, {"skipped", skipped},
                          {"folders", opts.dirs}, {"tests", report}};
    std::ofstream out(opts.json_file);
    out << doc.dump(1) << std::endl;
    if (!out) {
      std::cerr << "error: cannot write '" << opts.json_file << "'\n";
      return 2;
    }
  }
  if (unexpected_pass > 0)
    std::cout << unexpected_pass << " listed expected failures passed: update " << opts.expected_failures_file << std::endl;
  return (failed > 0 || unexpected_pass > 0) ? 1 : 0;
}

}  // namespace

void add_check_command(CLI::App& app, Action* run) {
  auto opts = std::make_shared<CheckOptions>();
  CLI::App* cmd = app.add_subcommand("check", "Run ONNX test folders (model.onnx + test_data_set_N) and compare outputs");
  cmd->add_option("dirs", opts->dirs, "Test folders, or folders of test folders")->required();
  cmd->add_option("--rtol", opts->tol.rtol, "Relative tolerance")->capture_default_str();
  cmd->add_option("--atol", opts->tol.atol, "Absolute tolerance")->capture_default_str();
  cmd->add_option("--expected-failures", opts->expected_failures_file,
                  "File of 'test_name: reason' lines: listed failures are skipped, listed passes are errors");
  cmd->add_option("--tolerances", opts->tolerances_file,
                  "File of 'test_name rtol atol  # reason' lines: per-test bounds for reference data that needs them");
  cmd->add_option("--json", opts->json_file, "Also write every result as JSON to this file");
  cmd->add_flag("-q,--quiet", opts->quiet, "Print only failures and the summary");
  cmd->add_option("--device", opts->device, "auto (the GPU where there is one, else the CPU), cuda or cpu")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
  cmd->callback([opts, run] { *run = [opts] { return run_check(*opts); }; });
}

}  // namespace kiln::tools
