// The exact (erf) GELU into a half-precision GEMM's epilogue: kiln.FusedMatMul(activation "") -> Gelu
// (approximate "none") becomes one kiln.FusedMatMul with activation "Gelu". In BERT the GELU after each
// intermediate dense layer is a separate kernel reading and writing [tokens, 3072]: 1.1 ms of 7.9 at batch
// 128 on the H100 (bench/results/profile_bert_b128_2026-11-24.json).
//
// Why only in float16 / bfloat16, after lower_precision: cuBLASLt's GELU epilogue is the tanh approximation,
// at most 4.7e-4 from the exact GELU (at x = -2.7), which is below float16's rounding step for outputs from
// 0.5 up (4.9e-4) and bfloat16's everywhere above 0.06. In a layer the user let run in half precision the
// swap is within the precision asked for; in float32 it would be a silent change of the model's answer, so
// float32 products keep their separate exact GELU. The fused node still says "Gelu" (exact): the CPU
// reference computes erf, and the CUDA layer takes the epilogue for half types only (fused_matmul.cc).
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

bool is_exact_gelu(const ir::Node& n) {
  if (n.op_type != "Gelu" || !(n.domain.empty() || n.domain == "kiln")) return false;
  if (n.inputs.size() != 1 || n.outputs.size() != 1) return false;
  const ir::Attribute* a = n.attr("approximate");
  return a == nullptr || (a->type == ir::Attribute::Type::kString && a->s == "none");
}

bool is_half(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

}  // namespace

Status fuse_matmul_gelu(ir::Model& model, int* fused) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const ir::Node& mm = g.nodes[k];
    if (mm.domain != "kiln" || mm.op_type != "FusedMatMul" || mm.outputs.size() != 1) continue;
    const ir::Attribute* act = mm.attr("activation");
    if (act != nullptr && !act->s.empty()) continue;
    const long gelu_at = readers.sole_reader(mm.outputs[0]);
    if (gelu_at < 0 || !is_exact_gelu(g.nodes[gelu_at])) continue;
    const DType t = dtype_of(g, mm.outputs[0]);
    if (!is_half(t) || dtype_of(g, g.nodes[gelu_at].outputs[0]) != t) continue;
    ir::Node f = mm;
    f.name = absorb_chain(g, {k, static_cast<size_t>(gelu_at)}, absorbed);
    f.outputs = g.nodes[gelu_at].outputs;
    f.index = g.nodes[gelu_at].index;
    f.attributes["activation"] = string_attribute("Gelu");
    replacement[static_cast<size_t>(gelu_at)] = std::move(f);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  if (replacement.empty()) return OkStatus();
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
