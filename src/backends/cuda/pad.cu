// CUDA layers: Pad. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_pad_layers(LayerTable&) {}

}  // namespace kiln::cuda
