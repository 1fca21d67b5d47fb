// CPU reference kernels: generator ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_generator_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
