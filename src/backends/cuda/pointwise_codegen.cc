// CUDA code generation of kiln.Pointwise (see pointwise_codegen.h). The kernel computes in float32 (float64
// when the output is float64), like the CPU reference (backends/cpu/ops/pointwise.cc), with the accurate
// expf / erff / tanhf rather than the __expf intrinsics: the fused kernel must match the graph it replaces.
// float16 and bfloat16 are loaded and stored through PTX conversions, so the source needs no header at all.
#include "backends/cuda/pointwise_codegen.h"

#include <nvrtc.h>

#include <cstdint>
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

// Input i's element at offset `off`, converted to the computation's type T.
std::string load(DType t, size_t i, const std::string& off) {
  const std::string p = "in" + std::to_string(i) + "[" + off + "]";
  if (t == DType::kFloat16) return "(T)kiln_h2f(" + p + ")";
  if (t == DType::kBFloat16) return "(T)kiln_bf2f(" + p + ")";
  return "(T)" + p;
}

std::string store(DType t, const std::string& v) {
  if (t == DType::kFloat16) return "kiln_f2h((float)" + v + ")";
  if (t == DType::kBFloat16) return "kiln_f2bf((float)" + v + ")";
  return std::string("(") + storage_type(t) + ")" + v;
}

}  // namespace

Result<PointwiseKernelSpec> pointwise_kernel_spec(const ir::Node& node, const std::vector<Shape>& input_shapes,
                                                 const std::vector<DType>& input_dtypes) {
  const std::string who = node.describe() + ": ";
  if (input_shapes.empty() || input_shapes.size() != input_dtypes.size() || input_shapes.size() != node.inputs.size())
    return InvalidArgument(who + "needs one shape and one dtype per input (" + std::to_string(node.inputs.size()) +
                           " inputs), got " + std::to_string(input_shapes.size()) + " and " +
                           std::to_string(input_dtypes.size()));
  PointwiseKernelSpec spec;
  if (const ir::Attribute* p = node.attr("program")) spec.program = p->strings;
  auto program = pointwise::parse_program(spec.program, input_shapes.size());
  if (!program.ok()) return InvalidArgument(who + program.status().message());
  auto out = cpu::broadcast_shapes(input_shapes);
  if (!out.ok()) return InvalidArgument(who + "inputs do not broadcast: " + out.status().message());
  if (out->size() > kPointwiseMaxRank)
    return Unsupported(who + "output rank " + std::to_string(out->size()) + " is above " +
                       std::to_string(kPointwiseMaxRank));
  for (size_t i = 0; i < input_dtypes.size(); ++i)
    if (!supported_dtype(input_dtypes[i]))
      return Unsupported(who + "input " + std::to_string(i) + " has dtype " + dtype_name(input_dtypes[i]) +
                         " (float32, float64, float16 or bfloat16)");
  spec.input_dtypes = input_dtypes;
  spec.out_dims = *out;
  spec.out_dtype = input_dtypes[0];
  for (const Shape& s : input_shapes) {
    std::vector<int64_t> strides(out->size(), 0);
    const std::vector<int64_t> own = cpu::strides_of(s);
    const size_t lead = out->size() - s.size();
    for (size_t d = 0; d < s.size(); ++d)
      if (s[d] != 1) strides[lead + d] = own[d];
    spec.input_strides.push_back(std::move(strides));
  }
  return spec;
}

Result<std::string> pointwise_kernel_source(const PointwiseKernelSpec& spec, const std::string& kernel_name,
                                            const std::string& what) {
  const size_t n_in = spec.input_dtypes.size();
  auto program = pointwise::parse_program(spec.program, n_in);
  if (!program.ok()) return InvalidArgument(what + ": " + program.status().message());
  if (n_in == 0 || spec.input_strides.size() != n_in || spec.out_dims.size() > kPointwiseMaxRank ||
      !supported_dtype(spec.out_dtype))
    return InvalidArgument(what + ": inconsistent kernel spec (make it with pointwise_kernel_spec)");
  for (size_t i = 0; i < n_in; ++i)
    if (!supported_dtype(spec.input_dtypes[i]) || spec.input_strides[i].size() != spec.out_dims.size())
      return InvalidArgument(what + ": inconsistent kernel spec for input " + std::to_string(i));
  const bool dbl = spec.out_dtype == DType::kFloat64;
  const size_t rank = spec.out_dims.size();
  const std::vector<int64_t> dense = cpu::strides_of(spec.out_dims);

  std::ostringstream s;
  s << "// kiln.Pointwise " << what << ", generated by Kiln (pointwise_codegen.cc)\n";
  s << "typedef " << (dbl ? "double" : "float") << " T;\n";
  s << "#define EXP " << (dbl ? "exp" : "expf") << "\n" << kHelpers << "#undef EXP\n";
  s << "extern \"C\" __global__ void " << kernel_name << "(";
  for (size_t i = 0; i < n_in; ++i)
    s << "const " << storage_type(spec.input_dtypes[i]) << "* __restrict__ in" << i << ", ";
  s << storage_type(spec.out_dtype) << "* __restrict__ out, long long n) {\n";
  s << "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {\n";
  // An input of the output's own layout reads at i; the others from the output's coordinates.
  std::vector<bool> dense_input(n_in);
  bool need_coords = false;
  for (size_t i = 0; i < n_in; ++i) {
    dense_input[i] = true;
    for (size_t d = 0; d < rank; ++d)
      if (spec.out_dims[d] != 1 && spec.input_strides[i][d] != dense[d]) dense_input[i] = false;
    need_coords |= !dense_input[i];
  }
  if (need_coords) {
    s << "    long long r = i;\n";
    for (size_t d = rank; d-- > 0;) {
      s << "    const long long c" << d << " = r % " << spec.out_dims[d] << "LL;";
      s << (d > 0 ? " r /= " + std::to_string(spec.out_dims[d]) + "LL;\n" : "\n");
    }
  }
  for (size_t i = 0; i < n_in; ++i) {
    s << "    const long long o" << i << " = ";
    if (dense_input[i]) {
      s << "i;\n";
      continue;
    }
    std::string sum;
    for (size_t d = 0; d < rank; ++d)
      if (spec.input_strides[i][d] != 0 && spec.out_dims[d] != 1)
        sum += (sum.empty() ? "" : " + ") + ("c" + std::to_string(d) + " * " + std::to_string(spec.input_strides[i][d]) + "LL");
    s << (sum.empty() ? "0" : sum) << ";\n";
  }
  for (size_t k = 0; k < program->code.size(); ++k) {
    const pointwise::Instruction& ins = program->code[k];
    std::string arg[2];
    for (size_t a = 0; a < ins.args.size(); ++a) {
      const Operand& o = ins.args[a];
      if (o.kind == Operand::Kind::kInput)
        arg[a] = load(spec.input_dtypes[o.index], static_cast<size_t>(o.index), "o" + std::to_string(o.index));
      else if (o.kind == Operand::Kind::kTemp)
        arg[a] = "t" + std::to_string(o.index);
      else
        arg[a] = literal(o.literal, dbl);
      arg[a] = "(" + arg[a] + ")";
    }
    s << "    const T t" << k << " = " << expression(ins.op, arg[0], arg[1], dbl) << ";\n";
  }
  s << "    out[i] = " << store(spec.out_dtype, "t" + std::to_string(program->code.size() - 1)) << ";\n";
  s << "  }\n}\n";
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

}  // namespace kiln::cuda
