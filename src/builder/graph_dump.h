// A text dump of an (optimized) graph, one line per node, made to be diffed: the golden files of
// tests/golden/ and `kiln inspect --graph`. It holds what the optimizer decides (fused layers by name, ops,
// attributes, types, weights) and nothing that needs a device (tactics, times), so a change to any pass shows
// up as a change of these lines in review.
#pragma once

#include <string>

#include "ir/graph.h"

namespace kiln::builder {

// Deterministic: attributes in name order, floats in their shortest exact form, nothing from addresses or
// hash order. Lines:
//   opsets: ""=17 kiln=1
//   input x: float32[1,3,32,32]
//   conv1 + relu1: kiln.FusedConv(x, w1: float16[8,3,3,3], b1: float16[8]) activation="Relu" pads=[1,1,1,1]
//       -> y1: float16[1,8,32,32]                                                   (one line in the dump)
//   output y: float32[1,10]
//   initializers: 4 tensors, 1234 bytes (float16: 3 tensors, 1200 bytes; int64: 1 tensor, 34 bytes)
// Initializers an input reads show their type inline; other inputs are named (their type is on the line
// of their producer, or of the graph input).
std::string dump_graph(const ir::Model& m);

}  // namespace kiln::builder
