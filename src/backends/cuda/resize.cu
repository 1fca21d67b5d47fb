// CUDA layers: Resize. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_resize_layers(LayerTable&) {}

}  // namespace kiln::cuda
