// CUDA layers: Concat, Split, Slice, Gather, GatherElements, Range. Elements are copied by size (every
// dtype); where the contiguous runs allow it the copies widen to 16-byte accesses, chosen per run from the
// pointers' alignment among variants prepared at create time.
//
// Concat and Split see the big tensor as [outer, row] and each piece as [outer, row_i]: one launch per 64
// pieces, the piece pointers passed by value in the kernel's parameters (they change from run to run, so a
// device table would need a copy per run). Out-of-range Gather indices, which the CPU reference reports
// as an error, cannot be reported from a kernel: they read as zeros, never outside the tensor.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/data_movement.cuh"
#include "backends/cuda/layer.h"
#include "core/slice_range.h"

namespace kiln::cuda {
namespace {

using mv::FastDiv;
using mv::kMax32;
using mv::kThreads;

std::vector<int64_t> row_major_strides(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int64_t k = static_cast<int64_t>(s.size()) - 2; k >= 0; --k) st[k] = st[k + 1] * s[k + 1];
  return st;
}

int64_t prod(const Shape& s, size_t from, size_t to) {
  int64_t p = 1;
  for (size_t k = from; k < to && k < s.size(); ++k) p *= s[k];
  return p;
}

const TensorDesc* input_desc(const LayerSpec& spec, size_t i) {
  return i < spec.inputs.size() && spec.inputs[i].present() ? &spec.inputs[i] : nullptr;
}

std::string check_data(const LayerSpec& spec, const std::string& op) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return "CUDA " + op + ": missing input 0";
  return mv::movable_dtype(op, spec.inputs[0].dtype);
}

// "" when axis is within [-rank, rank) (or the rank is not known yet).
std::string check_axis(const TensorDesc& d, int64_t axis, const std::string& op) {
  if (!d.has_rank) return "";
  const int64_t r = static_cast<int64_t>(d.shape.size());
  if (r == 0) return "CUDA " + op + ": the input must have rank >= 1";
  if (axis < -r || axis >= r)
    return "CUDA " + op + ": axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(r);
  return "";
}

std::string check_indices(const LayerSpec& spec, const std::string& op) {
  const TensorDesc* ind = input_desc(spec, 1);
  if (ind == nullptr) return "CUDA " + op + ": missing the indices input";
  if (ind->dtype != DType::kUndefined && ind->dtype != DType::kInt32 && ind->dtype != DType::kInt64)
    return "CUDA " + op + ": indices must be int32 or int64, got " + dtype_name(ind->dtype);
  return "";
}

LayerKind kind_of(const std::string& op, const std::string& tactic, std::function<std::string(const LayerSpec&)> check,
                  std::function<Result<std::unique_ptr<Layer>>(const LayerSpec&, const std::string&, const CudaHandles&)> create) {
  LayerKind k;
  k.op_type = op;
  k.lowers_to_fp16 = true;
  k.check = std::move(check);
  k.tactics = [tactic](const LayerSpec&) { return std::vector<std::string>{tactic}; };
  k.create = std::move(create);
  return k;
}

// The widening factors (unit bytes) worth trying for elements of es bytes, widest first.
std::vector<size_t> units_for(size_t es) {
  std::vector<size_t> u;
  for (size_t v : {size_t{16}, size_t{8}, size_t{4}, size_t{2}})
    if (v > es && v % es == 0) u.push_back(v);
  u.push_back(es);
  return u;
}

// ---------------------------------------------------------------------------------------------------------
// Concat and Split

constexpr int kMaxPieces = 64;

struct Pieces {
  char* ptr[kMaxPieces];
  int64_t begin[kMaxPieces];  // first column of piece i in this launch's columns (units)
  int64_t row[kMaxPieces];    // piece i's row length (units)
  int count = 0;
  int64_t big_row = 0;  // the big tensor's row length (units)
  int64_t col0 = 0;     // first big-tensor column of this launch
  int64_t width = 0;    // columns this launch covers
  int64_t n = 0;        // outer * width
  FastDiv div_width;
  bool idx32 = false;
};

// kSplit: big -> pieces; otherwise pieces -> big.
template <class T, bool kSplit>
__global__ void __launch_bounds__(kThreads) pieces_kernel(T* big, const __grid_constant__ Pieces p) {
  for (int64_t o = mv::global_thread(); o < p.n; o += mv::grid_threads()) {
    int64_t r, c;
    if (p.idx32) {
      const uint32_t q = p.div_width.div(static_cast<uint32_t>(o));
      r = q;
      c = o - static_cast<int64_t>(q) * p.width;
    } else {
      r = o / p.width;
      c = o - r * p.width;
    }
    int lo = 0, hi = p.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (p.begin[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    T* piece = reinterpret_cast<T*>(p.ptr[lo]);
    const int64_t po = r * p.row[lo] + (c - p.begin[lo]);
    const int64_t bo = r * p.big_row + p.col0 + c;
    if constexpr (kSplit) {
      if (piece != nullptr) piece[po] = big[bo];
    } else {
      big[bo] = piece[po];
    }
  }
}

class PiecesLayer final : public Layer {
 public:
  // rows: each piece's row length in elements (0: nothing to copy); big_row: the big tensor's.
  static Result<std::unique_ptr<Layer>> make(bool split, DType dtype, int64_t outer, const std::vector<int64_t>& rows,
                                             int64_t big_row) {
    std::unique_ptr<PiecesLayer> l(new PiecesLayer());
    l->split_ = split;
    l->elem_ = dtype_size(dtype);
    if (outer == 0 || big_row == 0) return std::unique_ptr<Layer>(std::move(l));
    for (size_t unit : units_for(l->elem_)) {
      const int64_t f = static_cast<int64_t>(unit / l->elem_);
      bool ok = big_row % f == 0;
      for (int64_t r : rows) ok = ok && r % f == 0;
      if (!ok) continue;
      Variant v;
      v.unit = unit;
      const bool idx32 = outer * big_row < kMax32;
      int64_t col = 0;
      Group g;
      auto flush = [&] {
        if (g.p.count == 0) return;
        g.p.width = col - g.p.col0;
        g.p.n = outer * g.p.width;
        g.p.div_width = FastDiv(static_cast<uint32_t>(idx32 ? g.p.width : 1));
        g.p.idx32 = idx32;
        v.groups.push_back(g);
        g = Group();
        g.p.col0 = col;
      };
      g.p.big_row = big_row / f;
      for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i] == 0) continue;
        if (g.p.count == kMaxPieces) {
          flush();
          g.p.big_row = big_row / f;
        }
        g.p.ptr[g.p.count] = nullptr;
        g.p.begin[g.p.count] = col - g.p.col0;
        g.p.row[g.p.count] = rows[i] / f;
        g.which[g.p.count] = static_cast<int>(i);
        ++g.p.count;
        col += rows[i] / f;
      }
      flush();
      l->variants_.push_back(std::move(v));
    }
    return std::unique_ptr<Layer>(std::move(l));
  }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    if (variants_.empty()) return OkStatus();
    const std::vector<DeviceTensor>& pieces = split_ ? outputs : inputs;
    void* big = split_ ? inputs[0].data : outputs[0].data;
    size_t align = mv::pointer_alignment(big);
    for (const Group& g : variants_.front().groups)  // every variant lists the same pieces
      for (int i = 0; i < g.p.count; ++i)
        if (pieces[g.which[i]].data != nullptr) align = std::min(align, mv::pointer_alignment(pieces[g.which[i]].data));
    const Variant* chosen = &variants_.back();
    for (const Variant& v : variants_)
      if (align % v.unit == 0) {
        chosen = &v;
        break;
      }
    for (const Group& g : chosen->groups) {
      Pieces p = g.p;
      for (int i = 0; i < p.count; ++i) p.ptr[i] = static_cast<char*>(pieces[g.which[i]].data);
      dispatch_unit_launch(chosen->unit, big, p, h.stream);
    }
    return launch_status(split_ ? "Split pieces_kernel" : "Concat pieces_kernel");
  }

 private:
  struct Group {
    Pieces p;
    int which[kMaxPieces];  // the node input / output of each piece
  };
  struct Variant {
    size_t unit = 0;
    std::vector<Group> groups;
  };

  void dispatch_unit_launch(size_t unit, void* big, const Pieces& p, cudaStream_t s) const {
    mv::dispatch_unit(unit, [&](auto tag) {
      using T = typename decltype(tag)::type;
      if (split_) pieces_kernel<T, true><<<mv::grid_for(p.n), kThreads, 0, s>>>(static_cast<T*>(big), p);
      else pieces_kernel<T, false><<<mv::grid_for(p.n), kThreads, 0, s>>>(static_cast<T*>(big), p);
    });
  }

  bool split_ = false;
  size_t elem_ = 0;
  std::vector<Variant> variants_;  // widest unit first
};

std::string check_concat(const LayerSpec& spec) {
  if (!spec.has_attr("axis")) return "CUDA Concat: missing the axis attribute";
  const TensorDesc* first = nullptr;
  for (const TensorDesc& d : spec.inputs) {
    if (!d.present()) continue;
    if (std::string why = mv::movable_dtype("Concat", d.dtype); !why.empty()) return why;
    if (first == nullptr) first = &d;
    else if (d.dtype != DType::kUndefined && first->dtype != DType::kUndefined && d.dtype != first->dtype)
      return "CUDA Concat: inputs of different dtypes (" + dtype_name(first->dtype) + ", " + dtype_name(d.dtype) + ")";
  }
  if (first == nullptr) return "CUDA Concat: no inputs";
  return check_axis(*first, spec.attr_int("axis", 0), "Concat");
}

Result<std::unique_ptr<Layer>> create_concat(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& out = spec.outputs[0].shape;
  const int64_t rank = static_cast<int64_t>(out.size());
  int64_t axis = spec.attr_int("axis", 0);
  if (rank == 0 || axis < -rank || axis >= rank) return InvalidArgument("CUDA Concat: axis out of range");
  if (axis < 0) axis += rank;
  const int64_t inner = prod(out, axis + 1, out.size());
  std::vector<int64_t> rows;
  int64_t total = 0;
  DType dtype = spec.outputs[0].dtype;
  for (const TensorDesc& d : spec.inputs) {
    if (!d.present()) {
      rows.push_back(0);
      continue;
    }
    dtype = d.dtype;
    if (static_cast<int64_t>(d.shape.size()) != rank)
      return InvalidArgument("CUDA Concat: input " + shape_to_string(d.shape) + " does not match output " + shape_to_string(out));
    rows.push_back(d.shape[axis] * inner);
    total += d.shape[axis];
  }
  if (total != out[axis])
    return InvalidArgument("CUDA Concat: inputs along axis sum to " + std::to_string(total) + ", output has " +
                           std::to_string(out[axis]));
  if (std::string why = mv::movable_dtype("Concat", dtype); !why.empty()) return Unsupported(why);
  return PiecesLayer::make(false, dtype, prod(out, 0, axis), rows, out[axis] * inner);
}

std::string check_split(const LayerSpec& spec) {
  if (std::string why = check_data(spec, "Split"); !why.empty()) return why;
  return check_axis(spec.inputs[0], spec.attr_int("axis", 0), "Split");
}

// The sizes of the parts: from the outputs' shapes (concrete at create time, whatever gave them: the split
// attribute, a split input constant or not, num_outputs); the reference's rules fill in omitted outputs.
Result<std::unique_ptr<Layer>> create_split(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& in = spec.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(in.size());
  int64_t axis = spec.attr_int("axis", 0);
  if (rank == 0 || axis < -rank || axis >= rank) return InvalidArgument("CUDA Split: axis out of range");
  if (axis < 0) axis += rank;
  const int64_t dim = in[axis];
  const size_t n_out = spec.outputs.size();
  std::vector<int64_t> sizes(n_out, -1);
  bool all = true;
  for (size_t i = 0; i < n_out; ++i) {
    const TensorDesc& o = spec.outputs[i];
    if (o.present() && static_cast<int64_t>(o.shape.size()) == rank) sizes[i] = o.shape[axis];
    else all = false;
  }
  if (!all) {
    std::vector<int64_t> split;
    if (!spec.constant_ints(1, &split) && spec.has_attr("split")) split = spec.attr_ints("split");
    if (split.empty() && spec.has_attr("num_outputs")) {
      const int64_t n = spec.attr_int("num_outputs", 0);
      const int64_t chunk = n > 0 ? (dim + n - 1) / n : 0;
      for (int64_t i = 0, left = dim; i < n; ++i) {
        split.push_back(std::min(chunk, left));
        left -= split.back();
      }
    } else if (split.empty() && n_out > 0 && dim % static_cast<int64_t>(n_out) == 0) {
      split.assign(n_out, dim / static_cast<int64_t>(n_out));
    }
    if (split.size() != n_out) return InvalidArgument("CUDA Split: cannot tell the sizes of omitted outputs");
    for (size_t i = 0; i < n_out; ++i)
      if (sizes[i] < 0) sizes[i] = split[i];
  }
  const int64_t inner = prod(in, axis + 1, in.size());
  std::vector<int64_t> rows;
  int64_t total = 0;
  for (int64_t s : sizes) {
    total += s;
    rows.push_back(s * inner);
  }
  if (total != dim)
    return InvalidArgument("CUDA Split: the parts sum to " + std::to_string(total) + ", the axis has " + std::to_string(dim));
  if (std::string why = mv::movable_dtype("Split", spec.inputs[0].dtype); !why.empty()) return Unsupported(why);
  return PiecesLayer::make(true, spec.inputs[0].dtype, prod(in, 0, axis), rows, dim * inner);
}

// ---------------------------------------------------------------------------------------------------------
// Slice: a strided gather (StridedCopy, shape_ops.cu); contiguous slices become one device-to-device copy.

class SliceLayer final : public Layer {
 public:
  explicit SliceLayer(mv::StridedCopy copy) : copy_(std::move(copy)) {}
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    return copy_.run(inputs[0].data, outputs[0].data, h.stream);
  }

 private:
  mv::StridedCopy copy_;
};

bool slice_uses_attributes(const LayerSpec& spec) { return spec.opset < 10 || input_desc(spec, 1) == nullptr; }

std::string check_slice(const LayerSpec& spec) {
  if (std::string why = check_data(spec, "Slice"); !why.empty()) return why;
  const TensorDesc& x = spec.inputs[0];
  if (x.has_rank && static_cast<int>(x.shape.size()) > mv::kMaxDims)
    return "CUDA Slice: rank " + std::to_string(x.shape.size()) + " is above the supported " + std::to_string(mv::kMaxDims);
  if (slice_uses_attributes(spec)) {
    if (!spec.has_attr("starts") || !spec.has_attr("ends")) return "CUDA Slice: missing starts or ends";
    return "";
  }
  const char* names[] = {"", "starts", "ends", "axes", "steps"};
  for (size_t i = 1; i <= 4; ++i) {
    const TensorDesc* d = input_desc(spec, i);
    if (d == nullptr) {
      if (i == 2) return "CUDA Slice: missing the ends input";
      continue;
    }
    if (d->constant == nullptr) return std::string("CUDA Slice: ") + names[i] + " must be a constant input";
    if (d->constant->dtype() != DType::kInt32 && d->constant->dtype() != DType::kInt64)
      return std::string("CUDA Slice: ") + names[i] + " must be int32 or int64";
  }
  return "";
}

Result<std::unique_ptr<Layer>> create_slice(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& in = spec.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(in.size());
  std::vector<int64_t> starts, ends, axes, steps;
  if (slice_uses_attributes(spec)) {
    starts = spec.attr_ints("starts");
    ends = spec.attr_ints("ends");
    axes = spec.attr_ints("axes");
  } else {
    if (!spec.constant_ints(1, &starts) || !spec.constant_ints(2, &ends))
      return Unsupported("CUDA Slice: starts and ends must be constant inputs");
    if (input_desc(spec, 3) != nullptr && !spec.constant_ints(3, &axes))
      return Unsupported("CUDA Slice: axes must be a constant input");
    if (input_desc(spec, 4) != nullptr && !spec.constant_ints(4, &steps))
      return Unsupported("CUDA Slice: steps must be a constant input");
  }
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    return InvalidArgument("CUDA Slice: starts, ends, axes and steps must have the same length");
  std::vector<int64_t> begin(static_cast<size_t>(rank), 0), step(static_cast<size_t>(rank), 1);
  Shape out = in;
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  for (size_t i = 0; i < axes.size(); ++i) {
    int64_t a = axes[i];
    if (a < -rank || a >= rank) return InvalidArgument("CUDA Slice: axis " + std::to_string(a) + " is out of range");
    if (a < 0) a += rank;
    if (seen[a]) return InvalidArgument("CUDA Slice: axis " + std::to_string(a) + " is repeated");
    seen[a] = true;
    const int64_t dim = in[a], s = steps[i];
    if (s == 0) return InvalidArgument("CUDA Slice: steps must not be 0");
    int64_t st = starts[i], en = ends[i];
    const int64_t len = slice_range(dim, s, &st, &en);  // as the CPU reference does
    out[a] = len;
    begin[a] = st;
    // A step past the dim only ever takes one element; clamping keeps stride * step far from overflow.
    step[a] = len <= 1 ? 1 : s;
  }
  if (!spec.outputs.empty() && spec.outputs[0].has_rank && spec.outputs[0].shape != out)
    return InvalidArgument("CUDA Slice: computed output " + shape_to_string(out) + " differs from " +
                           shape_to_string(spec.outputs[0].shape));
  const std::vector<int64_t> st = row_major_strides(in);
  mv::Strided plan;
  for (int64_t k = 0; k < rank; ++k) {
    plan.dims.push_back(out[k]);
    plan.strides.push_back(st[k] * step[k]);
    plan.mods.push_back(0);
    if (out[k] > 0) plan.base += begin[k] * st[k];
  }
  if (std::string why = mv::movable_dtype("Slice", spec.inputs[0].dtype); !why.empty()) return Unsupported(why);
  mv::StridedCopy copy;
  KILN_RETURN_IF_ERROR(copy.init(std::move(plan), dtype_size(spec.inputs[0].dtype), shape_numel(in), false));
  return std::unique_ptr<Layer>(new SliceLayer(std::move(copy)));
}

// ---------------------------------------------------------------------------------------------------------
// Gather: data [outer, dim, inner], indices [n_idx] -> out [outer, n_idx, inner]; inner rows are copied in
// the widest unit they allow (an embedding lookup copies whole rows).

struct GatherParams {
  int64_t n = 0;  // output units
  int64_t inner = 0, n_idx = 0, dim = 0;
  FastDiv div_inner, div_nidx;
};

template <class T, class I, bool k32>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const T* __restrict__ data, const I* __restrict__ idx, T* __restrict__ out, const __grid_constant__ GatherParams p) {
  for (int64_t o = mv::global_thread(); o < p.n; o += mv::grid_threads()) {
    int64_t r, i, q, j;
    if constexpr (k32) {
      const uint32_t rr = p.div_inner.div(static_cast<uint32_t>(o));
      i = o - static_cast<int64_t>(rr) * p.inner;
      const uint32_t qq = p.div_nidx.div(rr);
      j = rr - static_cast<int64_t>(qq) * p.n_idx;
      q = qq;
      r = rr;
    } else {
      r = o / p.inner;
      i = o - r * p.inner;
      q = r / p.n_idx;
      j = r - q * p.n_idx;
    }
    int64_t v = static_cast<int64_t>(idx[j]);
    if (v < 0) v += p.dim;
    out[o] = (v >= 0 && v < p.dim) ? data[(q * p.dim + v) * p.inner + i] : T{};
  }
}

class GatherLayer final : public Layer {
 public:
  struct Variant {
    size_t unit = 0;
    bool idx32 = false;
    GatherParams p;
  };
  GatherLayer(DType index_dtype, std::vector<Variant> v) : index_dtype_(index_dtype), variants_(std::move(v)) {}

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    if (variants_.empty()) return OkStatus();
    const size_t align = std::min(mv::pointer_alignment(inputs[0].data), mv::pointer_alignment(outputs[0].data));
    const Variant* v = &variants_.back();
    for (const Variant& c : variants_)
      if (align % c.unit == 0) {
        v = &c;
        break;
      }
    auto launch = [&](auto ttag, auto itag) {
      using T = typename decltype(ttag)::type;
      using I = typename decltype(itag)::type;
      const T* data = static_cast<const T*>(inputs[0].data);
      const I* idx = static_cast<const I*>(inputs[1].data);
      T* out = static_cast<T*>(outputs[0].data);
      if (v->idx32) gather_kernel<T, I, true><<<mv::grid_for(v->p.n), kThreads, 0, h.stream>>>(data, idx, out, v->p);
      else gather_kernel<T, I, false><<<mv::grid_for(v->p.n), kThreads, 0, h.stream>>>(data, idx, out, v->p);
    };
    mv::dispatch_unit(v->unit, [&](auto ttag) {
      if (index_dtype_ == DType::kInt32) launch(ttag, mv::Tag<int32_t>{});
      else launch(ttag, mv::Tag<int64_t>{});
    });
    return launch_status("gather_kernel");
  }

 private:
  DType index_dtype_;
  std::vector<Variant> variants_;  // widest unit first
};

std::string check_gather(const LayerSpec& spec) {
  if (std::string why = check_data(spec, "Gather"); !why.empty()) return why;
  if (std::string why = check_indices(spec, "Gather"); !why.empty()) return why;
  return check_axis(spec.inputs[0], spec.attr_int("axis", 0), "Gather");
}

Result<std::unique_ptr<Layer>> create_gather(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& data = spec.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(data.size());
  int64_t axis = spec.attr_int("axis", 0);
  if (rank == 0 || axis < -rank || axis >= rank) return InvalidArgument("CUDA Gather: axis out of range");
  if (axis < 0) axis += rank;
  if (std::string why = mv::movable_dtype("Gather", spec.inputs[0].dtype); !why.empty()) return Unsupported(why);
  const DType idt = spec.inputs[1].dtype;
  if (idt != DType::kInt32 && idt != DType::kInt64) return Unsupported("CUDA Gather: indices must be int32 or int64");
  const size_t es = dtype_size(spec.inputs[0].dtype);
  const int64_t outer = prod(data, 0, axis), dim = data[axis], inner = prod(data, axis + 1, data.size());
  const int64_t n_idx = shape_numel(spec.inputs[1].shape);
  std::vector<GatherLayer::Variant> variants;
  if (outer * n_idx * inner > 0) {
    for (size_t unit : units_for(es)) {
      const int64_t f = static_cast<int64_t>(unit / es);
      if (inner % f != 0) continue;
      GatherLayer::Variant v;
      v.unit = unit;
      v.p.inner = inner / f;
      v.p.n_idx = n_idx;
      v.p.dim = dim;
      v.p.n = outer * n_idx * v.p.inner;
      v.idx32 = outer * n_idx * inner < kMax32 && shape_numel(data) < kMax32;
      if (v.idx32) {
        v.p.div_inner = FastDiv(static_cast<uint32_t>(v.p.inner));
        v.p.div_nidx = FastDiv(static_cast<uint32_t>(n_idx));
      }
      variants.push_back(v);
    }
  }
  return std::unique_ptr<Layer>(new GatherLayer(idt, std::move(variants)));
}

// ---------------------------------------------------------------------------------------------------------
// GatherElements: out[c] = data[c with c[axis] = indices[c]]; the coordinates other than the axis go
// through the strided-gather calculator (axis stride 0), the axis term is added from the index.

template <class T, class I, class Calc, class Idx>
__global__ void __launch_bounds__(kThreads)
    gather_elements_kernel(const T* __restrict__ data, const I* __restrict__ idx, T* __restrict__ out, Idx n,
                           int64_t axis_dim, int64_t axis_stride, const __grid_constant__ Calc c) {
  for (Idx o = static_cast<Idx>(mv::global_thread()); o < n; o += static_cast<Idx>(mv::grid_threads())) {
    int64_t v = static_cast<int64_t>(idx[o]);
    if (v < 0) v += axis_dim;
    out[o] = (v >= 0 && v < axis_dim) ? data[static_cast<int64_t>(c.offset(o)) + v * axis_stride] : T{};
  }
}

class GatherElementsLayer final : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    if (n_ == 0) return OkStatus();
    auto launch = [&](auto ttag, auto itag) {
      using T = typename decltype(ttag)::type;
      using I = typename decltype(itag)::type;
      const T* data = static_cast<const T*>(inputs[0].data);
      const I* idx = static_cast<const I*>(inputs[1].data);
      T* out = static_cast<T*>(outputs[0].data);
      if (idx32_)
        gather_elements_kernel<T, I, mv::Calc32, uint32_t><<<mv::grid_for(n_), kThreads, 0, h.stream>>>(
            data, idx, out, static_cast<uint32_t>(n_), axis_dim_, axis_stride_, c32_);
      else
        gather_elements_kernel<T, I, mv::Calc64, int64_t><<<mv::grid_for(n_), kThreads, 0, h.stream>>>(
            data, idx, out, n_, axis_dim_, axis_stride_, c64_);
    };
    mv::dispatch_unit(elem_, [&](auto ttag) {
      if (index_dtype_ == DType::kInt32) launch(ttag, mv::Tag<int32_t>{});
      else launch(ttag, mv::Tag<int64_t>{});
    });
    return launch_status("gather_elements_kernel");
  }

  size_t elem_ = 0;
  DType index_dtype_ = DType::kInt64;
  int64_t n_ = 0, axis_dim_ = 0, axis_stride_ = 0;
  bool idx32_ = false;
  mv::Calc32 c32_;
  mv::Calc64 c64_;
};

std::string check_gather_elements(const LayerSpec& spec) {
  if (std::string why = check_data(spec, "GatherElements"); !why.empty()) return why;
  if (std::string why = check_indices(spec, "GatherElements"); !why.empty()) return why;
  const TensorDesc& x = spec.inputs[0];
  const TensorDesc& ind = spec.inputs[1];
  if (x.has_rank && static_cast<int>(x.shape.size()) > mv::kMaxDims)
    return "CUDA GatherElements: rank " + std::to_string(x.shape.size()) + " is above the supported " +
           std::to_string(mv::kMaxDims);
  if (x.has_rank && ind.has_rank && x.shape.size() != ind.shape.size())
    return "CUDA GatherElements: indices must have the rank of data";
  return check_axis(x, spec.attr_int("axis", 0), "GatherElements");
}

Result<std::unique_ptr<Layer>> create_gather_elements(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& data = spec.inputs[0].shape;
  const Shape& ishape = spec.inputs[1].shape;
  const int64_t rank = static_cast<int64_t>(data.size());
  int64_t axis = spec.attr_int("axis", 0);
  if (rank == 0 || axis < -rank || axis >= rank) return InvalidArgument("CUDA GatherElements: axis out of range");
  if (axis < 0) axis += rank;
  if (static_cast<int64_t>(ishape.size()) != rank) return InvalidArgument("CUDA GatherElements: indices must have the rank of data");
  for (int64_t a = 0; a < rank; ++a)
    if (a != axis && ishape[a] > data[a])
      return InvalidArgument("CUDA GatherElements: indices " + shape_to_string(ishape) + " do not fit data " + shape_to_string(data));
  if (std::string why = mv::movable_dtype("GatherElements", spec.inputs[0].dtype); !why.empty()) return Unsupported(why);
  const DType idt = spec.inputs[1].dtype;
  if (idt != DType::kInt32 && idt != DType::kInt64) return Unsupported("CUDA GatherElements: indices must be int32 or int64");
  const std::vector<int64_t> st = row_major_strides(data);
  mv::Strided plan;
  for (int64_t a = 0; a < rank; ++a) {
    plan.dims.push_back(ishape[a]);
    plan.strides.push_back(a == axis ? 0 : st[a]);
    plan.mods.push_back(0);
  }
  std::unique_ptr<GatherElementsLayer> l(new GatherElementsLayer());
  l->elem_ = dtype_size(spec.inputs[0].dtype);
  l->index_dtype_ = idt;
  l->n_ = shape_numel(ishape);
  l->axis_dim_ = data[axis];
  l->axis_stride_ = st[axis];
  l->idx32_ = l->n_ < kMax32 && shape_numel(data) < kMax32;
  if (l->n_ > 0) {
    mv::simplify(&plan);
    if (!mv::make_calc32(plan, &l->c32_) || !mv::make_calc64(plan, &l->c64_))
      return Unsupported("CUDA GatherElements: too many dims");
  }
  return std::unique_ptr<Layer>(std::move(l));
}

// ---------------------------------------------------------------------------------------------------------
// Range: out[i] = start + i * delta, computed as the CPU reference does (float32 for float32, float16 and
// bfloat16, float64 for float64, int64 for integers), with no fused multiply-add so the rounding matches.

template <class T>
struct RangeCompute {
  using type = std::conditional_t<std::is_same_v<T, double>, double,
                                  std::conditional_t<std::is_integral_v<T>, int64_t, float>>;
};

template <class C, class T>
__device__ __forceinline__ C range_load(const T* p) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(*p);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(*p);
  else return static_cast<C>(*p);
}

template <class T, class C>
__device__ __forceinline__ T range_value(C start, C delta, int64_t i) {
  if constexpr (std::is_same_v<C, float>) {
    const float v = __fadd_rn(start, __fmul_rn(static_cast<float>(i), delta));
    if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
    else return v;
  } else if constexpr (std::is_same_v<C, double>) {
    return __dadd_rn(start, __dmul_rn(static_cast<double>(i), delta));
  } else {
    return static_cast<T>(static_cast<int64_t>(static_cast<uint64_t>(start) + static_cast<uint64_t>(i) * static_cast<uint64_t>(delta)));
  }
}

// dstart / ddelta: device scalars to read when the bounds are not constants (nullptr otherwise).
template <class T, class C>
__global__ void __launch_bounds__(kThreads)
    range_kernel(T* __restrict__ out, int64_t n, C start, C delta, const T* dstart, const T* ddelta) {
  if (dstart != nullptr) {
    start = range_load<C>(dstart);
    delta = range_load<C>(ddelta);
  }
  for (int64_t i = mv::global_thread(); i < n; i += mv::grid_threads()) out[i] = range_value<T, C>(start, delta, i);
}

template <class F>
bool dispatch_range(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: f(mv::Tag<float>{}); return true;
    case DType::kFloat64: f(mv::Tag<double>{}); return true;
    case DType::kFloat16: f(mv::Tag<__half>{}); return true;
    case DType::kBFloat16: f(mv::Tag<__nv_bfloat16>{}); return true;
    case DType::kInt16: f(mv::Tag<int16_t>{}); return true;
    case DType::kInt32: f(mv::Tag<int32_t>{}); return true;
    case DType::kInt64: f(mv::Tag<int64_t>{}); return true;
    default: return false;
  }
}

class RangeLayer final : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    if (n_ == 0) return OkStatus();
    dispatch_range(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = typename RangeCompute<T>::type;
      C start, delta;
      if constexpr (std::is_same_v<C, int64_t>) {
        start = istart_;
        delta = idelta_;
      } else {
        start = static_cast<C>(fstart_);
        delta = static_cast<C>(fdelta_);
      }
      const T* ds = on_device_ ? static_cast<const T*>(inputs[0].data) : nullptr;
      const T* dd = on_device_ ? static_cast<const T*>(inputs[2].data) : nullptr;
      range_kernel<T, C><<<mv::grid_for(n_), kThreads, 0, h.stream>>>(static_cast<T*>(outputs[0].data), n_, start,
                                                                      delta, ds, dd);
    });
    return launch_status("range_kernel");
  }

  DType dtype_ = DType::kFloat32;
  int64_t n_ = 0;
  bool on_device_ = false;
  double fstart_ = 0, fdelta_ = 0;  // float types (exact for float32/16 and float64 alike)
  int64_t istart_ = 0, idelta_ = 0;
};

std::string check_range(const LayerSpec& spec) {
  if (spec.inputs.size() < 3) return "CUDA Range: needs start, limit and delta";
  const DType t = spec.inputs[0].dtype;
  for (size_t i = 0; i < 3; ++i) {
    if (!spec.inputs[i].present()) return "CUDA Range: needs start, limit and delta";
    if (spec.inputs[i].dtype != t) return "CUDA Range: start, limit and delta must have one dtype";
  }
  if (t != DType::kUndefined && !dispatch_range(t, [](auto) {}))
    return "CUDA Range: dtype " + dtype_name(t) + " is not supported (float32, float64, float16, bfloat16, int16, int32, int64)";
  return "";
}

Result<std::unique_ptr<Layer>> create_range(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  if (std::string why = check_range(spec); !why.empty()) return Unsupported(why);
  const Shape& out = spec.outputs[0].shape;
  if (out.size() != 1) return InvalidArgument("CUDA Range: the output must be 1-D, got " + shape_to_string(out));
  std::unique_ptr<RangeLayer> l(new RangeLayer());
  l->dtype_ = spec.inputs[0].dtype;
  l->n_ = out[0];
  const Tensor* s = spec.inputs[0].constant;
  const Tensor* d = spec.inputs[2].constant;
  if (s != nullptr && d != nullptr && s->numel() == 1 && d->numel() == 1) {
    if (dtype_is_integer(l->dtype_)) {
      l->istart_ = s->scalar_as_int(0);
      l->idelta_ = d->scalar_as_int(0);
    } else {
      l->fstart_ = s->scalar_as_double(0);
      l->fdelta_ = d->scalar_as_double(0);
    }
  } else {
    l->on_device_ = true;
  }
  return std::unique_ptr<Layer>(std::move(l));
}

}  // namespace

void register_index_layers(LayerTable& table) {
  table.add(kind_of("Concat", "cuda.index.concat", check_concat, create_concat));
  table.add(kind_of("Split", "cuda.index.split", check_split, create_split));
  table.add(kind_of("Slice", "cuda.index.slice", check_slice, create_slice));
  table.add(kind_of("Gather", "cuda.index.gather", check_gather, create_gather));
  table.add(kind_of("GatherElements", "cuda.index.gather_elements", check_gather_elements, create_gather_elements));
  table.add(kind_of("Range", "cuda.index.range", check_range, create_range));
}

}  // namespace kiln::cuda
