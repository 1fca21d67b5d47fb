#pragma once

#include <string>

namespace kiln {

enum class Severity { kError = 0, kWarning = 1, kInfo = 2, kVerbose = 3 };

// Receives Kiln's diagnostics. The default writes messages at or above its minimum severity to stderr;
// derive from it to route them elsewhere (as with TensorRT's ILogger).
class Logger {
 public:
  explicit Logger(Severity min_severity = Severity::kWarning) : min_severity_(min_severity) {}
  virtual ~Logger() = default;
  virtual void log(Severity severity, const std::string& message);
  void set_min_severity(Severity s) { min_severity_ = s; }
  Severity min_severity() const { return min_severity_; }

 private:
  Severity min_severity_;
};

}  // namespace kiln
