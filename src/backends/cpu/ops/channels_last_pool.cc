// CPU reference of the optimizer's kiln.ChannelsLastPool (domain "kiln"; made by convert_conv_layout): an
// ONNX pool on an NHWC tensor, X [N, H, W, C] -> Y [N, OH, OW, C]. `mode` names the pool ("max",
// "average", "global_average", "global_max"); the other attributes are the ONNX pool's own. It is the
// oracle of the CUDA layer and of the pass, so it is the decomposition itself: X is moved to NCHW by the
// Transpose reference, pooled by the registered MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool
// reference, and moved back; the fused op and the graph it replaces then agree bit for bit.
#include <map>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/conv_util.h"

namespace kiln::cpu {
namespace {

// Any ONNX opset from which these pools have all the attributes this op passes on (dilations of
// AveragePool came with 19).
constexpr int kOnnxOpset = 22;

// The ONNX op that each mode stands for; nullptr for an unknown mode.
const char* onnx_pool_of(const std::string& mode) {
  if (mode == "max") return "MaxPool";
  if (mode == "average") return "AveragePool";
  if (mode == "global_average") return "GlobalAveragePool";
  if (mode == "global_max") return "GlobalMaxPool";
  return nullptr;
}

// Runs the registered reference kernel of the ONNX op `op` on x with `attrs`; errors name ctx's node.
Result<Tensor> run_onnx_reference(const KernelContext& ctx, const char* op, const Tensor& x,
                                  std::map<std::string, ir::Attribute> attrs) {
  const ir::OpSchema* schema = ir::OpRegistry::global().find("", op);
  if (schema == nullptr || schema->cpu_kernel == nullptr) return ctx.error(std::string("no ") + op + " reference kernel");
  ir::Node n;
  n.name = ctx.node().name;
  n.index = ctx.node().index;
  n.op_type = op;
  n.inputs = {"x"};
  n.outputs = {"y"};
  n.attributes = std::move(attrs);
  const Value in(x);
  std::vector<Value> out(1);
  ir::KernelContext sub(n, kOnnxOpset, {&in}, &out, {});
  KILN_RETURN_IF_ERROR(schema->cpu_kernel(sub));  // its errors name the node (as `op`) already
  if (!sub.attr_error().empty()) return ctx.error(sub.attr_error());
  return out[0].tensor();
}

Result<Tensor> transpose(const KernelContext& ctx, const Tensor& x, std::vector<int64_t> perm) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInts;
  a.ints = std::move(perm);
  return run_onnx_reference(ctx, "Transpose", x, {{"perm", a}});
}

Status channels_last_pool_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  if (ctx.num_inputs() > 1) return ctx.error("takes 1 input (X), got " + std::to_string(ctx.num_inputs()));
  std::map<std::string, ir::Attribute> attrs = ctx.node().attributes;
  attrs.erase("mode");
  KILN_ASSIGN_OR_RETURN(Tensor y, channels_last_pool(ctx, ctx.input(0), ctx.attr_string("mode", ""), std::move(attrs)));
  ctx.set_output(0, std::move(y));
  return OkStatus();
}

}  // namespace

Result<Tensor> channels_last_pool(const KernelContext& ctx, const Tensor& x, const std::string& mode,
                                  std::map<std::string, ir::Attribute> attrs) {
  const char* op = onnx_pool_of(mode);
  if (op == nullptr)
    return ctx.error("pool mode must be \"max\", \"average\", \"global_average\" or \"global_max\", got \"" + mode + "\"");
  if (x.rank() != 4) return ctx.error("the pool's input must be [N, H, W, C] (rank 4), got " + x.description());
  KILN_ASSIGN_OR_RETURN(Tensor nchw, transpose(ctx, x, {0, 3, 1, 2}));
  KILN_ASSIGN_OR_RETURN(Tensor pooled, run_onnx_reference(ctx, op, nchw, std::move(attrs)));
  return transpose(ctx, pooled, {0, 2, 3, 1});
}

void register_channels_last_pool_ops(ir::OpRegistry& r) {
  ir::OpSchema s;
  s.domain = "kiln";
  s.op_type = "ChannelsLastPool";
  s.since_version = 1;
  s.cpu_kernel = channels_last_pool_kernel;
  r.add(std::move(s));
}

}  // namespace kiln::cpu
