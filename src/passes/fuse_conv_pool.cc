// Conv + max pool fusion: a channels-last image stem (kiln.FusedConv) whose output only a 3x3 stride-2 max
// pool (kiln.ChannelsLastPool) reads becomes one kiln.FusedConv with that pool in its attributes (`pool`
// "max", pool_kernel_shape, pool_strides, pool_pads). ResNet's stem writes [N, 112, 112, 64] (411 MB at
// batch 256) that the pool reads back only to keep a quarter of it: the CUDA stem kernel (cuda.conv.stem)
// pools its tile in shared memory instead and writes the [N, 56, 56, 64] result alone.
//
// Only what that kernel runs is fused, so that the fused node never lacks a GPU tactic: the stem's
// conditions (convert_conv_layout pads an image stem to 4 or 8 channels for it: X float16 or bfloat16, W an
// initializer [M, R, S, 4 or 8] with M a multiple of 32 and R, S at most 7, group 1, no dilation, strides of
// at most 2, no residual Z, activation none, Relu, Clip or LeakyRelu) and the pool's (max, 3x3, strides 2,
// pads 1 on every side, no dilation, no ceil_mode, no Indices output).
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// Whether `conv` is a stem the CUDA stem kernel runs (see the top).
bool stem_conv(const ir::Graph& g, const ir::Node& conv) {
  if (!is_kiln(conv, "FusedConv") || int_attr_or(conv, "channels_last", 0) != 1 || conv.attr("pool") != nullptr) return false;
  if (conv.inputs.size() < 2 || conv.outputs.size() != 1 || (conv.inputs.size() > 3 && !conv.inputs[3].empty())) return false;
  const DType xt = dtype_of(g, conv.inputs[0]);
  if (xt != DType::kFloat16 && xt != DType::kBFloat16) return false;
  const Tensor* w = constant_value(g, conv.inputs[1]);
  if (w == nullptr || w->rank() != 4) return false;
  const Shape& ws = w->shape();  // [M, R, S, C]
  if ((ws[3] != 4 && ws[3] != 8) || ws[0] == 0 || !stem_kernel_window(conv, ws[0], ws[1], ws[2])) return false;
  if (int_attr_or(conv, "group", 1) != 1) return false;
  const std::vector<int64_t> strides = ints_attr_or(conv, "strides", {1, 1});
  if (strides.size() != 2 || strides[0] < 1 || strides[0] > 2 || strides[1] < 1 || strides[1] > 2) return false;
  const std::string act = string_attr_or(conv, "activation", "");
  return act.empty() || act == "Relu" || act == "Clip" || act == "LeakyRelu";
}

// Whether `pool` is the 3x3 stride-2 max pool the stem kernel applies (see the top).
bool stem_pool(const ir::Node& pool) {
  if (!is_kiln(pool, "ChannelsLastPool") || string_attr_or(pool, "mode", "") != "max") return false;
  if (pool.inputs.size() != 1 || pool.outputs.size() != 1) return false;
  const std::string auto_pad = string_attr_or(pool, "auto_pad", "NOTSET");
  return ints_attr_or(pool, "kernel_shape", {}) == std::vector<int64_t>{3, 3} &&
         ints_attr_or(pool, "strides", {1, 1}) == std::vector<int64_t>{2, 2} &&
         ints_attr_or(pool, "pads", {0, 0, 0, 0}) == std::vector<int64_t>{1, 1, 1, 1} &&
         ints_attr_or(pool, "dilations", {1, 1}) == std::vector<int64_t>{1, 1} && int_attr_or(pool, "ceil_mode", 0) == 0 &&
         (auto_pad == "NOTSET" || auto_pad.empty());
}

}  // namespace

Status fuse_conv_pool(ir::Model& model, int* fused, std::map<std::string, std::string>* made_from) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& conv = g.nodes[k];
    if (!stem_conv(g, conv)) continue;
    const long p = readers.sole_reader(conv.outputs[0]);  // the pool is the conv output's only reader
    if (p < 0 || absorbed[p] || !stem_pool(g.nodes[p])) continue;
    const ir::Node& pool = g.nodes[p];
    ir::Node f = conv;
    f.attributes["pool"] = string_attribute("max");
    f.attributes["pool_kernel_shape"] = ints_attribute(ints_attr_or(pool, "kernel_shape", {}));
    f.attributes["pool_strides"] = ints_attribute(ints_attr_or(pool, "strides", {}));
    f.attributes["pool_pads"] = ints_attribute(ints_attr_or(pool, "pads", {}));
    f.outputs = pool.outputs;
    f.name = absorb_chain(g, {k, static_cast<size_t>(p)}, absorbed);
    if (made_from != nullptr) (*made_from)[f.name] = conv.name;
    replacement[static_cast<size_t>(p)] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
