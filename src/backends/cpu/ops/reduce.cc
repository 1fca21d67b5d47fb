// CPU reference kernels: reduce ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_reduce_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
