// CUDA layers: Conv and ConvTranspose through cuDNN. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_conv_layers(LayerTable&) {}

}  // namespace kiln::cuda
