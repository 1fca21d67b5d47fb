// CPU reference kernels: image ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_image_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
