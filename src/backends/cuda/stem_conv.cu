// Tactics "cuda.conv.stem" and "cuda.conv.stem.wgmma" of kiln.FusedConv: a direct convolution on the tensor
// cores for convolutions with few input channels, such as ResNet's stem (X [N, 224, 224, 4] NHWC, the RGB
// channels padded to 4 by convert_conv_layout, W [64, 7, 7, 4] KRSC, stride 2, pad 3, bias, Relu; it pads other
// stems to 8). cuDNN's GEMM kernels are built for deep reductions and spend most of their time on 3 useful
// channels; here the reduction is the whole window at once.
//
// The convolution is an implicit GEMM: rows are output pixels, columns output channels, and the reduction
// runs over (r, s, c) with c fastest. An 8-channel pixel is one 16-byte chunk (4-channel inputs are padded
// with zeros in shared memory), so a k16 step of mma.sync m16n8k16 covers two window positions (r, s): each
// A-fragment row (an output pixel) is two chunks of the input patch, which ldmatrix reads directly, with the
// address of each lane's pixel and window position. The window's positions are padded to an even count; the
// padding's weights and A halves are zero.
//
// Blocks are persistent: each loads the weights of its BN output channels (64, or 32 when K is not a multiple
// of 64) into shared memory once and then walks output tiles of 16 rows x 16 columns of one image, double-
// buffering the input patch each tile needs ((16-1)*stride + R rows x (16-1)*stride + S columns, zero outside
// the image, loaded with cp.async while the previous tile computes). Warp w computes rows 4w..4w+3 of the
// tile (four m16 tiles, 64 pixels) times the BN channels: per k step 4 ldmatrix of A and BN/16 of B feed
// 4 * BN/8 mma (8 loads for 32 mma at BN = 64; shared-memory bandwidth, not the tensor cores, bounded the
// earlier 32-pixel warps' 6 loads per 16 mma). The fragments of step k + 1 load while step k multiplies; the
// last two or three steps (where the padding position's zeroing happens) run after the loop, so that its
// loads are unconditional and the two fragment sets stay in fixed registers. 4 warps of at most 255
// registers and ~96 KB of shared memory (ResNet's stem) give 2 blocks an SM, so that one block's epilogue and
// patch wait overlap the other's products. The epilogue adds the bias, applies the
// activation, rounds to T once and goes through shared memory (the patch buffer just used, 32 channels at a
// time so that the staging fits in it) so that each pixel's channels leave in 16-byte stores.
//
// Paired window positions (4-channel inputs at horizontal stride 2: ResNet's stem once convert_conv_layout pads
// its RGB to 4): a 4-channel pixel is 8 bytes, so one 16-byte chunk holds the two horizontally adjacent window
// positions (r, 2j) and (r, 2j + 1), which are adjacent pixels of the input row. The patch keeps its columns
// in order (8 bytes a pixel); output pixel px's chunk for pair j is chunk px + j of the patch row (its first
// column 2 px + 2j is even), so the 8 pixels of an ldmatrix phase still read 8 consecutive chunks. A k16 step
// then covers four positions rather than two: ResNet's 7x7 window takes 14 steps (7 rows of 4 pairs) rather
// than the 25 of 8-channel chunks. The pair past an odd S (s = S) is a real input pixel with zero weights:
// its A half is zeroed like the padding position's, so that an inf there cannot make a NaN.
//
// Fused max pool (attribute `pool`, made by fuse_conv_pool: 3x3, stride 2, pads 1, ResNet's stem pool): the
// conv output never reaches memory whole. Tile (tp, tq) of 16x16 conv pixels owns the 8x8 pool outputs
// (8 tp.., 8 tq..), whose windows cover conv rows 16 tp - 1 .. 16 tp + 15 and columns likewise: all in the
// tile but for the row above it and the column left of it, which belong to other tiles and maybe other
// blocks. So the epilogue stages the whole tile (its 64 channels at once in the paired layout, 32 a pass in the
// others, whose larger weights leave no room for that), pools every owned output over the taps
// in the tile, and writes those partial maxima to Y together with its bottom conv row and right conv column
// ("halos", in the workspace); a second small kernel then folds the halos into the outputs on tile
// boundaries. Max is order-free and idempotent (a corner's tap seen twice is harmless), and, taken in T with
// NaN never winning and -inf to start, matches the separate pool exactly (it compares the same rounded values).
//
// The wgmma variant ("cuda.conv.stem.wgmma", compute capability 9.0, 64 output channels a block): the same
// blocks, patches and epilogue, but each k step's products are four m64n64k16 wgmma (A, the same ldmatrix
// fragments, from registers; B from the weights in wgmma's 128-byte-swizzled K-major slabs), two steps in
// flight (wg_steps). At ResNet-50's stem with the pool fused it takes 0.370 ms against mma.sync's 0.398; without
// the pool, 0.393 against 0.310 (bench/results/stem_bench_2026-11-24c.json): the builder times both.
//
// Instructions, not the tensor cores or memory, bound this kernel (2 warps a scheduler, Nsight Compute: issue
// every 2.5 cycles, DRAM 11% busy), so its epilogue, pool and patch loads are written for few of them:
// 199M -> 107M instructions and 0.554 -> 0.370 ms for the stem + pool at ResNet-50 b256.
//
// Bank conflicts: an ldmatrix phase reads 8 chunks; the patch is stored with its columns de-interleaved by the
// stride (column c at (c % stride) * ceil(cols / stride) + c / stride), so the 8 pixels of a phase read 8
// consecutive chunks; weight rows have an odd number of chunks, so 8 channels at one k read 8 different
// bank groups; the epilogue's staging rows are XOR-swizzled.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/conv_common.h"
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"
#include "backends/cuda/mma_sm80.cuh"
#include "backends/cuda/wgmma_sm90.cuh"

namespace kiln::cuda {
namespace {

using namespace sm80;
using namespace sm90;

constexpr int kTileRows = 16, kTileCols = 16;  // output pixels of a tile; 112 = 7 * 16 for ResNet
constexpr int kRowsPerWarp = 4;                 // m16 tiles per warp, one output row of 16 pixels each
constexpr int kWarps = kTileRows / kRowsPerWarp;
constexpr int kWarpPixels = kRowsPerWarp * kTileCols;
constexpr int kStageChunks = 4;                 // the epilogue stages 32 channels (4 chunks) a pass (all 64 with a pool)
constexpr int kBlockThreads = 32 * kWarps;
static_assert(kTileCols == 16, "an m16 tile is one output row of the tile");
constexpr int kMaxKernel = 7;
constexpr int kMaxStride = 16;
constexpr size_t kSmemCap = 227 * 1024;  // sm_90's opt-in limit per block; create() asks the device too

const char* const kOp = "CUDA kiln.FusedConv (tactic cuda.conv.stem)";

struct StemParams {
  int H = 0, W = 0;                  // input image (X is [N, H, W, C])
  int P = 0, Q = 0, K = 0;           // output image and channels (Y is [N, P, Q, K])
  int R = 0, S = 0, sh = 1, sw = 1, pad_h = 0, pad_w = 0;
  int RS = 0, ksteps = 0, kq = 0;    // window positions (pairs of them when paired), k16 steps (two positions
                                     // each), kq = 2 * ksteps
  int pairs = 0;                     // paired: positions a window row, ceil(S / 2)
  bool zero_hi0 = false, zero_hi1 = false;  // paired, S odd: zero the second pixel of even / odd steps' second position
  int ws = 0;                        // weight row stride in chunks: kq + 1 (odd)
  int w_chunks = 0;                  // the weights' shared memory (wgmma: slabs of 64 rows x 128 bytes)
  int prow = 0, pcol = 0;            // patch extent
  int wd = 0, row_chunks = 0;        // de-interleaved columns per stride phase; row_chunks = sw * wd
  int buf_chunks = 0;                // one patch (or staging) buffer
  int tiles_q = 0, tiles_p = 0, tiles = 0;
  float lo = 0, hi = 0, slope = 1;   // every activation as clip(v < 0 ? v * slope : v, lo, hi)
  bool relu = false;                 // Relu (lo 0, no slope, no hi): the epilogue's packed path (relu_pack2)
  int PH = 0, PW = 0;                // fused pool: Y is [N, PH, PW, K]
  int64_t halo_col_offset = 0;       // fused pool: elements of the workspace before the column halos
};

// The workspace of a fused pool: the bottom conv row of every tile row but the last, [N, tiles_p - 1, Q, K],
// then the right conv column of every tile column but the last, [N, P, tiles_q - 1, K], in T.
struct PoolHalos {
  size_t row_elems = 0, col_elems = 0;
};
PoolHalos halos_of(int64_t n, const StemParams& p) {
  return {static_cast<size_t>(n) * (p.tiles_p - 1) * p.Q * p.K, static_cast<size_t>(n) * p.P * (p.tiles_q - 1) * p.K};
}

// Shared-memory layout of a problem, in 16-byte chunks unless named bytes.
struct StemLayout {
  int ksteps, kq, ws, w_chunks, prow, pcol, wd, row_chunks, buf_chunks;
  size_t bytes;
};

// Whether a problem takes the paired layout (see the top): 4 channels, horizontal stride 2, and a window width
// whose pair past its end (odd S) falls on a fixed step parity (S = 3: every step's second position; S = 7:
// odd steps'), or has none (even S).
bool paired_layout(int64_t c, int64_t s, int64_t sw) { return c == 4 && sw == 2 && (s % 2 == 0 || s == 3 || s == 7); }

// Whether the epilogue stages all BN channels at once rather than 32 a pass: a fused pool in the paired layout
// (see the kernel's SC). layout_for sizes the staging buffer by it and the kernel stages by it.
__host__ __device__ constexpr bool stages_all_channels(bool pool, bool paired) { return pool && paired; }

// pool: a fused pool (for stages_all_channels). wg: the wgmma variant, whose k steps go in pairs (an even count;
// a padding step multiplies zeros) and whose weights sit in wgmma's 128-byte-swizzled K-major slabs (64
// channels x 64 k), 1024-byte aligned.
StemLayout layout_for(int64_t r, int64_t s, int64_t sh, int64_t sw, int bn, bool paired, bool pool, bool wg) {
  StemLayout l;
  const int positions = static_cast<int>(paired ? r * ((s + 1) / 2) : r * s);
  l.ksteps = (positions + 1) / 2;
  if (wg) l.ksteps += l.ksteps % 2;
  l.kq = 2 * l.ksteps;
  l.ws = l.kq + 1;
  l.w_chunks = wg ? static_cast<int>(ceil_div(l.kq, 8)) * 64 * 8 : bn * l.ws;
  l.prow = static_cast<int>((kTileRows - 1) * sh + r);
  if (paired) {  // columns in order, 8 bytes each, through the last pair's second pixel
    l.pcol = static_cast<int>((kTileCols - 1) * sw + 2 * ((s + 1) / 2));
    l.wd = 0;
    l.row_chunks = (l.pcol + 1) / 2;
  } else {
    l.pcol = static_cast<int>((kTileCols - 1) * sw + s);
    l.wd = static_cast<int>((l.pcol + sw - 1) / sw);
    l.row_chunks = static_cast<int>(sw) * l.wd;
  }
  const int stage_chunks = stages_all_channels(pool, paired) ? bn / 8 : std::min(bn / 8, kStageChunks);
  const int patch = l.prow * l.row_chunks, stage = kWarps * kWarpPixels * stage_chunks;
  l.buf_chunks = std::max(patch, stage);
  l.bytes = (static_cast<size_t>(l.w_chunks) + 2 * static_cast<size_t>(l.buf_chunks)) * 16 + l.kq * sizeof(int) + bn * sizeof(float) +
            (wg ? 1024 : 0);
  return l;
}

// Relu is clip(v, 0, inf), none clip(v, -inf, inf), LeakyRelu the slope alone: no branch per value. Compares,
// not fminf / fmaxf, so that NaN stays NaN, as in the reference.
__device__ __forceinline__ float activate(float v, const StemParams& p) {
  v = v < 0.0f ? v * p.slope : v;
  v = v < p.lo ? p.lo : v;
  return v > p.hi ? p.hi : v;
}

// Relu on two values as one register of two T: rounded first, then max(h, 0) in T with NaN kept
// (__hmax2_nan), two instructions for the pair where activate() takes about seven a value. Rounding and Relu
// commute (rounding is monotone and keeps the sign), so this is activate()'s Relu then pack2, but for the
// sign of a zero: a tiny negative value may come out -0.0 rather than 0.
template <class T>
__device__ __forceinline__ uint32_t relu_pack2(float v0, float v1) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __hmax2_nan(__floats2half2_rn(v0, v1), __float2half2_rn(0.0f));
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __hmax2_nan(__floats2bfloat162_rn(v0, v1), __float2bfloat162_rn(0.0f));
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// The tile's output image, row tile and column tile.
__device__ __forceinline__ void tile_coords(const StemParams& p, int tile, int* n, int* tp, int* tq) {
  *tq = tile % p.tiles_q;
  const int rest = tile / p.tiles_q;
  *tp = rest % p.tiles_p;
  *n = rest / p.tiles_p;
}

// Issues the cp.async copies of a tile's input patch into buf (the caller commits). Pixels outside the image
// are zero (the convolution's padding); with C = 4 the chunk's upper 8 bytes are zeroed by a plain store.
template <class T, int C, bool PAIRED>
__device__ __forceinline__ void load_patch(uint4* buf, const T* x, const StemParams& p, int tile) {
  int n, tp, tq;
  tile_coords(p, tile, &n, &tp, &tq);
  const int y0 = tp * kTileRows * p.sh - p.pad_h, x0 = tq * kTileCols * p.sw - p.pad_w;
  const T* img = x + static_cast<int64_t>(n) * p.H * p.W * C;
  const int rows_per_pass = kBlockThreads / p.pcol;
  if (rows_per_pass > 0) {
    // Thread t keeps column t % pcol and walks rows t / pcol, + rows_per_pass, ..: its column's test and its
    // addresses are set once a tile and then step by a constant (index arithmetic per pixel was a quarter of
    // the kernel's instructions). ResNet's 38-column patch: 114 threads, 3 rows a pass.
    const int c = threadIdx.x % p.pcol, r0 = threadIdx.x / p.pcol;
    if (r0 >= rows_per_pass) return;
    const int ix = x0 + c;
    const bool col_ok = ix >= 0 && ix < p.W;
    const int dst_chunk = PAIRED ? 0 : (c % p.sw) * p.wd + c / p.sw;  // paired: 8-byte pixels in column order
    char* dst = reinterpret_cast<char*>(buf + r0 * p.row_chunks + dst_chunk) + (PAIRED ? c * 8 : 0);
    const int64_t src_step = static_cast<int64_t>(rows_per_pass) * p.W * C;
    const T* src = img + (static_cast<int64_t>(y0 + r0) * p.W + ix) * C;
    const int dst_step = rows_per_pass * p.row_chunks * 16;
    for (int r = r0; r < p.prow; r += rows_per_pass, src += src_step, dst += dst_step) {
      const int iy = y0 + r;
      const bool valid = col_ok && iy >= 0 && iy < p.H;
      if constexpr (C == 8) {
        cp_async16(dst, valid ? src : x, valid);
      } else {
        cp_async8(dst, valid ? src : x, valid);
        if constexpr (!PAIRED) reinterpret_cast<uint2*>(dst)[1] = make_uint2(0u, 0u);
      }
    }
    return;
  }
  // Patches wider than the block: element i = r * pcol + c; (r, c) advance by the block's stride.
  const int dr = kBlockThreads / p.pcol, dc = kBlockThreads - dr * p.pcol;
  int r = threadIdx.x / p.pcol, c = threadIdx.x - r * p.pcol;
  for (int i = threadIdx.x; i < p.prow * p.pcol; i += kBlockThreads, r += dr, c += dc) {
    if (c >= p.pcol) c -= p.pcol, ++r;
    const int iy = y0 + r, ix = x0 + c;
    const bool valid = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
    const T* src = valid ? img + (static_cast<int64_t>(iy) * p.W + ix) * C : x;
    if constexpr (PAIRED) {  // in column order, two pixels a chunk
      cp_async8(reinterpret_cast<uint2*>(buf + r * p.row_chunks) + c, src, valid);
      continue;
    }
    uint4* dst = buf + r * p.row_chunks + (c % p.sw) * p.wd + c / p.sw;
    if constexpr (C == 8) {
      cp_async16(dst, src, valid);
    } else {
      cp_async8(dst, src, valid);
      reinterpret_cast<uint2*>(dst)[1] = make_uint2(0u, 0u);
    }
  }
}

// The fragments of one k step: A for the warp's m16 tiles (this lane's pixel of tile 0 at `pa`, already at the
// step's window position for this lane's half; tile mt is mt * rstep chunks further), B for the block's BN
// channels (this lane's weight chunk of channel tile 0 at `pb`, tile j 16 * j * ws chunks further). `tail`:
// the step's second window position is padding, whose A half is zeroed (its weights are zero too, but 0 * inf
// would be NaN). `zero_hi`: this lane holds the second pixel of the second position's pair, past the window
// (paired, odd S), zeroed for the same reason.
template <int MT, int NB>
__device__ __forceinline__ void load_frags(uint32_t (&a)[MT][4], uint32_t (&b)[NB][4], const uint4* pa, int rstep, const uint4* pb,
                                           int ws, bool tail, bool zero_hi) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], pa + mt * rstep);
#pragma unroll
  for (int j = 0; j < NB; ++j) ldmatrix_x4(b[j], pb + 16 * j * ws);
  if (tail || zero_hi)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a[mt][2] = a[mt][3] = 0u;
}

template <class T, int MT, int NB>
__device__ __forceinline__ void mma_step(float (&acc)[MT][2 * NB][4], const uint32_t (&a)[MT][4], const uint32_t (&b)[NB][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      mma16816<T>(acc[mt][2 * j], a[mt], b[j][0], b[j][1]);
      mma16816<T>(acc[mt][2 * j + 1], a[mt], b[j][2], b[j][3]);
    }
}

// XOR swizzle of the epilogue's staging rows (CPR chunks a pixel): the 8 pixels one store phase writes at one
// chunk, and the pixels one load phase reads, fall in 8 different bank groups.
template <int CPR>
__device__ __forceinline__ int stage_swizzle(int pix) {  // pix >= 0; CPR a power of 2
  return static_cast<int>((static_cast<unsigned>(pix) * CPR / 8) % CPR);
}

#if KILN_HAVE_WGMMA
// The k loop of the wgmma variant (tactic cuda.conv.stem.wgmma). Per k16 step, each warp's A fragments of its
// four m16 tiles come from the patch by ldmatrix as in the mma.sync loop, and four m64n64k16 products (m16 tile
// mt of every warp together make 64 rows; A from registers) take B from the weight slabs. The fragments go in
// two sets, a step's products in flight while the next step's fragments load; a set is reloaded only once the
// products that read it are done (wgmma_wait<1>). Zeroed as load_frags zeroes: a padding position's half (its
// weights are zero, but 0 * inf is NaN) and, paired with odd S, the pixel past the window (hi).
template <class T, int MT>
__device__ __forceinline__ void wg_steps(float (&acc)[MT][8][4], const uint4* pa, int rstep, const int* off_tab, int half,
                                         uint32_t w_addr, const StemParams& p, bool hi0, bool hi1) {
  const uint64_t bdesc = sw128_desc(w_addr, 16, 1024);
  uint32_t a0[MT][4], a1[MT][4];
  // The zeroing costs a select a register, so it is only there where it can apply: the window's end (q0 + 1
  // >= RS) only in the last two steps (`tail`), the pixel past an odd S only where the step's parity has one
  // (`may_hi`, uniform over the block).
  auto load = [&](uint32_t (&a)[MT][4], int ks, bool may_hi, bool hi, auto tail) {
    const int q0 = 2 * ks;
    const uint4* at = pa + off_tab[q0 + half];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], at + mt * rstep);
    if constexpr (decltype(tail)::value) {
      const bool zlo = q0 >= p.RS, zhi = q0 + 1 >= p.RS || hi;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (zlo) a[mt][0] = a[mt][1] = 0u;
        if (zhi) a[mt][2] = a[mt][3] = 0u;
      }
    } else if (may_hi) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        if (hi) a[mt][2] = a[mt][3] = 0u;
    }
  };
  auto issue = [&](const uint32_t (&a)[MT][4], int ks) {
    wgmma_fence();  // the fragments were just written by ordinary instructions
    const uint64_t b = desc_advance(bdesc, (ks / 4) * (64 * 128) + (ks % 4) * 32);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) wgmma_rs_n64<T>(reinterpret_cast<float(&)[32]>(acc[mt]), a[mt], b, ks > 0);
    wgmma_commit();
  };
  auto two_steps = [&](int ks, auto tail) {
    wgmma_wait<1>();  // step ks - 2, the last reader of a0, is done
    load(a0, ks, p.zero_hi0, hi0, tail);
    issue(a0, ks);
    wgmma_wait<1>();  // step ks - 1, a1's
    load(a1, ks + 1, p.zero_hi1, hi1, tail);
    issue(a1, ks + 1);
  };
  int ks = 0;
  for (; ks + 2 < p.ksteps; ks += 2) two_steps(ks, std::false_type{});  // an even count (layout_for)
  two_steps(ks, std::true_type{});
  wgmma_wait<0>();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) order_registers(reinterpret_cast<float(&)[32]>(acc[mt]));
}
#endif

// The max of 8 channels over taps, two at a time in T (__hmax2): where one side is NaN it gives the other, so
// an accumulator that starts at -inf never becomes NaN. That is the separate pool's and the CPU reference's
// rule (a tap wins only when strictly greater: NaN never does, and taps that are all NaN leave -inf).
template <class T>
__device__ __forceinline__ uint4 max_chunk(const uint4& acc, const uint4& tap) {
  using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
  uint4 r;
  const T2* a = reinterpret_cast<const T2*>(&acc);
  const T2* b = reinterpret_cast<const T2*>(&tap);
  T2* o = reinterpret_cast<T2*>(&r);
#pragma unroll
  for (int j = 0; j < 4; ++j) o[j] = __hmax2(a[j], b[j]);
  return r;
}

template <class T>
__device__ __forceinline__ uint4 minus_inf_chunk() {
  Pack<T> v;
#pragma unroll
  for (int j = 0; j < 8; ++j) v.v[j] = from_f<T>(-INFINITY);
  return *reinterpret_cast<const uint4*>(&v);
}

// One epilogue pass of the fused pool (see the top): the block's staged tile (16 x 16 pixels of SC chunks,
// pixel (r, c) at (16 r + c) * SC, its chunks swizzled as the staging wrote them) pooled into its 8 x 8
// outputs, chunks chunk0.. of each, and its bottom row and right column copied to the halos.
template <class T, int SC>
__device__ __forceinline__ void pool_tile_pass(const uint4* stage, const StemParams& p, int n, int tp, int tq, int chunk0,
                                               T* y, T* halo_rows, T* halo_cols) {
  // Pixel (r, c)'s chunk j, as the staging wrote it, is chunk col(c, j) of row r: the staging's swizzle of
  // pixel (r % 4) * 16 + c depends on c alone, (16 (r % 4) * SC / 8) % SC being 0.
  auto col = [](int c, int j) { return c * SC + (j ^ stage_swizzle<SC>(c)); };
  auto at = [&](int r, int c, int j) { return stage[r * kTileCols * SC + col(c, j)]; };
  const int r_end = min(kTileRows, p.P - tp * kTileRows), c_end = min(kTileCols, p.Q - tq * kTileCols);  // conv pixels in the image
  for (int i = threadIdx.x; i < (kTileRows / 2) * (kTileCols / 2) * SC; i += kBlockThreads) {
    const int j = i % SC, pp = i / SC, pr = pp / (kTileCols / 2), pc = pp % (kTileCols / 2);
    const int py = tp * (kTileRows / 2) + pr, px = tq * (kTileCols / 2) + pc;
    if (py >= p.PH || px >= p.PW) continue;
    // The window's centre (r0, c0) is in the image (py < PH); the row above row 0 and the column left of
    // column 0 are other tiles' (the halo kernel adds them), rows and columns past the image are none.
    const int r0 = 2 * pr, c0 = 2 * pc;
    const bool up = r0 > 0, down = r0 + 1 < r_end, left = c0 > 0, right = c0 + 1 < c_end;
    // Three column offsets and one row base: the nine taps are loads at fixed offsets from them (the
    // per-tap index arithmetic was most of the pool's instructions).
    const int cl = left ? col(c0 - 1, j) : 0, cm = col(c0, j), cr = right ? col(c0 + 1, j) : 0;
    const uint4* centre = stage + r0 * kTileCols * SC;
    uint4 acc = minus_inf_chunk<T>();
#pragma unroll
    for (int dr = -1; dr <= 1; ++dr) {
      if ((dr < 0 && !up) || (dr > 0 && !down)) continue;
      const uint4* row = centre + dr * kTileCols * SC;
      if (left) acc = max_chunk<T>(acc, row[cl]);
      acc = max_chunk<T>(acc, row[cm]);
      if (right) acc = max_chunk<T>(acc, row[cr]);
    }
    *reinterpret_cast<uint4*>(y + ((static_cast<int64_t>(n) * p.PH + py) * p.PW + px) * p.K + 8 * (chunk0 + j)) = acc;
  }
  if (tp + 1 < p.tiles_p)  // then the tile is 16 rows high
    for (int i = threadIdx.x; i < c_end * SC; i += kBlockThreads) {
      const int c = i / SC, j = i % SC;
      *reinterpret_cast<uint4*>(halo_rows + ((static_cast<int64_t>(n) * (p.tiles_p - 1) + tp) * p.Q + tq * kTileCols + c) * p.K +
                                8 * (chunk0 + j)) = at(kTileRows - 1, c, j);
    }
  if (tq + 1 < p.tiles_q)
    for (int i = threadIdx.x; i < r_end * SC; i += kBlockThreads) {
      const int r = i / SC, j = i % SC;
      *reinterpret_cast<uint4*>(halo_cols + ((static_cast<int64_t>(n) * p.P + tp * kTileRows + r) * (p.tiles_q - 1) + tq) * p.K +
                                8 * (chunk0 + j)) = at(r, kTileCols - 1, j);
    }
}

// The second kernel of a fused pool: each pool output on a tile boundary (row or column a multiple of 8, not
// 0) takes the max of its partial value and the window's taps in the halos. One thread a 16-byte chunk:
// items [0, along_rows) are the boundary rows' outputs, the rest the boundary columns' outside those rows.
template <class T>
__global__ void stem_pool_halo_kernel(void* yv, const void* rows_v, const void* cols_v, StemParams p, int64_t along_rows,
                                      int64_t items) {
  T* y = static_cast<T*>(yv);
  const T* halo_rows = static_cast<const T*>(rows_v);
  const T* halo_cols = static_cast<const T*>(cols_v);
  const int ck = p.K / 8, nby = (p.PH - 1) / 8, nbx = (p.PW - 1) / 8;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rest;
    int j, py, px, n;
    if (i < along_rows) {  // [N, nby, PW, ck]
      j = static_cast<int>(i % ck);
      rest = i / ck;
      px = static_cast<int>(rest % p.PW);
      rest /= p.PW;
      py = 8 * (static_cast<int>(rest % nby) + 1);
      n = static_cast<int>(rest / nby);
    } else {  // [N, PH, nbx, ck]
      const int64_t k = i - along_rows;
      j = static_cast<int>(k % ck);
      rest = k / ck;
      px = 8 * (static_cast<int>(rest % nbx) + 1);
      rest /= nbx;
      py = static_cast<int>(rest % p.PH);
      n = static_cast<int>(rest / p.PH);
      if (py % 8 == 0 && py > 0) continue;  // a boundary row's output: the first range has it
    }
    uint4* out = reinterpret_cast<uint4*>(y + ((static_cast<int64_t>(n) * p.PH + py) * p.PW + px) * p.K) + j;
    uint4 acc = *out;  // the tile's partial maximum
    if (py % 8 == 0 && py > 0) {  // conv row 2 py - 1, the bottom row of tile row py / 8 - 1
      const T* row = halo_rows + (static_cast<int64_t>(n) * (p.tiles_p - 1) + py / 8 - 1) * p.Q * p.K;
      for (int ox = max(2 * px - 1, 0); ox <= min(2 * px + 1, p.Q - 1); ++ox)
        acc = max_chunk<T>(acc, reinterpret_cast<const uint4*>(row + static_cast<int64_t>(ox) * p.K)[j]);
    }
    if (px % 8 == 0 && px > 0)  // conv column 2 px - 1, the right column of tile column px / 8 - 1
      for (int oy = max(2 * py - 1, 0); oy <= min(2 * py + 1, p.P - 1); ++oy)
        acc = max_chunk<T>(acc, reinterpret_cast<const uint4*>(
                                    halo_cols + ((static_cast<int64_t>(n) * p.P + oy) * (p.tiles_q - 1) + px / 8 - 1) * p.K)[j]);
    *out = acc;
  }
}

template <class T, int C, int BN, bool PAIRED, bool POOL, bool WG>
__global__ void __launch_bounds__(kBlockThreads, 2) stem_conv_kernel(const void* xv, const void* wv, const void* bv, void* yv,
                                                                  void* halo, StemParams p) {
#if !KILN_HAVE_WGMMA
  if constexpr (WG) {
    __trap();  // the wgmma variant runs in the sm_90a pass only (its tactic is listed for compute capability 9.0)
    return;
  }
#endif
  constexpr int MT = kRowsPerWarp;
  constexpr int NB = BN / 16;  // ldmatrix.x4 loads of B per k step (two n8 tiles each)
  constexpr int CPR = BN / 8;  // n8 tiles; output chunks per pixel
  // A pool in the paired layout stages the tile's 64 channels at once: one block-wide wait a tile rather than
  // one a pass (ResNet's stem + pool: 0.60 ms against 0.67 at 32 channels a pass). The other layouts' weights
  // are twice as large, and the 32 KB stage would leave one block an SM (1.10 ms against 0.79).
  constexpr int SC = stages_all_channels(POOL, PAIRED) ? CPR : kStageChunks;
  static_assert(CPR % SC == 0, "the epilogue stages whole passes");
  const T* x = static_cast<const T*>(xv);
  const T* w = static_cast<const T*>(wv);
  const T* bias = static_cast<const T*>(bv);
  T* y = static_cast<T*>(yv);
  extern __shared__ uint4 smem_raw[];
  // The wgmma variant's weight slabs are 1024-byte aligned (the 128-byte swizzle's period).
  uint4* smem = WG ? smem_raw + (((smem_addr(smem_raw) + 1023) & ~1023u) - smem_addr(smem_raw)) / 16 : smem_raw;
  uint4* w_s = smem;                                             // [BN][ws] chunks, or wgmma slabs
  uint4* bufs = w_s + p.w_chunks;                                // two patch / staging buffers
  int* off_tab = reinterpret_cast<int*>(bufs + 2 * p.buf_chunks);  // [kq] chunk offset of window position q
  float* bias_s = reinterpret_cast<float*>(off_tab + p.kq);       // [BN]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int k0 = blockIdx.y * BN;

  int tile = blockIdx.x;
  if (tile < p.tiles) load_patch<T, C, PAIRED>(bufs, x, p, tile);
  cp_async_commit();

  // The block's weights, once: chunk (n, q) holds W[k0 + n, q / S, q % S, 0..C), zero past C and past RS;
  // paired, W[k0 + n, q / pairs, 2 (q % pairs) + {0, 1}, 0..4), zero past S.
  for (int i = tid; i < BN * p.kq; i += kBlockThreads) {
    const int n = i / p.kq, q = i - n * p.kq;
    Pack<T> v;
#pragma unroll
    for (int c = 0; c < 8; ++c) v.v[c] = from_f<T>(0.0f);
    if (PAIRED && q < p.RS) {
      const int r = q / p.pairs, s0 = 2 * (q - r * p.pairs);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if (s0 + h < p.S) {
          const T* src = w + ((static_cast<int64_t>(k0 + n) * p.R + r) * p.S + s0 + h) * C;
#pragma unroll
          for (int c = 0; c < C; ++c) v.v[4 * h + c] = src[c];
        }
    } else if (q < p.RS) {
      const T* src = w + (static_cast<int64_t>(k0 + n) * p.RS + q) * C;
#pragma unroll
      for (int c = 0; c < C; ++c) v.v[c] = src[c];
    }
    // wgmma: slab q / 8 (64 k) of 64 rows of 128 bytes, chunk q % 8 of row n swizzled by n % 8.
    uint4* dst = WG ? w_s + (q / 8) * 512 + n * 8 + ((q % 8) ^ (n % 8)) : w_s + n * p.ws + q;
    *reinterpret_cast<Pack<T>*>(dst) = v;
  }
  for (int q = tid; q < p.kq; q += kBlockThreads) {
    int off = 0;  // the padding position reads a valid chunk; its A half is zeroed
    if (PAIRED && q < p.RS) {
      const int r = q / p.pairs;
      off = r * p.row_chunks + (q - r * p.pairs);
    } else if (q < p.RS) {
      const int r = q / p.S, s = q - r * p.S;
      off = r * p.row_chunks + (s % p.sw) * p.wd + s / p.sw;
    }
    off_tab[q] = off;
  }
  for (int n = tid; n < BN; n += kBlockThreads) bias_s[n] = bias != nullptr ? to_f(bias[k0 + n]) : 0.0f;
#if KILN_HAVE_WGMMA
  if constexpr (WG) fence_proxy_async();  // the weights' stores, visible to wgmma after the loop's first barrier
#endif

  // ldmatrix addressing. A: lanes 0-15 give pixels 0-15 at the step's first window position, lanes 16-31 the
  // same pixels at the second. B (x4 = two n8 tiles): lanes 0-7 / 8-15 rows 0-7 at the first / second
  // position, lanes 16-31 the same for rows 8-15.
  const int px = lane % 16, half = lane / 16;
  const int rstep = p.sh * p.row_chunks;  // one output row down
  const int abase = kRowsPerWarp * warp * rstep + px;
  const uint4* wb = w_s + (lane % 8 + (lane / 16) * 8) * p.ws + (lane / 8) % 2;
  const bool odd = p.RS % 2 == 1;
  const int last = p.ksteps - 1;
  const int g = lane / 4, t4 = lane % 4;  // accumulator layout: rows g and g + 8, columns 2 * t4, 2 * t4 + 1
  // Paired, odd S: lanes 2 and 3 of each quad hold a chunk's second pixel (its channels 4..7); zeroed on the
  // steps whose second position is the last pair (a0 holds even steps, a1 odd ones).
  const bool hi0 = PAIRED && p.zero_hi0 && t4 >= 2, hi1 = PAIRED && p.zero_hi1 && t4 >= 2;

  for (int it = 0; tile < p.tiles; ++it, tile += gridDim.x) {
    uint4* cur = bufs + (it & 1) * p.buf_chunks;
    cp_async_wait_all();
    __syncthreads();  // the patch is in; every warp is done with the other buffer's staging
    const int next = tile + gridDim.x;
    if (next < p.tiles) load_patch<T, C, PAIRED>(bufs + ((it + 1) & 1) * p.buf_chunks, x, p, next);
    cp_async_commit();

    // The wgmma variant's first product overwrites the accumulators: zeroing them here would put ordinary
    // instructions between its products, which ptxas then serializes.
    float acc[MT][2 * NB][4];
    if constexpr (!WG)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2 * NB; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
    const uint4* pa = cur + abase;
    if constexpr (WG) {
#if KILN_HAVE_WGMMA
      wg_steps<T, MT>(acc, pa, rstep, off_tab, half, smem_addr(w_s), p, hi0, hi1);
#endif
    } else {
      uint32_t a0[MT][4], b0[NB][4], a1[MT][4], b1[NB][4];
      // Steps ks (in a0/b0) and ks + 1 (a1/b1) a pair; the loads of a step go out while the one before multiplies.
      // The loop runs the steps before the last two or three, whose loads are unconditional and never the tail:
      // a zeroing select or a skipped load there makes ptxas copy the fragments between registers every step.
      load_frags<MT, NB>(a0, b0, pa + off_tab[half], rstep, wb, p.ws, odd && last == 0, hi0);
      int ks = 0;
      for (; ks + 2 < last; ks += 2) {
        const int off1 = off_tab[2 * (ks + 1) + half], off2 = off_tab[2 * (ks + 2) + half];
        load_frags<MT, NB>(a1, b1, pa + off1, rstep, wb + 2 * (ks + 1), p.ws, false, hi1);
        mma_step<T, MT, NB>(acc, a0, b0);
        load_frags<MT, NB>(a0, b0, pa + off2, rstep, wb + 2 * (ks + 2), p.ws, false, hi0);
        mma_step<T, MT, NB>(acc, a1, b1);
      }
      // Steps ks .. last remain (one to three); a0/b0 hold step ks.
      if (ks + 1 <= last)
        load_frags<MT, NB>(a1, b1, pa + off_tab[2 * (ks + 1) + half], rstep, wb + 2 * (ks + 1), p.ws, odd && ks + 1 == last, hi1);
      mma_step<T, MT, NB>(acc, a0, b0);
      if (ks + 2 <= last) load_frags<MT, NB>(a0, b0, pa + off_tab[2 * last + half], rstep, wb + 2 * last, p.ws, odd, hi0);
      if (ks + 1 <= last) mma_step<T, MT, NB>(acc, a1, b1);
      if (ks + 2 <= last) mma_step<T, MT, NB>(acc, a0, b0);
    }
    __syncthreads();  // every warp is done reading the patch: its buffer becomes the staging area

    // Epilogue: bias, activation, one rounding; staged per warp (64 pixels x 32 channels a pass), then 16-byte
    // stores, 4 lanes a pixel.
    int n, tp, tq;
    tile_coords(p, tile, &n, &tp, &tq);
    uint4* stage = cur + warp * kWarpPixels * SC;
#pragma unroll
    for (int pass = 0; pass < CPR / SC; ++pass) {
      if (POOL && pass > 0) __syncthreads();  // every warp is done pooling the previous pass's tile
      if (!POOL && pass > 0) __syncwarp();  // the previous pass's stores have read the staging area
      // The pass's biases in registers: read inside the loop they would be read again after every staging
      // store (shared memory both, so the compiler cannot keep them).
      float2 bb[SC];
#pragma unroll
      for (int nl = 0; nl < SC; ++nl) bb[nl] = *reinterpret_cast<const float2*>(bias_s + (pass * SC + nl) * 8 + 2 * t4);
      // Relu (every ResNet stem) takes the packed path; the branch is outside the unrolled stores.
      auto stage_pass = [&](auto relu) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nl = 0; nl < SC; ++nl)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int nt = pass * SC + nl, pix = mt * 16 + h * 8 + g;
              const float v0 = acc[mt][nt][2 * h] + bb[nl].x, v1 = acc[mt][nt][2 * h + 1] + bb[nl].y;
              reinterpret_cast<uint32_t*>(stage + pix * SC + (nl ^ stage_swizzle<SC>(pix)))[t4] =
                  decltype(relu)::value ? relu_pack2<T>(v0, v1) : pack2<T>(activate(v0, p), activate(v1, p));
            }
      };
      if (p.relu) stage_pass(std::true_type{});
      else stage_pass(std::false_type{});
      if constexpr (POOL) {  // the pool windows cross warps' rows: the whole tile first
        __syncthreads();
        T* halo_rows = static_cast<T*>(halo);
        pool_tile_pass<T, SC>(cur, p, n, tp, tq, k0 / 8 + pass * SC, y, halo_rows, halo_rows + p.halo_col_offset);
        continue;
      }
      __syncwarp();
#pragma unroll
      for (int k = 0; k < kWarpPixels * SC / 32; ++k) {
        const int i = lane + 32 * k, pix = i / SC, j = i % SC;
        const int oy = tp * kTileRows + kRowsPerWarp * warp + pix / kTileCols, ox = tq * kTileCols + pix % kTileCols;
        if (oy < p.P && ox < p.Q) {
          const uint4 v = stage[pix * SC + (j ^ stage_swizzle<SC>(pix))];
          *reinterpret_cast<uint4*>(y + ((static_cast<int64_t>(n) * p.P + oy) * p.Q + ox) * p.K + k0 + 8 * (pass * SC + j)) = v;
        }
      }
    }
  }
  cp_async_wait_all();  // no copy may be left in flight when the block exits (none is: the last was empty)
}

using StemKernel = void (*)(const void*, const void*, const void*, void*, void*, StemParams);

// A fused pool and the wgmma variant run at BN = 64 only (stem_conv_ineligible and create ask for it): fewer
// variants to compile.
template <class T, bool WG>
StemKernel kernel_for64(int c, bool paired, bool pool) {
  if (pool) return c == 8 ? stem_conv_kernel<T, 8, 64, false, true, WG> : paired ? stem_conv_kernel<T, 4, 64, true, true, WG>
                                                                                 : stem_conv_kernel<T, 4, 64, false, true, WG>;
  return c == 8 ? stem_conv_kernel<T, 8, 64, false, false, WG> : paired ? stem_conv_kernel<T, 4, 64, true, false, WG>
                                                                        : stem_conv_kernel<T, 4, 64, false, false, WG>;
}

template <class T>
StemKernel kernel_for(int c, int bn, bool paired, bool pool, bool wg) {
  if (wg) return kernel_for64<T, true>(c, paired, pool);
  if (bn == 64) return kernel_for64<T, false>(c, paired, pool);
  if (c == 8) return stem_conv_kernel<T, 8, 32, false, false, false>;
  return paired ? stem_conv_kernel<T, 4, 32, true, false, false> : stem_conv_kernel<T, 4, 32, false, false, false>;
}

using HaloKernel = void (*)(void*, const void*, const void*, StemParams, int64_t, int64_t);

class StemConvLayer final : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (nothing_to_do_) return OkStatus();
    const void* x = inputs[0].data;
    const void* b = has_bias_ ? inputs[2].data : nullptr;
    void* y = outputs[0].data;
    // cp.async copies a pixel (C * 2 bytes) at a time and the epilogue stores 16 bytes: the base pointers decide.
    if (!aligned_to(x, static_cast<size_t>(c_) * 2) || !aligned16(y))
      return InvalidArgument(std::string(kOp) + ": needs X aligned to " + std::to_string(c_ * 2) +
                             " bytes and Y to 16 bytes");
    kernel_<<<grid_, kBlockThreads, smem_, h.stream>>>(x, inputs[1].data, b, y, workspace, p_);
    KILN_RETURN_IF_ERROR(launch_status("stem_conv_kernel"));
    if (halo_items_ == 0) return OkStatus();
    const char* ws = static_cast<const char*>(workspace);  // T is 2 bytes (float16, bfloat16)
    halo_kernel_<<<capped_grid(ceil_div(halo_items_, 256), 8), 256, 0, h.stream>>>(y, ws, ws + p_.halo_col_offset * 2, p_,
                                                                                  halo_along_rows_, halo_items_);
    return launch_status("stem_pool_halo_kernel");
  }

  size_t workspace_bytes() const override { return workspace_; }

  StemParams p_;
  StemKernel kernel_ = nullptr;
  HaloKernel halo_kernel_ = nullptr;
  int64_t halo_along_rows_ = 0, halo_items_ = 0;  // the halo kernel's items (see stem_pool_halo_kernel)
  size_t workspace_ = 0;
  dim3 grid_;
  size_t smem_ = 0;
  int c_ = 8;
  bool has_bias_ = false, nothing_to_do_ = false;
};

}  // namespace

// "" when the tactic can run the node, otherwise why not. Reads attributes, dtypes and W's shape (an
// initializer's, known at build time); X's dims may still be symbolic.
std::string stem_conv_ineligible(const LayerSpec& spec) {
  const std::string op = kOp;
  if (spec.attr_int("channels_last", 0) != 1) return op + ": needs channels_last = 1 (NHWC)";
  if (spec.inputs.size() < 2 || !spec.inputs[0].present() || !spec.inputs[1].present()) return op + ": needs X and W";
  const TensorDesc& x = spec.inputs[0];
  const TensorDesc& w = spec.inputs[1];
  if (x.dtype != DType::kFloat16 && x.dtype != DType::kBFloat16)
    return op + ": runs float16 and bfloat16, not " + dtype_name(x.dtype);
  if (spec.inputs.size() > 3 && spec.inputs[3].present()) return op + ": takes no residual input Z";
  const std::string act = spec.attr_string("activation", "");
  if (!act.empty() && act != "Relu" && act != "Clip" && act != "LeakyRelu")
    return op + ": applies Relu, Clip and LeakyRelu, not " + act;
  if (spec.attr_int("group", 1) != 1) return op + ": needs group 1, got " + std::to_string(spec.attr_int("group", 1));
  for (int64_t d : spec.attr_ints("dilations", {1, 1}))
    if (d != 1) return op + ": needs dilations of 1, got " + shape_to_string(spec.attr_ints("dilations"));
  if (!x.has_rank || !w.has_rank || x.shape.size() != 4 || w.shape.size() != 4)
    return op + ": needs a 2-D convolution (X and W of rank 4)";
  if (!w.is_static()) return op + ": needs W's shape";
  const Shape& ws = w.shape;  // [K, R, S, C]
  if (ws[3] != 4 && ws[3] != 8) return op + ": needs 4 or 8 input channels, W is " + shape_to_string(ws);
  if (ws[0] % 32 != 0 || ws[0] == 0) return op + ": needs output channels a multiple of 32, W is " + shape_to_string(ws);
  if (ws[1] > kMaxKernel || ws[2] > kMaxKernel) return op + ": needs a kernel of at most 7x7, W is " + shape_to_string(ws);
  const std::vector<int64_t> strides = spec.attr_ints("strides", {1, 1});
  if (strides.size() != 2 || strides[0] > kMaxStride || strides[1] > kMaxStride || strides[0] < 1 || strides[1] < 1)
    return op + ": needs 2 strides of 1 to " + std::to_string(kMaxStride) + ", got " + shape_to_string(strides);
  if (spec.has_attr("pool")) {  // fuse_conv_pool's, which only this tactic runs
    if (spec.attr_string("pool", "") != "max" || spec.attr_ints("pool_kernel_shape") != std::vector<int64_t>{3, 3} ||
        spec.attr_ints("pool_strides") != std::vector<int64_t>{2, 2} || spec.attr_ints("pool_pads") != std::vector<int64_t>{1, 1, 1, 1})
      return op + ": fuses a 3x3 max pool of strides 2 and pads 1 only, got pool '" + spec.attr_string("pool", "") +
             "' kernel " + shape_to_string(spec.attr_ints("pool_kernel_shape")) + " strides " +
             shape_to_string(spec.attr_ints("pool_strides")) + " pads " + shape_to_string(spec.attr_ints("pool_pads"));
    if (ws[0] % 64 != 0) return op + ": fuses a pool with output channels a multiple of 64, W is " + shape_to_string(ws);
  }
  const StemLayout l =
      layout_for(ws[1], ws[2], strides[0], strides[1], ws[0] % 64 == 0 ? 64 : 32, paired_layout(ws[3], ws[2], strides[1]),
                 spec.has_attr("pool"), false);
  if (l.bytes > kSmemCap)
    return op + ": strides " + shape_to_string(strides) + " and W " + shape_to_string(ws) + " need " + std::to_string(l.bytes) +
           " bytes of shared memory, over " + std::to_string(kSmemCap);
  return "";
}

// The layer at concrete shapes (the caller ran FusedConv's check first).
Result<std::unique_ptr<Layer>> create_stem_conv(const LayerSpec& spec, const CudaHandles&, bool wg) {
  const std::string op = wg ? std::string(kOp) + " (wgmma variant cuda.conv.stem.wgmma)" : std::string(kOp);
  if (std::string why = stem_conv_ineligible(spec); !why.empty()) return Unsupported(why);
  if (wg && spec.inputs[1].shape[0] % 64 != 0)
    return Unsupported(op + ": needs output channels a multiple of 64, W is " + shape_to_string(spec.inputs[1].shape));
  if (wg && !device_is_sm90()) return Unsupported(op + ": needs a device of compute capability 9.0");
  const TensorDesc& xd = spec.inputs[0];
  const TensorDesc& wd = spec.inputs[1];
  if (!xd.is_static()) return InvalidArgument(op + ": create needs concrete shapes");
  const Shape& xs = xd.shape;  // [N, H, W, C]
  const Shape& ws = wd.shape;  // [K, R, S, C]
  cudnn_conv::Geometry g;
  if (std::string why = cudnn_conv::conv_geometry(spec, {xs[0], xs[3], xs[1], xs[2]}, {ws[0], ws[3], ws[1], ws[2]}, &g, op);
      !why.empty())
    return InvalidArgument(why);
  auto layer = std::make_unique<StemConvLayer>();
  layer->has_bias_ = spec.inputs.size() > 2 && spec.inputs[2].present();
  layer->c_ = static_cast<int>(ws[3]);
  if (g.N == 0 || g.out[0] == 0 || g.out[1] == 0) {
    layer->nothing_to_do_ = true;
    return std::unique_ptr<Layer>(std::move(layer));
  }
  constexpr int64_t kDimCap = int64_t(1) << 24;  // keeps every in-tile index of the kernel in int
  for (int64_t v : {xs[1], xs[2], g.pad_begin[0], g.pad_begin[1]})
    if (v > kDimCap) return Unsupported(op + ": X " + shape_to_string(xs) + " or its pads are over 2^24");
  const int bn = ws[0] % 64 == 0 ? 64 : 32;
  const bool paired = paired_layout(ws[3], ws[2], g.strides[1]);
  const StemLayout l = layout_for(ws[1], ws[2], g.strides[0], g.strides[1], bn, paired, spec.has_attr("pool"), wg);
  StemParams& p = layer->p_;
  p.H = static_cast<int>(xs[1]);
  p.W = static_cast<int>(xs[2]);
  p.P = static_cast<int>(g.out[0]);
  p.Q = static_cast<int>(g.out[1]);
  p.K = static_cast<int>(ws[0]);
  p.R = static_cast<int>(ws[1]);
  p.S = static_cast<int>(ws[2]);
  p.sh = static_cast<int>(g.strides[0]);
  p.sw = static_cast<int>(g.strides[1]);
  p.pad_h = static_cast<int>(g.pad_begin[0]);
  p.pad_w = static_cast<int>(g.pad_begin[1]);
  p.pairs = paired ? (p.S + 1) / 2 : 0;
  p.RS = paired ? p.R * p.pairs : p.R * p.S;
  // The pair past an odd S is the second position of every step (pairs 2) or of odd steps only (pairs 4).
  p.zero_hi1 = paired && p.S % 2 == 1;
  p.zero_hi0 = p.zero_hi1 && p.pairs == 2;
  p.ksteps = l.ksteps;
  p.kq = l.kq;
  p.ws = l.ws;
  p.w_chunks = l.w_chunks;
  p.prow = l.prow;
  p.pcol = l.pcol;
  p.wd = l.wd;
  p.row_chunks = l.row_chunks;
  p.buf_chunks = l.buf_chunks;
  p.tiles_p = static_cast<int>(ceil_div(p.P, kTileRows));
  p.tiles_q = static_cast<int>(ceil_div(p.Q, kTileCols));
  const int64_t tiles = g.N * p.tiles_p * p.tiles_q;
  if (tiles > INT32_MAX) return Unsupported(op + ": " + std::to_string(tiles) + " output tiles are over 2^31 - 1");
  p.tiles = static_cast<int>(tiles);
  const std::string act = spec.attr_string("activation", "");
  p.lo = act == "Relu" ? 0.0f : act == "Clip" ? spec.attr_float("activation_min", -INFINITY) : -INFINITY;
  p.hi = act == "Clip" ? spec.attr_float("activation_max", INFINITY) : INFINITY;
  p.slope = act == "LeakyRelu" ? spec.attr_float("activation_alpha", 0.01f) : 1.0f;
  p.relu = act == "Relu";

  const bool pool = spec.has_attr("pool");
  if (pool) {  // 3x3, stride 2, pads 1 (stem_conv_ineligible): floor((P - 1) / 2) + 1
    p.PH = (p.P - 1) / 2 + 1;
    p.PW = (p.Q - 1) / 2 + 1;
    const Shape want = {xs[0], p.PH, p.PW, p.K};
    if (spec.outputs.empty() || spec.outputs[0].shape != want)
      return InvalidArgument(op + ": the output must be the pooled shape " + shape_to_string(want) + ", got " +
                             (spec.outputs.empty() ? std::string("none") : shape_to_string(spec.outputs[0].shape)));
    const PoolHalos halos = halos_of(g.N, p);
    p.halo_col_offset = static_cast<int64_t>(halos.row_elems);
    layer->workspace_ = (halos.row_elems + halos.col_elems) * 2;
    const int64_t ck = p.K / 8;
    layer->halo_along_rows_ = g.N * ((p.PH - 1) / 8) * p.PW * ck;
    layer->halo_items_ = layer->halo_along_rows_ + g.N * p.PH * ((p.PW - 1) / 8) * ck;
    layer->halo_kernel_ =
        xd.dtype == DType::kFloat16 ? HaloKernel{stem_pool_halo_kernel<__half>} : HaloKernel{stem_pool_halo_kernel<__nv_bfloat16>};
  }
  layer->kernel_ = xd.dtype == DType::kFloat16 ? kernel_for<__half>(layer->c_, bn, paired, pool, wg)
                                               : kernel_for<__nv_bfloat16>(layer->c_, bn, paired, pool, wg);
  layer->smem_ = l.bytes;
  int dev = 0, optin = 0, per_sm = 0;
  KILN_CUDA_TRY(cudaGetDevice(&dev));
  KILN_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (l.bytes > static_cast<size_t>(optin))
    return Unsupported(op + ": needs " + std::to_string(l.bytes) + " bytes of shared memory, the device allows " + std::to_string(optin));
  // The device's cap, not this layer's need: the attribute belongs to the kernel, which another stem of other
  // geometry may launch with more shared memory (the last create would otherwise make its launches fail).
  KILN_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(layer->kernel_), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     optin));
  KILN_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, layer->kernel_, kBlockThreads, l.bytes));
  if (per_sm < 1) return Unsupported(op + ": no block fits on an SM");
  // Persistent blocks: as many as run at once, split over the output-channel blocks (grid.y).
  const int kblocks = p.K / bn;
  if (kblocks > 65535) return Unsupported(op + ": " + std::to_string(p.K) + " output channels are too many");
  const int64_t resident = std::max<int64_t>(1, static_cast<int64_t>(sm_count()) * per_sm / kblocks);
  layer->grid_ = dim3(static_cast<unsigned>(std::min<int64_t>(tiles, resident)), static_cast<unsigned>(kblocks));
  return std::unique_ptr<Layer>(std::move(layer));
}

}  // namespace kiln::cuda
