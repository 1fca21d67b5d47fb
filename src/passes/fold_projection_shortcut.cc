// Projection shortcut folding: a ResNet block whose shortcut is a 1x1 conv D = Conv(X, Wd) + Bd, read only
// as the residual of the block's last conv Y = act(Conv(A, W3) + B3 + D), itself 1x1, computes
// Y = act([A | X'] . [W3 ; Wd] + (B3 + Bd)) with X' = X sampled at the shortcut's stride: one conv over the
// channel concatenation of A and X', and no D at all. D is M channels wide (ResNet-50's layer1.0: 256, from
// inputs of 64): writing it and reading it back is what both convs spend most of their time on, at the HBM
// roofline; the concatenation costs a copy of the narrow inputs instead.
//
// Whether that pays is a count of the elements moved per output pixel (the output write being common):
// before, D's conv reads Cx and writes M, and Y's reads Ca and M; after, the Concat reads Ca + Cx and writes
// them, and the conv reads them back; a stride s > 1 adds the Slice's write of X' and the Concat's read of it.
// So the fold is made when 2 (Ca + Cx) + (s > 1 ? 2 Cx : 0) < 2 M. In ResNet-50 layer1.0 folds (256 < 512);
// layer2.0 to layer4.0, whose shortcuts have stride 2 and inputs twice as wide as A, do not (1280 < 1024 is
// false for layer2.0, and the others scale with it). The optimizer runs this pass a second time after
// sample_pair_output, which gives layer2.0's shortcut stride 1 (the conv pair before it writes X sampled):
// then 768 < 1024, and layer2.0 folds too.
//
// Only channels-last convs (after convert_conv_layout): the concatenation is then along the last axis, in
// pieces of Ca and Cx elements, which multiples of 8 keep 16-byte aligned for the half-precision kernels.
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/cast.h"
#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {

namespace {

bool is_channels_last_conv(const ir::Node& n) {
  if (!is_kiln(n, "FusedConv") || n.outputs.size() != 1 || n.inputs.size() < 2) return false;
  const ir::Attribute* cl = n.attr("channels_last");
  return cl != nullptr && cl->i == 1;
}

bool has_activation(const ir::Node& n) {
  const ir::Attribute* a = n.attr("activation");
  return a != nullptr && !a->s.empty();
}

// The input at `i`, "" when absent.
const std::string& input_at(const ir::Node& n, size_t i) {
  static const std::string kNone;
  return i < n.inputs.size() ? n.inputs[i] : kNone;
}

// What a 1x1 channels-last conv both patterns share: weights a constant [M, 1, 1, C] of a float dtype
// (returned), bias absent or a constant [M] of that dtype (*bias), no padding, dilation 1, one group, and
// the stride (the same along both axes) in *stride. Null when the conv is anything else.
const Tensor* one_by_one(const ir::Graph& g, const ir::Node& n, const Tensor** bias, int64_t* stride) {
  const Tensor* w = constant_value(g, n.inputs[1]);
  if (w == nullptr || !dtype_is_float(w->dtype()) || w->rank() != 4 || w->dim(1) != 1 || w->dim(2) != 1) return nullptr;
  if (ints_attr_or(n, "kernel_shape", {1, 1}) != std::vector<int64_t>{1, 1} ||
      ints_attr_or(n, "pads", {0, 0, 0, 0}) != std::vector<int64_t>{0, 0, 0, 0} ||
      ints_attr_or(n, "dilations", {1, 1}) != std::vector<int64_t>{1, 1})
    return nullptr;
  if (const ir::Attribute* group = n.attr("group"); group != nullptr && group->i != 1) return nullptr;
  // A 1x1 window needs no padding in any auto_pad mode, but a mode other than these is not worth trusting.
  if (const ir::Attribute* ap = n.attr("auto_pad"); ap != nullptr && ap->s != "NOTSET" && ap->s != "VALID" && !ap->s.empty())
    return nullptr;
  const std::vector<int64_t> strides = ints_attr_or(n, "strides", {1, 1});
  if (strides.size() != 2 || strides[0] != strides[1] || strides[0] < 1) return nullptr;
  *stride = strides[0];
  *bias = nullptr;
  if (const std::string& b = input_at(n, 2); !b.empty()) {
    *bias = constant_value(g, b);
    if (*bias == nullptr || (*bias)->dtype() != w->dtype() || (*bias)->rank() != 1 || (*bias)->dim(0) != w->dim(0))
      return nullptr;
  }
  return w;
}

// Whether `value` is a rank-4 NHWC tensor of dtype `dt` with `c` channels and the batch and spatial dims of
// `like` (the residual D: the concatenated pieces must line up pixel for pixel).
bool nhwc_like(const ir::Graph& g, const std::string& value, DType dt, int64_t c, const std::vector<ir::Dim>& like) {
  std::vector<ir::Dim> d;
  if (dtype_of(g, value) != dt || !dims_of(g, value, &d) || d.size() != 4 || !d[3].known() || d[3].value != c)
    return false;
  for (size_t i = 0; i < 3; ++i)
    if (!same_dim(d[i], like[i])) return false;
  return true;
}

// [M, 1, 1, a] and [M, 1, 1, b] -> [M, 1, 1, a + b], row by row, elements of any size.
Tensor concat_last_axis(const Tensor& a, const Tensor& b) {
  const int64_t m = a.dim(0), ca = a.dim(3), cb = b.dim(3);
  Tensor out(a.dtype(), {m, 1, 1, ca + cb});
  const size_t es = dtype_size(a.dtype());
  auto* dst = static_cast<unsigned char*>(out.raw_data());
  for (int64_t o = 0; o < m; ++o) {
    std::memcpy(dst + o * (ca + cb) * es, static_cast<const unsigned char*>(a.raw_data()) + o * ca * es, ca * es);
    std::memcpy(dst + (o * (ca + cb) + ca) * es, static_cast<const unsigned char*>(b.raw_data()) + o * cb * es, cb * es);
  }
  return out;
}

// A match: Y's node at `y`, D's at `d`, and what the rewrite needs of them.
struct Match {
  size_t y = 0, d = 0;
  const Tensor* w3 = nullptr;
  const Tensor* wd = nullptr;
  const Tensor* b3 = nullptr;
  const Tensor* bd = nullptr;
  int64_t stride = 1;
};

std::optional<Match> match_at(const ir::Model& model, const GraphReaders& readers, size_t k) {
  const ir::Graph& g = model.graph;
  const ir::Node& y = g.nodes[k];
  if (!is_channels_last_conv(y) || y.inputs.size() != 4 || y.inputs[3].empty()) return std::nullopt;
  const std::string& z = y.inputs[3];
  if (y.inputs[0] == z || input_at(y, 2) == z) return std::nullopt;  // D read otherwise than as Z
  const long dk = readers.producer(z);
  if (dk < 0 || readers.sole_reader(z) != static_cast<long>(k)) return std::nullopt;
  const ir::Node& d = g.nodes[static_cast<size_t>(dk)];
  if (!is_channels_last_conv(d) || d.inputs.size() > 3 || has_activation(d)) return std::nullopt;

  Match m;
  m.y = k;
  m.d = static_cast<size_t>(dk);
  int64_t y_stride = 0;
  m.w3 = one_by_one(g, y, &m.b3, &y_stride);
  m.wd = one_by_one(g, d, &m.bd, &m.stride);
  if (m.w3 == nullptr || m.wd == nullptr || y_stride != 1) return std::nullopt;
  const DType dt = m.w3->dtype();
  const int64_t mo = m.w3->dim(0), ca = m.w3->dim(3), cx = m.wd->dim(3);
  if (m.wd->dtype() != dt || m.wd->dim(0) != mo || ca % 8 != 0 || cx % 8 != 0) return std::nullopt;
  std::vector<ir::Dim> dd;
  if (!dims_of(g, z, &dd) || dd.size() != 4 || dtype_of(g, z) != dt) return std::nullopt;
  if (!nhwc_like(g, y.inputs[0], dt, ca, dd)) return std::nullopt;
  // X itself has D's batch, and its spatial dims shrink by the stride: X' = X[:, ::s, ::s] then has D's.
  std::vector<ir::Dim> xd;
  if (dtype_of(g, d.inputs[0]) != dt || !dims_of(g, d.inputs[0], &xd) || xd.size() != 4 || !xd[3].known() ||
      xd[3].value != cx || !same_dim(xd[0], dd[0]))
    return std::nullopt;
  if (m.stride == 1 && !(same_dim(xd[1], dd[1]) && same_dim(xd[2], dd[2]))) return std::nullopt;
  // The traffic count of the file's comment.
  if (2 * (ca + cx) + (m.stride > 1 ? 2 * cx : 0) >= 2 * mo) return std::nullopt;
  // A strided sample needs Slice's steps, which came with opset 10.
  if (m.stride > 1 && model.default_opset() < 10) return std::nullopt;
  return m;
}

ir::Node make_node(const std::string& name, const std::string& op, std::vector<std::string> inputs,
                   const std::string& output, int index) {
  ir::Node n;
  n.name = name;
  n.op_type = op;
  n.inputs = std::move(inputs);
  n.outputs = {output};
  n.index = index;
  return n;
}

}  // namespace

Status fold_projection_shortcut(ir::Model& model, int* folded, std::map<std::string, std::string>* made_from) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  FreshNames fresh(g);
  std::vector<bool> gone(g.nodes.size(), false);
  std::map<size_t, std::vector<ir::Node>> replacement;  // Y's position -> [Slice], Concat, the conv
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const std::optional<Match> m = match_at(model, readers, k);
    if (!m) continue;
    const ir::Node& y = g.nodes[m->y];
    const ir::Node& d = g.nodes[m->d];
    std::vector<ir::Node> nodes;
    // X' = X sampled at the stride: a Slice of steps (s, s) along H and W.
    std::string xs = d.inputs[0];
    if (m->stride > 1) {
      const std::string sampled = fresh(xs + "__stride" + std::to_string(m->stride));
      auto constant = [&](const char* what, std::vector<int64_t> v) {
        const std::string name = fresh(sampled + "_" + what);
        g.initializers[name] = Tensor::from_vector<int64_t>(DType::kInt64, {2}, v);
        return name;
      };
      constexpr int64_t kEnd = std::numeric_limits<int64_t>::max();
      nodes.push_back(make_node(y.name + " shortcut slice", "Slice",
                                {xs, constant("starts", {0, 0}), constant("ends", {kEnd, kEnd}),
                                 constant("axes", {1, 2}), constant("steps", {m->stride, m->stride})},
                                sampled, y.index));
      xs = sampled;
    }
    const std::string cat = fresh(y.outputs[0] + "__shortcut_concat");
    nodes.push_back(make_node(y.name + " shortcut concat", "Concat", {y.inputs[0], xs}, cat, y.index));
    nodes.back().attributes["axis"] = int_attribute(3);

    // W = [W3 | Wd] along the input channels; B = B3 + Bd, summed in float64 and stored in their dtype.
    const std::string w = fresh(y.inputs[1] + "__with_shortcut");
    g.initializers[w] = concat_last_axis(*m->w3, *m->wd);
    std::string b;
    if (m->b3 != nullptr || m->bd != nullptr) {
      const Tensor& like = m->b3 != nullptr ? *m->b3 : *m->bd;
      Tensor sum(DType::kFloat64, like.shape());
      for (int64_t i = 0; i < like.numel(); ++i)
        sum.data<double>()[i] = (m->b3 ? m->b3->scalar_as_double(i) : 0.0) + (m->bd ? m->bd->scalar_as_double(i) : 0.0);
      b = fresh((m->b3 != nullptr ? y.inputs[2] : d.inputs[2]) + "__with_shortcut");
      KILN_ASSIGN_OR_RETURN(g.initializers[b], cast_tensor(sum, like.dtype()));
    }

    ir::Node conv = y;  // its attributes (the activation's among them), domain, output and index
    conv.name = d.name + " + " + y.name;  // answers to both layers' names (--layer-precision, kiln inspect)
    conv.inputs = {cat, w};
    if (!b.empty()) conv.inputs.push_back(b);
    if (made_from != nullptr) {
      for (const ir::Node& n : nodes) (*made_from)[n.name] = y.name;
      (*made_from)[conv.name] = y.name;
    }
    nodes.push_back(std::move(conv));
    g.value_types.erase(d.outputs[0]);  // D vanishes
    gone[m->d] = true;
    replacement[m->y] = std::move(nodes);
  }
  if (folded) *folded = static_cast<int>(replacement.size());
  if (replacement.empty()) return OkStatus();
  // At Y's place: A and X (read by D, which came before Y) are both computed by then.
  std::vector<ir::Node> out;
  out.reserve(g.nodes.size() + 2 * replacement.size());
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (auto it = replacement.find(k); it != replacement.end())
      for (ir::Node& n : it->second) out.push_back(std::move(n));
    else if (!gone[k])
      out.push_back(std::move(g.nodes[k]));
  }
  g.nodes = std::move(out);
  return OkStatus();
}

}  // namespace kiln::passes
