// CUDA layers: unary ops and activations, broadcasting binary ops, Where and Cast. The kernels are in
// elementwise.cu (kernels.h); this file reads the node's attributes and checks what the kernels accept.
#include <cstring>
#include <limits>

#include "backends/cuda/kernels.h"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

bool float_type(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

class UnaryLayer : public Layer {
 public:
  UnaryLayer(UnaryOp op, UnaryParams params) : op_(op), params_(params) {}
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    return launch_unary(op_, in[0].dtype, in[0].data, out[0].data, in[0].numel(), params_, h.stream);
  }

 private:
  UnaryOp op_;
  UnaryParams params_;
};

class BinaryLayer : public Layer {
 public:
  explicit BinaryLayer(BinaryOp op) : op_(op) {}
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    return launch_binary(op_, in[0].dtype, in[0].data, in[0].shape, in[1].data, in[1].shape, out[0].data,
                         out[0].shape, h.stream);
  }

 private:
  BinaryOp op_;
};

class WhereLayer : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    return launch_where(in[1].dtype, in[0].data, in[0].shape, in[1].data, in[1].shape, in[2].data, in[2].shape,
                        out[0].data, out[0].shape, h.stream);
  }
};

class CastLayer : public Layer {
 public:
  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    return launch_cast(in[0].dtype, in[0].data, out[0].dtype, out[0].data, in[0].numel(), h.stream);
  }
};

// The attribute-like parameters of a unary op (Clip's bounds come from constant inputs from opset 11).
UnaryParams unary_params(const LayerSpec& spec, UnaryOp op) {
  UnaryParams p;
  switch (op) {
    case UnaryOp::kLeakyRelu: p.alpha = spec.attr_float("alpha", 0.01f); break;
    case UnaryOp::kElu: p.alpha = spec.attr_float("alpha", 1.0f); break;
    case UnaryOp::kHardSigmoid:
      p.alpha = spec.attr_float("alpha", 0.2f);
      p.beta = spec.attr_float("beta", 0.5f);
      break;
    case UnaryOp::kSwish: p.alpha = spec.attr_float("alpha", 1.0f); break;
    case UnaryOp::kClip: {
      p.lo = -std::numeric_limits<float>::infinity();
      p.hi = std::numeric_limits<float>::infinity();
      if (spec.opset < 11) {
        p.lo = spec.attr_float("min", p.lo);
        p.hi = spec.attr_float("max", p.hi);
      } else {
        std::vector<float> v;
        if (spec.constant_floats(1, &v) && !v.empty()) p.lo = v[0];
        if (spec.constant_floats(2, &v) && !v.empty()) p.hi = v[0];
      }
      break;
    }
    default: break;
  }
  return p;
}

// Gelu is one op with an attribute; the kernels have one op per form.
bool unary_op_of(const LayerSpec& spec, UnaryOp* op) {
  const std::string& type = spec.node->op_type;
  if (type == "Gelu") {
    *op = spec.attr_string("approximate", "none") == "tanh" ? UnaryOp::kGeluTanh : UnaryOp::kGeluErf;
    return true;
  }
  return unary_op_from_name(type.c_str(), op);
}

std::string check_unary(const LayerSpec& spec) {
  const std::string& type = spec.node->op_type;
  const DType dt = spec.inputs.empty() ? DType::kUndefined : spec.inputs[0].dtype;
  if (!float_type(dt)) return "CUDA " + type + " supports float32, float16 and bfloat16, got " + dtype_name(dt);
  if (type == "Gelu") {
    const std::string a = spec.attr_string("approximate", "none");
    if (a != "none" && a != "tanh") return "CUDA Gelu: approximate '" + a + "' is not one of none, tanh";
  }
  if (type == "Clip" && spec.opset >= 11) {
    for (size_t i = 1; i < spec.inputs.size(); ++i)
      if (spec.inputs[i].present() && spec.inputs[i].constant == nullptr)
        return "CUDA Clip needs constant min and max (input " + std::to_string(i) + " is computed)";
  }
  return "";
}

std::string check_binary(const LayerSpec& spec) {
  const std::string& type = spec.node->op_type;
  if (spec.inputs.size() != 2)
    return "CUDA " + type + " takes exactly two inputs, got " + std::to_string(spec.inputs.size());
  if (spec.opset < 7) return "CUDA " + type + ": opset " + std::to_string(spec.opset) + " broadcasting (axis) is not implemented";
  const DType a = spec.inputs[0].dtype, b = spec.inputs[1].dtype;
  if (!binary_supports(a) || a != b)
    return "CUDA " + type + " supports float32, float16 and bfloat16 (both inputs alike), got " + dtype_name(a) +
           " and " + dtype_name(b);
  return "";
}

std::string check_where(const LayerSpec& spec) {
  if (spec.inputs.size() != 3) return "CUDA Where takes three inputs";
  if (spec.inputs[0].dtype != DType::kBool) return "CUDA Where needs a bool condition";
  const DType x = spec.inputs[1].dtype;
  if (!float_type(x) || spec.inputs[2].dtype != x)
    return "CUDA Where supports float32, float16 and bfloat16 values, got " + dtype_name(x) + " and " +
           dtype_name(spec.inputs[2].dtype);
  return "";
}

std::string check_cast(const LayerSpec& spec) {
  const DType from = spec.inputs.empty() ? DType::kUndefined : spec.inputs[0].dtype;
  const DType to = static_cast<DType>(spec.attr_int("to", 0));
  if (!cast_supports(from, to))
    return "CUDA Cast from " + dtype_name(from) + " to " + dtype_name(to) + " is not implemented";
  return "";
}

}  // namespace

void register_elementwise_layers(LayerTable& table) {
  static const char* kUnary[] = {"Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Sin", "Cos", "Tanh", "Erf",
                                 "Floor", "Ceil", "Relu", "LeakyRelu", "Elu", "Sigmoid", "HardSigmoid",
                                 "HardSwish", "Gelu", "Swish", "Softplus", "Clip"};
  for (const char* op : kUnary) {
    UnaryOp probe;
    if (std::strcmp(op, "Gelu") != 0 && !unary_op_from_name(op, &probe)) continue;  // not in this kernel set
    LayerKind k;
    k.op_type = op;
    k.check = check_unary;
    k.create = [](const LayerSpec& spec, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      UnaryOp u;
      if (!unary_op_of(spec, &u)) return Unsupported("no CUDA kernel for " + spec.node->op_type);
      return std::unique_ptr<Layer>(std::make_unique<UnaryLayer>(u, unary_params(spec, u)));
    };
    table.add(std::move(k));
  }
  for (const char* op : {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}) {
    LayerKind k;
    k.op_type = op;
    k.check = check_binary;
    k.create = [](const LayerSpec& spec, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
      BinaryOp b;
      if (!binary_op_from_name(spec.node->op_type.c_str(), &b)) return Unsupported("no CUDA kernel for " + spec.node->op_type);
      return std::unique_ptr<Layer>(std::make_unique<BinaryLayer>(b));
    };
    table.add(std::move(k));
  }
  LayerKind where;
  where.op_type = "Where";
  where.check = check_where;
  where.create = [](const LayerSpec&, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
    return std::unique_ptr<Layer>(std::make_unique<WhereLayer>());
  };
  table.add(std::move(where));
  LayerKind cast;
  cast.op_type = "Cast";
  cast.lowers_to_fp16 = false;  // its output type is its attribute, not its input's
  cast.check = check_cast;
  cast.create = [](const LayerSpec&, const std::string&, const CudaHandles&) -> Result<std::unique_ptr<Layer>> {
    return std::unique_ptr<Layer>(std::make_unique<CastLayer>());
  };
  table.add(std::move(cast));
}

}  // namespace kiln::cuda
