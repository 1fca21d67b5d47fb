// Concat in place: a channel Concat(A, B) of channels-last tensors, one of whose inputs is the first output Y
// of a kiln.FusedConvPair that only the Concat reads, stops copying Y. The pair writes Y straight into its
// channels of a tensor as wide as the concatenation (attributes output_channels and output_channel_offset),
// and the Concat becomes kiln.WriteChannels(that tensor, other input) with the other input's offset, which
// the GPU runs in place (cuda_program.cc): it writes the other input's channels only.
//
// In ResNet-50 this is layer2.0, once sample_pair_output and fold_projection_shortcut are done: the folded
// conv3 reads Concat(conv2's output, the sampled layer1.2 output), 128 + 256 channels. The Concat moved
// 308 MB at batch 256 (0.107 ms); writing conv2's 128 channels in place moves 103 MB.
//
// Only where the pair's Y is read by the Concat alone (and is not a graph output), the Concat has two inputs
// of one dtype, 4-D, along the last axis, with the same N, H and W, and channels known multiples of 8 (the
// kernels' 16-byte pieces).
#include <map>
#include <string>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::passes {
namespace {

// The known channel count of a 4-D `value` with the N, H and W of `like` (*dims), a multiple of 8 above 0;
// -1 otherwise.
int64_t channels_of(const ir::Graph& g, const std::string& value, std::vector<ir::Dim>* dims) {
  std::vector<ir::Dim> d;
  if (value.empty() || !dims_of(g, value, &d) || d.size() != 4 || !d[3].known() || d[3].value <= 0 || d[3].value % 8 != 0)
    return -1;
  if (!dims->empty())
    for (size_t i = 0; i < 3; ++i)
      if (!same_dim(d[i], (*dims)[i])) return -1;
  *dims = d;
  return d[3].value;
}

}  // namespace

Status write_concat_in_place(ir::Model& model, int* rewritten) {
  ir::Graph& g = model.graph;
  const GraphReaders readers(g);
  int count = 0;
  for (size_t at = 0; at < g.nodes.size(); ++at) {
    ir::Node& cat = g.nodes[at];
    if (!is_onnx(cat, "Concat") || cat.inputs.size() != 2 || cat.outputs.size() != 1 || cat.inputs[0] == cat.inputs[1])
      continue;
    const ir::Attribute* axis = cat.attr("axis");
    if (axis == nullptr || axis->type != ir::Attribute::Type::kInt || (axis->i != 3 && axis->i != -1)) continue;
    const DType dt = dtype_of(g, cat.inputs[0]);
    if (dt == DType::kUndefined || dtype_of(g, cat.inputs[1]) != dt) continue;
    std::vector<ir::Dim> dims;
    const int64_t c[2] = {channels_of(g, cat.inputs[0], &dims), channels_of(g, cat.inputs[1], &dims)};
    if (c[0] < 0 || c[1] < 0) continue;
    // The input a pair writes (the first that qualifies).
    for (int k = 0; k < 2; ++k) {
      const std::string& y = cat.inputs[k];
      const long p = readers.producer(y);
      if (p < 0 || readers.sole_reader(y) != static_cast<long>(at)) continue;  // also: not a graph output
      ir::Node& pair = g.nodes[static_cast<size_t>(p)];
      if (!is_kiln(pair, "FusedConvPair") || pair.outputs.empty() || pair.outputs[0] != y ||
          pair.attr("output_channels") != nullptr)
        continue;
      pair.attributes["output_channels"] = int_attribute(c[0] + c[1]);
      pair.attributes["output_channel_offset"] = int_attribute(k == 0 ? 0 : c[0]);
      g.value_types.erase(y);  // infer_shapes widens it
      ir::Node write;
      write.name = cat.name;
      write.domain = "kiln";
      write.op_type = "WriteChannels";
      write.index = cat.index;
      write.inputs = {y, cat.inputs[1 - k]};
      write.outputs = cat.outputs;
      write.attributes["offset"] = int_attribute(k == 0 ? c[0] : 0);
      cat = std::move(write);
      ++count;
      break;
    }
  }
  if (count > 0) model.opsets.emplace("kiln", 1);
  if (rewritten) *rewritten = count;
  return OkStatus();
}

}  // namespace kiln::passes
