// The optimization passes of a build, in their order (moved out of build_plan.cc so that the graph of a GPU
// engine can be made without a GPU: the golden dumps of tests/golden/ are made this way).
#include "builder/optimize_graph.h"

#include "passes/graph_uses.h"
#include "passes/passes.h"

namespace kiln::builder {

std::string layer_pin(const ir::Node& n, const std::map<std::string, std::string>& layer_precisions) {
  for (const auto& part : passes::name_parts(n.name))
    if (auto it = layer_precisions.find(part); it != layer_precisions.end()) return it->second;
  return "";
}

Status optimize_graph(ir::Model& m, const OptimizeOptions& o, Logger& logger, std::set<std::string>* lowered_out) {
  KILN_RETURN_IF_ERROR(passes::apply_input_shapes(m, o.input_shapes));
  if (o.opt_level > 0) {
    int folded = 0, targets = 0, merged = 0, noops = 0, bns = 0, removed = 0;
    KILN_RETURN_IF_ERROR(passes::fold_constants_to_fixpoint(m, &folded));
    // Dynamic dims: the shape computations left unfolded feed Reshapes that constant targets can serve.
    KILN_RETURN_IF_ERROR(passes::resolve_shape_targets(m, &targets));
    std::set<std::string> pinned;  // pinned layers keep their identity (their pin is honored)
    for (const auto& [name, p] : o.layer_precisions) pinned.insert(name);
    KILN_RETURN_IF_ERROR(passes::eliminate_common_subexpressions(m, &merged, pinned));  // folded constants compare too
    KILN_RETURN_IF_ERROR(passes::remove_noops(m, &noops));
    KILN_RETURN_IF_ERROR(passes::fold_batch_norm(m, &bns));  // statistics folded to constants by now
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    logger.log(Severity::kInfo, "optimizer: folded " + std::to_string(folded) + " constant nodes, made " +
                                    std::to_string(targets) + " Reshape targets constant, merged " +
                                    std::to_string(merged) + " common subexpressions, bypassed " +
                                    std::to_string(noops) + " no-ops, folded " + std::to_string(bns) +
                                    " BatchNormalization into convs, removed " + std::to_string(removed) +
                                    " dead nodes");
  }
  KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
  if (o.opt_level > 0) {
    // Once shapes are fixed, constant folding can leave a Gather that copies its data in order (the padding
    // mask of a dynamically exported BERT): a view.
    int views = 0;
    KILN_RETURN_IF_ERROR(passes::identity_gather_to_reshape(m, &views));
    if (views > 0) {
      int removed = 0;
      KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // the folded indices
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(views) + " identity Gathers made Reshapes");
    }
  }
  // One LayerNormalization instead of eight ops pays on every target, the CPU reference included.
  if (o.opt_level >= 2) {
    int layer_norms = 0;
    KILN_RETURN_IF_ERROR(passes::recognize_layer_norm(m, &layer_norms));
    if (layer_norms > 0) {
      int removed = 0;
      KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // the epsilon constants
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(layer_norms) + " LayerNorm recognized");
    }
  }
  // Fusions into the optimizer's kiln.* ops, for GPU engines: each saves a kernel launch and a round trip of
  // the intermediate through memory there (the CPU reference gains nothing from them).
  if (o.for_gpu && o.opt_level >= 2) {
    int gelus = 0, matmuls = 0, convs = 0, activations = 0, softmaxes = 0, attentions = 0, packed = 0, removed = 0;
    KILN_RETURN_IF_ERROR(passes::recognize_gelu(m, &gelus));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    KILN_RETURN_IF_ERROR(passes::sink_gemm_reshapes(m));  // GPT-2's Gemm -> Reshape -> GELU / residual Add
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    KILN_RETURN_IF_ERROR(passes::fuse_matmul_bias(m, &matmuls));  // after recognize_gelu: absorbs a tanh GELU
    KILN_RETURN_IF_ERROR(passes::fuse_conv_activation(m, &convs));
    // After the conv fusion, which absorbs a SiLU as Sigmoid + Mul: the SiLUs left become one kiln.Swish.
    KILN_RETURN_IF_ERROR(passes::recognize_activations(m, &activations));
    KILN_RETURN_IF_ERROR(passes::fuse_masked_softmax(m, &softmaxes));
    KILN_RETURN_IF_ERROR(passes::fuse_attention(m, &attentions));  // after fuse_masked_softmax: absorbs its node
    KILN_RETURN_IF_ERROR(passes::narrow_attention_mask(m));  // the [B,1,S,S] padding mask of BERT to [B,1,1,S]
    KILN_RETURN_IF_ERROR(passes::pack_qkv_projections(m, &packed));  // one GEMM for the attention's Q, K and V
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    logger.log(Severity::kInfo, "optimizer: " + std::to_string(gelus) + " GELU recognized, " +
                                    std::to_string(matmuls) + " MatMul + bias and " + std::to_string(convs) +
                                    " Conv + activation fused, " + std::to_string(activations) +
                                    " SiLU / HardSwish recognized, " + std::to_string(softmaxes) +
                                    " masked softmax, " + std::to_string(attentions) + " attention (" +
                                    std::to_string(packed) + " with Q, K and V packed into one GEMM)");
  }
  auto layer_named = [&](const std::string& name) -> const ir::Node* {
    if (const ir::Node* n = m.graph.node_named(name)) return n;
    for (const auto& n : m.graph.nodes)
      for (const auto& part : passes::name_parts(n.name))
        if (part == name) return &n;
    return nullptr;
  };
  for (const auto& [name, p] : o.layer_precisions)
    if (layer_named(name) == nullptr)
      return InvalidArgument("--layer-precision: no layer named '" + name + "' in the optimized graph");

  // Lower precision first (it changes the types the backends are asked about): the nodes the GPU runs,
  // whose layers take half types, unless pinned to fp32; nodes pinned to fp16/bf16 always.
  std::set<std::string> lowered;
  // A node a fusion made (made_from: its name -> the name of the node it replaced) keeps that node's lowered
  // precision.
  auto inherit_precision = [&](const std::map<std::string, std::string>& made_from) {
    for (const auto& [made, from] : made_from)
      if (lowered.count(from)) lowered.insert(made);
  };
  auto pin_of = [&](const ir::Node& n) { return layer_pin(n, o.layer_precisions); };
  for (const DType low : {DType::kFloat16, DType::kBFloat16}) {
    const std::string tag = low == DType::kFloat16 ? "fp16" : "bf16";
    const bool global = o.precision == (low == DType::kFloat16 ? Precision::kFloat16 : Precision::kBFloat16);
    bool any_pin = false;
    for (const auto& [name, p] : o.layer_precisions) any_pin = any_pin || p == tag;
    if (!global && !any_pin) continue;
    if (!o.for_gpu) {
      if (any_pin) return Unsupported("--layer-precision " + tag + ": the CPU target computes in the model's types");
      logger.log(Severity::kWarning, "--" + tag + ": the engine targets the CPU, which keeps the model's float32");
      continue;
    }
    std::set<std::string> pinned_here;
    auto lower = [&](const ir::Node& n) {
      const std::string pin = pin_of(n);
      if (pin == "fp32" || (pin.empty() && !global) || (!pin.empty() && pin != tag)) return false;
      if (!o.can_run_in_half || !o.can_run_in_half(m, n)) return false;
      if (pin == tag) pinned_here.insert(n.name);
      return true;
    };
    KILN_RETURN_IF_ERROR(passes::lower_precision(m, low, lower, &lowered));
    for (const auto& [name, p] : o.layer_precisions)
      if (p == tag && !lowered.count(layer_named(name)->name))
        return Unsupported("--layer-precision " + name + ":" + tag + " cannot be honored: the GPU has no " + tag +
                           " kernel for that layer");
  }
  if (!lowered.empty()) {
    int removed = 0;
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // float32 weights now unused
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
  }
  // The exact GELU into half-precision GEMM epilogues: only once the precisions are known (the epilogue's
  // tanh form is within half precision, not float32's).
  if (o.for_gpu && o.opt_level >= 2 && !lowered.empty()) {
    int gelus = 0;
    KILN_RETURN_IF_ERROR(passes::fuse_matmul_gelu(m, &gelus));
    if (gelus > 0) {
      // The fused layer ("<GEMM's layer> + <the GELU's nodes>") inherits its GEMM's lowered precision. The GEMM's
      // layer may itself be a fusion ("MatMul + Add") and the GELU a decomposed one ("Div + Erf + ..."): any
      // leading run of the name's parts may be the lowered GEMM.
      for (const auto& n : m.graph.nodes)
        for (size_t at = n.name.find(" + "); at != std::string::npos; at = n.name.find(" + ", at + 3))
          if (lowered.count(n.name.substr(0, at))) {
            lowered.insert(n.name);
            break;
          }
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(gelus) + " GELU fused into half-precision GEMMs");
    }
  }
  // Channels-last convolutions where cuDNN's tensor-core kernels want them (half types, channels multiples of
  // 8), decided once the precisions are: the transposes between consecutive convs cancel.
  if (o.for_gpu && o.opt_level >= 2) {
    int converted = 0, removed = 0;
    auto eligible = [&](const ir::Node& n) {
      const std::string pin = pin_of(n);
      return passes::conv_suits_channels_last(m.graph, n) && (pin.empty() || lowered.count(n.name));
    };
    KILN_RETURN_IF_ERROR(passes::convert_conv_layout(m, eligible, &converted));
    KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
    KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
    if (converted > 0)
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(converted) + " convolutions made channels-last");
    // The Cast, Transpose and channel Pad left before a channels-last stem become one kernel (kiln.Relayout).
    int relayouts = 0;
    KILN_RETURN_IF_ERROR(passes::fuse_relayout(m, &relayouts));
    if (relayouts > 0) {
      KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // the Pads' pads
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(relayouts) + " Cast/Transpose/Pad chains fused into kiln.Relayout");
    }
    // A stem's max pool into the stem kernel's epilogue, once both are channels-last: "conv + pool" keeps the
    // conv's precision (looked up by the conv's whole name: it is itself fused, "conv + relu").
    int pools = 0;
    std::map<std::string, std::string> pooled_from;
    KILN_RETURN_IF_ERROR(passes::fuse_conv_pool(m, &pools, &pooled_from));
    if (pools > 0) {
      inherit_precision(pooled_from);
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(pools) + " max pools fused into their stem conv");
    }
    // A projection shortcut into its block's last conv, once both are channels-last: the new conv, Concat and
    // Slice keep the precision of the conv they replace.
    int shortcuts = 0;
    std::map<std::string, std::string> made_from;
    KILN_RETURN_IF_ERROR(passes::fold_projection_shortcut(m, &shortcuts, &made_from));
    if (shortcuts > 0) {
      inherit_precision(made_from);
      KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // the old weights and biases
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(shortcuts) + " projection shortcuts folded into their block's last conv");
    }
    // A block's last 1x1 conv and the next block's first into one kernel, once both are channels-last and
    // the shortcuts folded (a folded conv may be a pair's P): the pair keeps P's precision.
    int pairs = 0;
    std::map<std::string, std::string> pair_of;
    KILN_RETURN_IF_ERROR(passes::fuse_conv_pair(m, &pairs, &pair_of));
    if (pairs > 0) {
      inherit_precision(pair_of);
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(pairs) + " 1x1 conv pairs fused into kiln.FusedConvPair");
    }
    // A pair's first output read only by a strided 1x1 conv (ResNet's downsample) is written sampled.
    int sampled = 0;
    KILN_RETURN_IF_ERROR(passes::sample_pair_output(m, &sampled));
    if (sampled > 0) {
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(sampled) + " conv pair outputs written at their reader's stride");
      // The downsample, now of stride 1, may fold into its block's last conv (ResNet-50's layer2.0: the
      // Concat and the folded conv take 0.254 ms at batch 256 where the two convs took 0.287).
      int more = 0;
      made_from.clear();
      KILN_RETURN_IF_ERROR(passes::fold_projection_shortcut(m, &more, &made_from));
      if (more > 0) {
        inherit_precision(made_from);
        KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));
        KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
        logger.log(Severity::kInfo, "optimizer: " + std::to_string(more) + " sampled projection shortcuts folded");
      }
      // Their Concat, one of whose inputs is the sampled pair output, is written in place.
      int in_place = 0;
      KILN_RETURN_IF_ERROR(passes::write_concat_in_place(m, &in_place));
      if (in_place > 0) {
        KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
        logger.log(Severity::kInfo, "optimizer: " + std::to_string(in_place) + " channel Concats written in place");
      }
    }
    // The Transposes convert_conv_layout left that move only dims of size 1 (after a global pool) are views.
    int views = 0;
    KILN_RETURN_IF_ERROR(passes::transpose_to_reshape(m, &views));
    if (views > 0) {
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(views) + " Transposes of size-1 dims made Reshapes");
    }
  }
  // Pointwise fusion last, for GPU engines: what is left of the elementwise ops once the fusions above
  // claimed theirs (epilogues of Conv and MatMul, GELU, SiLU, LayerNorm, softmax, attention: each is one
  // library call or tuned kernel, better than a generated one) becomes kiln.Pointwise, one generated kernel
  // a group. After lower_precision, because it fuses only ops of one dtype: the precisions are settled (a
  // group never straddles a --layer-precision pin, and its kernel is compiled for its final types), and the
  // Casts lowering inserted bound the groups. After convert_conv_layout, whose transposes it leaves alone.
  // The CPU target gains nothing: its reference would run the same arithmetic, one op at a time or not.
  if (o.for_gpu && o.opt_level >= 2) {
    int fused = 0;
    KILN_RETURN_IF_ERROR(passes::fuse_pointwise(m, &fused));
    // A group is in one dtype: lowered where its parts were (the build reports the layer's precision).
    for (const ir::Node& n : m.graph.nodes)
      if (n.domain == "kiln" && n.op_type == "Pointwise" && lowered.count(passes::name_parts(n.name).front()))
        lowered.insert(n.name);
    if (fused > 0) {
      int removed = 0;
      KILN_RETURN_IF_ERROR(passes::eliminate_dead_nodes(m, &removed));  // constants that became literals
      KILN_RETURN_IF_ERROR(passes::infer_shapes(m));
      logger.log(Severity::kInfo, "optimizer: " + std::to_string(fused) + " groups of elementwise ops fused into kiln.Pointwise");
    }
  }
  if (lowered_out != nullptr) *lowered_out = std::move(lowered);
  return OkStatus();
}

}  // namespace kiln::builder
