// The CUDA code generator of kiln.Pointwise (made by passes/fuse_pointwise.cc): at build time, one node's
// program becomes the source of one grid-stride kernel, its shapes and broadcast strides written in as
// constants, which NVRTC compiles to a CUBIN for the engine, so that the runtime needs no compiler. NVRTC
// runs without a GPU. The layer that loads and launches the CUBIN is still to come.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::cuda {

// The highest output rank the generator handles.
constexpr size_t kPointwiseMaxRank = 6;

// Everything the kernel's source depends on.
struct PointwiseKernelSpec {
  std::vector<std::string> program;          // the node's `program`
  std::vector<DType> input_dtypes;           // float32, float64, float16 or bfloat16
  std::vector<std::vector<int64_t>> input_strides;  // per input, element strides over out_dims (0: broadcast)
  std::vector<int64_t> out_dims;             // rank <= kPointwiseMaxRank
  DType out_dtype = DType::kUndefined;       // in0's dtype
};

// The spec of `node` (a kiln.Pointwise) for inputs of these static shapes and dtypes. Errors name the node:
// a bad program, inputs that do not broadcast, a rank above 6, a dtype the generator does not handle.
Result<PointwiseKernelSpec> pointwise_kernel_spec(const ir::Node& node, const std::vector<Shape>& input_shapes,
                                                 const std::vector<DType>& input_dtypes);

// The CUDA C++ source of the kernel
//   extern "C" __global__ void <kernel_name>(const T0* in0, ..., TO* out, long long n)
// with n the number of output elements; any grid size covers it (grid-stride loop). Errors name `what`.
Result<std::string> pointwise_kernel_source(const PointwiseKernelSpec& spec, const std::string& kernel_name,
                                            const std::string& what = "kiln.Pointwise");

// Compiles CUDA C++ `source` with NVRTC to a CUBIN for `arch` ("sm_90a"). Errors carry NVRTC's log.
Result<std::vector<char>> compile_to_cubin(const std::string& source, const std::string& kernel_name,
                                           const std::string& arch = "sm_90a");

}  // namespace kiln::cuda
