// Relayout fusion: a chain of Cast (float to float), Transpose and Pad (constant mode, zeros) nodes becomes one
// kiln.Relayout, Y = Pad(Cast(Transpose(X, perm), to), pads). ResNet-50's float32 input goes through three of
// them before its channels-last stem conv (lower_precision's Cast to float16, convert_conv_layout's Transpose to
// NHWC and its Pad of the channels 3 -> 8): three kernels that each read and write the whole image batch become
// one that reads it once and writes the padded NHWC copy once.
//
// The links compose in any order: a Cast commutes with the moves (it is elementwise, and a zero pad is zero in
// every float type), a Transpose after a Pad moves the pads with the axes, and two Transposes, or two Pads,
// compose into one. A chain holds at most one Cast, since two are not one conversion (float32 -> float16 ->
// float32 rounds). Each link is the sole reader of the value before it, which is no graph output.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "backends/relayout_spec.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// The dtypes the CUDA layer converts between (float64 would leave the chain on the GPU for a CPU op).
bool chain_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

// What the links so far do to the chain's input: Y = Pad(Cast(Transpose(X, perm), to), pads).
struct Relayout {
  std::vector<int64_t> perm, pads;
  DType to = DType::kUndefined;
  bool cast = false;
};

class Composer {
 public:
  Composer(const ir::Graph& g, int opset) : g_(g), opset_(opset) {}

  // Applies node n, reading the chain's current value as its data input, to *r; false when n is no link the
  // chain can take.
  bool apply(const ir::Node& n, Relayout* r) const {
    if (n.outputs.size() != 1 || n.inputs.empty()) return false;
    if (is_onnx(n, "Cast")) return n.inputs.size() == 1 && cast(n, r);
    if (is_onnx(n, "Transpose")) return n.inputs.size() == 1 && transpose(n, r);
    if (is_onnx(n, "Pad")) return pad(n, r);
    return false;
  }

 private:
  bool cast(const ir::Node& n, Relayout* r) const {
    const ir::Attribute* to = n.attr("to");
    if (r->cast || to == nullptr || to->type != ir::Attribute::Type::kInt) return false;
    const DType t = static_cast<DType>(to->i);
    if (!chain_dtype(t)) return false;
    r->to = t;
    r->cast = true;
    return true;
  }

  // Y[i] = X'[q[i]] with X' = Pad(Cast(Transpose(X, perm))): the pads move with their axes.
  bool transpose(const ir::Node& n, Relayout* r) const {
    const size_t rank = r->perm.size();
    const ir::Attribute* a = n.attr("perm");
    std::vector<int64_t> q;
    if (a == nullptr) {
      for (size_t i = rank; i-- > 0;) q.push_back(static_cast<int64_t>(i));
    } else {
      if (a->type != ir::Attribute::Type::kInts || a->ints.size() != rank) return false;
      q = a->ints;
    }
    std::vector<bool> seen(rank, false);
    for (int64_t p : q) {
      if (p < 0 || p >= static_cast<int64_t>(rank) || seen[p]) return false;
      seen[p] = true;
    }
    Relayout out = *r;
    for (size_t i = 0; i < rank; ++i) {
      out.perm[i] = r->perm[q[i]];
      out.pads[i] = r->pads[q[i]];
      out.pads[rank + i] = r->pads[rank + q[i]];
    }
    *r = std::move(out);
    return true;
  }

  // Constant mode, a zero (or absent) value, constant non-negative pads (over the given constant axes).
  bool pad(const ir::Node& n, Relayout* r) const {
    const int64_t rank = static_cast<int64_t>(r->perm.size());
    const ir::Attribute* mode = n.attr("mode");
    if (mode != nullptr && (mode->type != ir::Attribute::Type::kString || mode->s != "constant")) return false;
    std::vector<int64_t> pads, axes;
    if (opset_ < 11) {
      const ir::Attribute* p = n.attr("pads");
      const ir::Attribute* v = n.attr("value");
      if (n.inputs.size() != 1 || p == nullptr || p->type != ir::Attribute::Type::kInts) return false;
      if (v != nullptr && (v->type != ir::Attribute::Type::kFloat || v->f != 0.0f || std::signbit(v->f))) return false;
      pads = p->ints;
    } else {
      const Tensor* p = n.inputs.size() > 1 ? constant_value(g_, n.inputs[1]) : nullptr;
      if (p == nullptr || !dtype_is_integer(p->dtype()) || p->rank() != 1) return false;
      pads = p->to_int64_vector();
      if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
        const Tensor* v = constant_value(g_, n.inputs[2]);
        if (v == nullptr || v->numel() != 1 || !dtype_is_float(v->dtype())) return false;
        const double value = v->scalar_as_double(0);
        if (value != 0.0 || std::signbit(value)) return false;  // -0.0 pads with -0.0, not the op's +0.0
      }
      if (n.inputs.size() > 3 && !n.inputs[3].empty()) {
        const Tensor* a = constant_value(g_, n.inputs[3]);
        if (a == nullptr || !dtype_is_integer(a->dtype()) || a->rank() != 1) return false;
        axes = a->to_int64_vector();
      }
      if (n.inputs.size() > 4) return false;
      for (size_t i = 1; i < n.inputs.size(); ++i)
        if (n.inputs[i] == n.inputs[0]) return false;
    }
    if (axes.empty())
      for (int64_t i = 0; i < rank; ++i) axes.push_back(i);
    if (pads.size() != 2 * axes.size()) return false;
    std::vector<bool> seen(static_cast<size_t>(rank), false);
    Relayout out = *r;
    for (size_t i = 0; i < axes.size(); ++i) {
      const int64_t axis = axes[i] < 0 ? axes[i] + rank : axes[i];
      if (axis < 0 || axis >= rank || seen[axis]) return false;
      seen[axis] = true;
      const int64_t begin = pads[i], end = pads[axes.size() + i];
      if (begin < 0 || end < 0) return false;  // a negative pad crops
      out.pads[axis] += begin;
      out.pads[rank + axis] += end;
    }
    *r = std::move(out);
    return true;
  }

  const ir::Graph& g_;
  const int opset_;
};

}  // namespace

Status fuse_relayout(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  if (fused) *fused = 0;
  const GraphReaders readers(g);
  const Composer composer(g, model.default_opset());

  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the chain's last node -> the fused node
  // Graph order: a chain's first link is met before the others, and the chain grows from it along sole readers.
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (absorbed[k] || g.nodes[k].inputs.empty()) continue;
    const std::string& x = g.nodes[k].inputs[0];
    const int64_t rank = known_rank(g, x);
    const DType dtype = dtype_of(g, x);
    if (rank < 1 || rank > kRelayoutMaxRank || !chain_dtype(dtype)) continue;
    Relayout r;
    for (int64_t i = 0; i < rank; ++i) r.perm.push_back(i);
    r.pads.assign(static_cast<size_t>(2 * rank), 0);
    r.to = dtype;
    if (!composer.apply(g.nodes[k], &r)) continue;
    std::vector<size_t> chain = {k};
    for (;;) {
      const std::string& value = g.nodes[chain.back()].outputs[0];
      const long next = readers.sole_reader(value);
      if (next < 0 || absorbed[next]) break;
      const ir::Node& n = g.nodes[next];
      if (n.inputs.empty() || n.inputs[0] != value) break;  // Pad's pads, say: not the chain's data
      Relayout grown = r;
      if (!composer.apply(n, &grown)) break;
      r = std::move(grown);
      chain.push_back(static_cast<size_t>(next));
    }
    if (chain.size() < 2) continue;

    std::sort(chain.begin(), chain.end());
    ir::Node f;
    f.name = absorb_chain(g, chain, absorbed);
    f.op_type = "Relayout";
    f.domain = "kiln";
    f.inputs = {x};
    f.outputs = {g.nodes[chain.back()].outputs[0]};
    f.index = g.nodes[chain.back()].index;
    f.attributes["perm"] = ints_attribute(r.perm);
    f.attributes["to"] = int_attribute(static_cast<int64_t>(r.to));
    f.attributes["pads"] = ints_attribute(r.pads);
    replacement[chain.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
