// CUDA layers of the optimizer's kiln.FusedMatMul and kiln.Gelu (ops_spec; made by the passes
// fuse_matmul_bias and recognize_gelu). FusedMatMul is the cuBLASLt MatMul layer (matmul.h) with the bias
// epilogue its activation names, and its residual Z (input 3) as cuBLASLt's C with beta 1; kiln.Gelu is
// ONNX Gelu at any opset, so it is the elementwise Gelu layer.
#include <string>

#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"

namespace kiln::cuda {
namespace {

// The epilogue of a FusedMatMul node, or "" with *why set when its attributes are not ones the layer has.
bool epilogue_of(const LayerSpec& spec, MatmulEpilogue* e, std::string* why) {
  const std::string act = spec.attr_string("activation", "");
  if (act.empty()) *e = MatmulEpilogue::kBias;
  else if (act == "Relu") *e = MatmulEpilogue::kBiasRelu;
  else if (act == "GeluTanh") *e = MatmulEpilogue::kBiasGelu;  // cuBLASLt's GELU is the tanh form
  else {
    *why = "CUDA kiln.FusedMatMul: activation '" + act + "' is not one of '', Relu, GeluTanh";
    return false;
  }
  return true;
}

std::string check_fused_matmul(const LayerSpec& spec) {
  MatmulEpilogue e;
  std::string why;
  if (!epilogue_of(spec, &e, &why)) return why;
  // The bias runs along B's last dim, which is the product's only when B is at least 2-D.
  if (spec.inputs.size() > 1 && spec.inputs[1].has_rank && spec.inputs[1].shape.size() < 2)
    return "CUDA kiln.FusedMatMul: B must have rank >= 2, got " + shape_to_string(spec.inputs[1].shape);
  if (spec.inputs.size() > 2 && spec.inputs[2].has_rank && spec.inputs[2].shape.size() != 1)
    return "CUDA kiln.FusedMatMul: bias must be 1-D, got " + shape_to_string(spec.inputs[2].shape);
  return check_matmul_layer(spec, e);
}

}  // namespace

void register_fused_matmul_layers(LayerTable& table) {
  LayerKind mm;
  mm.op_type = "kiln.FusedMatMul";
  mm.check = check_fused_matmul;
  mm.tactics = [](const LayerSpec&) { return matmul_tactics(); };
  mm.create = [](const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) -> Result<std::unique_ptr<Layer>> {
    if (std::string why = check_fused_matmul(spec); !why.empty()) return Unsupported(why);
    MatmulEpilogue e;
    std::string why;
    epilogue_of(spec, &e, &why);
    return create_matmul_layer(spec, e, tactic, h);
  };
  mm.lowers_to_fp16 = true;
  table.add(std::move(mm));

  // The elementwise Gelu reads only the node's op type ("Gelu") and its approximate attribute, both the same
  // on a kiln.Gelu node; it must be registered first (layer_table() calls this after the elementwise ops).
  if (const LayerKind* onnx_gelu = table.find("Gelu")) {
    LayerKind gelu = *onnx_gelu;
    gelu.op_type = "kiln.Gelu";
    gelu.lowers_to_fp16 = true;
    table.add(std::move(gelu));
  }
}

}  // namespace kiln::cuda
