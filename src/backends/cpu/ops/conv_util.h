// Sliding-window geometry shared by the conv and pool kernels: kernel, strides, dilations, pads (explicit or
// auto_pad) and the output spatial shape, validated once with errors that name the node.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {

struct WindowGeometry {
  size_t nd = 0;               // number of spatial dims
  Shape in, kernel, out;       // spatial sizes
  std::vector<int64_t> strides, dilations;
  std::vector<int64_t> pads;   // [x1_begin, x2_begin, ..., x1_end, x2_end, ...]
  int64_t pad_begin(size_t d) const { return pads[d]; }
  int64_t pad_end(size_t d) const { return pads[nd + d]; }
  int64_t effective_kernel(size_t d) const { return dilations[d] * (kernel[d] - 1) + 1; }
};

inline std::string ints_to_string(const std::vector<int64_t>& v) { return shape_to_string(v); }

// Refuses absurd output sizes (from corrupt pads or strides) before anything is allocated.
inline Status check_output_size(const KernelContext& ctx, const WindowGeometry& g) {
  double n = 1;
  for (int64_t o : g.out) n *= static_cast<double>(o);
  if (n > double(int64_t(1) << 32)) return ctx.error("the output spatial size " + shape_to_string(g.out) + " is unreasonably large");
  return OkStatus();
}

// Reads strides/dilations/pads/auto_pad for `in_spatial` and `kernel` and fills `g`. `ceil_mode` applies the
// pooling rule (output rounded up, but the last window must start inside the input or its begin padding).
inline Status window_geometry(const KernelContext& ctx, const Shape& in_spatial, const Shape& kernel, bool ceil_mode,
                              WindowGeometry* g) {
  size_t nd = in_spatial.size();
  g->nd = nd;
  g->in = in_spatial;
  g->kernel = kernel;
  if (kernel.size() != nd)
    return ctx.error("kernel_shape " + ints_to_string(kernel) + " must have " + std::to_string(nd) + " entries (one per spatial dim)");
  for (int64_t k : kernel)
    if (k <= 0) return ctx.error("kernel_shape " + ints_to_string(kernel) + " must be positive");
  g->strides = ctx.attr_ints("strides", std::vector<int64_t>(nd, 1));
  g->dilations = ctx.attr_ints("dilations", std::vector<int64_t>(nd, 1));
  g->pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * nd, 0));
  if (g->strides.size() != nd) return ctx.error("strides " + ints_to_string(g->strides) + " must have " + std::to_string(nd) + " entries");
  if (g->dilations.size() != nd) return ctx.error("dilations " + ints_to_string(g->dilations) + " must have " + std::to_string(nd) + " entries");
  if (g->pads.size() != 2 * nd) return ctx.error("pads " + ints_to_string(g->pads) + " must have " + std::to_string(2 * nd) + " entries");
  for (size_t d = 0; d < nd; ++d) {
    if (g->strides[d] <= 0) return ctx.error("strides " + ints_to_string(g->strides) + " must be positive");
    if (g->dilations[d] <= 0) return ctx.error("dilations " + ints_to_string(g->dilations) + " must be positive");
    if (g->pads[d] < 0 || g->pads[nd + d] < 0) return ctx.error("pads " + ints_to_string(g->pads) + " must not be negative");
    // Bound the sizes so that a corrupt attribute cannot overflow the arithmetic below.
    if (kernel[d] > (int64_t(1) << 31) || g->dilations[d] > (int64_t(1) << 31) || g->strides[d] > (int64_t(1) << 31) ||
        g->pads[d] > (int64_t(1) << 31) ||
        g->pads[nd + d] > (int64_t(1) << 31))
      return ctx.error("kernel, dilation or pad value is unreasonably large");
  }
  std::string auto_pad = ctx.attr_string("auto_pad", "NOTSET");
  g->out.assign(nd, 0);
  if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (size_t d = 0; d < nd; ++d) {
      int64_t out = (in_spatial[d] + g->strides[d] - 1) / g->strides[d];
      int64_t total = std::max<int64_t>(0, (out - 1) * g->strides[d] + g->effective_kernel(d) - in_spatial[d]);
      int64_t small = total / 2, big = total - small;
      g->pads[d] = auto_pad == "SAME_UPPER" ? small : big;
      g->pads[nd + d] = auto_pad == "SAME_UPPER" ? big : small;
      g->out[d] = out;
    }
    return check_output_size(ctx, *g);
  }
  if (auto_pad == "VALID") {
    std::fill(g->pads.begin(), g->pads.end(), 0);
  } else if (auto_pad != "NOTSET" && !auto_pad.empty()) {
    return ctx.error("auto_pad '" + auto_pad + "' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID");
  }
  for (size_t d = 0; d < nd; ++d) {
    int64_t span = in_spatial[d] + g->pad_begin(d) + g->pad_end(d) - g->effective_kernel(d);
    if (span < 0)
      return ctx.error("the window (kernel " + std::to_string(kernel[d]) + ", dilation " + std::to_string(g->dilations[d]) +
                       ") is larger than the padded input (" + std::to_string(in_spatial[d]) + " + pads) in spatial dim " +
                       std::to_string(d));
    int64_t out = ceil_mode ? (span + g->strides[d] - 1) / g->strides[d] + 1 : span / g->strides[d] + 1;
    if (ceil_mode && (out - 1) * g->strides[d] >= in_spatial[d] + g->pad_begin(d)) --out;
    g->out[d] = out;
  }
  return check_output_size(ctx, *g);
}

// ONNX Conv of x [N, C, D...] and w [M, C/group, k...] plus the optional bias b [M], with the attributes of
// ctx's node (group, strides, pads, ...): the reference of Conv, also run by the fused kiln.FusedConv. The
// result is computed and returned in float32 for float16/bfloat16 inputs (the caller narrows it back).
Result<Tensor> conv_reference(const KernelContext& ctx, const Tensor& x, const Tensor& w, const Tensor* b);

// The reference of kiln.ChannelsLastPool, also run by kiln.FusedConv's optional pool: x [N, H, W, C] pooled by
// the ONNX pool `mode` names ("max": MaxPool, "average", "global_average", "global_max") with that pool's
// attributes, through the registered NCHW reference (channels_last_pool.cc). Errors name ctx's node.
Result<Tensor> channels_last_pool(const KernelContext& ctx, const Tensor& x, const std::string& mode,
                                  std::map<std::string, ir::Attribute> attrs);

}  // namespace kiln::cpu
