#include <cstdio>
#include <iostream>

#include "ir/graph.h"
#include "kiln/kiln.h"
#include "onnx/importer.h"
#include "onnx/tensor_proto.h"

namespace kiln {

const char* version() { return KILN_VERSION; }

void Logger::log(Severity severity, const std::string& message) {
  if (severity > min_severity_) return;
  static const char* names[] = {"error", "warning", "info", "verbose"};
  std::cerr << "kiln " << names[static_cast<int>(severity)] << ": " << message << std::endl;
}

NetworkDefinition::NetworkDefinition() : model_(std::make_unique<ir::Model>()) {}
NetworkDefinition::~NetworkDefinition() = default;
NetworkDefinition::NetworkDefinition(NetworkDefinition&&) noexcept = default;
NetworkDefinition& NetworkDefinition::operator=(NetworkDefinition&&) noexcept = default;

bool NetworkDefinition::empty() const { return model_->graph.nodes.empty() && model_->graph.outputs.empty(); }
int NetworkDefinition::num_inputs() const { return static_cast<int>(model_->graph.inputs.size()); }
int NetworkDefinition::num_outputs() const { return static_cast<int>(model_->graph.outputs.size()); }
int NetworkDefinition::num_layers() const { return static_cast<int>(model_->graph.nodes.size()); }
std::string NetworkDefinition::input_name(int i) const {
  return i >= 0 && i < num_inputs() ? model_->graph.inputs[i].name : "";
}
std::string NetworkDefinition::output_name(int i) const {
  return i >= 0 && i < num_outputs() ? model_->graph.outputs[i].name : "";
}

std::string ParserError::to_string() const {
  std::string where;
  if (!node_name.empty() || !op_type.empty())
    where = "node '" + node_name + "' (" + op_type + ", #" + std::to_string(node_index) + "): ";
  return where + description;
}

namespace {
Status finish_parse(Result<ir::Model> model, const std::vector<onnx_io::ImportError>& import_errors,
                    NetworkDefinition& network, Logger& logger, std::vector<ParserError>& errors) {
  errors.clear();
  for (const auto& e : import_errors) {
    errors.push_back(ParserError{e.code, e.description, e.node_name, e.op_type, e.node_index});
    logger.log(Severity::kError, e.to_string());
  }
  if (!model.ok()) {
    if (errors.empty()) errors.push_back(ParserError{model.status().code(), model.status().message(), "", "", -1});
    return model.status();
  }
  network.model() = std::move(model).value();
  return OkStatus();
}
}  // namespace

Status OnnxParser::parse_from_file(const std::string& path) {
  std::vector<onnx_io::ImportError> import_errors;
  auto model = onnx_io::import_model_file(path, &import_errors);
  return finish_parse(std::move(model), import_errors, network_, logger_, errors_);
}

Status OnnxParser::parse(const void* data, size_t size, const std::string& base_dir) {
  std::vector<onnx_io::ImportError> import_errors;
  auto model = onnx_io::import_model(std::string(static_cast<const char*>(data), size), base_dir, &import_errors);
  return finish_parse(std::move(model), import_errors, network_, logger_, errors_);
}

}  // namespace kiln
