// CUDA layer of the optimizer's kiln.WriteChannels (made by write_concat_in_place): Y = Base with channels
// [offset, offset + Cp) replaced by Piece, channels-last [N, H, W, C]. The executor gives Y Base's memory
// where nothing else reads Base (LayerKind::may_update_input0_in_place): then only Piece's channels are
// written, which is the point (at ResNet-50's layer2.0 a third of what the Concat it replaces moved).
// Otherwise Base is copied to Y first. Any dtype: the kernel moves bytes, 16 at a time where every row and
// offset allows it, and cudaMemcpy2DAsync moves the rest.
#include <cstdint>
#include <string>

#include "backends/cuda/device_common.cuh"
#include "backends/cuda/layer.h"

namespace kiln::cuda {
namespace {

const char* const kOpName = "CUDA kiln.WriteChannels";

// Row r of `rows` rows of `chunks` 16-byte pieces from src (packed) to dst (row pitch dst_pitch chunks).
__global__ void write_channels_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t rows, int chunks,
                                      int64_t dst_pitch) {
  const int64_t total = rows * chunks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunks;
    dst[r * dst_pitch + (i - r * chunks)] = src[i];
  }
}

class WriteChannelsLayer : public Layer {
 public:
  WriteChannelsLayer(int64_t pixels, int64_t c, int64_t cp, int64_t offset, size_t es)
      : pixels_(pixels), c_(c), cp_(cp), offset_(offset), es_(es) {}

  Status run(const std::vector<DeviceTensor>& in, const std::vector<DeviceTensor>& out, void*,
             const CudaHandles& h) const override {
    char* y = static_cast<char*>(out[0].data);
    if (out[0].data != in[0].data && out[0].nbytes() > 0)
      KILN_CUDA_TRY(cudaMemcpyAsync(y, in[0].data, out[0].nbytes(), cudaMemcpyDeviceToDevice, h.stream));
    if (pixels_ == 0 || cp_ == 0) return OkStatus();
    const size_t row = cp_ * es_, pitch = c_ * es_, skip = offset_ * es_;
    char* dst = y + skip;
    if (row % 16 == 0 && pitch % 16 == 0 && aligned16(dst) && aligned16(in[1].data)) {
      const int chunks = static_cast<int>(row / 16);
      write_channels_kernel<<<grid_for(pixels_ * chunks), kThreads, 0, h.stream>>>(
          static_cast<const uint4*>(in[1].data), reinterpret_cast<uint4*>(dst), pixels_, chunks,
          static_cast<int64_t>(pitch / 16));
      return launch_status("write_channels_kernel");
    }
    KILN_CUDA_TRY(cudaMemcpy2DAsync(dst, pitch, in[1].data, row, row, static_cast<size_t>(pixels_), cudaMemcpyDeviceToDevice,
                                    h.stream));
    return OkStatus();
  }

 private:
  int64_t pixels_, c_, cp_, offset_;
  size_t es_;
};

std::string check_write_channels(const LayerSpec& spec) {
  const std::string op = std::string(kOpName) + (spec.node ? " '" + spec.node->name + "'" : std::string());
  if (spec.inputs.size() != 2 || !spec.inputs[0].present() || !spec.inputs[1].present())
    return op + " takes 2 inputs, Base and Piece";
  if (spec.outputs.size() != 1) return op + " has one output";
  if (spec.inputs[1].dtype != spec.inputs[0].dtype) return op + ": Piece must have Base's dtype";
  if (dtype_size(spec.inputs[0].dtype) == 0) return op + ": dtype " + dtype_name(spec.inputs[0].dtype) + " has no fixed size";
  return "";
}

Result<std::unique_ptr<Layer>> create_write_channels(const LayerSpec& spec, const std::string&, const CudaHandles&) {
  if (std::string why = check_write_channels(spec); !why.empty()) return Unsupported(why);
  const std::string op = std::string(kOpName) + " '" + spec.node->name + "'";
  const Shape& b = spec.inputs[0].shape;
  const Shape& p = spec.inputs[1].shape;
  if (b.size() != 4 || p.size() != 4 || b[0] != p[0] || b[1] != p[1] || b[2] != p[2])
    return InvalidArgument(op + ": Base " + shape_to_string(b) + " and Piece " + shape_to_string(p) +
                           " must be [N, H, W, C] of the same N, H and W");
  const int64_t offset = spec.attr_int("offset", 0);
  if (offset < 0 || offset > b[3] - p[3])
    return InvalidArgument(op + ": offset " + std::to_string(offset) + " puts Piece's " + std::to_string(p[3]) +
                           " channels outside Base's " + std::to_string(b[3]));
  if (spec.outputs[0].shape != b) return InvalidArgument(op + ": the output must be Base's " + shape_to_string(b));
  return std::unique_ptr<Layer>(
      std::make_unique<WriteChannelsLayer>(b[0] * b[1] * b[2], b[3], p[3], offset, dtype_size(spec.inputs[0].dtype)));
}

}  // namespace

void register_write_channels_layers(LayerTable& table) {
  LayerKind k;
  k.op_type = "kiln.WriteChannels";
  k.check = check_write_channels;
  k.create = create_write_channels;
  k.may_update_input0_in_place = true;
  table.add(std::move(k));
}

}  // namespace kiln::cuda
