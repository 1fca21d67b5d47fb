#include "backends/cpu/kernel_util.h"

#include <cstring>

namespace kiln::cpu {

void copy_element(const Tensor& src, int64_t src_index, Tensor& dst, int64_t dst_index) {
  if (src.dtype() == DType::kString) {
    dst.strings()[dst_index] = src.strings()[src_index];
    return;
  }
  size_t n = dtype_size(src.dtype());
  std::memcpy(static_cast<char*>(dst.raw_data()) + dst_index * n,
              static_cast<const char*>(src.raw_data()) + src_index * n, n);
}

std::vector<int64_t> strides_of(const Shape& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (int64_t i = static_cast<int64_t>(shape.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

Result<Shape> broadcast_shapes(const Shape& a, const Shape& b) {
  size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da == db || db == 1) {
      out[i] = da;
    } else if (da == 1) {
      out[i] = db;
    } else {
      return InvalidArgument("shapes " + shape_to_string(a) + " and " + shape_to_string(b) +
                             " cannot be broadcast together");
    }
  }
  return out;
}

Result<Shape> broadcast_shapes(const std::vector<Shape>& shapes) {
  Shape out;
  for (const Shape& s : shapes) {
    KILN_ASSIGN_OR_RETURN(out, broadcast_shapes(out, s));
  }
  return out;
}

std::vector<int64_t> broadcast_index_map(const Shape& in_shape, const Shape& out_shape) {
  int64_t n = shape_numel(out_shape);
  std::vector<int64_t> map(static_cast<size_t>(n));
  size_t rank = out_shape.size();
  size_t offset = rank - in_shape.size();
  // Stride of each output axis in the input (0 where the input broadcasts).
  std::vector<int64_t> in_strides_full(rank, 0);
  std::vector<int64_t> in_strides = strides_of(in_shape);
  for (size_t i = 0; i < in_shape.size(); ++i)
    in_strides_full[i + offset] = in_shape[i] == 1 ? 0 : in_strides[i];
  std::vector<int64_t> idx(rank, 0);
  int64_t in_pos = 0;
  for (int64_t o = 0; o < n; ++o) {
    map[o] = in_pos;
    for (int64_t ax = static_cast<int64_t>(rank) - 1; ax >= 0; --ax) {
      if (++idx[ax] < out_shape[ax]) {
        in_pos += in_strides_full[ax];
        break;
      }
      in_pos -= in_strides_full[ax] * (idx[ax] - 1);
      idx[ax] = 0;
    }
  }
  return map;
}

Result<int64_t> normalize_axis(int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= std::max<int64_t>(rank, 1)) {
    return OutOfRange("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  }
  return axis < 0 ? axis + rank : axis;
}

}  // namespace kiln::cpu
