// CUDA layers: Reshape, Flatten, Squeeze, Unsqueeze, Identity (views), Transpose, Expand, Tile. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_shape_layers(LayerTable&) {}

}  // namespace kiln::cuda
