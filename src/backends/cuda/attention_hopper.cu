// kiln.FusedAttention's Hopper kernel (tactics "cuda.flash.wgmma.pipe", ".pipe.staggered", "cuda.flash.wgmma",
// ".lockstep" and ".short", chosen in attention.cu): FlashAttention's
// forward with the warpgroup matrix instructions of sm_90a (wgmma.mma_async), float16 / bfloat16, head dims 64
// and 128. mma.sync, which the FlashAttention-2 kernel in attention.cu uses, cannot feed an H100's tensor cores.
//
// A block of 256 threads (two warpgroups) owns 128 query rows of one (batch, head), 64 per warpgroup. Every
// thread copies (cp.async, 16 bytes) the Q tile once and the key and value tiles of kKeys keys (three stages,
// the next tile loading while this one is used) into shared memory, in the layout wgmma reads with the
// 128-byte swizzle: a tile of R rows and D columns is D / 64 slabs of R rows of 128 bytes (64 elements), and
// the 16-byte chunk c of row r sits at chunk c ^ (r % 8) of its row. Each slab is 1024-byte aligned, since the
// hardware applies the swizzle to address bits [4, 7) ^ [7, 10).
// - S = Q K^T: m64n{kKeys}k16, A = Q and B = K from shared memory, both K-major (the head dim contiguous);
//   k-step s reads slab s / 4 from byte 32 * (s % 4) of its rows.
// - The online softmax runs on S's accumulator fragments in registers as in attention.cu's kernel, and
//   P (converted to T) stays there: the accumulator layout of m64nN is the A-from-registers layout of m64k16.
// - O += P V: m64n{D}k16 with A = P from registers and B = V from shared memory. V's tile is [keys, D], D
//   contiguous: B is MN-major, read with the transpose bit; its 64-column slabs are LBO apart and its groups
//   of 8 keys 1024 bytes (SBO).
// Five schedules (WgmmaSchedule, above the kernel): "cuda.flash.wgmma.pipe" overlaps each warpgroup's softmax
// with its own previous P V (FlashAttention-3's intra-warpgroup pipelining; ".pipe.staggered" with the
// warpgroups half a step apart); "cuda.flash.wgmma" staggers the two warpgroups by half a tile so that one's
// softmax overlaps the other's products; ".lockstep" runs them together, waiting for each product
// (wgmma.wait_group 0) before reading its accumulators; ".short" is for keys that fit one tile (BERT's
// sequence 128), where nothing within a block can overlap: two blocks share an SM instead.
//
// The wgmma code exists only in the sm_90a pass; the build also embeds compute_90 PTX, where the kernel is a
// trap (the layer only picks this tactic on a device of compute capability 9.0, which loads the sm_90a code).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "backends/cuda/attention_params.cuh"
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/tensor_map.h"
#include "backends/cuda/tma_sm90.cuh"
#include "backends/cuda/wgmma_sm90.cuh"

namespace kiln::cuda {
namespace {

using namespace sm90;

constexpr int kWgThreads = 256;  // two warpgroups
constexpr int kQRows = 128;      // query rows a block, 64 a warpgroup
constexpr int kKeys = 128;       // keys a tile

// K and V tiles in shared memory (see the kernel's loop): three, or one for kShort, whose one tile is all the
// keys; and the blocks an SM runs at once: kShort's 49 KiB of shared memory and at most 128 registers a
// thread let two share an SM, so that one block's loads overlap the other's products (at sequence 128 a block
// has one tile: its loads and its products cannot overlap within it).
__host__ __device__ constexpr int stages_of(WgmmaSchedule sched) { return sched == WgmmaSchedule::kShort ? 1 : 3; }
__host__ __device__ constexpr int blocks_per_sm(WgmmaSchedule sched) { return sched == WgmmaSchedule::kShort ? 2 : 1; }

template <int D, int STAGES>
constexpr size_t wgmma_smem_bytes() {
  // Q, the stages of K and of V, the stages of a key mask's slice (see key_mask_stageable), and 1024 bytes to
  // align the start to the swizzle's period: 225.75 KiB at D 128 and three stages, under the 227 KiB a block
  // may have.
  return static_cast<size_t>(kQRows + 2 * STAGES * kKeys) * D * 2 + STAGES * kKeys * 2 + 1024;
}
static_assert(wgmma_smem_bytes<128, 3>() <= 227 * 1024);
static_assert(2 * wgmma_smem_bytes<64, 1>() <= 227 * 1024);

#if KILN_HAVE_WGMMA

// 2^x on the special-function unit, subnormal results flushed to 0 (exp2f adds a rescaling around it for them;
// a probability under 2^-126 is 0 to a softmax). 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Byte offset of the 16-byte chunk c of row r in a swizzled tile of ROWS rows (see the top of the file).
template <int ROWS>
__device__ __forceinline__ uint32_t chunk_offset(int r, int c) {
  return (c / 8) * (ROWS * 128) + r * 128 + (((c % 8) ^ (r % 8)) * 16);
}

// Rows [0, ROWS) of an operand from `src` (rows at or past `len` zero-filled) into a swizzled tile. Thread x
// copies chunk x % (D / 8) of rows x / (D / 8) + i * kRowStep: a fixed trip count, and the shared-memory offset
// and the swizzle (row % 8 is the same in every pass) computed once, so each chunk of a whole tile costs an
// add, and of the last one a compare and selects too (the tile is loaded while the tensor cores run, from the
// same issue slots as the softmax).
template <class T, int D, int ROWS>
__device__ __forceinline__ void load_tile_sw128(unsigned char* tile, const T* src, int64_t seq_stride, int len) {
  constexpr int kRowChunks = D / 8, kRowStep = kWgThreads / kRowChunks;
  static_assert(ROWS % kRowStep == 0 && kRowStep % 8 == 0);
  const int r0 = threadIdx.x / kRowChunks, cc = threadIdx.x % kRowChunks;
  const uint32_t dst = smem_addr(tile) + chunk_offset<ROWS>(r0, cc);
  const T* from = src + r0 * seq_stride + cc * 8;
  const int64_t step = kRowStep * seq_stride;
  if (len >= ROWS) {  // a whole tile (all but the last): no row to test
#pragma unroll
    for (int i = 0; i < ROWS / kRowStep; ++i) cp_async16(dst + i * kRowStep * 128, from + i * step, true);
    return;
  }
#pragma unroll
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    const bool valid = r0 + i * kRowStep < len;
    cp_async16(dst + i * kRowStep * 128, valid ? from + i * step : src, valid);
  }
}

// A key mask's slice for the tile at key0 (kKeys elements, 16 bytes a thread of the first kKeys / 8), copied
// with the tile's K and V; chunks past the keys are zero-filled (their logits are -inf by the bounds test).
template <class T>
__device__ __forceinline__ void load_key_mask(unsigned char* slice, const T* mask_row, int key0, int Sk) {
  const int c = threadIdx.x;
  if (c < kKeys / 8) {
    const bool valid = key0 + 8 * c < Sk;
    cp_async16(slice + 16 * c, valid ? mask_row + key0 + 8 * c : mask_row, valid);
  }
}

// S = Q K^T over the head dim (k16 steps), issued and committed as one group, not waited for.
template <class T, int D>
__device__ __forceinline__ void wgmma_qk_issue(float (&s)[kKeys / 2], uint32_t q_addr, uint32_t k_addr) {
  const uint64_t qd = sw128_desc(q_addr, 16, 1024), kd = sw128_desc(k_addr, 16, 1024);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    wgmma_ss<T, kKeys>(s, desc_advance(qd, (ks / 4) * (kQRows * 128) + (ks % 4) * 32),
                       desc_advance(kd, (ks / 4) * (kKeys * 128) + (ks % 4) * 32), ks > 0);
  }
  wgmma_commit();
}

// O += P V over one tile's keys (k16 steps), P in registers, V's tile at v_addr; committed, not waited for.
template <class T, int D>
__device__ __forceinline__ void wgmma_pv_issue(float (&o)[D / 2], const uint32_t (&pf)[kKeys / 16][4],
                                               uint32_t v_addr) {
  const uint64_t vd = sw128_desc(v_addr, kKeys * 128, 1024);
#pragma unroll
  for (int u = 0; u < kKeys / 16; ++u) wgmma_rs_tb<T, D>(o, pf[u], desc_advance(vd, u * 16 * 128));
  wgmma_commit();
}

// O += P V, waited for.
template <class T, int D>
__device__ __forceinline__ void wgmma_pv(float (&o)[D / 2], const uint32_t (&pf)[kKeys / 16][4], uint32_t v_addr) {
  wgmma_fence();
  wgmma_pv_issue<T, D>(o, pf, v_addr);
  wgmma_wait<0>();
  order_registers(o);
}

// The running softmax state of this thread's two rows (a: lane / 4 of its warp's 16, b: 8 below).
struct RowState {
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
};

// One tile's S (in registers) to P = exp2(logit - running max), in place, as floats; updates the running max
// and sum and returns in alpha_* the factor O must be rescaled by.
//
// Logits in base 2, masked. Only a tile that crosses the end of the keys or the causal diagonal needs the
// bounds test, and only a mask the mask's reads: the rest (most tiles) take the first loop, free of
// per-element branches, which leaves S unscaled (`sc`, the factor still to apply, is folded into the
// exponent's FFMA; with a positive scale the maximum of S scaled is the scaled maximum). A key mask staged in
// shared memory (key_mask: the tile's slice, else null) is read from there, one value for both rows.
template <class T>
__device__ __forceinline__ void online_softmax(float (&s)[kKeys / 2], RowState& st, float& alpha_a, float& alpha_b,
                                               const T* mask, const T* key_mask, const AttentionParams& p, int b,
                                               int h, int key0, int row_a, int row_b, int wg_row0, int lane) {
  const bool edge = key0 + kKeys > p.Sk || (p.causal && key0 + kKeys - 1 > wg_row0);
  const bool plain = !edge && !p.has_mask && p.scale_log2 > 0.0f;
  const float sc = plain ? p.scale_log2 : 1.0f;
  float tmax_a = -INFINITY, tmax_b = -INFINITY;
  if (plain) {
#pragma unroll
    for (int t = 0; t < kKeys / 8; ++t) {
      tmax_a = fmaxf(tmax_a, fmaxf(s[4 * t + 0], s[4 * t + 1]));
      tmax_b = fmaxf(tmax_b, fmaxf(s[4 * t + 2], s[4 * t + 3]));
    }
    tmax_a *= sc;
    tmax_b *= sc;
  } else if (key_mask != nullptr) {
    // The staged key mask: its two keys of each n8 slice read once for both rows, all before any use and with
    // no branch between them (the bounds test, on an edge tile only, after).
    float m[kKeys / 4];
#pragma unroll
    for (int t = 0; t < kKeys / 8; ++t) {
      m[2 * t] = to_f(key_mask[t * 8 + 2 * (lane % 4)]) * kAttentionLog2e;
      m[2 * t + 1] = to_f(key_mask[t * 8 + 2 * (lane % 4) + 1]) * kAttentionLog2e;
    }
#pragma unroll
    for (int t = 0; t < kKeys / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = fmaf(s[4 * t + e], p.scale_log2, m[2 * t + e % 2]);
        if (edge) {
          const int j = key0 + t * 8 + 2 * (lane % 4) + (e % 2);
          if (j >= p.Sk || (p.causal && j > (e < 2 ? row_a : row_b))) x = -INFINITY;
        }
        s[4 * t + e] = x;
        if (e < 2) tmax_a = fmaxf(tmax_a, x);
        else tmax_b = fmaxf(tmax_b, x);
      }
    }
  } else {
#pragma unroll
    for (int t = 0; t < kKeys / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = key0 + t * 8 + 2 * (lane % 4) + (e % 2);
        const int i = e < 2 ? row_a : row_b;
        float x = s[4 * t + e] * p.scale_log2;
        if (edge && (j >= p.Sk || (p.causal && j > i))) x = -INFINITY;
        else if (p.has_mask && i < p.Sq) x += mask_at(mask, p, b, h, i, j) * kAttentionLog2e;
        s[4 * t + e] = x;
        if (e < 2) tmax_a = fmaxf(tmax_a, x);
        else tmax_b = fmaxf(tmax_b, x);
      }
    }
  }
#pragma unroll
  for (int off = 1; off < 4; off *= 2) {
    tmax_a = fmaxf(tmax_a, __shfl_xor_sync(0xffffffffu, tmax_a, off));
    tmax_b = fmaxf(tmax_b, __shfl_xor_sync(0xffffffffu, tmax_b, off));
  }
  // A max of -inf (every logit so far masked) is used as 0, so that exp2(-inf - max) is 0, not NaN.
  const float mnew_a = fmaxf(st.m_a, tmax_a), mnew_b = fmaxf(st.m_b, tmax_b);
  const float use_a = mnew_a == -INFINITY ? 0.0f : mnew_a, use_b = mnew_b == -INFINITY ? 0.0f : mnew_b;
  alpha_a = fast_exp2(st.m_a - use_a);
  alpha_b = fast_exp2(st.m_b - use_b);
  st.m_a = mnew_a;
  st.m_b = mnew_b;
  st.l_a *= alpha_a;
  st.l_b *= alpha_b;
#pragma unroll
  for (int t = 0; t < kKeys / 8; ++t) {
    s[4 * t + 0] = fast_exp2(fmaf(s[4 * t + 0], sc, -use_a));
    s[4 * t + 1] = fast_exp2(fmaf(s[4 * t + 1], sc, -use_a));
    s[4 * t + 2] = fast_exp2(fmaf(s[4 * t + 2], sc, -use_b));
    s[4 * t + 3] = fast_exp2(fmaf(s[4 * t + 3], sc, -use_b));
    st.l_a += s[4 * t + 0] + s[4 * t + 1];
    st.l_b += s[4 * t + 2] + s[4 * t + 3];
  }
}

template <int D>
__device__ __forceinline__ void rescale_rows(float (&o)[D / 2], float alpha_a, float alpha_b) {
#pragma unroll
  for (int t = 0; t < D / 8; ++t) {
    o[4 * t + 0] *= alpha_a;
    o[4 * t + 1] *= alpha_a;
    o[4 * t + 2] *= alpha_b;
    o[4 * t + 3] *= alpha_b;
  }
}

// P packed as the A operand of P V: k16 step u covers n8 slices 2u and 2u + 1, registers {slice 2u row a,
// slice 2u row b, slice 2u + 1 row a, slice 2u + 1 row b}.
template <class T>
__device__ __forceinline__ void pack_p(const float (&s)[kKeys / 2], uint32_t (&pf)[kKeys / 16][4]) {
#pragma unroll
  for (int t = 0; t < kKeys / 8; ++t) {
    pf[t / 2][(t % 2) * 2 + 0] = pack2<T>(s[4 * t + 0], s[4 * t + 1]);
    pf[t / 2][(t % 2) * 2 + 1] = pack2<T>(s[4 * t + 2], s[4 * t + 3]);
  }
}

#endif  // KILN_HAVE_WGMMA

// The schedules (WgmmaSchedule, attention_params.cuh):
// - kLockstep: per tile, both warpgroups issue S = Q K^T, wait, run the softmax, issue P V, wait.
// - kStagger: the second warpgroup issues a tile's P V at the start of the next tile instead of at the end of
//   its own, so that after each barrier one warpgroup's products overlap the other's softmax
//   (FlashAttention-3's "ping-pong", by schedule rather than by named barriers).
// - kPipelined: FlashAttention-3's intra-warpgroup overlap. Each warpgroup issues tile j's S = Q K^T and then
//   tile j - 1's P V as two commit groups, waits for the first only (wait_group 1) and runs tile j's softmax
//   while the tensor cores do the P V; then waits for the P V, rescales O and packs tile j's P, whose P V
//   goes with tile j + 1's S. The softmax leaves P as floats in S's registers until then: the registers of
//   the P in flight are the wgmma's until it completes. The next tile's loads are issued after the products,
//   so that their address arithmetic does not delay them.
// - kPipelinedStaggered: kPipelined with the second warpgroup half a step behind the first (see the loop).
// - kShort: the keys are one tile (Sk <= kKeys): Q, K and the mask's slice load as one cp.async group and V as
//   a second, so that S = Q K^T and the softmax run while V arrives; one stage, two blocks an SM.
template <class T, int D, WgmmaSchedule SCHED>
__global__ void __launch_bounds__(kWgThreads, blocks_per_sm(SCHED))
    wgmma_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const T* __restrict__ mask, T* __restrict__ y, AttentionParams p) {
#if KILN_HAVE_WGMMA
  constexpr int kSRegs = kKeys / 2;  // m64n{kKeys} accumulators a thread
  constexpr int kORegs = D / 2;      // m64n{D}
  constexpr int kQBytes = kQRows * D * 2, kTileBytes = kKeys * D * 2;
  constexpr bool kPipe = SCHED == WgmmaSchedule::kPipelined || SCHED == WgmmaSchedule::kPipelinedStaggered;
  constexpr bool kOneTile = SCHED == WgmmaSchedule::kShort;
  constexpr int kStages = stages_of(SCHED);
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw);
  unsigned char* const smem = smem_raw + (((raw + 1023) & ~1023u) - raw);
  unsigned char* const q_tile = smem;
  auto k_tile = [&](int stage) { return smem + kQBytes + stage * kTileBytes; };
  auto v_tile = [&](int stage) { return smem + kQBytes + (kStages + stage) * kTileBytes; };
  auto mask_slice = [&](int stage) { return smem + kQBytes + 2 * kStages * kTileBytes + stage * kKeys * 2; };

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  // Under a causal mask the last query blocks have the most keys: the grid's first blocks take them, so that
  // the short ones fill the last wave.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kQRows;
  const int wg_row0 = q0 + wg * 64;
  const T* qb = q + b * p.q.batch + h * p.q.head;
  const T* kb = k + b * p.k.batch + h * p.k.head;
  const T* vb = v + b * p.v.batch + h * p.v.head;
  const T* mask_row = p.key_mask ? mask + b * p.mask_strides[0] + h * p.mask_strides[1] : nullptr;
  // The staged key mask of the tile in `stage`, for online_softmax (null: read the mask from global memory).
  auto key_mask = [&](int stage) { return p.key_mask ? reinterpret_cast<const T*>(mask_slice(stage)) : nullptr; };

  // Causal: the block's last row sees keys up to itself, the warpgroup's last row up to wg_row0 + 63; the
  // warpgroup skips the products of tiles wholly past that (all their logits would be -inf).
  const int key_end = p.causal ? min(p.Sk, q0 + kQRows) : p.Sk;
  const int wg_key_end = p.causal ? min(p.Sk, wg_row0 + 64) : p.Sk;
  const int n_tiles = (key_end + kKeys - 1) / kKeys;

  load_tile_sw128<T, D, kQRows>(q_tile, qb + static_cast<int64_t>(q0) * p.q.seq, p.q.seq, p.Sq - q0);
  if (n_tiles > 0) {
    load_tile_sw128<T, D, kKeys>(k_tile(0), kb, p.k.seq, p.Sk);
    if (p.key_mask) load_key_mask<T>(mask_slice(0), mask_row, 0, p.Sk);
    if constexpr (kOneTile) cp_async_commit();  // Q, K and the mask: the first group; V the second
    load_tile_sw128<T, D, kKeys>(v_tile(0), vb, p.v.seq, p.Sk);
  }
  cp_async_commit();

  // This thread's rows (as in an m16n8 accumulator, per warp of the warpgroup): r = lane / 4 and r + 8 of
  // the warp's 16; its columns in each n8 slice t of an accumulator: 8t + 2 (lane % 4) and the next.
  const int row_a = wg_row0 + warp * 16 + lane / 4, row_b = row_a + 8;
  float s[kSRegs], o[kORegs];
#pragma unroll
  for (int i = 0; i < kSRegs; ++i) s[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < kORegs; ++i) o[i] = 0.0f;
  RowState st;
  const uint32_t q_addr = smem_addr(q_tile) + wg * 64 * 128;
  uint32_t pf[kKeys / 16][4];  // P of the last tile

  // Tile t sits in stage t % kStages. The loads of tile t + 1 overwrite tile t - 2, which both warpgroups are
  // done with by the barrier of tile t (the deferred P V of tile t - 2 ran, and was waited for, in iteration
  // t - 1; kPipelined: at the top of iteration t).
  auto wait_tile = []() {
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // this tile's K and V are in; both warpgroups are done with tile - 2's stage
  };
  auto load_next = [&](int tile) {
    if (tile + 1 < n_tiles) {
      const int next = (tile + 1) * kKeys, stage = (tile + 1) % kStages;
      load_tile_sw128<T, D, kKeys>(k_tile(stage), kb + static_cast<int64_t>(next) * p.k.seq, p.k.seq, p.Sk - next);
      load_tile_sw128<T, D, kKeys>(v_tile(stage), vb + static_cast<int64_t>(next) * p.v.seq, p.v.seq, p.Sk - next);
      if (p.key_mask) load_key_mask<T>(mask_slice(stage), mask_row, next, p.Sk);
    }
    cp_async_commit();
  };
  float alpha_a, alpha_b;
  if constexpr (kOneTile) {
    // One tile (the layer refuses kShort for Sk > kKeys): O starts at 0, so there is nothing to rescale.
    if (n_tiles > 0) {
      cp_async_wait<1>();  // Q, K and the mask in; V may still be on its way
      fence_proxy_async();
      __syncthreads();
      wgmma_fence();
      wgmma_qk_issue<T, D>(s, q_addr, smem_addr(k_tile(0)));
      wgmma_wait<0>();
      order_registers(s);
      online_softmax<T>(s, st, alpha_a, alpha_b, mask, key_mask(0), p, b, h, 0, row_a, row_b, wg_row0, lane);
      pack_p<T>(s, pf);
      wait_tile();  // V in
      wgmma_pv<T, D>(o, pf, smem_addr(v_tile(0)));
    }
  } else if constexpr (kPipe) {
    // Iteration t waits for the P V of tile t - 2, rescales O to tile t - 1's max and packs tile t - 1's P
    // (left as floats in S's registers by the softmax: the previous P's registers are the in-flight P V's);
    // then issues tile t's S = Q K^T and tile t - 1's P V, waits for S only (wait_group 1), and runs tile t's
    // softmax while the P V runs. The wait_group 0 heads the next iteration rather than ending this one:
    // ptxas schedules such a wait as early as its block allows, which at the end of this one would be before
    // the softmax it should overlap; it does not move it across the loop's back edge.
    //
    // The first tile alone, then the steady state, whose products are issued unconditionally (a wgmma under a
    // branch ptxas cannot prove uniform is serialized), then the last tile's P V, then (causal: the
    // warpgroup's keys end before the block's) the barriers and loads of the other warpgroup's last tiles.
    // Every warpgroup has a first tile: wg_key_end >= 1 where n_tiles >= 1.
    const int wg_tiles = (wg_key_end + kKeys - 1) / kKeys;
    if (n_tiles > 0) {
      wait_tile();
      wgmma_fence();
      wgmma_qk_issue<T, D>(s, q_addr, smem_addr(k_tile(0)));
      load_next(0);
      wgmma_wait<0>();
      order_registers(s);
      online_softmax<T>(s, st, alpha_a, alpha_b, mask, key_mask(0), p, b, h, 0, row_a, row_b, wg_row0, lane);
      // kPipelinedStaggered: the second warpgroup rescales and packs after the barrier, so that the first one's
      // products reach the tensor cores first and the two softmaxes run apart rather than together (on the
      // same special-function units). Its wait stays before the barrier: the loads after it overwrite tile
      // t - 2's V.
      const bool late = SCHED == WgmmaSchedule::kPipelinedStaggered && wg == 1;
      for (int tile = 1; tile < wg_tiles; ++tile) {
        wgmma_wait<0>();  // the P V of tile - 2
        order_registers(o);
        if (!late) {
          rescale_rows<D>(o, alpha_a, alpha_b);  // (after tile 0, O is 0 and alpha 0)
          pack_p<T>(s, pf);
        }
        wait_tile();
        if (late) {
          rescale_rows<D>(o, alpha_a, alpha_b);
          pack_p<T>(s, pf);
        }
        wgmma_fence();
        wgmma_qk_issue<T, D>(s, q_addr, smem_addr(k_tile(tile % kStages)));
        wgmma_pv_issue<T, D>(o, pf, smem_addr(v_tile((tile - 1) % kStages)));
        load_next(tile);
        wgmma_wait<1>();  // S in; the P V of tile - 1 runs on during the softmax
        order_registers(s);
        online_softmax<T>(s, st, alpha_a, alpha_b, mask, key_mask(tile % kStages), p, b, h, tile * kKeys, row_a, row_b,
                          wg_row0, lane);
      }
      wgmma_wait<0>();
      order_registers(o);
      rescale_rows<D>(o, alpha_a, alpha_b);
      pack_p<T>(s, pf);
      wgmma_pv<T, D>(o, pf, smem_addr(v_tile((wg_tiles - 1) % kStages)));
    }
    for (int tile = wg_tiles; tile < n_tiles; ++tile) {
      wait_tile();
      load_next(tile);
    }
  } else {
    // P of the last tile, and (kStagger, second warpgroup) whether its P V is still to issue, from which stage.
    const bool defer = SCHED == WgmmaSchedule::kStagger && wg == 1;
    bool pending = false;
    int pending_stage = 0;
    for (int tile = 0; tile < n_tiles; ++tile) {
      wait_tile();
      load_next(tile);
      if (pending) {  // the previous tile's P V; O complete before this tile's rescale
        wgmma_pv<T, D>(o, pf, smem_addr(v_tile(pending_stage)));
        pending = false;
      }
      const int key0 = tile * kKeys;
      if (key0 >= wg_key_end) continue;
      wgmma_fence();
      wgmma_qk_issue<T, D>(s, q_addr, smem_addr(k_tile(tile % kStages)));
      wgmma_wait<0>();
      order_registers(s);
      online_softmax<T>(s, st, alpha_a, alpha_b, mask, key_mask(tile % kStages), p, b, h, key0, row_a, row_b, wg_row0,
                        lane);
      rescale_rows<D>(o, alpha_a, alpha_b);
      pack_p<T>(s, pf);
      // O += P V, now or (deferring) after the next barrier.
      if (defer) {
        pending = true;
        pending_stage = tile % kStages;
      } else {
        wgmma_pv<T, D>(o, pf, smem_addr(v_tile(tile % kStages)));
      }
    }
    if (pending) wgmma_pv<T, D>(o, pf, smem_addr(v_tile(pending_stage)));
  }
  cp_async_wait_all();
  store_rows<T, D>(reinterpret_cast<const float(&)[D / 8][4]>(o), st.l_a, st.l_b, p, y, b, h, row_a, row_b, lane);
#else
  __trap();  // not an sm_90a device: the layer never launches this
#endif
}

// Whether the kernel stages the mask per tile in shared memory (with K and V, one cp.async chunk of 8 keys a
// thread) instead of reading it element by element from global memory: a padding mask, the same for every
// query row ([B, 1, 1, Sk] and the like), with contiguous keys and each (batch, head) row 16-byte aligned in
// whole chunks. Global reads cost BERT's attention at sequence 128 more than its products.
bool key_mask_stageable(const AttentionParams& p, const void* mask) {
  const int64_t* st = p.mask_strides;
  return p.has_mask && st[2] == 0 && st[3] == 1 && p.Sk % 8 == 0 && st[0] % 8 == 0 && st[1] % 8 == 0 &&
         reinterpret_cast<uintptr_t>(mask) % 16 == 0;
}

// ---------------------------------------------------------------------------------------------------------
// ".stream": the one-tile case of ".short" (head dim 64, at most kKeys keys: BERT's sequence 128) as a
// persistent, warp-specialized kernel. ".short" runs one (batch, head, query tile) item a block, two blocks
// an SM, and each block loads, computes and stores in turn: Nsight Compute found it latency-bound at BERT-base
// batch 128 (45% of DRAM bandwidth, 0.6 eligible warps a scheduler). Here one block an SM walks items
// blockIdx.x, + gridDim.x, ...: warpgroup 0's first thread copies each item's Q, K and V tiles (TMA, 4-D
// tensor maps over [B, H, S, D] by strides, so both layouts and packed QKV alike; rows past the sequence
// zero-filled) and the key mask's slice (a bulk copy) into a ring of kStreamStages stages, ahead of the
// consumers. Warpgroups 1 and 2 take the block's items in turn (even and odd), so that one's softmax and
// stores overlap the other's products and waits; each runs its item's 128 query rows as two halves of 64,
// ".short"'s steps (S = Q K^T, the softmax, O = P V), releases the stage after the second, and stores each
// half's rows through a staging tile by TMA (clipped at Sq), asynchronously. With an even number of stages,
// a stage always serves the same consumer, so each waits on its own stages only, within one round of them.
// Masks other than a staged key mask (key_mask_stageable) run ".short" (see launch_stream).
// Measured on an H100 at BERT-base batch 128: 54.3 us against ".short"'s 61.3 by ncu (caches flushed first), but
// inside the model, whose packed QKV is partly in L2 when the attention reads it, 0.7-1% slower overall; the
// layer's tactic list leaves it out (attention.cu), so it runs only when named. Prefetching the items four
// rounds ahead into L2 made it slower (65 us; bench/results/bert_attention_rounds_2026-11-25.json).
constexpr int kStreamThreads = 384;  // a producer warpgroup and two consumers
constexpr int kStreamStages = 4;
constexpr int kStreamD = 64;
constexpr int kStreamTileBytes = kKeys * kStreamD * 2;  // Q's 128 rows, or K's or V's 128 keys: one 128-byte slab
constexpr int kStreamStageBytes = 3 * kStreamTileBytes + 1024;  // + the key mask's kKeys elements, 1024-aligned
constexpr int kStreamStagingBytes = 64 * kStreamD * 2;          // a consumer's 64 output rows
constexpr size_t kStreamSmemBytes = kStreamStages * kStreamStageBytes + 2 * kStreamStagingBytes + 1024;
static_assert(kQRows == kKeys && kStreamSmemBytes <= 227 * 1024);
static_assert(kStreamStages % 2 == 0);  // a stage serves one consumer (see above)

template <class T>
__global__ void __launch_bounds__(kStreamThreads, 1)
    stream_attention_kernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                            const __grid_constant__ CUtensorMap map_v, const __grid_constant__ CUtensorMap map_y,
                            const T* __restrict__ mask, AttentionParams p, int items) {
#if KILN_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full[kStreamStages], empty[kStreamStages];
  const uint32_t raw = shared_u32(smem_raw), ring = (raw + 1023) & ~1023u;
  const int wg = threadIdx.x / 128;
  const int q_tiles = (p.Sq + kQRows - 1) / kQRows;
  auto coords = [&](int item, int* q0, int* h, int* b) {
    *q0 = (item % q_tiles) * kQRows;
    *h = (item / q_tiles) % p.H;
    *b = item / (q_tiles * p.H);
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStreamStages; ++s) {
      mbar_init(shared_u32(&full[s]), 1);
      mbar_init(shared_u32(&empty[s]), 4);  // each warp of the consumer that reads it
    }
    mbar_init_fence();
  }
  __syncthreads();

  // The block's n-th item sits in stage n % kStreamStages.
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x != 0) return;
    const int mask_bytes = p.key_mask ? p.Sk * 2 : 0;
    int n = 0;
    for (int item = blockIdx.x; item < items; item += gridDim.x, ++n) {
      const int stage = n % kStreamStages;
      int q0, h, b;
      coords(item, &q0, &h, &b);
      mbar_wait(shared_u32(&empty[stage]), ((n / kStreamStages) & 1) ^ 1);
      const uint32_t st = ring + stage * kStreamStageBytes, bar = shared_u32(&full[stage]);
      mbar_expect_tx(bar, 3 * kStreamTileBytes + mask_bytes);
      tma_load_4d(st, &map_q, 0, q0, h, b, bar);
      tma_load_4d(st + kStreamTileBytes, &map_k, 0, 0, h, b, bar);
      tma_load_4d(st + 2 * kStreamTileBytes, &map_v, 0, 0, h, b, bar);
      if (mask_bytes > 0)
        bulk_load(st + 3 * kStreamTileBytes, mask + b * p.mask_strides[0] + h * p.mask_strides[1], mask_bytes, bar);
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int c = wg - 1;  // this consumer takes the block's items n with n % 2 == c
  const int ct = threadIdx.x % 128, warp = ct / 32, lane = ct % 32;
  const uint32_t staging = ring + kStreamStages * kStreamStageBytes + c * kStreamStagingBytes;
  const float empty_row = p.nan_to_zero ? 0.0f : NAN;
  int n = c;
  for (int item = blockIdx.x + c * gridDim.x; item < items; item += 2 * gridDim.x, n += 2) {
    const int stage = n % kStreamStages;
    int q0, h, b;
    coords(item, &q0, &h, &b);
    const uint32_t st = ring + stage * kStreamStageBytes;
    const T* key_mask =
        p.key_mask ? reinterpret_cast<const T*>(smem_raw + (st - raw) + 3 * kStreamTileBytes) : nullptr;
    const int halves = q0 + 64 < p.Sq ? 2 : 1;  // the tile's second 64 rows, when any is a query row
    mbar_wait(shared_u32(&full[stage]), (n / kStreamStages) & 1);
#pragma unroll 1
    for (int half = 0; half < halves; ++half) {
      const int row0 = q0 + 64 * half;
      const int row_a = row0 + warp * 16 + lane / 4, row_b = row_a + 8;
      float s[kKeys / 2], o[kStreamD / 2];
#pragma unroll
      for (int i = 0; i < kStreamD / 2; ++i) o[i] = 0.0f;
      uint32_t pf[kKeys / 16][4];
      RowState rs;
      float alpha_a, alpha_b;
      wgmma_fence();
      wgmma_qk_issue<T, kStreamD>(s, st + half * 64 * 128, st + kStreamTileBytes);
      wgmma_wait<0>();
      order_registers(s);
      online_softmax<T>(s, rs, alpha_a, alpha_b, mask, key_mask, p, b, h, 0, row_a, row_b, row0, lane);
      pack_p<T>(s, pf);
      wgmma_pv<T, kStreamD>(o, pf, st + 2 * kStreamTileBytes);
      if (half == halves - 1) {
        __syncwarp();
        if (lane == 0) mbar_arrive(shared_u32(&empty[stage]));  // this warp is done with the stage
      }

      // Y = O / l into the staging tile (64 rows of 128 bytes, swizzled as the operands: a warp's stores hit
      // 32 banks), once the previous store has read it; then one TMA store of the 64 rows.
      float l_a = rs.l_a, l_b = rs.l_b;
#pragma unroll
      for (int off = 1; off < 4; off *= 2) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
      }
      const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
      if (ct == 0) bulk_wait_read();
      warpgroup_sync(1 + c);
      const int ra = warp * 16 + lane / 4, rb = ra + 8;
      unsigned char* const out = smem_raw + (staging - raw);
#pragma unroll
      for (int t = 0; t < kStreamD / 8; ++t) {
        const float y0 = l_a > 0.0f ? o[4 * t + 0] * inv_a : empty_row;
        const float y1 = l_a > 0.0f ? o[4 * t + 1] * inv_a : empty_row;
        const float y2 = l_b > 0.0f ? o[4 * t + 2] * inv_b : empty_row;
        const float y3 = l_b > 0.0f ? o[4 * t + 3] * inv_b : empty_row;
        *reinterpret_cast<uint32_t*>(out + ra * 128 + ((t ^ (ra % 8)) * 16) + 4 * (lane % 4)) = pack2<T>(y0, y1);
        *reinterpret_cast<uint32_t*>(out + rb * 128 + ((t ^ (rb % 8)) * 16) + 4 * (lane % 4)) = pack2<T>(y2, y3);
      }
      fence_proxy_async();  // the writes above are read next by the copy engine
      warpgroup_sync(1 + c);
      if (ct == 0) {
        tma_store_4d(&map_y, 0, row0, h, b, staging);
        bulk_commit();
      }
    }
  }
  if (ct == 0) bulk_wait_all();
#else
  __trap();  // not an sm_90a device: the layer never launches this
#endif
}

template <class T, int D, WgmmaSchedule SCHED>
Status opt_in() {
  if (cudaFuncSetAttribute(wgmma_attention_kernel<T, D, SCHED>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(wgmma_smem_bytes<D, stages_of(SCHED)>())) != cudaSuccess)
    return launch_status("wgmma_attention_kernel (shared memory opt-in)");
  return OkStatus();
}

template <class T, int D, WgmmaSchedule SCHED>
Status launch(const AttentionParams& p, const void* q, const void* k, const void* v, const void* mask, void* y,
              cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.Sq, kQRows)), static_cast<unsigned>(p.H),
                  static_cast<unsigned>(p.B));
  AttentionParams staged = p;
  staged.key_mask = key_mask_stageable(p, mask);
  wgmma_attention_kernel<T, D, SCHED><<<grid, kWgThreads, wgmma_smem_bytes<D, stages_of(SCHED)>(), stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(mask),
      static_cast<T*>(y), staged);
  return launch_status("wgmma_attention_kernel");
}

template <class T>
Status opt_in_stream() {
  if (cudaFuncSetAttribute(stream_attention_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kStreamSmemBytes)) != cudaSuccess)
    return launch_status("stream_attention_kernel (shared memory opt-in)");
  return OkStatus();
}

// ".stream" where its copies can run: a key mask staged whole (or none), and operands the tensor maps take
// (16-byte aligned bases, strides of whole 16-byte chunks); otherwise ".short", which runs every one-tile case.
template <class T>
Status launch_stream(const AttentionParams& p, const void* q, const void* k, const void* v, const void* mask, void* y,
                     cudaStream_t stream) {
  AttentionParams staged = p;
  staged.key_mask = key_mask_stageable(p, mask);
  if (p.has_mask && !staged.key_mask) return launch<T, 64, WgmmaSchedule::kShort>(p, q, k, v, mask, y, stream);
  const DType t = std::is_same_v<T, __half> ? DType::kFloat16 : DType::kBFloat16;
  auto encode = [&](CUtensorMap* map, const void* base, const OperandStrides& st, int seq, uint32_t rows) {
    const int64_t dims[4] = {p.D, seq, p.H, p.B};
    const int64_t strides[3] = {st.seq, st.head, st.batch};
    const uint32_t box[4] = {64, rows, 1, 1};
    return encode_tensor_map(map, t, base, 4, dims, strides, box, "stream attention");
  };
  CUtensorMap mq, mk, mv, my;
  if (!encode(&mq, q, p.q, p.Sq, kQRows).ok() || !encode(&mk, k, p.k, p.Sk, kKeys).ok() ||
      !encode(&mv, v, p.v, p.Sk, kKeys).ok() || !encode(&my, y, p.y, p.Sq, 64).ok())
    return launch<T, 64, WgmmaSchedule::kShort>(p, q, k, v, mask, y, stream);
  const int64_t items = ceil_div(p.Sq, kQRows) * p.H * p.B;
  stream_attention_kernel<T><<<capped_grid(items, 1), kStreamThreads, kStreamSmemBytes, stream>>>(
      mq, mk, mv, my, static_cast<const T*>(mask), staged, static_cast<int>(items));
  return launch_status("stream_attention_kernel");
}

}  // namespace

bool wgmma_attention_fits(DType t, int64_t head_dim) {
  return (t == DType::kFloat16 || t == DType::kBFloat16) && (head_dim == 64 || head_dim == 128);
}

// kShort exists for head dim 64 only: at 128, S, O and P need more than the 128 registers a thread of two
// blocks an SM may have (the layer refuses it there).
template <class T, WgmmaSchedule SCHED>
Status opt_in_typed(int head_dim) {
  if constexpr (SCHED == WgmmaSchedule::kStream) {
    const Status fallback = opt_in<T, 64, WgmmaSchedule::kShort>();  // launch_stream's fallback
    return fallback.ok() ? opt_in_stream<T>() : fallback;
  }
  if constexpr (SCHED == WgmmaSchedule::kShort) return opt_in<T, 64, SCHED>();
  else return head_dim == 64 ? opt_in<T, 64, SCHED>() : opt_in<T, 128, SCHED>();
}

template <class T, WgmmaSchedule SCHED>
Status launch_typed(const AttentionParams& p, const void* q, const void* k, const void* v, const void* mask, void* y,
                    cudaStream_t stream) {
  if constexpr (SCHED == WgmmaSchedule::kStream) return launch_stream<T>(p, q, k, v, mask, y, stream);
  if constexpr (SCHED == WgmmaSchedule::kShort) return launch<T, 64, SCHED>(p, q, k, v, mask, y, stream);
  else
    return p.D == 64 ? launch<T, 64, SCHED>(p, q, k, v, mask, y, stream)
                     : launch<T, 128, SCHED>(p, q, k, v, mask, y, stream);
}

template <class T>
Status opt_in_scheduled(int head_dim, WgmmaSchedule sched) {
  switch (sched) {
    case WgmmaSchedule::kLockstep: return opt_in_typed<T, WgmmaSchedule::kLockstep>(head_dim);
    case WgmmaSchedule::kStagger: return opt_in_typed<T, WgmmaSchedule::kStagger>(head_dim);
    case WgmmaSchedule::kPipelinedStaggered: return opt_in_typed<T, WgmmaSchedule::kPipelinedStaggered>(head_dim);
    case WgmmaSchedule::kShort: return opt_in_typed<T, WgmmaSchedule::kShort>(head_dim);
    case WgmmaSchedule::kStream: return opt_in_typed<T, WgmmaSchedule::kStream>(head_dim);
    case WgmmaSchedule::kPipelined: break;
  }
  return opt_in_typed<T, WgmmaSchedule::kPipelined>(head_dim);
}

template <class T>
Status launch_scheduled(WgmmaSchedule sched, const AttentionParams& p, const void* q, const void* k, const void* v,
                        const void* mask, void* y, cudaStream_t stream) {
  switch (sched) {
    case WgmmaSchedule::kLockstep: return launch_typed<T, WgmmaSchedule::kLockstep>(p, q, k, v, mask, y, stream);
    case WgmmaSchedule::kStagger: return launch_typed<T, WgmmaSchedule::kStagger>(p, q, k, v, mask, y, stream);
    case WgmmaSchedule::kPipelinedStaggered:
      return launch_typed<T, WgmmaSchedule::kPipelinedStaggered>(p, q, k, v, mask, y, stream);
    case WgmmaSchedule::kShort: return launch_typed<T, WgmmaSchedule::kShort>(p, q, k, v, mask, y, stream);
    case WgmmaSchedule::kStream: return launch_typed<T, WgmmaSchedule::kStream>(p, q, k, v, mask, y, stream);
    case WgmmaSchedule::kPipelined: break;
  }
  return launch_typed<T, WgmmaSchedule::kPipelined>(p, q, k, v, mask, y, stream);
}

Status opt_in_wgmma_attention(DType t, int head_dim, WgmmaSchedule sched) {
  return t == DType::kFloat16 ? opt_in_scheduled<__half>(head_dim, sched)
                              : opt_in_scheduled<__nv_bfloat16>(head_dim, sched);
}

Status launch_wgmma_attention(DType t, WgmmaSchedule sched, const AttentionParams& p, const void* q, const void* k,
                              const void* v, const void* mask, void* y, cudaStream_t stream) {
  return t == DType::kFloat16 ? launch_scheduled<__half>(sched, p, q, k, v, mask, y, stream)
                              : launch_scheduled<__nv_bfloat16>(sched, p, q, k, v, mask, y, stream);
}

}  // namespace kiln::cuda
