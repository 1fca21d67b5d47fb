// CPU reference kernels: elementwise_binary ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_elementwise_binary_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
