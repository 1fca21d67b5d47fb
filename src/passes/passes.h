// Graph passes: each a rewrite of an ir::Model, one per file (DESIGN.md principle 6).
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>

#include "ir/graph.h"
#include "kiln/status.h"

namespace kiln::passes {

// Fixes the shapes of graph inputs given at build time (--shapes); refuses unknown names and rank changes.
Status apply_input_shapes(ir::Model& model, const std::map<std::string, Shape>& shapes);
// Binds shape-tensor inputs (int32/int64, rank 0 or 1) to values: each becomes an initializer and leaves
// graph.inputs, so that folding makes what they decide (Reshape targets) constant (apply_input_shapes.cc).
Status apply_input_values(ir::Model& model, const std::map<std::string, std::vector<int64_t>>& values);
// The graph a GPU context runs at some input shapes (and shape-tensor values), from an engine's graph that
// keeps dynamic dims: both applied, what they make constant folded, an attention mask that folding showed
// to be a broadcast narrowed (narrow_attention_mask), and what nothing reads any more dropped. The builder
// times tactics on the same graph (apply_input_shapes.cc).
Status specialize_to_inputs(ir::Model& model, const std::map<std::string, Shape>& shapes,
                            const std::map<std::string, std::vector<int64_t>>& values);
// Infers the dtype and shape (with symbolic dimensions) of every value it can, into graph.value_types.
Status infer_shapes(ir::Model& model);
// Evaluates nodes whose inputs are all constant (and Shape/Size of statically shaped values) at build
// time, replacing them by initializers. Returns the number of nodes folded through *folded.
Status fold_constants(ir::Model& model, int* folded = nullptr);
// infer_shapes and fold_constants in turn until nothing more folds (ending with the types inferred).
Status fold_constants_to_fixpoint(ir::Model& model, int* folded = nullptr);
// Gives each Reshape whose target a shape computation makes at run time (a model exported with dynamic dims)
// a constant target where the symbolic dims allow one: 0 for an output dim equal to the input's at its
// position, -1 for at most one other dim that is not a number (resolve_shape_targets.cc). Run after
// infer_shapes; the shape computations left without readers are for eliminate_dead_nodes. The number of
// targets made constant goes to *resolved.
Status resolve_shape_targets(ir::Model& model, int* resolved = nullptr);

// Bypasses nodes that pass their input on unchanged: Identity, Dropout at inference, a Cast to the type the
// value has, a Reshape or Expand to the shape it has, symbols included (their readers read the input). Graph outputs and values read
// by subgraphs keep their producers. The number removed goes to *removed.
Status remove_noops(ir::Model& model, int* removed = nullptr);
// A Transpose that moves only dims of size 1 (the others keep their order) becomes the Reshape to its output
// shape (a new int64 initializer "<output>__shape"; at most one dim unknown, as -1; opset >= 5): the same
// bytes in the same order, a view instead of a kernel. The number rewritten goes to *rewritten.
Status transpose_to_reshape(ir::Model& model, int* rewritten = nullptr);
// A Gather whose constant indices are 0..n-1 in order along an axis of known size n (every dim before it 1)
// becomes the Reshape to its output shape (a new int64 initializer "<output>__shape"; at most one dim
// unknown; opset >= 5): the data in the order it has, a view. The number rewritten goes to *rewritten.
Status identity_gather_to_reshape(ir::Model& model, int* rewritten = nullptr);
// Merges nodes that compute the same (same domain, op, attributes by value, subgraphs included, inputs and
// output count) into the first, its readers (and subgraphs' reads) reading the first one's outputs, and
// equal constants (initializers that are not graph inputs, Constant nodes: dtype, shape, bytes) into one.
// Random ops and ops Kiln does not know stay; a duplicate that produces a graph output stays, and so does
// one named in `keep` (the layers a --layer-precision pin names: a pin is always honored, so its layer must
// not vanish into another). The number of nodes and initializers merged away goes to *merged.
Status eliminate_common_subexpressions(ir::Model& model, int* merged = nullptr,
                                       const std::set<std::string>& keep = {});
// Folds each inference BatchNormalization (training_mode 0, only Y read; scale, B, mean and var constant
// [M]) that alone reads a Conv's output into that Conv (weights and bias initializers, or no bias):
// W' = W * k, b' = (b - mean) * k + B per output channel, k = scale / sqrt(var + eps), computed in float64
// and stored in the weights' dtype under new names (the old ones stay for eliminate_dead_nodes). The Conv
// takes the BatchNormalization's output and is named "conv + bn". The number folded goes to *folded.
Status fold_batch_norm(ir::Model& model, int* folded = nullptr);
// Removes nodes whose outputs nothing uses, and initializers nothing reads.
Status eliminate_dead_nodes(ir::Model& model, int* removed = nullptr);

// Runs the nodes that `lower` accepts in `low` (float16 or bfloat16): their float32 inputs are converted
// (initializers once, computed values by an inserted Cast), their float32 outputs become `low`, and a Cast
// back to float32 is inserted where a node that stays in float32, or a graph output, reads the value. The
// names of the lowered nodes are added to *lowered.
Status lower_precision(ir::Model& model, DType low, const std::function<bool(const ir::Node&)>& lower,
                       std::set<std::string>* lowered = nullptr);

// Finds GELU written out as elementwise ops (exporters for opsets < 20: 0.5 * x * (1 + Erf(x / sqrt(2))), and
// the tanh form 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))) and replaces each with one kiln.Gelu
// (approximate "none" / "tanh"); the pattern's intermediate values must have no other reader. Sets
// model.opsets["kiln"]. The number found goes to *found.
Status recognize_gelu(ir::Model& model, int* found = nullptr);
// Finds LayerNorm over the last axis written out as ReduceMean, Sub, Pow(., 2) or Mul(d, d), ReduceMean,
// Add(eps), Sqrt, Div [, Mul(gamma)] [, Add(beta)] (ReduceMean's axes [-1] as attribute or input,
// keepdims 1; gamma and beta constants [C] of x's dtype) and replaces each with one ONNX
// LayerNormalization (axis -1, epsilon; Scale ones without gamma). Only when the model's default opset is
// 17 or more (LayerNormalization's first); the intermediate values must have no other reader. Run after
// infer_shapes (x's last dim). The number found goes to *found.
Status recognize_layer_norm(ir::Model& model, int* found = nullptr);
// Finds SiLU (x * Sigmoid(x)) and HardSwish (x * HardSigmoid(x, 1/6, 0.5), x * Clip(x + 3, 0, 6) / 6 in
// its associations, Div by 6 or Mul by 1/6) written out as elementwise ops and replaces each with one op:
// Swish (ONNX's from opset 24, else kiln.Swish, the same op; then model.opsets["kiln"] is set), and ONNX
// HardSwish when the model's default opset is 14 or more (else HardSwish patterns stay). The pattern's
// intermediate values must have no other reader. The number found goes to *found.
Status recognize_activations(ir::Model& model, int* found = nullptr);
// MatMul(A, W) -> Add(., bias) [-> Relu | Gelu(approximate "tanh")] becomes one kiln.FusedMatMul when each
// link is its predecessor's sole reader and bias is a float initializer of shape [N] or [1, N], N = W's last
// dim (a [1, N] one is stored again as [N]). Run after infer_shapes (W's shape, A's rank) and after
// recognize_gelu. The number of fused nodes goes to *fused.
Status fuse_matmul_bias(ir::Model& model, int* fused = nullptr);

// A Reshape between a Gemm and a Relu / tanh GELU / residual Add that reads it (GPT-2's Conv1D views) moves
// after that op (the Add's other operand viewed in the Gemm's shape), so that fuse_matmul_bias can put the op
// in the Gemm's epilogue. Static shapes only; run infer_shapes after. The number of Reshapes moved goes to *moved.
Status sink_gemm_reshapes(ir::Model& model, int* moved = nullptr);
// kiln.FusedMatMul (no activation) -> exact Gelu becomes kiln.FusedMatMul(activation "Gelu") when the product
// is float16 or bfloat16 (the CUDA epilogue approximates it, within half precision): run after
// lower_precision. The number of fused nodes goes to *fused.
Status fuse_matmul_gelu(ir::Model& model, int* fused = nullptr);

// Fuses each ONNX Conv with what follows it into one kiln.FusedConv: an Add of a residual of exactly the
// conv output's static shape, then a Relu; each link must be the sole reader of the value before it, and
// not a graph output. A Conv with nothing to absorb stays a Conv. The fused node takes the last absorbed
// node's place and output and is named "conv + add + relu". The number of fused nodes goes to *fused.
Status fuse_conv_activation(ir::Model& model, int* fused = nullptr);
// Makes each 2-D Conv or kiln.FusedConv (channels_last 0) that `eligible` accepts, and whose weights are an
// initializer, a kiln.FusedConv with channels_last = 1: its weights transposed now to a new initializer
// [M, kH, kW, C/group], its X and Z read through Transpose [0,2,3,1] and its output put back through
// Transpose [0,3,1,2], so the graph computes the same. Then transposes that undo one another are
// bypassed and dropped, so no transpose is left between consecutive channels-last convs. Before that, each
// float16/bfloat16 2-D MaxPool (Indices unused), AveragePool, GlobalAveragePool and GlobalMaxPool reading a
// Transpose [0,3,1,2] becomes a kiln.ChannelsLastPool of that Transpose's NHWC input, put back through a
// Transpose [0,3,1,2] too. The old weights, and Transposes no longer read, stay for eliminate_dead_nodes.
// The number of converted convs goes to *converted. `eligible` is asked about every conv before the graph
// changes.
Status convert_conv_layout(ir::Model& model, const std::function<bool(const ir::Node&)>& eligible,
                           int* converted = nullptr);
// A channels-last image stem (kiln.FusedConv that the CUDA stem kernel runs: see fuse_conv_pool.cc) read only by
// a 3x3 stride-2 pad-1 max kiln.ChannelsLastPool becomes one kiln.FusedConv with attributes pool = "max",
// pool_kernel_shape, pool_strides and pool_pads, named "conv + pool", in the pool's place: the stem kernel
// pools its tile on chip instead of writing the full-size output. Run after convert_conv_layout, then
// infer_shapes. The number of fused nodes goes to *fused; each fused node's name, mapped to its conv's, to
// *made_from (the builder's lowered-precision bookkeeping: the conv's name may itself be "conv + relu").
Status fuse_conv_pool(ir::Model& model, int* fused = nullptr, std::map<std::string, std::string>* made_from = nullptr);
// Whether a conv's data suits cuDNN's channels-last tensor-core kernels: float16 or bfloat16 input, weights
// an initializer, output channels a multiple of 8, input channels too or, ungrouped, fewer than 8 (then
// convert_conv_layout pads them to 8, or to 4 for a stride-2 stem the CUDA stem kernel takes: zero weights
// and a Pad of the NHWC input). (The builder adds: the target is CUDA.)
bool conv_suits_channels_last(const ir::Graph& g, const ir::Node& n);
// A chain of two or more Cast (float to float, at most one), Transpose and Pad (mode constant, value 0 or
// absent, constant non-negative pads) nodes of float32/float16/bfloat16 data of rank <= 6, in any order, each
// the sole reader of the value before it (no graph output), becomes one kiln.Relayout, Y = Pad(Cast(Transpose(X,
// perm), to), pads), named "a + b + c": the composed perm, the cast's dtype, the pads moved to Y's axes.
// The number of fused nodes goes to *fused.
Status fuse_relayout(ir::Model& model, int* fused = nullptr);
// A ResNet projection shortcut folded into the block's last conv: Y = kiln.FusedConv(A, W3, [B3], Z = D) and
// D = kiln.FusedConv(X, Wd, [Bd]), both channels-last 1x1 (no padding, dilation 1, one group; Y of stride 1,
// D of stride s along both axes, no activation), D read by Y alone and no graph output, A, X and the
// constant weights and biases of one float dtype, Ca and Cx multiples of 8, become Concat(A, X') along the
// channels (X' = X, or Slice(X, steps s) when s > 1: opset >= 10) and one kiln.FusedConv(concat, [W3 | Wd],
// [B3 + Bd]) with Y's attributes, named "<D's name> + <Y's name>", in Y's place; only when it moves fewer
// bytes: 2 (Ca + Cx) + (s > 1 ? 2 Cx : 0) < 2 M (ResNet-50's layer1.0, not layer2.0 to 4.0). The Concat and
// Slice are named "<Y's name> shortcut concat" / "... shortcut slice". The number folded goes to *folded;
// each new node's name, mapped to Y's old name, to *made_from (the builder's lowered-precision bookkeeping).
Status fold_projection_shortcut(ir::Model& model, int* folded = nullptr,
                                std::map<std::string, std::string>* made_from = nullptr);
// Two 1x1 channels-last kiln.FusedConv, P and a Q reading P's output as its X, become one
// kiln.FusedConvPair(X, W, B, Z, W2, B2[, X2]) with outputs {P's, Q's} and attributes activation / second_activation,
// named "<P's name> + <Q's name>", in P's place: the CUDA kernel keeps Y's tile on chip for Q's GEMM, so Y is
// written but never read back. Only pairs that kernel runs (see fuse_conv_pair.cc): float16/bfloat16, stride
// 1, no padding, one group, initializer weights and biases, activations none or Relu, no residual for Q,
// channels that conv_pair_fits accepts. P's output may have other readers; of several Q, the first in graph
// order is fused. A two-input channel Concat(A, B) that only P reads, and only as X, is absorbed: the
// pair's X is A, its input 6 (X2) is B, and it is named "<P's> + <the Concat's> + <Q's>", each part once
// (A and B 4-D, of P's dtype, the same N, H, W, channels known multiples of 8). Run after
// convert_conv_layout, then infer_shapes. The number fused goes to *fused; each fused node's name, mapped to
// P's, to *made_from (the builder's lowered-precision bookkeeping).
Status fuse_conv_pair(ir::Model& model, int* fused = nullptr, std::map<std::string, std::string>* made_from = nullptr);
// A kiln.FusedConvPair whose first output Y only a 1x1 channels-last kiln.FusedConv of stride (sh, sw) > 1,
// unpadded, reads (as its X, and not as a graph output) gets attribute output_strides = [sh, sw]: it writes Y
// at pixels (h, w) with h % sh == 0 and w % sw == 0 only, [N, ceil(H / sh), ceil(W / sw), C1], and that conv
// gets stride 1 (ResNet-50's layer2.0 downsample: the pair writes a quarter of layer1.2's output). Run after
// fuse_conv_pair, then infer_shapes (and fold_projection_shortcut again: that conv may now fold). The number of
// pairs sampled goes to *sampled.
Status sample_pair_output(ir::Model& model, int* sampled = nullptr);
// A two-input channel Concat (axis 3 of 4-D tensors of one dtype, same N, H, W, channels known multiples of 8)
// one of whose inputs is the first output Y of a kiln.FusedConvPair that only the Concat reads: the pair gets
// attributes output_channels (the concatenation's) and output_channel_offset (Y's place in it) and writes Y
// there; the Concat becomes kiln.WriteChannels(Y, the other input) with attribute offset (the other's place),
// keeping its name and output, which the GPU runs in place. Run after fold_projection_shortcut's second run,
// then infer_shapes. The number rewritten goes to *rewritten.
Status write_concat_in_place(ir::Model& model, int* rewritten = nullptr);

// [Add(X, Mask) ->] Softmax(axis = last, opset >= 13) [-> IsNaN -> Where(isnan, 0, P)] becomes one
// kiln.MaskedSoftmax(X, Mask, nan_to_zero): the Add only when the Softmax alone reads it and Mask's static
// shape broadcasts to X's without growing it; the IsNaN/Where tail only when P is read by those two alone
// and the Where's value is a one-element constant 0 (torch's SDPA export of attention). A Softmax with
// nothing to absorb stays as it is. Run after infer_shapes. The number of fused nodes goes to *fused.
Status fuse_masked_softmax(ir::Model& model, int* fused = nullptr);
// Scaled dot-product attention, MatMul(Q [* c], K^T [* c]) [* c] -> softmax along the last axis
// (kiln.MaskedSoftmax, or Softmax [of Add(S, mask)]) -> MatMul(P, V), becomes one kiln.FusedAttention
// with scale the product of the scalar constants (Div by one too; 1 without any): layout "BSHD", reading Q,
// K and V before and absorbing the Transposes [0,2,1,3] (Q, V, the output) and [0,2,3,1] (K) of torch's
// export; "BHSD" otherwise, K then read from before a Transpose [0,1,3,2] (no such Transpose: not fused).
// Needs rank-4 operands of one B and H, the head size D known, D = Dv <= 256, and a mask of static shape
// broadcasting to [B,H,Sq,Sk]; every absorbed value read by the chain alone. Run after fuse_masked_softmax
// and infer_shapes. The number of fused nodes goes to *fused.
Status fuse_attention(ir::Model& model, int* fused = nullptr);
// A kiln.FusedAttention (BSHD, not packed) whose Q, K and V are each Reshape(Pi, [B, S, H, D]) (a constant
// shape, H and D given) of a kiln.FusedMatMul Pi = (A, Wi, bi) of one A, without activation or Z, Wi and bi
// initializers of one dtype and shape, Pi and the Reshapes read by nothing else: one kiln.FusedMatMul (A,
// concat(Wq, Wk, Wv), concat(bq, bk, bv)) named "q + k + v", a Reshape to [B, S, 3, H, D], and the attention
// with packed_qkv = 1 reading it (and the mask). Run after fuse_attention. The number packed goes to *packed.
Status pack_qkv_projections(ir::Model& model, int* packed = nullptr);
// Narrows each kiln.FusedAttention's mask to the shape it broadcasts from: an Expand, an And with an all-true
// constant or an Or with an all-false one is bypassed where every value after it, up to the mask, is read
// only by broadcasting elementwise ops (Where, Cast, Not, Neg, And, Or, Xor, Add, Sub, Mul, Div and the
// comparisons) or as an attention's mask, and is no graph output (transformers' BERT: its [B,1,S,S] padding
// mask becomes [B,1,1,S]); the attention broadcasts the mask itself. Static shapes only; re-infers the types.
// The number of nodes bypassed goes to *narrowed.
Status narrow_attention_mask(ir::Model& model, int* narrowed = nullptr);
// Fuses each maximal group of two or more ONNX elementwise nodes (Add Sub Mul Div Neg Abs Exp Log Sqrt Tanh
// Sigmoid Relu Erf Pow, Max and Min of two inputs) into one kiln.Pointwise with a `program`, named "a + b":
// every value made inside the group is read only inside it and is no graph output; every value it reads and
// makes is float of one dtype with a static shape of rank <= 6; scalar float constants become literals.
// Default opset 8 or more (numpy broadcasting). Run after infer_shapes. Not yet in optimize_graph (the CUDA
// layer is to come). The number of fused nodes goes to *fused.
Status fuse_pointwise(ir::Model& model, int* fused = nullptr);

}  // namespace kiln::passes
