// kiln.FusedConv through cuDNN's graph API (see cudnn_graph_conv.h). The operation graph of one node:
//
//   conv = CONVOLUTION_FORWARD(X, W)        virtual, float (compute type float, cross-correlation)
//   t1   = conv + Z                         virtual, float (when Z is given)
//   t2   = t1 + B                           virtual, float (when B is given; B is [1, M, 1, ...])
//   Y    = act(t2)                          X's dtype (when there is an activation; otherwise the last op
//                                           above writes Y)
//
// with act: RELU_FWD for Relu; RELU_FWD with an upper clip for Clip(0, max) and with a lower clip slope for
// LeakyRelu; SIGMOID_FWD; SWISH_FWD with beta 1 for Silu. Their scalar attributes are set as doubles, the
// upper clip at most FLT_MAX (the math is float), as cudnn-frontend sets them.
//
// the order of the legacy cudnnConvolutionBiasActivationForward (act(conv + z + bias)), whose patterns
// cuDNN's precompiled fused engines recognise. Tensor dims are always in NCHW order, the strides say the
// layout (channels-last: {H*W*C, 1, W*C, C}); a 1-D problem is lifted to 2-D with a unit height, as for
// the legacy API. Grouped convolutions need nothing more: W's second dim is C / group.
//
// Engine configs whose numerical notes would break the node's precision are skipped: inputs down-converted,
// reductions in reduced precision, TF32 tensor cores on float32 when TF32 is not allowed, and Winograd on
// kernels larger than 3 (inaccurate, as conv_common.h's choose_fwd_algo explains).
#include "backends/cuda/cudnn_graph_conv.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <utility>

namespace kiln::cuda {
namespace {

using cudnn_conv::Geometry;
using cudnn_conv::kMaxAlgoWorkspace;

constexpr int kHeuristicTactics = 8;
constexpr size_t kByteAlignment = 16;  // what the tensors promise cuDNN; run() checks the pointers

// The handle attributes are deprecated in cuDNN 9 (a device-properties descriptor can stand in for
// ahead-of-time plans) but still honoured, and this layer builds on the device it runs on.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
constexpr cudnnBackendAttributeName_t kGraphHandle = CUDNN_ATTR_OPERATIONGRAPH_HANDLE;
constexpr cudnnBackendAttributeName_t kPlanHandle = CUDNN_ATTR_EXECUTION_PLAN_HANDLE;
#pragma GCC diagnostic pop

// Unique ids of the graph's tensors: the variant pack binds the real ones to pointers by these.
enum : int64_t { kUidX = 1, kUidW = 2, kUidB = 3, kUidZ = 4, kUidY = 5, kUidConv = 101, kUidAfterZ = 102, kUidAfterBias = 103 };

// A failed cuDNN call as a Status naming the node and the call: Unsupported for cuDNN's NOT_SUPPORTED
// family (3000-3999: no engine for this problem, which the tactic timer skips), Internal otherwise (a graph
// this file built wrongly).
Status graph_status(cudnnStatus_t s, const std::string& op, const char* call) {
  if (s == CUDNN_STATUS_SUCCESS) return OkStatus();
  char detail[512] = "";
  cudnnGetLastErrorString(detail, sizeof(detail));
  std::string m = op + ": " + call + " failed: " + cudnnGetErrorString(s);
  if (detail[0] != '\0') m += std::string(" (") + detail + ")";
  return static_cast<int>(s) / 1000 == 3 ? Unsupported(m) : Internal(m);
}

// One owned backend descriptor; move-only, destroyed with its owner.
class Desc {
 public:
  Desc() = default;
  ~Desc() { reset(); }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    if (this != &o) {
      reset();
      d_ = std::exchange(o.d_, nullptr);
    }
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  static Result<Desc> create(const std::string& op, cudnnBackendDescriptorType_t type) {
    Desc d;
    KILN_RETURN_IF_ERROR(graph_status(cudnnBackendCreateDescriptor(type, &d.d_), op, "cudnnBackendCreateDescriptor"));
    return d;
  }
  cudnnBackendDescriptor_t get() const { return d_; }
  // The address of the handle, for attributes that link a descriptor (CUDNN_TYPE_BACKEND_DESCRIPTOR).
  const cudnnBackendDescriptor_t* ptr() const { return &d_; }

 private:
  void reset() {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
    d_ = nullptr;
  }
  cudnnBackendDescriptor_t d_ = nullptr;
};

// Each call names its attribute in the error (`op` must be in scope).
#define KILN_GRAPH_SET(desc, attr, type, count, value) \
  KILN_RETURN_IF_ERROR(graph_status(cudnnBackendSetAttribute((desc).get(), attr, type, count, value), op, "cudnnBackendSetAttribute(" #attr ")"))
#define KILN_GRAPH_GET(desc, attr, type, requested, returned, value)                                                          \
  KILN_RETURN_IF_ERROR(graph_status(cudnnBackendGetAttribute((desc).get(), attr, type, requested, returned, value), op, \
                                    "cudnnBackendGetAttribute(" #attr ")"))
#define KILN_GRAPH_FINALIZE(desc, what) \
  KILN_RETURN_IF_ERROR(graph_status(cudnnBackendFinalize((desc).get()), op, "cudnnBackendFinalize(" what ")"))

// [a, b, spatial...], a 1-D problem lifted to 2-D with a unit height (cudnn_conv::cudnn_dims, in int64).
std::vector<int64_t> dims_of(int64_t a, int64_t b, const Shape& spatial) {
  std::vector<int64_t> d = {a, b};
  if (spatial.size() == 1) d.push_back(1);
  d.insert(d.end(), spatial.begin(), spatial.end());
  return d;
}

// Packed strides of NCHW-ordered dims: in that order, or with dim 1 (C) innermost, then the spatial dims
// last first, then dim 0 (channels-last; for W: KRSC).
std::vector<int64_t> strides_of(const std::vector<int64_t>& dims, bool channels_last) {
  const size_t r = dims.size();
  std::vector<int64_t> s(r, 1);
  if (!channels_last) {
    for (size_t i = r - 1; i-- > 0;) s[i] = s[i + 1] * dims[i + 1];
    return s;
  }
  int64_t stride = dims[1];
  for (size_t i = r - 1; i >= 2; --i) {
    s[i] = stride;
    stride *= dims[i];
  }
  s[0] = stride;
  return s;
}

// The graph and every descriptor it links (an execution plan refers to them; they live as long as it).
struct BuiltGraph {
  std::vector<Desc> parts;
  std::vector<cudnnBackendDescriptor_t> ops;
  Desc graph;
};

Result<cudnnBackendDescriptor_t> add_tensor(BuiltGraph& b, const std::string& op, int64_t uid, cudnnDataType_t type,
                                            const std::vector<int64_t>& dims, bool channels_last, bool is_virtual) {
  KILN_ASSIGN_OR_RETURN(Desc t, Desc::create(op, CUDNN_BACKEND_TENSOR_DESCRIPTOR));
  const std::vector<int64_t> strides = strides_of(dims, channels_last);
  const int64_t rank = static_cast<int64_t>(dims.size());
  const int64_t alignment = kByteAlignment;
  KILN_GRAPH_SET(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
  KILN_GRAPH_SET(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, rank, dims.data());
  KILN_GRAPH_SET(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, rank, strides.data());
  KILN_GRAPH_SET(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  KILN_GRAPH_SET(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
  if (is_virtual) {
    const bool yes = true;
    KILN_GRAPH_SET(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes);
  }
  KILN_GRAPH_FINALIZE(t, "tensor");
  const cudnnBackendDescriptor_t raw = t.get();
  b.parts.push_back(std::move(t));
  return raw;
}

// The scalar attributes of an activation's pointwise descriptor (what Relu leaves at cuDNN's defaults).
struct PointwiseScalars {
  bool relu_clips = false;  // RELU_FWD: lower clip, upper clip, lower clip slope
  double lower = 0, upper = 0, slope = 0;
  bool swish = false;  // SWISH_FWD: beta
  double swish_beta = 1;
};

// y = mode(x) or mode(x, in_b), computed in float.
Status add_pointwise(BuiltGraph& b, const std::string& op, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                     cudnnBackendDescriptor_t in_b, cudnnBackendDescriptor_t y, const PointwiseScalars& scalars = {}) {
  KILN_ASSIGN_OR_RETURN(Desc pw, Desc::create(op, CUDNN_BACKEND_POINTWISE_DESCRIPTOR));
  const cudnnDataType_t precision = CUDNN_DATA_FLOAT;
  KILN_GRAPH_SET(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  KILN_GRAPH_SET(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision);
  if (scalars.relu_clips) {
    KILN_GRAPH_SET(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP, CUDNN_TYPE_DOUBLE, 1, &scalars.lower);
    KILN_GRAPH_SET(pw, CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP, CUDNN_TYPE_DOUBLE, 1, &scalars.upper);
    KILN_GRAPH_SET(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, 1, &scalars.slope);
  }
  if (scalars.swish) KILN_GRAPH_SET(pw, CUDNN_ATTR_POINTWISE_SWISH_BETA, CUDNN_TYPE_DOUBLE, 1, &scalars.swish_beta);
  KILN_GRAPH_FINALIZE(pw, "pointwise");
  KILN_ASSIGN_OR_RETURN(Desc node, Desc::create(op, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR));
  KILN_GRAPH_SET(node, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, pw.ptr());
  KILN_GRAPH_SET(node, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  if (in_b != nullptr) KILN_GRAPH_SET(node, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &in_b);
  KILN_GRAPH_SET(node, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  KILN_GRAPH_FINALIZE(node, "pointwise operation");
  b.ops.push_back(node.get());
  b.parts.push_back(std::move(pw));
  b.parts.push_back(std::move(node));
  return OkStatus();
}

// The activation's pointwise mode and scalars; Unsupported for one the graph cannot express (see the header).
Status activation_pointwise(const GraphConvProblem& p, cudnnPointwiseMode_t* mode, PointwiseScalars* s) {
  const double float_max = std::numeric_limits<float>::max();
  *mode = CUDNN_POINTWISE_RELU_FWD;
  *s = PointwiseScalars{};
  if (p.activation == "Relu") return OkStatus();
  if (p.activation == "Clip" || p.activation == "LeakyRelu") {
    const bool clip = p.activation == "Clip";
    // cuDNN's clipped ReLU is lower + slope * (x - lower) below `lower`: a Clip with a lower bound of 0, as
    // ReLU6. Another lower bound, or bounds crossed (max everywhere, as ONNX says), run unfused.
    if (clip && (p.act_min != 0.0f || !(p.act_max > 0.0f)))
      return Unsupported(p.op + ": the cuDNN graph tactics clip with a lower bound of 0 below an upper one above it only, not Clip(" +
                         std::to_string(p.act_min) + ", " + std::to_string(p.act_max) + ")");
    s->relu_clips = true;
    s->lower = 0;
    s->upper = clip ? std::min<double>(p.act_max, float_max) : float_max;
    s->slope = clip ? 0.0 : p.act_alpha;
    return OkStatus();
  }
  if (p.activation == "Sigmoid") {
    *mode = CUDNN_POINTWISE_SIGMOID_FWD;
    return OkStatus();
  }
  if (p.activation == "Silu") {
    *mode = CUDNN_POINTWISE_SWISH_FWD;
    s->swish = true;
    s->swish_beta = 1.0;
    return OkStatus();
  }
  return Unsupported(p.op + ": the cuDNN graph tactics have no pointwise mode for activation '" + p.activation + "'");
}

Result<BuiltGraph> build_graph(const GraphConvProblem& p, cudnnHandle_t handle) {
  const std::string& op = p.op;
  const Geometry& g = p.g;
  const bool cl = p.channels_last;
  const cudnnDataType_t io = cudnn_conv::cudnn_type(p.dtype);
  const std::vector<int64_t> ydims = dims_of(g.N, g.M, g.out);
  std::vector<int64_t> bdims(ydims.size(), 1);
  bdims[1] = g.M;
  BuiltGraph b;
  KILN_ASSIGN_OR_RETURN(auto x, add_tensor(b, op, kUidX, io, dims_of(g.N, g.C, g.in), cl, false));
  KILN_ASSIGN_OR_RETURN(auto w, add_tensor(b, op, kUidW, io, dims_of(g.M, g.C / g.group, g.kernel), cl, false));
  KILN_ASSIGN_OR_RETURN(auto y, add_tensor(b, op, kUidY, io, ydims, cl, false));
  // Each op's output: Y for the last one, otherwise a virtual float tensor.
  cudnnPointwiseMode_t act_mode{};
  PointwiseScalars act_scalars;
  if (!p.activation.empty()) KILN_RETURN_IF_ERROR(activation_pointwise(p, &act_mode, &act_scalars));
  const int epilogue_ops = int(p.has_z) + int(p.has_bias) + int(!p.activation.empty());
  int ops_left = epilogue_ops + 1;
  auto next_output = [&](int64_t uid) -> Result<cudnnBackendDescriptor_t> {
    if (--ops_left == 0) return y;
    return add_tensor(b, op, uid, CUDNN_DATA_FLOAT, ydims, cl, true);
  };

  // The convolution: pads, strides and dilations per spatial dim (a lifted 1-D problem's height: 0, 1, 1).
  std::vector<int64_t> pre, post, strides, dilations;
  if (g.nd == 1) {
    pre = post = {0};
    strides = dilations = {1};
  }
  for (size_t d = 0; d < g.nd; ++d) {
    pre.push_back(g.pad_begin[d]);
    post.push_back(g.pad_end[d]);
    strides.push_back(g.strides[d]);
    dilations.push_back(g.dilations[d]);
  }
  const int64_t spatial = static_cast<int64_t>(pre.size());
  KILN_ASSIGN_OR_RETURN(Desc conv, Desc::create(op, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR));
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial);
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, spatial, pre.data());
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, spatial, post.data());
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, spatial, strides.data());
  KILN_GRAPH_SET(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, spatial, dilations.data());
  KILN_GRAPH_FINALIZE(conv, "convolution");

  KILN_ASSIGN_OR_RETURN(auto conv_out, next_output(kUidConv));
  KILN_ASSIGN_OR_RETURN(Desc fprop, Desc::create(op, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR));
  const float alpha = 1.0f, beta = 0.0f;  // float: the compute type is not double
  KILN_GRAPH_SET(fprop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  KILN_GRAPH_SET(fprop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
  KILN_GRAPH_SET(fprop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv_out);
  KILN_GRAPH_SET(fprop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, conv.ptr());
  KILN_GRAPH_SET(fprop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
  KILN_GRAPH_SET(fprop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
  KILN_GRAPH_FINALIZE(fprop, "convolution forward operation");
  b.ops.push_back(fprop.get());
  b.parts.push_back(std::move(conv));
  b.parts.push_back(std::move(fprop));

  cudnnBackendDescriptor_t last = conv_out;
  if (p.has_z) {
    KILN_ASSIGN_OR_RETURN(auto z, add_tensor(b, op, kUidZ, io, ydims, cl, false));
    KILN_ASSIGN_OR_RETURN(auto out, next_output(kUidAfterZ));
    KILN_RETURN_IF_ERROR(add_pointwise(b, op, CUDNN_POINTWISE_ADD, last, z, out));
    last = out;
  }
  if (p.has_bias) {
    KILN_ASSIGN_OR_RETURN(auto bias, add_tensor(b, op, kUidB, io, bdims, cl, false));
    KILN_ASSIGN_OR_RETURN(auto out, next_output(kUidAfterBias));
    KILN_RETURN_IF_ERROR(add_pointwise(b, op, CUDNN_POINTWISE_ADD, last, bias, out));
    last = out;
  }
  if (!p.activation.empty()) {
    KILN_ASSIGN_OR_RETURN(auto out, next_output(0));  // always Y
    KILN_RETURN_IF_ERROR(add_pointwise(b, op, act_mode, last, nullptr, out, act_scalars));
  }

  KILN_ASSIGN_OR_RETURN(b.graph, Desc::create(op, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
  KILN_GRAPH_SET(b.graph, kGraphHandle, CUDNN_TYPE_HANDLE, 1, &handle);
  KILN_GRAPH_SET(b.graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(b.ops.size()),
                 b.ops.data());
  KILN_GRAPH_FINALIZE(b.graph, "operation graph");
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// Engine configs

// What an engine config is: its engine's global index, its knob choices and its engine's numerical notes.
struct ConfigInfo {
  int64_t engine = -1;
  std::map<int64_t, int64_t> knobs;  // knob type -> value
  std::set<int> notes;               // cudnnBackendNumericalNote_t
  std::string name() const {
    std::string s = std::string(kCudnnGraphPrefix) + "e" + std::to_string(engine);
    for (const auto& [type, value] : knobs) s += ".k" + std::to_string(type) + "=" + std::to_string(value);
    return s;
  }
  bool transform_based() const {
    for (int n : {CUDNN_NUMERICAL_NOTE_FFT, CUDNN_NUMERICAL_NOTE_WINOGRAD, CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4,
                  CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6, CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13})
      if (notes.count(n)) return true;
    return false;
  }
};

Result<ConfigInfo> describe_config(const std::string& op, const Desc& cfg) {
  ConfigInfo info;
  KILN_ASSIGN_OR_RETURN(Desc engine, Desc::create(op, CUDNN_BACKEND_ENGINE_DESCRIPTOR));
  int64_t n = 0;
  cudnnBackendDescriptor_t engine_raw = engine.get();
  KILN_GRAPH_GET(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &engine_raw);
  KILN_GRAPH_GET(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &info.engine);
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  KILN_GRAPH_GET(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes);
  for (int64_t i = 0; i < std::min<int64_t>(n, CUDNN_NUMERICAL_NOTE_TYPE_COUNT); ++i) info.notes.insert(notes[i]);

  std::vector<Desc> choices;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; ++i) {
    KILN_ASSIGN_OR_RETURN(Desc c, Desc::create(op, CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
    raw.push_back(c.get());
    choices.push_back(std::move(c));
  }
  int64_t count = 0;
  KILN_GRAPH_GET(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR, CUDNN_KNOB_TYPE_COUNTS, &count, raw.data());
  for (int64_t i = 0; i < std::min<int64_t>(count, CUDNN_KNOB_TYPE_COUNTS); ++i) {
    cudnnBackendKnobType_t type{};
    int64_t value = 0;
    KILN_GRAPH_GET(choices[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &type);
    KILN_GRAPH_GET(choices[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &n, &value);
    info.knobs[static_cast<int64_t>(type)] = value;
  }
  return info;
}

// "" when the config keeps the node's precision (see the top of the file), otherwise why not.
std::string precision_refusal(const ConfigInfo& c, const GraphConvProblem& p) {
  const std::string name = c.name();
  if (c.notes.count(CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)) return name + " down-converts its inputs";
  if (c.notes.count(CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)) return name + " reduces in reduced precision";
  if (p.dtype == DType::kFloat32 && !p.allow_tf32 && c.notes.count(CUDNN_NUMERICAL_NOTE_TENSOR_CORE))
    return name + " uses TF32 tensor cores on float32, and TF32 is not allowed";
  const bool winograd = c.notes.count(CUDNN_NUMERICAL_NOTE_WINOGRAD) || c.notes.count(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4) ||
                        c.notes.count(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6) ||
                        c.notes.count(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13);
  if (winograd && *std::max_element(p.g.kernel.begin(), p.g.kernel.end()) > 3)
    return name + " is a Winograd engine, inaccurate on kernels larger than 3";
  return "";
}

// The heuristics' engine configs for the graph, best first (none when cuDNN has none for the mode).
Result<std::vector<Desc>> heuristic_configs(const std::string& op, const BuiltGraph& b, cudnnBackendHeurMode_t mode) {
  KILN_ASSIGN_OR_RETURN(Desc heur, Desc::create(op, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR));
  KILN_GRAPH_SET(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, b.graph.ptr());
  KILN_GRAPH_SET(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  if (Status s = graph_status(cudnnBackendFinalize(heur.get()), op, "cudnnBackendFinalize(engine heuristics)"); !s.ok()) {
    if (s.code() == StatusCode::kUnsupported) return std::vector<Desc>{};
    return s;
  }
  int64_t count = 0;
  KILN_GRAPH_GET(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
  std::vector<Desc> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    KILN_ASSIGN_OR_RETURN(Desc c, Desc::create(op, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    raw.push_back(c.get());
    configs.push_back(std::move(c));
  }
  if (count == 0) return configs;
  int64_t returned = 0;
  KILN_GRAPH_GET(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned, raw.data());
  configs.resize(static_cast<size_t>(std::clamp<int64_t>(returned, 0, count)));
  return configs;
}

// The config of a name "e<engine>[.k<type>=<value>]...": engine and knob choices set by hand.
Result<Desc> config_from_name(const std::string& op, const BuiltGraph& b, const ConfigInfo& wanted, std::vector<Desc>* keep) {
  KILN_ASSIGN_OR_RETURN(Desc engine, Desc::create(op, CUDNN_BACKEND_ENGINE_DESCRIPTOR));
  KILN_GRAPH_SET(engine, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, b.graph.ptr());
  KILN_GRAPH_SET(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &wanted.engine);
  KILN_GRAPH_FINALIZE(engine, "engine");
  std::vector<cudnnBackendDescriptor_t> raw;
  for (const auto& [type, value] : wanted.knobs) {
    KILN_ASSIGN_OR_RETURN(Desc c, Desc::create(op, CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
    const auto knob = static_cast<cudnnBackendKnobType_t>(type);
    KILN_GRAPH_SET(c, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &knob);
    KILN_GRAPH_SET(c, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &value);
    KILN_GRAPH_FINALIZE(c, "knob choice");
    raw.push_back(c.get());
    keep->push_back(std::move(c));
  }
  KILN_ASSIGN_OR_RETURN(Desc cfg, Desc::create(op, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
  KILN_GRAPH_SET(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, engine.ptr());
  if (!raw.empty())
    KILN_GRAPH_SET(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(raw.size()), raw.data());
  KILN_GRAPH_FINALIZE(cfg, "engine config");
  keep->push_back(std::move(engine));
  return cfg;
}

struct Plan {
  Desc plan;
  size_t workspace = 0;
};

// The execution plan of a config; Unsupported when it does not finalize or needs too much workspace.
Result<Plan> make_plan(const std::string& op, const Desc& cfg, cudnnHandle_t handle, const std::string& name) {
  Plan p;
  KILN_ASSIGN_OR_RETURN(p.plan, Desc::create(op, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR));
  KILN_GRAPH_SET(p.plan, kPlanHandle, CUDNN_TYPE_HANDLE, 1, &handle);
  KILN_GRAPH_SET(p.plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, cfg.ptr());
  if (Status s = graph_status(cudnnBackendFinalize(p.plan.get()), op, "cudnnBackendFinalize(execution plan)"); !s.ok())
    return Unsupported(name + ": " + s.message());
  int64_t n = 0, bytes = 0;
  KILN_GRAPH_GET(p.plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &bytes);
  if (bytes < 0 || static_cast<uint64_t>(bytes) > kMaxAlgoWorkspace)
    return Unsupported(op + ": " + name + " needs " + cudnn_conv::mib(static_cast<size_t>(std::max<int64_t>(bytes, 0))) +
                       " of workspace, over the cap of " + cudnn_conv::mib(kMaxAlgoWorkspace));
  p.workspace = static_cast<size_t>(bytes);
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// Heuristic ranks

// Where the usable configs of one problem sit in the heuristics' lists (A's, then FALLBACK's), found once per
// process. Telling whether a config is usable means finalizing its plan, which for a runtime-compiled engine
// is a compile; the tactic timer creates h0, h1, ... in turn, so the scan resumes where the last one stopped
// and, in that order, each candidate is finalized once. Build-time knowledge like a timing cache: no layer
// holds any of it.
struct RankScan {
  std::vector<std::pair<int, int64_t>> usable;  // (heuristic list, position in it) of h0, h1, ...
  int list = 0;                                 // the next candidate: in list 0 (mode A) or 1 (FALLBACK) ...
  int64_t next = 0;                             // ... at this position
  std::set<std::string> seen;                   // configs met already (FALLBACK repeats some of A's)
  std::string last_refusal;
};
constexpr cudnnBackendHeurMode_t kHeuristicLists[] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};

std::mutex& rank_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, RankScan>& rank_scans() {
  static auto* scans = new std::map<std::string, RankScan>();  // never destroyed: used until exit
  return *scans;
}

// Everything the operation graph depends on, and the device.
std::string problem_key(const GraphConvProblem& p, int device) {
  const Geometry& g = p.g;
  std::string k = dtype_name(p.dtype);
  k += p.channels_last ? " nhwc" : " nchw";
  if (p.has_bias) k += " b";
  if (p.has_z) k += " z";
  if (!p.activation.empty()) {
    // The parameters exactly (hexadecimal floats): two problems share a key only when their graphs are equal.
    char params[96] = "";
    if (p.activation == "Clip") std::snprintf(params, sizeof(params), "(%a,%a)", p.act_min, p.act_max);
    if (p.activation == "LeakyRelu") std::snprintf(params, sizeof(params), "(%a)", p.act_alpha);
    (k += " " + p.activation) += params;
  }
  if (p.allow_tf32) k += " tf32";
  for (int64_t v : {g.N, g.C, g.M, g.group}) (k += ' ') += std::to_string(v);
  for (const Shape* v : {&g.in, &g.kernel, &g.out, &g.strides, &g.dilations, &g.pad_begin, &g.pad_end}) (k += ' ') += shape_to_string(*v);
  k += " device ";
  k += std::to_string(device);
  return k;
}

struct Chosen {
  Desc cfg;
  ConfigInfo info;
  Plan plan;
};

// The rank-th usable config of the problem (Unsupported when there are fewer), with its plan.
Result<Chosen> ranked_config(const GraphConvProblem& p, const BuiltGraph& b, int rank, cudnnHandle_t handle) {
  const std::string& op = p.op;
  int device = 0;
  KILN_CUDA_TRY(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(rank_mutex());
  RankScan& scan = rank_scans()[problem_key(p, device)];
  if (rank < static_cast<int>(scan.usable.size())) {
    const auto [list, pos] = scan.usable[rank];
    KILN_ASSIGN_OR_RETURN(std::vector<Desc> configs, heuristic_configs(op, b, kHeuristicLists[list]));
    if (pos >= static_cast<int64_t>(configs.size()))
      return Internal(op + ": cuDNN's heuristics list fewer engine configs than they did for the same graph");
    Chosen c;
    KILN_ASSIGN_OR_RETURN(c.info, describe_config(op, configs[pos]));
    KILN_ASSIGN_OR_RETURN(c.plan, make_plan(op, configs[pos], handle, c.info.name()));
    c.cfg = std::move(configs[pos]);
    return c;
  }
  for (; scan.list < 2; ++scan.list, scan.next = 0) {
    KILN_ASSIGN_OR_RETURN(std::vector<Desc> configs, heuristic_configs(op, b, kHeuristicLists[scan.list]));
    while (scan.next < static_cast<int64_t>(configs.size())) {
      const int64_t pos = scan.next++;
      KILN_ASSIGN_OR_RETURN(ConfigInfo info, describe_config(op, configs[pos]));
      if (!scan.seen.insert(info.name()).second) continue;
      if (std::string why = precision_refusal(info, p); !why.empty()) {
        scan.last_refusal = why;
        continue;
      }
      auto plan = make_plan(op, configs[pos], handle, info.name());
      if (!plan.ok()) {
        scan.last_refusal = plan.status().message();
        continue;
      }
      scan.usable.emplace_back(scan.list, pos);
      if (static_cast<int>(scan.usable.size()) == rank + 1) return Chosen{std::move(configs[pos]), std::move(info), std::move(*plan)};
    }
  }
  return Unsupported(op + ": cuDNN's heuristics offer " + std::to_string(scan.usable.size()) + " usable engine config(s), not " +
                     std::to_string(rank + 1) + (scan.last_refusal.empty() ? "" : "; the last one refused: " + scan.last_refusal));
}

// ---------------------------------------------------------------------------------------------------------
// Tactic names

bool parse_int(const std::string& s, size_t* pos, int64_t* out) {
  const char* begin = s.data() + *pos;
  const char* end = s.data() + s.size();
  auto [next, ec] = std::from_chars(begin, end, *out);
  if (ec != std::errc() || next == begin) return false;
  *pos = static_cast<size_t>(next - s.data());
  return true;
}

// A tactic: the heuristic rank of "h<k>" (wanted.engine untouched) or the config of "e<i>.k<t>=<v>...".
struct ParsedTactic {
  int rank = -1;
  ConfigInfo config;
};

Result<ParsedTactic> parse_graph_tactic(const std::string& tactic, const std::string& op) {
  const std::string prefix = kCudnnGraphPrefix;
  const Status bad = InvalidArgument(op + ": unknown tactic '" + tactic + "' (want " + prefix + "h0.." + prefix + "h" +
                                     std::to_string(kHeuristicTactics - 1) + ", or " + prefix + "e<engine>[.k<type>=<value>]...)");
  if (tactic.compare(0, prefix.size(), prefix) != 0 || tactic.size() < prefix.size() + 2) return bad;
  size_t pos = prefix.size() + 1;
  int64_t v = 0;
  ParsedTactic t;
  if (tactic[prefix.size()] == 'h') {
    if (!parse_int(tactic, &pos, &v) || pos != tactic.size() || v < 0 || v >= kHeuristicTactics) return bad;
    t.rank = static_cast<int>(v);
    return t;
  }
  if (tactic[prefix.size()] != 'e' || !parse_int(tactic, &pos, &t.config.engine) || t.config.engine < 0) return bad;
  while (pos < tactic.size()) {
    int64_t type = 0, value = 0;
    if (tactic.compare(pos, 2, ".k") != 0) return bad;
    pos += 2;
    if (!parse_int(tactic, &pos, &type) || type < 0 || type >= CUDNN_KNOB_TYPE_COUNTS || pos >= tactic.size() || tactic[pos] != '=')
      return bad;
    ++pos;
    if (!parse_int(tactic, &pos, &value) || t.config.knobs.count(type)) return bad;
    t.config.knobs[type] = value;
  }
  // One spelling per config: the knobs in increasing type, as name() writes them.
  if (t.config.name() != tactic) return bad;
  return t;
}

// ---------------------------------------------------------------------------------------------------------
// The layer

class CudnnGraphConvLayer final : public Layer {
 public:
  size_t workspace_bytes() const override { return workspace_; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override;

  std::string op_;
  BuiltGraph graph_;
  std::vector<Desc> config_parts_;  // the engine config and what it links
  Desc plan_;
  size_t workspace_ = 0;
  bool nothing_to_do_ = false, has_bias_ = false, has_z_ = false;
  ConfigInfo config_;
};

Status CudnnGraphConvLayer::run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                                void* workspace, const CudaHandles& h) const {
  if (nothing_to_do_) return OkStatus();
  const std::string& op = op_;
  int64_t uids[5];
  void* ptrs[5];
  int64_t n = 0;
  auto bind = [&](int64_t uid, void* p) {
    uids[n] = uid;
    ptrs[n++] = p;
  };
  bind(kUidX, inputs[0].data);
  bind(kUidW, inputs[1].data);
  if (has_bias_) bind(kUidB, inputs[2].data);
  if (has_z_) bind(kUidZ, inputs[3].data);
  bind(kUidY, outputs[0].data);
  for (int64_t i = 0; i < n; ++i)
    if (reinterpret_cast<uintptr_t>(ptrs[i]) % kByteAlignment != 0)
      return InvalidArgument(op + ": the cuDNN graph tactics need " + std::to_string(kByteAlignment) +
                             "-byte aligned tensors; tensor uid " + std::to_string(uids[i]) + " is not");
  void* ws = workspace_ > 0 ? workspace : nullptr;
  // A variant pack is host memory only; the pointers may change from call to call, so it is made per run.
  KILN_ASSIGN_OR_RETURN(Desc pack, Desc::create(op, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
  KILN_GRAPH_SET(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
  KILN_GRAPH_SET(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
  KILN_GRAPH_SET(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
  KILN_GRAPH_FINALIZE(pack, "variant pack");
  KILN_RETURN_IF_ERROR(graph_status(cudnnBackendExecute(h.cudnn, plan_.get(), pack.get()), op, "cudnnBackendExecute"));
  return OkStatus();
}

}  // namespace

std::vector<std::string> cudnn_graph_tactics() {
  std::vector<std::string> t;
  for (int k = 0; k < kHeuristicTactics; ++k) t.push_back(std::string(kCudnnGraphPrefix) + "h" + std::to_string(k));
  return t;
}

bool is_cudnn_graph_tactic(const std::string& tactic) { return tactic.rfind(kCudnnGraphPrefix, 0) == 0; }

Result<std::unique_ptr<Layer>> create_cudnn_graph_conv(const GraphConvProblem& p, const std::string& tactic,
                                                       const CudaHandles& h) {
  const std::string& op = p.op;
  KILN_ASSIGN_OR_RETURN(const ParsedTactic parsed, parse_graph_tactic(tactic, op));
  const Geometry& g = p.g;
  if (g.nd < 1 || g.nd > 3 || g.kernel.size() != g.nd || g.out.size() != g.nd)
    return InvalidArgument(op + ": the cuDNN graph tactics need a 1-D, 2-D or 3-D convolution's geometry");
  std::unique_ptr<CudnnGraphConvLayer> layer(new CudnnGraphConvLayer());
  layer->op_ = op;
  layer->has_bias_ = p.has_bias;
  layer->has_z_ = p.has_z;
  if (shape_numel(g.out) == 0 || g.N == 0 || g.M == 0) {
    layer->nothing_to_do_ = true;
    return std::unique_ptr<Layer>(std::move(layer));
  }
  if (g.C == 0 || shape_numel(g.in) == 0)
    return Unsupported(op + ": X has no elements but the output has; the cuDNN graph tactics do not run it");

  KILN_ASSIGN_OR_RETURN(layer->graph_, build_graph(p, h.cudnn));
  if (parsed.rank < 0) {
    KILN_ASSIGN_OR_RETURN(Desc cfg, config_from_name(op, layer->graph_, parsed.config, &layer->config_parts_));
    KILN_ASSIGN_OR_RETURN(layer->config_, describe_config(op, cfg));
    if (std::string why = precision_refusal(layer->config_, p); !why.empty()) return Unsupported(op + ": " + why);
    KILN_ASSIGN_OR_RETURN(Plan plan, make_plan(op, cfg, h.cudnn, tactic));
    layer->plan_ = std::move(plan.plan);
    layer->workspace_ = plan.workspace;
    layer->config_parts_.push_back(std::move(cfg));
    return std::unique_ptr<Layer>(std::move(layer));
  }

  KILN_ASSIGN_OR_RETURN(Chosen chosen, ranked_config(p, layer->graph_, parsed.rank, h.cudnn));
  layer->plan_ = std::move(chosen.plan.plan);
  layer->workspace_ = chosen.plan.workspace;
  layer->config_ = std::move(chosen.info);
  layer->config_parts_.push_back(std::move(chosen.cfg));
  return std::unique_ptr<Layer>(std::move(layer));
}

std::string cudnn_graph_engine_of(const Layer& layer) {
  const auto* l = dynamic_cast<const CudnnGraphConvLayer*>(&layer);
  return l == nullptr || l->nothing_to_do_ ? "" : l->config_.name();
}

bool cudnn_graph_transform_based(const Layer& layer) {
  const auto* l = dynamic_cast<const CudnnGraphConvLayer*>(&layer);
  return l != nullptr && l->config_.transform_based();
}

}  // namespace kiln::cuda
