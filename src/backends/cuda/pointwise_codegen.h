// The CUDA code generator of kiln.Pointwise (made by passes/fuse_pointwise.cc): at build time, one node's
// program becomes the source of a kernel, which NVRTC compiles to a CUBIN stored in the engine (the
// node's attributes `cubin` and `kernel`, set by builder/build_plan.cc), so that the runtime needs no
// compiler. NVRTC runs without a GPU. The layer that loads and launches the CUBIN is pointwise_layer.cc.
//
// The source depends on the program, the dtypes and the output rank only: dims and broadcast strides
// come at launch, in a parameter struct passed by value (PointwiseArgs), so that one CUBIN serves every
// shape of that rank. It has two entry points:
//   <kernel>     (const S0* in0, ..., SO* out, Args p): any broadcasting, output coordinates from p.dims
//   <kernel>_vec (the same parameters): every input full-size, one element, or broadcast along outer
//                dims only (its last dim the output's, a multiple of the vector width), each thread
//                computing kPointwiseVectorBytes / (the smallest element size) elements through 16-byte
//                accesses; the pointers of inputs of more than one element and out must be 16-byte aligned
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::cuda {

// The highest output rank and the most inputs the generator handles (the parameter struct stays small).
constexpr size_t kPointwiseMaxRank = 6;
constexpr size_t kPointwiseMaxInputs = 32;
constexpr int kPointwiseVectorBytes = 16;

// Everything the kernel's source depends on.
struct PointwiseKernelSpec {
  std::vector<std::string> program;  // the node's `program`
  std::vector<DType> input_dtypes;   // float32, float64, float16 or bfloat16
  DType out_dtype = DType::kUndefined;  // in0's dtype
  size_t rank = 0;                   // of the output (the inputs' highest), <= kPointwiseMaxRank
};

// The spec of `node` (a kiln.Pointwise) for inputs of these dtypes and an output of rank `rank`. Errors
// name the node: a bad program, too many inputs, a rank above 6, a dtype the generator does not handle.
Result<PointwiseKernelSpec> pointwise_kernel_spec(const ir::Node& node, const std::vector<DType>& input_dtypes,
                                                 size_t rank);

// "kiln_pointwise_<16 hex digits>": a stable hash of the spec (and of the parameter layout's version),
// so that nodes of the same spec share a kernel, and a stored CUBIN that does not fit a node is caught.
std::string pointwise_kernel_name(const PointwiseKernelSpec& spec);

// The elements a thread of <kernel>_vec computes: 16 bytes of the smallest of the dtypes.
int pointwise_vector_width(const PointwiseKernelSpec& spec);

// The CUDA C++ source of the two kernels (see above), named kernel_name and kernel_name + "_vec". Errors
// name `what`.
Result<std::string> pointwise_kernel_source(const PointwiseKernelSpec& spec, const std::string& kernel_name,
                                            const std::string& what = "kiln.Pointwise");

// Compiles CUDA C++ `source` with NVRTC to a CUBIN for `arch` ("sm_90a"). Errors carry NVRTC's log.
Result<std::vector<char>> compile_to_cubin(const std::string& source, const std::string& kernel_name,
                                           const std::string& arch = "sm_90a");

// The spec's kernels, compiled: what a node's `kernel` and `cubin` attributes hold.
struct CompiledPointwise {
  std::string kernel;
  std::string cubin;  // raw bytes
};
Result<CompiledPointwise> compile_pointwise(const PointwiseKernelSpec& spec, const std::string& arch,
                                            const std::string& what = "kiln.Pointwise");

// "sm_90" for the current CUDA device (needs one).
Result<std::string> current_device_arch();

// The kernels' last parameter for inputs of these shapes: the bytes of the struct
//   { long long n; long long dims[6]; long long strides[inputs][6]; long long scalar_mask; long long row_mask; }
// (n output elements; the output's dims, then 1s; per input, its element strides over the output's dims,
// 0 where it broadcasts; scalar_mask bit i set when input i has one element, row_mask bit i when it
// broadcasts along outer dims only and <kernel>_vec reads it through its strides), and whether <kernel>_vec
// may run (every input full-size, one element or in row_mask; the pointers' alignment is the caller's to
// check).
struct PointwiseArgs {
  std::vector<int64_t> words;
  Shape out_shape;
  int64_t n = 0;
  bool vectorizable = false;
};
Result<PointwiseArgs> pointwise_args(const PointwiseKernelSpec& spec, const std::vector<Shape>& input_shapes,
                                     const std::string& what = "kiln.Pointwise");

}  // namespace kiln::cuda
