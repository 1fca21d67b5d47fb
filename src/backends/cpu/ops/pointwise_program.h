// The program of kiln.Pointwise (made by passes/fuse_pointwise.cc): one instruction per attribute string,
// "tK = OP a [b [c]]", K counting from 0, operands inI (the node's inputs), tJ with J < K, or a float
// literal (0.5, -inf, nan). The last tK is the output. Parsed once here for the CPU reference
// (pointwise.cc) and the CUDA code generator (backends/cuda/pointwise_codegen.cc), so that both read the
// same language.
#pragma once

#include <string>
#include <vector>

#include "kiln/status.h"

namespace kiln::pointwise {

enum class Op { kAdd, kSub, kMul, kDiv, kNeg, kAbs, kExp, kLog, kSqrt, kTanh, kSigmoid, kRelu, kErf, kPow, kMax, kMin };

struct Operand {
  enum class Kind { kInput, kTemp, kLiteral };
  Kind kind = Kind::kLiteral;
  int index = 0;        // inI / tJ
  double literal = 0;   // kLiteral, converted to the computation's type where used
};

struct Instruction {
  Op op = Op::kAdd;
  std::vector<Operand> args;
};

struct Program {
  std::vector<Instruction> code;
};

// The name in the program ("add", "sigmoid", ...) and the number of operands of an op.
const char* op_name(Op op);
int op_arity(Op op);
// The op whose ONNX name (Add, Sigmoid, ...) this is; false for others.
bool op_of_onnx(const std::string& onnx_op, Op* op);

// Parses `lines` for a node with `num_inputs` inputs. Errors say which instruction and why (the caller
// names the node): bad syntax, an unknown op, a wrong number of operands, an operand used before it is
// defined or an input the node does not have, and an empty program.
Result<Program> parse_program(const std::vector<std::string>& lines, size_t num_inputs);

}  // namespace kiln::pointwise
