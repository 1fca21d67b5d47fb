// CPU reference of the optimizer's kiln.Pointwise (domain "kiln"; made by fuse_pointwise): a chain of
// elementwise ops run as one, its inputs in0..inN (float tensors) broadcast together like numpy, its one
// output in in0's dtype. The attribute `program` holds the ops (pointwise_program.h). The arithmetic is
// float32 (float64 when in0 is float64) from the inputs to the output: a float16 chain rounds once, at
// the end, where the unfused graph rounds after each op. Each op is computed as its ONNX reference
// computes it (Sigmoid without overflow, Relu and Max/Min keeping NaN), so a float32 chain matches the
// graph it replaces.
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/elementwise_util.h"
#include "backends/cpu/ops/pointwise_program.h"
#include "core/cast.h"

namespace kiln::pointwise {
namespace {

struct OpInfo {
  Op op;
  const char* name;
  const char* onnx;
  int arity;
};

constexpr OpInfo kOps[] = {
    {Op::kAdd, "add", "Add", 2},         {Op::kSub, "sub", "Sub", 2},     {Op::kMul, "mul", "Mul", 2},
    {Op::kDiv, "div", "Div", 2},         {Op::kNeg, "neg", "Neg", 1},     {Op::kAbs, "abs", "Abs", 1},
    {Op::kExp, "exp", "Exp", 1},         {Op::kLog, "log", "Log", 1},     {Op::kSqrt, "sqrt", "Sqrt", 1},
    {Op::kTanh, "tanh", "Tanh", 1},      {Op::kSigmoid, "sigmoid", "Sigmoid", 1},
    {Op::kRelu, "relu", "Relu", 1},      {Op::kErf, "erf", "Erf", 1}, {Op::kPow, "pow", "Pow", 2},
    {Op::kMax, "max", "Max", 2},         {Op::kMin, "min", "Min", 2},
};

const OpInfo& info(Op op) {
  for (const OpInfo& i : kOps)
    if (i.op == op) return i;
  return kOps[0];  // unreachable: every Op is in kOps
}

// "inI" / "tJ" with digits only after the letter(s); false for anything else.
bool parse_index(const std::string& tok, const char* prefix, int* index) {
  const std::string p(prefix);
  if (tok.size() <= p.size() || tok.compare(0, p.size(), p) != 0) return false;
  int v = 0;
  for (size_t i = p.size(); i < tok.size(); ++i) {
    if (tok[i] < '0' || tok[i] > '9' || v > 1000000) return false;
    v = v * 10 + (tok[i] - '0');
  }
  *index = v;
  return true;
}

}  // namespace

const char* op_name(Op op) { return info(op).name; }
int op_arity(Op op) { return info(op).arity; }

bool op_of_onnx(const std::string& onnx_op, Op* op) {
  for (const OpInfo& i : kOps)
    if (onnx_op == i.onnx) {
      *op = i.op;
      return true;
    }
  return false;
}

Result<Program> parse_program(const std::vector<std::string>& lines, size_t num_inputs) {
  if (lines.empty()) return InvalidArgument("program is empty (the attribute `program` needs one instruction or more)");
  Program p;
  for (size_t k = 0; k < lines.size(); ++k) {
    const std::string where = "instruction " + std::to_string(k) + " \"" + lines[k] + "\": ";
    std::istringstream in(lines[k]);
    std::vector<std::string> tok;
    for (std::string t; in >> t;) tok.push_back(t);
    int dest = -1;
    if (tok.size() < 3 || !parse_index(tok[0], "t", &dest) || tok[1] != "=")
      return InvalidArgument(where + "expected \"t" + std::to_string(k) + " = OP a [b [c]]\"");
    if (dest != static_cast<int>(k))
      return InvalidArgument(where + "defines t" + std::to_string(dest) + ", expected t" + std::to_string(k) +
                             " (instructions number their results in order)");
    Instruction ins;
    bool known = false;
    for (const OpInfo& i : kOps)
      if (tok[2] == i.name) {
        ins.op = i.op;
        known = true;
      }
    if (!known)
      return InvalidArgument(where + "unknown op \"" + tok[2] +
                             "\" (add sub mul div neg abs exp log sqrt tanh sigmoid relu erf pow max min)");
    const size_t arity = static_cast<size_t>(op_arity(ins.op));
    if (tok.size() - 3 != arity)
      return InvalidArgument(where + tok[2] + " takes " + std::to_string(arity) + " operand(s), got " +
                             std::to_string(tok.size() - 3));
    for (size_t a = 3; a < tok.size(); ++a) {
      const std::string& t = tok[a];
      Operand o;
      if (parse_index(t, "in", &o.index)) {
        o.kind = Operand::Kind::kInput;
        if (static_cast<size_t>(o.index) >= num_inputs)
          return InvalidArgument(where + "reads " + t + " but the node has " + std::to_string(num_inputs) + " input(s)");
      } else if (parse_index(t, "t", &o.index)) {
        o.kind = Operand::Kind::kTemp;
        if (o.index >= static_cast<int>(k)) return InvalidArgument(where + "reads " + t + " before it is defined");
      } else {
        char* end = nullptr;
        o.literal = std::strtod(t.c_str(), &end);
        if (end == t.c_str() || *end != '\0')
          return InvalidArgument(where + "operand \"" + t + "\" is not inI, tJ or a number");
      }
      ins.args.push_back(o);
    }
    p.code.push_back(std::move(ins));
  }
  return p;
}

// One op on values of the computation's type, as the ONNX reference kernels compute it.
template <class T>
T apply(Op op, T a, T b) {
  switch (op) {
    case Op::kAdd: return a + b;
    case Op::kSub: return a - b;
    case Op::kMul: return a * b;
    case Op::kDiv: return a / b;
    case Op::kNeg: return -a;
    case Op::kAbs: return std::fabs(a);
    case Op::kExp: return std::exp(a);
    case Op::kLog: return std::log(a);
    case Op::kSqrt: return std::sqrt(a);
    case Op::kTanh: return std::tanh(a);
    case Op::kSigmoid: return cpu::elementwise::sigmoid(a);
    case Op::kRelu: return a < T(0) ? T(0) : a;
    case Op::kErf: return std::erf(a);
    case Op::kPow: return std::pow(a, b);
    case Op::kMax:
      if (std::isnan(a) || std::isnan(b)) return std::isnan(a) ? a : b;
      return a < b ? b : a;
    case Op::kMin:
      if (std::isnan(a) || std::isnan(b)) return std::isnan(a) ? a : b;
      return b < a ? b : a;
  }
  return a;
}

}  // namespace kiln::pointwise

namespace kiln::cpu {
namespace {

using pointwise::Operand;

template <class T>
Tensor run_program(const pointwise::Program& p, const std::vector<Tensor>& in, const Shape& out_shape) {
  Tensor out(std::is_same_v<T, double> ? DType::kFloat64 : DType::kFloat32, out_shape);
  std::vector<std::vector<int64_t>> index(in.size());
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i].shape() != out_shape) index[i] = broadcast_index_map(in[i].shape(), out_shape);
  std::vector<T> t(p.code.size());
  T* dst = out.data<T>();
  for (int64_t e = 0, n = out.numel(); e < n; ++e) {
    for (size_t k = 0; k < p.code.size(); ++k) {
      const pointwise::Instruction& ins = p.code[k];
      T v[2] = {T(0), T(0)};
      for (size_t a = 0; a < ins.args.size(); ++a) {
        const Operand& o = ins.args[a];
        if (o.kind == Operand::Kind::kInput) {
          const size_t i = static_cast<size_t>(o.index);
          v[a] = in[i].data<T>()[index[i].empty() ? e : index[i][e]];
        } else if (o.kind == Operand::Kind::kTemp) {
          v[a] = t[static_cast<size_t>(o.index)];
        } else {
          v[a] = static_cast<T>(o.literal);
        }
      }
      t[k] = pointwise::apply<T>(ins.op, v[0], v[1]);
    }
    dst[e] = t.back();
  }
  return out;
}

Status pointwise_kernel(KernelContext& ctx) {
  if (ctx.num_inputs() == 0) return ctx.error("needs at least one input (in0)");
  std::vector<Shape> shapes;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    KILN_ASSIGN_OR_RETURN(Tensor x, elementwise::required_input(ctx, i));
    if (!dtype_is_float(x.dtype()))
      return ctx.error("input " + std::to_string(i) + " must be a float tensor, got " + dtype_name(x.dtype()));
    shapes.push_back(x.shape());
  }
  auto program = pointwise::parse_program(ctx.attr_strings("program"), ctx.num_inputs());
  if (!program.ok()) return ctx.error(program.status().message());
  auto out_shape = broadcast_shapes(shapes);
  if (!out_shape.ok()) return ctx.error("inputs do not broadcast: " + out_shape.status().message());
  const DType out_dtype = ctx.input(0).dtype();
  const DType compute = out_dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  std::vector<Tensor> in;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& x = ctx.input(i);
    if (x.dtype() == compute) {
      in.push_back(x);
      continue;
    }
    auto c = cast_tensor(x, compute);
    if (!c.ok()) return ctx.error("input " + std::to_string(i) + ": " + c.status().message());
    in.push_back(std::move(*c));
  }
  Tensor y = compute == DType::kFloat64 ? run_program<double>(*program, in, *out_shape)
                                        : run_program<float>(*program, in, *out_shape);
  if (y.dtype() != out_dtype) {
    auto c = cast_tensor(y, out_dtype);
    if (!c.ok()) return ctx.error(c.status().message());
    y = std::move(*c);
  }
  ctx.set_output(0, std::move(y));
  return OkStatus();
}

}  // namespace

void register_pointwise_ops(ir::OpRegistry& r) {
  ir::OpSchema s;
  s.domain = "kiln";
  s.op_type = "Pointwise";
  s.since_version = 1;
  s.cpu_kernel = pointwise_kernel;
  r.add(std::move(s));
}

}  // namespace kiln::cpu
