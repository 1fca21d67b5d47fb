// ResNet-50's layer1.2 and layer2.0 as torch exports them (NCHW Conv, Add, Relu; float32), narrowed to 6 x 6
// pixels at batch 2: the junction where sample_pair_output, the second fold_projection_shortcut run and
// write_concat_in_place all apply. Shared by those passes' tests, through the optimizer and whole engines.
#pragma once

#include <cmath>
#include <random>
#include <string>

#include "graph_builder.h"
#include "passes/graph_uses.h"
#include "random_tensors.h"

namespace kiln::testing {

struct OnnxConvGraph : GraphBuilder {
  std::mt19937& gen;
  explicit OnnxConvGraph(std::mt19937& g) : GraphBuilder(17), gen(g) {}
  // A k x k conv of c -> m channels, "same" padding, with bias. Weights of scale 1 / sqrt(fan-in) keep every
  // layer's outputs near 1, where float16's error is what the tests' 2e-2 allows for (weights of 0.25 made
  // the deeper outputs large enough to exceed it).
  void conv(const std::string& name, const std::string& x, const std::string& y, int64_t c, int64_t m, int64_t k,
            int64_t stride = 1) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(c * k * k));
    init(name + ".weight", random_tensor(gen, DType::kFloat32, {m, c, k, k}, -scale, scale));
    init(name + ".bias", random_tensor(gen, DType::kFloat32, {m}, -0.2f, 0.2f));
    ir::Node& n = node("Conv", {x, name + ".weight", name + ".bias"}, {y}, name);
    n.attributes["kernel_shape"] = passes::ints_attribute({k, k});
    n.attributes["pads"] = passes::ints_attribute({k / 2, k / 2, k / 2, k / 2});
    n.attributes["strides"] = passes::ints_attribute({stride, stride});
  }
  void relu(const std::string& x, const std::string& y) { node("Relu", {x}, {y}, y); }
};

// Input "image" [2, 256, 6, 6], output "out2" [2, 512, 3, 3].
inline OnnxConvGraph resnet_layer2_junction(std::mt19937& gen) {
  OnnxConvGraph b(gen);
  b.input("image", random_tensor(gen, DType::kFloat32, {2, 256, 6, 6}, -1.0f, 1.0f));
  // layer1.2: 256 -> 64 -> 64 -> 256, + image.
  b.conv("layer1.2.conv1", "image", "a1", 256, 64, 1);
  b.relu("a1", "r1");
  b.conv("layer1.2.conv2", "r1", "a2", 64, 64, 3);
  b.relu("a2", "r2");
  b.conv("layer1.2.conv3", "r2", "a3", 64, 256, 1);
  b.node("Add", {"a3", "image"}, {"s1"}, "layer1.2.add");
  b.relu("s1", "out1");
  // layer2.0: 256 -> 128 -> 128 (3x3, stride 2) -> 512, + the stride-2 1x1 downsample of out1.
  b.conv("layer2.0.conv1", "out1", "c1", 256, 128, 1);
  b.relu("c1", "q1");
  b.conv("layer2.0.conv2", "q1", "c2", 128, 128, 3, 2);
  b.relu("c2", "q2");
  b.conv("layer2.0.conv3", "q2", "c3", 128, 512, 1);
  b.conv("layer2.0.downsample", "out1", "d", 256, 512, 1, 2);
  b.node("Add", {"c3", "d"}, {"s2"}, "layer2.0.add");
  b.relu("s2", "out2");
  b.output("out2");
  return b;
}

}  // namespace kiln::testing
