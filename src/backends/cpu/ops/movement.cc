// CPU reference kernels: ops that move elements around (Transpose, Concat, Split, Slice, Pad, DepthToSpace,
// SpaceToDepth, Trilu, ReverseSequence, CenterCropPad). Each computes, for every output element, the input
// element it comes from, so one code path serves every dtype.
#include <algorithm>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"
#include "core/slice_range.h"

namespace kiln::cpu {
namespace {

// Output of permuting the axes of x by perm.
Tensor transpose(const Tensor& x, const std::vector<int64_t>& perm) {
  Shape out_shape(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) out_shape[i] = x.dim(perm[i]);
  std::vector<int64_t> in_strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<int64_t> idx(out_shape.size(), 0);
  for (size_t o = 0; o < map.size(); ++o) {
    int64_t src = 0;
    for (size_t a = 0; a < perm.size(); ++a) src += idx[a] * in_strides[perm[a]];
    map[o] = src;
    mv::next_index(idx, out_shape);
  }
  return mv::gather_elements_by_index(x, out_shape, map);
}

Status transpose_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  std::vector<int64_t> perm = ctx.attr_ints("perm");
  if (perm.empty() && !ctx.has_attr("perm")) {
    for (int64_t i = x.rank() - 1; i >= 0; --i) perm.push_back(i);
  }
  if (static_cast<int64_t>(perm.size()) != x.rank())
    return ctx.error("perm " + shape_to_string(perm) + " does not match input " + x.description());
  std::vector<bool> seen(perm.size(), false);
  for (int64_t& p : perm) {
    if (p < -x.rank() || p >= x.rank() || seen[p < 0 ? p + x.rank() : p])
      return ctx.error("perm " + shape_to_string(perm) + " is not a permutation of the input's axes");
    if (p < 0) p += x.rank();
    seen[p] = true;
  }
  ctx.set_output(0, transpose(x, perm));
  return OkStatus();
}

Status concat_kernel(KernelContext& ctx) {
  std::vector<const Tensor*> inputs;
  for (size_t i = 0; i < ctx.num_inputs(); ++i)
    if (ctx.has_input(i)) inputs.push_back(&ctx.input(i));
  if (inputs.empty()) return ctx.error("Concat needs at least one input");
  const Tensor& first = *inputs[0];
  if (!ctx.has_attr("axis")) return ctx.error("missing the axis attribute");
  const int64_t rank = first.rank();
  if (rank == 0) return ctx.error("cannot concatenate scalars");
  int64_t axis = ctx.attr_int("axis", 0);
  if (axis < -rank || axis >= rank)
    return ctx.error("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  if (axis < 0) axis += rank;
  Shape out_shape = first.shape();
  out_shape[axis] = 0;
  for (const Tensor* t : inputs) {
    bool same = t->dtype() == first.dtype() && t->rank() == rank;
    for (int64_t a = 0; same && a < rank; ++a) same = a == axis || t->dim(a) == first.dim(a);
    if (!same) return ctx.error("cannot concatenate " + first.description() + " and " + t->description() +
                                " on axis " + std::to_string(axis));
    out_shape[axis] += t->dim(axis);
  }
  Tensor out(first.dtype(), out_shape);
  int64_t outer = 1;
  for (int64_t a = 0; a < axis; ++a) outer *= out_shape[a];
  int64_t inner = 1;
  for (int64_t a = axis + 1; a < rank; ++a) inner *= out_shape[a];
  const int64_t out_row = out_shape[axis] * inner;
  int64_t offset = 0;
  for (const Tensor* t : inputs) {
    const int64_t row = t->dim(axis) * inner;
    for (int64_t o = 0; o < outer; ++o) mv::copy_block(*t, o * row, out, o * out_row + offset, row);
    offset += row;
  }
  ctx.set_output(0, out);
  return OkStatus();
}

// Copies x[..., begin:begin+len, ...] (on `axis`).
Tensor slice_axis(const Tensor& x, int64_t axis, int64_t begin, int64_t len) {
  Shape out_shape = x.shape();
  out_shape[axis] = len;
  Tensor out(x.dtype(), out_shape);
  int64_t outer = 1;
  for (int64_t a = 0; a < axis; ++a) outer *= x.dim(a);
  int64_t inner = 1;
  for (int64_t a = axis + 1; a < x.rank(); ++a) inner *= x.dim(a);
  for (int64_t o = 0; o < outer; ++o)
    mv::copy_block(x, (o * x.dim(axis) + begin) * inner, out, o * len * inner, len * inner);
  return out;
}

Status split_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() == 0) return ctx.error("cannot split a scalar");
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), x.rank()));
  const int64_t dim = x.dim(axis);
  std::vector<int64_t> split;
  if (ctx.has_input(1)) {
    KILN_ASSIGN_OR_RETURN(split, mv::int_list_input(ctx, 1, "split"));
  } else if (ctx.has_attr("split")) {
    split = ctx.attr_ints("split");
  }
  const int64_t n_out = static_cast<int64_t>(ctx.node().outputs.size());
  if (split.empty()) {
    if (ctx.has_attr("num_outputs")) {
      // Opset 18: chunks of ceil(dim / n), the last one smaller.
      const int64_t n = ctx.attr_int("num_outputs", 0);
      if (n <= 0 || n != n_out)
        return ctx.error("num_outputs " + std::to_string(n) + " does not match the " + std::to_string(n_out) +
                         " outputs");
      const int64_t chunk = (dim + n - 1) / n;
      for (int64_t i = 0, left = dim; i < n; ++i) {
        split.push_back(std::min(chunk, left));
        left -= split.back();
      }
    } else {
      if (n_out <= 0 || dim % n_out != 0)
        return ctx.error("cannot split dim " + std::to_string(dim) + " of " + x.description() + " into " +
                         std::to_string(n_out) + " equal parts");
      split.assign(static_cast<size_t>(n_out), dim / n_out);
    }
  }
  if (static_cast<int64_t>(split.size()) != n_out)
    return ctx.error("split " + shape_to_string(split) + " does not match the " + std::to_string(n_out) + " outputs");
  int64_t total = 0;
  for (int64_t s : split) {
    if (s < 0) return ctx.error("split " + shape_to_string(split) + " has a negative size");
    total += s;
  }
  if (total != dim)
    return ctx.error("split " + shape_to_string(split) + " does not sum to dim " + std::to_string(dim) + " of " +
                     x.description());
  int64_t begin = 0;
  for (size_t i = 0; i < split.size(); ++i) {
    ctx.set_output(i, slice_axis(x, axis, begin, split[i]));
    begin += split[i];
  }
  return OkStatus();
}

Status slice_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  std::vector<int64_t> starts, ends, axes, steps;
  if (ctx.opset() < 10 || !ctx.has_input(1)) {
    starts = ctx.attr_ints("starts");
    ends = ctx.attr_ints("ends");
    axes = ctx.attr_ints("axes");
  } else {
    KILN_ASSIGN_OR_RETURN(starts, mv::int_list_input(ctx, 1, "starts"));
    if (!ctx.has_input(2)) return ctx.error("missing the ends input");
    KILN_ASSIGN_OR_RETURN(ends, mv::int_list_input(ctx, 2, "ends"));
    if (ctx.has_input(3)) {
      KILN_ASSIGN_OR_RETURN(axes, mv::int_list_input(ctx, 3, "axes"));
    }
    if (ctx.has_input(4)) {
      KILN_ASSIGN_OR_RETURN(steps, mv::int_list_input(ctx, 4, "steps"));
    }
  }
  if (starts.size() != ends.size())
    return ctx.error("starts " + shape_to_string(starts) + " and ends " + shape_to_string(ends) + " differ in length");
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (axes.size() != starts.size() || steps.size() != starts.size())
    return ctx.error("starts, ends, axes and steps must have the same length");
  KILN_ASSIGN_OR_RETURN(axes, mv::normalize_axes(ctx, axes, x.rank()));

  std::vector<int64_t> begin(static_cast<size_t>(x.rank()), 0), step(static_cast<size_t>(x.rank()), 1);
  Shape out_shape = x.shape();
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t a = axes[i], dim = x.dim(a), s = steps[i];
    if (s == 0) return ctx.error("steps must not be 0");
    int64_t st = starts[i], en = ends[i];
    const int64_t len = slice_range(dim, s, &st, &en);
    out_shape[a] = len;
    begin[a] = st;
    step[a] = s;
  }
  std::vector<int64_t> in_strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<int64_t> idx(out_shape.size(), 0);
  for (size_t o = 0; o < map.size(); ++o) {
    int64_t src = 0;
    for (size_t a = 0; a < idx.size(); ++a) src += (begin[a] + idx[a] * step[a]) * in_strides[a];
    map[o] = src;
    mv::next_index(idx, out_shape);
  }
  ctx.set_output(0, mv::gather_elements_by_index(x, out_shape, map));
  return OkStatus();
}

// Maps an out-of-range coordinate c of a dimension of size dim back into it; -1 means "constant".
int64_t pad_source(int64_t c, int64_t dim, const std::string& mode) {
  if (c >= 0 && c < dim) return c;
  if (mode == "constant" || dim == 0) return -1;
  if (mode == "edge") return c < 0 ? 0 : dim - 1;
  if (mode == "wrap") return ((c % dim) + dim) % dim;
  // reflect (numpy): mirror about the edges without repeating them; period 2 * (dim - 1).
  if (dim == 1) return 0;
  const int64_t period = 2 * (dim - 1);
  c = ((c % period) + period) % period;
  return c >= dim ? period - c : c;
}

Status pad_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t rank = x.rank();
  std::string mode = ctx.attr_string("mode", "constant");
  if (mode != "constant" && mode != "reflect" && mode != "edge" && mode != "wrap")
    return ctx.error("unknown mode '" + mode + "'");
  std::vector<int64_t> pads;
  Tensor fill;
  std::vector<int64_t> axes;
  if (ctx.opset() < 11) {
    pads = ctx.has_attr("pads") ? ctx.attr_ints("pads") : ctx.attr_ints("paddings");
    KILN_ASSIGN_OR_RETURN(fill, mv::scalar_of(x.dtype() == DType::kString ? DType::kFloat32 : x.dtype(),
                                              ctx.attr_float("value", 0.0f)));
  } else {
    if (!ctx.has_input(1)) return ctx.error("missing the pads input");
    KILN_ASSIGN_OR_RETURN(pads, mv::int_list_input(ctx, 1, "pads"));
    if (ctx.has_input(2)) {
      fill = ctx.input(2);
      if (fill.numel() != 1 || fill.dtype() != x.dtype())
        return ctx.error("constant_value must be one element of the input's dtype, got " + fill.description());
    }
    if (ctx.has_input(3)) {
      KILN_ASSIGN_OR_RETURN(axes, mv::int_list_input(ctx, 3, "axes"));
    }
  }
  if (axes.empty())
    for (int64_t a = 0; a < rank; ++a) axes.push_back(a);
  KILN_ASSIGN_OR_RETURN(axes, mv::normalize_axes(ctx, axes, rank));
  const size_t n = axes.size();
  if (pads.size() != 2 * n)
    return ctx.error("pads " + shape_to_string(pads) + " must have 2 * " + std::to_string(n) + " values");
  std::vector<int64_t> before(static_cast<size_t>(rank), 0);
  Shape out_shape = x.shape();
  for (int64_t p : pads)
    if (p > mv::kMaxElements || p < -mv::kMaxElements) return ctx.error("pads " + shape_to_string(pads) + " are too large");
  for (size_t i = 0; i < n; ++i) {
    before[axes[i]] = pads[i];
    out_shape[axes[i]] += pads[i] + pads[n + i];
    if (out_shape[axes[i]] < 0) return ctx.error("pads " + shape_to_string(pads) + " crop more than the input has");
    if (x.dim(axes[i]) == 0 && out_shape[axes[i]] > 0 && mode != "constant")
      return ctx.error("cannot pad an empty axis in " + mode + " mode");
  }
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, out_shape));
  std::vector<int64_t> in_strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<int64_t> idx(out_shape.size(), 0);
  for (size_t o = 0; o < map.size(); ++o) {
    int64_t src = 0;
    for (int64_t a = 0; a < rank && src >= 0; ++a) {
      int64_t c = pad_source(idx[a] - before[a], x.dim(a), mode);
      src = c < 0 ? -1 : src + c * in_strides[a];
    }
    map[o] = src;
    mv::next_index(idx, out_shape);
  }
  Tensor out = mv::gather_elements_by_index(x, out_shape, map);
  if (fill.defined() && x.dtype() != DType::kString) {
    for (size_t o = 0; o < map.size(); ++o)
      if (map[o] < 0) copy_element(fill, 0, out, static_cast<int64_t>(o));
  }
  ctx.set_output(0, out);
  return OkStatus();
}

Status depth_to_space_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 4) return ctx.error("input must be 4-D (N, C, H, W), got " + x.description());
  const int64_t b = ctx.attr_int("blocksize", 0);
  // The cap keeps b * b and C * b * b far from overflow; real models use 2..8.
  if (b <= 0 || b > 4096) return ctx.error("blocksize must be in [1, 4096], got " + std::to_string(b));
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  if (C % (b * b) != 0)
    return ctx.error("channels " + std::to_string(C) + " are not divisible by blocksize^2 = " + std::to_string(b * b));
  const std::string mode = ctx.attr_string("mode", "DCR");
  if (mode != "DCR" && mode != "CRD") return ctx.error("unknown mode '" + mode + "'");
  const int64_t oc = C / (b * b);
  Shape out_shape{N, oc, H * b, W * b};
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  int64_t o = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < oc; ++c)
      for (int64_t h = 0; h < H * b; ++h)
        for (int64_t w = 0; w < W * b; ++w) {
          const int64_t bh = h % b, bw = w % b;
          // DCR: channel = (bh, bw, c); CRD: channel = (c, bh, bw).
          const int64_t ic = mode == "DCR" ? (bh * b + bw) * oc + c : (c * b + bh) * b + bw;
          map[o++] = ((n * C + ic) * H + h / b) * W + w / b;
        }
  ctx.set_output(0, mv::gather_elements_by_index(x, out_shape, map));
  return OkStatus();
}

Status space_to_depth_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 4) return ctx.error("input must be 4-D (N, C, H, W), got " + x.description());
  const int64_t b = ctx.attr_int("blocksize", 0);
  // The cap keeps b * b and C * b * b far from overflow; real models use 2..8.
  if (b <= 0 || b > 4096) return ctx.error("blocksize must be in [1, 4096], got " + std::to_string(b));
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  if (H % b != 0 || W % b != 0)
    return ctx.error("spatial dims of " + x.description() + " are not divisible by blocksize " + std::to_string(b));
  Shape out_shape{N, C * b * b, H / b, W / b};
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  int64_t o = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oc = 0; oc < C * b * b; ++oc)
      for (int64_t h = 0; h < H / b; ++h)
        for (int64_t w = 0; w < W / b; ++w) {
          // Output channel = (bh, bw, c).
          const int64_t c = oc % C, bw = (oc / C) % b, bh = oc / (C * b);
          map[o++] = ((n * C + c) * H + h * b + bh) * W + w * b + bw;
        }
  ctx.set_output(0, mv::gather_elements_by_index(x, out_shape, map));
  return OkStatus();
}

Status trilu_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() < 2) return ctx.error("input must have rank >= 2, got " + x.description());
  int64_t k = 0;
  if (ctx.has_input(1)) {
    const Tensor& kt = ctx.input(1);
    if (kt.numel() != 1 || !dtype_is_integer(kt.dtype())) return ctx.error("k must be one integer, got " + kt.description());
    k = kt.scalar_as_int(0);
  }
  const bool upper = ctx.attr_int("upper", 1) != 0;
  const int64_t rows = x.dim(-2), cols = x.dim(-1);
  std::vector<int64_t> map(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = i % cols, r = (i / cols) % rows;
    const bool keep = upper ? c - r >= k : c - r <= k;
    map[i] = keep ? i : -1;
  }
  ctx.set_output(0, mv::gather_elements_by_index(x, x.shape(), map));
  return OkStatus();
}

Status reverse_sequence_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() < 2) return ctx.error("input must have rank >= 2, got " + x.description());
  const int64_t batch_axis = ctx.attr_int("batch_axis", 1), time_axis = ctx.attr_int("time_axis", 0);
  if (!((batch_axis == 0 && time_axis == 1) || (batch_axis == 1 && time_axis == 0)))
    return ctx.error("batch_axis and time_axis must be 0 and 1 (either way round)");
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> lens, mv::int_list_input(ctx, 1, "sequence_lens"));
  const int64_t batch = x.dim(batch_axis), time = x.dim(time_axis);
  if (static_cast<int64_t>(lens.size()) != batch)
    return ctx.error("sequence_lens has " + std::to_string(lens.size()) + " values for batch size " + std::to_string(batch));
  for (int64_t l : lens)
    if (l < 0 || l > time)
      return ctx.error("sequence length " + std::to_string(l) + " is outside [0, " + std::to_string(time) + "]");
  std::vector<int64_t> strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(x.numel()));
  std::vector<int64_t> idx(static_cast<size_t>(x.rank()), 0);
  for (size_t o = 0; o < map.size(); ++o) {
    const int64_t b = idx[batch_axis], t = idx[time_axis];
    const int64_t src_t = t < lens[b] ? lens[b] - 1 - t : t;
    map[o] = static_cast<int64_t>(o) + (src_t - t) * strides[time_axis];
    mv::next_index(idx, x.shape());
  }
  ctx.set_output(0, mv::gather_elements_by_index(x, x.shape(), map));
  return OkStatus();
}

Status center_crop_pad_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> shape, mv::int_list_input(ctx, 1, "shape"));
  std::vector<int64_t> axes = ctx.attr_ints("axes");
  if (axes.empty())
    for (int64_t a = 0; a < x.rank(); ++a) axes.push_back(a);
  KILN_ASSIGN_OR_RETURN(axes, mv::normalize_axes(ctx, axes, x.rank()));
  if (shape.size() != axes.size())
    return ctx.error("shape " + shape_to_string(shape) + " must have one value per axis (" +
                     std::to_string(axes.size()) + ")");
  Shape out_shape = x.shape();
  // Output coordinate o on an axis reads input coordinate o + offset (crop: offset > 0; pad: offset < 0).
  std::vector<int64_t> offset(static_cast<size_t>(x.rank()), 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t a = axes[i], dim = x.dim(a), target = shape[i];
    if (target < 0) return ctx.error("shape " + shape_to_string(shape) + " has a negative value");
    out_shape[a] = target;
    offset[a] = target <= dim ? (dim - target) / 2 : -((target - dim) / 2);
  }
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, out_shape));
  std::vector<int64_t> in_strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<int64_t> idx(out_shape.size(), 0);
  for (size_t o = 0; o < map.size(); ++o) {
    int64_t src = 0;
    for (int64_t a = 0; a < x.rank() && src >= 0; ++a) {
      const int64_t c = idx[a] + offset[a];
      src = (c < 0 || c >= x.dim(a)) ? -1 : src + c * in_strides[a];
    }
    map[o] = src;
    mv::next_index(idx, out_shape);
  }
  ctx.set_output(0, mv::gather_elements_by_index(x, out_shape, map));
  return OkStatus();
}

}  // namespace

void register_movement_ops(ir::OpRegistry& r) {
  r.add("Transpose", 1, transpose_kernel);
  r.add("Concat", 1, concat_kernel);
  r.add("Split", 1, split_kernel);
  r.add("Slice", 1, slice_kernel);
  r.add("Pad", 1, pad_kernel);
  r.add("DepthToSpace", 1, depth_to_space_kernel);
  r.add("SpaceToDepth", 1, space_to_depth_kernel);
  r.add("Trilu", 14, trilu_kernel);
  r.add("ReverseSequence", 10, reverse_sequence_kernel);
  r.add("CenterCropPad", 18, center_crop_pad_kernel);
}

}  // namespace kiln::cpu
