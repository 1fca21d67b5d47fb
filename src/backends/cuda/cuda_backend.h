// The CUDA backend (backends::Backend on an NVIDIA GPU): device memory through cudaMalloc, copies through
// cudaMemcpy, and the ops of the kernels in this folder (kernels.h).
#pragma once

#include <memory>
#include <string>

#include "backends/backend.h"
#include "kiln/status.h"

namespace kiln::backends {

// Whether a CUDA device can be used here (a driver and at least one GPU).
bool cuda_device_available();
// The CUDA backend on device 0; an error that says why when there is no usable GPU.
Result<std::unique_ptr<Backend>> make_cuda_backend();
// What the backend's supports() answers, from the CUDA layer table alone (no device needed, so the graph of
// a GPU engine can be planned and reviewed without one): "" when a layer runs the node, otherwise why not.
std::string cuda_layer_refusal(const ir::Node& node, const ir::Graph& graph, int opset);
// What supports() and can_lower_precision() answer together, also without a device: whether a layer runs
// the node in float16 / bfloat16 (the optimizer's OptimizeOptions::can_run_in_half for a CUDA target).
bool cuda_runs_in_half(const ir::Model& model, const ir::Node& node);

}  // namespace kiln::backends
