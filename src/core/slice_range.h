// ONNX Slice along one axis, as both the CPU reference and the CUDA layer compute it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln {

// Normalizes *start and *end for an axis of `dim` elements (negative counts from the end; clamped to
// [0, dim] for a positive step, [-1, dim - 1] for a negative one, as ONNX says) and returns how many
// elements the slice takes. `step` must not be 0. Written so that huge steps (INT64_MAX, INT64_MIN) cannot
// overflow.
inline int64_t slice_range(int64_t dim, int64_t step, int64_t* start, int64_t* end) {
  int64_t st = *start, en = *end;
  if (st < 0) st += dim;
  if (en < 0) en += dim;
  if (step > 0) {
    st = std::clamp<int64_t>(st, 0, dim);
    en = std::clamp<int64_t>(en, 0, dim);
  } else {
    st = std::clamp<int64_t>(st, -1, dim - 1);
    en = std::clamp<int64_t>(en, -1, dim - 1);
  }
  *start = st;
  *end = en;
  if (step > 0 && en > st) return 1 + (en - st - 1) / step;
  if (step < 0 && st > en) return 1 + (st - en - 1) / (step == INT64_MIN ? INT64_MAX : -step);
  return 0;
}

}  // namespace kiln
