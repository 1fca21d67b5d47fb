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
//
// Where P reads a channel Concat(A, B) (fold_projection_shortcut's, at ResNet-50's layer1.0: conv2's output
// and the pooled stem, 64 channels each) read by P alone, the pair takes A as X and B as its input X2 and the
// Concat goes: the kernel loads X's tile from both, and the 205 MB (at batch 256) the Concat wrote and the
// pair read back are not moved at all. Only where that kernel's loads line up: two inputs of P's dtype, 4-D,
// the same N, H and W, each a known multiple of 8 channels (its 16-byte pieces).
#include <algorithm>
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

// The position of the Concat whose output is P's X (c0 channels of dtype dt) and that the pair can absorb
// (see the top), or -1.
long absorbable_concat(const ir::Graph& g, const GraphReaders& readers, size_t p, DType dt, int64_t c0) {
  const ir::Node& pn = g.nodes[p];
  const std::string& x = pn.inputs[0];
  const long c = readers.producer(x);
  if (c < 0 || readers.sole_reader(x) != static_cast<long>(p)) return -1;  // also: not a graph output
  for (size_t i = 1; i < pn.inputs.size(); ++i)
    if (pn.inputs[i] == x) return -1;  // P reads it as its Z too: it must stay
  const ir::Node& cat = g.nodes[static_cast<size_t>(c)];
  if (!is_onnx(cat, "Concat") || cat.inputs.size() != 2 || cat.outputs.size() != 1) return -1;
  const ir::Attribute* axis = cat.attr("axis");
  if (axis == nullptr || axis->type != ir::Attribute::Type::kInt || (axis->i != 3 && axis->i != -1)) return -1;
  std::vector<ir::Dim> a, b;
  for (const std::string& in : cat.inputs)
    if (in.empty() || dtype_of(g, in) != dt) return -1;
  if (!dims_of(g, cat.inputs[0], &a) || !dims_of(g, cat.inputs[1], &b) || a.size() != 4 || b.size() != 4) return -1;
  for (size_t i = 0; i < 3; ++i)
    if (!same_dim(a[i], b[i])) return -1;
  for (const ir::Dim& d : {a[3], b[3]})
    if (!d.known() || d.value <= 0 || d.value % 8 != 0) return -1;
  return a[3].value + b[3].value == c0 ? c : -1;
}

// `name` with the parts of `more` ("a + b + c") that it lacks appended: each layer named once. The Concat
// fold_projection_shortcut makes is named after the conv it feeds ("<P's> shortcut concat"), whose parts
// P's name already has.
std::string with_parts_of(std::string name, const std::string& more) {
  const std::vector<std::string> have = name_parts(name);
  for (const std::string& part : name_parts(more))
    if (std::find(have.begin(), have.end(), part) == have.end()) name += " + " + part;
  return name;
}

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
      if (const long c = absorbable_concat(g, readers, p, dt, w->dim(3)); c >= 0 && !absorbed[c]) {
        const ir::Node& cat = g.nodes[static_cast<size_t>(c)];
        // Its name too, after P's (the fused node is still P's layer first).
        f.name = with_parts_of(pn.name, cat.name) + " + " + qn.name;
        f.inputs[0] = cat.inputs[0];
        f.inputs.push_back(cat.inputs[1]);  // X2
        g.value_types.erase(cat.outputs[0]);
        absorbed[c] = true;
      }
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
