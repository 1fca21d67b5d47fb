// Pair output sampling: a kiln.FusedConvPair whose first output Y is read by one node only, a 1x1
// channels-last kiln.FusedConv of stride (sh, sw) > 1 without padding, writes Y only at the pixels that conv
// reads, (h, w) with h % sh == 0 and w % sw == 0, as the smaller [N, ceil(H / sh), ceil(W / sw), C1]; the
// conv then has stride 1 and computes the same output. A 1x1 window of stride s with no padding reads
// exactly those pixels, so nothing else changes.
//
// In ResNet-50 this is the junction of layer1.2 and layer2.0: Y is layer1.2's output ([256, 56, 56, 256] at
// batch 256, 411 MB), the pair's second conv is layer2.0's conv1 (it reads Y on chip), and the only other
// reader is layer2.0's downsample, a 1x1 conv of stride 2 that reads a quarter of it. The pair writes 103 MB
// instead of 411 MB (a quarter of what it moved; at this junction its math bounds it more than memory, so it
// ran 0.454 -> 0.443 ms on the H100), and the downsample, now of stride 1, folds into layer2.0's conv3 when
// fold_projection_shortcut runs again: that is most of the gain.
//
// Only the pair's first output: the second, Y2, is computed from all of Y. Not where Y is a graph output or
// read by anything else (the other reader would need the whole of it), nor where the conv reads Y twice (as
// its residual too).
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// The stride (sh, sw) of the conv at `r` reading `y` as its X, when sampling Y first at that stride gives the
// same result with stride 1: channels-last kiln.FusedConv, 1x1 window, no padding, dilation 1, Y read only
// as X. Empty otherwise, or when the stride is 1.
std::vector<int64_t> sampling_stride(const ir::Graph& g, const ir::Node& r, const std::string& y) {
  if (!is_kiln(r, "FusedConv") || r.inputs.size() < 2 || r.inputs[0] != y) return {};
  for (size_t i = 1; i < r.inputs.size(); ++i)
    if (r.inputs[i] == y) return {};
  const ir::Attribute* cl = r.attr("channels_last");
  if (cl == nullptr || cl->type != ir::Attribute::Type::kInt || cl->i != 1) return {};
  std::vector<ir::Dim> w;
  if (!dims_of(g, r.inputs[1], &w) || w.size() != 4 || !w[1].known() || w[1].value != 1 || !w[2].known() || w[2].value != 1)
    return {};
  if (ints_attr_or(r, "kernel_shape", {1, 1}) != std::vector<int64_t>{1, 1} ||
      ints_attr_or(r, "pads", {0, 0, 0, 0}) != std::vector<int64_t>{0, 0, 0, 0} ||
      ints_attr_or(r, "dilations", {1, 1}) != std::vector<int64_t>{1, 1})
    return {};
  // SAME_* pads a strided 1x1 window when the size is not a multiple of the stride: only the unpadded modes.
  if (const ir::Attribute* ap = r.attr("auto_pad");
      ap != nullptr && (ap->type != ir::Attribute::Type::kString || (!ap->s.empty() && ap->s != "NOTSET" && ap->s != "VALID")))
    return {};
  const std::vector<int64_t> s = ints_attr_or(r, "strides", {1, 1});
  if (s.size() != 2 || s[0] < 1 || s[1] < 1 || (s[0] == 1 && s[1] == 1)) return {};
  return s;
}

}  // namespace

Status sample_pair_output(ir::Model& model, int* sampled) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  int count = 0;
  for (ir::Node& pair : g.nodes) {
    if (!is_kiln(pair, "FusedConvPair") || pair.outputs.empty() || pair.attr("output_strides") != nullptr) continue;
    const std::string& y = pair.outputs[0];
    if (known_rank(g, y) != 4) continue;
    const long r = readers.sole_reader(y);  // also: not a graph output
    if (r < 0) continue;
    ir::Node& conv = g.nodes[static_cast<size_t>(r)];
    const std::vector<int64_t> stride = sampling_stride(g, conv, y);
    if (stride.empty()) continue;
    pair.attributes["output_strides"] = ints_attribute(stride);
    conv.attributes["strides"] = ints_attribute({1, 1});
    g.value_types.erase(y);  // infer_shapes gives it its sampled shape
    ++count;
  }
  if (sampled) *sampled = count;
  return OkStatus();
}

}  // namespace kiln::passes
