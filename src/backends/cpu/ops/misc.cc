// CPU reference kernels: misc ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_misc_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
