#include "backends/cuda/tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <string>

namespace kiln::cuda {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

}  // namespace

bool tensor_maps_available() { return tensor_map_encoder() != nullptr; }

Status encode_tensor_map(CUtensorMap* map, DType t, const void* base, int rank, const int64_t* dims,
                         const int64_t* strides, const uint32_t* box, const char* what) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return Internal(std::string(what) + ": the driver has no cuTensorMapEncodeTiled");
  if (rank < 1 || rank > 5) return Internal(std::string(what) + ": a tensor map of rank " + std::to_string(rank));
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0)
    return Unsupported(std::string(what) + ": the tensor's base is not 16-byte aligned");
  cuuint64_t gdims[5], gstrides[4];
  cuuint32_t gbox[5], elem_strides[5];
  for (int i = 0; i < rank; ++i) {
    gdims[i] = static_cast<cuuint64_t>(dims[i]);
    gbox[i] = box[i];
    elem_strides[i] = 1;
    if (i + 1 < rank) {
      if (strides[i] <= 0 || strides[i] % 8 != 0)
        return Unsupported(std::string(what) + ": stride " + std::to_string(strides[i]) +
                           " elements is not a positive multiple of 16 bytes");
      gstrides[i] = static_cast<cuuint64_t>(strides[i]) * 2;
    }
  }
  const CUtensorMapDataType type =
      t == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = encode(map, type, static_cast<cuuint32_t>(rank), const_cast<void*>(base), gdims, gstrides, gbox,
                            elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return Internal(std::string(what) + ": cuTensorMapEncodeTiled failed (" + std::to_string(static_cast<int>(r)) +
                    ")");
  }
  return OkStatus();
}

}  // namespace kiln::cuda
