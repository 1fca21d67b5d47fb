// CPU reference kernels: logical ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_logical_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
