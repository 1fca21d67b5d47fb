// The one table of ops: every op family registers its ops here, in one place (DESIGN.md principle 2).
// Each family lives in src/backends/cpu/ops/<family>.cc and defines register_<family>_ops.
#include "ir/op_registry.h"

namespace kiln::cpu {
void register_elementwise_unary_ops(ir::OpRegistry& r);
void register_elementwise_binary_ops(ir::OpRegistry& r);
void register_activation_ops(ir::OpRegistry& r);
void register_logical_ops(ir::OpRegistry& r);
void register_cast_ops_ops(ir::OpRegistry& r);
void register_shape_ops_ops(ir::OpRegistry& r);
void register_movement_ops(ir::OpRegistry& r);
void register_indexing_ops(ir::OpRegistry& r);
void register_sort_scan_ops(ir::OpRegistry& r);
void register_generator_ops(ir::OpRegistry& r);
void register_conv_ops(ir::OpRegistry& r);
void register_fused_conv_ops(ir::OpRegistry& r);
void register_pool_ops(ir::OpRegistry& r);
void register_channels_last_pool_ops(ir::OpRegistry& r);
void register_relayout_ops(ir::OpRegistry& r);
void register_write_channels_ops(ir::OpRegistry& r);
void register_pointwise_ops(ir::OpRegistry& r);
void register_normalization_ops(ir::OpRegistry& r);
void register_softmax_ops(ir::OpRegistry& r);
void register_matmul_ops(ir::OpRegistry& r);
void register_fused_matmul_ops(ir::OpRegistry& r);
void register_fused_attention_ops(ir::OpRegistry& r);
void register_reduce_ops(ir::OpRegistry& r);
void register_control_flow_ops(ir::OpRegistry& r);
void register_sequence_ops(ir::OpRegistry& r);
void register_rnn_ops(ir::OpRegistry& r);
void register_resize_ops(ir::OpRegistry& r);
void register_image_ops(ir::OpRegistry& r);
void register_signal_ops(ir::OpRegistry& r);
void register_quantize_ops(ir::OpRegistry& r);
void register_attention_ops(ir::OpRegistry& r);
void register_loss_ops(ir::OpRegistry& r);
void register_string_ops_ops(ir::OpRegistry& r);
void register_ml_ops(ir::OpRegistry& r);
void register_training_ops(ir::OpRegistry& r);
void register_misc_ops(ir::OpRegistry& r);
}  // namespace kiln::cpu

namespace kiln::ir {

void register_all_ops(OpRegistry& r) {
  struct Family {
    const char* name;
    void (*fn)(OpRegistry&);
  };
  const Family families[] = {
      {"elementwise_unary", cpu::register_elementwise_unary_ops},
      {"elementwise_binary", cpu::register_elementwise_binary_ops},
      {"activation", cpu::register_activation_ops},
      {"logical", cpu::register_logical_ops},
      {"cast_ops", cpu::register_cast_ops_ops},
      {"shape_ops", cpu::register_shape_ops_ops},
      {"movement", cpu::register_movement_ops},
      {"indexing", cpu::register_indexing_ops},
      {"sort_scan", cpu::register_sort_scan_ops},
      {"generator", cpu::register_generator_ops},
      {"conv", cpu::register_conv_ops},
      {"fused_conv", cpu::register_fused_conv_ops},
      {"pool", cpu::register_pool_ops},
      {"channels_last_pool", cpu::register_channels_last_pool_ops},
      {"relayout", cpu::register_relayout_ops},
      {"write_channels", cpu::register_write_channels_ops},
      {"pointwise", cpu::register_pointwise_ops},
      {"normalization", cpu::register_normalization_ops},
      {"softmax", cpu::register_softmax_ops},
      {"matmul", cpu::register_matmul_ops},
      {"fused_matmul", cpu::register_fused_matmul_ops},
      {"fused_attention", cpu::register_fused_attention_ops},
      {"reduce", cpu::register_reduce_ops},
      {"control_flow", cpu::register_control_flow_ops},
      {"sequence", cpu::register_sequence_ops},
      {"rnn", cpu::register_rnn_ops},
      {"resize", cpu::register_resize_ops},
      {"image", cpu::register_image_ops},
      {"signal", cpu::register_signal_ops},
      {"quantize", cpu::register_quantize_ops},
      {"attention", cpu::register_attention_ops},
      {"loss", cpu::register_loss_ops},
      {"string_ops", cpu::register_string_ops_ops},
      {"ml", cpu::register_ml_ops},
      {"training", cpu::register_training_ops},
      {"misc", cpu::register_misc_ops},
  };
  for (const Family& f : families) {
    r.current_family = f.name;
    f.fn(r);
  }
  r.current_family.clear();
}

}  // namespace kiln::ir
