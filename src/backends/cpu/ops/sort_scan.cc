// CPU reference kernels: sort_scan ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_sort_scan_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
