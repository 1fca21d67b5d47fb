// CUDA layer of the optimizer's kiln.FusedConv: Y = activation(Conv(X, W) + B + Z) in one cuDNN call,
// cudnnConvolutionBiasActivationForward (y = act(alpha1 * conv(x, w) + alpha2 * z + bias)), in the ONNX
// layout or channels-last (NHWC tensors, KRSC filter: what cuDNN's tensor-core kernels read directly).
//
// cuDNN's fused call needs a bias (a zero one, uploaded at create time, stands in when B is absent) and
// accepts the identity activation with IMPLICIT_PRECOMP_GEMM only; other algorithms without an activation
// run the epilogue as separate cuDNN calls (Z copied into Y and blended with beta = 1, then the bias added),
// as does the tactic "cuda.cudnn.unfused" (the heuristics' algorithm, then bias, Z and Relu one by one),
// for the problems cuDNN's fused call refuses at run time (the tactic timer then skips the fused tactics).
//
// Activations other than Relu (Clip, LeakyRelu, Sigmoid, Silu, HardSwish) are beyond the legacy fused call
// and cuBLASLt's epilogues: the cuDNN graph tactics chain them into the operation graph (all but HardSwish),
// and "cuda.cudnn.unfused" (also "default" for them) applies them after bias and Z with the elementwise
// activation kernel of kernels.h, in place, so that every FusedConv check() accepts has a tactic that runs.
//
// Tactics: "cuda.cudnn.fused.algoN" (N as in cudnnConvolutionFwdAlgo_t), whose create() returns Unsupported
// when cuDNN's heuristics have no kernel of that algorithm for the problem (shared with Conv: conv_common.h),
// "cuda.cudnn.unfused", "default" (the heuristics' first choice), and "cuda.cudnn.graph.h0".."h7": the
// engines of cuDNN's graph API for the whole node (cudnn_graph_conv.h). Pads that cuDNN's symmetric padding
// cannot express are refused by check(): the CPU reference then runs the node.
//
// A 1x1, stride-1, unpadded, ungrouped 2-D convolution in channels-last layout is a GEMM,
// Y[NHW, M] = X[NHW, C] * W[M, C]^T, and cuBLASLt's epilogues add the bias and apply Relu, its beta*C the
// residual Z. Such convolutions also get the tactics "cuda.cublaslt.h0".."h7" (matmul_tactics(): the cuBLASLt
// Gemm layer of matmul.h on reshaped views of the same device buffers). They matter for ResNet's layer3/4
// at batch 1: a 49 x 512 output leaves cuDNN's tiles almost idle, where cuBLASLt has split-K kernels.
//
// Channels-last float16/bfloat16 convolutions of 4 or 8 input channels (ResNet's stem, its 3 channels padded
// to 8) also get the tactic "cuda.conv.stem": a tensor-core direct convolution (stem_conv.cu).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backends/cuda/conv_common.h"
#include "backends/cuda/cudnn_graph_conv.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/layer.h"
#include "backends/cuda/matmul.h"

namespace kiln::cuda {

// stem_conv.cu: why the tactic "cuda.conv.stem" cannot run a node ("" when it can), and its layer (wgmma: the
// variant "cuda.conv.stem.wgmma", for 64 output channels a block on compute capability 9.0).
std::string stem_conv_ineligible(const LayerSpec& spec);
Result<std::unique_ptr<Layer>> create_stem_conv(const LayerSpec& spec, const CudaHandles& h, bool wgmma);

namespace {

using namespace cudnn_conv;

const char* const kOp = "CUDA kiln.FusedConv";
const char* const kFusedPrefix = "cuda.cudnn.fused.algo";
const char* const kUnfused = "cuda.cudnn.unfused";
const char* const kStem = "cuda.conv.stem";
const char* const kStemWgmma = "cuda.conv.stem.wgmma";

// [N, S..., C] -> [N, C, S...] (for X, Z and Y) or [M, k..., C/g] -> [M, C/g, k...] (for W): the ONNX-layout
// shape that the geometry code and cuDNN's dims take.
Shape logical_shape(const Shape& s, bool channels_last) {
  if (!channels_last || s.size() < 2) return s;
  Shape out = {s[0], s.back()};
  out.insert(out.end(), s.begin() + 1, s.end() - 1);
  return out;
}
Shape stored_shape(const Shape& logical, bool channels_last) {
  if (!channels_last || logical.size() < 2) return logical;
  Shape out = {logical[0]};
  out.insert(out.end(), logical.begin() + 2, logical.end());
  out.push_back(logical[1]);
  return out;
}

// The node's activation as the elementwise kernel's op and parameters (Silu is Swish with alpha 1); `none`
// for "". "" when it is one FusedConv knows, otherwise why not.
std::string fused_activation(const LayerSpec& spec, bool* none, UnaryOp* op, UnaryParams* params) {
  const std::string act = spec.attr_string("activation", "");
  *none = act.empty();
  *params = UnaryParams{};
  params->lo = spec.attr_float("activation_min", -std::numeric_limits<float>::infinity());
  params->hi = spec.attr_float("activation_max", std::numeric_limits<float>::infinity());
  params->alpha = act == "Silu" ? 1.0f : spec.attr_float("activation_alpha", 0.01f);
  if (std::isnan(params->lo) || std::isnan(params->hi) || std::isnan(params->alpha))
    return std::string(kOp) + ": activation_min, activation_max and activation_alpha must not be NaN";
  if (act.empty() || act == "Relu") *op = UnaryOp::kRelu;
  else if (act == "Clip") *op = UnaryOp::kClip;
  else if (act == "LeakyRelu") *op = UnaryOp::kLeakyRelu;
  else if (act == "Sigmoid") *op = UnaryOp::kSigmoid;
  else if (act == "Silu") *op = UnaryOp::kSwish;
  else if (act == "HardSwish") *op = UnaryOp::kHardSwish;
  else
    return std::string(kOp) + ": activation '" + act + "' is not one of \"\" (none), Relu, Clip, LeakyRelu, Sigmoid, Silu or HardSwish";
  return "";
}

// Whether the legacy fused call and cuBLASLt's epilogues can apply the node's activation: none or Relu.
bool relu_or_none(const LayerSpec& spec) {
  const std::string act = spec.attr_string("activation", "");
  return act.empty() || act == "Relu";
}

std::string check_fused_conv(const LayerSpec& spec) {
  const std::string op = kOp;
  if (spec.inputs.size() < 2 || !spec.inputs[0].present() || !spec.inputs[1].present()) return op + ": inputs X and W are required";
  if (spec.inputs.size() > 4) return op + ": takes at most 4 inputs (X, W, B, Z)";
  const TensorDesc& x = spec.inputs[0];
  const TensorDesc& w = spec.inputs[1];
  if (!is_conv_dtype(x.dtype))
    return op + ": dtype " + dtype_name(x.dtype) + " is not supported (cuDNN convolutions take float32, float16 or bfloat16)";
  const bool has_bias = spec.inputs.size() > 2 && spec.inputs[2].present();
  const bool has_z = spec.inputs.size() > 3 && spec.inputs[3].present();
  for (size_t i : {1, 2, 3})
    if (i < spec.inputs.size() && spec.inputs[i].present() && spec.inputs[i].dtype != x.dtype)
      return op + ": " + (i == 1 ? "W" : i == 2 ? "B" : "Z") + " is " + dtype_name(spec.inputs[i].dtype) + " and X " +
             dtype_name(x.dtype) + "; they must match";
  if (!spec.outputs.empty() && spec.outputs[0].present() && spec.outputs[0].dtype != x.dtype)
    return op + ": the output must have X's dtype " + dtype_name(x.dtype);
  bool no_act = false;
  UnaryOp act_op{};
  UnaryParams act_params;
  if (std::string why = fused_activation(spec, &no_act, &act_op, &act_params); !why.empty()) return why;
  const int64_t cl = spec.attr_int("channels_last", 0);
  if (cl != 0 && cl != 1) return op + ": channels_last " + std::to_string(cl) + " must be 0 or 1";
  size_t nd = 0;
  for (const TensorDesc* t : {&x, &w}) {
    if (!t->has_rank) continue;
    if (t->shape.size() < 3 || t->shape.size() > 5)
      return op + ": X and W must have rank 3 to 5 (1-D, 2-D or 3-D convolutions), got " + ints_str(t->shape);
    if (nd > 0 && t->shape.size() != nd + 2) return op + ": W has rank " + std::to_string(w.shape.size()) + " and X rank " + std::to_string(x.shape.size());
    nd = t->shape.size() - 2;
  }
  if (has_bias && spec.inputs[2].has_rank && spec.inputs[2].shape.size() != 1)
    return op + ": B must be 1-D, got rank " + std::to_string(spec.inputs[2].shape.size());
  if (std::string why = check_window_attrs(spec, op, nd, false); !why.empty()) return why;
  if (!x.is_static() || !w.is_static()) return "";
  Geometry g;
  if (std::string why = conv_geometry(spec, logical_shape(x.shape, cl), logical_shape(w.shape, cl), &g, op); !why.empty())
    return why;
  for (size_t d = 0; d < g.nd; ++d)
    if (symmetric_pad(g, d) < 0)
      return op + ": pads " + ints_str(g.pad_begin) + " / " + ints_str(g.pad_end) +
             " have no symmetric equivalent, which cuDNN needs; the CPU runs it";
  if (has_bias && spec.inputs[2].is_static() && shape_numel(spec.inputs[2].shape) != g.M)
    return op + ": B " + ints_str(spec.inputs[2].shape) + " must have " + std::to_string(g.M) + " elements";
  const Shape y = stored_shape(full_shape(g.N, g.M, g.out), cl);
  if (has_z && spec.inputs[3].is_static() && spec.inputs[3].shape != y)
    return op + ": Z " + ints_str(spec.inputs[3].shape) + " must have Y's shape " + ints_str(y);
  return "";
}

// "" when the node is a plain GEMM in channels-last layout (the cuBLASLt tactics apply), otherwise why not.
// Reads attributes and ranks only, so that tactics() can answer before every dim is known; create() runs
// check_fused_conv first for the rest (W's C matching X's, B's and Z's shapes).
std::string gemm_ineligible(const LayerSpec& spec) {
  const std::string op = std::string(kOp) + " (cuBLASLt tactics)";
  if (spec.attr_int("channels_last", 0) != 1) return op + ": need channels_last = 1";
  if (!relu_or_none(spec)) return op + ": cuBLASLt's epilogues apply Relu only, not " + spec.attr_string("activation", "");
  if (spec.inputs.size() < 2 || !spec.inputs[0].has_rank || !spec.inputs[1].has_rank ||
      spec.inputs[0].shape.size() != 4 || spec.inputs[1].shape.size() != 4)
    return op + ": need a 2-D convolution (X and W of rank 4)";
  const Shape& w = spec.inputs[1].shape;  // [M, kH, kW, C]
  if (w[1] != 1 || w[2] != 1) return op + ": need a 1x1 kernel, W is " + ints_str(w);
  if (spec.attr_int("group", 1) != 1) return op + ": need group 1";
  for (const char* name : {"strides", "dilations"})
    for (int64_t v : spec.attr_ints(name, {1, 1}))
      if (v != 1) return op + ": need " + name + " of 1, got " + ints_str(spec.attr_ints(name));
  for (int64_t p : spec.attr_ints("pads", {0, 0, 0, 0}))
    if (p != 0) return op + ": need no pads, got " + ints_str(spec.attr_ints("pads"));
  // Every auto_pad mode pads a 1x1, stride-1 window by 0.
  return "";
}

// The stem kernel's tactics for a spec: none where it cannot run it, and its wgmma variant only for output
// channels a multiple of 64, the variant's block width (its create refuses it off Hopper too).
std::vector<std::string> stem_tactics(const LayerSpec& spec) {
  if (!stem_conv_ineligible(spec).empty()) return {};
  if (spec.inputs[1].shape[0] % 64 != 0) return {kStem};
  return {kStem, kStemWgmma};
}

std::vector<std::string> fused_conv_tactics(const LayerSpec& spec) {
  // A pool fused into the conv (fuse_conv_pool) runs in the stem kernel alone.
  if (spec.has_attr("pool")) return stem_tactics(spec);
  std::vector<std::string> t;
  for (int a : {1, 0, 6, 7, 5, 4, 2, 3}) t.push_back(kFusedPrefix + std::to_string(a));
  t.push_back(kUnfused);
  for (const std::string& name : cudnn_graph_tactics()) t.push_back(name);
  if (gemm_ineligible(spec).empty())
    for (const std::string& name : matmul_tactics()) t.push_back(name);
  for (const std::string& name : stem_tactics(spec)) t.push_back(name);
  return t;
}

bool is_gemm_tactic(const std::string& tactic) {
  const std::vector<std::string> names = matmul_tactics();
  return std::find(names.begin(), names.end(), tactic) != names.end();
}

// Device memory owned by a layer (the zero bias).
struct DeviceBuffer {
  void* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p != nullptr) cudaFree(p);
  }
};

class FusedConvLayer final : public Layer {
 public:
  static Result<std::unique_ptr<Layer>> create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h);
  size_t workspace_bytes() const override { return algo_.workspace; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override;

 private:
  TensorDescriptor x_, y_, b_;  // y_ describes Z too (same shape and layout)
  FilterDescriptor w_;
  ConvolutionDescriptor conv_;
  ActivationDescriptor act_;  // RELU, or IDENTITY for the fused call without an activation
  FwdAlgo algo_;
  bool nothing_to_do_ = false, has_bias_ = false, has_z_ = false, relu_ = false;
  bool fused_ = false;  // one cudnnConvolutionBiasActivationForward call
  bool kernel_act_ = false;  // an activation other than Relu: the elementwise kernel, after cuDNN's calls
  UnaryOp act_op_ = UnaryOp::kRelu;
  UnaryParams act_params_;
  DType dtype_ = DType::kFloat32;
  DeviceBuffer zero_bias_;
  size_t y_bytes_ = 0;
};

Result<std::unique_ptr<Layer>> FusedConvLayer::create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) {
  const std::string op = kOp;
  if (std::string why = check_fused_conv(spec); !why.empty()) return Unsupported(why);
  const int wanted = tactic == kUnfused ? -1 : parse_tactic(tactic, kFusedPrefix, CUDNN_CONVOLUTION_FWD_ALGO_COUNT);
  if (wanted == -2) return InvalidArgument(op + ": unknown tactic '" + tactic + "'");
  // The legacy fused call knows Relu only: with another activation the fused tactics step aside (the timer
  // skips them) and "default" runs as "cuda.cudnn.unfused" does.
  if (!relu_or_none(spec) && wanted >= 0)
    return Unsupported(op + ": cudnnConvolutionBiasActivationForward applies Relu only, not " + spec.attr_string("activation", ""));
  const bool unfused = tactic == kUnfused || !relu_or_none(spec);
  const TensorDesc& xd = spec.inputs[0];
  const TensorDesc& wd = spec.inputs[1];
  if (!xd.is_static() || !wd.is_static()) return InvalidArgument(op + ": create needs concrete shapes");
  const bool cl = spec.attr_int("channels_last", 0) == 1;
  Geometry g;
  if (std::string why = conv_geometry(spec, logical_shape(xd.shape, cl), logical_shape(wd.shape, cl), &g, op); !why.empty())
    return InvalidArgument(why);
  const DType dtype = xd.dtype;
  std::unique_ptr<FusedConvLayer> layer(new FusedConvLayer());
  layer->has_bias_ = spec.inputs.size() > 2 && spec.inputs[2].present();
  layer->has_z_ = spec.inputs.size() > 3 && spec.inputs[3].present();
  layer->relu_ = spec.attr_string("activation", "") == "Relu";
  bool no_act = false;
  if (std::string why = fused_activation(spec, &no_act, &layer->act_op_, &layer->act_params_); !why.empty())
    return InvalidArgument(why);
  layer->kernel_act_ = !no_act && !layer->relu_;
  layer->dtype_ = xd.dtype;
  const Shape y_shape = full_shape(g.N, g.M, g.out);
  layer->y_bytes_ = static_cast<size_t>(shape_numel(y_shape)) * dtype_size(dtype);
  if (shape_numel(y_shape) == 0) {
    layer->nothing_to_do_ = true;
    return std::unique_ptr<Layer>(std::move(layer));
  }
  if (shape_numel(xd.shape) == 0 || shape_numel(wd.shape) == 0)
    return Unsupported(op + ": X " + ints_str(xd.shape) + " or W " + ints_str(wd.shape) + " is empty but the output is not");
  if (!fits_cudnn(xd.shape) || !fits_cudnn(y_shape) || !fits_cudnn(wd.shape))
    return Unsupported(op + ": X " + ints_str(xd.shape) + " or Y " + ints_str(y_shape) +
                       " is over cuDNN's limit of 2^31 - 1 elements per tensor");
  std::vector<int64_t> pads(g.nd);
  for (size_t d = 0; d < g.nd; ++d) {
    pads[d] = symmetric_pad(g, d);  // check() refused the pads without one
    if (pads[d] > INT_MAX || g.strides[d] > INT_MAX || g.dilations[d] > INT_MAX)
      return Unsupported(op + ": a pad, stride or dilation is over cuDNN's int range");
  }

  const std::vector<int> xdims = cudnn_dims(g.N, g.C, g.in), ydims = cudnn_dims(g.N, g.M, g.out);
  const std::vector<int> wdims = cudnn_dims(g.M, g.C / g.group, g.kernel);
  if (cl) {
    KILN_RETURN_IF_ERROR(set_tensor_nhwc(layer->x_, dtype, xdims));
    KILN_RETURN_IF_ERROR(set_tensor_nhwc(layer->y_, dtype, ydims));
    KILN_RETURN_IF_ERROR(set_filter_nhwc(layer->w_, dtype, wdims));
  } else {
    KILN_RETURN_IF_ERROR(set_tensor(layer->x_, dtype, xdims));
    KILN_RETURN_IF_ERROR(set_tensor(layer->y_, dtype, ydims));
    KILN_RETURN_IF_ERROR(set_filter(layer->w_, dtype, wdims));
  }
  KILN_RETURN_IF_ERROR(set_convolution(layer->conv_, pads, g.strides, g.dilations, g.group, dtype, spec.allow_tf32));
  KILN_RETURN_IF_ERROR(set_bias(layer->b_, dtype, g.M, wdims.size()));

  // cuDNN's own output shape must be ONNX's: a mismatch here is a bug in the geometry above.
  std::vector<int> cudnn_out(wdims.size());
  KILN_CUDNN_TRY(cudnnGetConvolutionNdForwardOutputDim(layer->conv_.d, layer->x_.d, layer->w_.d,
                                                       static_cast<int>(cudnn_out.size()), cudnn_out.data()));
  if (cudnn_out != ydims) return Internal(op + ": cuDNN computes another output shape than " + ints_str(y_shape));

  KILN_ASSIGN_OR_RETURN(layer->algo_, choose_fwd_algo(h, layer->x_, layer->w_, layer->conv_, layer->y_, wanted, g.kernel, op));
  layer->fused_ = !unfused && (layer->relu_ || layer->algo_.algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
  if (layer->fused_ || layer->relu_) {
    KILN_CUDNN_TRY(cudnnCreateActivationDescriptor(&layer->act_.d));
    KILN_CUDNN_TRY(cudnnSetActivationDescriptor(layer->act_.d, layer->relu_ ? CUDNN_ACTIVATION_RELU : CUDNN_ACTIVATION_IDENTITY,
                                                CUDNN_PROPAGATE_NAN, 0.0));
  }
  if (layer->fused_ && !layer->has_bias_) {
    const size_t bytes = static_cast<size_t>(g.M) * dtype_size(dtype);
    KILN_CUDA_TRY(cudaMalloc(&layer->zero_bias_.p, bytes));
    KILN_CUDA_TRY(cudaMemset(layer->zero_bias_.p, 0, bytes));  // all-zero bits are 0 in every float type
  }
  return std::unique_ptr<Layer>(std::move(layer));
}

Status FusedConvLayer::run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
                           const CudaHandles& h) const {
  if (nothing_to_do_) return OkStatus();
  const void* x = inputs[0].data;
  const void* w = inputs[1].data;
  const void* z = has_z_ ? inputs[3].data : nullptr;
  void* y = outputs[0].data;
  void* ws = algo_.workspace > 0 ? workspace : nullptr;
  // alpha and beta are floats for every data type here: the compute type is float.
  const float one = 1.0f, zero = 0.0f;
  if (fused_) {
    const void* bias = has_bias_ ? inputs[2].data : zero_bias_.p;
    const float alpha2 = has_z_ ? 1.0f : 0.0f;  // without Z, z = y is read with weight 0
    KILN_CUDNN_TRY(cudnnConvolutionBiasActivationForward(h.cudnn, &one, x_.d, x, w_.d, w, conv_.d, algo_.algo, ws, algo_.workspace,
                                                         &alpha2, y_.d, has_z_ ? z : y, b_.d, bias, act_.d, y_.d, y));
    return OkStatus();
  }
  // Y = conv + Z through the convolution's beta, then the bias and the activation in place.
  if (has_z_ && z != y) KILN_CUDA_TRY(cudaMemcpyAsync(y, z, y_bytes_, cudaMemcpyDeviceToDevice, h.stream));
  KILN_CUDNN_TRY(cudnnConvolutionForward(h.cudnn, &one, x_.d, x, w_.d, w, conv_.d, algo_.algo, ws, algo_.workspace,
                                         has_z_ ? &one : &zero, y_.d, y));
  if (has_bias_) KILN_CUDNN_TRY(cudnnAddTensor(h.cudnn, &one, b_.d, inputs[2].data, &one, y_.d, y));
  if (relu_) KILN_CUDNN_TRY(cudnnActivationForward(h.cudnn, act_.d, &one, y_.d, y, &zero, y_.d, y));
  // In place: each element is read, then written, by the same thread.
  if (kernel_act_)
    KILN_RETURN_IF_ERROR(launch_unary(act_op_, dtype_, y, y, static_cast<int64_t>(y_bytes_ / dtype_size(dtype_)), act_params_, h.stream));
  return OkStatus();
}

// The GEMM tactics: the cuBLASLt Gemm layer (matmul.h) on a synthetic Gemm node, transB = 1, fed the
// FusedConv's buffers as A = X [NHW, C], B = W [M, C], C = Z [NHW, M] (beta 1) and the bias B [M] (the Gemm's
// input 3, which the bias epilogues read), writing Y as [NHW, M]. matmul.cc applies Z and the bias together:
// act(A*B^T + beta*C + bias), cuBLASLt's epilogue after its beta*C (or its prefill kernel, on the
// element-aligned fallback plan).
class FusedConvGemmLayer final : public Layer {
 public:
  static Result<std::unique_ptr<Layer>> create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h);
  size_t workspace_bytes() const override { return gemm_->workspace_bytes(); }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override;

 private:
  std::unique_ptr<Layer> gemm_;  // holds no pointer to the synthetic node or spec (both are gone after create)
  DType dtype_ = DType::kFloat32;
  Shape a_, b_, y_, bias_;  // the Gemm's shapes: [NHW, C], [M, C], [NHW, M] (for C too), [M]
  bool has_bias_ = false, has_z_ = false;
};

Result<std::unique_ptr<Layer>> FusedConvGemmLayer::create(const LayerSpec& spec, const std::string& tactic,
                                                          const CudaHandles& h) {
  const std::string op = kOp;
  if (std::string why = check_fused_conv(spec); !why.empty()) return Unsupported(why);
  if (std::string why = gemm_ineligible(spec); !why.empty()) return Unsupported(why);
  const TensorDesc& xd = spec.inputs[0];
  const TensorDesc& wd = spec.inputs[1];
  if (!xd.is_static() || !wd.is_static()) return InvalidArgument(op + ": create needs concrete shapes");
  Geometry g;  // validates W against X (check() did, but only for static shapes)
  if (std::string why = conv_geometry(spec, logical_shape(xd.shape, true), logical_shape(wd.shape, true), &g, op); !why.empty())
    return InvalidArgument(why);
  std::unique_ptr<FusedConvGemmLayer> layer(new FusedConvGemmLayer());
  layer->dtype_ = xd.dtype;
  layer->has_bias_ = spec.inputs.size() > 2 && spec.inputs[2].present();
  layer->has_z_ = spec.inputs.size() > 3 && spec.inputs[3].present();
  const bool relu = spec.attr_string("activation", "") == "Relu";
  const int64_t rows = g.N * g.in[0] * g.in[1];  // 1x1, stride 1, no pads: the output has the input's extent
  layer->a_ = {rows, g.C};
  layer->b_ = {g.M, g.C};
  layer->y_ = {rows, g.M};
  layer->bias_ = {g.M};

  ir::Node node;
  node.name = spec.node->name;  // the Gemm layer's errors then name the FusedConv node
  node.op_type = "Gemm";
  ir::Attribute one_int;
  one_int.type = ir::Attribute::Type::kInt;
  one_int.i = 1;
  node.attributes["transB"] = one_int;
  if (layer->has_z_) {
    ir::Attribute one_float;
    one_float.type = ir::Attribute::Type::kFloat;
    one_float.f = 1.0f;
    node.attributes["beta"] = one_float;
  }
  auto view = [&](const Shape& shape) {
    TensorDesc d;
    d.dtype = layer->dtype_;
    d.has_rank = true;
    d.shape = shape;  // no host constant: the Gemm layer reads none, and W's would have another shape
    return d;
  };
  LayerSpec gs;
  gs.node = &node;
  gs.opset = 13;
  gs.allow_tf32 = spec.allow_tf32;
  gs.inputs = {view(layer->a_), view(layer->b_)};
  if (layer->has_z_ || layer->has_bias_) gs.inputs.push_back(layer->has_z_ ? view(layer->y_) : TensorDesc{});
  if (layer->has_bias_) gs.inputs.push_back(view(layer->bias_));
  gs.outputs = {view(layer->y_)};
  const MatmulEpilogue epilogue = layer->has_bias_ ? (relu ? MatmulEpilogue::kBiasRelu : MatmulEpilogue::kBias)
                                                   : (relu ? MatmulEpilogue::kRelu : MatmulEpilogue::kNone);
  KILN_ASSIGN_OR_RETURN(layer->gemm_, create_matmul_layer(gs, epilogue, tactic, h));
  return std::unique_ptr<Layer>(std::move(layer));
}

Status FusedConvGemmLayer::run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                               void* workspace, const CudaHandles& h) const {
  // The Gemm's inputs [A, B, C, bias] are the FusedConv's [X, W, Z, B]: the same memory, seen as matrices.
  std::vector<DeviceTensor> in = {DeviceTensor{inputs[0].data, dtype_, a_}, DeviceTensor{inputs[1].data, dtype_, b_}};
  if (has_z_ || has_bias_) in.push_back(has_z_ ? DeviceTensor{inputs[3].data, dtype_, y_} : DeviceTensor{});
  if (has_bias_) in.push_back(DeviceTensor{inputs[2].data, dtype_, bias_});
  const std::vector<DeviceTensor> out = {DeviceTensor{outputs[0].data, dtype_, y_}};
  return gemm_->run(in, out, workspace, h);
}

// The cuDNN graph-API tactics (cudnn_graph_conv.h) on the node as check() accepts it.
Result<std::unique_ptr<Layer>> create_graph_conv(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) {
  if (std::string why = check_fused_conv(spec); !why.empty()) return Unsupported(why);
  if (!spec.inputs[0].is_static() || !spec.inputs[1].is_static()) return InvalidArgument(std::string(kOp) + ": create needs concrete shapes");
  GraphConvProblem p;
  p.op = std::string(kOp) + (spec.node != nullptr ? " '" + spec.node->name + "'" : "");
  p.channels_last = spec.attr_int("channels_last", 0) == 1;
  if (std::string why = conv_geometry(spec, logical_shape(spec.inputs[0].shape, p.channels_last),
                                      logical_shape(spec.inputs[1].shape, p.channels_last), &p.g, p.op);
      !why.empty())
    return InvalidArgument(why);
  p.dtype = spec.inputs[0].dtype;
  p.has_bias = spec.inputs.size() > 2 && spec.inputs[2].present();
  p.has_z = spec.inputs.size() > 3 && spec.inputs[3].present();
  p.activation = spec.attr_string("activation", "");
  p.act_min = spec.attr_float("activation_min", p.act_min);
  p.act_max = spec.attr_float("activation_max", p.act_max);
  p.act_alpha = spec.attr_float("activation_alpha", p.act_alpha);
  p.allow_tf32 = spec.allow_tf32;
  return create_cudnn_graph_conv(p, tactic, h);
}

Result<std::unique_ptr<Layer>> create_fused_conv(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) {
  if (spec.has_attr("pool") && tactic != kStem && tactic != kStemWgmma)
    return Unsupported(std::string(kOp) + ": a fused pool runs in tactics " + kStem + " and " + kStemWgmma + " only, not " + tactic);
  if (is_gemm_tactic(tactic)) return FusedConvGemmLayer::create(spec, tactic, h);
  if (is_cudnn_graph_tactic(tactic)) return create_graph_conv(spec, tactic, h);
  if (tactic == kStem || tactic == kStemWgmma) {
    if (std::string why = check_fused_conv(spec); !why.empty()) return Unsupported(why);
    return create_stem_conv(spec, h, tactic == kStemWgmma);
  }
  return FusedConvLayer::create(spec, tactic, h);
}

}  // namespace

void register_fused_conv_layers(LayerTable& table) {
  LayerKind kind;
  kind.op_type = "kiln.FusedConv";
  kind.check = check_fused_conv;
  kind.tactics = fused_conv_tactics;
  kind.create = create_fused_conv;
  kind.lowers_to_fp16 = true;
  table.add(std::move(kind));
}

}  // namespace kiln::cuda
