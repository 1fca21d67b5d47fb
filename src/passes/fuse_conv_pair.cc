// Conv pair fusion: a channels-last 1x1 kiln.FusedConv P and a 1x1 kiln.FusedConv Q reading P's output as
// its X become one kiln.FusedConvPair computing both. In a ResNet bottleneck P is a block's last conv (with
// its residual and Relu) and Q the next block's first: apart, P writes Y ([N, 56, 56, 256] at ResNet-50's
// layer1, 411 MB at batch 256) and Q reads all of it back. The CUDA kernel (cuda.conv.pair) runs Q's GEMM on
// each tile of Y while it is still in shared memory: Y is still written (the next residual reads it), never
// read back.
//
// Only what that kernel runs is fused, so that the fused node never lacks a GPU tactic: X float16 or bfloat16;
// both convs channels-last, no pool, 1x1 (weights initializers [C, 1, 1, K] of X's dtype), stride 1, no
// padding, dilation 1, one group; biases absent or initializers; activations none or Relu; Q without a
// residual (P may have one, any tensor); channel counts that conv_pair_fits accepts. P's output may have other
// readers and may be a graph output: the pair writes it. The fused node takes P's place: its inputs are
// P's (computed by then) and Q's initializers, and every reader of either output comes after P.
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// The attribute `name` absent, or of type ints and equal to `want`.
bool ints_absent_or(const ir::Node& n, const char* name, const std::vector<int64_t>& want) {
  const ir::Attribute* a = n.attr(name);
  return a == nullptr || (a->type == ir::Attribute::Type::kInts && a->ints == want);
}

// The initializer `name` (not a graph input, so fixed at build time); null when it is anything else. An
// initializer rather than any constant: the fused node takes P's place, before a Constant node that Q reads
// could come.
const Tensor* initializer(const ir::Graph& g, const std::string& name) {
  return g.initializers.count(name) ? constant_value(g, name) : nullptr;
}

// What the pair needs of either conv: its weights [C, 1, 1, K] of dtype `dt` (returned) and its bias
// (*bias, null when absent), or null when `n` is not a conv the kernel runs (see the top). Z is left to the
// caller.
const Tensor* pair_half(const ir::Graph& g, const ir::Node& n, DType dt, const Tensor** bias) {
  if (!is_kiln(n, "FusedConv") || n.outputs.size() != 1 || n.outputs[0].empty()) return nullptr;
  if (n.inputs.size() < 2 || n.inputs.size() > 4 || n.attr("pool") != nullptr) return nullptr;
  const ir::Attribute* cl = n.attr("channels_last");
  if (cl == nullptr || cl->type != ir::Attribute::Type::kInt || cl->i != 1) return nullptr;
  if (known_rank(g, n.inputs[0]) != 4 || dtype_of(g, n.inputs[0]) != dt) return nullptr;
  const ir::Attribute* act = n.attr("activation");
  if (act != nullptr && (act->type != ir::Attribute::Type::kString || (!act->s.empty() && act->s != "Relu"))) return nullptr;
  if (!ints_absent_or(n, "kernel_shape", {1, 1}) || !ints_absent_or(n, "strides", {1, 1}) ||
      !ints_absent_or(n, "pads", {0, 0, 0, 0}) || !ints_absent_or(n, "dilations", {1, 1}))
    return nullptr;
  if (const ir::Attribute* group = n.attr("group"); group != nullptr && (group->type != ir::Attribute::Type::kInt || group->i != 1))
    return nullptr;
  if (const ir::Attribute* ap = n.attr("auto_pad");
      ap != nullptr && (ap->type != ir::Attribute::Type::kString || (!ap->s.empty() && ap->s != "NOTSET")))
    return nullptr;
  const Tensor* w = initializer(g, n.inputs[1]);
  if (w == nullptr || w->dtype() != dt || w->rank() != 4 || w->dim(1) != 1 || w->dim(2) != 1) return nullptr;
  std::vector<ir::Dim> xd;
  if (!dims_of(g, n.inputs[0], &xd) || (xd[3].known() && xd[3].value != w->dim(3))) return nullptr;
  *bias = nullptr;
  if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
    *bias = initializer(g, n.inputs[2]);
    if (*bias == nullptr || (*bias)->dtype() != dt || (*bias)->shape() != Shape{w->dim(0)}) return nullptr;
  }
  return w;
}

std::string input_or_none(const ir::Node& n, size_t i) { return i < n.inputs.size() ? n.inputs[i] : ""; }

}  // namespace

Status fuse_conv_pair(ir::Model& model, int* fused, std::map<std::string, std::string>* made_from) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;
  for (size_t p = 0; p < g.nodes.size(); ++p) {
    const ir::Node& pn = g.nodes[p];
    if (absorbed[p] || pn.inputs.empty()) continue;
    const DType dt = dtype_of(g, pn.inputs[0]);
    if (dt != DType::kFloat16 && dt != DType::kBFloat16) continue;
    const Tensor* b = nullptr;
    const Tensor* w = pair_half(g, pn, dt, &b);
    if (w == nullptr) continue;
    // The first reader that reads Y as its X and qualifies: each P is fused once, with one Q.
    for (size_t q : readers.readers(pn.outputs[0])) {
      const ir::Node& qn = g.nodes[q];
      if (absorbed[q] || q <= p || qn.inputs.empty() || qn.inputs[0] != pn.outputs[0]) continue;
      if (!input_or_none(qn, 3).empty()) continue;  // a residual: the kernel has none for Q
      const Tensor* b2 = nullptr;
      const Tensor* w2 = pair_half(g, qn, dt, &b2);
      if (w2 == nullptr || w2->dim(3) != w->dim(0) || !conv_pair_fits(w->dim(3), w->dim(0), w2->dim(0))) continue;
      ir::Node f;
      f.name = pn.name + " + " + qn.name;  // answers to both layers' names (--layer-precision, kiln inspect)
      f.domain = "kiln";
      f.op_type = "FusedConvPair";
      f.index = pn.index;
      f.inputs = {pn.inputs[0], pn.inputs[1], input_or_none(pn, 2), input_or_none(pn, 3), qn.inputs[1],
                  input_or_none(qn, 2)};
      f.outputs = {pn.outputs[0], qn.outputs[0]};
      f.attributes["activation"] = string_attribute(string_attr_or(pn, "activation", ""));
      f.attributes["second_activation"] = string_attribute(string_attr_or(qn, "activation", ""));
      if (made_from != nullptr) (*made_from)[f.name] = pn.name;
      absorbed[p] = absorbed[q] = true;
      replacement[p] = std::move(f);
      break;
    }
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
