// Shape inference with symbolic dimensions: propagates dtype and dims through the ops that models use
// most, so that Shape -> Gather -> Concat -> Reshape chains fold when input shapes are known. An op it does
// not know leaves its outputs unknown; it never guesses (a wrong static shape would fold a wrong constant).
#include <algorithm>
#include <set>

#include "backends/relayout_spec.h"
#include "passes/passes.h"
#include "passes/symbolic_dims.h"

namespace kiln::passes {

namespace {

using ir::Dim;
using ir::TypeInfo;

TypeInfo tensor_type(DType dtype, std::vector<Dim> dims) {
  TypeInfo t;
  t.kind = TypeInfo::Kind::kTensor;
  t.dtype = dtype;
  t.has_shape = true;
  t.dims = std::move(dims);
  return t;
}

TypeInfo dtype_only(DType dtype) {
  TypeInfo t;
  t.kind = TypeInfo::Kind::kTensor;
  t.dtype = dtype;
  return t;
}

// Numpy broadcasting of dims; a pair it cannot decide (two different symbols) becomes unknown.
std::vector<Dim> broadcast(const std::vector<Dim>& a, const std::vector<Dim>& b) {
  size_t rank = std::max(a.size(), b.size());
  std::vector<Dim> out(rank);
  for (size_t i = 0; i < rank; ++i) {
    Dim da = i < rank - a.size() ? Dim::of(1) : a[i - (rank - a.size())];
    Dim db = i < rank - b.size() ? Dim::of(1) : b[i - (rank - b.size())];
    if (da.known() && da.value == 1) out[i] = db;
    else if (db.known() && db.value == 1) out[i] = da;
    else if (same_dim(da, db)) out[i] = da;
    else if (da.known() && !db.known()) out[i] = da;  // db must equal da (or be 1, which would not change it)
    else if (db.known() && !da.known()) out[i] = db;
    else out[i] = Dim();
  }
  return out;
}

// One element of a small integer tensor computed from shapes (Shape -> Gather -> Concat -> Reshape): a
// number, a symbolic dim ("batch", "2*seq"), or unknown. Dim cannot hold it: a Reshape target's -1 is a
// number there, not an unknown dim.
struct Element {
  enum class Kind { kUnknown, kNumber, kSymbol };
  Kind kind = Kind::kUnknown;
  int64_t number = 0;
  std::string symbol;

  static Element num(int64_t v) { return Element{Kind::kNumber, v, {}}; }
  static Element of(const Dim& d) {
    if (d.known()) return num(d.value);
    return d.symbol.empty() ? Element{} : Element{Kind::kSymbol, 0, d.symbol};
  }
  bool is(int64_t v) const { return kind == Kind::kNumber && number == v; }
  bool is_number() const { return kind == Kind::kNumber; }
  // As a dim: a non-negative number or a symbol.
  Dim dim() const {
    if (kind == Kind::kNumber) return number >= 0 ? Dim::of(number) : Dim();
    return kind == Kind::kSymbol ? Dim::named(symbol) : Dim();
  }
};

std::vector<Dim> dims_of(const std::vector<Element>& v) {
  std::vector<Dim> d;
  for (const auto& e : v) d.push_back(e.dim());
  return d;
}

// a op b for the integer arithmetic exporters put in shape computations; symbolic where the result is a
// product of dims (x * 1, x * y, 2 * x, x / 2 where the factor divides, x + 0, x - 0), unknown otherwise.
Element arithmetic(const std::string& op, const Element& a, const Element& b) {
  if (a.is_number() && b.is_number()) {
    if (op == "Add") return Element::num(a.number + b.number);
    if (op == "Sub") return Element::num(a.number - b.number);
    if (op == "Mul") return Element::num(a.number * b.number);
    if (op == "Div" && b.number != 0) return Element::num(a.number / b.number);
    return Element{};
  }
  if ((op == "Add" || op == "Sub") && b.is(0)) return a;
  if (op == "Add" && a.is(0)) return b;
  const Dim da = a.dim(), db = b.dim();
  if ((!da.known() && da.symbol.empty()) || (!db.known() && db.symbol.empty())) return Element{};
  if (op == "Mul") {
    DimProduct p = DimProduct::of(da);
    p *= DimProduct::of(db);
    return Element::of(p.to_dim());
  }
  if (op == "Div") return Element::of(DimProduct::of(da).divided_by(DimProduct::of(db)).to_dim());
  return Element{};
}

// Equal on shape values: dims are never negative, so a symbol differs from -1 (the "infer this dim" that
// exporters compare a target with before Expand).
Element equal(const Element& a, const Element& b) {
  if (a.is_number() && b.is_number()) return Element::num(a.number == b.number);
  if (a.kind == Element::Kind::kSymbol && b.kind == Element::Kind::kSymbol && a.symbol == b.symbol)
    return Element::num(1);
  if ((a.kind == Element::Kind::kSymbol && b.is_number() && b.number < 0) ||
      (b.kind == Element::Kind::kSymbol && a.is_number() && a.number < 0))
    return Element::num(0);
  return Element{};
}

class Inferrer {
 public:
  Inferrer(ir::Graph& g, int opset) : g_(g), opset_(opset) {}

  void run() {
    for (const ir::Node& n : g_.nodes) {
      if (n.domain == "kiln") {
        infer_kiln(n);
      } else if (n.domain.empty()) {
        infer(n);
        propagate_value(n);
      }
    }
  }

 private:
  const TypeInfo* type(const std::string& name) {
    if (name.empty()) return nullptr;
    if (auto it = g_.initializers.find(name); it != g_.initializers.end()) {
      auto& slot = const_types_[name];
      slot = tensor_type(it->second.dtype(), {});
      for (int64_t d : it->second.shape()) slot.dims.push_back(Dim::of(d));
      return &slot;
    }
    const TypeInfo* t = g_.type_of(name);
    return t && t->kind == TypeInfo::Kind::kTensor ? t : nullptr;
  }
  const Tensor* constant(const std::string& name) {
    // Inputs with defaults can be overridden at run time: they are not constants.
    for (const auto& in : g_.inputs)
      if (in.name == name) return nullptr;
    auto it = g_.initializers.find(name);
    return it == g_.initializers.end() ? nullptr : &it->second;
  }
  void set(const ir::Node& n, size_t i, TypeInfo t) {
    if (i < n.outputs.size() && !n.outputs[i].empty()) g_.value_types[n.outputs[i]] = std::move(t);
  }
  int64_t iattr(const ir::Node& n, const char* name, int64_t dflt) {
    const ir::Attribute* a = n.attr(name);
    return a && a->type == ir::Attribute::Type::kInt ? a->i : dflt;
  }
  std::vector<int64_t> iattrs(const ir::Node& n, const char* name) {
    const ir::Attribute* a = n.attr(name);
    return a && a->type == ir::Attribute::Type::kInts ? a->ints : std::vector<int64_t>{};
  }
  // Axes from an attribute (older opsets) or a constant input; false when unknown.
  bool axes_of(const ir::Node& n, size_t input, std::vector<int64_t>* axes) {
    if (n.attr("axes")) {
      *axes = iattrs(n, "axes");
      return true;
    }
    if (input < n.inputs.size() && !n.inputs[input].empty()) {
      const Tensor* c = constant(n.inputs[input]);
      if (!c) return false;
      *axes = c->to_int64_vector();
      return true;
    }
    axes->clear();
    return true;
  }

  // The elements of a small integer tensor of rank 0 or 1: a constant's, or those a shape computation
  // produced (propagate_value); null when not known.
  const std::vector<Element>* value(const std::string& name) {
    if (auto it = values_.find(name); it != values_.end()) return &it->second;
    const Tensor* c = name.empty() ? nullptr : constant(name);
    if (!c || (c->dtype() != DType::kInt64 && c->dtype() != DType::kInt32) || c->shape().size() > 1 ||
        c->numel() > kMaxValueElements)
      return nullptr;
    std::vector<Element>& v = values_[name];
    for (int64_t x : c->to_int64_vector()) v.push_back(Element::num(x));
    return &v;
  }
  void set_value(const ir::Node& n, std::vector<Element> v) {
    if (!n.outputs.empty() && !n.outputs[0].empty() && v.size() <= kMaxValueElements) values_[n.outputs[0]] = std::move(v);
  }

  // Follows integer values through the ops exporters build shape computations from, so that a Reshape,
  // Expand, Slice, Range or ConstantOfShape fed by one gets a symbolic output shape.
  void propagate_value(const ir::Node& n) {
    const std::string& op = n.op_type;
    if (n.inputs.empty() || n.outputs.empty()) return;
    if (op == "Shape") {
      const TypeInfo* x = type(n.inputs[0]);
      if (!x || !x->has_shape) return;
      const int64_t rank = static_cast<int64_t>(x->dims.size());
      auto clamp = [rank](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rank : v, 0, rank); };
      const int64_t start = opset_ >= 15 ? clamp(iattr(n, "start", 0)) : 0;
      const int64_t end = opset_ >= 15 ? clamp(iattr(n, "end", rank)) : rank;
      std::vector<Element> v;
      for (int64_t i = start; i < end; ++i) v.push_back(Element::of(x->dims[i]));
      return set_value(n, std::move(v));
    }
    if (op == "Size") {
      const TypeInfo* x = type(n.inputs[0]);
      if (x && x->has_shape) set_value(n, {Element::of(product_of(x->dims, 0, x->dims.size()).to_dim())});
      return;
    }
    if (op == "ConstantOfShape") {  // its output's dims are the input's value; a small integer fill is a value too
      const std::vector<Element>* shape = value(n.inputs[0]);
      if (!shape) return;
      const ir::Attribute* fill = n.attr("value");
      const DType dtype = fill && fill->type == ir::Attribute::Type::kTensor ? fill->t.dtype() : DType::kFloat32;
      set(n, 0, tensor_type(dtype, dims_of(*shape)));
      if (shape->size() == 1 && (*shape)[0].is_number() && (dtype == DType::kInt64 || dtype == DType::kInt32)) {
        const int64_t count = (*shape)[0].number, x = fill->t.numel() == 1 ? fill->t.to_int64_vector()[0] : 0;
        if (count >= 0 && count <= static_cast<int64_t>(kMaxValueElements))
          set_value(n, std::vector<Element>(static_cast<size_t>(count), Element::num(x)));
      }
      return;
    }
    if (op == "Range") {  // [ceil((limit - start) / delta)]: the limit itself from 0 in steps of 1
      if (n.inputs.size() < 3) return;
      const std::vector<Element>*start = value(n.inputs[0]), *limit = value(n.inputs[1]), *delta = value(n.inputs[2]);
      const TypeInfo* x = type(n.inputs[0]);
      if (!x || !start || !limit || !delta || start->size() != 1 || limit->size() != 1 || delta->size() != 1) return;
      const Element &a = (*start)[0], &b = (*limit)[0], &step = (*delta)[0];
      Dim length;
      if (a.is_number() && b.is_number() && step.is_number() && step.number != 0)
        length = Dim::of(std::max<int64_t>(0, (b.number - a.number + step.number - (step.number > 0 ? 1 : -1)) / step.number));
      else if (a.is(0) && step.is(1))
        length = b.dim();
      return set(n, 0, tensor_type(x->dtype, {length}));
    }
    const std::vector<Element>* a = value(n.inputs[0]);
    if (!a) return;
    if (op == "Identity" || op == "Unsqueeze" || op == "Squeeze" || op == "Flatten" ||
        (op == "Cast" && (iattr(n, "to", 0) == static_cast<int64_t>(DType::kInt64) ||
                          iattr(n, "to", 0) == static_cast<int64_t>(DType::kInt32)))) {
      return set_value(n, *a);
    }
    if (op == "Reshape") {  // to [-1] or [n]: the same elements in rank 1
      const std::vector<Element>* target = n.inputs.size() > 1 ? value(n.inputs[1]) : nullptr;
      if (target && target->size() <= 1) set_value(n, *a);
      return;
    }
    if (op == "Gather") {
      const Tensor* idx = n.inputs.size() > 1 ? constant(n.inputs[1]) : nullptr;
      if (!idx || iattr(n, "axis", 0) != 0 || idx->shape().size() > 1) return;
      std::vector<Element> v;
      for (int64_t i : idx->to_int64_vector()) {
        if (i < 0) i += static_cast<int64_t>(a->size());
        if (i < 0 || i >= static_cast<int64_t>(a->size())) return;
        v.push_back((*a)[i]);
      }
      return set_value(n, std::move(v));
    }
    if (op == "Concat") {
      std::vector<Element> v;
      for (const auto& in : n.inputs) {
        const std::vector<Element>* part = value(in);
        if (!part) return;
        v.insert(v.end(), part->begin(), part->end());
      }
      return set_value(n, std::move(v));
    }
    if (op == "Slice" && opset_ >= 10 && n.inputs.size() >= 3) {  // of a 1-D value, constant bounds
      const std::vector<Element>*starts = value(n.inputs[1]), *ends = value(n.inputs[2]);
      const std::vector<Element>* steps = n.inputs.size() > 4 && !n.inputs[4].empty() ? value(n.inputs[4]) : nullptr;
      if (!starts || !ends || starts->size() != 1 || ends->size() != 1 || !(*starts)[0].is_number() ||
          !(*ends)[0].is_number() || (steps && (steps->size() != 1 || !(*steps)[0].is(1))))
        return;
      const int64_t size = static_cast<int64_t>(a->size());
      auto clamp = [size](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + size : v, 0, size); };
      const int64_t from = clamp((*starts)[0].number), to = clamp((*ends)[0].number);
      return set_value(n, std::vector<Element>(a->begin() + from, a->begin() + std::max(from, to)));
    }
    if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Equal" || op == "Where") {
      const size_t first = op == "Where" ? 1 : 0;
      std::vector<const std::vector<Element>*> ins;
      size_t size = 1;
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        const std::vector<Element>* v = value(n.inputs[i]);
        if (!v || (v->size() != 1 && size != 1 && v->size() != size)) return;
        size = std::max(size, v->size());
        ins.push_back(v);
      }
      if (ins.size() != first + 2) return;
      auto at = [&](size_t k, size_t i) { return (*ins[k])[ins[k]->size() == 1 ? 0 : i]; };
      std::vector<Element> v;
      for (size_t i = 0; i < size; ++i) {
        if (op == "Where") {
          const Element c = at(0, i);
          v.push_back(!c.is_number() ? Element{} : c.number != 0 ? at(1, i) : at(2, i));
        } else {
          v.push_back(op == "Equal" ? equal(at(0, i), at(1, i)) : arithmetic(op, at(0, i), at(1, i)));
        }
      }
      return set_value(n, std::move(v));
    }
  }

  // Slice's output dims: exact where the bounds and the dim are numbers; [0, end) of a dim in steps of 1
  // with a symbolic end is that end (a slice of position ids up to the sequence length).
  void infer_slice(const ir::Node& n, const TypeInfo& x) {
    const int64_t rank = static_cast<int64_t>(x.dims.size());
    std::vector<Element> starts, ends, axes, steps;
    if (opset_ < 10) {
      for (int64_t v : iattrs(n, "starts")) starts.push_back(Element::num(v));
      for (int64_t v : iattrs(n, "ends")) ends.push_back(Element::num(v));
      for (int64_t v : iattrs(n, "axes")) axes.push_back(Element::num(v));
    } else {
      auto read = [&](size_t i, std::vector<Element>* out) {
        if (i >= n.inputs.size() || n.inputs[i].empty()) return true;
        const std::vector<Element>* v = value(n.inputs[i]);
        if (v) *out = *v;
        return v != nullptr;
      };
      if (!read(1, &starts) || !read(2, &ends) || !read(3, &axes) || !read(4, &steps)) return;
    }
    if (axes.empty())
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(Element::num(static_cast<int64_t>(i)));
    if (steps.empty()) steps.assign(starts.size(), Element::num(1));
    if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size()) return;
    std::vector<Dim> out = x.dims;
    for (size_t k = 0; k < starts.size(); ++k) {
      if (!axes[k].is_number()) return;
      int64_t axis = axes[k].number < 0 ? axes[k].number + rank : axes[k].number;
      if (axis < 0 || axis >= rank) return;
      const Dim& d = x.dims[axis];
      const Element &from = starts[k], &to = ends[k], &step = steps[k];
      if (d.known() && from.is_number() && to.is_number() && step.is_number() && step.number != 0) {
        const int64_t size = d.value, st = step.number;
        auto clamp = [&](int64_t v) {
          if (v < 0) v += size;
          return st > 0 ? std::clamp<int64_t>(v, 0, size) : std::clamp<int64_t>(v, -1, size - 1);
        };
        const int64_t a = clamp(from.number), b = clamp(to.number);
        out[axis] = Dim::of(st > 0 ? std::max<int64_t>(0, (b - a + st - 1) / st) : std::max<int64_t>(0, (a - b - st - 1) / -st));
      } else if (from.is(0) && step.is(1) && to.is_number() && to.number >= (int64_t{1} << 31)) {
        out[axis] = d;  // the whole dim
      } else if (from.is(0) && step.is(1) && to.kind == Element::Kind::kSymbol) {
        out[axis] = to.dim();  // up to a symbolic end, which a valid model keeps within the dim
      } else {
        out[axis] = Dim();
      }
    }
    set(n, 0, tensor_type(x.dtype, out));
  }

  void infer(const ir::Node& n) {
    static const std::set<std::string> same_as_input = {
        "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round", "Sqrt", "Exp", "Log", "Sin", "Cos", "Tan", "Asin",
        "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Erf", "Sign", "Relu", "LeakyRelu", "Elu",
        "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "ThresholdedRelu",
        "Shrink", "Gelu", "Mish", "Swish", "Clip", "Identity", "Softmax", "LogSoftmax", "Hardmax",
        "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
        "RMSNormalization", "LRN", "LpNormalization", "MeanVarianceNormalization", "Dropout", "Not",
        "BitwiseNot", "CumSum", "CumProd", "Trilu"};
    static const std::set<std::string> broadcasting = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "PRelu",
                                                       "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
                                                       "Max", "Min", "Sum", "Mean"};
    static const std::set<std::string> comparing = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
                                                    "And", "Or", "Xor"};
    const std::string& op = n.op_type;
    const TypeInfo* x = n.inputs.empty() ? nullptr : type(n.inputs[0]);

    if (same_as_input.count(op)) {
      if (x) set(n, 0, *x);
      return;
    }
    if (broadcasting.count(op) || comparing.count(op) || op == "Where") {
      if (opset_ < 7) return;  // legacy broadcast/axis attributes, not numpy rules

      std::vector<Dim> dims;
      DType dtype = DType::kUndefined;
      size_t first = op == "Where" ? 1 : 0;
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        const TypeInfo* t = type(n.inputs[i]);
        if (!t) return;
        if (i == first) dtype = t->dtype;
        if (!t->has_shape) {
          set(n, 0, dtype_only(comparing.count(op) ? DType::kBool : dtype));
          return;
        }
        dims = i == 0 ? t->dims : broadcast(dims, t->dims);
      }
      if (comparing.count(op)) dtype = DType::kBool;
      if (!n.inputs.empty()) set(n, 0, tensor_type(dtype, dims));
      return;
    }
    if (op == "IsNaN" || op == "IsInf") {
      if (!x) return;
      TypeInfo t = *x;
      t.dtype = DType::kBool;
      return set(n, 0, t);
    }
    if (op == "Cast") {
      TypeInfo t = x ? *x : TypeInfo{};
      t.kind = TypeInfo::Kind::kTensor;
      t.dtype = static_cast<DType>(iattr(n, "to", 0));
      set(n, 0, t);
      return;
    }
    if (!x) return;
    if (op == "Shape") {
      if (!x->has_shape) return set(n, 0, dtype_only(DType::kInt64));
      int64_t rank = static_cast<int64_t>(x->dims.size());
      int64_t start = opset_ >= 15 ? iattr(n, "start", 0) : 0, end = opset_ >= 15 ? iattr(n, "end", rank) : rank;
      auto clamp = [rank](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rank : v, 0, rank); };
      return set(n, 0, tensor_type(DType::kInt64, {Dim::of(std::max<int64_t>(0, clamp(end) - clamp(start)))}));
    }
    if (op == "Size") return set(n, 0, tensor_type(DType::kInt64, {}));
    if (!x->has_shape) return;
    const std::vector<Dim>& d = x->dims;
    const int64_t rank = static_cast<int64_t>(d.size());

    if (op == "Conv" || op == "MaxPool" || op == "AveragePool" || op == "LpPool") {
      return infer_window(n, *x);
    }
    if (op == "GlobalAveragePool" || op == "GlobalMaxPool" || op == "GlobalLpPool") {
      std::vector<Dim> out(d.begin(), d.begin() + std::min<int64_t>(2, rank));
      for (int64_t i = 2; i < rank; ++i) out.push_back(Dim::of(1));
      return set(n, 0, tensor_type(x->dtype, out));
    }
    if (op == "MatMul") return infer_matmul(n, *x);
    if (op == "Gemm") {
      const TypeInfo* y = type(n.inputs[1]);
      if (!y || !y->has_shape || rank != 2 || y->dims.size() != 2) return;
      Dim m = iattr(n, "transA", 0) ? d[1] : d[0];
      Dim nn = iattr(n, "transB", 0) ? y->dims[0] : y->dims[1];
      return set(n, 0, tensor_type(x->dtype, {m, nn}));
    }
    if (op == "Flatten") {
      int64_t axis = iattr(n, "axis", 1);
      if (axis < 0) axis += rank;
      if (axis < 0 || axis > rank) return;
      return set(n, 0, tensor_type(x->dtype, {product_of(d, 0, axis).to_dim(), product_of(d, axis, rank).to_dim()}));
    }
    if (op == "Expand") {  // numpy broadcast of X's shape with the shape input (constant or symbolic)
      const std::vector<Element>* want = n.inputs.size() > 1 ? value(n.inputs[1]) : nullptr;
      if (!want) return set(n, 0, dtype_only(x->dtype));
      return set(n, 0, tensor_type(x->dtype, broadcast(d, dims_of(*want))));
    }
    if (op == "Slice") return infer_slice(n, *x);
    if (op == "Transpose") {
      std::vector<int64_t> perm = iattrs(n, "perm");
      if (perm.empty())
        for (int64_t i = rank - 1; i >= 0; --i) perm.push_back(i);
      if (static_cast<int64_t>(perm.size()) != rank) return;
      std::vector<Dim> out;
      for (int64_t p : perm) {
        if (p < 0 || p >= rank) return;
        out.push_back(d[p]);
      }
      return set(n, 0, tensor_type(x->dtype, out));
    }
    if (op == "Reshape") {  // the target from a constant, or from a shape computation (its symbolic value)
      const std::vector<Element>* s = n.inputs.size() > 1 ? value(n.inputs[1]) : nullptr;
      if (!s) return;
      bool allowzero = iattr(n, "allowzero", 0) != 0;
      std::vector<Dim> out;
      int minus_one = -1;
      for (size_t i = 0; i < s->size(); ++i) {
        const Element& t = (*s)[i];
        if (t.is(0) && !allowzero) {
          if (i >= d.size()) return;
          out.push_back(d[i]);
        } else if (t.is(-1)) {
          if (minus_one >= 0) return;
          minus_one = static_cast<int>(i);
          out.push_back(Dim());
        } else {
          out.push_back(t.dim());
        }
      }
      if (minus_one >= 0) {  // the input's size over the other dims', where that divides (symbols too)
        DimProduct rest;
        for (size_t i = 0; i < out.size(); ++i)
          if (static_cast<int>(i) != minus_one) rest *= DimProduct::of(out[i]);
        out[minus_one] = product_of(d, 0, d.size()).divided_by(rest).to_dim();
      }
      return set(n, 0, tensor_type(x->dtype, out));
    }
    if (op == "Unsqueeze" || op == "Squeeze") {
      std::vector<int64_t> axes;
      if (!axes_of(n, 1, &axes)) return;
      if (op == "Unsqueeze") {
        int64_t out_rank = rank + static_cast<int64_t>(axes.size());
        std::vector<bool> is_new(out_rank, false);
        for (int64_t a : axes) {
          if (a < 0) a += out_rank;
          if (a < 0 || a >= out_rank) return;
          is_new[a] = true;
        }
        std::vector<Dim> out;
        size_t k = 0;
        for (int64_t i = 0; i < out_rank; ++i) out.push_back(is_new[i] ? Dim::of(1) : d[k++]);
        return set(n, 0, tensor_type(x->dtype, out));
      }
      std::vector<Dim> out;
      std::set<int64_t> drop;
      for (int64_t a : axes) drop.insert(a < 0 ? a + rank : a);
      for (int64_t i = 0; i < rank; ++i) {
        if (axes.empty() ? (d[i].known() && d[i].value == 1) : drop.count(i) > 0) continue;
        if (axes.empty() && !d[i].known()) return;  // cannot tell whether it is squeezed
        out.push_back(d[i]);
      }
      return set(n, 0, tensor_type(x->dtype, out));
    }
    if (op == "Concat") {
      int64_t axis = iattr(n, "axis", 0);
      if (axis < 0) axis += rank;
      if (axis < 0 || axis >= rank) return;
      std::vector<Dim> out = d;
      int64_t sum = 0;
      bool known = true;
      for (const auto& in : n.inputs) {
        const TypeInfo* t = type(in);
        if (!t || !t->has_shape || static_cast<int64_t>(t->dims.size()) != rank) return;
        if (t->dims[axis].known()) sum += t->dims[axis].value;
        else known = false;
      }
      out[axis] = known ? Dim::of(sum) : Dim();
      return set(n, 0, tensor_type(x->dtype, out));
    }
    if (op == "Split") {  // sizes from the split input (opset 13+) or attribute, else equal parts
      int64_t axis = iattr(n, "axis", 0);
      if (axis < 0) axis += rank;
      if (axis < 0 || axis >= rank) return;
      std::vector<int64_t> sizes;
      if (n.inputs.size() > 1 && !n.inputs[1].empty()) {
        const Tensor* c = constant(n.inputs[1]);
        if (!c) return;
        sizes = c->to_int64_vector();
      } else {
        sizes = iattrs(n, "split");
      }
      const size_t parts = n.outputs.size();
      if (sizes.empty()) {  // equal parts, the last one smaller where the dim does not divide (opset 18)
        if (!d[axis].known() || parts == 0) return;
        const int64_t each = (d[axis].value + static_cast<int64_t>(parts) - 1) / static_cast<int64_t>(parts);
        for (size_t i = 0; i < parts; ++i)
          sizes.push_back(std::max<int64_t>(0, std::min(each, d[axis].value - each * static_cast<int64_t>(i))));
      }
      if (sizes.size() != parts) return;
      for (size_t i = 0; i < parts; ++i) {
        std::vector<Dim> out = d;
        out[axis] = Dim::of(sizes[i]);
        set(n, i, tensor_type(x->dtype, out));
      }
      return;
    }
    if (op == "TopK") {  // values and indices: X's shape with k along the axis (unknown when k is not constant)
      int64_t axis = iattr(n, "axis", -1);
      if (axis < 0) axis += rank;
      if (axis < 0 || axis >= rank) return;
      Dim k;
      if (opset_ < 10) {
        k = Dim::of(iattr(n, "k", -1));
      } else if (n.inputs.size() > 1) {
        if (const Tensor* c = constant(n.inputs[1]); c != nullptr && c->numel() == 1) k = Dim::of(c->to_int64_vector()[0]);
      }
      std::vector<Dim> out = d;
      out[axis] = k;
      set(n, 0, tensor_type(x->dtype, out));
      return set(n, 1, tensor_type(DType::kInt64, out));
    }
    if (op == "NonZero") return set(n, 0, tensor_type(DType::kInt64, {Dim::of(rank), Dim{}}));  // how many: data
    if (op == "Gather") {
      const TypeInfo* idx = type(n.inputs[1]);
      if (!idx || !idx->has_shape) return;
      int64_t axis = iattr(n, "axis", 0);
      if (axis < 0) axis += rank;
      if (axis < 0 || axis >= rank) return;
      std::vector<Dim> out(d.begin(), d.begin() + axis);
      out.insert(out.end(), idx->dims.begin(), idx->dims.end());
      out.insert(out.end(), d.begin() + axis + 1, d.end());
      return set(n, 0, tensor_type(x->dtype, out));
    }
    if (op.rfind("Reduce", 0) == 0 || op == "ArgMax" || op == "ArgMin") {
      std::vector<int64_t> axes;
      bool arg = op == "ArgMax" || op == "ArgMin";
      if (arg) axes = {iattr(n, "axis", 0)};
      else if (!axes_of(n, 1, &axes)) return;
      bool keep = iattr(n, "keepdims", 1) != 0;
      if (axes.empty() && !arg) {
        if (iattr(n, "noop_with_empty_axes", 0)) return set(n, 0, *x);
        for (int64_t i = 0; i < rank; ++i) axes.push_back(i);
      }
      std::set<int64_t> red;
      for (int64_t a : axes) red.insert(a < 0 ? a + rank : a);
      std::vector<Dim> out;
      for (int64_t i = 0; i < rank; ++i) {
        if (!red.count(i)) out.push_back(d[i]);
        else if (keep) out.push_back(Dim::of(1));
      }
      return set(n, 0, tensor_type(arg ? DType::kInt64 : x->dtype, out));
    }
  }

  // The optimizer's ops (domain "kiln", ops_spec): their outputs have X's dtype.
  void infer_kiln(const ir::Node& n) {
    const TypeInfo* x = n.inputs.empty() ? nullptr : type(n.inputs[0]);
    if (!x) return;
    if (n.op_type == "Gelu" || n.op_type == "Swish") return set(n, 0, *x);
    if (n.op_type == "Pointwise") {  // in0's dtype, the inputs' shapes broadcast together
      TypeInfo y = *x;
      for (size_t i = 1; i < n.inputs.size() && y.has_shape; ++i) {
        const TypeInfo* t = type(n.inputs[i]);
        if (t == nullptr || !t->has_shape) {
          y.has_shape = false;
          y.dims.clear();
        } else {
          y.dims = broadcast(y.dims, t->dims);
        }
      }
      return set(n, 0, y);
    }
    if (n.op_type == "MaskedSoftmax") return set(n, 0, *x);  // the mask broadcasts to X without growing it
    if (n.op_type == "WriteChannels") return set(n, 0, *x);   // Base with some of its channels replaced
    if (n.op_type == "FusedMatMul" && x->has_shape) return infer_matmul(n, *x);  // the bias keeps MatMul's shape
    if (n.op_type == "FusedConv" && x->has_shape) {  // B, Z and the activation keep Conv's shape
      infer_window(n, *x);
      if (n.attr("pool") != nullptr) pool_fused_conv_output(n);
      return;
    }
    if (n.op_type == "FusedConvPair") return infer_conv_pair(n, *x);
    if (n.op_type == "ChannelsLastPool" && x->has_shape && x->dims.size() == 4) {  // the ONNX pool's rule, in NHWC
      const ir::Attribute* mode = n.attr("mode");
      if (mode == nullptr || (mode->s != "global_average" && mode->s != "global_max")) return infer_window(n, *x);
      TypeInfo y = *x;
      y.dims[1] = y.dims[2] = Dim::of(1);
      return set(n, 0, y);
    }
    if (n.op_type == "Relayout") {  // X's dims permuted and padded (backends/relayout_spec.h), in dtype `to`
      RelayoutAttrs a;
      const int64_t rank = x->has_shape ? static_cast<int64_t>(x->dims.size()) : -1;
      if (!read_relayout_attrs(n, rank, x->dtype, &a).empty()) return;
      return set(n, 0, x->has_shape ? tensor_type(a.to, relayout_dims(x->dims, a)) : dtype_only(a.to));
    }
    if (n.op_type == "FusedAttention") {  // Y is Q with V's head size, in either layout
      const ir::Attribute* packed = n.attr("packed_qkv");
      if (packed != nullptr && packed->type == ir::Attribute::Type::kInt && packed->i == 1) {  // QKV [B, S, 3, H, D]
        if (!x->has_shape) return set(n, 0, dtype_only(x->dtype));
        const std::vector<Dim>& d = x->dims;
        if (d.size() != 5 || (d[2].known() && d[2].value != 3)) return;
        return set(n, 0, tensor_type(x->dtype, {d[0], d[1], d[3], d[4]}));
      }
      if (x->has_shape && x->dims.size() != 4) return;
      const TypeInfo* v = n.inputs.size() > 2 ? type(n.inputs[2]) : nullptr;
      TypeInfo y = *x;
      if (y.has_shape) y.dims[3] = v && v->has_shape && v->dims.size() == 4 ? v->dims[3] : Dim();
      return set(n, 0, y);
    }
  }

  // kiln.FusedConvPair (fuse_conv_pair): two 1x1 channels-last convs, X [N, H, W, C0] -> Y [N, H, W, C1] ->
  // Y2 [N, H, W, C2], C1 and C2 the output channels of W and W2 (unknown where their shapes are). With
  // output_strides [sh, sw] (sample_pair_output) Y is [N, ceil(H / sh), ceil(W / sw), C1]; with
  // output_channels (write_concat_in_place) Y has that many channels, C1 of them the pair's.
  void infer_conv_pair(const ir::Node& n, const TypeInfo& x) {
    const ir::Attribute* strides = n.attr("output_strides");
    if (strides != nullptr && (strides->type != ir::Attribute::Type::kInts || strides->ints.size() != 2 ||
                               strides->ints[0] < 1 || strides->ints[1] < 1))
      return;  // the node's error at run time
    if (!x.has_shape) {
      set(n, 0, dtype_only(x.dtype));
      return set(n, 1, dtype_only(x.dtype));
    }
    if (x.dims.size() != 4) return;  // the node's error at run time
    auto channels = [&](size_t i) {
      const TypeInfo* w = i < n.inputs.size() ? type(n.inputs[i]) : nullptr;
      return w != nullptr && w->has_shape && w->dims.size() == 4 ? w->dims[0] : Dim();
    };
    for (size_t out = 0; out < 2; ++out) {
      std::vector<Dim> d = x.dims;
      d[3] = channels(out == 0 ? 1 : 4);
      if (out == 0 && strides != nullptr)
        for (size_t i = 0; i < 2; ++i) {
          const int64_t s = strides->ints[i];
          if (s > 1) d[1 + i] = d[1 + i].known() ? Dim::of((d[1 + i].value + s - 1) / s) : Dim();
        }
      if (const ir::Attribute* c = n.attr("output_channels"); out == 0 && c != nullptr && c->type == ir::Attribute::Type::kInt)
        d[3] = Dim::of(c->i);
      set(n, out, tensor_type(x.dtype, d));
    }
  }

  // numpy matmul: broadcast batch dims, then [M, K] x [K, N]; a 1-D operand loses its dim.
  void infer_matmul(const ir::Node& n, const TypeInfo& x) {
    const std::vector<Dim>& d = x.dims;
    const TypeInfo* y = n.inputs.size() > 1 ? type(n.inputs[1]) : nullptr;
    if (!y || !y->has_shape || d.empty() || y->dims.empty()) return;
    std::vector<Dim> a = d, b = y->dims;
    bool a1 = a.size() == 1, b1 = b.size() == 1;
    if (a1) a.insert(a.begin(), Dim::of(1));
    if (b1) b.push_back(Dim::of(1));
    std::vector<Dim> batch = broadcast(std::vector<Dim>(a.begin(), a.end() - 2), std::vector<Dim>(b.begin(), b.end() - 2));
    if (!a1) batch.push_back(a[a.size() - 2]);
    if (!b1) batch.push_back(b.back());
    set(n, 0, tensor_type(x.dtype, batch));
  }


  // kiln.FusedConv with a pool (fuse_conv_pool; channels_last 1): the conv's [N, H, W, M] output max-pooled
  // by pool_kernel_shape / pool_strides / pool_pads, floor((in + pads - kernel) / stride) + 1 (no dilation, no
  // ceil_mode: the pass fuses only such pools).
  void pool_fused_conv_output(const ir::Node& n) {
    const TypeInfo* y = n.outputs.empty() ? nullptr : type(n.outputs[0]);
    if (y == nullptr || !y->has_shape || y->dims.size() != 4) return;
    const std::vector<int64_t> k = iattrs(n, "pool_kernel_shape"), s = iattrs(n, "pool_strides"), p = iattrs(n, "pool_pads");
    TypeInfo pooled = *y;
    for (size_t i = 0; i < 2; ++i) {
      Dim& d = pooled.dims[1 + i];
      if (k.size() != 2 || s.size() != 2 || p.size() != 4 || s[i] <= 0) {
        d = Dim();
        continue;
      }
      if (!d.known()) {  // a symbolic size pools to an unknown one, not to itself
        d = Dim();
        continue;
      }
      const int64_t span = d.value + p[i] + p[i + 2] - k[i];
      d = span < 0 ? Dim() : Dim::of(span / s[i] + 1);  // a window past the padded input: the node's error at run time
    }
    set(n, 0, pooled);
  }

  // Conv, kiln.FusedConv (either layout) and pooling: out = floor((in + pads - dilation * (kernel - 1) - 1) / stride) + 1
  // (ceil for ceil_mode).
  void infer_window(const ir::Node& n, const TypeInfo& x) {
    const std::vector<Dim>& d = x.dims;
    int64_t rank = static_cast<int64_t>(d.size());
    if (rank < 3) return;
    int64_t spatial = rank - 2;
    std::vector<int64_t> kernel = iattrs(n, "kernel_shape");
    // kiln.FusedConv with channels_last = 1: X [N, D..., C], W [M, k..., C/group], Y [N, O..., M]; and
    // kiln.ChannelsLastPool: X [N, D..., C], Y [N, O..., C].
    const bool last = (n.op_type == "FusedConv" && iattr(n, "channels_last", 0) == 1) || n.op_type == "ChannelsLastPool";
    const int64_t first = last ? 1 : 2;  // the first spatial axis of X and W
    Dim channels = last ? d[rank - 1] : d[1];
    if (n.op_type == "Conv" || n.op_type == "FusedConv") {
      const TypeInfo* w = n.inputs.size() > 1 ? type(n.inputs[1]) : nullptr;
      if (!w || !w->has_shape || static_cast<int64_t>(w->dims.size()) != rank) return;
      channels = w->dims[0];
      if (kernel.empty())
        for (int64_t i = first; i < first + spatial; ++i) {
          if (!w->dims[i].known()) return;
          kernel.push_back(w->dims[i].value);
        }
    }
    if (static_cast<int64_t>(kernel.size()) != spatial) return;
    std::vector<int64_t> strides = iattrs(n, "strides"), dil = iattrs(n, "dilations"), pads = iattrs(n, "pads");
    if (strides.empty()) strides.assign(spatial, 1);
    if (dil.empty()) dil.assign(spatial, 1);
    if (pads.empty()) pads.assign(2 * spatial, 0);
    if (static_cast<int64_t>(strides.size()) != spatial || static_cast<int64_t>(dil.size()) != spatial ||
        static_cast<int64_t>(pads.size()) != 2 * spatial)
      return;
    const ir::Attribute* ap = n.attr("auto_pad");
    std::string auto_pad = ap && ap->type == ir::Attribute::Type::kString ? ap->s : "NOTSET";
    bool ceil_mode = iattr(n, "ceil_mode", 0) != 0;
    std::vector<Dim> out = {d[0]};
    if (!last) out.push_back(channels);
    for (int64_t i = 0; i < spatial; ++i) {
      const Dim& in = d[i + first];
      if (!in.known() || strides[i] <= 0) {
        out.push_back(Dim());
        continue;
      }
      int64_t v;
      if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
        v = (in.value + strides[i] - 1) / strides[i];
      } else {
        int64_t pad = auto_pad == "VALID" ? 0 : pads[i] + pads[i + spatial];
        int64_t span = in.value + pad - dil[i] * (kernel[i] - 1) - 1;
        if (span < 0) return;
        v = (ceil_mode ? (span + strides[i] - 1) / strides[i] : span / strides[i]) + 1;
        // With ceil_mode, a last window that would start inside the right padding is dropped.
        if (ceil_mode && (v - 1) * strides[i] >= in.value + pads[i]) --v;
      }
      out.push_back(Dim::of(v));
    }
    if (last) out.push_back(channels);
    set(n, 0, tensor_type(x.dtype, out));
  }

  static constexpr size_t kMaxValueElements = 64;
  ir::Graph& g_;
  int opset_;
  std::map<std::string, TypeInfo> const_types_;
  std::map<std::string, std::vector<Element>> values_;
};

}  // namespace

Status infer_shapes(ir::Model& model) {
  Inferrer(model.graph, model.default_opset()).run();
  return OkStatus();
}

}  // namespace kiln::passes
