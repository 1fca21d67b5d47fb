// CPU reference kernels: rnn ops.
#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

void register_rnn_ops(ir::OpRegistry& r) { (void)r; }

}  // namespace kiln::cpu
