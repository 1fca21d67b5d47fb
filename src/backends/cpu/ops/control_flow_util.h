// Helpers shared by the control-flow and sequence kernels (control_flow.cc, sequence.cc): moving whole
// blocks of elements between tensors of any dtype (strings included) to slice, stack and concatenate
// along an axis. They do not validate user data: callers check ranks, axes and shapes first.
#pragma once

#include <cstring>
#include <vector>

#include "kiln/tensor.h"

namespace kiln::cpu::cf {

// Copies `count` consecutive elements src[src_off...] to dst[dst_off...] (same dtype).
inline void copy_elements(const Tensor& src, int64_t src_off, Tensor& dst, int64_t dst_off, int64_t count) {
  if (count <= 0) return;
  if (src.dtype() == DType::kString) {
    for (int64_t i = 0; i < count; ++i) dst.strings()[dst_off + i] = src.strings()[src_off + i];
    return;
  }
  const size_t es = dtype_size(src.dtype());
  std::memcpy(static_cast<char*>(dst.raw_data()) + dst_off * es,
              static_cast<const char*>(src.raw_data()) + src_off * es, static_cast<size_t>(count) * es);
}

// Product of shape[begin, end).
inline int64_t dims_product(const Shape& s, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end && i < s.size(); ++i) p *= s[i];
  return p;
}

// The sub-tensor at `index` along `axis`, with that axis removed (axis in [0, rank), index in range).
inline Tensor take_along_axis(const Tensor& t, int64_t axis, int64_t index) {
  const Shape& s = t.shape();
  Shape out_shape = s;
  out_shape.erase(out_shape.begin() + axis);
  Tensor out(t.dtype(), out_shape);
  const int64_t outer = dims_product(s, 0, axis);
  const int64_t dim = s[axis];
  const int64_t inner = dims_product(s, axis + 1, s.size());
  for (int64_t o = 0; o < outer; ++o) copy_elements(t, (o * dim + index) * inner, out, o * inner, inner);
  return out;
}

// The elements [start, start + length) along `axis` (axis kept, with size `length`).
inline Tensor slice_along_axis(const Tensor& t, int64_t axis, int64_t start, int64_t length) {
  const Shape& s = t.shape();
  Shape out_shape = s;
  out_shape[axis] = length;
  Tensor out(t.dtype(), out_shape);
  const int64_t outer = dims_product(s, 0, axis);
  const int64_t dim = s[axis];
  const int64_t inner = dims_product(s, axis + 1, s.size());
  for (int64_t o = 0; o < outer; ++o)
    copy_elements(t, (o * dim + start) * inner, out, o * length * inner, length * inner);
  return out;
}

// Concatenates tensors of the same dtype and rank along `axis`. With `new_axis`, the tensors must have the
// same shape and are stacked along a new axis inserted at position `axis` (in [0, rank]). The caller has
// checked shapes; `items` is not empty.
inline Tensor concat_along_axis(const std::vector<Tensor>& items, int64_t axis, bool new_axis) {
  Shape base = items[0].shape();
  if (new_axis) base.insert(base.begin() + axis, 1);
  Shape out_shape = base;
  out_shape[axis] = 0;
  std::vector<int64_t> item_dims;
  for (const Tensor& t : items) {
    const int64_t d = new_axis ? 1 : t.shape()[axis];
    item_dims.push_back(d);
    out_shape[axis] += d;
  }
  Tensor out(items[0].dtype(), out_shape);
  const int64_t outer = dims_product(base, 0, axis);
  const int64_t inner = dims_product(base, axis + 1, base.size());
  int64_t dst = 0;
  for (int64_t o = 0; o < outer; ++o) {
    for (size_t k = 0; k < items.size(); ++k) {
      const int64_t block = item_dims[k] * inner;
      copy_elements(items[k], o * block, out, dst, block);
      dst += block;
    }
  }
  return out;
}

}  // namespace kiln::cpu::cf
