#pragma once

#include <memory>
#include <string>

#include "kiln/engine.h"
#include "kiln/logger.h"
#include "kiln/status.h"

namespace kiln {

// Loads engines from .kiln bytes.
class Runtime {
 public:
  explicit Runtime(Logger& logger) : logger_(logger) {}
  Result<std::shared_ptr<Engine>> deserialize_engine(const void* data, size_t size);
  Result<std::shared_ptr<Engine>> deserialize_engine_file(const std::string& path);

 private:
  Logger& logger_;
};

}  // namespace kiln
