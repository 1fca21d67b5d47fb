// CUDA layers: Softmax and LogSoftmax. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_softmax_layers(LayerTable&) {}

}  // namespace kiln::cuda
