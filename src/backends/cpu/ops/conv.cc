// CPU reference kernels: conv ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_conv_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
