// CUDA layers: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_pool_layers(LayerTable&) {}

}  // namespace kiln::cuda
