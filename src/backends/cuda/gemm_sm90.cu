// Kiln's Hopper GEMM (tactic "cuda.gemm.sm90"): Y[M, N] = act(A[M, K] B[K, N] + bias + Z), float16 or
// bfloat16 with float32 accumulators, for MatMul and kiln.FusedMatMul whose B is one [K, N] matrix (BERT's
// and GPT's projections: A's batch dims fold into M).
//
// A warp-specialized, persistent "ping-pong" kernel, the structure Hopper's tensor cores need to run near
// their rate when the epilogue is not small beside the products (BERT's K = 768):
// - One block an SM takes every gridDim.x-th output tile of 128 x 128 (tiles in row-major order, N fastest,
//   so the blocks running at once share A's rows through L2; B, the weights, stays in L2).
// - Warpgroup 0 is the producer: one thread issues the bulk tensor copies (TMA) of each k-step's A tile
//   [128 x 64] and B tile [64 x 128] into a ring of kStages shared-memory stages, tile after tile, each
//   completing on the stage's `full` mbarrier with the bytes it carries; it waits on the stage's `empty`
//   mbarrier before overwriting it. The copies land in the 128-byte swizzled layout wgmma reads.
// - Warpgroups 1 and 2 are the consumers, taking the block's tiles in turn (0, 2, 4, ... and 1, 3, 5, ...):
//   while one runs its tile's products the other runs its epilogue, so the tensor cores wait for neither.
//   Per k-step, 2 x 4 m64n128k16 wgmma (two row halves) with A K-major and B MN-major (row-major weights,
//   read with the transpose bit, as attention's V is), committed as a group; once the next step's group is
//   issued, the previous one is waited for and its stage released (one arrival per warp).
// - setmaxnreg moves registers from the producer (40) to the consumers (232): a consumer holds the whole
//   tile's 128 x 128 float accumulators, 128 a thread.
// - The epilogue: + bias[col] + Z[row, col] (Z's tile brought into the consumer's staging area by TMA while
//   the products run), the activation (ReLU, or GELU's tanh form as cuBLASLt's GELU epilogue), rounded to T
//   into the staging area (swizzled like the operands: a warp's stores hit 32 banks), which one thread then
//   stores with TMA, asynchronously: the staging area is written again only once that store has read it.
// TMA zero-fills what lies past A's, B's and Z's edges and clips the stores to Y's, so M, N and K need not be
// multiples of the tile. TMA wants 16-byte aligned bases and row pitches: K and N are multiples of 8, and a
// run() handed a less aligned pointer goes to a cuBLASLt layer held for that.
// Tried and not kept (branch gemm-cluster-experiment): clusters of two blocks sharing B's tile by TMA
// multicast, correct but 1.8x slower on BERT's GEMMs (bench/results/gemm_sm90_sweep_2026-11-25c.json).
#include "backends/cuda/gemm_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/mma_sm80.cuh"
#include "backends/cuda/tensor_map.h"
#include "backends/cuda/tma_sm90.cuh"
#include "backends/cuda/wgmma_sm90.cuh"

namespace kiln::cuda {
namespace {

constexpr int kBM = 128;        // tile rows: two m64 halves
constexpr int kBN = 128;        // tile columns
constexpr int kBK = 64;         // k-step: one 128-byte swizzle row of 16-bit elements
constexpr int kThreads = 384;   // producer + two consumers
constexpr int kStages = 5;
constexpr int kABytes = kBM * kBK * 2;                 // 16 KiB
constexpr int kStageBytes = kABytes + kBN * kBK * 2;   // 32 KiB
constexpr int kStagingBytes = kBM * kBN * 2;           // a consumer's output tile: two boxes of 128 x 64
// + slack to align the ring to the swizzle's 1024 bytes: 225 KiB of the 227 a block may have.
constexpr int kSmemBytes = kStages * kStageBytes + 2 * kStagingBytes + 1024;

enum class Act : int { kNone = 0, kRelu = 1, kGelu = 2 };

struct GemmArgs {
  int M = 0, N = 0, K = 0;
  const void* bias = nullptr;  // [N] or null
  int has_z = 0;               // Z [M, N] is read (through its tensor map)
  Act act = Act::kNone;
  int tiles_n = 0, tiles = 0;
};

#if KILN_HAVE_WGMMA
using namespace sm90;
using sm80::pack2;
using sm80::unpack2;

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void sts32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

__device__ __forceinline__ float gelu_tanh(float x) {
  float t;
  const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
  asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(u));
  return 0.5f * x * (1.0f + t);
}

#endif  // KILN_HAVE_WGMMA

template <class T>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                     const __grid_constant__ CUtensorMap map_y, const __grid_constant__ CUtensorMap map_z, GemmArgs p) {
#if KILN_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full[kStages], empty[kStages], z_full[2], turn[2];
  const uint32_t ring = (shared_u32(smem_raw) + 1023) & ~1023u;
  const int wg = threadIdx.x / 128;
  const int kblocks = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(shared_u32(&full[s]), 1);
      mbar_init(shared_u32(&empty[s]), 4);  // one arrival per warp of the consumer that read it
    }
    for (int c = 0; c < 2; ++c) {
      mbar_init(shared_u32(&z_full[c]), 1);
      mbar_init(shared_u32(&turn[c]), 128);  // the other consumer's threads, done issuing a tile's products
    }
    mbar_init_fence();
  }
  __syncthreads();

  // The block's q-th tile is blockIdx.x + q gridDim.x; its k-step kb is the ring's (q kblocks + kb)-th fill.
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x != 0) return;
    int stage = 0;
    uint32_t phase = 0;
    for (int tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
      const int m0 = (tile / p.tiles_n) * kBM, n0 = (tile % p.tiles_n) * kBN;
      for (int kb = 0; kb < kblocks; ++kb) {
        const uint32_t full_bar = shared_u32(&full[stage]);
        mbar_wait(shared_u32(&empty[stage]), phase ^ 1);
        mbar_expect_tx(full_bar, kStageBytes);
        const uint32_t a = ring + stage * kStageBytes;
        tma_load_2d(a, &map_a, kb * kBK, m0, full_bar);
        tma_load_2d(a + kABytes, &map_b, n0, kb * kBK, full_bar);
        tma_load_2d(a + kABytes + kBK * 128, &map_b, n0 + 64, kb * kBK, full_bar);
        if (++stage == kStages) stage = 0, phase ^= 1;
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int consumer = wg - 1;
  const int ct = threadIdx.x % 128, warp = ct / 32, lane = ct % 32;
  const uint32_t staging = ring + kStages * kStageBytes + consumer * kStagingBytes;
  const uint32_t z_bar = shared_u32(&z_full[consumer]);
  uint32_t z_phase = 0;
  // The consumers' main loops take turns, tile after tile: consumer c waits on turn[c] until the other has
  // issued its previous tile's products. Besides keeping the tensor cores on one tile at a time, this keeps
  // each consumer's waits on the ring within one round of it, which the parity waits need: unchecked, the
  // second consumer would wait for its first fill's parity while the ring was a full round short of it, and
  // pass on the previous round's completion.
  uint32_t turn_phase = 0;
  for (int q = consumer;; q += 2) {
    const int tile = blockIdx.x + q * gridDim.x;
    if (tile >= p.tiles) break;
    const int m0 = (tile / p.tiles_n) * kBM, n0 = (tile % p.tiles_n) * kBN;
    if (p.has_z && ct == 0) {
      // Z's tile goes into the staging area while the products run, once the previous tile's store has read it.
      bulk_wait_read();
      mbar_expect_tx(z_bar, kStagingBytes);
      tma_load_2d(staging, &map_z, n0, m0, z_bar);
      tma_load_2d(staging + kStagingBytes / 2, &map_z, n0 + 64, m0, z_bar);
    }
    float acc[2][kBN / 2];  // the two m64 row halves
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[0][i] = acc[1][i] = 0.0f;
    int held = -1;  // the stage whose products are still in flight
    if (q > 0) {
      mbar_wait(shared_u32(&turn[consumer]), turn_phase);
      turn_phase ^= 1;
    }
    for (int kb = 0; kb < kblocks; ++kb) {
      const int fill = q * kblocks + kb;
      const int stage = fill % kStages;
      mbar_wait(shared_u32(&full[stage]), (fill / kStages) & 1);
      const uint32_t a = ring + stage * kStageBytes;
      // A: one slab of 128 rows x 128 bytes, half h from row 64 h, k16 step s at byte 32 s of each row.
      // B: two slabs of 64 k-rows x 128 bytes (LBO apart), 8-row groups 1024 bytes apart (SBO), k16 step s
      // from k-row 16 s.
      const uint64_t a0 = sw128_desc(a, 16, 1024), a1 = sw128_desc(a + 64 * 128, 16, 1024);
      const uint64_t bd = sw128_desc(a + kABytes, kBK * 128, 1024);
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < kBK / 16; ++s) {
        wgmma_ss_tb<T, kBN>(acc[0], desc_advance(a0, s * 32), desc_advance(bd, s * 16 * 128), kb > 0 || s > 0);
        wgmma_ss_tb<T, kBN>(acc[1], desc_advance(a1, s * 32), desc_advance(bd, s * 16 * 128), kb > 0 || s > 0);
      }
      wgmma_commit();
      wgmma_wait<1>();
      if (held >= 0 && lane == 0) mbar_arrive(shared_u32(&empty[held]));
      held = stage;
    }
    mbar_arrive(shared_u32(&turn[1 - consumer]));
    wgmma_wait<0>();
    order_registers(acc[0]);
    order_registers(acc[1]);
    if (held >= 0 && lane == 0) mbar_arrive(shared_u32(&empty[held]));

    // The staging area is free once the previous tile's store has read it (or Z has arrived in it).
    if (p.has_z) {
      mbar_wait(z_bar, z_phase);
      z_phase ^= 1;
    } else {
      if (ct == 0) bulk_wait_read();
      warpgroup_sync(1 + consumer);
    }
    // Accumulator layout of m64nN: value 4j + 2h + e of a thread is row 16 warp + lane / 4 + 8 h of its
    // half, column 8 j + 2 (lane % 4) + e. In the staging area column 8 j is 16-byte chunk j % 8 of box
    // j / 8 (128 rows x 128 bytes each), stored at chunk (j % 8) ^ (row % 8) of its row (the 128-byte
    // swizzle): a warp's 32 stores hit 32 banks.
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int col = n0 + 8 * j + 2 * (lane % 4);
      float2 b = make_float2(0.0f, 0.0f);
      if (p.bias != nullptr && col < p.N)
        b = unpack2<T>(*reinterpret_cast<const uint32_t*>(static_cast<const T*>(p.bias) + col));
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = 64 * half + warp * 16 + lane / 4 + 8 * h;
          const uint32_t at =
              staging + (j / 8) * (kStagingBytes / 2) + r * 128 + (((j % 8) ^ (r % 8)) * 16) + 4 * (lane % 4);
          float v0 = acc[half][4 * j + 2 * h] + b.x, v1 = acc[half][4 * j + 2 * h + 1] + b.y;
          if (p.has_z) {
            const float2 z = unpack2<T>(lds32(at));
            v0 += z.x, v1 += z.y;
          }
          if (p.act == Act::kRelu) v0 = fmaxf(v0, 0.0f), v1 = fmaxf(v1, 0.0f);
          else if (p.act == Act::kGelu) v0 = gelu_tanh(v0), v1 = gelu_tanh(v1);
          sts32(at, pack2<T>(v0, v1));
        }
    }
    // The stores are ordinary shared-memory writes that the copy engine reads next.
    fence_proxy_async();
    warpgroup_sync(1 + consumer);
    if (ct == 0) {
      tma_store_2d(&map_y, n0, m0, staging);
      tma_store_2d(&map_y, n0 + 64, m0, staging + kStagingBytes / 2);
      bulk_commit();
    }
  }
  if (ct == 0) bulk_wait_all();
#else
  __trap();
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Host side

// A row-major [rows, cols] matrix of 16-bit elements, read in boxes of [box_rows, 64] with the 128-byte swizzle.
Status encode_map(CUtensorMap* map, DType t, const void* base, int64_t rows, int64_t cols, int box_rows) {
  const int64_t dims[2] = {cols, rows};
  const uint32_t box[2] = {64, static_cast<uint32_t>(box_rows)};
  return encode_tensor_map(map, t, base, 2, dims, &cols, box, "sm90 GEMM");
}

template <class T>
Status launch_gemm(const GemmArgs& args, const void* a, const void* b, void* y, const void* z, DType t, cudaStream_t s) {
  CUtensorMap map_a, map_b, map_y, map_z;
  KILN_RETURN_IF_ERROR(encode_map(&map_a, t, a, args.M, args.K, kBM));
  KILN_RETURN_IF_ERROR(encode_map(&map_b, t, b, args.K, args.N, kBK));
  KILN_RETURN_IF_ERROR(encode_map(&map_y, t, y, args.M, args.N, kBM));
  if (z != nullptr) KILN_RETURN_IF_ERROR(encode_map(&map_z, t, z, args.M, args.N, kBM));
  else map_z = map_y;  // not read
  const unsigned grid = capped_grid(args.tiles, 1);
  gemm_sm90_kernel<T><<<grid, kThreads, kSmemBytes, s>>>(map_a, map_b, map_y, map_z, args);
  return launch_status("gemm_sm90_kernel");
}

template <class T>
Status opt_in_smem() {
  KILN_CUDA_TRY(cudaFuncSetAttribute(gemm_sm90_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  return OkStatus();
}

const char* kTactic = "cuda.gemm.sm90";

// The problem of a MatMul / FusedMatMul node, when it is one this kernel runs ("" in *why otherwise).
struct Problem {
  int64_t M = 0, N = 0, K = 0;
  int bias = -1, z = -1;  // input indices, -1 when absent
};

bool problem_of(const LayerSpec& spec, MatmulEpilogue epilogue, Problem* pr, std::string* why) {
  const std::string& op = spec.node->op_type;
  if (op != "MatMul" && op != "FusedMatMul") return *why = "the sm90 GEMM runs MatMul and kiln.FusedMatMul only", false;
  if (spec.inputs.size() < 2) return *why = "the sm90 GEMM needs inputs A and B", false;
  const TensorDesc& a = spec.inputs[0];
  const TensorDesc& b = spec.inputs[1];
  if (a.dtype != DType::kFloat16 && a.dtype != DType::kBFloat16)
    return *why = "the sm90 GEMM runs float16 and bfloat16 only, not " + dtype_name(a.dtype), false;
  if (!a.has_rank || !b.has_rank || a.shape.size() < 2 || b.shape.size() != 2)
    return *why = "the sm90 GEMM needs A of rank >= 2 and one [K, N] matrix B", false;
  pr->K = a.shape.back();
  pr->N = b.shape[1];
  pr->M = 1;
  for (size_t i = 0; i + 1 < a.shape.size(); ++i) pr->M *= a.shape[i];
  if (pr->K >= 0 && pr->K % 8 != 0) return *why = "the sm90 GEMM needs K to be a multiple of 8", false;
  if (pr->N >= 0 && pr->N % 8 != 0) return *why = "the sm90 GEMM needs N to be a multiple of 8", false;
  if (matmul_epilogue_has_bias(epilogue)) pr->bias = 2;
  if (op == "FusedMatMul" && spec.inputs.size() > 3 && spec.inputs[3].present()) pr->z = 3;
  return true;
}

Act act_of(MatmulEpilogue e) {
  if (e == MatmulEpilogue::kRelu || e == MatmulEpilogue::kBiasRelu) return Act::kRelu;
  if (e == MatmulEpilogue::kGelu || e == MatmulEpilogue::kBiasGelu) return Act::kGelu;
  return Act::kNone;
}

class Sm90GemmLayer final : public Layer {
 public:
  Sm90GemmLayer(DType t, GemmArgs args, Problem pr, std::unique_ptr<Layer> fallback)
      : dtype_(t), args_(args), pr_(pr), fallback_(std::move(fallback)) {}

  size_t workspace_bytes() const override { return fallback_->workspace_bytes(); }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (args_.tiles == 0) return OkStatus();
    GemmArgs args = args_;
    args.bias = pr_.bias >= 0 ? inputs[pr_.bias].data : nullptr;
    const void* z = pr_.z >= 0 ? inputs[pr_.z].data : nullptr;
    args.has_z = z != nullptr;
    void* y = outputs[0].data;
    const void* a = inputs[0].data;
    const void* b = inputs[1].data;
    // The copy engine reads and writes 16-byte aligned bases; the bias is read two elements at a time.
    if (!aligned_to(a, 16) || !aligned_to(b, 16) || !aligned_to(y, 16) || !aligned_to(z, 16) ||
        !aligned_to(args.bias, 4))
      return fallback_->run(inputs, outputs, workspace, h);
    if (dtype_ == DType::kFloat16) return launch_gemm<__half>(args, a, b, y, z, dtype_, h.stream);
    return launch_gemm<__nv_bfloat16>(args, a, b, y, z, dtype_, h.stream);
  }

 private:
  DType dtype_;
  GemmArgs args_;
  Problem pr_;
  std::unique_ptr<Layer> fallback_;  // cuBLASLt, for operands TMA cannot read
};

}  // namespace

bool is_sm90_gemm_tactic(const std::string& tactic) { return tactic == kTactic; }

bool sm90_gemm_available() { return device_is_sm90() && tensor_maps_available(); }

std::vector<std::string> sm90_gemm_tactics(const LayerSpec& spec) {
  if (!sm90_gemm_available()) return {};
  Problem pr;
  std::string why;
  // The epilogue does not change what the kernel can take: kNone stands for every one here.
  if (!problem_of(spec, MatmulEpilogue::kNone, &pr, &why)) return {};
  // Offered to the builder only with a tile for every SM: a smaller product (BERT's at batch 1, M = 128) is
  // bound by reading the weights, which in a model come from DRAM, not from L2 as when the builder times the
  // layer alone, and which cuBLASLt's split-K algorithms spread over the whole GPU. (create() takes any size.)
  if (pr.M >= 0 && pr.N >= 0 && ceil_div(pr.M, int64_t{kBM}) * ceil_div(pr.N, int64_t{kBN}) < sm_count()) return {};
  return {kTactic};
}

Result<std::unique_ptr<Layer>> create_sm90_gemm_layer(const LayerSpec& spec, MatmulEpilogue epilogue,
                                                      const std::string& tactic, const CudaHandles& h) {
  if (!is_sm90_gemm_tactic(tactic)) return Unsupported("sm90 GEMM: unknown tactic '" + tactic + "'");
  if (!sm90_gemm_available()) return Unsupported(tactic + " needs a GPU of compute capability 9.0");
  Problem pr;
  std::string why;
  if (!problem_of(spec, epilogue, &pr, &why)) return Unsupported(why);
  for (const TensorDesc& t : spec.inputs)
    if (t.present() && !t.is_static())
      return InvalidArgument("CUDA " + spec.node->op_type + " '" + spec.node->name + "': an input has no concrete shape");
  if (pr.M > INT32_MAX || pr.N > INT32_MAX || pr.K > INT32_MAX)
    return Unsupported(tactic + ": a dimension of the product is 2^31 or more");
  // The cuBLASLt layer checks the rest of the node (shapes of bias, Z, output) and serves misaligned operands.
  KILN_ASSIGN_OR_RETURN(auto fallback, create_matmul_layer(spec, epilogue, "cuda.cublaslt.h0", h));
  if (pr.K == 0) return std::unique_ptr<Layer>(std::move(fallback));  // no products: cuBLASLt's prefill writes act(bias + Z)
  GemmArgs args;
  args.M = static_cast<int>(pr.M);
  args.N = static_cast<int>(pr.N);
  args.K = static_cast<int>(pr.K);
  args.act = act_of(epilogue);
  args.tiles_n = static_cast<int>(ceil_div(pr.N, int64_t{kBN}));
  const int64_t tiles = ceil_div(pr.M, int64_t{kBM}) * args.tiles_n;
  if (tiles > INT32_MAX) return Unsupported(tactic + ": too many tiles");
  args.tiles = static_cast<int>(tiles);
  const DType t = spec.inputs[0].dtype;
  KILN_RETURN_IF_ERROR(t == DType::kFloat16 ? opt_in_smem<__half>() : opt_in_smem<__nv_bfloat16>());
  return std::unique_ptr<Layer>(new Sm90GemmLayer(t, args, pr, std::move(fallback)));
}

}  // namespace kiln::cuda
