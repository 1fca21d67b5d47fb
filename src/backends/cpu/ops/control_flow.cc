// CPU reference kernels: control_flow ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_control_flow_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
