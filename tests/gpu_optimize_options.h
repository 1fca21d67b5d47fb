// The OptimizeOptions that `kiln build --fp16` gives optimize_graph for a GPU engine at opt level 3
// (build_plan.cc), for the tests that run the whole optimizer as a GPU build would; the CUDA layer table
// (which needs no device) says which nodes run in half types.
#pragma once
#ifdef KILN_HAVE_CUDA

#include "backends/cuda/cuda_backend.h"
#include "builder/optimize_graph.h"

namespace kiln::testing {

inline builder::OptimizeOptions gpu_fp16_options() {
  builder::OptimizeOptions o;
  o.for_gpu = true;
  o.opt_level = 3;
  o.precision = builder::Precision::kFloat16;
  o.can_run_in_half = backends::cuda_runs_in_half;
  return o;
}

}  // namespace kiln::testing

#endif  // KILN_HAVE_CUDA
