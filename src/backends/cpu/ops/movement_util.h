// Helpers shared by the data-movement op families (shape_ops, movement, indexing, sort_scan, generator).
// Most of those ops only move elements: they compute, for each output element, which input element it is,
// and copy it. Copying by element size (or by string) makes them work for every dtype at once.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu::mv {

// Largest element count an op may allocate from values it reads (shape inputs, Range bounds, ...):
// a bad value then gives an error instead of an attempt to allocate terabytes.
inline constexpr int64_t kMaxElements = int64_t{1} << 32;

// Checks that a shape read from user data has non-negative dims and a sane element count.
inline Status check_output_shape(const KernelContext& ctx, const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return ctx.error("output shape " + shape_to_string(shape) + " has a negative dimension");
    if (d != 0 && n > kMaxElements / d) return ctx.error("output shape " + shape_to_string(shape) + " is too large");
    n *= d;
  }
  if (n > kMaxElements) return ctx.error("output shape " + shape_to_string(shape) + " is too large");
  return OkStatus();
}

// out[i] = src[index[i]] for every i (a negative index leaves out[i] zero / empty).
inline Tensor gather_elements_by_index(const Tensor& src, const Shape& out_shape, const std::vector<int64_t>& index) {
  Tensor out(src.dtype(), out_shape);
  const int64_t n = out.numel();
  if (src.dtype() == DType::kString) {
    for (int64_t i = 0; i < n; ++i)
      if (index[i] >= 0) out.strings()[i] = src.strings()[index[i]];
    return out;
  }
  dispatch_by_size(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* s = src.data<T>();
    T* d = out.data<T>();
    for (int64_t i = 0; i < n; ++i)
      if (index[i] >= 0) d[i] = s[index[i]];
  });
  return out;
}

// Copies `count` consecutive elements (same dtype).
inline void copy_block(const Tensor& src, int64_t src_offset, Tensor& dst, int64_t dst_offset, int64_t count) {
  if (count <= 0) return;
  if (src.dtype() == DType::kString) {
    for (int64_t i = 0; i < count; ++i) dst.strings()[dst_offset + i] = src.strings()[src_offset + i];
    return;
  }
  const size_t es = dtype_size(src.dtype());
  std::memcpy(static_cast<char*>(dst.raw_data()) + dst_offset * es,
              static_cast<const char*>(src.raw_data()) + src_offset * es, static_cast<size_t>(count) * es);
}

// Writes `piece` [..., Cp] into channels [offset, offset + Cp) of `dst` [..., C], the last axis being the
// channels and the leading dims the same (one dtype): a channel Concat's pieces, kiln.WriteChannels.
inline void write_channels(Tensor& dst, const Tensor& piece, int64_t offset) {
  const int64_t c = dst.dim(dst.rank() - 1), cp = piece.dim(piece.rank() - 1);
  if (cp <= 0) return;
  const int64_t pixels = piece.numel() / cp;
  for (int64_t p = 0; p < pixels; ++p) copy_block(piece, p * cp, dst, p * c + offset, cp);
}

// Advances a multi-index over `shape` in row-major order; returns false after the last one.
inline bool next_index(std::vector<int64_t>& idx, const Shape& shape) {
  for (int64_t ax = static_cast<int64_t>(shape.size()) - 1; ax >= 0; --ax) {
    if (++idx[ax] < shape[ax]) return true;
    idx[ax] = 0;
  }
  return false;
}

// A one-element tensor of `dtype` holding `value` (via Cast semantics); for 1, 0 and fill values.
inline Result<Tensor> scalar_of(DType dtype, double value) {
  Tensor d = Tensor::scalar<double>(DType::kFloat64, value);
  return cast_tensor(d, dtype);
}

// Reads an integer-list input (axes, shape, pads, ...), checking that it is an integer tensor of rank <= 1.
inline Result<std::vector<int64_t>> int_list_input(const KernelContext& ctx, size_t i, const char* what) {
  const Tensor& t = ctx.input(i);
  if (!dtype_is_integer(t.dtype()))
    return ctx.error(std::string(what) + " must be an integer tensor, got " + t.description());
  if (t.rank() > 1) return ctx.error(std::string(what) + " must be a 1-D tensor, got " + t.description());
  return t.to_int64_vector();
}

// normalize_axis, with the error naming the node.
inline Result<int64_t> normalize_axis(const KernelContext& ctx, int64_t axis, int64_t rank) {
  Result<int64_t> r = cpu::normalize_axis(axis, rank);
  if (!r.ok()) return ctx.error(r.status().message());
  return r;
}

// Normalizes a list of axes for `rank`, rejecting out-of-range and repeated axes.
inline Result<std::vector<int64_t>> normalize_axes(const KernelContext& ctx, std::vector<int64_t> axes, int64_t rank) {
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  for (int64_t& a : axes) {
    if (a < -rank || a >= rank)
      return ctx.error("axis " + std::to_string(a) + " is out of range for rank " + std::to_string(rank));
    if (a < 0) a += rank;
    if (seen[a]) return ctx.error("axis " + std::to_string(a) + " is repeated");
    seen[a] = true;
  }
  return axes;
}

// Normalizes an index into a dimension of size `dim` (negative counts from the end); error when outside.
inline Status normalize_index(const KernelContext& ctx, int64_t& index, int64_t dim, const char* what) {
  if (index < -dim || index >= dim)
    return ctx.error(std::string(what) + " " + std::to_string(index) + " is out of range for a dimension of size " +
                     std::to_string(dim));
  if (index < 0) index += dim;
  return OkStatus();
}

}  // namespace kiln::cpu::mv
