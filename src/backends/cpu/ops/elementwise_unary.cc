// CPU reference kernels: elementwise_unary ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_elementwise_unary_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
