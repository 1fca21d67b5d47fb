// A CUDA layer: one node of the graph, made ready to run on the GPU at concrete shapes. The CUDA op table
// (layer_table.cc) maps each op type to a LayerKind: `check` says whether the layer can run a node as
// described (at build time, when some dims may still be unknown), `tactics` lists the kernels it could use
// (the builder times them), and `create` makes the layer for one tactic at concrete shapes.
//
// Layers are created per execution context (they may hold cuDNN descriptors or cuBLASLt plans tied to the
// context's handles) and are immutable once created: run() launches kernels on the context's stream and
// never allocates, synchronizes or blocks, so a run can be captured into a CUDA graph.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/dtype.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln::cuda {

// What a layer knows of one of its tensors when it is checked or created.
struct TensorDesc {
  DType dtype = DType::kUndefined;  // kUndefined: an omitted optional input (or an unknown type)
  bool has_rank = false;
  Shape shape;                      // -1 for a dim not known yet (only ever in check)
  // The host value of a constant input (an initializer): layers read their attribute-like inputs from it
  // (Reshape's shape, Slice's starts, Clip's bounds, Resize's scales, ...) at check and create time.
  const Tensor* constant = nullptr;

  bool present() const { return dtype != DType::kUndefined; }
  bool is_static() const;  // rank known and every dim >= 0
};

// The TensorDesc of a value of a graph: its inferred type, and its value where it is an initializer.
TensorDesc describe_value(const ir::Graph& graph, const std::string& name);

// A tensor in device memory at run time.
struct DeviceTensor {
  void* data = nullptr;  // nullptr for an omitted optional input or output
  DType dtype = DType::kUndefined;
  Shape shape;
  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

// The per-context library handles, all bound to the context's stream.
struct CudaHandles {
  cudaStream_t stream = nullptr;
  cublasLtHandle_t cublaslt = nullptr;
  cudnnHandle_t cudnn = nullptr;
};

// Owns a set of CudaHandles (a fresh stream unless one is given).
class HandleSet {
 public:
  static Result<std::unique_ptr<HandleSet>> create(cudaStream_t stream = nullptr);
  // A set with its own stream from a process-wide pool (creating cuDNN and cuBLASLt handles costs tens of
  // milliseconds; contexts come and go): it returns to the pool when the last owner lets go.
  static Result<std::shared_ptr<HandleSet>> acquire();
  ~HandleSet();
  const CudaHandles& handles() const { return h_; }
  Status set_stream(cudaStream_t stream);  // rebinds cuDNN to another stream (cuBLASLt takes it per call)

 private:
  HandleSet() = default;
  CudaHandles h_;
  bool own_stream_ = false;
};

struct LayerSpec {
  const ir::Node* node = nullptr;
  int opset = 0;
  std::vector<TensorDesc> inputs;  // one per node input, omitted ones not present
  std::vector<TensorDesc> outputs;
  bool allow_tf32 = true;  // float32 GEMMs and convolutions may use TF32 tensor cores (off: --no-tf32 or a pin)

  // Attribute helpers (default when absent).
  int64_t attr_int(const std::string& name, int64_t fallback) const;
  float attr_float(const std::string& name, float fallback) const;
  std::string attr_string(const std::string& name, const std::string& fallback) const;
  std::vector<int64_t> attr_ints(const std::string& name, std::vector<int64_t> fallback = {}) const;
  bool has_attr(const std::string& name) const;
  // Input i's constant value as int64s (for int32/int64 constants); false when it is not constant.
  bool constant_ints(size_t i, std::vector<int64_t>* out) const;
  bool constant_floats(size_t i, std::vector<float>* out) const;
};

// The spec of a node of `graph` (its value types, and the values of constant inputs).
LayerSpec make_layer_spec(const ir::Node& node, const ir::Graph& graph, int opset, bool allow_tf32 = true);

class Layer {
 public:
  virtual ~Layer() = default;
  // Scratch memory run() needs; the context gives every layer the same buffer of the largest size.
  virtual size_t workspace_bytes() const { return 0; }
  // Launches the layer on h.stream. Inputs and outputs are in node order, at the shapes of create.
  virtual Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                     void* workspace, const CudaHandles& h) const = 0;
};

struct LayerKind {
  // The default ONNX domain's op type ("Conv"), or "domain.OpType" for another domain ("kiln.FusedConv",
  // the fused ops the optimizer's passes make).
  std::string op_type;
  // "" when a layer can run the node as described; otherwise why not (shown in the build report).
  std::function<std::string(const LayerSpec&)> check;
  // The kernels that could run it, the best guess first; empty function: one tactic, "default".
  std::function<std::vector<std::string>(const LayerSpec&)> tactics;
  std::function<Result<std::unique_ptr<Layer>>(const LayerSpec&, const std::string& tactic, const CudaHandles&)>
      create;
  // Reshape, Flatten, Squeeze, Unsqueeze, Identity: output 0 is input 0's memory, seen with another shape;
  // no kernel runs (create is not called).
  bool output_is_view_of_input0 = false;
  // kiln.WriteChannels: output 0 equals input 0 but for what the kernel writes, so where nothing else reads
  // input 0 (cuda_program.cc decides) the output is given input 0's memory and the kernel writes only that.
  // Otherwise, with memory of its own, the layer copies input 0 first.
  bool may_update_input0_in_place = false;
  // Whether the layer accepts float16 / bfloat16 data (the builder then lets --fp16/--bf16 lower it).
  bool lowers_to_fp16 = true;
};

class LayerTable {
 public:
  void add(LayerKind kind);
  const LayerKind* find(const std::string& op_type) const;
  // The kind for a node: its op type in the default domain ("" or "ai.onnx"), "domain.OpType" otherwise.
  const LayerKind* find_for(const ir::Node& node) const;
  std::vector<std::string> op_types() const;

 private:
  std::map<std::string, LayerKind> kinds_;
};

// Every op the CUDA backend runs (filled by the register_* functions of each op family's file).
const LayerTable& layer_table();

// One per op family file.
void register_elementwise_layers(LayerTable& table);  // elementwise_layers.cc: unary, binary, Where, Cast
void register_matmul_layers(LayerTable& table);  // matmul.cc: MatMul and Gemm through cuBLASLt
void register_fused_matmul_layers(LayerTable& table);  // fused_matmul.cc: kiln.FusedMatMul, kiln.Gelu (after the elementwise layers)
void register_conv_layers(LayerTable& table);  // conv.cc: Conv and ConvTranspose through cuDNN
void register_fused_conv_layers(LayerTable& table);  // fused_conv.cc: kiln.FusedConv through cuDNN
void register_normalization_layers(LayerTable& table);  // normalization.cu: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization
void register_softmax_layers(LayerTable& table);  // softmax.cu: Softmax and LogSoftmax
void register_fused_attention_layers(LayerTable& table);  // masked_softmax.cu: kiln.MaskedSoftmax
void register_attention_layers(LayerTable& table);  // attention.cu: kiln.FusedAttention (FlashAttention-2 style)
void register_reduce_layers(LayerTable& table);  // reduce.cu: the Reduce ops, ArgMax, ArgMin, CumSum, TopK
void register_pool_layers(LayerTable& table);  // pool.cu: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool
void register_channels_last_pool_layers(LayerTable& table);  // channels_last_pool.cu: kiln.ChannelsLastPool
void register_relayout_layers(LayerTable& table);  // relayout.cu: kiln.Relayout (Cast + Transpose + Pad in one)
void register_resize_layers(LayerTable& table);  // resize.cu: Resize
void register_pad_layers(LayerTable& table);  // pad.cu: Pad
void register_shape_layers(LayerTable& table);  // shape_ops.cu: Reshape, Flatten, Squeeze, Unsqueeze, Identity (views), Transpose, Expand, Tile
void register_index_layers(LayerTable& table);  // index_ops.cu: Concat, Split, Slice, Gather, GatherElements, Range
void register_logical_layers(LayerTable& table);  // logical.cu: comparisons, And, Or, Xor, Not, IsNaN, IsInf
void register_pointwise_layers(LayerTable& table);  // pointwise_layer.cc: kiln.Pointwise (NVRTC-generated kernels)
void register_conv_pair_layers(LayerTable& table);  // conv_pair.cu: kiln.FusedConvPair (two 1x1 convs, one kernel)
void register_write_channels_layers(LayerTable& table);  // write_channels.cu: kiln.WriteChannels (in place)

// A CUDA runtime error as a Status naming the call ("cudaMemcpyAsync failed: cudaErrorInvalidValue: ...").
Status cuda_status(cudaError_t e, const char* call);
Status cublas_status(cublasStatus_t s, const char* call);
Status cudnn_status(cudnnStatus_t s, const char* call);
#define KILN_CUDA_TRY(call) KILN_RETURN_IF_ERROR(::kiln::cuda::cuda_status((call), #call))
#define KILN_CUBLAS_TRY(call) KILN_RETURN_IF_ERROR(::kiln::cuda::cublas_status((call), #call))
#define KILN_CUDNN_TRY(call) KILN_RETURN_IF_ERROR(::kiln::cuda::cudnn_status((call), #call))

// The last launch's error as a Status naming the kernel.
Status launch_status(const char* kernel);

}  // namespace kiln::cuda
