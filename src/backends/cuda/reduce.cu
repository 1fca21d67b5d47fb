// CUDA layers: the Reduce ops, ArgMax, ArgMin, CumSum, TopK. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_reduce_layers(LayerTable&) {}

}  // namespace kiln::cuda
