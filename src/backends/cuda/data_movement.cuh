// What the data-movement layers (shape_ops.cu, index_ops.cu) share. Those ops never look at values: they
// copy elements by size, so one kernel per element size (1, 2, 4, 8 bytes, and 16 for vectorized copies)
// serves every dtype, bool and fp16 included.
//
// Most of them are a strided gather: out[o] = in[base + sum_k f(c_k) * stride_k], where c_k are the output
// coordinates of o and f is the identity or "c mod m" (Tile). Transpose, Expand, Tile and Slice only differ
// in the strides, so StridedCopy prepares that once at create time: it drops size-1 dims, merges dims that
// stay adjacent, widens the element to 16/8/4 bytes where the innermost run allows, and picks a kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "backends/cuda/layer.h"

namespace kiln::cuda::mv {

inline constexpr int kThreads = 256;
// Dims a strided gather handles after merging; more is refused at check time (ONNX models stay far below).
inline constexpr int kMaxDims = 12;
// 32-bit index arithmetic (FastDiv) is used when every index fits below this.
inline constexpr int64_t kMax32 = int64_t{1} << 31;

template <class T>
struct Tag {
  using type = T;
};

// The unsigned type of N bytes that the kernels copy by (uint2/uint4: 8/16-byte vector accesses).
template <class F>
bool dispatch_unit(size_t bytes, F&& f) {
  switch (bytes) {
    case 1: f(Tag<uint8_t>{}); return true;
    case 2: f(Tag<uint16_t>{}); return true;
    case 4: f(Tag<uint32_t>{}); return true;
    case 8: f(Tag<uint2>{}); return true;
    case 16: f(Tag<uint4>{}); return true;
    default: return false;
  }
}

// n / d for 0 <= n < 2^31 and 1 <= d <= 2^31 as a multiply-high and a shift (Granlund-Montgomery, as in
// PyTorch's IntDivider): index decomposition is most of a movement kernel's instructions.
struct FastDiv {
  uint32_t d = 1, m = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    shift = 0;
    while (shift < 32 && (uint64_t{1} << shift) < divisor) ++shift;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor)) / divisor + 1);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t t = __umulhi(n, m);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * m) >> 32);
#endif
    return (t + n) >> shift;
  }
};

// Output linear index -> input element offset of a strided gather. Dims are right-aligned in the arrays
// so that the loops unroll with constant indices (no local-memory copies of the parameters).
struct Calc32 {
  int rank = 0;
  uint32_t mod_mask = 0;  // bit k: dim k wraps (Tile)
  int32_t base = 0;
  FastDiv div[kMaxDims];
  FastDiv mod[kMaxDims];
  int32_t stride[kMaxDims] = {};

  __device__ __forceinline__ int32_t offset(uint32_t i) const {
    int32_t off = base;
#pragma unroll
    for (int k = kMaxDims - 1; k >= 0; --k) {
      if (k < kMaxDims - rank) break;
      uint32_t c = i;
      if (k > kMaxDims - rank) {
        const uint32_t q = div[k].div(i);
        c = i - q * div[k].d;
        i = q;
      }
      if ((mod_mask >> k) & 1u) c -= mod[k].div(c) * mod[k].d;
      off += static_cast<int32_t>(c) * stride[k];
    }
    return off;
  }
};

struct Calc64 {
  int rank = 0;
  uint32_t mod_mask = 0;
  int64_t base = 0;
  int64_t dim[kMaxDims] = {};
  int64_t mod[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};

  __device__ __forceinline__ int64_t offset(int64_t i) const {
    int64_t off = base;
#pragma unroll
    for (int k = kMaxDims - 1; k >= 0; --k) {
      if (k < kMaxDims - rank) break;
      int64_t c = i;
      if (k > kMaxDims - rank) {
        const int64_t q = i / dim[k];
        c = i - q * dim[k];
        i = q;
      }
      if ((mod_mask >> k) & 1u) c %= mod[k];
      off += c * stride[k];
    }
    return off;
  }
};

// A strided gather over output dims (outermost first), in elements. mods[k] == 0: no wrap.
struct Strided {
  std::vector<int64_t> dims, strides, mods;
  int64_t base = 0;
};

// Drops size-1 dims and merges neighbours whose input positions stay linear across both.
void simplify(Strided* s);
// The calculators of a simplified plan (false when it has more than kMaxDims dims).
bool make_calc32(const Strided& s, Calc32* c);
bool make_calc64(const Strided& s, Calc64* c);

// The tiled transpose: output dim A (innermost) has input stride in_stride_a; dim J has input stride 1 and
// output stride out_stride_j; the other dims ("batch", right-aligned) have strides bin / bout.
struct TiledParams {
  int nb = 0;
  int64_t bdim[kMaxDims] = {}, bin[kMaxDims] = {}, bout[kMaxDims] = {};
  int64_t base = 0;
  int64_t J = 0, A = 0;
  int64_t in_stride_a = 0, out_stride_j = 0;
  int64_t batch = 0;  // tiles of J x A
  int pack = 1;        // elements per access (see transpose_tiled_kernel)
  int64_t tiles_j = 0, tiles_a = 0, n_tiles = 0;  // set at launch, by the tile size of the kernel
};

// A strided gather made ready at create time; run() only launches (or issues one device-to-device copy).
class StridedCopy {
 public:
  // in_numel: elements of the input, for the choice of 32-bit indexing. allow_tiled: use the shared-memory
  // tiled kernel when the innermost output dim is not the input's (Transpose).
  Status init(Strided plan, size_t elem_bytes, int64_t in_numel, bool allow_tiled);
  Status run(const void* in, void* out, cudaStream_t stream) const;
  const char* variant() const;

 private:
  enum class Mode { kEmpty, kCopy, kGather, kTiled, kRowFill };
  struct Variant {
    size_t unit = 0;  // bytes per copied item
    int64_t n = 0;    // items
    bool idx32 = false;
    Calc32 c32;
    Calc64 c64;
  };
  struct RowFill {
    size_t unit = 0;  // bytes written per item: several copies of one element
    int64_t n = 0;    // items
    FastDiv units_per_row;
    Calc32 rows;  // row index -> input element
  };
  Mode mode_ = Mode::kEmpty;
  size_t elem_ = 0;
  int64_t copy_offset_ = 0, copy_count_ = 0;  // kCopy, in elements
  std::vector<Variant> variants_;             // widest unit first; the last copies single elements
  std::vector<RowFill> fills_;                // widest unit first; the last writes single elements
  TiledParams tiled_;
};

// Blocks for a grid-stride loop: enough to fill every SM several times, no more.
unsigned grid_for(int64_t items, int threads = kThreads);

// The largest power of two (<= 16) that divides the address.
inline size_t pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  size_t v = 16;
  while (v > 1 && (a % v) != 0) v >>= 1;
  return v;
}

// "" when the kernels can move elements of this dtype (unknown dtypes pass: check runs before types are
// final); otherwise why not.
inline std::string movable_dtype(const std::string& op, DType t) {
  if (t == DType::kUndefined) return "";
  if (t == DType::kString) return "CUDA " + op + ": string tensors are not supported on the GPU";
  const size_t es = dtype_size(t);
  if (es != 1 && es != 2 && es != 4 && es != 8)
    return "CUDA " + op + ": dtype " + dtype_name(t) + " (" + std::to_string(es) + " bytes) is not supported";
  return "";
}

// Output linear index helper for grid-stride loops.
__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace kiln::cuda::mv
