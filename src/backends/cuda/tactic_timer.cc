// Tactic timing on the GPU (tactic_timer.h).
#include "backends/cuda/tactic_timer.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <mutex>

#include "backends/cuda/kernels.h"
#include "backends/cuda/layer.h"

namespace kiln::cuda {

namespace {

struct DeviceBuffer {
  void* p = nullptr;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

}  // namespace

Result<std::vector<backends::TacticTime>> time_tactics(const ir::Node& node, const ir::Graph& graph, int opset,
                                             bool allow_tf32, const std::vector<std::string>& tactics) {
  const LayerKind* kind = layer_table().find_for(node);
  if (kind == nullptr) return Unsupported(node.describe() + ": no CUDA layer to time");
  // Handles from the process-wide pool, kept for the builds of this process (never destroyed at exit,
  // when the CUDA runtime may already be gone).
  static std::mutex* mu = new std::mutex();  // one timing at a time: the handles are not thread-safe, and
  std::lock_guard<std::mutex> lock(*mu);       // concurrent timings would disturb each other anyway
  static std::shared_ptr<HandleSet>* handles = new std::shared_ptr<HandleSet>();
  if (!*handles) {
    KILN_ASSIGN_OR_RETURN(*handles, HandleSet::acquire());
  }
  const CudaHandles& h = (*handles)->handles();

  const LayerSpec spec = make_layer_spec(node, graph, opset, allow_tf32);

  // Inputs: constants as they are, float data random in [-1, 1] made on the device (a fixed seed per input:
  // timings do not depend on it, and the build stays deterministic; made on the host, batch-256 inputs took
  // seconds a layer), anything else zeros (valid indices for Gather and the like).
  std::vector<std::unique_ptr<DeviceBuffer>> mem;
  std::vector<DeviceTensor> ins, outs;
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    const TensorDesc& d = spec.inputs[i];
    if (!d.present()) {
      ins.emplace_back();
      continue;
    }
    if (!d.is_static()) return Unsupported(node.describe() + ": shapes not static, nothing to time");
    const int64_t numel = shape_numel(d.shape);
    const size_t bytes = static_cast<size_t>(numel) * dtype_size(d.dtype);
    mem.push_back(std::make_unique<DeviceBuffer>());
    KILN_CUDA_TRY(cudaMalloc(&mem.back()->p, std::max<size_t>(bytes, 1)));
    if (d.constant != nullptr) {
      KILN_CUDA_TRY(cudaMemcpy(mem.back()->p, d.constant->raw_data(), d.constant->nbytes(), cudaMemcpyHostToDevice));
    } else if (d.dtype == DType::kFloat32 || d.dtype == DType::kFloat16 || d.dtype == DType::kBFloat16) {
      KILN_RETURN_IF_ERROR(launch_fill_uniform(d.dtype, mem.back()->p, numel, 1234 + i, -1.0f, 1.0f, nullptr));
    } else {
      KILN_CUDA_TRY(cudaMemset(mem.back()->p, 0, bytes));
    }
    ins.push_back(DeviceTensor{mem.back()->p, d.dtype, d.shape});
  }
  for (const TensorDesc& d : spec.outputs) {
    if (!d.present()) {
      outs.emplace_back();
      continue;
    }
    if (!d.is_static()) return Unsupported(node.describe() + ": shapes not static, nothing to time");
    mem.push_back(std::make_unique<DeviceBuffer>());
    const size_t bytes = static_cast<size_t>(shape_numel(d.shape)) * dtype_size(d.dtype);
    KILN_CUDA_TRY(cudaMalloc(&mem.back()->p, std::max<size_t>(bytes, 1)));
    outs.push_back(DeviceTensor{mem.back()->p, d.dtype, d.shape});
  }

  KILN_CUDA_TRY(cudaDeviceSynchronize());  // the uploads above ran on the legacy default stream
  cudaEvent_t start, stop;
  KILN_CUDA_TRY(cudaEventCreate(&start));
  KILN_CUDA_TRY(cudaEventCreate(&stop));
  std::vector<backends::TacticTime> result;
  for (const std::string& tactic : tactics) {
    backends::TacticTime t{tactic, -1, ""};
    const auto setup_start = std::chrono::steady_clock::now();
    auto layer = kind->create(spec, tactic, h);
    t.setup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - setup_start).count();
    if (!layer.ok()) {
      t.error = layer.status().message();
      result.push_back(t);
      continue;
    }
    DeviceBuffer ws;
    const size_t ws_bytes = (*layer)->workspace_bytes();
    if (ws_bytes > 0 && cudaMalloc(&ws.p, ws_bytes) != cudaSuccess) {
      cudaGetLastError();
      ws.p = nullptr;
      t.error = "workspace of " + std::to_string(ws_bytes) + " bytes does not fit";
      result.push_back(t);
      continue;
    }
    // Warm up, then the median of 5 rounds of `reps` runs each, reps sized to ~1 ms per round.
    Status st = OkStatus();
    for (int i = 0; i < 3 && st.ok(); ++i) st = (*layer)->run(ins, outs, ws.p, h);
    if (st.ok()) st = cuda_status(cudaStreamSynchronize(h.stream), "cudaStreamSynchronize");
    if (!st.ok()) {
      cudaGetLastError();
      t.error = st.message();
      result.push_back(t);
      continue;
    }
    float once = 0;
    cudaEventRecord(start, h.stream);
    (void)(*layer)->run(ins, outs, ws.p, h);
    cudaEventRecord(stop, h.stream);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&once, start, stop);
    const int reps = std::clamp(static_cast<int>(1.0f / std::max(once, 1e-3f)), 1, 100);
    std::vector<float> rounds;
    for (int r = 0; r < 5; ++r) {
      cudaEventRecord(start, h.stream);
      for (int i = 0; i < reps; ++i) (void)(*layer)->run(ins, outs, ws.p, h);
      cudaEventRecord(stop, h.stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      rounds.push_back(ms / reps);
    }
    std::sort(rounds.begin(), rounds.end());
    t.ms = rounds[rounds.size() / 2];
    result.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  KILN_CUDA_TRY(cudaGetLastError());
  return result;
}

}  // namespace kiln::cuda
