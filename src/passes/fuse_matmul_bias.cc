// MatMul + bias fusion: MatMul(A, W) -> Add(., bias) [-> Add(., Z)] [-> Relu | GELU (tanh form)] becomes one
// kiln.FusedMatMul, whose bias, residual and activation cuBLASLt applies in the GEMM's epilogue instead of
// more kernels reading and writing the product (every linear layer of BERT is a MatMul followed by an Add,
// and two in each layer by the residual Add before LayerNorm; Z becomes cuBLASLt's C, added with beta 1).
// The exact (erf) GELU is left alone: cuBLASLt's GELU epilogue is the tanh approximation, and silently
// swapping one for the other would change the model's answer.
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

bool is_onnx(const ir::Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

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
// static shape and dtype: cuBLASLt adds Z as its C matrix, element for element, so there is no broadcasting.
// "" when the Add is not one. `product` is the chain's other value, which Z must not be.
std::string residual_of(const ir::Graph& g, const ir::Node& add, const std::string& sum, const std::string& product) {
  if (!is_onnx(add, "Add") || add.inputs.size() != 2 || add.outputs.size() != 1) return "";
  const std::string& z = add.inputs[0] == sum ? add.inputs[1] : add.inputs[0];
  if (z.empty() || z == sum || z == product) return "";
  Shape ys, zs;
  DType yt = DType::kUndefined, zt = DType::kUndefined;
  if (!static_shape(g, sum, &ys, &yt) || !static_shape(g, z, &zs, &zt)) return "";
  if (ys != zs || yt == DType::kUndefined || yt != zt) return "";
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

}  // namespace

Status fuse_matmul_bias(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  FreshNames fresh_name(g);
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;  // position of the chain's last node -> the fused node
  std::map<std::string, Tensor> flattened;  // [1, N] biases made [N], added once the scan is done
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& mm = g.nodes[k];
    if (!is_onnx(mm, "MatMul") || absorbed[k] || mm.inputs.size() != 2 || mm.outputs.size() != 1) continue;
    // The bias runs along the product's last dim, which is W's last dim only when W is a matrix (or a
    // stack of them): a 1-D W drops that dim.
    Shape w;
    if (!static_shape(g, mm.inputs[1], &w) || w.size() < 2) continue;
    const int64_t n = w.back();
    const long add_at = readers.sole_reader(mm.outputs[0]);
    if (add_at < 0 || absorbed[add_at]) continue;
    const ir::Node& add = g.nodes[add_at];
    if (!is_onnx(add, "Add") || add.inputs.size() != 2 || add.outputs.size() != 1) continue;
    const std::string& bias_name = add.inputs[0] == mm.outputs[0] ? add.inputs[1] : add.inputs[0];
    if (bias_name == mm.outputs[0]) continue;  // MatMul + itself
    const Tensor* bias = constant_value(g, bias_name);
    if (bias == nullptr || g.initializers.count(bias_name) == 0) continue;
    // The bias must have the product's dtype (when known: an Add of two dtypes is an invalid model anyway).
    const ir::TypeInfo* yt = g.type_of(mm.outputs[0]);
    if (!dtype_is_float(bias->dtype()) || (yt != nullptr && yt->dtype != DType::kUndefined && yt->dtype != bias->dtype())) continue;
    const bool flat = bias->rank() == 1 && bias->dim(0) == n;
    // [1, N] adds like [N] unless the product is 1-D (then the sum would gain a dim): A must be >= 2-D.
    const bool row = bias->rank() == 2 && bias->dim(0) == 1 && bias->dim(1) == n && known_rank(g, mm.inputs[0]) >= 2;
    if (!flat && !row) continue;

    std::vector<size_t> chain = {k, static_cast<size_t>(add_at)};
    std::string activation;
    std::string out = add.outputs[0];
    std::string z;
    if (const long res_at = readers.sole_reader(out); res_at >= 0 && !absorbed[res_at]) {
      z = residual_of(g, g.nodes[res_at], out, mm.outputs[0]);
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

    std::string bias_input = bias_name;
    if (row) {
      bias_input = fresh_name(bias_name + "_flat");
      flattened[bias_input] = bias->reshaped({n});
    }
    ir::Node f;
    f.name = absorb_chain(g, chain, absorbed);
    f.op_type = "FusedMatMul";
    f.domain = "kiln";
    f.inputs = {mm.inputs[0], mm.inputs[1], bias_input};
    if (!z.empty()) f.inputs.push_back(z);
    f.outputs = {out};
    f.index = g.nodes[chain.back()].index;
    f.attributes["activation"] = string_attribute(activation);
    replacement[chain.back()] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  if (replacement.empty()) return OkStatus();
  for (auto& [name, t] : flattened) g.initializers[name] = std::move(t);
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
