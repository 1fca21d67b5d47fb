// CPU reference kernels: movement ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_movement_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
