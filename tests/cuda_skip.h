// KILN_SKIP_WITHOUT_GPU(): skips a test that needs a CUDA device, saying why: there is none here, or this Kiln
// was built without the CUDA backend. Usable in every build (it names no CUDA type).
#pragma once

#include <gtest/gtest.h>

#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"

#define KILN_SKIP_WITHOUT_GPU()                                                        \
  do {                                                                                 \
    if (!::kiln::backends::cuda_device_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)
#else
#define KILN_SKIP_WITHOUT_GPU() GTEST_SKIP() << "built without the CUDA backend"
#endif
