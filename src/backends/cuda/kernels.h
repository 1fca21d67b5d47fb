// The CUDA kernels' C++ API: device pointers, shapes and a stream in, a Status out. Launches are
// asynchronous on `stream`; a Status that is not ok names the kernel and the CUDA error of its launch.
// float16 and bfloat16 are computed in float32 and rounded once, to nearest even, on the way out.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kiln/dtype.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln::cuda {

// Elementwise ops of one input (elementwise.cu). Attributes travel in UnaryParams.
enum class UnaryOp {
  kAbs, kNeg, kExp, kLog, kSqrt, kReciprocal, kSin, kCos, kTanh, kErf, kFloor, kCeil,
  kRelu,
  kLeakyRelu,    // alpha
  kElu,          // alpha
  kSigmoid,
  kHardSigmoid,  // alpha, beta
  kHardSwish,
  kGeluErf,
  kGeluTanh,
  kSwish,        // alpha (Silu is Swish with alpha 1)
  kSoftplus,
  kClip,         // lo, hi (min > max gives max everywhere, as ONNX says)
};
struct UnaryParams {
  float alpha = 0;
  float beta = 0;
  float lo = 0;
  float hi = 0;
};
// Maps an ONNX op type to its UnaryOp; false when it is not one.
bool unary_op_from_name(const char* op_type, UnaryOp* op);
const char* unary_op_name(UnaryOp op);
bool unary_supports(DType dtype);  // float32, float16, bfloat16
Status launch_unary(UnaryOp op, DType dtype, const void* x, void* y, int64_t n, const UnaryParams& params,
                    cudaStream_t stream);

// Elementwise ops of two inputs with numpy broadcasting; out_shape is the broadcast of a_shape and b_shape.
enum class BinaryOp { kAdd, kSub, kMul, kDiv, kPow, kMax, kMin };
bool binary_op_from_name(const char* op_type, BinaryOp* op);
const char* binary_op_name(BinaryOp op);
bool binary_supports(DType dtype);  // float32, float16, bfloat16
Status launch_binary(BinaryOp op, DType dtype, const void* a, const Shape& a_shape, const void* b,
                     const Shape& b_shape, void* y, const Shape& out_shape, cudaStream_t stream);

// Where(cond, x, y) with broadcasting of all three; cond is bool (one byte per element).
Status launch_where(DType dtype, const void* cond, const Shape& cond_shape, const void* x, const Shape& x_shape,
                    const void* y, const Shape& y_shape, void* out, const Shape& out_shape, cudaStream_t stream);

// Cast between float32, float16, bfloat16, int32, int64 and bool (float -> int truncates toward zero; to bool
// is "not zero").
bool cast_supports(DType from, DType to);
Status launch_cast(DType from, const void* x, DType to, void* y, int64_t n, cudaStream_t stream);

// Fills n elements of a float32 / float16 / bfloat16 buffer with values uniform in [lo, hi), the same for the
// same seed (random_fill.cu; the tactic timer's inputs).
Status launch_fill_uniform(DType dtype, void* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);

// The numpy broadcast of shapes; false when they do not broadcast.
bool broadcast_shape(const Shape& a, const Shape& b, Shape* out);

}  // namespace kiln::cuda
