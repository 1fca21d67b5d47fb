// cuDNN convolution helpers shared by the Conv/ConvTranspose layers (conv.cc) and kiln.FusedConv
// (fused_conv.cc): owned descriptors, dtype and math-type choices, tensor/filter/convolution descriptors in
// NCHW or NHWC, the ONNX window geometry as the CPU reference computes it, the forward-algorithm tactics
// and the choice of a forward algorithm through cuDNN's heuristics.
#pragma once

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"

namespace kiln::cuda::cudnn_conv {

inline constexpr size_t kMaxAlgoWorkspace = size_t(256) << 20;
inline constexpr size_t kAlign = 256;
inline size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

inline std::string ints_str(const std::vector<int64_t>& v) { return shape_to_string(v); }

// ---------------------------------------------------------------------------------------------------------
// Owned cuDNN descriptors (layers are never copied or moved once created).

struct TensorDescriptor {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDescriptor() = default;
  TensorDescriptor(const TensorDescriptor&) = delete;
  TensorDescriptor& operator=(const TensorDescriptor&) = delete;
  ~TensorDescriptor() {
    if (d != nullptr) cudnnDestroyTensorDescriptor(d);
  }
};
struct FilterDescriptor {
  cudnnFilterDescriptor_t d = nullptr;
  FilterDescriptor() = default;
  FilterDescriptor(const FilterDescriptor&) = delete;
  FilterDescriptor& operator=(const FilterDescriptor&) = delete;
  ~FilterDescriptor() {
    if (d != nullptr) cudnnDestroyFilterDescriptor(d);
  }
};
struct ConvolutionDescriptor {
  cudnnConvolutionDescriptor_t d = nullptr;
  ConvolutionDescriptor() = default;
  ConvolutionDescriptor(const ConvolutionDescriptor&) = delete;
  ConvolutionDescriptor& operator=(const ConvolutionDescriptor&) = delete;
  ~ConvolutionDescriptor() {
    if (d != nullptr) cudnnDestroyConvolutionDescriptor(d);
  }
};
struct ActivationDescriptor {
  cudnnActivationDescriptor_t d = nullptr;
  ActivationDescriptor() = default;
  ActivationDescriptor(const ActivationDescriptor&) = delete;
  ActivationDescriptor& operator=(const ActivationDescriptor&) = delete;
  ~ActivationDescriptor() {
    if (d != nullptr) cudnnDestroyActivationDescriptor(d);
  }
};

inline bool is_conv_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

inline cudnnDataType_t cudnn_type(DType t) {
  return t == DType::kFloat16 ? CUDNN_DATA_HALF : t == DType::kBFloat16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

// TF32 is what CUDNN_DEFAULT_MATH permits for float32 on Ampere and later; CUDNN_FMA_MATH keeps float32 exact.
// Half types compute in float32 (the descriptor's compute type) on tensor cores.
inline cudnnMathType_t math_type(DType t, bool allow_tf32) {
  if (t != DType::kFloat32) return CUDNN_TENSOR_OP_MATH;
  return allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
}

// [N, C, spatial...] as cuDNN sees it: a 1-D problem becomes 2-D with a height of 1, since cuDNN's
// convolutions take 4-D and 5-D tensors only.
inline std::vector<int> cudnn_dims(int64_t n, int64_t c, const Shape& spatial) {
  std::vector<int> d = {static_cast<int>(n), static_cast<int>(c)};
  if (spatial.size() == 1) d.push_back(1);
  for (int64_t s : spatial) d.push_back(static_cast<int>(s));
  return d;
}

inline Status set_tensor(TensorDescriptor& t, DType dtype, const std::vector<int>& dims) {
  if (t.d == nullptr) KILN_CUDNN_TRY(cudnnCreateTensorDescriptor(&t.d));
  std::vector<int> strides(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * dims[i + 1];
  KILN_CUDNN_TRY(cudnnSetTensorNdDescriptor(t.d, cudnn_type(dtype), static_cast<int>(dims.size()), dims.data(), strides.data()));
  return OkStatus();
}

// The per-channel bias as a [1, M, 1, ...] tensor broadcast over N and space by cuDNN.
inline Status set_bias(TensorDescriptor& t, DType dtype, int64_t m, size_t cudnn_rank) {
  std::vector<int> dims(cudnn_rank, 1);
  dims[1] = static_cast<int>(m);
  return set_tensor(t, dtype, dims);
}

inline Status set_filter(FilterDescriptor& f, DType dtype, const std::vector<int>& dims) {
  if (f.d == nullptr) KILN_CUDNN_TRY(cudnnCreateFilterDescriptor(&f.d));
  KILN_CUDNN_TRY(cudnnSetFilterNdDescriptor(f.d, cudnn_type(dtype), CUDNN_TENSOR_NCHW, static_cast<int>(dims.size()), dims.data()));
  return OkStatus();
}

inline Status set_convolution(ConvolutionDescriptor& c, const std::vector<int64_t>& pads, const std::vector<int64_t>& strides,
                       const std::vector<int64_t>& dilations, int64_t group, DType dtype, bool allow_tf32) {
  std::vector<int> p, s, d;
  if (pads.size() == 1) {  // the 1-D problem's unit height
    p.push_back(0);
    s.push_back(1);
    d.push_back(1);
  }
  for (size_t i = 0; i < pads.size(); ++i) {
    p.push_back(static_cast<int>(pads[i]));
    s.push_back(static_cast<int>(strides[i]));
    d.push_back(static_cast<int>(dilations[i]));
  }
  if (c.d == nullptr) KILN_CUDNN_TRY(cudnnCreateConvolutionDescriptor(&c.d));
  KILN_CUDNN_TRY(cudnnSetConvolutionNdDescriptor(c.d, static_cast<int>(p.size()), p.data(), s.data(), d.data(),
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  KILN_CUDNN_TRY(cudnnSetConvolutionGroupCount(c.d, static_cast<int>(group)));
  KILN_CUDNN_TRY(cudnnSetConvolutionMathType(c.d, math_type(dtype, allow_tf32)));
  return OkStatus();
}

// cuDNN's dims are ints and its legacy API limits a tensor to 2^31 - 1 elements.
inline bool fits_cudnn(const Shape& full_shape) {
  double n = 1;
  for (int64_t d : full_shape) {
    if (d > INT_MAX) return false;
    n *= static_cast<double>(d);
  }
  return n <= static_cast<double>(INT_MAX);
}

// Geometry, as the CPU reference computes it (src/backends/cpu/ops/conv.cc and conv_util.h).

struct Geometry {
  size_t nd = 0;
  int64_t N = 0, C = 0, M = 0, group = 1;  // C: X's channels, M: Y's channels
  Shape in, kernel, out;                   // spatial sizes
  std::vector<int64_t> strides, dilations, pad_begin, pad_end;
  int64_t effective_kernel(size_t d) const { return dilations[d] * (kernel[d] - 1) + 1; }
};

inline constexpr int64_t kHuge = int64_t(1) << 31;

// Attribute checks that need no shapes (nd = 0 when the rank is unknown). "" or why not.
inline std::string check_window_attrs(const LayerSpec& spec, const std::string& op, size_t nd, bool transpose) {
  const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && !auto_pad.empty() && auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER" && auto_pad != "VALID")
    return op + ": auto_pad '" + auto_pad + "' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID";
  if (spec.attr_int("group", 1) <= 0) return op + ": group " + std::to_string(spec.attr_int("group", 1)) + " must be positive";
  for (const char* name : {"strides", "dilations", "kernel_shape"}) {
    if (!spec.has_attr(name)) continue;
    const auto v = spec.attr_ints(name);
    if (nd > 0 && v.size() != nd) return op + ": " + name + " " + ints_str(v) + " must have " + std::to_string(nd) + " entries";
    for (int64_t e : v)
      if (e <= 0 || e > kHuge) return op + ": " + name + " " + ints_str(v) + " must be positive";
  }
  if (spec.has_attr("pads")) {
    const auto v = spec.attr_ints("pads");
    if (nd > 0 && v.size() != 2 * nd) return op + ": pads " + ints_str(v) + " must have " + std::to_string(2 * nd) + " entries";
    for (int64_t e : v)
      if ((!transpose && e < 0) || e > kHuge || e < -kHuge) return op + ": pads " + ints_str(v) + " must not be negative";
  }
  if (transpose && spec.has_attr("output_shape")) {
    const auto v = spec.attr_ints("output_shape");
    if (nd > 0 && v.size() != nd && v.size() != nd + 2)
      return op + ": output_shape " + ints_str(v) + " must have " + std::to_string(nd) + " entries (or " +
             std::to_string(nd + 2) + " with N and C)";
  }
  if (transpose && spec.has_attr("output_padding")) {
    const auto v = spec.attr_ints("output_padding");
    if (nd > 0 && v.size() != nd) return op + ": output_padding " + ints_str(v) + " must have " + std::to_string(nd) + " entries";
    for (int64_t e : v)
      if (e < 0 || e > kHuge) return op + ": output_padding " + ints_str(v) + " must not be negative";
  }
  return "";
}

// Shared by both ops: ranks, group, kernel and the stride/dilation attributes. "" or why not.
inline std::string common_geometry(const LayerSpec& spec, const std::string& op, const Shape& x, const Shape& w, bool transpose,
                            Geometry* g) {
  if (x.size() < 3 || x.size() > 5)
    return op + ": X " + ints_str(x) + " must be [N, C, D1, ...] with 1 to 3 spatial dims";
  if (w.size() != x.size()) return op + ": W " + ints_str(w) + " must have X's rank " + std::to_string(x.size());
  g->nd = x.size() - 2;
  g->N = x[0];
  g->C = x[1];
  g->group = spec.attr_int("group", 1);
  if (std::string why = check_window_attrs(spec, op, g->nd, transpose); !why.empty()) return why;
  if (g->group <= 0 || g->C % g->group != 0)
    return op + ": group " + std::to_string(g->group) + " must divide the input channels " + std::to_string(g->C);
  if (!transpose) {
    g->M = w[0];
    if (g->M % g->group != 0)
      return op + ": group " + std::to_string(g->group) + " must divide the output channels " + std::to_string(g->M);
    if (w[1] != g->C / g->group)
      return op + ": W " + ints_str(w) + " must have C/group = " + std::to_string(g->C / g->group) + " input channels";
  } else {
    if (w[0] != g->C) return op + ": W " + ints_str(w) + " must have C = " + std::to_string(g->C) + " input channels";
    g->M = w[1] * g->group;
  }
  g->kernel.assign(w.begin() + 2, w.end());
  g->in.assign(x.begin() + 2, x.end());
  for (int64_t k : g->kernel)
    if (k <= 0) return op + ": W " + ints_str(w) + " has an empty kernel";
  if (spec.has_attr("kernel_shape") && spec.attr_ints("kernel_shape") != g->kernel)
    return op + ": kernel_shape " + ints_str(spec.attr_ints("kernel_shape")) + " does not match W " + ints_str(w);
  g->strides = spec.attr_ints("strides", std::vector<int64_t>(g->nd, 1));
  g->dilations = spec.attr_ints("dilations", std::vector<int64_t>(g->nd, 1));
  return "";
}

inline std::string conv_geometry(const LayerSpec& spec, const Shape& x, const Shape& w, Geometry* g,
                                 const std::string& op = "CUDA Conv") {
  if (std::string why = common_geometry(spec, op, x, w, false, g); !why.empty()) return why;
  const size_t nd = g->nd;
  std::vector<int64_t> pads = spec.attr_ints("pads", std::vector<int64_t>(2 * nd, 0));
  const std::string auto_pad = spec.attr_string("auto_pad", "NOTSET");
  g->out.assign(nd, 0);
  g->pad_begin.assign(nd, 0);
  g->pad_end.assign(nd, 0);
  for (size_t d = 0; d < nd; ++d) {
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t out = (g->in[d] + g->strides[d] - 1) / g->strides[d];
      const int64_t total = std::max<int64_t>(0, (out - 1) * g->strides[d] + g->effective_kernel(d) - g->in[d]);
      const int64_t small = total / 2, big = total - small;
      g->pad_begin[d] = auto_pad == "SAME_UPPER" ? small : big;
      g->pad_end[d] = auto_pad == "SAME_UPPER" ? big : small;
      g->out[d] = out;
      continue;
    }
    if (auto_pad != "VALID") {
      g->pad_begin[d] = pads[d];
      g->pad_end[d] = pads[nd + d];
    }
    const int64_t span = g->in[d] + g->pad_begin[d] + g->pad_end[d] - g->effective_kernel(d);
    if (span < 0)
      return op + ": the window (kernel " + std::to_string(g->kernel[d]) + ", dilation " + std::to_string(g->dilations[d]) +
             ") is larger than the padded input in spatial dim " + std::to_string(d);
    g->out[d] = span / g->strides[d] + 1;
  }
  return "";
}

inline Shape full_shape(int64_t n, int64_t c, const Shape& spatial) {
  Shape s = {n, c};
  s.insert(s.end(), spatial.begin(), spatial.end());
  return s;
}

// The algorithm a tactic names: -1 for "default", -2 for a name this op does not have.
inline int parse_tactic(const std::string& tactic, const std::string& prefix, int count) {
  if (tactic == "default" || tactic.empty()) return -1;
  if (tactic.size() != prefix.size() + 1 || tactic.compare(0, prefix.size(), prefix) != 0) return -2;
  const int a = tactic.back() - '0';
  return a >= 0 && a < count ? a : -2;
}

inline const char* fwd_algo_name(int a) {
  static const char* const names[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                      "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  return a >= 0 && a < 8 ? names[a] : "?";
}

inline std::string mib(size_t bytes) { return std::to_string((bytes + (size_t(1) << 20) - 1) >> 20) + " MiB"; }

// The symmetric pad cuDNN can use for spatial dim d, or -1 when ONNX's pads there have no symmetric
// equivalent. Extra begin padding on its own is harmless when it adds no window at the end (the end pad's
// last window is then never used).
inline int64_t symmetric_pad(const Geometry& g, size_t d) {
  const int64_t pb = g.pad_begin[d], pe = g.pad_end[d], k = g.effective_kernel(d), s = g.strides[d];
  if (pb == pe || (pb > pe && (g.in[d] + 2 * pb - k) / s == (g.in[d] + pb + pe - k) / s)) return pb;
  return -1;
}

// [N, C, spatial...] stored channels-last ([N, spatial..., C], NHWC / NDHWC) as cuDNN sees it: the dims of
// cudnn_dims, with strides that make C the innermost.
inline Status set_tensor_nhwc(TensorDescriptor& t, DType dtype, const std::vector<int>& dims) {
  if (t.d == nullptr) KILN_CUDNN_TRY(cudnnCreateTensorDescriptor(&t.d));
  const int r = static_cast<int>(dims.size());
  std::vector<int> strides(dims.size(), 1);
  int stride = dims[1];  // C is innermost; then the spatial dims, last first; N outermost
  for (int i = r - 1; i >= 2; --i) {
    strides[i] = stride;
    stride *= dims[i];
  }
  strides[0] = stride;
  KILN_CUDNN_TRY(cudnnSetTensorNdDescriptor(t.d, cudnn_type(dtype), r, dims.data(), strides.data()));
  return OkStatus();
}

// A filter [M, C/group, k...] stored [M, k..., C/group] (KRSC).
inline Status set_filter_nhwc(FilterDescriptor& f, DType dtype, const std::vector<int>& dims) {
  if (f.d == nullptr) KILN_CUDNN_TRY(cudnnCreateFilterDescriptor(&f.d));
  KILN_CUDNN_TRY(cudnnSetFilterNdDescriptor(f.d, cudnn_type(dtype), CUDNN_TENSOR_NHWC, static_cast<int>(dims.size()), dims.data()));
  return OkStatus();
}

struct FwdAlgo {
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  size_t workspace = 0;
};

// The forward algorithm for a tactic (wanted >= 0: that algorithm; -1: the heuristics' first choice), from
// cuDNN's _v7 query (which runs nothing): Unsupported, saying why, when cuDNN has no kernel of it for the
// problem or its workspace is over kMaxAlgoWorkspace. WINOGRAD_NONFUSED on kernels larger than 3 errs by
// 2e-3 to 5e-3 of the output's range, in float32 with FMA math too (measured on an H100 with cuDNN 9: worse
// than TF32); on 3x3 kernels by about 5e-6: it is not offered on larger kernels.
inline Result<FwdAlgo> choose_fwd_algo(const CudaHandles& h, const TensorDescriptor& x, const FilterDescriptor& w,
                                       const ConvolutionDescriptor& conv, const TensorDescriptor& y, int wanted,
                                       const Shape& kernel, const std::string& op) {
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int returned = 0;
  KILN_CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(h.cudnn, x.d, w.d, conv.d, y.d, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                        &returned, perf));
  std::string why_not = wanted >= 0 ? op + ": cuDNN does not support algo " + std::to_string(wanted) + " (" +
                                          fwd_algo_name(wanted) + ") for this problem"
                                    : op + ": cuDNN does not support any algo for this problem";
  const bool winograd_ok = *std::max_element(kernel.begin(), kernel.end()) <= 3;
  if (wanted == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED && !winograd_ok)
    return Unsupported(op + ": cuDNN's WINOGRAD_NONFUSED loses accuracy on kernels larger than 3 (kernel " +
                       ints_str(kernel) + "); not offered");
  for (int i = 0; i < returned; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS || (wanted >= 0 && perf[i].algo != wanted)) continue;
    if (perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED && !winograd_ok) continue;
    size_t bytes = 0;
    if (cudnnGetConvolutionForwardWorkspaceSize(h.cudnn, x.d, w.d, conv.d, y.d, perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS)
      continue;
    if (bytes > kMaxAlgoWorkspace) {
      why_not = op + ": cuDNN algo " + fwd_algo_name(perf[i].algo) + " needs " + mib(bytes) + " of workspace, over the cap of " +
                mib(kMaxAlgoWorkspace);
      continue;
    }
    return FwdAlgo{perf[i].algo, bytes};
  }
  return Unsupported(why_not);
}

}  // namespace kiln::cuda::cudnn_conv
