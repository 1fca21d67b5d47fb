// CPU reference kernels: sequence ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_sequence_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
