// CUDA layer of the optimizer's kiln.FusedConvPair (made by fuse_conv_pair): two channels-last 1x1 convs in
// one kernel, Y = act(X W^T + B + Z) and Y2 = act2(Y W2^T + B2), X [M, C0] (M = N*H*W pixels), W [C1, C0],
// W2 [C2, C1]. In a ResNet bottleneck the first is a block's last conv with its residual, the second the next
// block's first conv. Both are memory-bound GEMMs: apart, Y (C1 = 256 channels) is written by one and read
// back whole by the other. Here each block keeps its tile of Y in shared memory and runs the second GEMM from
// there, so Y is written once and never read back (a third less traffic at ResNet-50's layer1 junctions).
//
// The kernel is persistent: one block per SM holds both weights in shared memory for its whole life (so the
// pass fuses only pairs whose weights fit: conv_pair_fits in graph_uses.h). Its 3 or 4 groups of 4 warps each
// walk their own tiles of 32 rows with their own buffers and named barrier, so that they drift apart and one
// group's loads overlap another's math (one group of 8 warps over 64-row tiles, in lockstep, ran ResNet's
// junction at 2.0 TB/s). Where shared memory allows, a group's next X and Z tiles are loaded by cp.async while
// it computes the current one. Per tile, a group's 4 warps each take a quarter of the columns:
//   1. Y's GEMM on mma.sync m16n8k16, K = C0, both operands from shared memory;
//   2. its epilogue: + B, + Z (read from the tile's Z/Y buffer in shared memory), activation, rounded to T and
//      written back in place: the buffer now holds Y's tile;
//   3. Y's tile copied to global memory in 16-byte pieces (coalesced); with output_strides (sample_pair_output)
//      only its rows at the sampled pixels, each to its place in the smaller Y; with output_channels
//      (write_concat_in_place) into its channels of the wider Y, the others left as they are;
//   4. Y2's GEMM from that tile, 128 or 64 output columns at a time, and its epilogue straight to global memory.
// Every shared-memory tile is rows of 16-byte chunks with the chunk index XORed with row % 8, so that the
// ldmatrix reads of 8 rows and the epilogue's row accesses hit 8 distinct bank groups.
//
// Accuracy: float32 accumulation; Z and the activation in float32 before the one rounding of Y; Y2 reads Y as
// rounded: the two FusedConv nodes this replaces, and the CPU reference, compute the same.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "backends/cuda/mma_sm80.cuh"

namespace kiln::cuda {
namespace {

using sm80::cp_async16;
using sm80::cp_async_commit;
using sm80::ldmatrix_x4;
using sm80::mma16816;
using sm80::pack2;
using sm80::unpack2;

constexpr int kRows = 32;          // rows (pixels) of a group's tile
constexpr int kGroupWarps = 4;     // a group's warps split the columns
constexpr int kGroupThreads = kGroupWarps * 32;
constexpr int kMaxGroups = 4;      // independent groups of a block (3 or 4), sharing its weights
constexpr int kMaxThreads = kMaxGroups * kGroupThreads;
constexpr int kChunk = 8;          // T elements per 16-byte chunk
const char* const kOpName = "CUDA kiln.FusedConvPair";

struct PairParams {
  int64_t m = 0;                   // rows (N * H * W)
  int c0 = 0, c2 = 0;              // the first GEMM's K and Y2's channels (C1 is the kernel's template parameter)
  int c0a = 0;                     // K's first c0a channels come from X, the rest from X2
  int tiles = 0;                   // of kRows rows
  int groups = 4;                  // blockDim.x / 128
  int stages = 1;                  // X tiles a group holds (1 or 2): stages - 1 tiles' loads in flight
  int zy_stages = 1;               // Z/Y tiles a group holds: `stages` with a Z to prefetch, else 1
  bool relu = false, relu2 = false, has_z = false;
  bool sampled = false;            // Y written at pixels (h, w) with h % sh == 0 and w % sw == 0 only
  int h = 0, w = 0, sh = 1, sw = 1, ho = 0, wo = 0;  // X's H and W, the strides, and Y's H and W when sampled
  int y_ld = 0, y_off = 0;         // Y's channels (C1 but in a wider tensor) and where the pair's C1 start
};

// Y's row for X's pixel `row` when sampled (m < 2^31: 32-bit division), -1 when Y has no such pixel.
__device__ __forceinline__ int sampled_row(int64_t row, const PairParams& p) {
  if (row >= p.m) return -1;
  const unsigned r = static_cast<unsigned>(row), hw = static_cast<unsigned>(p.h * p.w);
  const unsigned n = r / hw, rem = r - n * hw, hh = rem / p.w, ww = rem - hh * p.w;
  if (hh % p.sh != 0 || ww % p.sw != 0) return -1;
  return static_cast<int>((n * p.ho + hh / p.sh) * p.wo + ww / p.sw);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of `row_chunks` chunks a row (a multiple of 8).
__device__ __forceinline__ int swizzled(int row, int chunk, int row_chunks) {
  return (row * row_chunks + (chunk ^ (row & 7))) * 16;
}

// Loads a tile of `rows` rows of `row_chunks` 16-byte chunks from a row-major global matrix (rows past
// `valid_rows` zero-filled) into swizzled shared memory, cp.async, by `threads` threads (this one `tid`).
// Where the threads divide the row's chunks evenly (every case but odd widths), each thread keeps one chunk
// column and walks rows, so the loop has no division.
template <class T>
__device__ __forceinline__ void load_tile(char* dst, const T* src, int64_t first_row, int64_t valid_rows, int rows,
                                          int row_chunks, int tid, int threads) {
  if (threads % row_chunks == 0) {
    const int c = tid % row_chunks, step = threads / row_chunks;
    for (int r = tid / row_chunks; r < rows; r += step) {
      const bool valid = first_row + r < valid_rows;
      cp_async16(dst + swizzled(r, c, row_chunks), src + ((valid ? first_row + r : 0) * row_chunks + c) * kChunk, valid);
    }
    return;
  }
  for (int i = tid; i < rows * row_chunks; i += threads) {
    const int r = i / row_chunks, c = i % row_chunks;
    const bool valid = first_row + r < valid_rows;
    cp_async16(dst + swizzled(r, c, row_chunks), src + ((valid ? first_row + r : 0) * row_chunks + c) * kChunk, valid);
  }
}

// X's tile: chunks [0, a_chunks) of each row from x ([M, a_chunks * 8]), the rest from x2 (the channel
// concatenation of X and X2 that the pass folded away); the group's threads, as load_tile.
template <class T>
__device__ __forceinline__ void load_x_tile(char* dst, const T* x, const T* x2, int64_t first_row, int64_t valid_rows,
                                            int a_chunks, int row_chunks, int tid) {
  if (a_chunks == row_chunks) return load_tile(dst, x, first_row, valid_rows, kRows, row_chunks, tid, kGroupThreads);
  const int b_chunks = row_chunks - a_chunks;
  for (int i = tid; i < kRows * row_chunks; i += kGroupThreads) {
    const int r = i / row_chunks, c = i % row_chunks;
    const bool valid = first_row + r < valid_rows;
    const int64_t row = valid ? first_row + r : 0;
    const T* p = c < a_chunks ? x + (row * a_chunks + c) * kChunk : x2 + (row * b_chunks + c - a_chunks) * kChunk;
    cp_async16(dst + swizzled(r, c, row_chunks), p, valid);
  }
}

// Synchronizes the 128 threads of group g (named barrier 1 + g; 0 is __syncthreads').
__device__ __forceinline__ void group_sync(int g) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(1 + g), "n"(kGroupThreads) : "memory");
}

// acc[MF][NF] += A[rows a_row0.., k] * B[cols b_row0.., k]^T over k in [0, k_chunks * 8), both operands
// swizzled row-major tiles in shared memory with `a_chunks` / `b_chunks` chunks a row. MF m16 fragments, NF n8
// fragments (NF even: B is read 16 columns at a time). k_chunks is a multiple of 8, a_row0 and b_row0 of 8.
// The addresses are worked out once: every row this lane reads has row % 8 == lane % 8, so the swizzle of
// chunk 8q + i is 8q + (i ^ lane % 8): a row's base address plus a small offset per step (the loop was bound
// by its integer address arithmetic, not by the tensor cores: Nsight Compute's busiest pipe was the ALU).
template <class T, int MF, int NF>
__device__ __forceinline__ void warp_gemm(float (&acc)[MF][NF][4], const char* a, int a_row0, int a_chunks,
                                          const char* b, int b_row0, int b_chunks, int k_chunks) {
  const int lane = threadIdx.x & 31;
  const int j = lane >> 3, r8 = lane & 7;
  uint32_t a_row[MF], b_row[NF / 2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) a_row[mf] = sm80::smem_addr(a + (a_row0 + mf * 16 + r8 + (j & 1) * 8) * a_chunks * 16);
#pragma unroll
  for (int nb = 0; nb < NF / 2; ++nb) b_row[nb] = sm80::smem_addr(b + (b_row0 + nb * 16 + r8 + (j >> 1) * 8) * b_chunks * 16);
  for (int kq = 0; kq < k_chunks * 16; kq += 8 * 16) {  // 64 k a group, 16 k a step
#pragma unroll
    for (int st = 0; st < 4; ++st) {
      const uint32_t a_off = ((2 * st + (j >> 1)) ^ r8) * 16, b_off = ((2 * st + (j & 1)) ^ r8) * 16;
      uint32_t af[MF][4];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) ldmatrix_x4(af[mf], a_row[mf] + kq + a_off);
#pragma unroll
      for (int nb = 0; nb < NF / 2; ++nb) {
        uint32_t bf[4];
        ldmatrix_x4(bf, b_row[nb] + kq + b_off);
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
          mma16816<T>(acc[mf][2 * nb], af[mf], bf[0], bf[1]);
          mma16816<T>(acc[mf][2 * nb + 1], af[mf], bf[2], bf[3]);
        }
      }
    }
  }
}

// Step 4 of a group's tile: Y2 = act2(Y W2^T + B2) from Y's tile `zy`, in passes of 32 * NF columns: the
// warp has all 32 rows and NF * 8 columns of a pass (NF 4 reads each Y fragment half as often as NF 2).
template <class T, int NF>
__device__ __forceinline__ void second_gemm(const char* zy, const char* w2s, const float* bias2_s, T* y2, int64_t row0,
                                            int c1_chunks, const PairParams& p) {
  const int lane = threadIdx.x & 31, wn = (threadIdx.x % kGroupThreads) >> 5;
  for (int n0 = 0; n0 < p.c2; n0 += 32 * NF) {
    float acc[2][NF][4] = {};
    warp_gemm<T, 2, NF>(acc, zy, 0, c1_chunks, w2s, n0 + wn * NF * 8, c1_chunks, c1_chunks);
#pragma unroll
    for (int mf = 0; mf < 2; ++mf)
#pragma unroll
      for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = mf * 16 + (lane >> 2) + h * 8;
          const int col = n0 + wn * NF * 8 + nf * 8 + (lane & 3) * 2;
          float v0 = acc[mf][nf][2 * h] + bias2_s[col], v1 = acc[mf][nf][2 * h + 1] + bias2_s[col + 1];
          if (p.relu2) {
            v0 = v0 < 0.0f ? 0.0f : v0;
            v1 = v1 < 0.0f ? 0.0f : v1;
          }
          if (row0 + row < p.m) *reinterpret_cast<uint32_t*>(y2 + (row0 + row) * p.c2 + col) = pack2<T>(v0, v1);
        }
  }
}

// Shared memory: W [C1][C0], W2 [C2][C1], B and B2 as float, then each group's `stages` X tiles [32][C0],
// `zy_stages` Z/Y tiles [32][C1] and, when sampled, its tile's 32 rows of Y (int).
struct SmemLayout {
  size_t w, w2, bias, bias2, groups, x_tile, zy_tile, y_rows, group, bytes;
};
__host__ __device__ inline SmemLayout smem_layout(int c0, int c1, int c2, int groups, int stages, int zy_stages,
                                                  bool sampled) {
  SmemLayout l;
  l.w = 0;
  l.w2 = l.w + size_t(c1) * c0 * 2;
  l.bias = l.w2 + size_t(c2) * c1 * 2;
  l.bias2 = l.bias + size_t(c1) * 4;
  l.groups = (l.bias2 + size_t(c2) * 4 + 127) / 128 * 128;
  l.x_tile = size_t(kRows) * c0 * 2;
  l.zy_tile = size_t(kRows) * c1 * 2;
  l.y_rows = size_t(stages) * l.x_tile + size_t(zy_stages) * l.zy_tile;
  l.group = l.y_rows + (sampled ? kRows * sizeof(int) : 0);
  l.bytes = l.groups + size_t(groups) * l.group;
  return l;
}

template <class T, int C1>
__global__ void __launch_bounds__(kMaxThreads, 1)
    conv_pair_kernel(const void* x_, const void* w_, const void* bias_, const void* z_, const void* w2_,
                     const void* bias2_, const void* x2_, void* y_, void* y2_, PairParams p) {
  extern __shared__ __align__(128) char smem[];
  const T* __restrict__ x = static_cast<const T*>(x_);
  const T* __restrict__ w = static_cast<const T*>(w_);
  const T* __restrict__ bias = static_cast<const T*>(bias_);
  const T* __restrict__ z = static_cast<const T*>(z_);
  const T* __restrict__ w2 = static_cast<const T*>(w2_);
  const T* __restrict__ bias2 = static_cast<const T*>(bias2_);
  const T* __restrict__ x2 = static_cast<const T*>(x2_);
  T* __restrict__ y = static_cast<T*>(y_);
  T* __restrict__ y2 = static_cast<T*>(y2_);
  const SmemLayout l = smem_layout(p.c0, C1, p.c2, p.groups, p.stages, p.zy_stages, p.sampled);
  const int c0_chunks = p.c0 / kChunk, c1_chunks = C1 / kChunk;
  float* bias_s = reinterpret_cast<float*>(smem + l.bias);
  float* bias2_s = reinterpret_cast<float*>(smem + l.bias2);

  // Both weights once, by the whole block.
  load_tile(smem + l.w, w, 0, C1, C1, c0_chunks, threadIdx.x, blockDim.x);
  load_tile(smem + l.w2, w2, 0, p.c2, p.c2, c1_chunks, threadIdx.x, blockDim.x);
  for (int i = threadIdx.x; i < C1; i += blockDim.x) bias_s[i] = bias ? to_f(bias[i]) : 0.0f;
  for (int i = threadIdx.x; i < p.c2; i += blockDim.x) bias2_s[i] = bias2 ? to_f(bias2[i]) : 0.0f;
  cp_async_commit();
  sm80::cp_async_wait<0>();
  __syncthreads();

  // From here each group of 4 warps walks its own tiles with its own buffers and barrier: the groups drift
  // apart, so that while one waits on memory the others compute.
  const int group = threadIdx.x / kGroupThreads, gtid = threadIdx.x % kGroupThreads;
  const int wn = gtid >> 5, lane = threadIdx.x & 31;  // the warp's column quarter
  char* const gbase = smem + l.groups + group * l.group;
  int* const y_rows = reinterpret_cast<int*>(gbase + l.y_rows);
  const int first = blockIdx.x * p.groups + group, step = gridDim.x * p.groups;

  // The group's k-th tile into stage k % stages (Z into k % zy_stages); an empty cp.async group past the
  // last tile, so that there are always stages - 1 groups committed after the one waited for.
  auto prefetch = [&](int k) {
    const int t = first + k * step;
    if (t < p.tiles) {
      const int64_t row0 = static_cast<int64_t>(t) * kRows;
      load_x_tile(gbase + (k % p.stages) * l.x_tile, x, x2, row0, p.m, p.c0a / kChunk, c0_chunks, gtid);
      if (p.has_z)
        load_tile(gbase + p.stages * l.x_tile + (k % p.zy_stages) * l.zy_tile, z, row0, p.m, kRows, c1_chunks, gtid,
                  kGroupThreads);
    }
    cp_async_commit();
  };
  for (int k = 0; k < p.stages - 1; ++k) prefetch(k);

  for (int k = 0;; ++k) {
    const int t = first + k * step;
    if (t >= p.tiles) break;
    prefetch(k + p.stages - 1);
    if (p.stages == 2) sm80::cp_async_wait<1>();
    else sm80::cp_async_wait<0>();
    group_sync(group);
    const char* xs = gbase + (k % p.stages) * l.x_tile;
    char* zy = gbase + p.stages * l.x_tile + (k % p.zy_stages) * l.zy_tile;
    const int64_t row0 = static_cast<int64_t>(t) * kRows;

    // 1-2. Y's tile: the warp has all 32 rows and columns wn*C1/4..
    constexpr int NF = C1 / 32;
    {
      float acc[2][NF][4] = {};
      warp_gemm<T, 2, NF>(acc, xs, 0, c0_chunks, smem + l.w, wn * (C1 / 4), c0_chunks, c0_chunks);
#pragma unroll
      for (int mf = 0; mf < 2; ++mf)
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // rows lane/4 and lane/4 + 8 of the fragment
            const int row = mf * 16 + (lane >> 2) + h * 8;
            const int col = wn * (C1 / 4) + nf * 8 + (lane & 3) * 2;
            uint32_t* at = reinterpret_cast<uint32_t*>(zy + swizzled(row, col / kChunk, c1_chunks) + (col % kChunk) * 2);
            float v0 = acc[mf][nf][2 * h] + bias_s[col], v1 = acc[mf][nf][2 * h + 1] + bias_s[col + 1];
            if (p.has_z) {
              const float2 r = unpack2<T>(*at);
              v0 += r.x;
              v1 += r.y;
            }
            if (p.relu) {  // NaN stays NaN, as in Relu
              v0 = v0 < 0.0f ? 0.0f : v0;
              v1 = v1 < 0.0f ? 0.0f : v1;
            }
            *at = pack2<T>(v0, v1);
          }
    }
    if (p.sampled && gtid < kRows) y_rows[gtid] = sampled_row(row0 + gtid, p);
    group_sync(group);

    // 3. Y's tile to global memory (its sampled rows only, when sampled).
    for (int i = gtid; i < kRows * c1_chunks; i += kGroupThreads) {
      const int r = i / c1_chunks, c = i % c1_chunks;
      const int64_t to = p.sampled ? y_rows[r] : row0 + r < p.m ? row0 + r : -1;
      if (to >= 0)
        *reinterpret_cast<uint4*>(y + to * p.y_ld + p.y_off + c * kChunk) =
            *reinterpret_cast<const uint4*>(zy + swizzled(r, c, c1_chunks));
    }

    // 4. Y2 = act2(Y W2^T + B2), 128 columns a pass where C2 allows, else 64.
    if (p.c2 % 128 == 0) second_gemm<T, 4>(zy, smem + l.w2, bias2_s, y2, row0, c1_chunks, p);
    else second_gemm<T, 2>(zy, smem + l.w2, bias2_s, y2, row0, c1_chunks, p);
    group_sync(group);  // the stage is refilled by a later prefetch
  }
  sm80::cp_async_wait<0>();  // no cp.async may be in flight when the block exits
}

using PairKernel = void (*)(const void*, const void*, const void*, const void*, const void*, const void*, const void*, void*,
                            void*, PairParams);

template <class T>
PairKernel kernel_for(int c1) {
  switch (c1) {
    case 64: return conv_pair_kernel<T, 64>;
    case 128: return conv_pair_kernel<T, 128>;
    case 192: return conv_pair_kernel<T, 192>;
    case 256: return conv_pair_kernel<T, 256>;
    default: return nullptr;
  }
}

class ConvPairLayer : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    if (p_.tiles == 0) return OkStatus();
    const auto input = [&](size_t i) -> const void* { return i < in.size() ? in[i].data : nullptr; };
    // cp.async and the 16-byte stores move whole chunks (the context's buffers are aligned; views may not be).
    for (size_t i = 0; i < in.size(); ++i)
      if (!aligned16(in[i].data)) return Unsupported(std::string(kOpName) + ": input " + std::to_string(i) + " is not 16-byte aligned");
    if (!aligned16(out[0].data) || !aligned16(out[1].data)) return Unsupported(std::string(kOpName) + ": outputs must be 16-byte aligned");
    kernel_<<<grid_, p_.groups * kGroupThreads, smem_, h.stream>>>(input(0), input(1), input(2), input(3), input(4),
                                                                   input(5), input(6), out[0].data, out[1].data, p_);
    return launch_status("conv_pair_kernel");
  }

  PairParams p_;
  PairKernel kernel_ = nullptr;
  size_t smem_ = 0;
  unsigned grid_ = 1;
};

// Whether the kernel runs the node (shapes may be partly unknown at build time).
std::string check_conv_pair(const LayerSpec& spec) {
  const std::string op = std::string(kOpName) + (spec.node ? " '" + spec.node->name + "'" : std::string());
  if (spec.inputs.size() < 5 || !spec.inputs[0].present() || !spec.inputs[1].present() || !spec.inputs[4].present())
    return op + " needs inputs X, W and W2";
  if (spec.inputs.size() > 7) return op + " has at most 7 inputs (X, W, B, Z, W2, B2, X2)";
  if (spec.outputs.size() != 2) return op + " has two outputs, Y and Y2";
  const DType dt = spec.inputs[0].dtype;
  if (dt != DType::kFloat16 && dt != DType::kBFloat16) return op + " runs float16 and bfloat16, got " + dtype_name(dt);
  for (size_t i = 1; i < spec.inputs.size(); ++i)
    if (spec.inputs[i].present() && spec.inputs[i].dtype != dt)
      return op + ": input " + std::to_string(i) + " must have X's dtype " + dtype_name(dt);
  const TensorDesc& w = spec.inputs[1];
  const TensorDesc& w2 = spec.inputs[4];
  if (!w.is_static() || !w2.is_static() || w.shape.size() != 4 || w2.shape.size() != 4)
    return op + " needs W and W2 of known shapes [C1, 1, 1, C0] and [C2, 1, 1, C1]";
  const int64_t c1 = w.shape[0], c0 = w.shape[3], c2 = w2.shape[0];
  if (w.shape[1] != 1 || w.shape[2] != 1 || w2.shape[1] != 1 || w2.shape[2] != 1 || w2.shape[3] != c1)
    return op + ": W " + shape_to_string(w.shape) + " and W2 " + shape_to_string(w2.shape) +
           " must be [C1, 1, 1, C0] and [C2, 1, 1, C1]";
  if (c0 <= 0 || c1 <= 0 || c2 <= 0 || c0 % 64 || c1 % 64 || c2 % 64 || c1 > 256 || 2 * (c0 * c1 + c1 * c2) > 98304)
    return op + ": channels C0 " + std::to_string(c0) + ", C1 " + std::to_string(c1) + ", C2 " + std::to_string(c2) +
           " are not multiples of 64 with C1 <= 256 and both weights within 96 KiB";
  if (spec.inputs[0].has_rank && spec.inputs[0].shape.size() != 4) return op + " needs X [N, H, W, C0]";
  for (const char* a : {"activation", "second_activation"}) {
    const std::string act = spec.attr_string(a, "");
    if (!act.empty() && act != "Relu") return op + ": " + a + " '" + act + "' is not \"\" or Relu";
  }
  return "";
}

Result<std::unique_ptr<Layer>> create_conv_pair(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  if (std::string why = check_conv_pair(spec); !why.empty()) return Unsupported(why);
  const std::string op = std::string(kOpName) + " '" + spec.node->name + "'";
  const TensorDesc& xd = spec.inputs[0];
  if (!xd.is_static()) return InvalidArgument(op + ": create needs concrete shapes");
  const Shape& xs = xd.shape;
  const int64_t c1 = spec.inputs[1].shape[0], c0 = spec.inputs[1].shape[3], c2 = spec.inputs[4].shape[0];
  // With X2, K is X's channels then X2's (the Concat fuse_conv_pair folded).
  const bool has_x2 = spec.inputs.size() > 6 && spec.inputs[6].present();
  const int64_t c0b = has_x2 ? spec.inputs[6].shape.size() == 4 ? spec.inputs[6].shape[3] : -1 : 0;
  if (has_x2 && (spec.inputs[6].shape.size() != 4 || !std::equal(xs.begin(), xs.begin() + 3, spec.inputs[6].shape.begin())))
    return InvalidArgument(op + ": X2 " + shape_to_string(spec.inputs[6].shape) + " must be [N, H, W, C] as X " + shape_to_string(xs));
  if (xs[3] + c0b != c0)
    return InvalidArgument(op + ": X " + shape_to_string(xs) + (has_x2 ? " and X2" : "") + " must have W's " +
                           std::to_string(c0) + " channels");
  if (xs[3] % kChunk != 0 || c0b % kChunk != 0)
    return Unsupported(op + ": X and X2 need channels a multiple of 8, got " + std::to_string(xs[3]) + " and " + std::to_string(c0b));
  const std::vector<int64_t> strides = spec.attr_ints("output_strides", {1, 1});
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1)
    return InvalidArgument(op + ": output_strides must be two strides >= 1, got " + shape_to_string(strides));
  const int64_t y_channels = spec.attr_int("output_channels", c1), y_off = spec.attr_int("output_channel_offset", 0);
  if (y_off < 0 || y_channels < c1 || y_off > y_channels - c1)
    return InvalidArgument(op + ": output_channels " + std::to_string(y_channels) + " and output_channel_offset " +
                           std::to_string(y_off) + " must hold Y's " + std::to_string(c1) + " channels");
  if (y_channels % kChunk != 0 || y_off % kChunk != 0)
    return Unsupported(op + ": output_channels and output_channel_offset must be multiples of 8 (16-byte stores)");
  const Shape ys = {xs[0], ceil_div(xs[1], strides[0]), ceil_div(xs[2], strides[1]), y_channels};
  const Shape y2s = {xs[0], xs[1], xs[2], c2};
  if (spec.outputs[0].shape != ys || spec.outputs[1].shape != y2s)
    return InvalidArgument(op + ": outputs must be " + shape_to_string(ys) + " and " + shape_to_string(y2s));
  auto check_vector = [&](size_t i, const Shape& want, const char* name) -> Status {
    if (spec.inputs.size() > i && spec.inputs[i].present() && spec.inputs[i].shape != want)
      return InvalidArgument(op + ": " + name + " " + shape_to_string(spec.inputs[i].shape) + " must be " + shape_to_string(want));
    return OkStatus();
  };
  KILN_RETURN_IF_ERROR(check_vector(2, {c1}, "B"));
  KILN_RETURN_IF_ERROR(check_vector(3, {xs[0], xs[1], xs[2], c1}, "Z"));  // Y before any sampling
  KILN_RETURN_IF_ERROR(check_vector(5, {c2}, "B2"));

  auto layer = std::make_unique<ConvPairLayer>();
  PairParams& p = layer->p_;
  p.m = xs[0] * xs[1] * xs[2];
  p.c0 = static_cast<int>(c0);
  p.c0a = static_cast<int>(xs[3]);
  p.c2 = static_cast<int>(c2);
  const int64_t tiles = ceil_div(p.m, kRows);  // tiles of a group
  if (tiles > INT32_MAX / 4) return Unsupported(op + ": " + std::to_string(p.m) + " rows are too many");
  p.tiles = static_cast<int>(tiles);
  p.relu = spec.attr_string("activation", "") == "Relu";
  p.relu2 = spec.attr_string("second_activation", "") == "Relu";
  p.has_z = spec.inputs.size() > 3 && spec.inputs[3].present();
  p.y_ld = static_cast<int>(y_channels);
  p.y_off = static_cast<int>(y_off);
  p.sampled = strides[0] > 1 || strides[1] > 1;
  if (p.sampled) {
    if (p.m > INT32_MAX) return Unsupported(op + ": a sampled Y needs fewer than 2^31 pixels, X has " + std::to_string(p.m));
    p.h = static_cast<int>(xs[1]);
    p.w = static_cast<int>(xs[2]);
    p.sh = static_cast<int>(strides[0]);
    p.sw = static_cast<int>(strides[1]);
    p.ho = static_cast<int>(ys[1]);
    p.wo = static_cast<int>(ys[2]);
  }
  if (p.tiles == 0) return std::unique_ptr<Layer>(std::move(layer));

  int dev = 0, optin = 0, per_sm = 0;
  KILN_CUDA_TRY(cudaGetDevice(&dev));
  KILN_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  // The first that fits of: 4 groups with the next tile's loads in flight, 3 such groups, 4 groups without.
  // Y's tile needs no second stage without Z. ResNet-50's three layer1 junctions take the first (C0 64, Z;
  // and C0 128, no Z) and the second (C2 128).
  const int c1i = static_cast<int>(c1);
  for (const auto& [groups, stages] : {std::pair{4, 2}, std::pair{3, 2}, std::pair{4, 1}}) {
    p.groups = groups;
    p.stages = stages;
    p.zy_stages = p.has_z ? stages : 1;
    layer->smem_ = smem_layout(p.c0, c1i, p.c2, p.groups, p.stages, p.zy_stages, p.sampled).bytes;
    if (layer->smem_ <= static_cast<size_t>(optin)) break;
  }
  if (layer->smem_ > static_cast<size_t>(optin))
    return Unsupported(op + ": needs " + std::to_string(layer->smem_) + " bytes of shared memory, the device allows " +
                       std::to_string(optin));
  layer->kernel_ = xd.dtype == DType::kFloat16 ? kernel_for<__half>(static_cast<int>(c1))
                                               : kernel_for<__nv_bfloat16>(static_cast<int>(c1));
  // The device's cap, not this layer's need: the attribute belongs to the kernel, which other layers of the
  // same C1 launch with more shared memory than this one (the last create would otherwise make their launches
  // fail).
  KILN_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(layer->kernel_),
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  KILN_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, layer->kernel_, p.groups * kGroupThreads, layer->smem_));
  if (per_sm < 1) return Unsupported(op + ": no block fits on an SM");
  layer->grid_ = static_cast<unsigned>(std::min<int64_t>(ceil_div(tiles, p.groups), static_cast<int64_t>(sm_count()) * per_sm));
  return std::unique_ptr<Layer>(std::move(layer));
}

}  // namespace

void register_conv_pair_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "kiln.FusedConvPair";
  k.check = check_conv_pair;
  k.tactics = [](const LayerSpec&) { return std::vector<std::string>{"cuda.conv.pair"}; };
  k.create = create_conv_pair;
  k.lowers_to_fp16 = true;
  table.add(std::move(k));
}

}  // namespace kiln::cuda
