// CUDA layers: MatMul and Gemm through cuBLASLt. (Placeholder while the op family is written.)
#include "backends/cuda/layer.h"

namespace kiln::cuda {

void register_matmul_layers(LayerTable&) {}

}  // namespace kiln::cuda
