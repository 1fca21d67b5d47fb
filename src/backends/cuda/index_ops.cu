// CUDA layers: Concat, Split, Slice, Gather, GatherElements, Range. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_index_layers(LayerTable&) {}

}  // namespace kiln::cuda
