#pragma once

#include <string>
#include <vector>

#include "kiln/logger.h"
#include "kiln/network.h"
#include "kiln/status.h"

namespace kiln {

// One problem found while parsing; node fields are empty / -1 when it is not about a node.
struct ParserError {
  StatusCode code = StatusCode::kInvalidModel;
  std::string description;
  std::string node_name;
  std::string op_type;
  int node_index = -1;
  std::string to_string() const;
};

// Fills a NetworkDefinition from an ONNX model. Every unsupported node is reported at once.
class OnnxParser {
 public:
  OnnxParser(NetworkDefinition& network, Logger& logger) : network_(network), logger_(logger) {}

  Status parse_from_file(const std::string& path);
  // `base_dir` is where tensors with external data find their files.
  Status parse(const void* data, size_t size, const std::string& base_dir = ".");

  const std::vector<ParserError>& errors() const { return errors_; }

 private:
  NetworkDefinition& network_;
  Logger& logger_;
  std::vector<ParserError> errors_;
};

}  // namespace kiln
