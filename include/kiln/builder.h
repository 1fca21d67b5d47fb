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

class BuilderConfig {
 public:
  // Fixes an input's shape for the build (its dynamic dimensions become static).
  void set_input_shape(const std::string& name, Shape shape) { input_shapes_[name] = std::move(shape); }
  const std::map<std::string, Shape>& input_shapes() const { return input_shapes_; }
  // "auto" (the default: the GPU where there is one, else the CPU) or "cpu".
  void set_device(std::string device) { device_ = std::move(device); }
  const std::string& device() const { return device_; }
  // 0: no optimization; 3 (default): all passes.
  void set_opt_level(int level) { opt_level_ = level; }
  int opt_level() const { return opt_level_; }

 private:
  std::map<std::string, Shape> input_shapes_;
  std::string device_ = "auto";
  int opt_level_ = 3;
};

class Builder {
 public:
  explicit Builder(Logger& logger) : logger_(logger) {}

  // Optimizes the network for the configured target and returns the serialized engine (.kiln bytes).
  Result<std::vector<uint8_t>> build_serialized_network(const NetworkDefinition& network, const BuilderConfig& config);
  // The same, as a ready engine (no serialization round trip).
  Result<std::shared_ptr<Engine>> build_engine(const NetworkDefinition& network, const BuilderConfig& config);

 private:
  Logger& logger_;
};

}  // namespace kiln
