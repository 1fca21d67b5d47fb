// Q, K and V projections packed into one GEMM: a BERT layer's attention reads three kiln.FusedMatMul of the
// same hidden state, each [B*S, E] x [E, H*D] and reshaped to heads, before its kiln.FusedAttention (BSHD):
//   Pi = FusedMatMul(A, Wi, bi) -> Reshape(Pi, [B, S, H, D]) -> FusedAttention(Q, K, V, mask)
// becomes
//   P = FusedMatMul(A, concat(Wq, Wk, Wv), concat(bq, bk, bv)) -> Reshape(P, [B, S, 3, H, D])
//   -> FusedAttention(QKV, mask, packed_qkv = 1)
// as TensorRT does: one launch instead of three, three times the GEMM's columns to spread over the SMs, and the
// attention reads Q, K and V in place from the packed rows. The weights' columns are ordered (head, d), so the
// concatenation's last axis reads (3, H, D): the Reshape splits it without moving anything.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// An initializer (not a graph input, which may be overridden), else null.
const Tensor* initializer(const ir::Graph& g, const std::string& name) {
  return g.initializers.count(name) ? constant_value(g, name) : nullptr;
}

// Three tensors of one dtype and shape side by side along their last axis.
Tensor concat_last_axis(const std::array<const Tensor*, 3>& parts) {
  const Tensor& first = *parts[0];
  Shape shape = first.shape();
  const int64_t n = shape.back();
  shape.back() = 3 * n;
  Tensor out(first.dtype(), shape);
  const size_t row = static_cast<size_t>(n) * dtype_size(first.dtype());
  const int64_t rows = n == 0 ? 0 : first.numel() / n;
  auto* dst = static_cast<unsigned char*>(out.raw_data());
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < 3; ++i)
      std::memcpy(dst + (r * 3 + i) * row, static_cast<const unsigned char*>(parts[i]->raw_data()) + r * row, row);
  return out;
}

// One of the three operands as the pattern needs it: Reshape(FusedMatMul(A, W, b), shape), each read only by
// the next.
struct Projection {
  size_t matmul = 0, reshape = 0;  // positions
  const Tensor* w = nullptr;
  const Tensor* b = nullptr;
  std::vector<int64_t> shape;  // the Reshape's
};

// The projection feeding the attention at `reader` through `value`; false when it is not one.
bool match_projection(const ir::Graph& g, const GraphReaders& readers, const std::string& value, size_t reader,
                      Projection* p) {
  const long r = readers.producer(value);
  if (r < 0 || readers.sole_reader(value) != static_cast<long>(reader)) return false;
  const ir::Node& reshape = g.nodes[r];
  if (!is_onnx(reshape, "Reshape") || reshape.inputs.size() != 2 || reshape.outputs.size() != 1) return false;
  const Tensor* shape = constant_value(g, reshape.inputs[1]);
  if (shape == nullptr || shape->dtype() != DType::kInt64 || shape->rank() != 1 || shape->numel() != 4) return false;
  p->shape = shape->to_int64_vector();
  // The packed shape puts the 3 before H and D, so they must be numbers there: a 0 (copy an input dim) or -1
  // (infer) would then land on another dim. Where the shape says 0 or -1 for them (transformers' BERT writes
  // view(B, S, -1, D)), the Reshape's inferred output type gives them.
  if (p->shape[2] <= 0 || p->shape[3] <= 0) {
    const ir::TypeInfo* t = g.type_of(reshape.outputs[0]);
    if (t == nullptr || !t->has_shape || t->dims.size() != 4) return false;  // B and S may be symbols
    p->shape[2] = t->dims[2].value;
    p->shape[3] = t->dims[3].value;
    if (p->shape[2] <= 0 || p->shape[3] <= 0) return false;
  }
  const long m = readers.producer(reshape.inputs[0]);
  if (m < 0 || readers.sole_reader(reshape.inputs[0]) != r) return false;
  const ir::Node& mm = g.nodes[m];
  if (!is_kiln(mm, "FusedMatMul") || mm.inputs.size() != 3 || mm.outputs.size() != 1) return false;
  if (!string_attr_or(mm, "activation", "").empty()) return false;
  p->w = initializer(g, mm.inputs[1]);
  p->b = initializer(g, mm.inputs[2]);
  if (p->w == nullptr || p->b == nullptr || p->w->rank() < 2 || p->b->rank() != 1) return false;
  // The product's last dim is (head, d): the Reshape splits exactly it.
  if (p->w->dim(-1) != p->shape[2] * p->shape[3]) return false;
  p->matmul = static_cast<size_t>(m);
  p->reshape = static_cast<size_t>(r);
  return true;
}

// Marks `chain` absorbed and returns the name of the node replacing it; its last node's output vanishes as
// well (the replacement writes a new value).
std::string absorb_all(ir::Graph& g, std::vector<size_t> chain, std::vector<bool>& absorbed) {
  std::sort(chain.begin(), chain.end());
  const std::string name = absorb_chain(g, chain, absorbed);
  for (const auto& o : g.nodes[chain.back()].outputs) g.value_types.erase(o);
  return name;
}

}  // namespace

Status pack_qkv_projections(ir::Model& model, int* packed) {
  ir::Graph& g = model.graph;
  if (packed) *packed = 0;
  const GraphReaders readers(g);
  FreshNames names(g);
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // the last projection's and the last Reshape's positions
  std::map<std::string, Tensor> added;     // the packed weights, biases and shapes, added once the scan is done
  std::map<std::vector<int64_t>, std::string> shapes;  // one initializer a packed shape (the layers share it)
  int count = 0;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& att = g.nodes[k];
    if (!is_kiln(att, "FusedAttention") || att.outputs.size() != 1) continue;
    if (string_attr_or(att, "layout", "BHSD") != "BSHD" || int_attr_or(att, "packed_qkv", 0) != 0) continue;
    if (att.inputs.size() < 3 || att.inputs.size() > 4) continue;
    std::array<Projection, 3> p;
    bool ok = true;
    for (int i = 0; i < 3 && ok; ++i) ok = match_projection(g, readers, att.inputs[i], k, &p[i]);
    if (!ok) continue;
    const ir::Node& q_mm = g.nodes[p[0].matmul];
    const ir::Node& q_reshape = g.nodes[p[0].reshape];
    for (int i = 1; i < 3 && ok; ++i) {
      const ir::Node& mm = g.nodes[p[i].matmul];
      const ir::Node& reshape = g.nodes[p[i].reshape];
      ok = mm.inputs[0] == q_mm.inputs[0] && p[i].matmul != p[0].matmul && p[i].shape == p[0].shape &&
           int_attr_or(reshape, "allowzero", 0) == int_attr_or(q_reshape, "allowzero", 0);
    }
    for (int i = 0; i < 3 && ok; ++i)
      ok = !absorbed[p[i].matmul] && p[i].w->dtype() == p[0].w->dtype() && p[i].b->dtype() == p[0].w->dtype() &&
           p[i].w->shape() == p[0].w->shape() && p[i].b->shape() == p[0].b->shape();
    if (!ok || p[1].matmul == p[2].matmul || p[0].b->dim(0) != p[0].w->dim(-1)) continue;

    const std::string w = names(q_mm.inputs[1] + "_qkv"), b = names(q_mm.inputs[2] + "_qkv");
    added[w] = concat_last_axis({p[0].w, p[1].w, p[2].w});
    added[b] = concat_last_axis({p[0].b, p[1].b, p[2].b});
    const std::vector<int64_t> packed_shape = {p[0].shape[0], p[0].shape[1], 3, p[0].shape[2], p[0].shape[3]};
    std::string& shape = shapes[packed_shape];
    if (shape.empty()) {
      shape = names(q_reshape.inputs[1] + "_qkv");
      added[shape] = Tensor::from_vector<int64_t>(DType::kInt64, {5}, packed_shape);
    }

    ir::Node mm = q_mm;  // its attributes (activation "")
    mm.name = absorb_all(g, {p[0].matmul, p[1].matmul, p[2].matmul}, absorbed);
    mm.inputs = {q_mm.inputs[0], w, b};
    mm.outputs = {names(q_mm.outputs[0] + "_qkv")};
    const size_t mm_at = std::max({p[0].matmul, p[1].matmul, p[2].matmul});
    mm.index = g.nodes[mm_at].index;
    ir::Node reshape = q_reshape;  // its allowzero
    reshape.name = absorb_all(g, {p[0].reshape, p[1].reshape, p[2].reshape}, absorbed);
    reshape.inputs = {mm.outputs[0], shape};
    reshape.outputs = {names(q_reshape.outputs[0] + "_qkv")};
    // Each Reshape follows its projection, so the last Reshape follows the last projection.
    const size_t reshape_at = std::max({p[0].reshape, p[1].reshape, p[2].reshape});
    reshape.index = g.nodes[reshape_at].index;

    ir::Node& a = g.nodes[k];  // read above only through the projections' positions
    std::vector<std::string> inputs = {reshape.outputs[0]};
    if (a.inputs.size() == 4 && !a.inputs[3].empty()) inputs.push_back(a.inputs[3]);
    a.inputs = std::move(inputs);
    a.attributes["packed_qkv"] = int_attribute(1);
    replacement[mm_at] = std::move(mm);
    replacement[reshape_at] = std::move(reshape);
    ++count;
  }
  if (packed) *packed = count;
  if (count == 0) return OkStatus();
  for (auto& [name, t] : added) g.initializers[name] = std::move(t);
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
