// CPU reference kernels: activation ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_activation_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
