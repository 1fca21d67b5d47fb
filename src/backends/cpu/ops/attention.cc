// CPU reference kernels: attention ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_attention_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
