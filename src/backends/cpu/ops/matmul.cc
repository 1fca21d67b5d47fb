// CPU reference kernels: matmul ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_matmul_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
