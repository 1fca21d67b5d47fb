#include "kiln/common.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <tuple>

#include "engine/profiles.h"

namespace kiln::tools {

namespace {
// "name:AxB,..." into lists of integers; shape-tensor values (allow_negative) may be negative (Reshape's -1).
Result<std::map<std::string, Shape>> parse_lists(const std::string& text, const std::string& flag,
                                                 bool allow_negative) {
  std::map<std::string, Shape> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == item.size())
      return InvalidArgument(flag + ": '" + item + "' is not NAME:DxDxD (e.g. input:1x3x224x224)");
    std::string name = item.substr(0, colon);
    Shape shape;
    std::stringstream dims(item.substr(colon + 1));
    std::string d;
    while (std::getline(dims, d, 'x')) {
      const std::string digits = allow_negative && d.size() > 1 && d[0] == '-' ? d.substr(1) : d;
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 12)
        return InvalidArgument(flag + ": " + (allow_negative ? "value '" : "dimension '") + d + "' of '" + name +
                               "' is not " + (allow_negative ? "an integer" : "a non-negative integer"));
      shape.push_back(std::stoll(d));
    }
    if (out.count(name)) return InvalidArgument(flag + ": '" + name + "' is given twice");
    out[name] = shape;
  }
  return out;
}
}  // namespace

Result<std::map<std::string, Shape>> parse_shapes(const std::string& text, const std::string& flag) {
  return parse_lists(text, flag, /*allow_negative=*/false);
}

void add_build_flags(CLI::App* cmd, BuildFlags* f) {
  cmd->add_option("--shapes", f->shapes, "Fixed input shapes: name:1x3x224x224,...");
  cmd->add_option("--device", f->device, "auto (the GPU where there is one, else the CPU), cuda or cpu")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
  cmd->add_option("--opt-level", f->opt_level, "Optimization level 0-3")->capture_default_str()->check(CLI::Range(0, 3));
  cmd->add_flag("--fp16", f->fp16, "Let the builder run layers in float16 where the GPU has a kernel");
  cmd->add_flag("--bf16", f->bf16, "Let the builder run layers in bfloat16 where the GPU has a kernel");
  cmd->add_flag("--no-tf32", f->no_tf32, "Keep float32 GEMMs and convolutions off TF32 tensor cores");
  cmd->add_option("--layer-precision", f->layer_precisions,
                  "NAME:fp32|fp16|bf16, pins a layer's precision (always honored); repeatable");
  cmd->add_flag("--strict-gpu", f->strict_gpu, "Fail the build if any layer would fall back to the CPU");
  cmd->add_option("--timing-cache", f->timing_cache, "Tactic timing cache file (read, then updated)");
  // Profile flags, one value per occurrence (CLI11 would otherwise let a vector option swallow the model's
  // path); the k-th of each kind makes (or joins) profile k.
  const std::tuple<const char*, std::vector<std::string>*, const char*> profile_flags[] = {
      {"--min-shapes", &f->min_shapes,
       "Optimization profile minimum shapes, name:1x3x224x224,...; repeat the three flags for more profiles"},
      {"--opt-shapes", &f->opt_shapes, "Optimization profile shapes to tune for (the k-th makes profile k)"},
      {"--max-shapes", &f->max_shapes, "Optimization profile maximum shapes (the k-th makes profile k)"},
      {"--min-values", &f->min_values,
       "Optimization profile minimum values of shape-tensor inputs, name:1x6,... (the k-th joins profile k)"},
      {"--opt-values", &f->opt_values, "Shape-tensor values to tune for (the k-th joins profile k)"},
      {"--max-values", &f->max_values, "Shape-tensor maximum values (the k-th joins profile k)"}};
  for (const auto& [name, values, help] : profile_flags)
    cmd->add_option(name, *values, help)->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

namespace {
// One kind of profile flags: --min-X / --opt-X / --max-X, given the same number of times; the k-th of each
// joins profile k, and the three of a profile name the same inputs.
struct ProfileFlags {
  const char* kind;  // "shapes" or "values"
  const std::vector<std::string>* lists[3];  // min, opt, max
};

// Profile k's min/opt/max of one kind (empty when the flags are given fewer times).
Result<std::map<std::string, ProfileShapes>> parse_profile_flags(const ProfileFlags& f, size_t k) {
  std::map<std::string, ProfileShapes> out;
  if (k >= f.lists[0]->size()) return out;
  const std::string which = "profile " + std::to_string(k);
  const std::string flags[3] = {std::string("--min-") + f.kind, std::string("--opt-") + f.kind,
                                std::string("--max-") + f.kind};
  const bool values = std::string(f.kind) == "values";
  std::map<std::string, Shape> at[3];
  for (int i = 0; i < 3; ++i) {
    KILN_ASSIGN_OR_RETURN(at[i], parse_lists((*f.lists[i])[k], flags[i] + " (" + which + ")", values));
  }
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (const auto& entry : at[i])
        if (!at[j].count(entry.first))
          return InvalidArgument(which + ": input '" + entry.first + "' is in " + flags[i] + " but not in " + flags[j]);
  for (const auto& [name, min] : at[0]) {
    const ProfileShapes range{min, at[1][name], at[2][name], values};
    // Checked here first so that the message names the profile ("optimization profile 1: input 'x' ...").
    KILN_RETURN_IF_ERROR(
        engine::check_profile_range(name, range).with_context("optimization profile " + std::to_string(k)));
    out[name] = range;
  }
  return out;
}

// The profiles of --min-shapes / --opt-shapes / --max-shapes and of --min-values / --opt-values /
// --max-values (shape tensors' values): the k-th of each joins profile k.
Result<std::vector<OptimizationProfile>> parse_profiles(const BuildFlags& f) {
  const ProfileFlags kinds[2] = {{"shapes", {&f.min_shapes, &f.opt_shapes, &f.max_shapes}},
                                 {"values", {&f.min_values, &f.opt_values, &f.max_values}}};
  size_t n = 0;
  for (const ProfileFlags& kind : kinds) {
    const size_t count = kind.lists[0]->size();
    if (kind.lists[1]->size() != count || kind.lists[2]->size() != count)
      return InvalidArgument(std::string("optimization profiles: --min-") + kind.kind + " is given " +
                             std::to_string(count) + " times, --opt-" + kind.kind + " " +
                             std::to_string(kind.lists[1]->size()) + ", --max-" + kind.kind + " " +
                             std::to_string(kind.lists[2]->size()) + ": give the three once per profile");
    n = std::max(n, count);
  }
  std::vector<OptimizationProfile> profiles;
  for (size_t k = 0; k < n; ++k) {
    OptimizationProfile p;
    KILN_ASSIGN_OR_RETURN(const auto shapes, parse_profile_flags(kinds[0], k));
    KILN_ASSIGN_OR_RETURN(const auto values, parse_profile_flags(kinds[1], k));
    for (const auto& [name, r] : shapes) KILN_RETURN_IF_ERROR(p.set_shape(name, r.min, r.opt, r.max));
    for (const auto& [name, r] : values) {
      if (shapes.count(name))
        return InvalidArgument("profile " + std::to_string(k) + ": input '" + name +
                               "' is given both shapes and values (a shape tensor's shape is static)");
      KILN_RETURN_IF_ERROR(p.set_shape_values(name, r.min, r.opt, r.max));
    }
    profiles.push_back(std::move(p));
  }
  return profiles;
}
}  // namespace

Result<BuilderConfig> make_builder_config(const BuildFlags& f, bool shapes_run_in_profile) {
  BuilderConfig config;
  config.set_device(f.device);
  config.set_opt_level(f.opt_level);
  config.set_fp16(f.fp16);
  config.set_bf16(f.bf16);
  config.set_tf32(!f.no_tf32);
  config.set_strict_gpu(f.strict_gpu);
  config.set_timing_cache(f.timing_cache);
  for (const auto& lp : f.layer_precisions) {
    const size_t colon = lp.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == lp.size())
      return InvalidArgument("--layer-precision '" + lp + "' is not NAME:fp32|fp16|bf16");
    const std::string p = lp.substr(colon + 1);
    if (p != "fp32" && p != "fp16" && p != "bf16")
      return InvalidArgument("--layer-precision '" + lp + "': precision '" + p + "' is not fp32, fp16 or bf16");
    config.set_layer_precision(lp.substr(0, colon), p);
  }
  KILN_ASSIGN_OR_RETURN(const auto profiles, parse_profiles(f));
  for (const auto& p : profiles) config.add_optimization_profile(p);
  if (!f.shapes.empty()) {
    KILN_ASSIGN_OR_RETURN(auto shapes, parse_shapes(f.shapes));
    if (profiles.empty() || !shapes_run_in_profile)
      for (const auto& [name, s] : shapes) config.set_input_shape(name, s);
  }
  return config;
}

bool is_engine_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[8] = {};
  f.read(magic, 8);
  return std::string(magic, 7) == "KILNENG";
}

Result<std::shared_ptr<Engine>> load_or_build(const std::string& path, const BuilderConfig& config, Logger& logger) {
  if (!std::ifstream(path, std::ios::binary)) return IoError("cannot open '" + path + "'");
  if (is_engine_file(path)) {
    Runtime runtime(logger);
    return runtime.deserialize_engine_file(path);
  }
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  KILN_RETURN_IF_ERROR(parser.parse_from_file(path));
  Builder builder(logger);
  return builder.build_engine(network, config);
}

int report(const Status& st) {
  std::cerr << "error: " << st.to_string() << std::endl;
  return 1;
}

}  // namespace kiln::tools
