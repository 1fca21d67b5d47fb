// CPU reference kernels: normalization ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_normalization_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
