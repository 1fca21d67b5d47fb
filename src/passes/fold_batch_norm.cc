// Conv + BatchNormalization folding: at inference a BatchNormalization is a per-channel affine map
// y = (x - mean) * scale / sqrt(var + eps) + B, and a Conv is linear per output channel, so the pair is one
// Conv with W' = W * k and b' = (b - mean) * k + B, k = scale / sqrt(var + eps) per output channel. Every
// CNN exported from training (ResNet, MobileNet, EfficientNet) has one BN after each conv: folding it saves a
// kernel and a round trip of the activation through memory per conv, on every target.
// The new weights are computed in float64 and stored once in the weights' dtype, under new names (the old
// initializers may be read elsewhere; eliminate_dead_nodes drops them when not).
#include <cmath>
#include <set>
#include <vector>

#include "core/cast.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

// Whether the BatchNormalization computes the inference form: training_mode (opset 14+) absent or 0, the
// per-channel (spatial) form of opsets before 9, and no output but Y that anything reads.
bool inference_bn(const ir::Node& bn, const std::set<std::string>& read) {
  if (bn.inputs.size() != 5 || bn.outputs.empty() || bn.outputs[0].empty()) return false;
  if (const ir::Attribute* t = bn.attr("training_mode"); t != nullptr && t->i != 0) return false;
  if (const ir::Attribute* s = bn.attr("spatial"); s != nullptr && s->i == 0) return false;
  for (size_t i = 1; i < bn.outputs.size(); ++i)
    if (!bn.outputs[i].empty() && read.count(bn.outputs[i])) return false;  // running statistics wanted
  return true;
}

// A float constant holding one value per output channel (a rank-1 [m] tensor), else nullptr.
const Tensor* per_channel(const ir::Graph& g, const std::string& name, int64_t m) {
  const Tensor* t = constant_value(g, name);
  return t != nullptr && dtype_is_float(t->dtype()) && t->rank() == 1 && t->dim(0) == m ? t : nullptr;
}

class Folder {
 public:
  explicit Folder(ir::Graph& g) : g_(g), fresh_(g) {
    for (const auto& n : g.nodes)
      for (const auto& v : runtime::node_reads(n)) read_.insert(v);
    for (const auto& o : g.outputs) read_.insert(o.name);
  }
  const std::set<std::string>& read() const { return read_; }

  // Folds `bn` into `conv` (both checked to form a foldable pair except for their constants); false, with
  // the graph unchanged, when a constant is missing or of the wrong shape.
  Result<bool> fold(ir::Node& conv, const ir::Node& bn) {
    const Tensor* w = constant_value(g_, conv.inputs[1]);
    if (w == nullptr || !dtype_is_float(w->dtype()) || w->rank() < 3) return false;
    const int64_t m = w->dim(0);
    const bool has_bias = conv.inputs.size() > 2 && !conv.inputs[2].empty();
    const Tensor* b = has_bias ? per_channel(g_, conv.inputs[2], m) : nullptr;
    if (has_bias && b == nullptr) return false;
    const Tensor* scale = per_channel(g_, bn.inputs[1], m);
    const Tensor* shift = per_channel(g_, bn.inputs[2], m);
    const Tensor* mean = per_channel(g_, bn.inputs[3], m);
    const Tensor* var = per_channel(g_, bn.inputs[4], m);
    if (scale == nullptr || shift == nullptr || mean == nullptr || var == nullptr) return false;
    const ir::Attribute* eps_attr = bn.attr("epsilon");
    const double eps = eps_attr != nullptr ? static_cast<double>(eps_attr->f) : 1e-5;

    Tensor w2(DType::kFloat64, w->shape()), b2(DType::kFloat64, {m});
    const int64_t per_out = w->numel() / m;  // weights of one output channel: [C/group, k...]
    for (int64_t c = 0; c < m; ++c) {
      const double k = scale->scalar_as_double(c) / std::sqrt(var->scalar_as_double(c) + eps);
      for (int64_t j = c * per_out; j < (c + 1) * per_out; ++j) w2.data<double>()[j] = w->scalar_as_double(j) * k;
      const double bias = b != nullptr ? b->scalar_as_double(c) : 0.0;
      b2.data<double>()[c] = (bias - mean->scalar_as_double(c)) * k + shift->scalar_as_double(c);
    }
    const DType dt = w->dtype();
    const std::string w_name = fresh_(conv.inputs[1] + "__bn_folded");
    const std::string b_name = fresh_((has_bias ? conv.inputs[2] : conv.inputs[1]) + "__bn_folded_bias");
    KILN_ASSIGN_OR_RETURN(g_.initializers[w_name], cast_tensor(w2, dt));
    KILN_ASSIGN_OR_RETURN(g_.initializers[b_name], cast_tensor(b2, dt));
    conv.inputs.resize(3);
    conv.inputs[1] = w_name;
    conv.inputs[2] = b_name;
    g_.value_types.erase(conv.outputs[0]);  // gone with the BatchNormalization that read it
    conv.outputs[0] = bn.outputs[0];
    conv.name += " + " + bn.name;  // answers to both layers' names (--layer-precision)
    return true;
  }

 private:
  ir::Graph& g_;
  FreshNames fresh_;            // new initializer names that shadow none
  std::set<std::string> read_;  // values some node (or subgraph) or the graph's outputs read
};

}  // namespace

Status fold_batch_norm(ir::Model& model, int* folded) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  Folder folder(g);
  std::vector<bool> gone(g.nodes.size(), false);
  int count = 0;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    ir::Node& conv = g.nodes[k];
    if (!is_onnx(conv, "Conv") || conv.inputs.size() < 2 || conv.outputs.size() != 1) continue;
    // The conv's output vanishes, so the BatchNormalization must be its only reader.
    const long r = readers.sole_reader(conv.outputs[0]);
    if (r < 0 || gone[static_cast<size_t>(r)]) continue;
    const ir::Node& bn = g.nodes[static_cast<size_t>(r)];
    if (!is_onnx(bn, "BatchNormalization") || bn.inputs.empty() || bn.inputs[0] != conv.outputs[0] ||
        !inference_bn(bn, folder.read()))
      continue;
    KILN_ASSIGN_OR_RETURN(bool done, folder.fold(conv, bn));
    if (!done) continue;
    gone[static_cast<size_t>(r)] = true;
    ++count;
  }
  // The conv stays in its place: whatever read the BatchNormalization's output comes after it anyway.
  if (count > 0) {
    std::vector<ir::Node> nodes;
    nodes.reserve(g.nodes.size() - static_cast<size_t>(count));
    for (size_t k = 0; k < g.nodes.size(); ++k)
      if (!gone[k]) nodes.push_back(std::move(g.nodes[k]));
    g.nodes = std::move(nodes);
  }
  if (folded) *folded = count;
  return OkStatus();
}

}  // namespace kiln::passes
