// Plan: everything an engine needs at run time, as the builder produced it. It is what a .kiln file holds
// (docs/engine-format.md) and what runtime::Engine executes.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/engine.h"
#include "kiln/status.h"

namespace kiln::engine {

// Engine file format version; bump on any incompatible change of the layout or the sections.
// 2: optimization profiles (build.profiles in META). 3: GPU engines with profiles (profile_plans, a graph
// that keeps dynamic dims) and shape-tensor values in profiles, which a format 2 reader would misread.
constexpr uint32_t kFormatVersion = 3;

// An optimization profile: input name -> its min/opt/max shapes.
using Profile = std::map<std::string, ProfileShapes>;

struct BuildSettings {
  std::string device = "cpu";                    // what the engine targets: "cpu" or "cuda" ("auto" is resolved)
  std::map<std::string, Shape> input_shapes;     // --shapes given at build time (fixed input shapes)
  int opt_level = 3;
  bool tf32 = true;   // float32 GEMMs and convolutions may use TF32 tensor cores (as in TensorRT)
  bool fp16 = false;  // the builder may run layers in float16 where a tactic exists
  bool bf16 = false;  // ... or in bfloat16
  std::map<std::string, std::string> layer_precisions;  // node name -> "fp32", "fp16" or "bf16": always honored
  std::vector<Profile> profiles;  // optimization profiles (none: dynamic inputs take any shape)
  // Build-only (not stored in the engine):
  bool strict_gpu = false;    // a layer falling back to the CPU is an error
  std::string timing_cache;   // file of tactic timings to read and update
};

// How one layer (node of the optimized graph) runs.
struct LayerInfo {
  std::string name;     // node name; fused layers list their parts: "conv1 + bn1 + relu1"
  std::string op_type;
  std::string backend;  // which backend runs it: "cpu" or "cuda"
  std::string tactic;   // the kernel chosen for it
  std::string precision;        // "fp32", "tf32", "fp16", "bf16" (of its float math); empty where none applies
  std::string fallback_reason;  // on the CPU in a GPU engine: why the GPU does not run it
  double time_ms = -1;          // the chosen tactic's time when it was timed at build, else -1
};

// What a GPU engine with optimization profiles chose for one profile: the tactic of each layer it timed at
// the profile's opt shapes (a layer not listed runs LayerInfo::tactic), checked valid at min and max, and
// the device memory its activations need at the max shapes.
struct ProfilePlan {
  std::map<std::string, std::string> tactics;  // node name -> tactic
  size_t max_activation_bytes = 0;             // 0: not measured
};

struct Plan {
  std::string kiln_version;       // the Kiln that built it
  std::string target_backend = "cpu";
  std::string target_device;      // e.g. "x86_64 CPU"
  BuildSettings settings;
  ir::Model model;                // the optimized graph; its initializers are the weights
  std::vector<LayerInfo> layers;  // one per node of model.graph, in order
  // GPU engines with optimization profiles: one per settings.profiles entry (empty otherwise). The graph
  // keeps the model's dynamic dims; a context specializes it to its input shapes at run time.
  std::vector<ProfilePlan> profile_plans;
};

// Serialized .kiln bytes (engine_file.cc; the layout is docs/engine-format.md).
Result<std::string> serialize_plan(const Plan& plan);
// Refuses truncated, corrupted, foreign and newer-version data with a message that says which.
Result<Plan> deserialize_plan(const std::string& bytes);

}  // namespace kiln::engine
