// kiln.FusedConv through cuDNN's graph API (the backend descriptors of cudnn_graph.h): the convolution and
// its epilogue (+ Z, + bias, activation) as one operation graph, run by an engine that cuDNN's heuristics offer
// (Hopper-native kernels and runtime-fused epilogues that the legacy cudnnConvolutionBiasActivationForward
// never reaches). fused_conv.cc lists these tactics and hands their names here.
//
// Tactics: "cuda.cudnn.graph.h0" .. "cuda.cudnn.graph.h7", the k-th usable engine config in the heuristics'
// lists for the problem (mode A's, then FALLBACK's without repeats); a config is usable when its numerical
// notes keep the node's precision and it finalizes into an execution plan within kMaxAlgoWorkspace. The list is the same for every
// node (it must be answerable before shapes are known); create() says Unsupported when there are fewer
// usable configs. A config can also be named outright, "cuda.cudnn.graph.e<global engine index>" followed by
// its knob choices ".k<knob type>=<value>" in increasing knob type (what cudnn_graph_engine_of() gives).
#pragma once

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backends/cuda/conv_common.h"
#include "backends/cuda/layer.h"

namespace kiln::cuda {

inline constexpr const char* kCudnnGraphPrefix = "cuda.cudnn.graph.";

// "cuda.cudnn.graph.h0" .. "cuda.cudnn.graph.h7".
std::vector<std::string> cudnn_graph_tactics();
bool is_cudnn_graph_tactic(const std::string& tactic);  // starts with kCudnnGraphPrefix

// One kiln.FusedConv as fused_conv.cc has checked it: its geometry in the ONNX layout ([N, C, spatial...]),
// with X, W, Z and Y stored channels-last when channels_last (W as [M, k..., C/group]).
struct GraphConvProblem {
  std::string op;  // names the node in errors
  cudnn_conv::Geometry g;
  DType dtype = DType::kFloat32;
  bool channels_last = false, has_bias = false, has_z = false, allow_tf32 = true;
  // FusedConv's activation: "" | Relu | Clip (act_min, act_max) | LeakyRelu (act_alpha) | Sigmoid | Silu. The
  // graph has no pointwise mode for HardSwish, and Clip runs only with a lower bound of 0 (cuDNN's clipped
  // RELU_FWD, as ReLU6): create() says Unsupported for the others, which "cuda.cudnn.unfused" runs.
  std::string activation;
  float act_min = -std::numeric_limits<float>::infinity(), act_max = std::numeric_limits<float>::infinity();
  float act_alpha = 0.01f;
};

// The layer for a graph tactic: InvalidArgument for a name that is not one, Unsupported when cuDNN has no
// such engine config for the problem (the tactic timer then skips it).
Result<std::unique_ptr<Layer>> create_cudnn_graph_conv(const GraphConvProblem& p, const std::string& tactic,
                                                       const CudaHandles& h);

// The engine config a graph layer runs, as a tactic name ("cuda.cudnn.graph.e12.k3=1.k5=4"); "" for a
// layer of another kind or one with nothing to compute.
std::string cudnn_graph_engine_of(const Layer& layer);
// Whether that engine computes through a transform (FFT or Winograd: cuDNN's numerical notes), whose
// float32 error is larger than a direct convolution's.
bool cudnn_graph_transform_based(const Layer& layer);

}  // namespace kiln::cuda
