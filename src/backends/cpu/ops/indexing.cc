// CPU reference kernels: indexing ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_indexing_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
