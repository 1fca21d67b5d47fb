// Attention fusion: scaled dot-product attention as torch's SDPA export writes it (BERT at opset 17),
//   Qt = Transpose(Qr, [0,2,1,3])  Kt = Transpose(Kr, [0,2,3,1])  Vt = Transpose(Vr, [0,2,1,3])
//   S = MatMul(Qt [* c1], Kt [* c2]) [* c3]  ->  P = softmax(S [+ mask])  ->  O = MatMul(P, Vt)
//   -> Ot = Transpose(O, [0,2,1,3])
// becomes one kiln.FusedAttention(Qr, Kr, Vr, mask, layout "BSHD", scale c1 c2 c3): the [B, H, Sq, Sk]
// scores and probabilities never reach memory, and the four transposes vanish, since the fused kernel
// reads the heads where the projections left them. When a Q/V/output transpose is missing or has other
// readers the node takes the [B, H, S, D] operands ("BHSD") and the transposes that are still needed stay;
// K then has to come from a Transpose [0,1,3,2] (K^T of a BHSD K), or there is nothing to read K from.
// The softmax is the kiln.MaskedSoftmax of fuse_masked_softmax (run first), or an ONNX Softmax on the last
// axis, optionally of an Add of a mask.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// The fused CUDA kernel keeps a row of Q and the output accumulator in registers: head sizes up to 256.
constexpr int64_t kMaxHeadSize = 256;

bool has_perm(const ir::Node& n, const std::vector<int64_t>& perm) {
  if (!is_onnx(n, "Transpose") || n.inputs.size() != 1 || n.outputs.size() != 1) return false;
  const ir::Attribute* p = n.attr("perm");
  return p != nullptr && p->type == ir::Attribute::Type::kInts && p->ints == perm;
}

const std::vector<int64_t> kHeadsFirst{0, 2, 1, 3};  // [B,S,H,D] <-> [B,H,S,D]
const std::vector<int64_t> kKeysT{0, 2, 3, 1};       // [B,S,H,D] -> [B,H,D,S]
const std::vector<int64_t> kLastTwo{0, 1, 3, 2};     // [B,H,S,D] -> [B,H,D,S]

// Whether `mask` broadcasts into the 4-D scores `s` [B,H,Sq,Sk] without growing them.
bool mask_fits(const ir::Graph& g, const std::string& s, const std::string& mask) {
  return known_rank(g, s) == 4 && mask_broadcasts_into(g, s, mask);
}

// One chain being matched: the nodes it absorbs and the product of the scalar factors it folds in.
struct Chain {
  const ir::Graph& g;
  const GraphReaders& readers;
  const std::vector<bool>& absorbed;
  std::vector<size_t> nodes;
  double scale = 1.0;

  // The node producing `value` when the node at `reader` is its sole reader and it is still free.
  const ir::Node* sole_producer(const std::string& value, long reader, size_t* at) const {
    const long p = readers.producer(value);
    if (p < 0 || absorbed[p] || readers.sole_reader(value) != reader) return nullptr;
    *at = static_cast<size_t>(p);
    return &g.nodes[*at];
  }
  // Peels Mul(x, c), Mul(c, x) and Div(x, c) by scalar float constants off `value` (read by the node at
  // `reader`), folding c into the scale; returns what is left and the node that reads it.
  std::string peel_scalars(std::string value, long* reader) {
    for (;;) {
      size_t at = 0;
      const ir::Node* n = sole_producer(value, *reader, &at);
      if (n == nullptr || n->inputs.size() != 2 || n->outputs.size() != 1) return value;
      const bool mul = is_onnx(*n, "Mul"), div = is_onnx(*n, "Div");
      if (!mul && !div) return value;
      int x = -1;
      for (int i = div ? 0 : 1; i >= 0; --i) {
        const Tensor* c = constant_value(g, n->inputs[1 - i]);
        if (c != nullptr && dtype_is_float(c->dtype()) && c->numel() == 1 && c->rank() <= 1 &&
            n->inputs[i] != n->inputs[1 - i]) {
          x = i;
          break;
        }
      }
      if (x < 0) return value;
      const double c = constant_value(g, n->inputs[1 - x])->scalar_as_double(0);
      scale = mul ? scale * c : scale / c;
      nodes.push_back(at);
      value = n->inputs[x];
      *reader = static_cast<long>(at);
    }
  }
};

// The softmax reading the scores: the node at `at` (the reader of P) gives the scores, the mask, and
// nan_to_zero, absorbing the nodes it takes; false when it is no softmax along the last axis.
bool match_softmax(Chain& c, const ir::Model& model, const std::string& p, long reader, std::string* s,
                   std::string* mask, bool* nan_to_zero, long* s_reader) {
  size_t at = 0;
  const ir::Node* sm = c.sole_producer(p, reader, &at);
  if (sm == nullptr || sm->outputs.size() != 1 || sm->inputs.empty()) return false;
  const int64_t rank = known_rank(c.g, sm->inputs[0]);
  const ir::Attribute* axis_attr = sm->attr("axis");
  const int64_t axis = axis_attr != nullptr && axis_attr->type == ir::Attribute::Type::kInt ? axis_attr->i : -1;
  if (axis != -1 && (rank < 1 || axis != rank - 1)) return false;
  c.nodes.push_back(at);
  *s_reader = static_cast<long>(at);
  if (sm->domain == "kiln" && sm->op_type == "MaskedSoftmax" && sm->inputs.size() <= 2) {
    const ir::Attribute* nz = sm->attr("nan_to_zero");
    *nan_to_zero = nz != nullptr && nz->type == ir::Attribute::Type::kInt && nz->i == 1;
    *s = sm->inputs[0];
    if (sm->inputs.size() == 2 && !sm->inputs[1].empty()) {
      *mask = sm->inputs[1];
      if (!mask_fits(c.g, *s, *mask)) return false;  // e.g. a mask of dynamic shape
    }
    return true;
  }
  // ONNX Softmax: one axis from opset 13 on (before, it flattened the trailing dims).
  if (!is_onnx(*sm, "Softmax") || sm->inputs.size() != 1 || model.default_opset() < 13) return false;
  *nan_to_zero = false;
  *s = sm->inputs[0];
  size_t add_at = 0;
  const ir::Node* add = c.sole_producer(*s, *s_reader, &add_at);
  if (add == nullptr || !is_onnx(*add, "Add") || add->inputs.size() != 2 || add->outputs.size() != 1) return true;
  for (int m = 1; m >= 0; --m)  // the mask second first, as torch writes it
    if (add->inputs[m] != add->inputs[1 - m] && mask_fits(c.g, add->inputs[1 - m], add->inputs[m])) {
      *s = add->inputs[1 - m];
      *mask = add->inputs[m];
      c.nodes.push_back(add_at);
      *s_reader = static_cast<long>(add_at);
      break;
    }
  return true;
}

}  // namespace

Status fuse_attention(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  if (fused) *fused = 0;
  const GraphReaders readers(g);

  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the chain's last node -> the fused node
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    // The anchor: O = MatMul(P, Vt).
    const ir::Node& pv = g.nodes[k];
    if (!is_onnx(pv, "MatMul") || absorbed[k] || pv.inputs.size() != 2 || pv.outputs.size() != 1) continue;
    Chain c{g, readers, absorbed, {k}, 1.0};
    std::string s, mask;
    bool nan_to_zero = false;
    long s_reader = -1;
    if (!match_softmax(c, model, pv.inputs[0], static_cast<long>(k), &s, &mask, &nan_to_zero, &s_reader)) continue;
    s = c.peel_scalars(s, &s_reader);  // a scale on the scores
    size_t qk_at = 0;
    const ir::Node* qk = c.sole_producer(s, s_reader, &qk_at);
    if (qk == nullptr || !is_onnx(*qk, "MatMul") || qk->inputs.size() != 2 || qk->outputs.size() != 1) continue;
    c.nodes.push_back(qk_at);
    long q_reader = static_cast<long>(qk_at), k_reader = q_reader;
    const std::string q_bhsd = c.peel_scalars(qk->inputs[0], &q_reader);
    const std::string kt = c.peel_scalars(qk->inputs[1], &k_reader);

    // Each operand in both layouts where the graph has it: a transpose whose output only the chain reads
    // is absorbed when the node reads its input; one with other readers stays, read through or not.
    auto transposed_from = [&](const std::string& v, const std::vector<int64_t>& perm, size_t* at) -> const ir::Node* {
      const long p = readers.producer(v);
      if (p < 0 || absorbed[p] || !has_perm(g.nodes[p], perm)) return nullptr;
      *at = static_cast<size_t>(p);
      return &g.nodes[*at];
    };
    auto only_chain_reads = [&](const std::string& v, long reader) { return readers.sole_reader(v) == reader; };
    size_t qt_at = 0, kt_at = 0, vt_at = 0, ot_at = 0;
    const ir::Node* qt = transposed_from(q_bhsd, kHeadsFirst, &qt_at);
    const ir::Node* ktr_bshd = transposed_from(kt, kKeysT, &kt_at);
    const ir::Node* ktr_bhsd = ktr_bshd ? nullptr : transposed_from(kt, kLastTwo, &kt_at);
    const ir::Node* vt = transposed_from(pv.inputs[1], kHeadsFirst, &vt_at);
    const std::string& o = pv.outputs[0];
    const long ot_reader = readers.sole_reader(o);
    const ir::Node* ot = ot_reader >= 0 && !absorbed[ot_reader] && has_perm(g.nodes[ot_reader], kHeadsFirst)
                             ? &g.nodes[ot_reader] : nullptr;
    if (ot) ot_at = static_cast<size_t>(ot_reader);
    if (ktr_bshd == nullptr && ktr_bhsd == nullptr) continue;  // nothing in the graph holds K untransposed
    const bool bshd = ktr_bshd != nullptr && qt != nullptr && only_chain_reads(q_bhsd, q_reader) && vt != nullptr &&
                      only_chain_reads(pv.inputs[1], static_cast<long>(k)) && ot != nullptr;
    if (!bshd && ktr_bhsd == nullptr) continue;  // K^T from a BSHD K, but the rest cannot be BSHD

    std::string q = q_bhsd, key, v = pv.inputs[1], out = o;
    if (bshd) {
      q = qt->inputs[0];
      v = vt->inputs[0];
      out = ot->outputs[0];
      c.nodes.push_back(qt_at);
      c.nodes.push_back(vt_at);
      c.nodes.push_back(ot_at);
    }
    const ir::Node* ktr = bshd ? ktr_bshd : ktr_bhsd;
    key = ktr->inputs[0];
    if (only_chain_reads(kt, k_reader)) c.nodes.push_back(kt_at);

    // The shapes the fused kernel needs, in the chosen layout: rank 4, one B and H, D = Dv <= 256 known.
    std::vector<ir::Dim> qd, kd, vd;
    if (!dims_of(g, q, &qd) || !dims_of(g, key, &kd) || !dims_of(g, v, &vd)) continue;
    if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4) continue;
    const int ha = bshd ? 2 : 1, sa = bshd ? 1 : 2;
    if (!same_dim(qd[0], kd[0]) || !same_dim(qd[0], vd[0]) || !same_dim(qd[ha], kd[ha]) ||
        !same_dim(qd[ha], vd[ha]) || !same_dim(kd[sa], vd[sa]))
      continue;
    if (!qd[3].known() || qd[3].value > kMaxHeadSize || !same_dim(qd[3], kd[3]) || !same_dim(qd[3], vd[3])) continue;
    const DType dt = dtype_of(g, q);
    if (dt == DType::kUndefined || dtype_of(g, key) != dt || dtype_of(g, v) != dt) continue;
    if (!std::isfinite(c.scale)) continue;
    // Each node once (a MatMul(X, X) would reach one Transpose from both sides).
    if (std::set<size_t>(c.nodes.begin(), c.nodes.end()).size() != c.nodes.size()) continue;

    std::sort(c.nodes.begin(), c.nodes.end());
    ir::Node f;
    f.name = absorb_chain(g, c.nodes, absorbed);
    f.op_type = "FusedAttention";
    f.domain = "kiln";
    f.inputs = {q, key, v};
    if (!mask.empty()) f.inputs.push_back(mask);
    f.outputs = {out};
    f.index = g.nodes[c.nodes.back()].index;
    f.attributes["layout"] = string_attribute(bshd ? "BSHD" : "BHSD");
    f.attributes["scale"] = float_attribute(static_cast<float>(c.scale));
    f.attributes["nan_to_zero"] = int_attribute(nan_to_zero ? 1 : 0);
    replacement[c.nodes.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
