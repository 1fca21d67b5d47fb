// A Logger that drops every message: tests that build engines check results, not the build's log.
#pragma once

#include <string>

#include "kiln/logger.h"

namespace kiln::testing {

class QuietLogger : public Logger {
 public:
  void log(Severity, const std::string&) override {}
};

}  // namespace kiln::testing
