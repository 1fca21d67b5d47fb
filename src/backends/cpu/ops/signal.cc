// CPU reference kernels: signal ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_signal_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
