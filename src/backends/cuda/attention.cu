// CUDA layer of the optimizer's kiln.FusedAttention (made by fuse_attention from the exporters'
// MatMul -> scale -> mask -> Softmax -> MatMul): Y = softmax(scale * Q K^T + Mask [+ causal]) V per batch
// and head, without writing the [Sq, Sk] score matrix anywhere.
//
// Three kernels:
// - wgmma_attention_kernel (tactics "cuda.flash.wgmma.pipe", "cuda.flash.wgmma.pipe.staggered",
//   "cuda.flash.wgmma", "cuda.flash.wgmma.lockstep", "cuda.flash.wgmma.short", and ".stream", which the builder is
//   not offered (see the tactic list); attention_hopper.cu): the same
//   algorithm on Hopper's warpgroup matrix instructions (sm_90a), float16 / bfloat16, head dims 64 and 128,
//   in five schedules (".short" and ".stream": head dim 64 and at most 128 keys only); compute capability 9.0 only (the
//   sm_90a code runs nowhere else).
// - flash_attention_kernel (tactics "cuda.flash.br16" .. "cuda.flash.br128"): FlashAttention-2's forward for
//   float16 / bfloat16 and head dims 64 and 128. A block owns BR query rows of one (batch, head), 16 per warp
//   (BR 16 and 32 give short sequences at batch 1 more blocks than the GPU has SMs, not 12 or 24);
//   it streams the keys and values through shared memory in tiles of 64 (cp.async, double-buffered), computes
//   S = Q K^T and O += P V on the tensor cores (mma.sync m16n8k16, float accumulators) and keeps the softmax
//   online: a running row max and sum in registers, O rescaled when the max grows. The score tile never
//   leaves registers: the accumulator layout of S is the A-operand layout of the P V product.
// - attention_rows_kernel (tactic "cuda.attention.rows"): one warp per query row, any float dtype and any head
//   dim up to 256, any strides: the fallback for what the tensor-core kernel does not take (float32 engines,
//   other head dims), and the check on it.
//
// Q, K, V and Y are read with strides (batch, head, sequence; the head dim contiguous), so the two layouts of
// the op, BHSD and BSHD (the projections' own [B, S, H, D], which spares BERT four Transposes a layer), are one
// code path. The additive mask is read with broadcast strides over [B, H, Sq, Sk] from global memory (it is
// small and shared by the heads, so it stays in L2).
//
// Fully masked rows: the running max stays -inf, and a max of -inf is replaced by 0 before exponentiating so
// that exp(-inf - max) is 0, not NaN; at the end the row's sum is 0, and the row is 0 with nan_to_zero, NaN
// without (as softmax over all -inf is).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/attention_params.cuh"
#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

constexpr float kLog2e = kAttentionLog2e;

// ---------------------------------------------------------------------------------------------------------
// The fallback: one warp per query row. Each lane holds up to 8 of the row's head-dim values of q and of the
// output; a key's logit is the warp's sum. The softmax is online as in the tensor-core kernel.

constexpr int kRowsPerBlock = 4;
constexpr int kMaxPerLane = 8;  // head dims up to 256

template <class T>
__global__ void attention_rows_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                      const T* __restrict__ mask, T* __restrict__ y, AttentionParams p) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z;
  if (i >= p.Sq) return;
  const T* qrow = q + b * p.q.batch + h * p.q.head + i * p.q.seq;
  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int d = lane + 32 * e;
    qv[e] = d < p.D ? to_f(qrow[d]) : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int end = p.causal ? min(p.Sk, i + 1) : p.Sk;
  for (int j = 0; j < end; ++j) {
    const T* krow = k + b * p.k.batch + h * p.k.head + j * p.k.seq;
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < p.D) dot += qv[e] * to_f(krow[d]);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    float x = dot * p.scale_log2;
    if (p.has_mask) x += mask_at(mask, p, b, h, i, j) * kLog2e;
    const float m_new = fmaxf(m, x);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m - m_use);
    const float pj = exp2f(x - m_use);
    l = l * alpha + pj;
    m = m_new;
    const T* vrow = v + b * p.v.batch + h * p.v.head + j * p.v.seq;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < p.D) acc[e] = acc[e] * alpha + pj * to_f(vrow[d]);
    }
  }
  const float inv = l > 0.0f ? 1.0f / l : (p.nan_to_zero ? 0.0f : NAN);
  T* yrow = y + b * p.y.batch + h * p.y.head + i * p.y.seq;
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < p.D) yrow[d] = from_f<T>(l > 0.0f ? acc[e] * inv : inv);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The tensor-core kernel.

constexpr int kBlockKeys = 64;  // keys per tile (BC)

// A tile of `rows` x D elements in shared memory, rows of D/8 16-byte chunks; chunk c of row r is stored at
// chunk c ^ (r % 8), so that the eight rows an ldmatrix reads at one chunk hit eight different bank groups.
template <class T, int D>
struct SwizzledTile {
  T* base;
  __device__ __forceinline__ T* chunk(int row, int c) const {
    return base + row * D + ((c ^ (row % 8)) * 8);
  }
};

// Loads rows [row0, row0 + ROWS) of an operand (clamped to `len`; rows past it zero-filled) into a tile.
template <class T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(SwizzledTile<T, D> tile, const T* src, int64_t seq_stride, int row0,
                                          int len) {
  constexpr int kChunks = ROWS * D / 8;
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += THREADS) {
    const int r = c / (D / 8), cc = c % (D / 8);
    const bool valid = row0 + r < len;
    const T* g = src + static_cast<int64_t>(valid ? row0 + r : 0) * seq_stride + cc * 8;
    cp_async16(tile.chunk(r, cc), g, valid);
  }
}

template <class T, int D, int BR>
__global__ void __launch_bounds__(BR * 2) flash_attention_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                                 const T* __restrict__ v, const T* __restrict__ mask,
                                                                 T* __restrict__ y, AttentionParams p) {
  constexpr int kThreads = BR * 2;  // BR / 16 warps
  constexpr int kDTiles = D / 8;    // n8 tiles of the output
  constexpr int kKSteps = D / 16;   // k16 steps of Q K^T
  constexpr int kSTiles = kBlockKeys / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  // Q's tile, then K's two stages, then V's two.
  const SwizzledTile<T, D> q_tile{smem};
  auto k_tile = [&](int stage) { return SwizzledTile<T, D>{smem + (BR + stage * kBlockKeys) * D}; };
  auto v_tile = [&](int stage) { return SwizzledTile<T, D>{smem + (BR + (2 + stage) * kBlockKeys) * D}; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = blockIdx.x * BR;
  const T* qb = q + b * p.q.batch + h * p.q.head;
  const T* kb = k + b * p.k.batch + h * p.k.head;
  const T* vb = v + b * p.v.batch + h * p.v.head;

  // Causal: the block's last query row sees keys up to it; later tiles are all masked.
  const int key_end = p.causal ? min(p.Sk, q0 + BR) : p.Sk;
  const int n_tiles = (key_end + kBlockKeys - 1) / kBlockKeys;

  load_tile<T, D, BR, kThreads>(q_tile, qb + static_cast<int64_t>(q0) * p.q.seq, p.q.seq, 0, p.Sq - q0);
  if (n_tiles > 0) {
    load_tile<T, D, kBlockKeys, kThreads>(k_tile(0), kb, p.k.seq, 0, p.Sk);
    load_tile<T, D, kBlockKeys, kThreads>(v_tile(0), vb, p.v.seq, 0, p.Sk);
  }
  cp_async_commit();

  // This thread's two rows of the warp's 16: r0 = lane / 4 and r0 + 8; its columns in each n8 tile:
  // 2 * (lane % 4) and the next.
  const int row_a = q0 + warp * 16 + lane / 4, row_b = row_a + 8;
  uint32_t qf[kKSteps][4];
  float o[kDTiles][4];
#pragma unroll
  for (int t = 0; t < kDTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  for (int tile = 0; tile < n_tiles; ++tile) {
    cp_async_wait_all();
    __syncthreads();  // this tile's K and V are in; every warp is done with the other stage
    if (tile == 0) {
#pragma unroll
      for (int s = 0; s < kKSteps; ++s)
        ldmatrix_x4(qf[s], q_tile.chunk(warp * 16 + lane % 16, 2 * s + lane / 16));
    }
    if (tile + 1 < n_tiles) {
      const int next = (tile + 1) * kBlockKeys;
      load_tile<T, D, kBlockKeys, kThreads>(k_tile((tile + 1) % 2), kb + static_cast<int64_t>(next) * p.k.seq,
                                            p.k.seq, 0, p.Sk - next);
      load_tile<T, D, kBlockKeys, kThreads>(v_tile((tile + 1) % 2), vb + static_cast<int64_t>(next) * p.v.seq,
                                            p.v.seq, 0, p.Sk - next);
    }
    cp_async_commit();
    const SwizzledTile<T, D> kt = k_tile(tile % 2);
    const SwizzledTile<T, D> vt = v_tile(tile % 2);
    const int key0 = tile * kBlockKeys;

    // S = Q K^T for the warp's 16 rows and the tile's 64 keys.
    float s[kSTiles][4];
#pragma unroll
    for (int t = 0; t < kSTiles; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int t = 0; t < kSTiles; t += 2) {
        uint32_t kf[4];  // b0, b1 of key tile t, then of tile t + 1
        ldmatrix_x4(kf, kt.chunk(t * 8 + lane % 8 + (lane / 16) * 8, 2 * ks + (lane / 8) % 2));
        mma16816<T>(s[t], qf[ks], kf[0], kf[1]);
        mma16816<T>(s[t + 1], qf[ks], kf[2], kf[3]);
      }
    }

    // Logits in base 2, masked; the tile's row maxima.
    float tmax_a = -INFINITY, tmax_b = -INFINITY;
#pragma unroll
    for (int t = 0; t < kSTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = key0 + t * 8 + 2 * (lane % 4) + (e % 2);
        const int i = e < 2 ? row_a : row_b;
        float x = s[t][e] * p.scale_log2;
        if (j >= p.Sk || (p.causal && j > i)) x = -INFINITY;
        else if (p.has_mask && i < p.Sq) x += mask_at(mask, p, b, h, i, j) * kLog2e;
        s[t][e] = x;
        if (e < 2) tmax_a = fmaxf(tmax_a, x);
        else tmax_b = fmaxf(tmax_b, x);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off *= 2) {
      tmax_a = fmaxf(tmax_a, __shfl_xor_sync(0xffffffffu, tmax_a, off));
      tmax_b = fmaxf(tmax_b, __shfl_xor_sync(0xffffffffu, tmax_b, off));
    }
    const float mnew_a = fmaxf(m_a, tmax_a), mnew_b = fmaxf(m_b, tmax_b);
    const float use_a = mnew_a == -INFINITY ? 0.0f : mnew_a, use_b = mnew_b == -INFINITY ? 0.0f : mnew_b;
    const float alpha_a = exp2f(m_a - use_a), alpha_b = exp2f(m_b - use_b);
    m_a = mnew_a;
    m_b = mnew_b;
    l_a *= alpha_a;
    l_b *= alpha_b;
#pragma unroll
    for (int t = 0; t < kDTiles; ++t) {
      o[t][0] *= alpha_a;
      o[t][1] *= alpha_a;
      o[t][2] *= alpha_b;
      o[t][3] *= alpha_b;
    }
    // P = exp2(x - max), summed, and packed as the A operand of P V: k16 step u covers key tiles 2u, 2u + 1.
    uint32_t pf[kSTiles / 2][4];
#pragma unroll
    for (int t = 0; t < kSTiles; ++t) {
      const float p0 = exp2f(s[t][0] - use_a), p1 = exp2f(s[t][1] - use_a);
      const float p2 = exp2f(s[t][2] - use_b), p3 = exp2f(s[t][3] - use_b);
      l_a += p0 + p1;
      l_b += p2 + p3;
      pf[t / 2][(t % 2) * 2 + 0] = pack2<T>(p0, p1);
      pf[t / 2][(t % 2) * 2 + 1] = pack2<T>(p2, p3);
    }
    // O += P V.
#pragma unroll
    for (int u = 0; u < kSTiles / 2; ++u) {
#pragma unroll
      for (int t = 0; t < kDTiles; t += 2) {
        uint32_t vf[4];  // b0, b1 of output tile t, then of tile t + 1
        ldmatrix_x4_trans(vf, vt.chunk(u * 16 + lane % 8 + ((lane / 8) % 2) * 8, t + lane / 16));
        mma16816<T>(o[t], pf[u], vf[0], vf[1]);
        mma16816<T>(o[t + 1], pf[u], vf[2], vf[3]);
      }
    }
  }
  cp_async_wait_all();

  store_rows<T, D>(o, l_a, l_b, p, y, b, h, row_a, row_b, lane);
}

template <class T, int D, int BR>
constexpr size_t flash_smem_bytes() {
  return static_cast<size_t>(BR + 4 * kBlockKeys) * D * sizeof(T);
}

// Kernels using more than 48 KiB of shared memory must opt in, once per kernel: done when a layer is created,
// never in run() (which may be captured into a CUDA graph).
template <class T, int D, int BR>
Status opt_in_flash() {
  if (cudaFuncSetAttribute(flash_attention_kernel<T, D, BR>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(flash_smem_bytes<T, D, BR>())) != cudaSuccess)
    return launch_status("flash_attention_kernel (shared memory opt-in)");
  return OkStatus();
}

template <class T, int D, int BR>
Status launch_flash(const AttentionParams& p, const void* q, const void* k, const void* v, const void* mask,
                    void* y, cudaStream_t stream) {
  const size_t smem = flash_smem_bytes<T, D, BR>();
  auto kernel = flash_attention_kernel<T, D, BR>;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.Sq, BR)), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
  kernel<<<grid, BR * 2, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                                         static_cast<const T*>(mask), static_cast<T*>(y), p);
  return launch_status("flash_attention_kernel");
}

// ---------------------------------------------------------------------------------------------------------
// Layer

const char* kPrefix = "CUDA kiln.FusedAttention: ";
const char* kRowsTactic = "cuda.attention.rows";
// The mma.sync kernel's tactics: its query rows a block (BR).
constexpr std::pair<const char*, int> kFlashTactics[] = {
    {"cuda.flash.br128", 128}, {"cuda.flash.br64", 64}, {"cuda.flash.br32", 32}, {"cuda.flash.br16", 16}};
// BR of a flash tactic; 0 for any other.
int flash_rows(const std::string& tactic) {
  for (const auto& [name, rows] : kFlashTactics)
    if (tactic == name) return rows;
  return 0;
}
const char* kWgmmaPipe = "cuda.flash.wgmma.pipe";
const char* kWgmmaPipeStaggered = "cuda.flash.wgmma.pipe.staggered";
const char* kWgmma = "cuda.flash.wgmma";
const char* kWgmmaLockstep = "cuda.flash.wgmma.lockstep";
const char* kWgmmaShort = "cuda.flash.wgmma.short";
const char* kWgmmaStream = "cuda.flash.wgmma.stream";

// The Hopper kernel's schedule a tactic names; false when it is not one of the wgmma tactics.
bool wgmma_schedule(const std::string& tactic, WgmmaSchedule* sched) {
  if (tactic == kWgmmaPipe) *sched = WgmmaSchedule::kPipelined;
  else if (tactic == kWgmmaPipeStaggered) *sched = WgmmaSchedule::kPipelinedStaggered;
  else if (tactic == kWgmma) *sched = WgmmaSchedule::kStagger;
  else if (tactic == kWgmmaLockstep) *sched = WgmmaSchedule::kLockstep;
  else if (tactic == kWgmmaShort) *sched = WgmmaSchedule::kShort;
  else if (tactic == kWgmmaStream) *sched = WgmmaSchedule::kStream;
  else return false;
  return true;
}

struct Geometry {
  bool bshd = false;
  bool packed = false;  // packed_qkv: one input QKV [B, S, 3, H, D], the mask second
  int64_t B = 0, H = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
};

// The layout's [B, H, S, D] reading of a rank-4 shape.
void bhsd_dims(const Shape& s, bool bshd, int64_t* b, int64_t* h, int64_t* seq, int64_t* d) {
  *b = s[0];
  *h = bshd ? s[2] : s[1];
  *seq = bshd ? s[1] : s[2];
  *d = s[3];
}

OperandStrides strides_of(const Shape& s, bool bshd) {
  OperandStrides st;
  st.batch = s[1] * s[2] * s[3];
  st.head = bshd ? s[3] : s[2] * s[3];
  st.seq = bshd ? s[2] * s[3] : s[3];
  return st;
}

// Q, K and V read in place from a packed QKV [B, S, 3, H, D]: a row of the sequence holds the three, so each
// one's sequence stride is 3 H D (K and V start H D and 2 H D elements in).
OperandStrides packed_strides(const Shape& s) {
  OperandStrides st;
  st.head = s[4];
  st.seq = 3 * s[3] * s[4];
  st.batch = s[1] * st.seq;
  return st;
}

// Where the mask is among the inputs.
size_t mask_input(bool packed) { return packed ? 1 : 3; }

// "" and the geometry when the node is one this layer runs; shapes not known yet (-1) pass.
std::string check_attention(const LayerSpec& spec, Geometry* g) {
  const std::string op = kPrefix;
  const int64_t packed = spec.attr_int("packed_qkv", 0);
  if (packed != 0 && packed != 1) return op + "packed_qkv must be 0 or 1, got " + std::to_string(packed);
  g->packed = packed == 1;
  const int operands = g->packed ? 1 : 3;  // the inputs before the mask
  if (g->packed ? spec.inputs.empty() || spec.inputs.size() > 2 : spec.inputs.size() < 3 || spec.inputs.size() > 4)
    return op + (g->packed ? "with packed_qkv takes inputs QKV and an optional Mask" : "takes inputs Q, K, V and an optional Mask");
  for (int i = 0; i < operands; ++i)
    if (!spec.inputs[i].present()) return op + (g->packed ? "input QKV is required" : "inputs Q, K and V are required");
  const DType t = spec.inputs[0].dtype;
  if (!is_float_dtype(t)) return op + "dtype " + dtype_name(t) + " is not supported (float32, float16, bfloat16 are)";
  const size_t m_at = mask_input(g->packed);
  const bool has_mask = spec.inputs.size() == m_at + 1 && spec.inputs[m_at].present();
  for (size_t i = 1; i < (has_mask ? m_at + 1 : static_cast<size_t>(operands)); ++i)
    if (spec.inputs[i].dtype != t)
      return op + "input " + std::to_string(i) + " is " + dtype_name(spec.inputs[i].dtype) + ", Q " + dtype_name(t);
  const std::string layout = spec.attr_string("layout", "BHSD");
  if (layout != "BHSD" && layout != "BSHD") return op + "layout '" + layout + "' is not BHSD or BSHD";
  g->bshd = layout == "BSHD";
  if (g->packed && !g->bshd) return op + "packed_qkv needs layout BSHD, got " + layout;
  for (const char* a : {"causal", "nan_to_zero"}) {
    const int64_t v = spec.attr_int(a, 0);
    if (v != 0 && v != 1) return op + a + " must be 0 or 1, got " + std::to_string(v);
  }
  if (!spec.has_attr("scale")) return op + "attribute scale is required";
  if (g->packed) {
    const TensorDesc& x = spec.inputs[0];
    if (x.has_rank && (x.shape.size() != 5 || (x.shape[2] >= 0 && x.shape[2] != 3)))
      return op + "QKV must be [B, S, 3, H, D] with packed_qkv, got " + shape_to_string(x.shape);
    if (!x.is_static()) return "";
    g->B = x.shape[0];
    g->Sq = g->Sk = x.shape[1];
    g->H = x.shape[3];
    g->D = g->Dv = x.shape[4];
  } else {
    for (int i = 0; i < 3; ++i)
      if (spec.inputs[i].has_rank && spec.inputs[i].shape.size() != 4)
        return op + "Q, K and V must have rank 4, input " + std::to_string(i) + " is " + shape_to_string(spec.inputs[i].shape);
    if (!spec.inputs[0].is_static() || !spec.inputs[1].is_static() || !spec.inputs[2].is_static()) return "";
    int64_t bk, hk, dk, bv, hv, sv;
    bhsd_dims(spec.inputs[0].shape, g->bshd, &g->B, &g->H, &g->Sq, &g->D);
    bhsd_dims(spec.inputs[1].shape, g->bshd, &bk, &hk, &g->Sk, &dk);
    bhsd_dims(spec.inputs[2].shape, g->bshd, &bv, &hv, &sv, &g->Dv);
    if (bk != g->B || bv != g->B || hk != g->H || hv != g->H || dk != g->D || sv != g->Sk || g->Dv != g->D)
      return op + "Q " + shape_to_string(spec.inputs[0].shape) + ", K " + shape_to_string(spec.inputs[1].shape) + " and V " +
             shape_to_string(spec.inputs[2].shape) + " do not agree (" + layout + ", equal head dims)";
  }
  if (g->D > 32 * kMaxPerLane) return op + "head dim " + std::to_string(g->D) + " is over 256";
  if (std::max({g->B, g->H}) > 65535 || g->Sq * g->Sk >= (int64_t{1} << 31))
    return op + "batch or heads over 65535, or a score matrix of 2^31 elements or more";
  if (has_mask && spec.inputs[m_at].has_rank) {
    const Shape& m = spec.inputs[m_at].shape;
    const Shape full = {g->B, g->H, g->Sq, g->Sk};
    if (m.size() > 4) return op + "Mask " + shape_to_string(m) + " has rank over 4";
    for (size_t i = 0; i < m.size(); ++i) {
      const int64_t want = full[4 - m.size() + i];
      if (m[i] >= 0 && m[i] != 1 && m[i] != want)
        return op + "Mask " + shape_to_string(m) + " does not broadcast to [B, H, Sq, Sk] = " + shape_to_string(full);
    }
  }
  return "";
}

// What ".short" runs: head dim 64 (at 128, S, O and P need more registers than two blocks an SM leave a
// thread) and keys that fit its one tile.
bool short_fits(const Geometry& g) { return g.D == 64 && g.Sk <= 128; }

bool flash_fits(DType t, int64_t d) { return (t == DType::kFloat16 || t == DType::kBFloat16) && (d == 64 || d == 128); }

class AttentionLayer : public Layer {
 public:
  Status init(const LayerSpec& spec, const std::string& tactic) {
    Geometry g;
    if (std::string why = check_attention(spec, &g); !why.empty()) return Unsupported(why);
    for (int i = 0; i < (g.packed ? 1 : 3); ++i)
      if (!spec.inputs[i].is_static()) return InvalidArgument(std::string(kPrefix) + "create needs concrete shapes");
    dtype_ = spec.inputs[0].dtype;
    tactic_ = tactic;
    const bool wgmma = wgmma_schedule(tactic, &sched_);
    flash_rows_ = flash_rows(tactic);
    if (tactic != kRowsTactic && !(flash_rows_ > 0 && flash_fits(dtype_, g.D)) &&
        !(wgmma && wgmma_attention_fits(dtype_, g.D)))
      return Unsupported(std::string(kPrefix) + "tactic '" + tactic + "' does not run " + dtype_name(dtype_) +
                         " with head dim " + std::to_string(g.D));
    if (wgmma && (sched_ == WgmmaSchedule::kShort || sched_ == WgmmaSchedule::kStream) && !short_fits(g))
      return Unsupported(std::string(kPrefix) + "tactic '" + tactic + "' runs head dim 64 with at most 128 keys, not " +
                         std::to_string(g.Sk) + " keys of head dim " + std::to_string(g.D));
    wgmma_ = wgmma;
    if (wgmma && !device_is_sm90())
      return Unsupported(std::string(kPrefix) + "tactic '" + tactic + "' needs a device of compute capability 9.0");
    p_.B = static_cast<int>(g.B);
    p_.H = static_cast<int>(g.H);
    p_.Sq = static_cast<int>(g.Sq);
    p_.Sk = static_cast<int>(g.Sk);
    p_.D = static_cast<int>(g.D);
    if (g.packed) {
      p_.q = p_.k = p_.v = packed_strides(spec.inputs[0].shape);
      kv_offset_bytes_ = g.H * g.D * static_cast<int64_t>(dtype_size(dtype_));
    } else {
      p_.q = strides_of(spec.inputs[0].shape, g.bshd);
      p_.k = strides_of(spec.inputs[1].shape, g.bshd);
      p_.v = strides_of(spec.inputs[2].shape, g.bshd);
    }
    packed_ = g.packed;
    const Shape y_shape = g.bshd ? Shape{g.B, g.Sq, g.H, g.D} : Shape{g.B, g.H, g.Sq, g.D};
    p_.y = strides_of(y_shape, g.bshd);
    p_.scale_log2 = spec.attr_float("scale", 1.0f) * kLog2e;
    p_.causal = spec.attr_int("causal", 0) == 1;
    p_.nan_to_zero = spec.attr_int("nan_to_zero", 0) == 1;
    if (wgmma) {
      KILN_RETURN_IF_ERROR(opt_in_wgmma_attention(dtype_, p_.D, sched_));
    } else if (tactic != kRowsTactic) {
      KILN_RETURN_IF_ERROR(dtype_ == DType::kFloat16 ? flash_rows_dispatch<__half>(OptIn{})
                                                     : flash_rows_dispatch<__nv_bfloat16>(OptIn{}));
    }
    const size_t m_at = mask_input(g.packed);
    p_.has_mask = spec.inputs.size() == m_at + 1 && spec.inputs[m_at].present();
    if (p_.has_mask) {
      const Shape& m = spec.inputs[m_at].shape;
      // Contiguous strides of the mask, aligned to the right of [B, H, Sq, Sk]; 0 where it broadcasts.
      int64_t stride = 1;
      for (int i = static_cast<int>(m.size()) - 1; i >= 0; --i) {
        const int slot = 4 - static_cast<int>(m.size()) + i;
        p_.mask_strides[slot] = m[i] == 1 ? 0 : stride;
        stride *= m[i];
      }
    }
    return OkStatus();
  }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void*,
             const CudaHandles& h) const override {
    if (p_.B == 0 || p_.H == 0 || p_.Sq == 0 || p_.D == 0) return OkStatus();
    const void* mask = p_.has_mask ? inputs[mask_input(packed_)].data : nullptr;
    const void *q = inputs[0].data, *k = nullptr, *v = nullptr;
    if (packed_) {  // K and V in place, H D and 2 H D elements into each row of QKV
      k = static_cast<const char*>(q) + kv_offset_bytes_;
      v = static_cast<const char*>(q) + 2 * kv_offset_bytes_;
    } else {
      k = inputs[1].data;
      v = inputs[2].data;
    }
    void* y = outputs[0].data;
    // cp.async moves 16-byte chunks: the tensor-core kernels need 16-byte aligned rows (the strides are
    // multiples of D, 64 or 128, so the base pointers decide: K's and V's offset ones when packed);
    // unaligned operands take the row kernel.
    const bool aligned = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(y);
    if (wgmma_ && aligned) return launch_wgmma_attention(dtype_, sched_, p_, q, k, v, mask, y, h.stream);
    if (tactic_ != kRowsTactic && aligned) {
      const Launch l{&p_, q, k, v, mask, y, h.stream};
      if (dtype_ == DType::kFloat16) return flash_rows_dispatch<__half>(l);
      return flash_rows_dispatch<__nv_bfloat16>(l);
    }
    const dim3 grid(static_cast<unsigned>(ceil_div(p_.Sq, kRowsPerBlock)), static_cast<unsigned>(p_.H),
                    static_cast<unsigned>(p_.B));
    dispatch_float(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      attention_rows_kernel<T><<<grid, 32 * kRowsPerBlock, 0, h.stream>>>(
          static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(mask),
          static_cast<T*>(y), p_);
    });
    return launch_status("attention_rows_kernel");
  }

 private:
  // What flash_rows_dispatch does for the layer's (D, BR): the shared-memory opt-in, or a launch.
  struct OptIn {
    template <class T, int D, int BR>
    Status go() const { return opt_in_flash<T, D, BR>(); }
  };
  struct Launch {
    const AttentionParams* p;
    const void *q, *k, *v, *mask;
    void* y;
    cudaStream_t stream;
    template <class T, int D, int BR>
    Status go() const { return launch_flash<T, D, BR>(*p, q, k, v, mask, y, stream); }
  };
  template <class T, int D, class Op>
  Status flash_rows_dispatch(const Op& op, int rows) const {
    switch (rows) {
      case 128: return op.template go<T, D, 128>();
      case 64: return op.template go<T, D, 64>();
      case 32: return op.template go<T, D, 32>();
      default: return op.template go<T, D, 16>();
    }
  }
  template <class T, class Op>
  Status flash_rows_dispatch(const Op& op) const {
    return p_.D == 64 ? flash_rows_dispatch<T, 64>(op, flash_rows_) : flash_rows_dispatch<T, 128>(op, flash_rows_);
  }

  DType dtype_ = DType::kFloat32;
  std::string tactic_;
  bool wgmma_ = false;
  int flash_rows_ = 0;  // the mma.sync kernel's BR, 0 for the other kernels
  bool packed_ = false;
  int64_t kv_offset_bytes_ = 0;  // packed: where K starts in a row of QKV (V twice as far)
  WgmmaSchedule sched_ = WgmmaSchedule::kStagger;
  AttentionParams p_;
};

// Whether the spec's shapes are known to fit ".short": head dim 64 and at most 128 keys (its list is the
// tactics that can run at these shapes; at a shape with a longer sequence the tactic is not offered).
bool short_keys(const LayerSpec& spec) {
  Geometry g;
  if (!check_attention(spec, &g).empty()) return false;
  for (int i = 0; i < (g.packed ? 1 : 3); ++i)
    if (!spec.inputs[i].is_static()) return false;
  return short_fits(g);
}

}  // namespace

void register_attention_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "kiln.FusedAttention";
  k.check = [](const LayerSpec& spec) {
    Geometry g;
    return check_attention(spec, &g);
  };
  // The tensor-core tactics first (they refuse what they do not run: float32, other head dims, the wgmma one
  // devices other than Hopper).
  k.tactics = [](const LayerSpec& spec) {
    std::vector<std::string> t{kWgmmaPipe, kWgmmaPipeStaggered, kWgmma, kWgmmaLockstep};
    // ".stream" is created by name only (a timing cache entry, the tests): timed alone it is the faster of the
    // two on some machines, yet inside BERT-base at batch 128 it measured 0.7-1% slower than ".short" in
    // alternating runs (bench/results/tactic_ab_bert_b128_2026-11-25*.json), so the builder is not offered it.
    if (short_keys(spec)) t.push_back(kWgmmaShort);
    for (const auto& [name, rows] : kFlashTactics) t.push_back(name);
    t.push_back(kRowsTactic);
    return t;
  };
  k.create = [](const LayerSpec& spec, const std::string& tactic, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
    auto layer = std::make_unique<AttentionLayer>();
    KILN_RETURN_IF_ERROR(layer->init(spec, tactic));
    return std::unique_ptr<Layer>(std::move(layer));
  };
  k.lowers_to_fp16 = true;
  table.add(std::move(k));
}

}  // namespace kiln::cuda
