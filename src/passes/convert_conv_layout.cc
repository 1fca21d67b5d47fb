// Channels-last convolutions: cuDNN's tensor-core kernels for float16/bfloat16 want NHWC activations and
// KRSC weights; fed NCHW, they transpose on every call. This pass turns eligible 2-D convolutions into
// kiln.FusedConv with channels_last = 1: the weights are transposed once here, at build time, and the
// activations by Transpose nodes around the conv. Back-to-back transposes that undo each other are then
// bypassed, so a chain of NHWC convolutions keeps its activations in NHWC from the first to the last.
//
// A conv with fewer than 8 input channels (an image stem: 1, 3 or 4) has no tensor-core kernel as it is;
// cuDNN falls back to a generic one (ResNet-50's 7x7 stem took 29% of the batch-256 time that way). Its
// channels are padded to 8 (or 4: padded_channels): zero weights for the extra channels, made here, and a Pad
// of zeros on the NHWC input's last axis, so the products of the extra channels add nothing.
//
// Pools between the convs (ResNet's MaxPool after the stem, its GlobalAveragePool before the classifier)
// would transpose back and forth around them: a half-precision 2-D pool that reads a Transpose to NCHW
// becomes kiln.ChannelsLastPool of the NHWC value, its output put back through a Transpose like a conv's.
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "passes/graph_uses.h"
#include "passes/passes.h"
#include "runtime/executor.h"

namespace kiln::passes {

namespace {

const std::vector<int64_t> kToNhwc = {0, 2, 3, 1};
const std::vector<int64_t> kToNchw = {0, 3, 1, 2};

bool is_nchw_conv(const ir::Node& n) {
  if (n.domain.empty() && n.op_type == "Conv") return true;
  if (n.domain != "kiln" || n.op_type != "FusedConv") return false;
  const ir::Attribute* cl = n.attr("channels_last");
  return cl == nullptr || cl->i == 0;
}

bool rank4(const ir::TypeInfo* t) {
  return t != nullptr && t->kind == ir::TypeInfo::Kind::kTensor && t->has_shape && t->dims.size() == 4 &&
         t->dtype != DType::kUndefined;
}

ir::TypeInfo permuted(const ir::TypeInfo& t, const std::vector<int64_t>& perm) {
  ir::TypeInfo p = t;
  for (size_t i = 0; i < perm.size(); ++i) p.dims[i] = t.dims[perm[i]];
  return p;
}

// A Transpose's permutation (absent: the dims reversed, as ONNX says).
std::vector<int64_t> perm_of(const ir::Node& n, size_t rank) {
  if (const ir::Attribute* a = n.attr("perm"); a != nullptr && !a->ints.empty()) return a->ints;
  std::vector<int64_t> p(rank);
  for (size_t i = 0; i < rank; ++i) p[i] = static_cast<int64_t>(rank - 1 - i);
  return p;
}

// The channel count (per group) a channels-last conv runs with: for an ungrouped conv of fewer than 8 channels
// (an image stem) 8, or 4 where it has at most 4, a horizontal stride of 2 and what the CUDA stem kernel
// (cuda.conv.stem) takes besides: output channels a multiple of 32, a window of at most 7x7, no dilation
// (ResNet's and MobileNet's stems). That kernel then puts two horizontally adjacent window positions in one
// 16-byte chunk, almost halving its products, and the padded input is half as large; cuDNN, which would run
// any other such conv, wants 8. Otherwise its own count. `w`: the conv's weights [M, C, kH, kW].
int64_t padded_channels(const ir::Node& conv, int64_t c, const Tensor& w) {
  const ir::Attribute* group = conv.attr("group");
  if ((group != nullptr && group->i != 1) || c >= 8) return c;
  const ir::Attribute* strides = conv.attr("strides");
  const bool stride_w_2 = strides != nullptr && strides->ints.size() == 2 && strides->ints[1] == 2;
  return c <= 4 && stride_w_2 && stem_kernel_window(conv, w.dim(0), w.dim(2), w.dim(3)) ? 4 : 8;
}

// [M, C/group, kH, kW] -> [M, kH, kW, c_out], element by element of any size; channels from C/group up to
// c_out are zeros.
Tensor weights_to_krsc(const Tensor& w, int64_t c_out) {
  const int64_t m = w.dim(0), c = w.dim(1), kh = w.dim(2), kw = w.dim(3);
  Tensor out(w.dtype(), {m, kh, kw, c_out});
  std::memset(out.raw_data(), 0, out.nbytes());
  const size_t es = dtype_size(w.dtype());
  const auto* src = static_cast<const unsigned char*>(w.raw_data());
  auto* dst = static_cast<unsigned char*>(out.raw_data());
  for (int64_t o = 0; o < m; ++o)
    for (int64_t ci = 0; ci < c; ++ci)
      for (int64_t r = 0; r < kh * kw; ++r) {
        const int64_t from = (o * c + ci) * kh * kw + r, to = (o * kh * kw + r) * c_out + ci;
        std::memcpy(dst + to * es, src + from * es, es);
      }
  return out;
}

class LayoutConverter {
 public:
  LayoutConverter(ir::Graph& g, int opset) : g_(g), opset_(opset), fresh_(g) {}

  // Converts the eligible convolutions; returns how many. Checks them all before changing anything, so
  // that an error leaves the model as it was.
  Result<int> convert(const std::function<bool(const ir::Node&)>& eligible) {
    std::vector<bool> chosen(g_.nodes.size(), false);
    for (size_t k = 0; k < g_.nodes.size(); ++k) {
      const ir::Node& n = g_.nodes[k];
      if (!is_nchw_conv(n) || n.inputs.size() < 2 || n.outputs.size() != 1 || !eligible(n)) continue;
      const ir::TypeInfo* x = g_.type_of(n.inputs[0]);
      const std::string z = n.inputs.size() > 3 ? n.inputs[3] : "";
      auto w = g_.initializers.find(n.inputs[1]);
      // A 2-D convolution whose weights are known now, with the types the inserted transposes must carry.
      if (!rank4(x) || w == g_.initializers.end() || w->second.dtype() == DType::kString) continue;
      if (w->second.rank() != 4)
        return InvalidArgument(n.describe() + ": weight '" + w->first + "' " + w->second.description() +
                               " does not fit the 4-D input " + x->to_string());
      if (!rank4(g_.type_of(n.outputs[0])) || (!z.empty() && !rank4(g_.type_of(z)))) continue;
      chosen[k] = true;
    }
    int converted = 0;
    std::vector<ir::Node> out;
    out.reserve(g_.nodes.size());
    for (size_t k = 0; k < g_.nodes.size(); ++k) {
      ir::Node& n = g_.nodes[k];
      if (!chosen[k]) {
        out.push_back(std::move(n));
        continue;
      }
      const ir::TypeInfo y = *g_.type_of(n.outputs[0]);
      const std::string z = n.inputs.size() > 3 ? n.inputs[3] : "";
      const int64_t c = g_.initializers.at(n.inputs[1]).dim(1);
      n.inputs[0] = to_nhwc(n.inputs[0], n.index, &out);
      const int64_t c_run = padded_channels(n, c, g_.initializers.at(n.inputs[1]));
      if (c_run != c) n.inputs[0] = pad_channels(n.inputs[0], c, c_run, n.index, &out);
      n.inputs[1] = krsc_weights(n.inputs[1], c_run);
      if (!z.empty()) n.inputs[3] = to_nhwc(z, n.index, &out);
      if (n.domain.empty()) {  // a plain Conv: no epilogue
        n.domain = "kiln";
        n.op_type = "FusedConv";
        n.attributes["activation"].type = ir::Attribute::Type::kString;
        n.attributes["activation"].s = "";
      }
      n.attributes["channels_last"].type = ir::Attribute::Type::kInt;
      n.attributes["channels_last"].i = 1;
      // The conv now writes an NHWC twin; the original name keeps its NCHW value through a Transpose back,
      // so every other reader (and a graph output) is unchanged.
      const std::string nchw = n.outputs[0];
      const std::string nhwc = fresh_(nchw + "__nhwc");
      g_.value_types[nhwc] = permuted(y, kToNhwc);
      n.outputs[0] = nhwc;
      const int index = n.index;
      out.push_back(std::move(n));
      out.push_back(transpose(nchw + "__to_nchw", nhwc, nchw, kToNchw, index));
      ++converted;
    }
    g_.nodes = std::move(out);
    return converted;
  }

  // Makes each pool that reads an NCHW view of an NHWC value (the output of a Transpose [0,3,1,2]) a
  // kiln.ChannelsLastPool of that NHWC value, in the conv conversion's shape: its output goes back to the
  // original name through a Transpose [0,3,1,2], which the next conv's Transpose to NHWC cancels. Only half
  // types, as for the convs: the tensor-core convolutions are what keep the activations in NHWC. Returns how
  // many; the Transposes they no longer read are left for eliminate_dead_nodes.
  int convert_pools() {
    std::map<std::string, std::string> nhwc_of;  // an NCHW view -> the NHWC value it transposes
    std::vector<ir::Node> back;                  // the Transposes back, in the order of their pools
    int converted = 0;
    for (ir::Node& n : g_.nodes) {
      if (n.domain.empty() && n.op_type == "Transpose" && n.inputs.size() == 1 && n.outputs.size() == 1 &&
          perm_of(n, 4) == kToNchw)
        nhwc_of[n.outputs[0]] = n.inputs[0];
      const char* mode = pool_mode(n);
      if (mode == nullptr) continue;
      auto source = nhwc_of.find(n.inputs[0]);
      const ir::TypeInfo* x = g_.type_of(n.inputs[0]);
      const ir::TypeInfo* y = g_.type_of(n.outputs[0]);
      if (source == nhwc_of.end() || !rank4(x) || !rank4(y) ||
          (x->dtype != DType::kFloat16 && x->dtype != DType::kBFloat16))
        continue;
      n.domain = "kiln";
      n.op_type = "ChannelsLastPool";
      n.attributes.erase("storage_order");  // of the Indices output, which is not there
      n.attributes["mode"].type = ir::Attribute::Type::kString;
      n.attributes["mode"].s = mode;
      n.inputs[0] = source->second;
      const std::string nchw = n.outputs[0];
      const std::string nhwc = fresh_(nchw + "__nhwc");
      g_.value_types[nhwc] = permuted(*y, kToNhwc);
      n.outputs = {nhwc};
      back.push_back(transpose(nchw + "__to_nchw", nhwc, nchw, kToNchw, n.index));
      nhwc_of[nchw] = nhwc;  // a pool of this pool stays in NHWC too
      ++converted;
    }
    if (converted == 0) return 0;
    // Each Transpose back goes right after its pool.
    std::vector<ir::Node> out;
    out.reserve(g_.nodes.size() + back.size());
    size_t next = 0;
    for (ir::Node& n : g_.nodes) {
      const bool pool = next < back.size() && n.outputs.size() == 1 && back[next].inputs[0] == n.outputs[0];
      out.push_back(std::move(n));
      if (pool) out.push_back(std::move(back[next++]));
    }
    g_.nodes = std::move(out);
    return converted;
  }

 private:
  // The ChannelsLastPool mode of a 2-D ONNX pool this pass converts; nullptr for any other node (a MaxPool
  // whose Indices are used among them).
  static const char* pool_mode(const ir::Node& n) {
    if (!n.domain.empty() || n.inputs.size() != 1 || n.outputs.empty() || n.outputs[0].empty()) return nullptr;
    if (n.op_type == "GlobalAveragePool" || n.op_type == "GlobalMaxPool")
      return n.outputs.size() == 1 ? (n.op_type == "GlobalMaxPool" ? "global_max" : "global_average") : nullptr;
    const bool max = n.op_type == "MaxPool";
    if (!max && n.op_type != "AveragePool") return nullptr;
    if (n.outputs.size() > 2 || (n.outputs.size() == 2 && !n.outputs[1].empty())) return nullptr;
    const ir::Attribute* kernel = n.attr("kernel_shape");
    if (kernel == nullptr || kernel->ints.size() != 2) return nullptr;
    return max ? "max" : "average";
  }

  ir::Node transpose(const std::string& name, const std::string& in, const std::string& out,
                     const std::vector<int64_t>& perm, int index) {
    ir::Node t;
    t.name = name;
    t.index = index;  // the conv's, for error messages
    t.op_type = "Transpose";
    t.inputs = {in};
    t.outputs = {out};
    t.attributes["perm"].type = ir::Attribute::Type::kInts;
    t.attributes["perm"].ints = perm;
    return t;
  }

  // The NHWC twin of an NCHW value, made once however many convolutions read it.
  std::string to_nhwc(const std::string& value, int index, std::vector<ir::Node>* out) {
    if (auto it = nhwc_.find(value); it != nhwc_.end()) return it->second;
    const std::string twin = fresh_(value + "__nhwc");
    g_.value_types[twin] = permuted(*g_.type_of(value), kToNhwc);
    out->push_back(transpose(value + "__to_nhwc", value, twin, kToNhwc, index));
    return nhwc_[value] = twin;
  }

  // The KRSC copy of a weight initializer, its channels padded to `c` (the NCHW one stays for
  // eliminate_dead_nodes to drop if unread).
  std::string krsc_weights(const std::string& w, int64_t c) {
    if (auto it = krsc_.find(w); it != krsc_.end()) return it->second;
    const std::string name = fresh_(w + "__krsc");
    g_.initializers[name] = weights_to_krsc(g_.initializers.at(w), c);
    return krsc_[w] = name;
  }

  // An NHWC value of c channels padded with zeros to `to`, made once however many convs read it.
  std::string pad_channels(const std::string& nhwc, int64_t c, int64_t to, int index, std::vector<ir::Node>* out) {
    if (auto it = padded_.find(nhwc); it != padded_.end()) return it->second;
    ir::TypeInfo t = *g_.type_of(nhwc);
    const int64_t extra = to - c;
    t.dims[3] = ir::Dim::of(to);
    const std::string twin = fresh_(nhwc + "__pad" + std::to_string(to));
    g_.value_types[twin] = t;
    ir::Node pad;
    pad.name = nhwc + "__pad_channels";
    pad.index = index;
    pad.op_type = "Pad";
    pad.outputs = {twin};
    const std::vector<int64_t> pads = {0, 0, 0, 0, 0, 0, 0, extra};  // begins, then ends: C's end only
    if (opset_ >= 11) {  // pads as an input (constant mode, zero value: the defaults)
      const std::string pads_name = fresh_(twin + "_pads");
      g_.initializers[pads_name] = Tensor::from_vector<int64_t>(DType::kInt64, {8}, pads);
      pad.inputs = {nhwc, pads_name};
    } else {
      pad.inputs = {nhwc};
      pad.attributes["pads"].type = ir::Attribute::Type::kInts;
      pad.attributes["pads"].ints = pads;
    }
    out->push_back(std::move(pad));
    return padded_[nhwc] = twin;
  }

  ir::Graph& g_;
  const int opset_;
  FreshNames fresh_;  // new value and initializer names that shadow none
  std::map<std::string, std::string> nhwc_, krsc_, padded_;
};

// Bypasses every Transpose that undoes the Transpose it reads (its readers read that one's input instead),
// then drops the transposes nobody reads any more.
void cancel_transpose_pairs(ir::Graph& g) {
  std::map<std::string, const ir::Node*> producer;
  std::set<std::string> graph_outputs;
  for (const auto& o : g.outputs) graph_outputs.insert(o.name);
  std::map<std::string, std::string> bypass;  // value -> the value it equals
  std::set<std::string> involved;             // outputs of the transposes of the pairs found
  for (const ir::Node& n : g.nodes) {
    for (const auto& o : n.outputs) producer[o] = &n;
    if (!n.domain.empty() || n.op_type != "Transpose" || n.inputs.size() != 1 || n.outputs.size() != 1 ||
        graph_outputs.count(n.outputs[0]))
      continue;
    auto p = producer.find(n.inputs[0]);
    if (p == producer.end()) continue;
    const ir::Node& first = *p->second;
    if (!first.domain.empty() || first.op_type != "Transpose" || first.inputs.size() != 1) continue;
    const ir::TypeInfo* mid = g.type_of(n.inputs[0]);
    if (mid == nullptr || !mid->has_shape) continue;
    const size_t rank = mid->dims.size();
    std::vector<int64_t> p1 = perm_of(first, rank), p2 = perm_of(n, rank);
    if (p1.size() != rank || p2.size() != rank) continue;
    bool identity = true;  // out[i] = mid[p2[i]] = in[p1[p2[i]]]
    for (size_t i = 0; i < rank; ++i)
      if (p2[i] < 0 || p2[i] >= static_cast<int64_t>(rank) || p1[p2[i]] != static_cast<int64_t>(i)) identity = false;
    if (!identity) continue;
    const std::string& source = first.inputs[0];
    bypass[n.outputs[0]] = bypass.count(source) ? bypass[source] : source;
    involved.insert(n.outputs[0]);
    involved.insert(first.outputs[0]);
  }
  if (bypass.empty()) return;
  // Subgraphs read outer values by name: a value one of them reads keeps its Transpose.
  std::set<std::string> read_inside;
  for (const ir::Node& n : g.nodes)
    for (const auto& [an, a] : n.attributes) {
      if (a.g)
        for (const auto& v : runtime::free_variables(*a.g)) read_inside.insert(v);
      for (const auto& sg : a.graphs)
        for (const auto& v : runtime::free_variables(*sg)) read_inside.insert(v);
    }
  for (ir::Node& n : g.nodes)
    for (auto& in : n.inputs)
      if (auto b = bypass.find(in); b != bypass.end() && !read_inside.count(in)) in = b->second;

  // Drop those of them nobody reads now, last first, so that a chain of them goes in one sweep.
  std::map<std::string, int> reads;
  for (const auto& o : graph_outputs) ++reads[o];
  for (const ir::Node& n : g.nodes)
    for (const auto& v : runtime::node_reads(n)) ++reads[v];
  std::vector<bool> keep(g.nodes.size(), true);
  for (size_t k = g.nodes.size(); k-- > 0;) {
    const ir::Node& n = g.nodes[k];
    if (n.outputs.size() != 1 || !involved.count(n.outputs[0]) || reads[n.outputs[0]] > 0) continue;
    keep[k] = false;
    for (const auto& v : runtime::node_reads(n)) --reads[v];
    g.value_types.erase(n.outputs[0]);
  }
  std::vector<ir::Node> kept;
  for (size_t k = 0; k < g.nodes.size(); ++k)
    if (keep[k]) kept.push_back(std::move(g.nodes[k]));
  g.nodes = std::move(kept);
}

}  // namespace

bool conv_suits_channels_last(const ir::Graph& g, const ir::Node& n) {
  if (n.inputs.size() < 2) return false;
  const ir::TypeInfo* x = g.type_of(n.inputs[0]);
  auto w = g.initializers.find(n.inputs[1]);
  if (x == nullptr || (x->dtype != DType::kFloat16 && x->dtype != DType::kBFloat16) || w == g.initializers.end() ||
      w->second.rank() != 4)
    return false;
  const ir::Attribute* group = n.attr("group");
  const int64_t groups = group ? group->i : 1;
  const int64_t m = w->second.dim(0), c = w->second.dim(1) * groups;
  // Fewer than 8 input channels are padded to 8 or 4 (ungrouped convs only).
  return m % 8 == 0 && (c % 8 == 0 || (groups == 1 && c < 8));
}

Status convert_conv_layout(ir::Model& model, const std::function<bool(const ir::Node&)>& eligible, int* converted) {
  LayoutConverter converter(model.graph, model.default_opset());
  KILN_ASSIGN_OR_RETURN(int n, converter.convert(eligible));
  if (converted) *converted = n;
  if (n + converter.convert_pools() == 0) return OkStatus();
  model.opsets["kiln"] = 1;
  cancel_transpose_pairs(model.graph);
  return OkStatus();
}

}  // namespace kiln::passes
