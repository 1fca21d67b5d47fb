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

namespace random_detail {
// `t` cast to `dtype` (float32 rounded to a float type, int64 narrowed to an integer type); a dtype the cast
// does not take fails the test.
inline Tensor cast_to(const Tensor& t, DType dtype) {
  if (dtype == t.dtype()) return t;
  auto r = cast_tensor(t, dtype);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : t;
}
}  // namespace random_detail

// Uniform in [lo, hi], drawn in float32 (one draw per element), rounded to `dtype`. A draw of exactly zero
// becomes 0.375, so that no element is zero (divisors, logs and signs stay defined).
inline Tensor random_tensor(std::mt19937& gen, DType dtype, const Shape& shape, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = dist(gen);
    t.data<float>()[i] = v == 0.0f ? 0.375f : v;
  }
  return random_detail::cast_to(t, dtype);
}

// Magnitude uniform in [lo, hi] (0 < lo: every element at least lo from zero) with a random sign: per
// element a fair coin for the sign, then the magnitude. Rounded to `dtype`.
inline Tensor random_signed_tensor(std::mt19937& gen, DType dtype, const Shape& shape, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::bernoulli_distribution coin(0.5);
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = coin(gen) ? -dist(gen) : dist(gen);
  return random_detail::cast_to(t, dtype);
}

// An additive attention mask as torch exports it, in `dtype`: 0 where attended, -inf where not (each element
// with probability p_masked, one draw per element), and its first `full_rows` rows (of shape.back()
// elements each; they draw nothing) entirely -inf, so that a softmax along them gives NaN.
inline Tensor random_mask(std::mt19937& gen, DType dtype, const Shape& shape, double p_masked = 0.3,
                          int64_t full_rows = 1) {
  std::bernoulli_distribution masked(p_masked);
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t row = shape.empty() ? 1 : shape.back();
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = i < full_rows * row || masked(gen) ? -inf : 0.0f;
  return random_detail::cast_to(t, dtype);
}

// Each element true with probability p_true, one draw per element.
inline Tensor random_bool(std::mt19937& gen, const Shape& shape, double p_true = 0.5) {
  std::bernoulli_distribution coin(p_true);
  Tensor t(DType::kBool, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<bool>()[i] = coin(gen);
  return t;
}

// Integers uniform in [lo, hi], one draw per element, in an integer `dtype` (int8 to int64).
inline Tensor random_int(std::mt19937& gen, DType dtype, const Shape& shape, int64_t lo, int64_t hi) {
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  Tensor t(DType::kInt64, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int64_t>()[i] = dist(gen);
  return random_detail::cast_to(t, dtype);
}

}  // namespace kiln::testing
