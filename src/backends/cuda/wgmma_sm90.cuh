// Hopper's warpgroup matrix instructions (wgmma.mma_async, sm_90a), shared by the kernels that use them
// (attention_hopper.cu, stem_conv.cu, gemm_sm90.cu): shared-memory matrix descriptors, the fence / commit / wait protocol,
// and the m64nNk16 products in the forms those kernels issue. They exist in the sm_90a pass only
// (KILN_HAVE_WGMMA); a kernel's other passes trap, and its layer offers the tactic on compute capability 9.0.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_HAVE_WGMMA 1
#else
#define KILN_HAVE_WGMMA 0
#endif

namespace kiln::cuda::sm90 {

#if KILN_HAVE_WGMMA

// The shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading and stride
// byte offsets (all >> 4), base offset 0 (the tiles are 1024-byte aligned), swizzle mode 1 = 128 bytes.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t start, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((start & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32) | (uint64_t{1} << 62);
}

// The descriptor of the same matrix `bytes` further on (a multiple of 16): the start address field is the
// address >> 4 in bits [0, 14), and no shared-memory address (under 2^18) carries out of it.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N of this warpgroup's committed groups are in flight (they complete in order).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Generic-proxy writes to shared memory (cp.async, ordinary stores) made visible to the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The compiler sees a wgmma's accumulators written when the instruction is issued, not when wait_group
// returns: this empty volatile asm on each register after the wait keeps its reads from moving above it.
template <int N>
__device__ __forceinline__ void order_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// d (+)= A B, m64nNk16, f32 accumulators; A and B from shared memory, both K-major; accumulate 0: d = A B.
template <class T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a, uint64_t b, int accumulate);
// d += A B, m64nNk16; A from registers (the m16n8k16 A layout per warp), B from shared memory, MN-major.
template <class T, int N>
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);

// d (+)= A B, m64nNk16 (N 128 or 256); A from shared memory, K-major; B from shared memory, MN-major (read
// with the transpose bit): the GEMM's row-major [K, N] weights (gemm_sm90.cu). accumulate 0: d = A B.
template <class T, int N>
__device__ __forceinline__ void wgmma_ss_tb(float (&d)[N / 2], uint64_t a, uint64_t b, int accumulate);

// d += A B, m64n64k16 like wgmma_rs_tb<T, 64>, but B K-major (no transpose): the stem convolution's weights
// [N][K]. accumulate 0: d = A B.
template <class T>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int accumulate);

// The operand lists the forms share: an m64n64 accumulator (32 floats a thread) and an m64n128 one (64).
#define KILN_WGMMA_D32 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
  "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), \
  "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
  "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define KILN_WGMMA_D64 KILN_WGMMA_D32, \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define KILN_WGMMA_D128 KILN_WGMMA_D64, \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define KILN_WGMMA_R32                                                                                \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26," \
  "%27,%28,%29,%30,%31}"
#define KILN_WGMMA_R64                                                                                \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26," \
  "%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,"    \
  "%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"

#define KILN_WGMMA_R128 \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,"\
  "%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"\
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,"\
  "%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"\
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,"\
  "%120,%121,%122,%123,%124,%125,%126,%127}"

// Each form for one element type T, whose PTX name is TYPE ("f16", "bf16"); scale-d is the predicate p, from
// the operand after B (1, or `accumulate`), then scale-a, scale-b and the transpose bits.
#define KILN_WGMMA_FORMS(T, TYPE)                                                                                  \
  template <>                                                                                                      \
  __device__ __forceinline__ void wgmma_rs_tb<T, 64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " " KILN_WGMMA_R32                    \
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                                   \
                 : KILN_WGMMA_D32                                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                                    \
  }                                                                                                                \
  template <>                                                                                                      \
  __device__ __forceinline__ void wgmma_rs_n64<T>(float (&d)[32], const uint32_t (&a)[4], uint64_t b,              \
                                                   int accumulate) {                                                \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " " KILN_WGMMA_R32                    \
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                                   \
                 : KILN_WGMMA_D32                                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));                           \
  }                                                                                                                \
  template <>                                                                                                      \
  __device__ __forceinline__ void wgmma_ss<T, 128>(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " KILN_WGMMA_R64                   \
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"                                                                 \
                 : KILN_WGMMA_D64                                                                                  \
                 : "l"(a), "l"(b), "r"(accumulate));                                                               \
  }                                                                                                                \
  template <>                                                                                                      \
  __device__ __forceinline__ void wgmma_ss_tb<T, 128>(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {    \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " KILN_WGMMA_R64                   \
                 ", %64, %65, p, 1, 1, 0, 1;\n}\n"                                                                 \
                 : KILN_WGMMA_D64                                                                                  \
                 : "l"(a), "l"(b), "r"(accumulate));                                                               \
  }                                                                                                                \
  template <>                                                                                                      \
  __device__ __forceinline__ void wgmma_ss_tb<T, 256>(float (&d)[128], uint64_t a, uint64_t b, int accumulate) {   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                   \
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " " KILN_WGMMA_R128                  \
                 ", %128, %129, p, 1, 1, 0, 1;\n}\n"                                                               \
                 : KILN_WGMMA_D128                                                                                 \
                 : "l"(a), "l"(b), "r"(accumulate));                                                               \
  }                                                                                                                \
  template <>                                                                                                      \
  __device__ __forceinline__ void wgmma_rs_tb<T, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " KILN_WGMMA_R64                   \
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                                   \
                 : KILN_WGMMA_D64                                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                                    \
  }
KILN_WGMMA_FORMS(__half, "f16")
KILN_WGMMA_FORMS(__nv_bfloat16, "bf16")
#undef KILN_WGMMA_FORMS
#undef KILN_WGMMA_R128
#undef KILN_WGMMA_R64
#undef KILN_WGMMA_R32
#undef KILN_WGMMA_D64
#undef KILN_WGMMA_D32
#undef KILN_WGMMA_D128

#endif  // KILN_HAVE_WGMMA

}  // namespace kiln::cuda::sm90
