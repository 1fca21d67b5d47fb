// CUDA layers: Reshape, Flatten, Squeeze, Unsqueeze, Identity and inference Dropout (views: no kernel),
// Transpose, Expand and Tile, plus the strided-gather machinery (StridedCopy, data_movement.cuh) that
// Slice in index_ops.cu shares. Every kernel copies elements by size, so every dtype works.
//
// Transpose takes one of three paths after dims are merged: a plain device-to-device copy when the perm
// only moves size-1 dims; a gather of contiguous runs, widened to 16-byte accesses, when the innermost dim
// stays innermost ([B,S,H,D] -> [B,H,S,D] in attention copies rows of D); and a shared-memory tile when the
// innermost dim moves, so that both reads and writes coalesce (64x64 with paired accesses for 2- and
// 4-byte elements, 128x128 with 4-byte accesses for 1-byte ones, 32x32 for 8-byte elements and where
// sizes or pointers do not allow the packed accesses).
// Expand of a size-1 innermost dim writes rows of one repeated element, 16 bytes per store.
#include <algorithm>
#include <string>
#include <vector>

#include "backends/cuda/data_movement.cuh"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace mv {

namespace {

int sm_count() {
  static const int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      n = 132;
    return n > 0 ? n : 132;
  }();
  return count;
}

constexpr int kTileThreadsX = 32;
constexpr int kTileThreadsY = 8;

template <class T>
__global__ void __launch_bounds__(kThreads) gather32_kernel(const T* __restrict__ in, T* __restrict__ out, uint32_t n,
                                                            const __grid_constant__ Calc32 c) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = in[c.offset(i)];
}

template <class T>
__global__ void __launch_bounds__(kThreads) gather64_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t n,
                                                            const __grid_constant__ Calc64 c) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[i] = in[c.offset(i)];
}

// Rows whose elements all come from one input element (Expand of a size-1 innermost dim): each thread
// writes a unit U of sizeof(U) / sizeof(T) copies; `rows` maps a row to its input element.
template <class T, class U>
__global__ void __launch_bounds__(kThreads) row_fill_kernel(const T* __restrict__ in, U* __restrict__ out, uint32_t n,
                                                            FastDiv units_per_row, const __grid_constant__ Calc32 rows) {
  constexpr int kCopies = sizeof(U) / sizeof(T);
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t u = blockIdx.x * blockDim.x + threadIdx.x; u < n; u += stride) {
    const T v = in[rows.offset(units_per_row.div(u))];
    U packed;
    T* p = reinterpret_cast<T*>(&packed);
#pragma unroll
    for (int k = 0; k < kCopies; ++k) p[k] = v;
    out[u] = packed;
  }
}

// Padding of a shared-memory row so that a column's elements fall in different banks (a row of
// TILE + PAD elements spans an odd number of 4-byte words).
template <class T>
__host__ __device__ constexpr int tile_pad() {
  return sizeof(T) >= 4 ? 1 : static_cast<int>(4 / sizeof(T));
}

template <size_t N>
struct UnitBytes;
template <> struct UnitBytes<1> { using type = uint8_t; };
template <> struct UnitBytes<2> { using type = uint16_t; };
template <> struct UnitBytes<4> { using type = uint32_t; };
template <> struct UnitBytes<8> { using type = uint2; };
template <> struct UnitBytes<16> { using type = uint4; };

// A tile of (32 * PACK)^2 elements; each lane reads and writes PACK neighbouring elements as one access,
// so that a warp moves 128 bytes (or more) per instruction on both sides. PACK > 1 needs the tile dims,
// strides and pointers to be multiples of PACK elements (TiledParams::pack says when).
template <class T, int PACK>
__global__ void __launch_bounds__(kTileThreadsX * kTileThreadsY)
    transpose_tiled_kernel(const T* __restrict__ in, T* __restrict__ out, const __grid_constant__ TiledParams p) {
  constexpr int TILE = kTileThreadsX * PACK;
  using V = typename UnitBytes<sizeof(T) * PACK>::type;
  __shared__ T tile[TILE][TILE + tile_pad<T>()];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t t = blockIdx.x; t < p.n_tiles; t += gridDim.x) {
    int64_t r = t / p.tiles_a;
    const int64_t a0 = (t - r * p.tiles_a) * TILE;
    const int64_t rj = r / p.tiles_j;
    const int64_t j0 = (r - rj * p.tiles_j) * TILE;
    int64_t b = rj, in_off = p.base, out_off = 0;
#pragma unroll
    for (int k = kMaxDims - 1; k >= 0; --k) {
      if (k < kMaxDims - p.nb) break;
      const int64_t q = b / p.bdim[k];
      const int64_t c = b - q * p.bdim[k];
      b = q;
      in_off += c * p.bin[k];
      out_off += c * p.bout[k];
    }
    const int rows = static_cast<int>(min(static_cast<int64_t>(TILE), p.A - a0));  // along a
    const int cols = static_cast<int>(min(static_cast<int64_t>(TILE), p.J - j0));  // along j
    const T* src = in + in_off + a0 * p.in_stride_a + j0;
    T* dst = out + out_off + j0 * p.out_stride_j + a0;
    const int c = tx * PACK;
    // Reads: lanes take consecutive j (input-contiguous).
#pragma unroll 4
    for (int k = ty; k < TILE; k += kTileThreadsY) {
      if (k < rows && c < cols) {
        const V v = *reinterpret_cast<const V*>(src + k * p.in_stride_a + c);
        const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
        for (int i = 0; i < PACK; ++i) tile[k][c + i] = e[i];
      }
    }
    __syncthreads();
    // Writes: lanes take consecutive a (output-contiguous).
#pragma unroll 4
    for (int k = ty; k < TILE; k += kTileThreadsY) {
      if (k < cols && c < rows) {
        V v;
        T* e = reinterpret_cast<T*>(&v);
#pragma unroll
        for (int i = 0; i < PACK; ++i) e[i] = tile[c + i][k];
        *reinterpret_cast<V*>(dst + k * p.out_stride_j + c) = v;
      }
    }
    __syncthreads();
  }
}

template <class T, int PACK>
void launch_tiled(const void* in, void* out, TiledParams p, cudaStream_t stream) {
  constexpr int tile = kTileThreadsX * PACK;
  p.tiles_j = (p.J + tile - 1) / tile;
  p.tiles_a = (p.A + tile - 1) / tile;
  p.n_tiles = p.tiles_j * p.tiles_a * p.batch;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(p.n_tiles, int64_t{sm_count()} * 32));
  transpose_tiled_kernel<T, PACK><<<grid, dim3(kTileThreadsX, kTileThreadsY), 0, stream>>>(
      static_cast<const T*>(in), static_cast<T*>(out), p);
}

}  // namespace

unsigned grid_for(int64_t items, int threads) {
  int64_t blocks = (items + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sm_count()) * 16;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

void simplify(Strided* s) {
  Strided out;
  out.base = s->base;
  for (size_t k = 0; k < s->dims.size(); ++k) {
    int64_t d = s->dims[k], st = s->strides[k], m = s->mods[k];
    if (m >= d) m = 0;  // never wraps
    if (m == 1) st = 0;
    if (st == 0) m = 0;
    if (d == 1) continue;  // coordinate always 0
    if (!out.dims.empty() && m == 0 && out.strides.back() == st * d) {
      // Outer dim continues this one linearly: (c_o mod m_o) * d + c_i == (c mod m_o * d) on the merged dim.
      out.dims.back() *= d;
      out.strides.back() = st;
      if (out.mods.back() != 0) out.mods.back() *= d;
      continue;
    }
    out.dims.push_back(d);
    out.strides.push_back(st);
    out.mods.push_back(m);
  }
  *s = std::move(out);
}

bool make_calc32(const Strided& s, Calc32* c) {
  const int rank = static_cast<int>(s.dims.size());
  if (rank > kMaxDims) return false;
  *c = Calc32();
  c->rank = rank;
  c->base = static_cast<int32_t>(s.base);
  for (int k = 0; k < rank; ++k) {
    const int slot = kMaxDims - rank + k;
    c->div[slot] = FastDiv(static_cast<uint32_t>(s.dims[k]));
    c->stride[slot] = static_cast<int32_t>(s.strides[k]);
    if (s.mods[k] != 0) {
      c->mod_mask |= 1u << slot;
      c->mod[slot] = FastDiv(static_cast<uint32_t>(s.mods[k]));
    }
  }
  return true;
}

bool make_calc64(const Strided& s, Calc64* c) {
  const int rank = static_cast<int>(s.dims.size());
  if (rank > kMaxDims) return false;
  *c = Calc64();
  c->rank = rank;
  c->base = s.base;
  for (int k = 0; k < rank; ++k) {
    const int slot = kMaxDims - rank + k;
    c->dim[slot] = s.dims[k];
    c->stride[slot] = s.strides[k];
    if (s.mods[k] != 0) {
      c->mod_mask |= 1u << slot;
      c->mod[slot] = s.mods[k];
    }
  }
  return true;
}

Status StridedCopy::init(Strided plan, size_t elem_bytes, int64_t in_numel, bool allow_tiled) {
  elem_ = elem_bytes;
  variants_.clear();
  fills_.clear();
  if (plan.mods.empty()) plan.mods.assign(plan.dims.size(), 0);
  const int64_t n = shape_numel(plan.dims);
  if (n == 0) {
    mode_ = Mode::kEmpty;
    return OkStatus();
  }
  simplify(&plan);
  const int rank = static_cast<int>(plan.dims.size());
  if (rank == 0 || (rank == 1 && plan.strides[0] == 1 && plan.mods[0] == 0)) {
    mode_ = Mode::kCopy;
    copy_offset_ = plan.base;
    copy_count_ = n;
    return OkStatus();
  }
  if (rank > kMaxDims)
    return Unsupported("the copy needs " + std::to_string(rank) + " dims after merging; at most " +
                       std::to_string(kMaxDims) + " are supported");

  // The tiled kernel pays off when the innermost dim moves and both tile dims fill a good part of a tile;
  // with a small one (NCHW -> NHWC at C = 3) the plain gather reads few enough distinct lines.
  const int last = rank - 1;
  int j = -1;
  bool positive = true;
  for (int k = 0; k < rank; ++k) {
    if (plan.strides[k] == 1 && plan.mods[k] == 0) j = k;
    if (plan.strides[k] <= 0 || plan.mods[k] != 0) positive = false;
  }
  if (allow_tiled && positive && j >= 0 && j != last && plan.dims[j] >= 16 && plan.dims[last] >= 16 &&
      elem_bytes <= 8) {
    TiledParams& t = tiled_;
    t = TiledParams();
    std::vector<int64_t> out_strides(rank, 1);
    for (int k = rank - 2; k >= 0; --k) out_strides[k] = out_strides[k + 1] * plan.dims[k + 1];
    std::vector<int> batch;
    for (int k = 0; k < rank; ++k)
      if (k != j && k != last) batch.push_back(k);
    t.nb = static_cast<int>(batch.size());
    for (int i = 0; i < t.nb; ++i) {
      const int slot = kMaxDims - t.nb + i;
      t.bdim[slot] = plan.dims[batch[i]];
      t.bin[slot] = plan.strides[batch[i]];
      t.bout[slot] = out_strides[batch[i]];
    }
    for (int i = 0; i < kMaxDims - t.nb; ++i) t.bdim[i] = 1;
    t.base = plan.base;
    t.J = plan.dims[j];
    t.A = plan.dims[last];
    t.in_stride_a = plan.strides[last];
    t.out_stride_j = out_strides[j];
    t.batch = n / (t.J * t.A);
    // Packed accesses: 4 bytes of 1-byte elements, 2 of 2- and 4-byte ones, where everything divides.
    const int pack = elem_bytes == 1 ? 4 : elem_bytes <= 4 ? 2 : 1;
    bool ok = t.J % pack == 0 && t.A % pack == 0 && t.in_stride_a % pack == 0 && t.out_stride_j % pack == 0 &&
              t.base % pack == 0;
    for (int i = 0; i < kMaxDims; ++i) ok = ok && t.bin[i] % pack == 0 && t.bout[i] % pack == 0;
    t.pack = ok ? pack : 1;
    mode_ = Mode::kTiled;
    return OkStatus();
  }

  const bool idx32 = n < kMax32 && in_numel < kMax32;
  // A broadcast innermost dim: rows of one repeated element, written 16 (8, 4) bytes at a time. The last
  // variant writes single elements, for outputs that are not aligned to the unit.
  if (plan.strides[last] == 0 && idx32) {
    Strided rows = plan;
    rows.dims.pop_back();
    rows.strides.pop_back();
    rows.mods.pop_back();
    const int64_t len = plan.dims[last];
    for (size_t unit : {size_t{16}, size_t{8}, size_t{4}, size_t{2}, size_t{1}}) {
      if (unit < elem_bytes || unit % elem_bytes != 0) continue;
      const int64_t f = static_cast<int64_t>(unit / elem_bytes);
      if (len % f != 0) continue;
      RowFill r;
      r.unit = unit;
      r.n = n / f;
      r.units_per_row = FastDiv(static_cast<uint32_t>(len / f));
      if (!make_calc32(rows, &r.rows)) break;
      fills_.push_back(r);
    }
    if (!fills_.empty() && fills_.front().unit > elem_bytes) {
      mode_ = Mode::kRowFill;
      return OkStatus();
    }
    fills_.clear();
  }

  // Wider units where the innermost run is contiguous and every run starts on a unit boundary.
  for (size_t unit : {size_t{16}, size_t{8}, size_t{4}, size_t{2}}) {
    if (unit <= elem_bytes || unit % elem_bytes != 0) continue;
    const int64_t f = static_cast<int64_t>(unit / elem_bytes);
    bool ok = plan.strides[last] == 1 && plan.dims[last] % f == 0 && plan.mods[last] % f == 0 && plan.base % f == 0;
    for (int k = 0; k < last && ok; ++k) ok = plan.strides[k] % f == 0;
    if (!ok) continue;
    Strided w = plan;
    w.dims[last] /= f;
    w.mods[last] /= f;
    for (int k = 0; k < last; ++k) w.strides[k] /= f;
    w.base /= f;
    simplify(&w);
    Variant v;
    v.unit = unit;
    v.n = n / f;
    v.idx32 = idx32;
    if (!make_calc32(w, &v.c32) || !make_calc64(w, &v.c64)) continue;
    variants_.push_back(v);
  }
  Variant v;
  v.unit = elem_bytes;
  v.n = n;
  v.idx32 = idx32;
  make_calc32(plan, &v.c32);
  make_calc64(plan, &v.c64);
  variants_.push_back(v);
  mode_ = Mode::kGather;
  return OkStatus();
}

const char* StridedCopy::variant() const {
  switch (mode_) {
    case Mode::kEmpty: return "empty";
    case Mode::kCopy: return "copy";
    case Mode::kTiled: return "tiled";
    case Mode::kRowFill: return "row fill";
    case Mode::kGather: return "gather";
  }
  return "?";
}

Status StridedCopy::run(const void* in, void* out, cudaStream_t stream) const {
  switch (mode_) {
    case Mode::kEmpty: return OkStatus();
    case Mode::kCopy:
      KILN_CUDA_TRY(cudaMemcpyAsync(out, static_cast<const char*>(in) + copy_offset_ * static_cast<int64_t>(elem_),
                                    static_cast<size_t>(copy_count_) * elem_, cudaMemcpyDeviceToDevice, stream));
      return OkStatus();
    case Mode::kTiled: {
      const int pack = pointer_alignment(in) % (elem_ * tiled_.pack) == 0 &&
                               pointer_alignment(out) % (elem_ * tiled_.pack) == 0
                           ? tiled_.pack
                           : 1;
      switch (elem_ * 10 + pack) {
        case 14: launch_tiled<uint8_t, 4>(in, out, tiled_, stream); break;
        case 11: launch_tiled<uint8_t, 1>(in, out, tiled_, stream); break;
        case 22: launch_tiled<uint16_t, 2>(in, out, tiled_, stream); break;
        case 21: launch_tiled<uint16_t, 1>(in, out, tiled_, stream); break;
        case 42: launch_tiled<uint32_t, 2>(in, out, tiled_, stream); break;
        case 41: launch_tiled<uint32_t, 1>(in, out, tiled_, stream); break;
        default: launch_tiled<uint2, 1>(in, out, tiled_, stream); break;
      }
      return launch_status("transpose_tiled_kernel");
    }
    case Mode::kRowFill: {
      const RowFill* f = nullptr;
      const size_t align = pointer_alignment(out);
      for (const RowFill& c : fills_)
        if (align % c.unit == 0) {
          f = &c;
          break;
        }
      if (f == nullptr) return Internal("StridedCopy: no row-fill variant for the output's alignment");
      auto launch = [&](auto ttag, auto utag) {
        using T = typename decltype(ttag)::type;
        using U = typename decltype(utag)::type;
        row_fill_kernel<T, U><<<grid_for(f->n), kThreads, 0, stream>>>(
            static_cast<const T*>(in), static_cast<U*>(out), static_cast<uint32_t>(f->n), f->units_per_row, f->rows);
      };
      dispatch_unit(elem_, [&](auto ttag) {
        dispatch_unit(f->unit, [&](auto utag) {
          using T = typename decltype(ttag)::type;
          using U = typename decltype(utag)::type;
          if constexpr (sizeof(U) >= sizeof(T)) launch(ttag, utag);
        });
      });
      return launch_status("row_fill_kernel");
    }
    case Mode::kGather: {
      const size_t align = std::min(pointer_alignment(in), pointer_alignment(out));
      const Variant* v = &variants_.back();
      for (const Variant& c : variants_)
        if (align % c.unit == 0) {
          v = &c;
          break;
        }
      dispatch_unit(v->unit, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (v->idx32)
          gather32_kernel<T><<<grid_for(v->n), kThreads, 0, stream>>>(
              static_cast<const T*>(in), static_cast<T*>(out), static_cast<uint32_t>(v->n), v->c32);
        else
          gather64_kernel<T><<<grid_for(v->n), kThreads, 0, stream>>>(static_cast<const T*>(in),
                                                                      static_cast<T*>(out), v->n, v->c64);
      });
      return launch_status("strided gather_kernel");
    }
  }
  return Internal("StridedCopy: bad mode");
}

}  // namespace mv

namespace {

std::vector<int64_t> row_major_strides(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int64_t k = static_cast<int64_t>(s.size()) - 2; k >= 0; --k) st[k] = st[k + 1] * s[k + 1];
  return st;
}

const TensorDesc* input_desc(const LayerSpec& spec, size_t i) {
  return i < spec.inputs.size() && spec.inputs[i].present() ? &spec.inputs[i] : nullptr;
}

std::string check_data(const LayerSpec& spec, const std::string& op) {
  if (spec.inputs.empty() || !spec.inputs[0].present()) return "CUDA " + op + ": missing input 0";
  return mv::movable_dtype(op, spec.inputs[0].dtype);
}

std::string check_rank(const TensorDesc& d, const std::string& op) {
  if (d.has_rank && static_cast<int>(d.shape.size()) > mv::kMaxDims)
    return "CUDA " + op + ": rank " + std::to_string(d.shape.size()) + " is above the supported " +
           std::to_string(mv::kMaxDims);
  return "";
}

// ---------------------------------------------------------------------------------------------------------
// Views. The executor aliases output 0 to input 0; should a layer be created anyway (a caller that does not
// alias), it copies the bytes, which is the same result.

class ViewCopyLayer final : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    const DeviceTensor& x = inputs[0];
    const DeviceTensor& y = outputs[0];
    if (y.data == nullptr || y.data == x.data || y.nbytes() == 0) return OkStatus();
    if (y.nbytes() != x.nbytes()) return Internal("CUDA view: output and input sizes differ");
    KILN_CUDA_TRY(cudaMemcpyAsync(y.data, x.data, y.nbytes(), cudaMemcpyDeviceToDevice, h.stream));
    return OkStatus();
  }
};

Result<std::unique_ptr<Layer>> create_view(const LayerSpec&, const std::string&, const CudaHandles&) {
  return std::unique_ptr<Layer>(new ViewCopyLayer());
}

LayerKind view_kind(const std::string& op, std::function<std::string(const LayerSpec&)> extra) {
  LayerKind k;
  k.op_type = op;
  k.output_is_view_of_input0 = true;
  k.lowers_to_fp16 = true;
  k.check = [op, extra](const LayerSpec& spec) -> std::string {
    if (std::string why = check_data(spec, op); !why.empty()) return why;
    return extra ? extra(spec) : "";
  };
  k.create = create_view;
  return k;
}

std::string check_flatten(const LayerSpec& spec) {
  const TensorDesc& x = spec.inputs[0];
  const int64_t axis = spec.attr_int("axis", 1);
  if (x.has_rank) {
    const int64_t r = static_cast<int64_t>(x.shape.size());
    if (axis < -r || axis > r) return "CUDA Flatten: axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(r);
  }
  return "";
}

// Inference Dropout is the identity; the mask output and training mode would need a kernel (and a random
// stream that matches nobody's), so they are left to the CPU.
std::string check_dropout(const LayerSpec& spec) {
  if (spec.outputs.size() > 1 && spec.outputs[1].present())
    return "CUDA Dropout: the mask output is not supported (only inference Dropout with one output)";
  const TensorDesc* train = input_desc(spec, 2);
  if (train == nullptr) return "";
  if (train->constant == nullptr) return "CUDA Dropout: training_mode must be a constant (false) for the GPU";
  if (train->constant->numel() != 1) return "CUDA Dropout: training_mode must be a scalar";
  if (train->constant->scalar_as_double(0) == 0) return "";
  // Training mode with ratio 0 is still the identity.
  const TensorDesc* ratio = input_desc(spec, 1);
  if (ratio != nullptr && ratio->constant != nullptr && ratio->constant->numel() == 1 &&
      ratio->constant->scalar_as_double(0) == 0)
    return "";
  return "CUDA Dropout: training mode (random masks) is not supported";
}

// ---------------------------------------------------------------------------------------------------------
// Transpose, Expand, Tile: one StridedCopy each.

class StridedLayer final : public Layer {
 public:
  explicit StridedLayer(mv::StridedCopy copy) : copy_(std::move(copy)) {}
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    return copy_.run(inputs[0].data, outputs[0].data, h.stream);
  }

 private:
  mv::StridedCopy copy_;
};

Result<std::unique_ptr<Layer>> make_strided(mv::Strided plan, const LayerSpec& spec, bool allow_tiled) {
  const TensorDesc& x = spec.inputs[0];
  if (std::string why = mv::movable_dtype(spec.node->op_type, x.dtype); !why.empty()) return Unsupported(why);
  mv::StridedCopy copy;
  KILN_RETURN_IF_ERROR(copy.init(std::move(plan), dtype_size(x.dtype), shape_numel(x.shape), allow_tiled));
  return std::unique_ptr<Layer>(new StridedLayer(std::move(copy)));
}

// perm normalized to [0, rank); empty when it is not a permutation.
std::vector<int64_t> transpose_perm(const LayerSpec& spec, int64_t rank) {
  std::vector<int64_t> perm = spec.attr_ints("perm");
  if (!spec.has_attr("perm"))
    for (int64_t i = rank - 1; i >= 0; --i) perm.push_back(i);
  if (static_cast<int64_t>(perm.size()) != rank) return {};
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  for (int64_t& p : perm) {
    if (p < -rank || p >= rank) return {};
    if (p < 0) p += rank;
    if (seen[p]) return {};
    seen[p] = true;
  }
  return perm;
}

std::string check_transpose(const LayerSpec& spec) {
  if (std::string why = check_data(spec, "Transpose"); !why.empty()) return why;
  const TensorDesc& x = spec.inputs[0];
  if (std::string why = check_rank(x, "Transpose"); !why.empty()) return why;
  if (x.has_rank && !x.shape.empty() && transpose_perm(spec, static_cast<int64_t>(x.shape.size())).empty())
    return "CUDA Transpose: perm " + shape_to_string(spec.attr_ints("perm")) + " is not a permutation of rank " +
           std::to_string(x.shape.size());
  return "";
}

Result<std::unique_ptr<Layer>> create_transpose(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& in = spec.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(in.size());
  std::vector<int64_t> perm = transpose_perm(spec, rank);
  if (rank > 0 && perm.empty()) return InvalidArgument("CUDA Transpose: perm is not a permutation of the input's axes");
  const std::vector<int64_t> st = row_major_strides(in);
  mv::Strided plan;
  for (int64_t p : perm) {
    plan.dims.push_back(in[p]);
    plan.strides.push_back(st[p]);
    plan.mods.push_back(0);
  }
  return make_strided(std::move(plan), spec, /*allow_tiled=*/true);
}

std::string check_expand_tile(const LayerSpec& spec, const std::string& op) {
  if (std::string why = check_data(spec, op); !why.empty()) return why;
  if (std::string why = check_rank(spec.inputs[0], op); !why.empty()) return why;
  if (!spec.outputs.empty()) return check_rank(spec.outputs[0], op);
  return "";
}

// The output shape is concrete at create time, so the shape / repeats input need not be a constant: what
// it says is already in the output's shape.
Result<std::unique_ptr<Layer>> create_expand(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& in = spec.inputs[0].shape;
  const Shape& out = spec.outputs[0].shape;
  if (in.size() > out.size())
    return InvalidArgument("CUDA Expand: output " + shape_to_string(out) + " has a lower rank than input " + shape_to_string(in));
  const std::vector<int64_t> st = row_major_strides(in);
  const size_t lead = out.size() - in.size();
  mv::Strided plan;
  for (size_t k = 0; k < out.size(); ++k) {
    int64_t stride = 0;
    if (k >= lead) {
      const int64_t d = in[k - lead];
      if (d == out[k]) stride = st[k - lead];
      else if (d != 1)
        return InvalidArgument("CUDA Expand: input " + shape_to_string(in) + " does not broadcast to " + shape_to_string(out));
    }
    plan.dims.push_back(out[k]);
    plan.strides.push_back(stride);
    plan.mods.push_back(0);
  }
  return make_strided(std::move(plan), spec, false);
}

Result<std::unique_ptr<Layer>> create_tile(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  const Shape& in = spec.inputs[0].shape;
  const Shape& out = spec.outputs[0].shape;
  if (in.size() != out.size())
    return InvalidArgument("CUDA Tile: output " + shape_to_string(out) + " and input " + shape_to_string(in) + " differ in rank");
  const std::vector<int64_t> st = row_major_strides(in);
  mv::Strided plan;
  for (size_t k = 0; k < out.size(); ++k) {
    if (in[k] == 0 ? out[k] != 0 : out[k] % in[k] != 0)
      return InvalidArgument("CUDA Tile: output " + shape_to_string(out) + " is not a tiling of input " + shape_to_string(in));
    plan.dims.push_back(out[k]);
    plan.strides.push_back(st[k]);
    plan.mods.push_back(in[k]);
  }
  return make_strided(std::move(plan), spec, false);
}

LayerKind strided_kind(const std::string& op, const std::string& tactic,
                       std::function<std::string(const LayerSpec&)> check,
                       Result<std::unique_ptr<Layer>> (*create)(const LayerSpec&, const std::string&, const CudaHandles&)) {
  LayerKind k;
  k.op_type = op;
  k.lowers_to_fp16 = true;
  k.check = std::move(check);
  k.tactics = [tactic](const LayerSpec&) { return std::vector<std::string>{tactic}; };
  k.create = create;
  return k;
}

}  // namespace

void register_shape_layers(LayerTable& table) {
  table.add(view_kind("Reshape", nullptr));  // allowzero and a non-constant shape only matter to shape inference
  table.add(view_kind("Flatten", check_flatten));
  table.add(view_kind("Squeeze", nullptr));
  table.add(view_kind("Unsqueeze", nullptr));
  table.add(view_kind("Identity", nullptr));
  table.add(view_kind("Dropout", check_dropout));
  table.add(strided_kind("Transpose", "cuda.shape.transpose", check_transpose, create_transpose));
  table.add(strided_kind(
      "Expand", "cuda.shape.expand", [](const LayerSpec& s) { return check_expand_tile(s, "Expand"); }, create_expand));
  table.add(strided_kind(
      "Tile", "cuda.shape.tile", [](const LayerSpec& s) { return check_expand_tile(s, "Tile"); }, create_tile));
}

}  // namespace kiln::cuda
