// CPU reference kernels: ml ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_ml_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
