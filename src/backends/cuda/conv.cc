// CUDA layers: Conv and ConvTranspose through cuDNN's legacy convolution API (cudnnConvolutionForward and
// cudnnConvolutionBackwardData; ConvTranspose is the data gradient of the convolution it transposes).
//
// cuDNN pads symmetrically and ONNX need not (explicit pads, SAME_* with an odd total, ConvTranspose's
// output_shape and output_padding). Where the symmetric form gives the same result it is used as it is;
// otherwise Conv copies X into a zero-padded staging buffer first, and ConvTranspose computes the unpadded
// result into a staging buffer and copies out the window ONNX asks for. Both copies are strided
// cudaMemcpy3DAsync calls, so no kernel of our own is needed.
//
// Tactics are the cuDNN algorithms ("cuda.cudnn.fwd.algoN", "cuda.cudnn.bwd_data.algoN", N as in cuDNN's
// enums). create() asks cuDNN's heuristics (the _v7 query, which runs nothing) whether the algorithm supports
// the problem and returns Unsupported when it does not, or when its workspace is over 256 MiB, and declines
// two that lose accuracy (below); "default" takes the heuristics' first choice that is left. The tests
// (tests/cuda_conv_test.cc) run every tactic that is not declined.
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "backends/cuda/conv_common.h"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

using namespace cudnn_conv;

// ---------------------------------------------------------------------------------------------------------
// A box copy between two [outer, spatial...] tensors of 1 to 3 spatial dims (pre-padding and cropping):
// one cudaMemcpy3DAsync per depth slice of the box (one in all for 1-D and 2-D), with the rows as the x
// extent and the outer (N * C) planes as the z extent.

struct BoxCopy {
  int64_t outer = 0;
  size_t elem = 0;
  int64_t src[3] = {1, 1, 1}, dst[3] = {1, 1, 1};  // D, H, W (leading 1s for fewer spatial dims)
  int64_t box[3] = {1, 1, 1}, src_off[3] = {0, 0, 0}, dst_off[3] = {0, 0, 0};

  void set(size_t nd, const Shape& src_dims, const Shape& dst_dims, const Shape& box_dims, const Shape& src_at,
           const Shape& dst_at) {
    for (size_t i = 0; i < nd; ++i) {
      const size_t j = 3 - nd + i;
      src[j] = src_dims[i];
      dst[j] = dst_dims[i];
      box[j] = box_dims[i];
      src_off[j] = src_at[i];
      dst_off[j] = dst_at[i];
    }
  }
  bool empty() const { return outer == 0 || box[0] <= 0 || box[1] <= 0 || box[2] <= 0; }

  Status run(const void* from, void* to, cudaStream_t stream) const {
    if (empty()) return OkStatus();
    cudaMemcpy3DParms p = {};
    p.srcPtr = make_cudaPitchedPtr(const_cast<void*>(from), src[2] * elem, src[2] * elem, src[0] * src[1]);
    p.dstPtr = make_cudaPitchedPtr(to, dst[2] * elem, dst[2] * elem, dst[0] * dst[1]);
    p.extent = make_cudaExtent(box[2] * elem, box[1], outer);
    p.kind = cudaMemcpyDeviceToDevice;
    for (int64_t d = 0; d < box[0]; ++d) {
      p.srcPos = make_cudaPos(src_off[2] * elem, (src_off[0] + d) * src[1] + src_off[1], 0);
      p.dstPos = make_cudaPos(dst_off[2] * elem, (dst_off[0] + d) * dst[1] + dst_off[1], 0);
      KILN_CUDA_TRY(cudaMemcpy3DAsync(&p, stream));
    }
    return OkStatus();
  }
};


std::string conv_transpose_geometry(const LayerSpec& spec, const Shape& x, const Shape& w, Geometry* g) {
  const std::string op = "CUDA ConvTranspose";
  if (std::string why = common_geometry(spec, op, x, w, true, g); !why.empty()) return why;
  const size_t nd = g->nd;
  const std::vector<int64_t> out_pad = spec.attr_ints("output_padding", std::vector<int64_t>(nd, 0));
  const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
  const bool same = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER";
  std::vector<int64_t> full(nd);  // the output size with no padding at all
  for (size_t d = 0; d < nd; ++d)
    full[d] = g->strides[d] * (g->in[d] - 1) + out_pad[d] + g->effective_kernel(d);
  std::vector<int64_t> want = spec.attr_ints("output_shape");
  if (want.size() == nd + 2) want.erase(want.begin(), want.begin() + 2);
  if (spec.has_attr("output_shape") && want.size() != nd)
    return op + ": output_shape " + ints_str(spec.attr_ints("output_shape")) + " must have " + std::to_string(nd) + " entries";
  g->pad_begin.assign(nd, 0);
  g->pad_end.assign(nd, 0);
  g->out.assign(nd, 0);
  if (!spec.has_attr("pads") && (same || spec.has_attr("output_shape"))) {
    // Pads follow from the output shape asked for (by default in * stride for SAME).
    if (want.empty())
      for (size_t d = 0; d < nd; ++d) want.push_back(g->in[d] * g->strides[d]);
    for (size_t d = 0; d < nd; ++d) {
      const int64_t total = full[d] - want[d];
      const int64_t half = total >= 0 ? total / 2 : -((-total + 1) / 2);  // floor division, as the reference
      g->pad_begin[d] = auto_pad == "SAME_UPPER" ? half : total - half;
      g->pad_end[d] = auto_pad == "SAME_UPPER" ? total - half : half;
      g->out[d] = want[d];
    }
  } else {
    const std::vector<int64_t> pads = spec.attr_ints("pads", std::vector<int64_t>(2 * nd, 0));
    for (size_t d = 0; d < nd; ++d) {
      g->pad_begin[d] = pads[d];
      g->pad_end[d] = pads[nd + d];
      g->out[d] = spec.has_attr("output_shape") ? want[d] : full[d] - pads[d] - pads[nd + d];
    }
  }
  for (size_t d = 0; d < nd; ++d)
    if (g->out[d] <= 0 || g->out[d] > kHuge) return op + ": the output shape " + ints_str(g->out) + " is invalid";
  return "";
}


// ---------------------------------------------------------------------------------------------------------
// check() and tactics, shared by both ops.

std::string check_conv_like(const LayerSpec& spec, bool transpose) {
  const std::string op = transpose ? "CUDA ConvTranspose" : "CUDA Conv";
  if (spec.inputs.size() < 2 || !spec.inputs[0].present() || !spec.inputs[1].present())
    return op + ": inputs X and W are required";
  if (spec.inputs.size() > 3) return op + ": takes at most 3 inputs (X, W, B)";
  const TensorDesc& x = spec.inputs[0];
  const TensorDesc& w = spec.inputs[1];
  if (!is_conv_dtype(x.dtype))
    return op + ": dtype " + dtype_name(x.dtype) + " is not supported (cuDNN convolutions take float32, float16 or bfloat16)";
  if (w.dtype != x.dtype) return op + ": W is " + dtype_name(w.dtype) + " and X " + dtype_name(x.dtype) + "; they must match";
  const bool has_bias = spec.inputs.size() > 2 && spec.inputs[2].present();
  if (has_bias && spec.inputs[2].dtype != x.dtype)
    return op + ": B is " + dtype_name(spec.inputs[2].dtype) + " and X " + dtype_name(x.dtype) + "; they must match";
  if (!spec.outputs.empty() && spec.outputs[0].present() && spec.outputs[0].dtype != x.dtype)
    return op + ": the output must have X's dtype " + dtype_name(x.dtype);
  size_t nd = 0;
  if (x.has_rank) {
    if (x.shape.size() < 3 || x.shape.size() > 5)
      return op + ": X has rank " + std::to_string(x.shape.size()) + "; only 1-D, 2-D and 3-D convolutions (rank 3 to 5) are supported";
    nd = x.shape.size() - 2;
  }
  if (w.has_rank) {
    if (w.shape.size() < 3 || w.shape.size() > 5)
      return op + ": W has rank " + std::to_string(w.shape.size()) + "; only 1-D, 2-D and 3-D convolutions (rank 3 to 5) are supported";
    if (nd > 0 && w.shape.size() != nd + 2) return op + ": W has rank " + std::to_string(w.shape.size()) + " and X rank " + std::to_string(nd + 2);
    nd = w.shape.size() - 2;
  }
  if (has_bias && spec.inputs[2].has_rank && spec.inputs[2].shape.size() != 1)
    return op + ": B must be 1-D, got rank " + std::to_string(spec.inputs[2].shape.size());
  if (std::string why = check_window_attrs(spec, op, nd, transpose); !why.empty()) return why;
  if (x.is_static() && w.is_static()) {
    Geometry g;
    std::string why = transpose ? conv_transpose_geometry(spec, x.shape, w.shape, &g) : conv_geometry(spec, x.shape, w.shape, &g);
    if (!why.empty()) return why;
    if (has_bias && spec.inputs[2].is_static() && shape_numel(spec.inputs[2].shape) != g.M)
      return op + ": B " + ints_str(spec.inputs[2].shape) + " must have " + std::to_string(g.M) + " elements";
  }
  return "";
}

const char* const kFwdPrefix = "cuda.cudnn.fwd.algo";
const char* const kBwdDataPrefix = "cuda.cudnn.bwd_data.algo";

// The best guesses first: implicit GEMM (precomputed, then plain) runs nearly everything well; the
// transform-based algorithms win only on some shapes, and GEMM/DIRECT rarely.
std::vector<std::string> fwd_tactics(const LayerSpec&) {
  std::vector<std::string> t;
  for (int a : {1, 0, 6, 7, 5, 4, 2, 3}) t.push_back(kFwdPrefix + std::to_string(a));
  return t;
}
std::vector<std::string> bwd_data_tactics(const LayerSpec&) {
  std::vector<std::string> t;
  for (int a : {1, 0, 4, 5, 3, 2}) t.push_back(kBwdDataPrefix + std::to_string(a));
  return t;
}

const char* bwd_data_algo_name(int a) {
  static const char* const names[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  return a >= 0 && a < 6 ? names[a] : "?";
}


// ---------------------------------------------------------------------------------------------------------
// Conv.

class ConvLayer final : public Layer {
 public:
  static Result<std::unique_ptr<Layer>> create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h);
  size_t workspace_bytes() const override { return staging_bytes_ + algo_bytes_; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override;

 private:
  TensorDescriptor x_, y_, b_;
  FilterDescriptor w_;
  ConvolutionDescriptor conv_;
  ActivationDescriptor identity_;
  cudnnConvolutionFwdAlgo_t algo_ = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  size_t algo_bytes_ = 0;
  bool nothing_to_do_ = false, has_bias_ = false, fused_bias_ = false;
  // X copied into a zero-padded buffer at the start of the workspace, for pads cuDNN cannot express.
  bool prepad_ = false;
  BoxCopy prepad_copy_;
  size_t staging_used_ = 0, staging_bytes_ = 0;
};

Result<std::unique_ptr<Layer>> ConvLayer::create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) {
  if (std::string why = check_conv_like(spec, false); !why.empty()) return Unsupported(why);
  const int wanted = parse_tactic(tactic, kFwdPrefix, CUDNN_CONVOLUTION_FWD_ALGO_COUNT);
  if (wanted == -2) return InvalidArgument("CUDA Conv: unknown tactic '" + tactic + "'");
  const TensorDesc& xd = spec.inputs[0];
  const TensorDesc& wd = spec.inputs[1];
  if (!xd.is_static() || !wd.is_static()) return InvalidArgument("CUDA Conv: create needs concrete shapes");
  Geometry g;
  if (std::string why = conv_geometry(spec, xd.shape, wd.shape, &g); !why.empty()) return InvalidArgument(why);
  const DType dtype = xd.dtype;
  std::unique_ptr<ConvLayer> layer(new ConvLayer());
  layer->has_bias_ = spec.inputs.size() > 2 && spec.inputs[2].present();
  const Shape y_shape = full_shape(g.N, g.M, g.out);
  if (shape_numel(y_shape) == 0) {
    layer->nothing_to_do_ = true;
    return std::unique_ptr<Layer>(std::move(layer));
  }
  if (shape_numel(xd.shape) == 0 || shape_numel(wd.shape) == 0)
    return Unsupported("CUDA Conv: X " + ints_str(xd.shape) + " or W " + ints_str(wd.shape) + " is empty but the output is not");

  // Per spatial dim, the symmetric pad cuDNN gets and what X needs beyond it.
  std::vector<int64_t> pads(g.nd), extra_begin(g.nd, 0), extra_end(g.nd, 0);
  Shape padded_in = g.in;
  for (size_t d = 0; d < g.nd; ++d) {
    const int64_t pb = g.pad_begin[d], pe = g.pad_end[d];
    if (const int64_t p = symmetric_pad(g, d); p >= 0) {
      pads[d] = p;
      continue;
    }
    pads[d] = std::min(pb, pe);
    extra_begin[d] = pb - pads[d];
    extra_end[d] = pe - pads[d];
    padded_in[d] += extra_begin[d] + extra_end[d];
    layer->prepad_ = true;
  }
  const Shape x_cudnn = full_shape(g.N, g.C, padded_in);
  if (!fits_cudnn(x_cudnn) || !fits_cudnn(y_shape) || !fits_cudnn(wd.shape))
    return Unsupported("CUDA Conv: X " + ints_str(x_cudnn) + " or Y " + ints_str(y_shape) +
                       " is over cuDNN's limit of 2^31 - 1 elements per tensor");
  for (size_t d = 0; d < g.nd; ++d)
    if (pads[d] > INT_MAX || g.strides[d] > INT_MAX || g.dilations[d] > INT_MAX)
      return Unsupported("CUDA Conv: a pad, stride or dilation is over cuDNN's int range");
  if (layer->prepad_) {
    BoxCopy& c = layer->prepad_copy_;
    c.outer = g.N * g.C;
    c.elem = dtype_size(dtype);
    c.set(g.nd, g.in, padded_in, g.in, Shape(g.nd, 0), extra_begin);
    layer->staging_used_ = static_cast<size_t>(shape_numel(x_cudnn)) * dtype_size(dtype);
    layer->staging_bytes_ = align_up(layer->staging_used_);
  }

  KILN_RETURN_IF_ERROR(set_tensor(layer->x_, dtype, cudnn_dims(g.N, g.C, padded_in)));
  KILN_RETURN_IF_ERROR(set_tensor(layer->y_, dtype, cudnn_dims(g.N, g.M, g.out)));
  std::vector<int> wdims = cudnn_dims(g.M, g.C / g.group, g.kernel);
  KILN_RETURN_IF_ERROR(set_filter(layer->w_, dtype, wdims));
  KILN_RETURN_IF_ERROR(set_convolution(layer->conv_, pads, g.strides, g.dilations, g.group, dtype, spec.allow_tf32));
  if (layer->has_bias_) KILN_RETURN_IF_ERROR(set_bias(layer->b_, dtype, g.M, wdims.size()));

  // cuDNN's own output shape must be ONNX's: a mismatch here is a bug in the geometry above.
  std::vector<int> cudnn_out(wdims.size());
  KILN_CUDNN_TRY(cudnnGetConvolutionNdForwardOutputDim(layer->conv_.d, layer->x_.d, layer->w_.d,
                                                       static_cast<int>(cudnn_out.size()), cudnn_out.data()));
  if (cudnn_out != cudnn_dims(g.N, g.M, g.out))
    return Internal("CUDA Conv: cuDNN computes another output shape than " + ints_str(y_shape));

  KILN_ASSIGN_OR_RETURN(const FwdAlgo chosen, choose_fwd_algo(h, layer->x_, layer->w_, layer->conv_, layer->y_, wanted, g.kernel,
                                                            "CUDA Conv"));
  layer->algo_ = chosen.algo;
  layer->algo_bytes_ = chosen.workspace;

  // The bias rides in the convolution's epilogue where cuDNN allows it: with the identity activation only
  // IMPLICIT_PRECOMP_GEMM does; other algorithms add it in a second pass over Y.
  if (layer->has_bias_ && layer->algo_ == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) {
    KILN_CUDNN_TRY(cudnnCreateActivationDescriptor(&layer->identity_.d));
    KILN_CUDNN_TRY(cudnnSetActivationDescriptor(layer->identity_.d, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0));
    layer->fused_bias_ = true;
  }
  return std::unique_ptr<Layer>(std::move(layer));
}

Status ConvLayer::run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
                      const CudaHandles& h) const {
  if (nothing_to_do_) return OkStatus();
  const void* x = inputs[0].data;
  char* ws = static_cast<char*>(workspace);
  if (prepad_) {
    KILN_CUDA_TRY(cudaMemsetAsync(ws, 0, staging_used_, h.stream));
    KILN_RETURN_IF_ERROR(prepad_copy_.run(x, ws, h.stream));
    x = ws;
  }
  void* algo_ws = algo_bytes_ > 0 ? ws + staging_bytes_ : nullptr;
  void* y = outputs[0].data;
  // alpha and beta are floats for every data type here: the compute type is float.
  const float one = 1.0f, zero = 0.0f;
  if (fused_bias_) {
    KILN_CUDNN_TRY(cudnnConvolutionBiasActivationForward(h.cudnn, &one, x_.d, x, w_.d, inputs[1].data, conv_.d, algo_, algo_ws,
                                                         algo_bytes_, &zero, y_.d, y, b_.d, inputs[2].data, identity_.d, y_.d, y));
    return OkStatus();
  }
  KILN_CUDNN_TRY(cudnnConvolutionForward(h.cudnn, &one, x_.d, x, w_.d, inputs[1].data, conv_.d, algo_, algo_ws, algo_bytes_,
                                         &zero, y_.d, y));
  if (has_bias_) KILN_CUDNN_TRY(cudnnAddTensor(h.cudnn, &one, b_.d, inputs[2].data, &one, y_.d, y));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// ConvTranspose: the data gradient of the convolution from Y's shape to X's, whose filter [C, M/group, k...]
// is ConvTranspose's W as it is.

class ConvTransposeLayer final : public Layer {
 public:
  static Result<std::unique_ptr<Layer>> create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h);
  size_t workspace_bytes() const override { return staging_bytes_ + algo_bytes_; }
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override;

 private:
  TensorDescriptor x_, z_, y_, b_;  // z_: what cuDNN writes (Y itself, or the uncropped result in the workspace)
  FilterDescriptor w_;
  ConvolutionDescriptor conv_;
  cudnnConvolutionBwdDataAlgo_t algo_ = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
  size_t algo_bytes_ = 0;
  bool nothing_to_do_ = false, has_bias_ = false;
  bool crop_ = false, zero_fill_ = false;  // zero_fill_: parts of Y get no contribution (negative pads)
  BoxCopy crop_copy_;
  size_t y_bytes_ = 0, staging_bytes_ = 0;
};

Result<std::unique_ptr<Layer>> ConvTransposeLayer::create(const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) {
  if (std::string why = check_conv_like(spec, true); !why.empty()) return Unsupported(why);
  const int wanted = parse_tactic(tactic, kBwdDataPrefix, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT);
  if (wanted == -2) return InvalidArgument("CUDA ConvTranspose: unknown tactic '" + tactic + "'");
  const TensorDesc& xd = spec.inputs[0];
  const TensorDesc& wd = spec.inputs[1];
  if (!xd.is_static() || !wd.is_static()) return InvalidArgument("CUDA ConvTranspose: create needs concrete shapes");
  Geometry g;
  if (std::string why = conv_transpose_geometry(spec, xd.shape, wd.shape, &g); !why.empty()) return InvalidArgument(why);
  const DType dtype = xd.dtype;
  std::unique_ptr<ConvTransposeLayer> layer(new ConvTransposeLayer());
  layer->has_bias_ = spec.inputs.size() > 2 && spec.inputs[2].present();
  const Shape y_shape = full_shape(g.N, g.M, g.out);
  layer->y_bytes_ = static_cast<size_t>(shape_numel(y_shape)) * dtype_size(dtype);
  if (shape_numel(y_shape) == 0) {
    layer->nothing_to_do_ = true;
    return std::unique_ptr<Layer>(std::move(layer));
  }
  if (shape_numel(xd.shape) == 0 || shape_numel(wd.shape) == 0)
    return Unsupported("CUDA ConvTranspose: X " + ints_str(xd.shape) + " or W " + ints_str(wd.shape) + " is empty but the output is not");

  // Per spatial dim: cuDNN can write Y directly, with pad_begin as its symmetric pad, when the convolution of
  // Y's size with that pad gives X's size back; the end pad then only decides Y's size. Otherwise cuDNN
  // writes the unpadded result Z (size stride * (in - 1) + effective kernel) and Y is the window of Z
  // starting at pad_begin, zero where the window leaves Z (negative pads).
  std::vector<int64_t> pads(g.nd, 0);
  Shape z = g.out, box = g.out, src_at(g.nd, 0), dst_at(g.nd, 0);
  for (size_t d = 0; d < g.nd; ++d) {
    const int64_t pb = g.pad_begin[d], k = g.effective_kernel(d), s = g.strides[d], span = g.out[d] + 2 * pb - k;
    if (pb >= 0 && span >= 0 && span / s + 1 == g.in[d]) {
      pads[d] = pb;
      continue;
    }
    layer->crop_ = true;
    z[d] = s * (g.in[d] - 1) + k;
    const int64_t lo = std::max<int64_t>(0, pb), hi = std::min<int64_t>(z[d], pb + g.out[d]);
    box[d] = std::max<int64_t>(0, hi - lo);
    src_at[d] = lo;
    dst_at[d] = lo - pb;
    if (box[d] < g.out[d]) layer->zero_fill_ = true;
  }
  const Shape z_shape = full_shape(g.N, g.M, z);
  if (!fits_cudnn(xd.shape) || !fits_cudnn(z_shape) || !fits_cudnn(y_shape) || !fits_cudnn(wd.shape))
    return Unsupported("CUDA ConvTranspose: X " + ints_str(xd.shape) + " or Y " + ints_str(z_shape) +
                       " is over cuDNN's limit of 2^31 - 1 elements per tensor");
  for (size_t d = 0; d < g.nd; ++d)
    if (pads[d] > INT_MAX || g.strides[d] > INT_MAX || g.dilations[d] > INT_MAX)
      return Unsupported("CUDA ConvTranspose: a pad, stride or dilation is over cuDNN's int range");
  if (layer->crop_) {
    BoxCopy& c = layer->crop_copy_;
    c.outer = g.N * g.M;
    c.elem = dtype_size(dtype);
    c.set(g.nd, z, g.out, box, src_at, dst_at);
    layer->staging_bytes_ = align_up(static_cast<size_t>(shape_numel(z_shape)) * dtype_size(dtype));
  }

  KILN_RETURN_IF_ERROR(set_tensor(layer->x_, dtype, cudnn_dims(g.N, g.C, g.in)));
  KILN_RETURN_IF_ERROR(set_tensor(layer->z_, dtype, cudnn_dims(g.N, g.M, z)));
  KILN_RETURN_IF_ERROR(set_tensor(layer->y_, dtype, cudnn_dims(g.N, g.M, g.out)));
  std::vector<int> wdims = cudnn_dims(g.C, g.M / g.group, g.kernel);
  KILN_RETURN_IF_ERROR(set_filter(layer->w_, dtype, wdims));
  KILN_RETURN_IF_ERROR(set_convolution(layer->conv_, pads, g.strides, g.dilations, g.group, dtype, spec.allow_tf32));
  if (layer->has_bias_) KILN_RETURN_IF_ERROR(set_bias(layer->b_, dtype, g.M, wdims.size()));

  std::vector<int> fwd_out(wdims.size());
  KILN_CUDNN_TRY(cudnnGetConvolutionNdForwardOutputDim(layer->conv_.d, layer->z_.d, layer->w_.d,
                                                       static_cast<int>(fwd_out.size()), fwd_out.data()));
  if (fwd_out != cudnn_dims(g.N, g.C, g.in))
    return Internal("CUDA ConvTranspose: the convolution it transposes does not give X's shape " + ints_str(xd.shape));

  cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  int returned = 0;
  KILN_CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(h.cudnn, layer->w_.d, layer->x_.d, layer->conv_.d, layer->z_.d,
                                                             CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, perf));
  std::string why_not = wanted >= 0 ? std::string("CUDA ConvTranspose: cuDNN does not support algo ") + std::to_string(wanted) +
                                          " (" + bwd_data_algo_name(wanted) + ") for this problem"
                                    : "CUDA ConvTranspose: cuDNN does not support any algo for this problem";
  // ALGO_0 adds partial sums into the output with atomics: in a half type that rounds at every add (and
  // the order varies from run to run), against the one rounding this backend promises.
  const bool atomics_ok = dtype == DType::kFloat32;
  if (wanted == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 && !atomics_ok)
    return Unsupported("CUDA ConvTranspose: cuDNN's bwd_data ALGO_0 accumulates " + dtype_name(dtype) +
                       " outputs with atomic adds, rounding at each; it is offered for float32 only");
  bool found = false;
  for (int i = 0; i < returned && !found; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS || (wanted >= 0 && perf[i].algo != wanted)) continue;
    if (perf[i].algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 && !atomics_ok) continue;
    size_t bytes = 0;
    if (cudnnGetConvolutionBackwardDataWorkspaceSize(h.cudnn, layer->w_.d, layer->x_.d, layer->conv_.d, layer->z_.d,
                                                     perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS)
      continue;
    if (bytes > kMaxAlgoWorkspace) {
      why_not = std::string("CUDA ConvTranspose: cuDNN algo ") + bwd_data_algo_name(perf[i].algo) + " needs " + mib(bytes) +
                " of workspace, over the cap of " + mib(kMaxAlgoWorkspace);
      continue;
    }
    layer->algo_ = perf[i].algo;
    layer->algo_bytes_ = bytes;
    found = true;
  }
  if (!found) return Unsupported(why_not);
  return std::unique_ptr<Layer>(std::move(layer));
}

Status ConvTransposeLayer::run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                               void* workspace, const CudaHandles& h) const {
  if (nothing_to_do_) return OkStatus();
  char* ws = static_cast<char*>(workspace);
  void* y = outputs[0].data;
  void* z = crop_ ? static_cast<void*>(ws) : y;
  void* algo_ws = algo_bytes_ > 0 ? ws + staging_bytes_ : nullptr;
  const float one = 1.0f, zero = 0.0f;
  KILN_CUDNN_TRY(cudnnConvolutionBackwardData(h.cudnn, &one, w_.d, inputs[1].data, x_.d, inputs[0].data, conv_.d, algo_,
                                              algo_ws, algo_bytes_, &zero, z_.d, z));
  if (crop_) {
    if (zero_fill_) KILN_CUDA_TRY(cudaMemsetAsync(y, 0, y_bytes_, h.stream));
    KILN_RETURN_IF_ERROR(crop_copy_.run(z, y, h.stream));
  }
  if (has_bias_) KILN_CUDNN_TRY(cudnnAddTensor(h.cudnn, &one, b_.d, inputs[2].data, &one, y_.d, y));
  return OkStatus();
}

}  // namespace

void register_conv_layers(LayerTable& table) {
  LayerKind conv;
  conv.op_type = "Conv";
  conv.check = [](const LayerSpec& spec) { return check_conv_like(spec, false); };
  conv.tactics = fwd_tactics;
  conv.create = ConvLayer::create;
  table.add(std::move(conv));

  LayerKind transpose;
  transpose.op_type = "ConvTranspose";
  transpose.check = [](const LayerSpec& spec) { return check_conv_like(spec, true); };
  transpose.tactics = bwd_data_tactics;
  transpose.create = ConvTransposeLayer::create;
  table.add(std::move(transpose));
}

}  // namespace kiln::cuda
