// kiln.Relayout's attributes, read and checked in one place for its CPU reference
// (backends/cpu/ops/relayout.cc), its CUDA layer (backends/cuda/relayout.cu) and its shape inference:
// Y = Pad(Cast(Transpose(X, perm), to), pads, constant 0), made by passes/fuse_relayout.cc from the Cast,
// Transpose and channel Pad that feed a channels-last stem convolution.
//   perm (INTS): a permutation of X's axes, identity when absent (not ONNX Transpose's reversal: the op is
//                the optimizer's, and an identity default lets a Cast + Pad chain leave it out).
//   to (INT):    an ONNX float dtype code (float32, float16, bfloat16, float64); X's dtype when absent.
//   pads (INTS): ONNX Pad's layout, the begins of Y's axes then their ends, none negative; zeros when absent.
// X is float32, float16, bfloat16 or float64 of rank 1 to 6 (the CUDA layer's index arithmetic has six slots).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/dtype.h"
#include "kiln/tensor.h"

namespace kiln {

inline constexpr int64_t kRelayoutMaxRank = 6;

struct RelayoutAttrs {
  std::vector<int64_t> perm;  // Y's axis i is X's axis perm[i]
  DType to = DType::kUndefined;
  std::vector<int64_t> pads;  // 2 * rank: begins, then ends
};

inline bool relayout_dtype_ok(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat64;
}

// Reads n's attributes for X of rank `rank` and dtype `from` into *out; "" when they are valid, else what is
// wrong (the caller names the node). A rank of -1 (not known yet) checks only what does not depend on it.
inline std::string read_relayout_attrs(const ir::Node& n, int64_t rank, DType from, RelayoutAttrs* out) {
  using Type = ir::Attribute::Type;
  const ir::Attribute* perm = n.attr("perm");
  const ir::Attribute* to = n.attr("to");
  const ir::Attribute* pads = n.attr("pads");
  if (perm != nullptr && perm->type != Type::kInts) return "attribute perm must be a list of ints";
  if (to != nullptr && to->type != Type::kInt) return "attribute to must be an int (an ONNX dtype)";
  if (pads != nullptr && pads->type != Type::kInts) return "attribute pads must be a list of ints";
  if (!relayout_dtype_ok(from)) return "X must be float32, float16, bfloat16 or float64, got " + dtype_name(from);
  out->to = from;
  if (to != nullptr) {
    if (to->i < 0 || to->i > 1000 || !dtype_is_valid(static_cast<int32_t>(to->i)) ||
        !relayout_dtype_ok(static_cast<DType>(to->i)))
      return "attribute to must be float32 (1), float16 (10), bfloat16 (16) or float64 (11), got " +
             std::to_string(to->i);
    out->to = static_cast<DType>(to->i);
  }
  if (rank < 0) return "";
  if (rank < 1 || rank > kRelayoutMaxRank)
    return "X must have rank 1 to " + std::to_string(kRelayoutMaxRank) + ", got rank " + std::to_string(rank);
  out->perm.clear();
  if (perm == nullptr) {
    for (int64_t i = 0; i < rank; ++i) out->perm.push_back(i);
  } else {
    std::vector<bool> seen(static_cast<size_t>(rank), false);
    bool ok = static_cast<int64_t>(perm->ints.size()) == rank;
    for (size_t i = 0; ok && i < perm->ints.size(); ++i) {
      const int64_t p = perm->ints[i];
      ok = p >= 0 && p < rank && !seen[static_cast<size_t>(p)];
      if (ok) seen[static_cast<size_t>(p)] = true;
    }
    if (!ok) return "perm " + shape_to_string(perm->ints) + " is not a permutation of the " + std::to_string(rank) + " axes of X";
    out->perm = perm->ints;
  }
  out->pads.assign(static_cast<size_t>(2 * rank), 0);
  if (pads != nullptr) {
    bool ok = static_cast<int64_t>(pads->ints.size()) == 2 * rank;
    for (size_t i = 0; ok && i < pads->ints.size(); ++i) ok = pads->ints[i] >= 0 && pads->ints[i] <= (int64_t{1} << 40);
    if (!ok)
      return "pads " + shape_to_string(pads->ints) + " must be 2 * " + std::to_string(rank) +
             " values, none negative (nor absurdly large)";
    out->pads = pads->ints;
  }
  return "";
}

// Y's dims from X's: X's dim perm[i] plus both pads of axis i. A negative (unknown) dim stays unknown.
inline Shape relayout_shape(const Shape& x, const RelayoutAttrs& a) {
  const size_t rank = a.perm.size();
  Shape y(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t d = x[static_cast<size_t>(a.perm[i])];
    y[i] = d < 0 ? -1 : d + a.pads[i] + a.pads[rank + i];
  }
  return y;
}

// The same for symbolic dims (shape inference): a padded unknown dim becomes unknown.
inline std::vector<ir::Dim> relayout_dims(const std::vector<ir::Dim>& x, const RelayoutAttrs& a) {
  const size_t rank = a.perm.size();
  std::vector<ir::Dim> y;
  for (size_t i = 0; i < rank; ++i) {
    const ir::Dim& d = x[static_cast<size_t>(a.perm[i])];
    const int64_t pad = a.pads[i] + a.pads[rank + i];
    y.push_back(pad == 0 ? d : d.known() ? ir::Dim::of(d.value + pad) : ir::Dim());
  }
  return y;
}

}  // namespace kiln
