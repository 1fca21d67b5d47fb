// A Reshape between a Gemm and what its epilogue could apply is moved after that op, so that fuse_matmul_bias
// sees the Gemm and the op side by side. Exporters put one there: GPT-2's Conv1D is
// Gemm(x.view(-1, n), W, b).view(B, S, N), then its GELU (tanh form) or the residual Add reads the view.
//   Gemm -> y -> Reshape(y, s) -> t -> Relu | Gelu(tanh) -> u    becomes    Gemm -> y -> Relu -> Reshape(., s) -> u
//   Gemm -> y -> Reshape(y, s) -> t -> Add(t, r) -> u             becomes    Gemm -> y -> Add(y, Reshape(r, y's shape))
//                                                                           -> Reshape(., s) -> u
// Both are exact: an elementwise op commutes with a Reshape, and the Add has no broadcasting (r and t of one
// static shape), so r's view in y's shape adds element for element. Only where y and t are read by the next
// node alone and are no graph outputs; the moved nodes keep their names, and u its name and readers.
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// An activation cuBLASLt's epilogue applies (fuse_matmul_bias's list): Relu, or GELU in its tanh form.
bool epilogue_unary(const ir::Node& n) {
  if (n.inputs.size() != 1 || n.outputs.size() != 1) return false;
  if (is_onnx(n, "Relu")) return true;
  const ir::Attribute* a = n.attr("approximate");
  return (n.domain.empty() || n.domain == "kiln") && n.op_type == "Gelu" && a != nullptr &&
         a->type == ir::Attribute::Type::kString && a->s == "tanh";
}

const ir::TypeInfo* static_type(const ir::Graph& g, const std::string& v) {
  const ir::TypeInfo* t = g.type_of(v);
  return t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor && t->is_static() ? t : nullptr;
}

}  // namespace

Status sink_gemm_reshapes(ir::Model& model, int* moved) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  FreshNames fresh(g);
  // Position of the op after the Reshape -> the nodes that replace it; positions of the Reshapes to drop.
  std::map<size_t, std::vector<ir::Node>> rewrites;
  std::vector<bool> dropped(g.nodes.size(), false);
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& gemm = g.nodes[k];
    if (!is_onnx(gemm, "Gemm") || gemm.outputs.size() != 1) continue;
    const std::string& y = gemm.outputs[0];
    const long r_at = readers.sole_reader(y);
    if (r_at < 0 || dropped[r_at] || rewrites.count(r_at)) continue;
    const ir::Node& reshape = g.nodes[r_at];
    if (!is_onnx(reshape, "Reshape") || reshape.inputs.size() != 2 || reshape.inputs[0] != y) continue;
    const std::string& t = reshape.outputs[0];
    const long op_at = readers.sole_reader(t);
    if (op_at < 0 || rewrites.count(op_at)) continue;
    const ir::Node& op = g.nodes[op_at];
    const ir::TypeInfo* yt = static_type(g, y);
    const ir::TypeInfo* tt = static_type(g, t);
    if (yt == nullptr || tt == nullptr) continue;

    std::vector<ir::Node> nodes;
    std::string before_reshape;  // the op's result in the Gemm's shape, named once the op is known to move
    if (epilogue_unary(op) && op.inputs[0] == t) {
      before_reshape = fresh(op.outputs[0] + "_gemm_shaped");
      ir::Node moved_op = op;
      moved_op.inputs[0] = y;
      moved_op.outputs[0] = before_reshape;
      nodes.push_back(std::move(moved_op));
    } else if (is_onnx(op, "Add") && op.inputs.size() == 2 && op.outputs.size() == 1 &&
               (op.inputs[0] == t) != (op.inputs[1] == t)) {
      const std::string& r = op.inputs[0] == t ? op.inputs[1] : op.inputs[0];
      const ir::TypeInfo* rt = static_type(g, r);
      if (rt == nullptr || rt->static_shape() != tt->static_shape() || rt->dtype != tt->dtype) continue;
      before_reshape = fresh(op.outputs[0] + "_gemm_shaped");
      // r viewed in y's shape.
      const std::string shape_name = fresh(r + "_gemm_shape");
      const Shape ys = yt->static_shape();
      g.initializers[shape_name] = Tensor::from_vector<int64_t>(DType::kInt64, {static_cast<int64_t>(ys.size())},
                                                                std::vector<int64_t>(ys.begin(), ys.end()));
      ir::Node view;
      view.op_type = "Reshape";
      view.name = fresh(op.name + "/residual_view");
      view.inputs = {r, shape_name};
      view.outputs = {fresh(r + "_gemm_view")};
      view.index = op.index;
      ir::Node moved_op = op;
      moved_op.inputs = {y, view.outputs[0]};
      moved_op.outputs[0] = before_reshape;
      nodes.push_back(std::move(view));
      nodes.push_back(std::move(moved_op));
    } else {
      continue;
    }
    ir::Node moved_reshape = reshape;
    moved_reshape.inputs[0] = before_reshape;
    moved_reshape.outputs[0] = op.outputs[0];
    moved_reshape.index = op.index;
    nodes.push_back(std::move(moved_reshape));
    g.value_types.erase(t);  // t is gone; the new values get their types from infer_shapes
    dropped[r_at] = true;
    rewrites[op_at] = std::move(nodes);
  }
  if (moved) *moved = static_cast<int>(rewrites.size());
  if (rewrites.empty()) return OkStatus();
  // The Reshape leaves its place; the op's place takes the op then the Reshape (what they read is computed
  // before it: y before the old Reshape, r before the op).
  std::vector<ir::Node> nodes;
  nodes.reserve(g.nodes.size() + rewrites.size());
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (dropped[k]) continue;
    if (auto it = rewrites.find(k); it != rewrites.end()) {
      for (ir::Node& n : it->second) nodes.push_back(std::move(n));
    } else {
      nodes.push_back(std::move(g.nodes[k]));
    }
  }
  g.nodes = std::move(nodes);
  return OkStatus();
}

}  // namespace kiln::passes
