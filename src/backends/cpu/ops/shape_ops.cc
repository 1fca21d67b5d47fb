// CPU reference kernels: ops that change or report shapes without computing (Reshape, Squeeze, Shape, ...),
// constants (Constant, ConstantOfShape, EyeLike), Expand, Tile and inference-time Dropout.
#include <algorithm>
#include <random>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"

namespace kiln::cpu {
namespace {

// Reshape: shape from the input (opset >= 5) or the attribute (older); 0 copies the input dim unless
// allowzero, -1 is inferred.
Status reshape_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  std::vector<int64_t> shape;
  if (ctx.has_input(1)) {
    KILN_ASSIGN_OR_RETURN(shape, mv::int_list_input(ctx, 1, "shape"));
  } else if (ctx.has_attr("shape")) {
    shape = ctx.attr_ints("shape");
  } else {
    return ctx.error("missing the shape input");
  }
  const bool allowzero = ctx.attr_int("allowzero", 0) != 0;
  int64_t infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0 && !allowzero) {
      if (static_cast<int64_t>(i) >= x.rank())
        return ctx.error("shape " + shape_to_string(shape) + " copies dim " + std::to_string(i) + " of input " +
                         x.description() + " which has no such dim");
      shape[i] = x.dim(i);
    }
    if (shape[i] == -1) {
      if (infer_at >= 0) return ctx.error("shape " + shape_to_string(shape) + " has more than one -1");
      infer_at = static_cast<int64_t>(i);
    } else if (shape[i] < 0) {
      return ctx.error("shape " + shape_to_string(shape) + " has an invalid dim " + std::to_string(shape[i]));
    } else {
      if (shape[i] != 0 && known > mv::kMaxElements / shape[i])
        return ctx.error("shape " + shape_to_string(shape) + " is too large");
      known *= shape[i];
    }
  }
  if (infer_at >= 0) {
    if (known == 0 || x.numel() % known != 0)
      return ctx.error("cannot reshape " + x.description() + " to " + shape_to_string(shape));
    shape[infer_at] = x.numel() / known;
  }
  if (shape_numel(shape) != x.numel())
    return ctx.error("cannot reshape " + x.description() + " to " + shape_to_string(shape) +
                     ": element counts differ");
  ctx.set_output(0, x.reshaped(shape));
  return OkStatus();
}

Status flatten_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  int64_t axis = ctx.attr_int("axis", 1);
  if (axis < -x.rank() || axis > x.rank())
    return ctx.error("axis " + std::to_string(axis) + " is out of range for input " + x.description());
  if (axis < 0) axis += x.rank();
  int64_t outer = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.dim(i);
  int64_t inner = 1;
  for (int64_t i = axis; i < x.rank(); ++i) inner *= x.dim(i);
  ctx.set_output(0, x.reshaped({outer, inner}));
  return OkStatus();
}

// Axes come from the attribute before opset 13 and from input 1 after.
Result<std::vector<int64_t>> axes_of(KernelContext& ctx, bool* present) {
  *present = false;
  if (ctx.has_input(1)) {
    *present = true;
    return mv::int_list_input(ctx, 1, "axes");
  }
  if (ctx.has_attr("axes")) {
    *present = true;
    return ctx.attr_ints("axes");
  }
  return std::vector<int64_t>{};
}

Status squeeze_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  bool present = false;
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> axes, axes_of(ctx, &present));
  std::vector<bool> drop(static_cast<size_t>(x.rank()), false);
  if (!present) {
    for (int64_t i = 0; i < x.rank(); ++i) drop[i] = x.dim(i) == 1;
  } else {
    KILN_ASSIGN_OR_RETURN(axes, mv::normalize_axes(ctx, axes, x.rank()));
    for (int64_t a : axes) {
      if (x.dim(a) != 1)
        return ctx.error("cannot squeeze axis " + std::to_string(a) + " of input " + x.description() +
                         ": its size is not 1");
      drop[a] = true;
    }
  }
  Shape out;
  for (int64_t i = 0; i < x.rank(); ++i)
    if (!drop[i]) out.push_back(x.dim(i));
  ctx.set_output(0, x.reshaped(out));
  return OkStatus();
}

Status unsqueeze_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  bool present = false;
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> axes, axes_of(ctx, &present));
  if (!present) return ctx.error("missing axes");
  const int64_t out_rank = x.rank() + static_cast<int64_t>(axes.size());
  KILN_ASSIGN_OR_RETURN(axes, mv::normalize_axes(ctx, axes, out_rank));
  std::vector<bool> inserted(static_cast<size_t>(out_rank), false);
  for (int64_t a : axes) inserted[a] = true;
  Shape out;
  int64_t next = 0;
  for (int64_t i = 0; i < out_rank; ++i) out.push_back(inserted[i] ? 1 : x.dim(next++));
  ctx.set_output(0, x.reshaped(out));
  return OkStatus();
}

Status shape_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t r = x.rank();
  // start/end are clamped to [0, rank] after adding rank to negatives (opset 15).
  auto clamp = [r](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + r : v, 0, r); };
  const int64_t start = clamp(ctx.attr_int("start", 0));
  const int64_t end = clamp(ctx.attr_int("end", r));
  std::vector<int64_t> dims;
  for (int64_t i = start; i < end; ++i) dims.push_back(x.dim(i));
  ctx.set_output(0, Tensor::from_vector(DType::kInt64, {static_cast<int64_t>(dims.size())}, dims));
  return OkStatus();
}

Status size_kernel(KernelContext& ctx) {
  ctx.set_output(0, Tensor::scalar<int64_t>(DType::kInt64, ctx.input(0).numel()));
  return OkStatus();
}

// Tensors, sequences and optionals all pass through unchanged.
Status identity_kernel(KernelContext& ctx) {
  ctx.set_output_value(0, ctx.input_value(0));
  return OkStatus();
}

Status constant_kernel(KernelContext& ctx) {
  if (const Tensor* t = ctx.attr_tensor("value")) {
    ctx.set_output(0, *t);
  } else if (ctx.has_attr("value_float")) {
    ctx.set_output(0, Tensor::scalar<float>(DType::kFloat32, ctx.attr_float("value_float", 0)));
  } else if (ctx.has_attr("value_floats")) {
    std::vector<float> v = ctx.attr_floats("value_floats");
    ctx.set_output(0, Tensor::from_vector(DType::kFloat32, {static_cast<int64_t>(v.size())}, v));
  } else if (ctx.has_attr("value_int")) {
    ctx.set_output(0, Tensor::scalar<int64_t>(DType::kInt64, ctx.attr_int("value_int", 0)));
  } else if (ctx.has_attr("value_ints")) {
    std::vector<int64_t> v = ctx.attr_ints("value_ints");
    ctx.set_output(0, Tensor::from_vector(DType::kInt64, {static_cast<int64_t>(v.size())}, v));
  } else if (ctx.has_attr("value_string")) {
    Tensor t(DType::kString, {});
    t.strings()[0] = ctx.attr_string("value_string", "");
    ctx.set_output(0, t);
  } else if (ctx.has_attr("value_strings")) {
    std::vector<std::string> v = ctx.attr_strings("value_strings");
    Tensor t(DType::kString, {static_cast<int64_t>(v.size())});
    for (size_t i = 0; i < v.size(); ++i) t.strings()[i] = v[i];
    ctx.set_output(0, t);
  } else if (ctx.has_attr("sparse_value")) {
    return ctx.unsupported("sparse_value constants are not supported");
  } else {
    return ctx.error("Constant has no value attribute");
  }
  return OkStatus();
}

// Fills a new tensor of `shape` with element 0 of `value`.
Tensor fill_with(const Tensor& value, const Shape& shape) {
  Tensor out(value.dtype(), shape);
  for (int64_t i = 0; i < out.numel(); ++i) copy_element(value, 0, out, i);
  return out;
}

Status constant_of_shape_kernel(KernelContext& ctx) {
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> shape, mv::int_list_input(ctx, 0, "shape"));
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, shape));
  Tensor value = Tensor::scalar<float>(DType::kFloat32, 0.0f);
  if (const Tensor* v = ctx.attr_tensor("value")) {
    if (v->numel() != 1) return ctx.error("value must hold one element, got " + v->description());
    value = *v;
  }
  ctx.set_output(0, fill_with(value, shape));
  return OkStatus();
}

Status expand_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> shape, mv::int_list_input(ctx, 1, "shape"));
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, shape));
  Result<Shape> out_shape = broadcast_shapes(x.shape(), shape);
  if (!out_shape.ok()) return ctx.error(out_shape.status().message());
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, *out_shape));
  std::vector<int64_t> map = broadcast_index_map(x.shape(), *out_shape);
  ctx.set_output(0, mv::gather_elements_by_index(x, *out_shape, map));
  return OkStatus();
}

Status tile_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  KILN_ASSIGN_OR_RETURN(std::vector<int64_t> repeats, mv::int_list_input(ctx, 1, "repeats"));
  if (static_cast<int64_t>(repeats.size()) != x.rank())
    return ctx.error("repeats has " + std::to_string(repeats.size()) + " values but the input is " + x.description());
  Shape out_shape(x.shape());
  for (size_t i = 0; i < repeats.size(); ++i) {
    if (repeats[i] < 0) return ctx.error("repeats " + shape_to_string(repeats) + " has a negative value");
    if (out_shape[i] != 0 && repeats[i] > mv::kMaxElements / out_shape[i])
      return ctx.error("repeats " + shape_to_string(repeats) + " make the output too large");
    out_shape[i] *= repeats[i];
  }
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, out_shape));
  std::vector<int64_t> strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<int64_t> idx(out_shape.size(), 0);
  for (size_t o = 0; o < map.size(); ++o) {
    int64_t src = 0;
    for (size_t a = 0; a < idx.size(); ++a) src += (idx[a] % x.dim(a)) * strides[a];
    map[o] = src;
    mv::next_index(idx, out_shape);
  }
  ctx.set_output(0, mv::gather_elements_by_index(x, out_shape, map));
  return OkStatus();
}

// A uniform double in [0, 1) from two 32-bit draws, exactly as numpy's legacy RandomState.random_sample
// does; std::mt19937(seed) is seeded like RandomState(seed), so a seeded Dropout reproduces the ONNX
// reference (np.random.seed(seed); np.random.uniform(0, 1, shape) >= ratio).
double numpy_random_sample(std::mt19937& gen) {
  const uint32_t a = gen() >> 5, b = gen() >> 6;
  return (a * 67108864.0 + b) / 9007199254740992.0;
}

// Dropout: identity at inference. With training_mode true (opset 12+) elements are zeroed with probability
// ratio and the rest scaled by 1/(1-ratio).
Status dropout_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  float ratio = ctx.attr_float("ratio", 0.5f);
  if (ctx.has_input(1)) {
    const Tensor& r = ctx.input(1);
    if (r.numel() != 1 || !dtype_is_float(r.dtype())) return ctx.error("ratio must be one float, got " + r.description());
    ratio = static_cast<float>(r.scalar_as_double(0));
  }
  bool training = false;
  if (ctx.has_input(2)) {
    const Tensor& t = ctx.input(2);
    if (t.numel() != 1) return ctx.error("training_mode must be a scalar, got " + t.description());
    training = t.scalar_as_double(0) != 0;
  }
  if (!(ratio >= 0.0f && ratio < 1.0f)) return ctx.error("ratio " + std::to_string(ratio) + " must be in [0, 1)");
  // Before opset 10 the mask had the input's dtype; from 10 on it is bool.
  const DType mask_dtype = ctx.opset() < 10 ? x.dtype() : DType::kBool;
  if (!training || ratio == 0.0f) {
    ctx.set_output(0, x);
    if (ctx.wants_output(1)) {
      KILN_ASSIGN_OR_RETURN(Tensor one, mv::scalar_of(mask_dtype, 1.0));
      ctx.set_output(1, fill_with(one, x.shape()));
    }
    return OkStatus();
  }
  if (!dtype_is_float(x.dtype())) return ctx.error("training-mode Dropout needs a float input, got " + x.description());
  std::mt19937 gen(ctx.has_attr("seed") ? static_cast<uint32_t>(ctx.attr_int("seed", 0)) : std::random_device{}());
  Tensor xf = widen_to_float32(x);
  Tensor mask(DType::kBool, x.shape());
  Tensor yf(xf.dtype(), x.shape());
  // In float32 like the reference (ratio is a float32 tensor there).
  const float scale = 1.0f / (1.0f - ratio);
  bool ok = dispatch_float(xf.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const bool keep = numpy_random_sample(gen) >= static_cast<double>(ratio);
      mask.data<bool>()[i] = keep;
      yf.data<T>()[i] = keep ? static_cast<T>(xf.data<T>()[i] * static_cast<T>(scale)) : T(0);
    }
  });
  if (!ok) return ctx.unsupported("Dropout does not support " + x.description());
  ctx.set_output(0, narrow_from_float32(yf, x.dtype()));
  if (ctx.wants_output(1)) ctx.set_output(1, mask);
  return OkStatus();
}

Status eye_like_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 2) return ctx.error("input must be 2-D, got " + x.description());
  DType dtype = x.dtype();
  if (ctx.has_attr("dtype")) {
    int64_t code = ctx.attr_int("dtype", 0);
    if (!dtype_is_valid(static_cast<int32_t>(code)) || code == 0)
      return ctx.error("dtype " + std::to_string(code) + " is not a valid dtype");
    dtype = static_cast<DType>(code);
  }
  if (dtype == DType::kString) return ctx.error("EyeLike cannot make a string tensor");
  const int64_t k = ctx.attr_int("k", 0);
  Tensor out(dtype, x.shape());
  KILN_ASSIGN_OR_RETURN(Tensor one, mv::scalar_of(dtype, 1.0));
  for (int64_t i = 0; i < x.dim(0); ++i) {
    const int64_t j = i + k;
    if (j >= 0 && j < x.dim(1)) copy_element(one, 0, out, i * x.dim(1) + j);
  }
  ctx.set_output(0, out);
  return OkStatus();
}

}  // namespace

void register_shape_ops_ops(ir::OpRegistry& r) {
  r.add("Reshape", 1, reshape_kernel);
  r.add("Flatten", 1, flatten_kernel);
  r.add("Squeeze", 1, squeeze_kernel);
  r.add("Unsqueeze", 1, unsqueeze_kernel);
  r.add("Shape", 1, shape_kernel);
  r.add("Size", 1, size_kernel);
  r.add("Identity", 1, identity_kernel);
  r.add("Constant", 1, constant_kernel);
  r.add("ConstantOfShape", 9, constant_of_shape_kernel);
  r.add("Expand", 8, expand_kernel);
  r.add("Tile", 6, tile_kernel);
  r.add("Dropout", 1, dropout_kernel);
  r.add("EyeLike", 9, eye_like_kernel);
}

}  // namespace kiln::cpu
