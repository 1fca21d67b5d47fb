// CUDA layers: unary ops and activations, broadcasting binary ops, Where and Cast (kernels in elementwise.cu).
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_elementwise_layers(LayerTable&) {}

}  // namespace kiln::cuda
