// MatMul + bias fusion: MatMul(A, W) -> Add(., bias) [-> Add(., Z)] [-> Relu | GELU (tanh form)] becomes one
// kiln.FusedMatMul, whose bias, residual and activation cuBLASLt applies in the GEMM's epilogue instead of
// more kernels reading and writing the product (every linear layer of BERT is a MatMul followed by an Add,
// and two in each layer by the residual Add before LayerNorm; Z becomes cuBLASLt's C, added with beta 1).
// A Gemm(A, W, bias) with alpha = beta = 1, A not transposed and a constant W and [N] bias is the same
// product and bias in one node (torchvision's classifiers, GPT-2's Conv1D): its Add Z and activation fuse
// the same way (a transposed W is stored transposed once, as FusedMatMul reads W as [K, N]).
// The exact (erf) GELU is left alone: cuBLASLt's GELU epilogue is the tanh approximation, and silently
// swapping one for the other would change the model's answer.
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// The shape of a value when every dim is known (initializers included), and its dtype (kUndefined when not
// known) in *dtype if given; false otherwise.
bool static_shape(const ir::Graph& g, const std::string& name, Shape* out, DType* dtype = nullptr) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) {
    *out = it->second.shape();
    if (dtype) *dtype = it->second.dtype();
    return true;
  }
  const ir::TypeInfo* t = g.type_of(name);
  if (t == nullptr || t->kind != ir::TypeInfo::Kind::kTensor || !t->is_static()) return false;
  *out = t->static_shape();
  if (dtype) *dtype = t->dtype;
  return true;
}

// The residual Z of an Add that reads `sum` (the fused MatMul + bias) and something else of exactly sum's
// shape and dtype: cuBLASLt adds Z as its C matrix, element for element, so there is no broadcasting.
// "" when the Add is not one. `product` is the chain's other value, which Z must not be.
std::string residual_of(const ir::Graph& g, const ir::Node& add, const std::string& sum, const std::string& product) {
  if (!is_onnx(add, "Add") || add.inputs.size() != 2 || add.outputs.size() != 1) return "";
  const std::string& z = add.inputs[0] == sum ? add.inputs[1] : add.inputs[0];
  if (z.empty() || z == sum || z == product) return "";
  std::vector<ir::Dim> ys, zs;  // equal numbers or the same symbols ([batch, seq, 768] with dynamic dims)
  if (!dims_of(g, sum, &ys) || !dims_of(g, z, &zs) || ys.size() != zs.size()) return "";
  for (size_t i = 0; i < ys.size(); ++i)
    if (!same_dim(ys[i], zs[i])) return "";
  const DType yt = dtype_of(g, sum);
  if (yt == DType::kUndefined || yt != dtype_of(g, z)) return "";
  return z;
}

// The activation a node applies, as kiln.FusedMatMul names it, when the epilogue can: Relu, or GELU with
// approximate="tanh" (ONNX Gelu or kiln.Gelu). "" for anything else.
std::string epilogue_activation(const ir::Node& n) {
  if (n.inputs.size() != 1 || n.outputs.size() != 1) return "";
  if (is_onnx(n, "Relu")) return "Relu";
  const bool gelu = (n.domain.empty() || n.domain == "kiln") && n.op_type == "Gelu";
  const ir::Attribute* a = n.attr("approximate");
  if (gelu && a != nullptr && a->type == ir::Attribute::Type::kString && a->s == "tanh") return "GeluTanh";
  return "";
}

// A float attribute's value, or `dflt` when absent; NAN when present with another type.
float float_or(const ir::Node& n, const char* name, float dflt) {
  const ir::Attribute* a = n.attr(name);
  if (a == nullptr) return dflt;
  return a->type == ir::Attribute::Type::kFloat ? a->f : NAN;
}
int64_t int_or(const ir::Node& n, const char* name, int64_t dflt) {
  const ir::Attribute* a = n.attr(name);
  if (a == nullptr) return dflt;
  return a->type == ir::Attribute::Type::kInt ? a->i : -1;
}

// A 2-D tensor transposed (any element type: bytes moved).
Tensor transposed(const Tensor& t) {
  const int64_t r = t.dim(0), c = t.dim(1);
  Tensor out(t.dtype(), {c, r});
  const size_t es = dtype_size(t.dtype());
  const auto* src = static_cast<const unsigned char*>(t.raw_data());
  auto* dst = static_cast<unsigned char*>(out.raw_data());
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) std::memcpy(dst + (j * r + i) * es, src + (i * c + j) * es, es);
  return out;
}

// The first part of a chain: A x W + bias, from MatMul -> Add or from one Gemm.
struct BiasedProduct {
  std::vector<size_t> nodes;  // the nodes computing it
  std::string a, w, bias;     // FusedMatMul's first three inputs (w and bias may be made below)
  std::string sum;            // the value that holds A x W + bias
  std::string product;        // a value a residual must not be (the MatMul's product)
  bool row_bias = false;      // the bias is [1, N]: stored again as [N]
  bool transpose_w = false;   // Gemm's transB: W stored again as [K, N]
};

// The bias a product of N columns and dtype `yt` (kUndefined: unknown) can take in the epilogue: a float
// initializer of shape [N] or [1, N] (the latter only when A is at least 2-D, or the sum would gain a dim).
bool epilogue_bias(const ir::Graph& g, const std::string& name, int64_t n, const ir::TypeInfo* yt, bool a_2d, bool* row) {
  const Tensor* bias = constant_value(g, name);
  if (bias == nullptr || g.initializers.count(name) == 0) return false;
  // The bias must have the product's dtype (when known: an Add of two dtypes is an invalid model anyway).
  if (!dtype_is_float(bias->dtype()) || (yt != nullptr && yt->dtype != DType::kUndefined && yt->dtype != bias->dtype()))
    return false;
  const bool flat = bias->rank() == 1 && bias->dim(0) == n;
  *row = bias->rank() == 2 && bias->dim(0) == 1 && bias->dim(1) == n && a_2d;
  return flat || *row;
}

// MatMul(A, W) read only by an Add of a bias.
bool matmul_with_bias(const ir::Graph& g, const GraphReaders& readers, const std::vector<bool>& absorbed, size_t k,
                      BiasedProduct* p) {
  const ir::Node& mm = g.nodes[k];
  if (!is_onnx(mm, "MatMul") || mm.inputs.size() != 2 || mm.outputs.size() != 1) return false;
  // The bias runs along the product's last dim, which is W's last dim only when W is a matrix (or a
  // stack of them): a 1-D W drops that dim.
  Shape w;
  if (!static_shape(g, mm.inputs[1], &w) || w.size() < 2) return false;
  const long add_at = readers.sole_reader(mm.outputs[0]);
  if (add_at < 0 || absorbed[add_at]) return false;
  const ir::Node& add = g.nodes[add_at];
  if (!is_onnx(add, "Add") || add.inputs.size() != 2 || add.outputs.size() != 1) return false;
  const std::string& bias = add.inputs[0] == mm.outputs[0] ? add.inputs[1] : add.inputs[0];
  if (bias == mm.outputs[0]) return false;  // MatMul + itself
  if (!epilogue_bias(g, bias, w.back(), g.type_of(mm.outputs[0]), known_rank(g, mm.inputs[0]) >= 2, &p->row_bias))
    return false;
  p->nodes = {k, static_cast<size_t>(add_at)};
  p->a = mm.inputs[0];
  p->w = mm.inputs[1];
  p->bias = bias;
  p->sum = add.outputs[0];
  p->product = mm.outputs[0];
  return true;
}

// Gemm(A, W, bias) = A x op(W) + bias: alpha and beta 1, A as it is, W a constant matrix.
bool gemm_with_bias(const ir::Graph& g, size_t k, BiasedProduct* p) {
  const ir::Node& gm = g.nodes[k];
  if (!is_onnx(gm, "Gemm") || gm.inputs.size() != 3 || gm.inputs[2].empty() || gm.outputs.size() != 1) return false;
  const int64_t trans_b = int_or(gm, "transB", 0);
  if (int_or(gm, "transA", 0) != 0 || (trans_b != 0 && trans_b != 1) || float_or(gm, "alpha", 1.0f) != 1.0f ||
      float_or(gm, "beta", 1.0f) != 1.0f)
    return false;
  const auto w = g.initializers.find(gm.inputs[1]);
  if (w == g.initializers.end() || w->second.rank() != 2 || known_rank(g, gm.inputs[0]) != 2) return false;
  const int64_t n = trans_b ? w->second.dim(0) : w->second.dim(1);
  if (!epilogue_bias(g, gm.inputs[2], n, g.type_of(gm.outputs[0]), true, &p->row_bias)) return false;
  p->nodes = {k};
  p->a = gm.inputs[0];
  p->w = gm.inputs[1];
  p->bias = gm.inputs[2];
  p->sum = p->product = gm.outputs[0];
  p->transpose_w = trans_b == 1;
  return true;
}

}  // namespace

Status fuse_matmul_bias(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  FreshNames fresh_name(g);
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the chain's last node -> the fused node
  std::map<std::string, Tensor> made;  // biases made [N] and weights made [K, N], added once the scan is done
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (absorbed[k]) continue;
    BiasedProduct p;
    if (!matmul_with_bias(g, readers, absorbed, k, &p) && !gemm_with_bias(g, k, &p)) continue;

    std::vector<size_t> chain = p.nodes;
    std::string activation;
    std::string out = p.sum;
    std::string z;
    if (const long res_at = readers.sole_reader(out); res_at >= 0 && !absorbed[res_at]) {
      z = residual_of(g, g.nodes[res_at], out, p.product);
      if (!z.empty()) {
        chain.push_back(static_cast<size_t>(res_at));
        out = g.nodes[res_at].outputs[0];
      }
    }
    const long act_at = readers.sole_reader(out);
    if (act_at >= 0 && !absorbed[act_at]) {
      activation = epilogue_activation(g.nodes[act_at]);
      if (!activation.empty()) {
        chain.push_back(static_cast<size_t>(act_at));
        out = g.nodes[act_at].outputs[0];
      }
    }

    if (chain.size() == 1) continue;  // a Gemm alone: already one GEMM with its bias in the epilogue
    std::string bias_input = p.bias, w_input = p.w;
    if (p.row_bias) {
      const Tensor& bias = g.initializers.at(p.bias);
      bias_input = fresh_name(p.bias + "_flat");
      made[bias_input] = bias.reshaped({bias.dim(1)});
    }
    if (p.transpose_w) {
      w_input = fresh_name(p.w + "_kn");
      made[w_input] = transposed(g.initializers.at(p.w));
    }
    ir::Node f;
    f.name = absorb_chain(g, chain, absorbed);
    f.op_type = "FusedMatMul";
    f.domain = "kiln";
    f.inputs = {p.a, w_input, bias_input};
    if (!z.empty()) f.inputs.push_back(z);
    f.outputs = {out};
    f.index = g.nodes[chain.back()].index;
    f.attributes["activation"] = string_attribute(activation);
    replacement[chain.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  if (replacement.empty()) return OkStatus();
  for (auto& [name, t] : made) g.initializers[name] = std::move(t);
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
