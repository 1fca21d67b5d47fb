#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/engine.h"
#include "kiln/logger.h"
#include "kiln/network.h"
#include "kiln/status.h"

namespace kiln {

// Min, opt and max shapes per dynamic input, as TensorRT's IOptimizationProfile: an engine built with
// profiles accepts, in a context of profile k, any input shape inside profile k's ranges.
class OptimizationProfile {
 public:
  // Sets an input's range. InvalidArgument, naming the input and the dimension, unless the three shapes
  // have the same rank and 0 <= min <= opt <= max in every dimension.
  Status set_shape(const std::string& input, Shape min, Shape opt, Shape max);
  // Sets a shape-tensor input's range of values (TensorRT's setShapeValues): an int32/int64 input of rank 0
  // or 1 whose values decide shapes (Reshape's target). InvalidArgument, naming the input and the element,
  // unless the three have the same length and min <= opt <= max elementwise. The build checks the input.
  Status set_shape_values(const std::string& input, std::vector<int64_t> min, std::vector<int64_t> opt,
                          std::vector<int64_t> max);
  const std::map<std::string, ProfileShapes>& shapes() const { return shapes_; }

 private:
  std::map<std::string, ProfileShapes> shapes_;
};

class BuilderConfig {
 public:
  // Fixes an input's shape for the build (its dynamic dimensions become static).
  void set_input_shape(const std::string& name, Shape shape) { input_shapes_[name] = std::move(shape); }
  const std::map<std::string, Shape>& input_shapes() const { return input_shapes_; }
  // Adds an optimization profile and returns its index (0, 1, ...). The build checks that every profile
  // names only inputs of the model, agrees with their known dimensions and covers every dynamic input;
  // profiles exclude set_input_shape.
  int add_optimization_profile(OptimizationProfile profile) {
    profiles_.push_back(std::move(profile));
    return static_cast<int>(profiles_.size()) - 1;
  }
  const std::vector<OptimizationProfile>& optimization_profiles() const { return profiles_; }
  // "auto" (the default: the GPU where there is one, else the CPU), "cuda" (an error without a GPU) or "cpu".
  void set_device(std::string device) { device_ = std::move(device); }
  const std::string& device() const { return device_; }
  // 0: no optimization; 3 (default): all passes.
  void set_opt_level(int level) { opt_level_ = level; }
  int opt_level() const { return opt_level_; }

  // Precision. TF32 for float32 GEMMs and convolutions is on by default, as in TensorRT; fp16 / bf16 let
  // the builder run layers in that type where the GPU has a kernel for it.
  void set_tf32(bool on) { tf32_ = on; }
  bool tf32() const { return tf32_; }
  void set_fp16(bool on) { fp16_ = on; }
  bool fp16() const { return fp16_; }
  void set_bf16(bool on) { bf16_ = on; }
  bool bf16() const { return bf16_; }
  // Pins a layer (a node name of the model) to "fp32", "fp16" or "bf16": always honored, or the build fails.
  void set_layer_precision(const std::string& layer, std::string precision) { layer_precisions_[layer] = std::move(precision); }
  const std::map<std::string, std::string>& layer_precisions() const { return layer_precisions_; }
  // Any layer that falls back from the GPU to the CPU makes the build fail.
  void set_strict_gpu(bool on) { strict_gpu_ = on; }
  bool strict_gpu() const { return strict_gpu_; }
  // A timing cache file, read before and written after tactic timing (created when missing).
  void set_timing_cache(std::string path) { timing_cache_ = std::move(path); }
  const std::string& timing_cache() const { return timing_cache_; }

 private:
  std::map<std::string, Shape> input_shapes_;
  std::vector<OptimizationProfile> profiles_;
  std::string device_ = "auto";
  int opt_level_ = 3;
  bool tf32_ = true, fp16_ = false, bf16_ = false, strict_gpu_ = false;
  std::map<std::string, std::string> layer_precisions_;
  std::string timing_cache_;
};

class Builder {
 public:
  explicit Builder(Logger& logger) : logger_(logger) {}

  // Optimizes the network for the configured target and returns the serialized engine (.kiln bytes).
  Result<std::vector<uint8_t>> build_serialized_network(const NetworkDefinition& network, const BuilderConfig& config);
  // The same, as a ready engine (no serialization round trip).
  Result<std::shared_ptr<Engine>> build_engine(const NetworkDefinition& network, const BuilderConfig& config);
  // The optimized graph the build would make, one line per node (`kiln inspect --graph`), planned without a
  // device and without timing tactics: a GPU engine's graph can be reviewed on a machine with no GPU.
  Result<std::string> optimized_graph(const NetworkDefinition& network, const BuilderConfig& config);

 private:
  Logger& logger_;
};

}  // namespace kiln
