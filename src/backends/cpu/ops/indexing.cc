// CPU reference kernels: indexing (Gather*, Scatter*, TensorScatter, OneHot, Compress, NonZero).
// Negative indices count from the end; an index outside the dimension is an error (never a wild read).
#include <algorithm>
#include <cmath>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"

namespace kiln::cpu {
namespace {

Result<std::vector<int64_t>> index_values(const KernelContext& ctx, size_t i) {
  const Tensor& t = ctx.input(i);
  if (t.dtype() != DType::kInt32 && t.dtype() != DType::kInt64)
    return ctx.error("indices must be int32 or int64, got " + t.description());
  return t.to_int64_vector();
}

Status gather_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  if (data.rank() == 0) return ctx.error("data must have rank >= 1");
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), data.rank()));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> indices, index_values(ctx, 1));
  const Shape& ishape = ctx.input(1).shape();
  const int64_t dim = data.dim(axis);
  for (int64_t& i : indices) KILN_RETURN_IF_ERROR(mv::normalize_index(ctx, i, dim, "index"));
  Shape out_shape(data.shape().begin(), data.shape().begin() + axis);
  out_shape.insert(out_shape.end(), ishape.begin(), ishape.end());
  out_shape.insert(out_shape.end(), data.shape().begin() + axis + 1, data.shape().end());
  int64_t outer = 1, inner = 1;
  for (int64_t a = 0; a < axis; ++a) outer *= data.dim(a);
  for (int64_t a = axis + 1; a < data.rank(); ++a) inner *= data.dim(a);
  const int64_t n_idx = static_cast<int64_t>(indices.size());
  Tensor out(data.dtype(), out_shape);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < n_idx; ++j)
      mv::copy_block(data, (o * dim + indices[j]) * inner, out, (o * n_idx + j) * inner, inner);
  ctx.set_output(0, out);
  return OkStatus();
}

// For each element of `indices` (shape `ishape`, same rank as data), the linear position in data it names:
// its own coordinates with the one on `axis` replaced by the index. Used by GatherElements and
// ScatterElements.
Result<std::vector<int64_t>> element_positions(const KernelContext& ctx, const Shape& data_shape, const Shape& ishape,
                                               std::vector<int64_t> indices, int64_t axis) {
  std::vector<int64_t> strides = strides_of(data_shape);
  std::vector<int64_t> pos(indices.size());
  std::vector<int64_t> idx(ishape.size(), 0);
  for (size_t k = 0; k < indices.size(); ++k) {
    KILN_RETURN_IF_ERROR(mv::normalize_index(ctx, indices[k], data_shape[axis], "index"));
    int64_t p = 0;
    for (size_t a = 0; a < ishape.size(); ++a) p += (static_cast<int64_t>(a) == axis ? indices[k] : idx[a]) * strides[a];
    pos[k] = p;
    mv::next_index(idx, ishape);
  }
  return pos;
}

Status check_elements_shapes(const KernelContext& ctx, const Tensor& data, const Shape& ishape, int64_t axis,
                             bool same_elsewhere) {
  if (static_cast<int64_t>(ishape.size()) != data.rank())
    return ctx.error("indices " + shape_to_string(ishape) + " must have the rank of data " + data.description());
  for (int64_t a = 0; a < data.rank(); ++a) {
    // GatherElements allows smaller index dims; both need them within data's.
    if (a != axis && (same_elsewhere ? ishape[a] > data.dim(a) : false))
      return ctx.error("indices " + shape_to_string(ishape) + " do not fit data " + data.description());
  }
  return OkStatus();
}

Status gather_elements_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  if (data.rank() == 0) return ctx.error("data must have rank >= 1");
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), data.rank()));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> indices, index_values(ctx, 1));
  const Shape& ishape = ctx.input(1).shape();
  KILN_RETURN_IF_ERROR(check_elements_shapes(ctx, data, ishape, axis, true));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> pos, element_positions(ctx, data.shape(), ishape, indices, axis));
  ctx.set_output(0, mv::gather_elements_by_index(data, ishape, pos));
  return OkStatus();
}

Status gather_nd_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> indices, index_values(ctx, 1));
  const Shape& ishape = ctx.input(1).shape();
  const int64_t b = ctx.attr_int("batch_dims", 0);
  const int64_t q = static_cast<int64_t>(ishape.size()), r = data.rank();
  if (q < 1 || r < 1) return ctx.error("data and indices must have rank >= 1");
  if (b < 0 || b >= std::min(q, r)) return ctx.error("batch_dims " + std::to_string(b) + " is out of range");
  const int64_t m = ishape.back();
  if (m < 1 || m > r - b)
    return ctx.error("indices " + shape_to_string(ishape) + " index too many dims of data " + data.description());
  for (int64_t a = 0; a < b; ++a)
    if (ishape[a] != data.dim(a))
      return ctx.error("batch dims of indices " + shape_to_string(ishape) + " and data " + data.description() + " differ");
  Shape out_shape(ishape.begin(), ishape.end() - 1);
  out_shape.insert(out_shape.end(), data.shape().begin() + b + m, data.shape().end());
  int64_t batch = 1, slice = 1, tuples_per_batch = 1;
  for (int64_t a = 0; a < b; ++a) batch *= data.dim(a);
  for (int64_t a = b + m; a < r; ++a) slice *= data.dim(a);
  for (int64_t a = b; a < q - 1; ++a) tuples_per_batch *= ishape[a];
  std::vector<int64_t> strides = strides_of(data.shape());
  const int64_t batch_stride = b > 0 ? strides[b - 1] : 0;
  Tensor out(data.dtype(), out_shape);
  for (int64_t bi = 0; bi < batch; ++bi)
    for (int64_t t = 0; t < tuples_per_batch; ++t) {
      const int64_t tuple = bi * tuples_per_batch + t;
      int64_t src = bi * batch_stride;
      for (int64_t k = 0; k < m; ++k) {
        int64_t i = indices[tuple * m + k];
        KILN_RETURN_IF_ERROR(mv::normalize_index(ctx, i, data.dim(b + k), "index"));
        src += i * strides[b + k];
      }
      mv::copy_block(data, src, out, tuple * slice, slice);
    }
  ctx.set_output(0, out);
  return OkStatus();
}

// Writes updates[src] into data[dst] for every (dst, src) pair, in order, combining with `reduction`.
Result<Tensor> scatter_apply(const KernelContext& ctx, const Tensor& data, const Tensor& updates,
                             const std::vector<std::pair<int64_t, int64_t>>& writes, const std::string& reduction) {
  if (updates.dtype() != data.dtype())
    return ctx.error("updates " + updates.description() + " must have the dtype of data " + data.description());
  if (reduction == "none") {
    Tensor out = data.clone();
    for (const auto& [dst, src] : writes) copy_element(updates, src, out, dst);
    return out;
  }
  if (reduction != "add" && reduction != "mul" && reduction != "max" && reduction != "min")
    return ctx.error("unknown reduction '" + reduction + "'");
  Tensor out = widen_to_float32(data).clone();
  Tensor upd = widen_to_float32(updates);
  bool ok = dispatch_numeric(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>();
    const T* u = upd.data<T>();
    for (const auto& [dst, src] : writes) {
      if (reduction == "add") o[dst] = static_cast<T>(o[dst] + u[src]);
      else if (reduction == "mul") o[dst] = static_cast<T>(o[dst] * u[src]);
      else if (reduction == "max") o[dst] = std::max(o[dst], u[src]);
      else o[dst] = std::min(o[dst], u[src]);
    }
  });
  if (!ok) return ctx.unsupported("reduction '" + reduction + "' does not support " + data.description());
  return narrow_from_float32(out, data.dtype());
}

Status scatter_elements_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& updates = ctx.input(2);
  if (data.rank() == 0) return ctx.error("data must have rank >= 1");
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), data.rank()));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> indices, index_values(ctx, 1));
  const Shape& ishape = ctx.input(1).shape();
  if (updates.shape() != ishape)
    return ctx.error("updates " + updates.description() + " must have the shape of indices " + shape_to_string(ishape));
  KILN_RETURN_IF_ERROR(check_elements_shapes(ctx, data, ishape, axis, true));
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> pos, element_positions(ctx, data.shape(), ishape, indices, axis));
  std::vector<std::pair<int64_t, int64_t>> writes;
  for (size_t k = 0; k < pos.size(); ++k) writes.emplace_back(pos[k], static_cast<int64_t>(k));
  KILN_ASSIGN_OR_RETURN(Tensor out, scatter_apply(ctx, data, updates, writes, ctx.attr_string("reduction", "none")));
  ctx.set_output(0, out);
  return OkStatus();
}

Status scatter_nd_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& updates = ctx.input(2);
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> indices, index_values(ctx, 1));
  const Shape& ishape = ctx.input(1).shape();
  const int64_t q = static_cast<int64_t>(ishape.size()), r = data.rank();
  if (q < 1 || r < 1) return ctx.error("data and indices must have rank >= 1");
  const int64_t k = ishape.back();
  if (k < 1 || k > r) return ctx.error("indices " + shape_to_string(ishape) + " index too many dims of " + data.description());
  Shape want(ishape.begin(), ishape.end() - 1);
  want.insert(want.end(), data.shape().begin() + k, data.shape().end());
  if (updates.shape() != want)
    return ctx.error("updates " + updates.description() + " must have shape " + shape_to_string(want));
  int64_t slice = 1;
  for (int64_t a = k; a < r; ++a) slice *= data.dim(a);
  std::vector<int64_t> strides = strides_of(data.shape());
  const int64_t n_tuples = ishape.empty() ? 0 : shape_numel(Shape(ishape.begin(), ishape.end() - 1));
  std::vector<std::pair<int64_t, int64_t>> writes;
  for (int64_t t = 0; t < n_tuples; ++t) {
    int64_t dst = 0;
    for (int64_t j = 0; j < k; ++j) {
      int64_t i = indices[t * k + j];
      KILN_RETURN_IF_ERROR(mv::normalize_index(ctx, i, data.dim(j), "index"));
      dst += i * strides[j];
    }
    for (int64_t e = 0; e < slice; ++e) writes.emplace_back(dst + e, t * slice + e);
  }
  KILN_ASSIGN_OR_RETURN(Tensor out, scatter_apply(ctx, data, updates, writes, ctx.attr_string("reduction", "none")));
  ctx.set_output(0, out);
  return OkStatus();
}

Status tensor_scatter_kernel(KernelContext& ctx) {
  const Tensor& past = ctx.input(0);
  const Tensor& update = ctx.input(1);
  if (past.rank() < 1) return ctx.error("past_cache must have rank >= 1");
  if (update.dtype() != past.dtype() || update.rank() != past.rank())
    return ctx.error("update " + update.description() + " does not match past_cache " + past.description());
  KILN_ASSIGN_OR_RETURN(int64_t axis, mv::normalize_axis(ctx, ctx.attr_int("axis", -2), past.rank()));
  if (axis == 0) return ctx.error("axis must not be the batch axis 0");
  const std::string mode = ctx.attr_string("mode", "linear");
  if (mode != "linear" && mode != "circular") return ctx.error("unknown mode '" + mode + "'");
  for (int64_t a = 0; a < past.rank(); ++a)
    if (a == axis ? update.dim(a) > past.dim(a) : update.dim(a) != past.dim(a))
      return ctx.error("update " + update.description() + " does not fit past_cache " + past.description() +
                       " on axis " + std::to_string(axis));
  const int64_t batch = past.dim(0), max_seq = past.dim(axis), seq = update.dim(axis);
  std::vector<int64_t> write(static_cast<size_t>(batch), 0);
  if (ctx.has_input(2)) {
    KILN_ASSIGN_OR_RETURN(write, index_values(ctx, 2));
    if (static_cast<int64_t>(write.size()) != batch)
      return ctx.error("write_indices has " + std::to_string(write.size()) + " values for batch " + std::to_string(batch));
  }
  int64_t prefix = 1, inner = 1;
  for (int64_t a = 0; a < axis; ++a) prefix *= past.dim(a);
  for (int64_t a = axis + 1; a < past.rank(); ++a) inner *= past.dim(a);
  const int64_t per_batch = prefix / std::max<int64_t>(batch, 1);
  Tensor out = past.clone();
  for (int64_t p = 0; p < prefix; ++p) {
    const int64_t b = p / std::max<int64_t>(per_batch, 1);
    for (int64_t s = 0; s < seq; ++s) {
      int64_t dst = write[b] + s;
      if (mode == "circular") dst = ((dst % max_seq) + max_seq) % max_seq;
      if (dst < 0 || dst >= max_seq)
        return ctx.error("write index " + std::to_string(dst) + " is outside the cache length " + std::to_string(max_seq));
      mv::copy_block(update, (p * seq + s) * inner, out, (p * max_seq + dst) * inner, inner);
    }
  }
  ctx.set_output(0, out);
  return OkStatus();
}

Status one_hot_kernel(KernelContext& ctx) {
  const Tensor& ind = ctx.input(0);
  const Tensor& depth_t = ctx.input(1);
  const Tensor& values = ctx.input(2);
  if (depth_t.numel() != 1) return ctx.error("depth must hold one value, got " + depth_t.description());
  if (values.numel() != 2) return ctx.error("values must hold [off_value, on_value], got " + values.description());
  const double depth_d = depth_t.scalar_as_double(0);
  if (!(depth_d >= 1) || depth_d > static_cast<double>(mv::kMaxElements))
    return ctx.error("depth " + std::to_string(depth_d) + " is out of range");
  const int64_t depth = static_cast<int64_t>(depth_d);
  const int64_t out_rank = ind.rank() + 1;
  int64_t axis = ctx.attr_int("axis", -1);
  if (axis < -out_rank || axis >= out_rank)
    return ctx.error("axis " + std::to_string(axis) + " is out of range for output rank " + std::to_string(out_rank));
  if (axis < 0) axis += out_rank;
  Shape out_shape = ind.shape();
  out_shape.insert(out_shape.begin() + axis, depth);
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, out_shape));
  int64_t outer = 1, inner = 1;
  for (int64_t a = 0; a < axis; ++a) outer *= ind.dim(a);
  for (int64_t a = axis; a < ind.rank(); ++a) inner *= ind.dim(a);
  Tensor out(values.dtype(), out_shape);
  for (int64_t i = 0; i < out.numel(); ++i) copy_element(values, 0, out, i);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < inner; ++j) {
      // Indices may be float: they are truncated; ones outside [-depth, depth) give an all-off row.
      int64_t v = static_cast<int64_t>(std::trunc(ind.scalar_as_double(o * inner + j)));
      if (v < -depth || v >= depth) continue;
      if (v < 0) v += depth;
      copy_element(values, 1, out, (o * depth + v) * inner + j);
    }
  ctx.set_output(0, out);
  return OkStatus();
}

// True where element i of t is non-zero (for NonZero and Compress).
Result<std::vector<bool>> nonzero_mask(const KernelContext& ctx, const Tensor& t) {
  std::vector<bool> mask(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::kString) {
    for (int64_t i = 0; i < t.numel(); ++i) mask[i] = !t.strings()[i].empty();
    return mask;
  }
  Tensor w = widen_to_float32(t);
  bool ok = dispatch_numeric_or_bool(w.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < w.numel(); ++i) mask[i] = w.data<T>()[i] != T(0);
  });
  if (!ok) {
    // Sub-byte integer types are stored one per byte; zero is the zero byte.
    if (dtype_size(t.dtype()) != 1) return ctx.unsupported("cannot test " + t.description() + " for non-zero");
    for (int64_t i = 0; i < t.numel(); ++i) mask[i] = t.data<uint8_t>()[i] != 0;
  }
  return mask;
}

Status compress_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& cond = ctx.input(1);
  if (cond.rank() != 1) return ctx.error("condition must be 1-D, got " + cond.description());
  KILN_ASSIGN_OR_RETURN(std::vector<bool> keep, nonzero_mask(ctx, cond));
  Tensor src = x;
  int64_t axis = 0;
  if (ctx.has_attr("axis")) {
    if (x.rank() == 0) return ctx.error("axis given for a scalar input");
    KILN_ASSIGN_OR_RETURN(axis, mv::normalize_axis(ctx, ctx.attr_int("axis", 0), x.rank()));
  } else {
    src = x.reshaped({x.numel()});
  }
  const int64_t dim = src.rank() > 0 ? src.dim(axis) : 0;
  std::vector<int64_t> selected;
  for (int64_t i = 0; i < static_cast<int64_t>(keep.size()); ++i) {
    if (!keep[i]) continue;
    if (i >= dim)
      return ctx.error("condition selects index " + std::to_string(i) + " beyond dim " + std::to_string(dim));
    selected.push_back(i);
  }
  int64_t outer = 1, inner = 1;
  for (int64_t a = 0; a < axis; ++a) outer *= src.dim(a);
  for (int64_t a = axis + 1; a < src.rank(); ++a) inner *= src.dim(a);
  Shape out_shape = src.shape();
  out_shape[axis] = static_cast<int64_t>(selected.size());
  Tensor out(x.dtype(), out_shape);
  const int64_t n = static_cast<int64_t>(selected.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < n; ++j)
      mv::copy_block(src, (o * dim + selected[j]) * inner, out, (o * n + j) * inner, inner);
  ctx.set_output(0, out);
  return OkStatus();
}

Status nonzero_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  KILN_ASSIGN_OR_RETURN(std::vector<bool> mask, nonzero_mask(ctx, x));
  int64_t count = std::count(mask.begin(), mask.end(), true);
  // A scalar is treated as a 1-element vector (as numpy's nonzero does on 0-d arrays).
  const Shape shape = x.rank() == 0 ? Shape{1} : x.shape();
  const int64_t rank = static_cast<int64_t>(shape.size());
  Tensor out(DType::kInt64, {rank, count});
  std::vector<int64_t> idx(shape.size(), 0);
  int64_t k = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (mask[i]) {
      for (int64_t a = 0; a < rank; ++a) out.data<int64_t>()[a * count + k] = idx[a];
      ++k;
    }
    mv::next_index(idx, shape);
  }
  ctx.set_output(0, out);
  return OkStatus();
}

}  // namespace

void register_indexing_ops(ir::OpRegistry& r) {
  r.add("Gather", 1, gather_kernel);
  r.add("GatherElements", 11, gather_elements_kernel);
  r.add("GatherND", 11, gather_nd_kernel);
  r.add("Scatter", 9, scatter_elements_kernel);
  r.add("ScatterElements", 11, scatter_elements_kernel);
  r.add("ScatterND", 11, scatter_nd_kernel);
  r.add("TensorScatter", 24, tensor_scatter_kernel);
  r.add("OneHot", 9, one_hot_kernel);
  ir::OpSchema nz;
  nz.op_type = "NonZero";
  nz.since_version = 9;
  nz.cpu_kernel = nonzero_kernel;
  nz.data_dependent_shape = true;
  r.add(nz);
  ir::OpSchema cs;
  cs.op_type = "Compress";
  cs.since_version = 9;
  cs.cpu_kernel = compress_kernel;
  cs.data_dependent_shape = true;
  r.add(cs);
}

}  // namespace kiln::cpu
