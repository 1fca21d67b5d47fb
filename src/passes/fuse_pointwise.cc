// Pointwise fusion: a group of ONNX elementwise ops (Add Sub Mul Div Neg Abs Exp Log Sqrt Tanh Sigmoid Relu
// Erf Pow Max Min) becomes one kiln.Pointwise whose `program` lists them, so that the GPU runs one
// generated kernel (backends/cuda/pointwise_codegen.cc) instead of one kernel per op, each reading and
// writing the whole tensor. Groups are grown backwards from a sink: a producer joins when it is
// elementwise and every reader of its output is already in the group (and the output is no graph output),
// so the intermediate values vanish and the group stays convex (nothing outside runs between two of its
// members). Scalar float constants become literals of the program.
//
// builder/optimize_graph.cc runs it for GPU engines, last (after the other fusions and precision
// lowering). It makes only nodes the CUDA layer (backends/cuda/pointwise_layer.cc) can run: a fused node
// falling back to the CPU would be slower than the ops it replaced.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "backends/cpu/ops/pointwise_program.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// The highest rank and the most inputs the CUDA code generator handles (pointwise_codegen.h).
constexpr size_t kMaxRank = 6;
constexpr size_t kMaxInputs = 32;

// The dtypes the generated kernels load and store (not the fp8 / fp4 ones).
bool kernel_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat64;
}

struct ValueType {
  DType dtype = DType::kUndefined;
  Shape shape;
};

// A value's dtype and shape (initializers included; -1 for a symbolic dim: the generated kernel is made for
// a rank and broadcasts at the run's shapes); false when the dtype or the rank is not known.
bool ranked_type(const ir::Graph& g, const std::string& name, ValueType* out) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) {
    *out = {it->second.dtype(), it->second.shape()};
    return true;
  }
  const ir::TypeInfo* t = g.type_of(name);
  if (t == nullptr || t->kind != ir::TypeInfo::Kind::kTensor || !t->has_shape || t->dtype == DType::kUndefined)
    return false;
  *out = {t->dtype, {}};
  for (const ir::Dim& d : t->dims) out->shape.push_back(d.value);
  return true;
}

// The fusable op of node n whose inputs and output are all `dtype` (a float type) with static shapes of
// rank <= kMaxRank; false for any other node. `dtype` is set from n's output when undefined.
bool fusable(const ir::Graph& g, const ir::Node& n, DType* dtype, pointwise::Op* op) {
  if (!n.domain.empty() || n.outputs.size() != 1 || !pointwise::op_of_onnx(n.op_type, op)) return false;
  if (n.inputs.size() != static_cast<size_t>(pointwise::op_arity(*op))) return false;
  ValueType out;
  if (!ranked_type(g, n.outputs[0], &out) || !kernel_dtype(out.dtype) || out.shape.size() > kMaxRank) return false;
  if (*dtype == DType::kUndefined) *dtype = out.dtype;
  if (out.dtype != *dtype) return false;
  for (const std::string& in : n.inputs) {
    ValueType t;
    if (in.empty() || !ranked_type(g, in, &t) || t.dtype != *dtype || t.shape.size() > kMaxRank) return false;
  }
  return true;
}

// The program's spelling of a one-element float constant that, read by `reader`, cannot change its
// output's shape (its rank is at most the output's); "" otherwise. Printed so that it reads back exactly.
std::string literal_of(const ir::Graph& g, const std::string& name, const ir::Node& reader) {
  const Tensor* t = constant_value(g, name);
  ValueType out;
  if (t == nullptr || !dtype_is_float(t->dtype()) || t->numel() != 1) return "";
  if (!ranked_type(g, reader.outputs[0], &out) || t->rank() > static_cast<int64_t>(out.shape.size())) return "";
  const double v = t->scalar_as_double(0);
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

Status fuse_pointwise(ir::Model& model, int* fused) {
  if (fused) *fused = 0;
  ir::Graph& g = model.graph;
  if (model.default_opset() < 8) return OkStatus();
  std::map<std::string, long> producer;
  for (size_t k = 0; k < g.nodes.size(); ++k)
    for (const auto& o : g.nodes[k].outputs) producer[o] = static_cast<long>(k);
  std::map<std::string, std::vector<size_t>> readers;
  for (size_t k = 0; k < g.nodes.size(); ++k)
    for (const auto& v : runtime::node_reads(g.nodes[k])) readers[v].push_back(k);  // subgraph reads too
  std::set<std::string> graph_outputs;
  for (const auto& o : g.outputs) graph_outputs.insert(o.name);

  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, ir::Node> replacement;
  for (size_t root = g.nodes.size(); root-- > 0;) {
    DType dtype = DType::kUndefined;
    pointwise::Op op;
    if (absorbed[root] || !fusable(g, g.nodes[root], &dtype, &op)) continue;
    std::set<size_t> group = {root};
    for (bool grew = true; grew;) {
      grew = false;
      for (size_t m : std::vector<size_t>(group.begin(), group.end())) {
        for (const std::string& in : g.nodes[m].inputs) {
          auto p = producer.find(in);
          if (p == producer.end() || group.count(p->second) || absorbed[p->second] || graph_outputs.count(in)) continue;
          const size_t k = static_cast<size_t>(p->second);
          if (!fusable(g, g.nodes[k], &dtype, &op)) continue;
          const std::vector<size_t>& r = readers[in];
          if (!std::all_of(r.begin(), r.end(), [&](size_t x) { return group.count(x) > 0; })) continue;
          group.insert(k);
          grew = true;
        }
      }
    }
    if (group.size() < 2) continue;

    // Members in graph order (a topological order), each an instruction; values from outside are inputs.
    ir::Node pw;
    pw.domain = "kiln";
    pw.op_type = "Pointwise";
    pw.outputs = g.nodes[root].outputs;
    pw.index = g.nodes[root].index;
    ir::Attribute program;
    program.type = ir::Attribute::Type::kStrings;
    std::map<std::string, std::string> operand;  // value -> "inI" / "tJ"
    std::vector<std::string> names;
    for (size_t m : group) {
      const ir::Node& n = g.nodes[m];
      pointwise::op_of_onnx(n.op_type, &op);
      std::string line = "t" + std::to_string(program.strings.size()) + " = " + pointwise::op_name(op);
      for (const std::string& in : n.inputs) {
        auto it = operand.find(in);
        std::string o = it != operand.end() ? it->second : literal_of(g, in, n);
        if (o.empty()) {
          o = "in" + std::to_string(pw.inputs.size());
          pw.inputs.push_back(in);
          operand[in] = o;
        }
        line += " " + o;
      }
      operand[n.outputs[0]] = "t" + std::to_string(program.strings.size());
      program.strings.push_back(line);
      names.push_back(n.name);
    }
    if (pw.inputs.empty()) continue;  // constants only: fold_constants' work
    if (pw.inputs.size() > kMaxInputs) continue;  // rare: the ops stay as they are
    for (size_t i = 0; i < names.size(); ++i) pw.name += (i ? " + " : "") + names[i];
    pw.attributes["program"] = std::move(program);
    for (size_t m : group) absorbed[m] = m != root;
    replacement[root] = std::move(pw);
  }
  if (fused) *fused = static_cast<int>(replacement.size());
  splice_fused_nodes(model, replacement, absorbed);
  return OkStatus();
}

}  // namespace kiln::passes
