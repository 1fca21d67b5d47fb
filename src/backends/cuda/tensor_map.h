// Tensor maps, the descriptors of Hopper's tensor copies (TMA), encoded on the host for the kernels that use
// them (gemm_sm90.cu, attention_hopper.cu). The driver's encoder is reached through the runtime's entry-point
// query, so that Kiln links no libcuda.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "backends/cuda/layer.h"

namespace kiln::cuda {

// Whether the driver offers cuTensorMapEncodeTiled.
bool tensor_maps_available();

// A map of a tensor of 16-bit elements (float16 or bfloat16) of `rank` dims (1 to 5), dims[0] innermost and
// contiguous, strides[i] the step of dims[i + 1] in elements; copied in boxes of box[] elements with the
// 128-byte swizzle (box[0] * 2 must be 128 bytes at most). The base must be 16-byte aligned and the strides
// multiples of 8 elements: Unsupported otherwise, naming `what`.
Status encode_tensor_map(CUtensorMap* map, DType t, const void* base, int rank, const int64_t* dims,
                         const int64_t* strides, const uint32_t* box, const char* what);

}  // namespace kiln::cuda
