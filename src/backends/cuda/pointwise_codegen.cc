// CUDA code generation of kiln.Pointwise (see pointwise_codegen.h). The kernel computes in float32 (float64
// when the output is float64), like the CPU reference (backends/cpu/ops/pointwise.cc), with the accurate
// expf / erff / tanhf rather than the __expf intrinsics: the fused kernel must match the graph it replaces.
// float16 and bfloat16 are loaded and stored through PTX conversions, so the source needs no header at all.
#include "backends/cuda/pointwise_codegen.h"

#include <cuda_runtime.h>
#include <nvrtc.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/pointwise_program.h"

namespace kiln::cuda {
namespace {

using pointwise::Op;
using pointwise::Operand;

bool supported_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}

// The C type a tensor of dtype t is stored as in the kernel's parameters.
const char* storage_type(DType t) {
  switch (t) {
    case DType::kFloat64: return "double";
    case DType::kFloat16:
    case DType::kBFloat16: return "unsigned short";
    default: return "float";
  }
}

// Helpers every kernel gets; T is the computation's type, and the math names are T's (expf or exp).
const char* kHelpers = R"(
__device__ __forceinline__ float kiln_h2f(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short kiln_f2h(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float kiln_bf2f(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short kiln_f2bf(float f) { unsigned short h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ T kiln_sigmoid(T a) {
  if (a >= (T)0) return (T)1 / ((T)1 + EXP(-a));
  const T e = EXP(a);
  return e / ((T)1 + e);
}
__device__ __forceinline__ T kiln_relu(T a) { return a < (T)0 ? (T)0 : a; }  // NaN stays NaN
__device__ __forceinline__ T kiln_max(T a, T b) { if (a != a || b != b) return a != a ? a : b; return a < b ? b : a; }
__device__ __forceinline__ T kiln_min(T a, T b) { if (a != a || b != b) return a != a ? a : b; return b < a ? b : a; }
)";

// A literal of the computation's type, bit for bit (inf and nan included).
std::string literal(double v, bool dbl) {
  char buf[64];
  if (dbl) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    std::snprintf(buf, sizeof buf, "__longlong_as_double(0x%016llxLL)", static_cast<unsigned long long>(bits));
  } else {
    const float f = static_cast<float>(v);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    std::snprintf(buf, sizeof buf, "__int_as_float(0x%08x)", bits);
  }
  return buf;
}

// The expression of one instruction over its operands' expressions a and b.
std::string expression(Op op, const std::string& a, const std::string& b, bool dbl) {
  const std::string f = dbl ? "" : "f";
  switch (op) {
    case Op::kAdd: return a + " + " + b;
    case Op::kSub: return a + " - " + b;
    case Op::kMul: return a + " * " + b;
    case Op::kDiv: return a + " / " + b;
    case Op::kNeg: return "-" + a;
    case Op::kAbs: return "fabs" + f + "(" + a + ")";
    case Op::kExp: return "exp" + f + "(" + a + ")";
    case Op::kLog: return "log" + f + "(" + a + ")";
    case Op::kSqrt: return "sqrt" + f + "(" + a + ")";
    case Op::kTanh: return "tanh" + f + "(" + a + ")";
    case Op::kErf: return "erf" + f + "(" + a + ")";
    case Op::kPow: return "pow" + f + "(" + a + ", " + b + ")";
    case Op::kSigmoid: return "kiln_sigmoid(" + a + ")";
    case Op::kRelu: return "kiln_relu(" + a + ")";
    case Op::kMax: return "kiln_max(" + a + ", " + b + ")";
    case Op::kMin: return "kiln_min(" + a + ", " + b + ")";
  }
  return a;
}

// A stored element `v` of dtype t as the computation's type T.
std::string to_compute(DType t, const std::string& v) {
  if (t == DType::kFloat16) return "(T)kiln_h2f(" + v + ")";
  if (t == DType::kBFloat16) return "(T)kiln_bf2f(" + v + ")";
  return "(T)" + v;
}

std::string store(DType t, const std::string& v) {
  if (t == DType::kFloat16) return "kiln_f2h((float)" + v + ")";
  if (t == DType::kBFloat16) return "kiln_f2bf((float)" + v + ")";
  return std::string("(") + storage_type(t) + ")" + v;
}

// The version of the kernels' parameters (PointwiseArgs' layout, the entry points): part of every
// kernel's name, so that an engine whose CUBINs were made for another layout is refused, not misread.
constexpr const char* kAbiVersion = "pointwise-abi-2";

// FNV-1a, 64 bits: the same on every platform (std::hash is not), so that names made at build time are
// recomputed at load time.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

Result<PointwiseKernelSpec> pointwise_kernel_spec(const ir::Node& node, const std::vector<DType>& input_dtypes,
                                                 size_t rank) {
  const std::string who = node.describe() + ": ";
  if (input_dtypes.empty() || input_dtypes.size() != node.inputs.size())
    return InvalidArgument(who + "needs one dtype per input (" + std::to_string(node.inputs.size()) +
                           " inputs), got " + std::to_string(input_dtypes.size()));
  if (input_dtypes.size() > kPointwiseMaxInputs)
    return Unsupported(who + std::to_string(input_dtypes.size()) + " inputs are more than the " +
                       std::to_string(kPointwiseMaxInputs) + " the CUDA code generator takes");
  PointwiseKernelSpec spec;
  if (const ir::Attribute* p = node.attr("program")) spec.program = p->strings;
  auto program = pointwise::parse_program(spec.program, input_dtypes.size());
  if (!program.ok()) return InvalidArgument(who + program.status().message());
  if (rank > kPointwiseMaxRank)
    return Unsupported(who + "output rank " + std::to_string(rank) + " is above " + std::to_string(kPointwiseMaxRank));
  for (size_t i = 0; i < input_dtypes.size(); ++i)
    if (!supported_dtype(input_dtypes[i]))
      return Unsupported(who + "input " + std::to_string(i) + " has dtype " + dtype_name(input_dtypes[i]) +
                         " (float32, float64, float16 or bfloat16)");
  spec.input_dtypes = input_dtypes;
  spec.out_dtype = input_dtypes[0];
  spec.rank = rank;
  return spec;
}

std::string pointwise_kernel_name(const PointwiseKernelSpec& spec) {
  std::string key = kAbiVersion;
  key += "\nrank " + std::to_string(spec.rank) + "\nout " + dtype_name(spec.out_dtype) + "\nin";
  for (DType t : spec.input_dtypes) key += " " + dtype_name(t);
  for (const std::string& line : spec.program) key += "\n" + line;
  char buf[40];
  std::snprintf(buf, sizeof buf, "kiln_pointwise_%016llx", static_cast<unsigned long long>(fnv1a(key)));
  return buf;
}

int pointwise_vector_width(const PointwiseKernelSpec& spec) {
  size_t smallest = dtype_size(spec.out_dtype);
  for (DType t : spec.input_dtypes) smallest = std::min(smallest, dtype_size(t));
  return kPointwiseVectorBytes / static_cast<int>(smallest == 0 ? 1 : smallest);
}

Result<std::string> pointwise_kernel_source(const PointwiseKernelSpec& spec, const std::string& kernel_name,
                                            const std::string& what) {
  const size_t n_in = spec.input_dtypes.size();
  auto program = pointwise::parse_program(spec.program, n_in);
  if (!program.ok()) return InvalidArgument(what + ": " + program.status().message());
  if (n_in == 0 || n_in > kPointwiseMaxInputs || spec.rank > kPointwiseMaxRank || !supported_dtype(spec.out_dtype))
    return InvalidArgument(what + ": inconsistent kernel spec (make it with pointwise_kernel_spec)");
  for (size_t i = 0; i < n_in; ++i)
    if (!supported_dtype(spec.input_dtypes[i]))
      return InvalidArgument(what + ": inconsistent kernel spec for input " + std::to_string(i));
  const bool dbl = spec.out_dtype == DType::kFloat64;
  const std::string nin = std::to_string(n_in);

  std::ostringstream s;
  s << "// kiln.Pointwise " << what << ", generated by Kiln (pointwise_codegen.cc)\n";
  s << "typedef " << (dbl ? "double" : "float") << " T;\n";
  s << "#define EXP " << (dbl ? "exp" : "expf") << "\n" << kHelpers << "#undef EXP\n";
  s << "#define KILN_RANK " << spec.rank << "\n#define KILN_VEC " << pointwise_vector_width(spec) << "\n";
  // The layout PointwiseArgs::words fills (pointwise_codegen.h): long longs only, so no padding.
  s << "struct KilnArgs { long long n; long long dims[" << kPointwiseMaxRank << "]; long long strides[" << nin
    << "][" << kPointwiseMaxRank << "]; long long scalar_mask; long long row_mask; };\n";
  s << "template <class S, int N> struct __align__(16) KilnChunk { S v[N]; };\n";

  // The program, once, over the inputs' values; both kernels call it.
  s << "__device__ __forceinline__ T kiln_program(";
  for (size_t i = 0; i < n_in; ++i) s << (i ? ", " : "") << "const T in" << i;
  s << ") {\n";
  for (size_t k = 0; k < program->code.size(); ++k) {
    const pointwise::Instruction& ins = program->code[k];
    std::string arg[2];
    for (size_t a = 0; a < ins.args.size(); ++a) {
      const Operand& o = ins.args[a];
      if (o.kind == Operand::Kind::kInput) arg[a] = "in" + std::to_string(o.index);
      else if (o.kind == Operand::Kind::kTemp) arg[a] = "t" + std::to_string(o.index);
      else arg[a] = literal(o.literal, dbl);
      arg[a] = "(" + arg[a] + ")";
    }
    s << "  const T t" << k << " = " << expression(ins.op, arg[0], arg[1], dbl) << ";\n";
  }
  s << "  return t" << program->code.size() - 1 << ";\n}\n";

  // Output element i's offsets into the inputs: its coordinates over p.dims, times each input's strides.
  // I is unsigned int when n < 2^31 (32-bit division is several times cheaper), long long otherwise.
  s << "template <class I>\n__device__ __forceinline__ void kiln_offsets(I i, const KilnArgs& p, long long (&o)["
    << nin << "]) {\n"
    << "#pragma unroll\n  for (int k = 0; k < " << nin << "; ++k) o[k] = 0;\n"
    << "#pragma unroll\n  for (int d = KILN_RANK - 1; d >= 0; --d) {\n"
    << "    const I dim = (I)p.dims[d];\n    const I c = i % dim;\n    i /= dim;\n"
    << "#pragma unroll\n    for (int k = 0; k < " << nin << "; ++k) o[k] += (long long)c * p.strides[k][d];\n"
    << "  }\n}\n";

  std::string params;
  for (size_t i = 0; i < n_in; ++i)
    params += std::string("const ") + storage_type(spec.input_dtypes[i]) + "* __restrict__ in" + std::to_string(i) + ", ";
  params += std::string(storage_type(spec.out_dtype)) + "* __restrict__ out, const KilnArgs p";
  // The program's call on input i's element at offset off[i] (an expression per input).
  auto call = [&](const std::vector<std::string>& off) {
    std::string c = "kiln_program(";
    for (size_t i = 0; i < n_in; ++i)
      c += (i ? ", " : "") + to_compute(spec.input_dtypes[i], "in" + std::to_string(i) + "[" + off[i] + "]");
    return store(spec.out_dtype, c + ")");
  };
  std::vector<std::string> strided(n_in);
  for (size_t i = 0; i < n_in; ++i) strided[i] = "o[" + std::to_string(i) + "]";

  s << "extern \"C\" __global__ void __launch_bounds__(256) " << kernel_name << "(" << params << ") {\n"
    << "  long long o[" << nin << "];\n"
    << "  if (p.n <= 2147483647LL) {\n"
    << "    const unsigned step = gridDim.x * blockDim.x;\n"
    << "    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)p.n; i += step) {\n"
    << "      kiln_offsets<unsigned>(i, p, o);\n"
    << "      out[i] = " << call(strided) << ";\n    }\n"
    << "  } else {\n"
    << "    const long long step = (long long)gridDim.x * blockDim.x;\n"
    << "    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {\n"
    << "      kiln_offsets<long long>(i, p, o);\n"
    << "      out[i] = " << call(strided) << ";\n    }\n"
    << "  }\n}\n";

  // The vectorized kernel: KILN_VEC elements a thread, each full-size input read (and out written) in
  // 16-byte chunks, each one-element input read once; an input that broadcasts along outer dims only (a
  // row_mask bit: BERT's position embeddings [1, S, H] added to [B, S, H]) is read in 16-byte chunks too,
  // from the offset of the chunk's first element (the output's last dim is a multiple of KILN_VEC, so a
  // chunk is within one row). The last n % KILN_VEC elements one a thread.
  s << "extern \"C\" __global__ void __launch_bounds__(256) " << kernel_name << "_vec(" << params << ") {\n"
    << "  const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
    << "  const long long step = (long long)gridDim.x * blockDim.x;\n"
    << "  const long long chunks = p.n / KILN_VEC;\n"
    << "  long long o[" << nin << "];\n"
    << "  for (long long c = start; c < chunks; c += step) {\n"
    << "    const long long e = c * KILN_VEC;\n"
    << "    if (p.row_mask != 0) {\n"
    << "      if (p.n <= 2147483647LL) kiln_offsets<unsigned>((unsigned)e, p, o);\n"
    << "      else kiln_offsets<long long>(e, p, o);\n"
    << "    }\n";
  for (size_t i = 0; i < n_in; ++i) {
    const std::string in = "in" + std::to_string(i), a = "a" + std::to_string(i), st = storage_type(spec.input_dtypes[i]);
    s << "    T " << a << "[KILN_VEC];\n"
      << "    if ((p.scalar_mask >> " << i << ") & 1LL) {\n"
      << "      const T v = " << to_compute(spec.input_dtypes[i], in + "[0]") << ";\n"
      << "#pragma unroll\n      for (int j = 0; j < KILN_VEC; ++j) " << a << "[j] = v;\n"
      << "    } else {\n"
      << "      const long long at = ((p.row_mask >> " << i << ") & 1LL) ? o[" << i << "] : e;\n"
      << "      const KilnChunk<" << st << ", KILN_VEC> q = *reinterpret_cast<const KilnChunk<" << st
      << ", KILN_VEC>*>(" << in << " + at);\n"
      << "#pragma unroll\n      for (int j = 0; j < KILN_VEC; ++j) " << a << "[j] = "
      << to_compute(spec.input_dtypes[i], "q.v[j]") << ";\n"
      << "    }\n";
  }
  std::string args;
  for (size_t i = 0; i < n_in; ++i) args += (i ? ", " : "") + std::string("a") + std::to_string(i) + "[j]";
  const std::string so = storage_type(spec.out_dtype);
  s << "    KilnChunk<" << so << ", KILN_VEC> r;\n"
    << "#pragma unroll\n    for (int j = 0; j < KILN_VEC; ++j) r.v[j] = "
    << store(spec.out_dtype, "kiln_program(" + args + ")") << ";\n"
    << "    *reinterpret_cast<KilnChunk<" << so << ", KILN_VEC>*>(out + e) = r;\n"
    << "  }\n"
    << "  const long long t = chunks * KILN_VEC + start;\n"
    << "  if (t < p.n) {\n"
    << "    kiln_offsets<long long>(t, p, o);\n"
    << "    out[t] = " << call(strided) << ";\n"
    << "  }\n"
    << "}\n";
  return s.str();
}

Result<std::vector<char>> compile_to_cubin(const std::string& source, const std::string& kernel_name,
                                           const std::string& arch) {
  nvrtcProgram prog;
  const std::string file = kernel_name + ".cu";
  nvrtcResult r = nvrtcCreateProgram(&prog, source.c_str(), file.c_str(), 0, nullptr, nullptr);
  if (r != NVRTC_SUCCESS) return Internal("NVRTC: cannot create program " + file + ": " + nvrtcGetErrorString(r));
  const std::string arch_flag = "-arch=" + arch;
  const char* options[] = {arch_flag.c_str(), "-std=c++17"};
  r = nvrtcCompileProgram(prog, 2, options);
  std::string log;
  size_t log_size = 0;
  if (nvrtcGetProgramLogSize(prog, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    if (nvrtcGetProgramLog(prog, log.data()) != NVRTC_SUCCESS) log.clear();
    while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  }
  std::vector<char> cubin;
  Status st;
  if (r != NVRTC_SUCCESS) {
    st = Internal("NVRTC could not compile " + file + " for " + arch + " (" + nvrtcGetErrorString(r) + "): " + log);
  } else {
    size_t size = 0;
    r = nvrtcGetCUBINSize(prog, &size);
    if (r == NVRTC_SUCCESS && size > 0) {
      cubin.resize(size);
      r = nvrtcGetCUBIN(prog, cubin.data());
    }
    if (r != NVRTC_SUCCESS || size == 0)
      st = Internal("NVRTC gave no CUBIN for " + file + " (" + nvrtcGetErrorString(r) + "; is " + arch +
                    " a real architecture, not compute_XX?)");
  }
  nvrtcDestroyProgram(&prog);
  if (!st.ok()) return st;
  return cubin;
}

Result<CompiledPointwise> compile_pointwise(const PointwiseKernelSpec& spec, const std::string& arch,
                                            const std::string& what) {
  CompiledPointwise k;
  k.kernel = pointwise_kernel_name(spec);
  KILN_ASSIGN_OR_RETURN(std::string source, pointwise_kernel_source(spec, k.kernel, what));
  auto cubin = compile_to_cubin(source, k.kernel, arch);
  if (!cubin.ok()) return Status(cubin.status().code(), what + ": " + cubin.status().message());
  k.cubin.assign(cubin->begin(), cubin->end());
  return k;
}

Result<std::string> current_device_arch() {
  int dev = 0, major = 0, minor = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Unsupported(std::string("no CUDA device to compile kiln.Pointwise kernels for: ") + cudaGetErrorName(e) +
                       ": " + cudaGetErrorString(e));
  }
  return "sm_" + std::to_string(major) + std::to_string(minor);
}

Result<PointwiseArgs> pointwise_args(const PointwiseKernelSpec& spec, const std::vector<Shape>& input_shapes,
                                     const std::string& what) {
  const size_t n_in = spec.input_dtypes.size();
  if (input_shapes.size() != n_in)
    return InvalidArgument(what + ": " + std::to_string(input_shapes.size()) + " input shapes for " +
                           std::to_string(n_in) + " inputs");
  for (size_t i = 0; i < n_in; ++i)
    for (int64_t d : input_shapes[i])
      if (d < 0) return InvalidArgument(what + ": input " + std::to_string(i) + " has unknown dims " + shape_to_string(input_shapes[i]));
  auto out = cpu::broadcast_shapes(input_shapes);
  if (!out.ok()) return InvalidArgument(what + ": inputs do not broadcast: " + out.status().message());
  if (out->size() != spec.rank)
    return InvalidArgument(what + ": the output has rank " + std::to_string(out->size()) + ", the kernel rank " +
                           std::to_string(spec.rank));
  PointwiseArgs a;
  a.out_shape = *out;
  a.n = shape_numel(*out);
  a.vectorizable = true;
  a.words.assign(1 + kPointwiseMaxRank * (n_in + 1) + 2, 0);
  a.words[0] = a.n;
  for (size_t d = 0; d < kPointwiseMaxRank; ++d) a.words[1 + d] = d < out->size() ? (*out)[d] : 1;
  int64_t scalar_mask = 0, row_mask = 0;
  const int64_t last = out->empty() ? 1 : out->back();
  const bool whole_chunks_a_row = last % pointwise_vector_width(spec) == 0;
  for (size_t i = 0; i < n_in; ++i) {
    const Shape& s = input_shapes[i];
    const std::vector<int64_t> own = cpu::strides_of(s);
    const size_t lead = out->size() - s.size();
    int64_t* strides = a.words.data() + 1 + kPointwiseMaxRank * (i + 1);
    for (size_t d = 0; d < s.size(); ++d)
      if (s[d] != 1) strides[lead + d] = own[d];
    // An input with the output's element count broadcasts along no dim: it is laid out as the output.
    const int64_t numel = shape_numel(s);
    if (numel == 1) scalar_mask |= int64_t(1) << i;
    else if (numel != a.n && whole_chunks_a_row && !s.empty() && s.back() == last) row_mask |= int64_t(1) << i;
    else if (numel != a.n) a.vectorizable = false;
  }
  a.words[a.words.size() - 2] = scalar_mask;
  a.words.back() = row_mask;
  return a;
}

}  // namespace kiln::cuda
