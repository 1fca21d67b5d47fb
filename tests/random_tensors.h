// Random test inputs, one definition for every test file. Each helper takes the generator as an argument:
// a file keeps its own std::mt19937 and seed, so its inputs are the same from run to run (a fixed seed) or
// printed for a replay (random_seed), and the draw order is part of each helper's contract: one draw per
// element, in element order, as documented below, so that a file's inputs do not change when it switches
// helpers.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>

#include "core/cast.h"
#include "kiln/tensor.h"

namespace kiln::testing {

// A seed from std::random_device, or from KILN_TEST_SEED where it is set (to replay a failure), printed as
// "<what>: random seed N" so that a failing run says how to reproduce it.
inline unsigned random_seed(const char* what) {
  const char* env = std::getenv("KILN_TEST_SEED");
  const unsigned seed = env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : std::random_device{}();
  std::printf("%s: random seed %u\n", what, seed);
  return seed;
}

// float32 `t` rounded to `dtype` (a float type); the cast cannot fail for those, but a wrong dtype fails the test.
inline Tensor round_to(const Tensor& t, DType dtype) {
  if (dtype == DType::kFloat32) return t;
  auto r = cast_tensor(t, dtype);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : t;
}

// Uniform in [lo, hi], drawn in float32 (one draw per element), rounded to `dtype`. A draw of exactly zero
// becomes 0.375, so that no element is zero (divisors, logs and signs stay defined).
inline Tensor random_tensor(std::mt19937& gen, DType dtype, const Shape& shape, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = dist(gen);
    t.data<float>()[i] = v == 0.0f ? 0.375f : v;
  }
  return round_to(t, dtype);
}

// Magnitude uniform in [lo, hi] (0 < lo: every element at least lo from zero) with a random sign: per
// element a fair coin for the sign, then the magnitude. Rounded to `dtype`.
inline Tensor random_signed_tensor(std::mt19937& gen, DType dtype, const Shape& shape, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::bernoulli_distribution coin(0.5);
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = coin(gen) ? -dist(gen) : dist(gen);
  return round_to(t, dtype);
}

// An additive attention mask as torch exports it, in `dtype`: 0 where attended, -inf where not (each element
// with probability p_masked, one draw per element), and its first row (the first shape.back() elements,
// which draw nothing) entirely -inf, so that a softmax over it gives NaN.
inline Tensor random_mask(std::mt19937& gen, DType dtype, const Shape& shape, double p_masked = 0.3) {
  std::bernoulli_distribution masked(p_masked);
  const float inf = std::numeric_limits<float>::infinity();
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = i < shape.back() || masked(gen) ? -inf : 0.0f;
  return round_to(t, dtype);
}

}  // namespace kiln::testing
