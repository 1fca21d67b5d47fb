// CUDA layers: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_normalization_layers(LayerTable&) {}

}  // namespace kiln::cuda
