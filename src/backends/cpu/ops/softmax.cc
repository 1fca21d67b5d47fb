// CPU reference kernels: softmax ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_softmax_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
