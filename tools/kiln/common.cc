#include "kiln/common.h"

#include <fstream>
#include <iostream>
#include <sstream>

#include "engine/profiles.h"

namespace kiln::tools {

Result<std::map<std::string, Shape>> parse_shapes(const std::string& text, const std::string& flag) {
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
      if (d.empty() || d.find_first_not_of("0123456789") != std::string::npos || d.size() > 12)
        return InvalidArgument(flag + ": dimension '" + d + "' of '" + name + "' is not a non-negative integer");
      shape.push_back(std::stoll(d));
    }
    if (out.count(name)) return InvalidArgument(flag + ": '" + name + "' is given twice");
    out[name] = shape;
  }
  return out;
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
  // One value per occurrence (CLI11 would otherwise let a vector option swallow the model's path).
  cmd->add_option("--min-shapes", f->min_shapes,
                  "Optimization profile minimum shapes, name:1x3x224x224,...; repeat the three flags for more profiles")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--opt-shapes", f->opt_shapes, "Optimization profile shapes to tune for (the k-th makes profile k)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--max-shapes", f->max_shapes, "Optimization profile maximum shapes (the k-th makes profile k)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

namespace {
// The profiles of --min-shapes / --opt-shapes / --max-shapes: the k-th of each make profile k, and the three
// lists of a profile name the same inputs.
Result<std::vector<OptimizationProfile>> parse_profiles(const BuildFlags& f) {
  const size_t n = f.min_shapes.size();
  if (f.opt_shapes.size() != n || f.max_shapes.size() != n)
    return InvalidArgument("optimization profiles: --min-shapes is given " + std::to_string(n) + " times, --opt-shapes " +
                           std::to_string(f.opt_shapes.size()) + ", --max-shapes " +
                           std::to_string(f.max_shapes.size()) + ": give the three once per profile");
  std::vector<OptimizationProfile> profiles;
  for (size_t k = 0; k < n; ++k) {
    const std::string which = "profile " + std::to_string(k);
    KILN_ASSIGN_OR_RETURN(auto min, parse_shapes(f.min_shapes[k], "--min-shapes (" + which + ")"));
    KILN_ASSIGN_OR_RETURN(auto opt, parse_shapes(f.opt_shapes[k], "--opt-shapes (" + which + ")"));
    KILN_ASSIGN_OR_RETURN(auto max, parse_shapes(f.max_shapes[k], "--max-shapes (" + which + ")"));
    const std::vector<std::pair<const char*, const std::map<std::string, Shape>*>> lists = {
        {"--min-shapes", &min}, {"--opt-shapes", &opt}, {"--max-shapes", &max}};
    for (const auto& [flag, list] : lists)
      for (const auto& [other_flag, other] : lists)
        for (const auto& entry : *list)
          if (!other->count(entry.first))
            return InvalidArgument(which + ": input '" + entry.first + "' is in " + flag + " but not in " + other_flag);
    OptimizationProfile p;
    for (const auto& [name, shape] : min) {
      // Checked here first so that the message names the profile ("optimization profile 1: input 'x' ...").
      KILN_RETURN_IF_ERROR(engine::check_profile_range(name, {shape, opt[name], max[name]})
                               .with_context("optimization profile " + std::to_string(k)));
      KILN_RETURN_IF_ERROR(p.set_shape(name, shape, opt[name], max[name]));
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
