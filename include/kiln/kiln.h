// Kiln's public C++ API, in one include.
#pragma once

#include "kiln/builder.h"
#include "kiln/dtype.h"
#include "kiln/engine.h"
#include "kiln/logger.h"
#include "kiln/network.h"
#include "kiln/onnx_parser.h"
#include "kiln/runtime.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {
// The library's version, "major.minor.patch".
const char* version();
}  // namespace kiln
