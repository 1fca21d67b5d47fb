// The CUDA op table and what every layer shares: handles, attribute access, error conversion.
#include "backends/cuda/layer.h"

#include <mutex>

#include "core/cast.h"

namespace kiln::cuda {

bool TensorDesc::is_static() const {
  if (!has_rank) return false;
  for (int64_t d : shape)
    if (d < 0) return false;
  return true;
}

TensorDesc describe_value(const ir::Graph& g, const std::string& name) {
  TensorDesc d;
  if (name.empty()) return d;
  if (auto it = g.initializers.find(name); it != g.initializers.end()) {
    d.dtype = it->second.dtype();
    d.has_rank = true;
    d.shape = it->second.shape();
    d.constant = &it->second;
    return d;
  }
  const ir::TypeInfo* t = g.type_of(name);
  if (t == nullptr || t->kind != ir::TypeInfo::Kind::kTensor) return d;
  d.dtype = t->dtype;
  d.has_rank = t->has_shape;
  for (const auto& dim : t->dims) d.shape.push_back(dim.known() ? dim.value : -1);
  return d;
}

LayerSpec make_layer_spec(const ir::Node& node, const ir::Graph& graph, int opset, bool allow_tf32) {
  LayerSpec spec;
  spec.node = &node;
  spec.opset = opset;
  spec.allow_tf32 = allow_tf32;
  for (const auto& in : node.inputs) spec.inputs.push_back(describe_value(graph, in));
  for (const auto& out : node.outputs) spec.outputs.push_back(describe_value(graph, out));
  return spec;
}

Status cuda_status(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return OkStatus();
  return Internal(std::string(call) + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

Status cublas_status(cublasStatus_t s, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return OkStatus();
  return Internal(std::string(call) + " failed: cuBLAS status " + std::to_string(static_cast<int>(s)));
}

Status cudnn_status(cudnnStatus_t s, const char* call) {
  if (s == CUDNN_STATUS_SUCCESS) return OkStatus();
  return Internal(std::string(call) + " failed: " + cudnnGetErrorString(s));
}

Status launch_status(const char* kernel) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return OkStatus();
  return Internal(std::string("launch of ") + kernel + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

Result<std::unique_ptr<HandleSet>> HandleSet::create(cudaStream_t stream) {
  std::unique_ptr<HandleSet> hs(new HandleSet());
  if (stream == nullptr) {
    KILN_CUDA_TRY(cudaStreamCreateWithFlags(&hs->h_.stream, cudaStreamNonBlocking));
    hs->own_stream_ = true;
  } else {
    hs->h_.stream = stream;
  }
  KILN_CUBLAS_TRY(cublasLtCreate(&hs->h_.cublaslt));
  KILN_CUDNN_TRY(cudnnCreate(&hs->h_.cudnn));
  KILN_CUDNN_TRY(cudnnSetStream(hs->h_.cudnn, hs->h_.stream));
  return hs;
}

Result<std::shared_ptr<HandleSet>> HandleSet::acquire() {
  static std::mutex mu;
  static std::vector<std::unique_ptr<HandleSet>>* pool = new std::vector<std::unique_ptr<HandleSet>>();  // never freed: outlives every owner
  std::unique_ptr<HandleSet> hs;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!pool->empty()) {
      hs = std::move(pool->back());
      pool->pop_back();
    }
  }
  if (!hs) {
    KILN_ASSIGN_OR_RETURN(hs, create());
  }
  return std::shared_ptr<HandleSet>(hs.release(), [](HandleSet* h) {
    std::lock_guard<std::mutex> lock(mu);
    pool->push_back(std::unique_ptr<HandleSet>(h));
  });
}

HandleSet::~HandleSet() {
  if (h_.cudnn != nullptr) cudnnDestroy(h_.cudnn);
  if (h_.cublaslt != nullptr) cublasLtDestroy(h_.cublaslt);
  if (own_stream_ && h_.stream != nullptr) cudaStreamDestroy(h_.stream);
}

Status HandleSet::set_stream(cudaStream_t stream) {
  if (own_stream_ && h_.stream != nullptr) cudaStreamDestroy(h_.stream);
  own_stream_ = false;
  h_.stream = stream;
  KILN_CUDNN_TRY(cudnnSetStream(h_.cudnn, stream));
  return OkStatus();
}

int64_t LayerSpec::attr_int(const std::string& name, int64_t fallback) const {
  const ir::Attribute* a = node->attr(name);
  return a == nullptr ? fallback : a->i;
}
float LayerSpec::attr_float(const std::string& name, float fallback) const {
  const ir::Attribute* a = node->attr(name);
  return a == nullptr ? fallback : a->f;
}
std::string LayerSpec::attr_string(const std::string& name, const std::string& fallback) const {
  const ir::Attribute* a = node->attr(name);
  return a == nullptr ? fallback : a->s;
}
std::vector<int64_t> LayerSpec::attr_ints(const std::string& name, std::vector<int64_t> fallback) const {
  const ir::Attribute* a = node->attr(name);
  return a == nullptr ? fallback : a->ints;
}
bool LayerSpec::has_attr(const std::string& name) const { return node->attr(name) != nullptr; }

bool LayerSpec::constant_ints(size_t i, std::vector<int64_t>* out) const {
  if (i >= inputs.size() || inputs[i].constant == nullptr) return false;
  const Tensor& t = *inputs[i].constant;
  if (t.dtype() != DType::kInt64 && t.dtype() != DType::kInt32) return false;
  *out = t.to_int64_vector();
  return true;
}

bool LayerSpec::constant_floats(size_t i, std::vector<float>* out) const {
  if (i >= inputs.size() || inputs[i].constant == nullptr) return false;
  const Tensor& t = *inputs[i].constant;
  if (t.dtype() != DType::kFloat32 && t.dtype() != DType::kFloat16 && t.dtype() != DType::kBFloat16 &&
      t.dtype() != DType::kFloat64)
    return false;
  Tensor f = t.dtype() == DType::kFloat64 ? *cast_tensor(t, DType::kFloat32) : widen_to_float32(t);
  out->assign(f.data<float>(), f.data<float>() + f.numel());
  return true;
}

void LayerTable::add(LayerKind kind) { kinds_[kind.op_type] = std::move(kind); }

const LayerKind* LayerTable::find(const std::string& op_type) const {
  auto it = kinds_.find(op_type);
  return it == kinds_.end() ? nullptr : &it->second;
}

const LayerKind* LayerTable::find_for(const ir::Node& node) const {
  return find(node.domain.empty() || node.domain == "ai.onnx" ? node.op_type : node.domain + "." + node.op_type);
}

std::vector<std::string> LayerTable::op_types() const {
  std::vector<std::string> out;
  for (const auto& [op, k] : kinds_) out.push_back(op);
  return out;
}

const LayerTable& layer_table() {
  static const LayerTable table = [] {
    LayerTable t;
    register_elementwise_layers(t);
    register_matmul_layers(t);
    register_fused_matmul_layers(t);
    register_conv_layers(t);
    register_fused_conv_layers(t);
    register_normalization_layers(t);
    register_softmax_layers(t);
    register_fused_attention_layers(t);
    register_attention_layers(t);
    register_reduce_layers(t);
    register_pool_layers(t);
    register_channels_last_pool_layers(t);
    register_relayout_layers(t);
    register_resize_layers(t);
    register_pad_layers(t);
    register_shape_layers(t);
    register_index_layers(t);
    register_logical_layers(t);
    register_pointwise_layers(t);
    register_conv_pair_layers(t);
    register_write_channels_layers(t);
    return t;
  }();
  return table;
}

}  // namespace kiln::cuda
