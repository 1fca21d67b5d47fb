// CPU reference kernels: ai.onnx.ml ops (LabelEncoder, ArrayFeatureExtractor, Binarizer, TreeEnsemble).
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"

namespace kiln::cpu {
namespace {

using e2::domain_schema;
using e2::from_doubles;
using e2::is_real_float;
using e2::to_doubles;

constexpr const char* kMl = "ai.onnx.ml";

// ---------------------------------------------------------------------------------------------------
// LabelEncoder: maps each element through a key -> value table, with a default for unknown keys.

// A comparable key for element i: strings as they are, integers and floats by value (all NaNs equal).
std::string key_of(const Tensor& t, int64_t i) {
  std::string key;
  if (t.dtype() == DType::kString) {
    key = 's';
    key += t.strings()[i];
  } else if (dtype_is_integer(t.dtype())) {
    key = 'i';
    key += std::to_string(t.scalar_as_int(i));
  } else {
    double d = t.scalar_as_double(i);
    if (std::isnan(d)) d = std::numeric_limits<double>::quiet_NaN();  // one NaN pattern
    if (d == 0) d = 0;                                                   // -0.0 == 0.0
    char buf[sizeof(double)];
    std::memcpy(buf, &d, sizeof d);
    key = 'f';
    key.append(buf, sizeof buf);
  }
  return key;
}

Tensor string_tensor(const std::vector<std::string>& v) {
  Tensor t(DType::kString, {static_cast<int64_t>(v.size())});
  for (size_t i = 0; i < v.size(); ++i) t.strings()[i] = v[i];
  return t;
}

Status label_encoder_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  // ai.onnx.ml opset 1 mapped strings <-> int64 through `classes_strings`; opset 2+ uses key/value lists.
  if (ctx.opset() < 2) return ctx.unsupported("LabelEncoder from ai.onnx.ml opset 1 (classes_strings)");
  const Tensor& x = ctx.input(0);
  // Keys.
  Tensor keys;
  if (ctx.has_attr("keys_strings")) keys = string_tensor(ctx.attr_strings("keys_strings"));
  else if (ctx.has_attr("keys_int64s")) {
    auto v = ctx.attr_ints("keys_int64s");
    keys = Tensor::from_vector(DType::kInt64, {static_cast<int64_t>(v.size())}, v);
  } else if (ctx.has_attr("keys_floats")) {
    auto v = ctx.attr_floats("keys_floats");
    keys = Tensor::from_vector(DType::kFloat32, {static_cast<int64_t>(v.size())}, v);
  } else if (const Tensor* kt = ctx.attr_tensor("keys_tensor")) keys = *kt;
  else return ctx.error("one of keys_strings, keys_int64s, keys_floats, keys_tensor is required");
  // Values and the default.
  Tensor values, dflt;
  if (ctx.has_attr("values_strings")) {
    values = string_tensor(ctx.attr_strings("values_strings"));
    dflt = string_tensor({ctx.attr_string("default_string", "_Unused")});
  } else if (ctx.has_attr("values_int64s")) {
    auto v = ctx.attr_ints("values_int64s");
    values = Tensor::from_vector(DType::kInt64, {static_cast<int64_t>(v.size())}, v);
    dflt = Tensor::from_vector<int64_t>(DType::kInt64, {1}, {ctx.attr_int("default_int64", -1)});
  } else if (ctx.has_attr("values_floats")) {
    auto v = ctx.attr_floats("values_floats");
    values = Tensor::from_vector(DType::kFloat32, {static_cast<int64_t>(v.size())}, v);
    dflt = Tensor::from_vector<float>(DType::kFloat32, {1}, {ctx.attr_float("default_float", -0.0f)});
  } else if (const Tensor* vt = ctx.attr_tensor("values_tensor")) {
    values = *vt;
    if (const Tensor* dt = ctx.attr_tensor("default_tensor")) {
      if (dt->dtype() != values.dtype() || dt->numel() != 1)
        return ctx.error("default_tensor must be one element of the values' dtype " + dtype_name(values.dtype()));
      dflt = *dt;
    } else if (values.dtype() == DType::kString) {
      dflt = string_tensor({"_Unused"});
    } else {
      KILN_ASSIGN_OR_RETURN(dflt, cast_tensor(Tensor::from_vector<float>(DType::kFloat32, {1}, {dtype_is_integer(values.dtype()) ? -1.0f : -0.0f}), values.dtype()));
    }
  } else {
    return ctx.error("one of values_strings, values_int64s, values_floats, values_tensor is required");
  }
  if (keys.numel() != values.numel())
    return ctx.error("keys (" + std::to_string(keys.numel()) + ") and values (" + std::to_string(values.numel()) + ") differ in length");
  if ((keys.dtype() == DType::kString) != (x.dtype() == DType::kString))
    return ctx.error("input dtype " + dtype_name(x.dtype()) + " does not match key dtype " + dtype_name(keys.dtype()));
  std::map<std::string, int64_t> table;
  for (int64_t i = 0; i < keys.numel(); ++i) table.emplace(key_of(keys, i), i);
  Tensor y(values.dtype(), x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto it = table.find(key_of(x, i));
    if (it == table.end()) copy_element(dflt, 0, y, i);
    else copy_element(values, it->second, y, i);
  }
  ctx.set_output(0, y);
  return OkStatus();
}

// ArrayFeatureExtractor: selects entries of the last axis; a 1D input gives a [1, k] output.
Status array_feature_extractor_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("X and Y are required");
  const Tensor& x = ctx.input(0);
  const Tensor& idx_t = ctx.input(1);
  if (!dtype_is_integer(idx_t.dtype())) return ctx.error("indices must be integers, got " + dtype_name(idx_t.dtype()));
  if (x.rank() < 1) return ctx.error("X must have rank >= 1");
  const std::vector<int64_t> idx = idx_t.to_int64_vector();
  const int64_t last = x.dim(-1);
  for (int64_t v : idx)
    if (v < 0 || v >= last) return ctx.error("index " + std::to_string(v) + " out of range [0, " + std::to_string(last) + ")");
  const int64_t k = static_cast<int64_t>(idx.size());
  Shape out_shape = x.rank() == 1 ? Shape{1, k} : x.shape();
  out_shape.back() = k;
  Tensor y(x.dtype(), out_shape);
  const int64_t outer = last == 0 ? 0 : x.numel() / last;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < k; ++j) copy_element(x, o * last + idx[static_cast<size_t>(j)], y, o * k + j);
  ctx.set_output(0, y);
  return OkStatus();
}

Status binarizer_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  const Tensor& x = ctx.input(0);
  const double threshold = ctx.attr_float("threshold", 0);
  if (is_real_float(x.dtype())) {
    std::vector<double> v = to_doubles(x);
    for (double& d : v) d = d > threshold ? 1.0 : 0.0;
    ctx.set_output(0, from_doubles(v, x.shape(), x.dtype()));
    return OkStatus();
  }
  if (!dtype_is_integer(x.dtype())) return ctx.error("unsupported dtype " + dtype_name(x.dtype()));
  Tensor y(DType::kInt64, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) y.data<int64_t>()[i] = static_cast<double>(x.scalar_as_int(i)) > threshold ? 1 : 0;
  KILN_ASSIGN_OR_RETURN(Tensor out, cast_tensor(y, x.dtype()));
  ctx.set_output(0, out);
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// TreeEnsemble (ai.onnx.ml 5).
enum Mode { kLeq = 0, kLt, kGte, kGt, kEq, kNeq, kMember };

Status tree_ensemble_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  const Tensor& x = ctx.input(0);
  if (!is_real_float(x.dtype())) return ctx.error("unsupported dtype " + dtype_name(x.dtype()));
  if (x.rank() != 2) return ctx.error("X must be 2D (N, F), got " + shape_to_string(x.shape()));
  const int64_t n = x.dim(0), features = x.dim(1);
  const Tensor* splits_t = ctx.attr_tensor("nodes_splits");
  const Tensor* modes_t = ctx.attr_tensor("nodes_modes");
  const Tensor* leaf_w_t = ctx.attr_tensor("leaf_weights");
  if (!splits_t || !modes_t || !leaf_w_t) return ctx.error("nodes_splits, nodes_modes and leaf_weights are required");
  if (!is_real_float(splits_t->dtype()) || !is_real_float(leaf_w_t->dtype()) || !dtype_is_integer(modes_t->dtype()))
    return ctx.error("nodes_splits/leaf_weights must be float tensors and nodes_modes an integer tensor");
  const std::vector<double> splits = to_doubles(*splits_t);
  const std::vector<int64_t> modes = modes_t->to_int64_vector();
  const std::vector<double> leaf_w = to_doubles(*leaf_w_t);
  const std::vector<int64_t> feat = ctx.attr_ints("nodes_featureids");
  const std::vector<int64_t> true_ids = ctx.attr_ints("nodes_truenodeids");
  const std::vector<int64_t> false_ids = ctx.attr_ints("nodes_falsenodeids");
  const std::vector<int64_t> true_leaf = ctx.attr_ints("nodes_trueleafs");
  const std::vector<int64_t> false_leaf = ctx.attr_ints("nodes_falseleafs");
  const std::vector<int64_t> leaf_target = ctx.attr_ints("leaf_targetids");
  const std::vector<int64_t> roots = ctx.attr_ints("tree_roots");
  const std::vector<int64_t> missing = ctx.attr_ints("nodes_missing_value_tracks_true");
  const int64_t n_targets = ctx.attr_int("n_targets", 0);
  const int64_t aggregate = ctx.attr_int("aggregate_function", 1);
  const int64_t post = ctx.attr_int("post_transform", 0);
  const size_t num_nodes = splits.size();
  if (modes.size() != num_nodes || feat.size() != num_nodes || true_ids.size() != num_nodes || false_ids.size() != num_nodes ||
      true_leaf.size() != num_nodes || false_leaf.size() != num_nodes || (!missing.empty() && missing.size() != num_nodes))
    return ctx.error("the nodes_* attributes must all have " + std::to_string(num_nodes) + " entries");
  if (leaf_target.size() != leaf_w.size()) return ctx.error("leaf_targetids and leaf_weights differ in length");
  if (n_targets <= 0 || n_targets > (int64_t{1} << 24)) return ctx.error("n_targets must be positive, got " + std::to_string(n_targets));
  if (aggregate < 0 || aggregate > 3) return ctx.error("aggregate_function must be 0..3, got " + std::to_string(aggregate));
  if (post != 0 && post != 1 && post != 2) return ctx.unsupported("post_transform " + std::to_string(post));
  for (size_t i = 0; i < num_nodes; ++i) {
    if (modes[i] < 0 || modes[i] > kMember) return ctx.error("nodes_modes value " + std::to_string(modes[i]) + " out of range");
    if (feat[i] < 0 || feat[i] >= features) return ctx.error("nodes_featureids value " + std::to_string(feat[i]) + " out of range");
    for (int side = 0; side < 2; ++side) {
      const int64_t id = side ? false_ids[i] : true_ids[i];
      const bool leaf = side ? false_leaf[i] : true_leaf[i];
      if (id < 0 || id >= static_cast<int64_t>(leaf ? leaf_w.size() : num_nodes))
        return ctx.error("node " + std::to_string(i) + " child id " + std::to_string(id) + " out of range");
    }
  }
  for (int64_t t : leaf_target)
    if (t < 0 || t >= n_targets) return ctx.error("leaf_targetids value " + std::to_string(t) + " out of range");
  for (int64_t r : roots)
    if (r < 0 || r >= static_cast<int64_t>(num_nodes)) return ctx.error("tree_roots value " + std::to_string(r) + " out of range");
  // Set members of each BRANCH_MEMBER node, in node order, NaN-delimited.
  std::vector<std::vector<double>> members(num_nodes);
  {
    std::vector<double> mv;
    if (const Tensor* m = ctx.attr_tensor("membership_values")) {
      if (!is_real_float(m->dtype())) return ctx.error("membership_values must be a float tensor");
      mv = to_doubles(*m);
    }
    size_t pos = 0;
    for (size_t i = 0; i < num_nodes; ++i) {
      if (modes[i] != kMember) continue;
      if (mv.empty()) return ctx.error("set membership node without membership_values");
      while (pos < mv.size() && !std::isnan(mv[pos])) members[i].push_back(mv[pos++]);
      ++pos;  // the NaN delimiter
    }
  }

  const std::vector<double> xv = to_doubles(x);
  // MIN/MAX start from the input float type's extremes, as in the reference.
  const double type_max = x.dtype() == DType::kFloat64 ? std::numeric_limits<double>::max() : std::numeric_limits<float>::max();
  std::vector<double> out(static_cast<size_t>(n * n_targets), aggregate == 2 ? type_max : aggregate == 3 ? -type_max : 0.0);
  for (int64_t s = 0; s < n; ++s) {
    const double* row = &xv[static_cast<size_t>(s * features)];
    double* o = &out[static_cast<size_t>(s * n_targets)];
    for (int64_t root : roots) {
      const size_t r = static_cast<size_t>(root);
      int64_t leaf = -1;
      if (true_leaf[r] && false_leaf[r] && true_ids[r] == false_ids[r]) {
        leaf = root;  // a tree that is a single leaf (the reference indexes the leaf by the root id)
        if (leaf >= static_cast<int64_t>(leaf_w.size())) return ctx.error("degenerate tree root " + std::to_string(root) + " has no leaf");
      } else {
        size_t node = r;
        for (size_t steps = 0; leaf < 0; ++steps) {
          if (steps > num_nodes) return ctx.error("tree from root " + std::to_string(root) + " has a cycle");
          const double v = row[feat[node]];
          const double sp = splits[node];
          bool go_true = false;
          switch (modes[node]) {
            case kLeq: go_true = v <= sp; break;
            case kLt: go_true = v < sp; break;
            case kGte: go_true = v >= sp; break;
            case kGt: go_true = v > sp; break;
            case kEq: go_true = v == sp; break;
            case kNeq: go_true = v != sp; break;
            default:
              for (double m : members[node]) go_true = go_true || v == m;
          }
          if (!missing.empty() && missing[node] && std::isnan(v)) go_true = true;
          const int64_t next = go_true ? true_ids[node] : false_ids[node];
          if (go_true ? true_leaf[node] : false_leaf[node]) leaf = next;
          else node = static_cast<size_t>(next);
        }
      }
      const double w = leaf_w[static_cast<size_t>(leaf)];
      double& dst = o[leaf_target[static_cast<size_t>(leaf)]];
      if (aggregate == 1) dst += w;
      else if (aggregate == 0) dst += w / static_cast<double>(roots.size());
      else if (aggregate == 2) dst = std::min(dst, w);
      else dst = std::max(dst, w);
    }
    if (post == 1) {  // softmax over targets
      double m = o[0], sum = 0;
      for (int64_t t = 0; t < n_targets; ++t) m = std::max(m, o[t]);
      for (int64_t t = 0; t < n_targets; ++t) sum += (o[t] = std::exp(o[t] - m));
      for (int64_t t = 0; t < n_targets; ++t) o[t] /= sum;
    } else if (post == 2) {  // logistic
      for (int64_t t = 0; t < n_targets; ++t) o[t] = e2::sigmoid(o[t]);
    }
  }
  ctx.set_output(0, from_doubles(out, {n, n_targets}, x.dtype()));
  return OkStatus();
}

}  // namespace

void register_ml_ops(ir::OpRegistry& r) {
  r.add(domain_schema(kMl, "LabelEncoder", 2, label_encoder_kernel));
  r.add(domain_schema(kMl, "ArrayFeatureExtractor", 1, array_feature_extractor_kernel));
  r.add(domain_schema(kMl, "Binarizer", 1, binarizer_kernel));
  r.add(domain_schema(kMl, "TreeEnsemble", 5, tree_ensemble_kernel));
}

}  // namespace kiln::cpu
