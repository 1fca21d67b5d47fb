// ONNX importer: ModelProto -> ir::Model. Checks every node against the op table and reports all
// problems at once (each with its node's name, op type and index), not just the first.
#pragma once

#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/status.h"

namespace onnx {
class ModelProto;
class TypeProto;
}

namespace kiln::onnx_io {

struct ImportError {
  StatusCode code = StatusCode::kInvalidModel;
  std::string description;
  std::string node_name;  // empty when the error is not about one node
  std::string op_type;
  int node_index = -1;
  std::string to_string() const;
};

// Oldest and newest ONNX IR versions and default-domain opsets the importer accepts.
constexpr int64_t kMinIrVersion = 3;
constexpr int64_t kMaxIrVersion = 13;
constexpr int kMinOpset = 1;
constexpr int kMaxOpset = 28;

// Imports a model from memory. `base_dir` locates external data files. On failure, `errors` (if given)
// receives every problem found, and the returned Status summarises them.
Result<ir::Model> import_model(const std::string& bytes, const std::string& base_dir,
                               std::vector<ImportError>* errors = nullptr);
Result<ir::Model> import_model_file(const std::string& path, std::vector<ImportError>* errors = nullptr);
Result<ir::Model> import_model_proto(const onnx::ModelProto& proto, const std::string& base_dir,
                                     std::vector<ImportError>* errors = nullptr);

ir::TypeInfo type_from_proto(const onnx::TypeProto& t);

}  // namespace kiln::onnx_io
