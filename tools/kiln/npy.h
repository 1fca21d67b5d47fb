// NumPy .npy files (format version 1.0-3.0, little-endian, C order) <-> Tensor.
#pragma once

#include <string>

#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln::tools {

Result<Tensor> read_npy(const std::string& path);
Status write_npy(const Tensor& t, const std::string& path);

}  // namespace kiln::tools
