// CUDA layers of the optimizer's kiln.FusedMatMul, kiln.Gelu and kiln.Swish (ops_spec; made by the passes
// fuse_matmul_bias, recognize_gelu and recognize_activations). FusedMatMul is the cuBLASLt MatMul layer
// (matmul.h) with the bias epilogue its activation names, and its residual Z (input 3) as cuBLASLt's C with
// beta 1; kiln.Gelu and kiln.Swish are ONNX Gelu and Swish at any opset, so they are the elementwise layers.
#include <string>

#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"

namespace kiln::cuda {
namespace {

// The epilogue of a FusedMatMul node, or "" with *why set when its attributes are not ones the layer has.
bool epilogue_of(const LayerSpec& spec, MatmulEpilogue* e, std::string* why) {
  const std::string act = spec.attr_string("activation", "");
  const DType t = spec.inputs.empty() ? DType::kUndefined : spec.inputs[0].dtype;
  if (act.empty()) *e = MatmulEpilogue::kBias;
  else if (act == "Relu") *e = MatmulEpilogue::kBiasRelu;
  else if (act == "GeluTanh") *e = MatmulEpilogue::kBiasGelu;  // cuBLASLt's GELU is the tanh form
  else if (act == "Gelu" && (t == DType::kFloat16 || t == DType::kBFloat16))
    *e = MatmulEpilogue::kBiasGelu;  // exact GELU by the tanh form: at most 4.7e-4 apart (passes/fuse_matmul_gelu.cc)
  else if (act == "Gelu") {
    *why = "CUDA kiln.FusedMatMul: activation 'Gelu' (exact) runs in float16 / bfloat16 only, not " +
           dtype_name(t);
    return false;
  } else {
    *why = "CUDA kiln.FusedMatMul: activation '" + act + "' is not one of '', Relu, Gelu, GeluTanh";
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
  mm.tactics = matmul_and_sm90_tactics;
  mm.create = [](const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) -> Result<std::unique_ptr<Layer>> {
    if (std::string why = check_fused_matmul(spec); !why.empty()) return Unsupported(why);
    MatmulEpilogue e;
    std::string why;
    epilogue_of(spec, &e, &why);
    return create_matmul_layer(spec, e, tactic, h);
  };
  mm.lowers_to_fp16 = true;
  table.add(std::move(mm));

  // The elementwise Gelu and Swish read only the node's op type ("Gelu", "Swish") and attributes
  // (approximate, alpha), all the same on a kiln.Gelu / kiln.Swish node; they must be registered first
  // (layer_table() calls this after the elementwise ops).
  for (const char* op : {"Gelu", "Swish"}) {
    if (const LayerKind* onnx_kind = table.find(op)) {
      LayerKind kind = *onnx_kind;
      kind.op_type = std::string("kiln.") + op;
      kind.lowers_to_fp16 = true;
      table.add(std::move(kind));
    }
  }
}

}  // namespace kiln::cuda
