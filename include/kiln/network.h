#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {

namespace ir {
struct Model;
}

// The model as imported, before optimization: what OnnxParser fills and Builder consumes.
class NetworkDefinition {
 public:
  NetworkDefinition();
  ~NetworkDefinition();
  NetworkDefinition(NetworkDefinition&&) noexcept;
  NetworkDefinition& operator=(NetworkDefinition&&) noexcept;

  bool empty() const;
  int num_inputs() const;
  int num_outputs() const;
  int num_layers() const;
  std::string input_name(int i) const;
  std::string output_name(int i) const;

  // The IR, for Kiln's own builder and tools.
  const ir::Model& model() const { return *model_; }
  ir::Model& model() { return *model_; }

 private:
  std::unique_ptr<ir::Model> model_;
};

}  // namespace kiln
