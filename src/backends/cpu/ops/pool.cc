// CPU reference kernels: pool ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_pool_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
