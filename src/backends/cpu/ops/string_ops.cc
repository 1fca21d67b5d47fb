// CPU reference kernels: string_ops ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_string_ops_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
