// CPU reference kernels: quantize ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_quantize_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
