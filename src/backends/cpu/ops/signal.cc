// CPU reference kernels: signal processing (DFT, STFT, window functions, MelWeightMatrix).
//
// Complex tensors are real tensors whose last dimension is 2 (real, imaginary); a real signal has a last
// dimension of 1. Transforms are computed in double.
#include <cmath>
#include <complex>
#include <numbers>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {
namespace {

using cd = std::complex<double>;

// Largest transform / window / matrix we accept: keeps a bad scalar input from allocating without bound.
constexpr int64_t kMaxSignalLength = int64_t{1} << 24;

// e^{sign * 2*pi*i * k*t / n}, with k*t reduced mod n first so the angle stays accurate.
cd twiddle(int64_t k, int64_t t, int64_t n, double sign) {
  const int64_t m = (k % n) * (t % n) % n;
  const double angle = sign * 2.0 * std::numbers::pi * static_cast<double>(m) / static_cast<double>(n);
  return {std::cos(angle), std::sin(angle)};
}

// Transforms `a` in place: out[k] = sum_t a[t] e^{sign 2 pi i k t / n} (no 1/n scaling).
// Small sizes use the direct sum; powers of two use radix-2; other sizes use Bluestein's chirp-z algorithm
// on top of radix-2, so that every length runs in O(n log n) and a long signal cannot hang the kernel.
void fft_pow2(std::vector<cd>& a, double sign) {
  const size_t n = a.size();
  for (size_t i = 1, j = 0; i < n; ++i) {
    size_t bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) std::swap(a[i], a[j]);
  }
  for (size_t len = 2; len <= n; len <<= 1) {
    for (size_t i = 0; i < n; i += len) {
      for (size_t k = 0; k < len / 2; ++k) {
        const cd w = twiddle(static_cast<int64_t>(k), 1, static_cast<int64_t>(len), sign);
        const cd u = a[i + k], v = a[i + k + len / 2] * w;
        a[i + k] = u + v;
        a[i + k + len / 2] = u - v;
      }
    }
  }
}

void transform(std::vector<cd>& a, double sign) {
  const int64_t n = static_cast<int64_t>(a.size());
  if (n <= 64) {
    std::vector<cd> out(n);
    for (int64_t k = 0; k < n; ++k) {
      cd acc(0, 0);
      for (int64_t t = 0; t < n; ++t) acc += a[t] * twiddle(k, t, n, sign);
      out[k] = acc;
    }
    a = std::move(out);
    return;
  }
  if ((n & (n - 1)) == 0) {
    fft_pow2(a, sign);
    return;
  }
  // Bluestein: k t = (k^2 + t^2 - (k - t)^2) / 2 turns the DFT into a convolution with a chirp.
  int64_t m = 1;
  while (m < 2 * n - 1) m <<= 1;
  std::vector<cd> chirp(n);
  for (int64_t k = 0; k < n; ++k) {
    // e^{sign pi i k^2 / n}, with k^2 reduced mod 2n to keep the angle accurate.
    const int64_t k2 = (k * k) % (2 * n);
    const double angle = sign * std::numbers::pi * static_cast<double>(k2) / static_cast<double>(n);
    chirp[k] = {std::cos(angle), std::sin(angle)};
  }
  std::vector<cd> x(m, cd(0, 0)), y(m, cd(0, 0));
  for (int64_t k = 0; k < n; ++k) x[k] = a[k] * chirp[k];
  y[0] = std::conj(chirp[0]);
  for (int64_t k = 1; k < n; ++k) y[k] = y[m - k] = std::conj(chirp[k]);
  fft_pow2(x, -1.0);
  fft_pow2(y, -1.0);
  for (int64_t i = 0; i < m; ++i) x[i] *= y[i];
  fft_pow2(x, 1.0);
  for (int64_t k = 0; k < n; ++k) a[k] = x[k] / static_cast<double>(m) * chirp[k];
}

Result<int64_t> scalar_int_input(const KernelContext& ctx, size_t i, const char* name) {
  const Tensor& t = ctx.input(i);
  if (t.numel() != 1 || !dtype_is_integer(t.dtype())) {
    return ctx.error(std::string(name) + " must be an integer scalar, got " + t.description());
  }
  return t.scalar_as_int(0);
}

// Converts a double result back to the dtype of the signal input.
Result<Tensor> to_dtype(const Tensor& t, DType dtype) { return cast_tensor(t, dtype); }

Status dft_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("DFT needs input");
  const Tensor& x = ctx.input(0);
  if (!dtype_is_float(x.dtype())) return ctx.error("input must be a float tensor, got " + x.description());
  const int64_t rank = x.rank();
  if (rank < 2) return ctx.error("input must have rank >= 2 (last dimension 1 or 2), got " + x.description());
  const int64_t channels = x.dim(-1);
  if (channels != 1 && channels != 2) {
    return ctx.error("last dimension of input must be 1 (real) or 2 (complex), got " + shape_to_string(x.shape()));
  }
  int64_t axis = 0;
  if (ctx.opset() >= 20) {
    axis = -2;
    if (ctx.has_input(2)) {
      KILN_ASSIGN_OR_RETURN(axis, scalar_int_input(ctx, 2, "axis"));
    }
  } else {
    axis = ctx.attr_int("axis", 1);
  }
  if (axis < -rank || axis >= rank) {
    return ctx.error("axis " + std::to_string(axis) + " out of range for input of rank " + std::to_string(rank));
  }
  if (axis < 0) axis += rank;
  if (axis == rank - 1) return ctx.error("axis must not be the last (real/imaginary) dimension");
  const bool inverse = ctx.attr_int("inverse", 0) != 0;
  const bool onesided = ctx.attr_int("onesided", 0) != 0;
  const int64_t in_len = x.dim(axis);
  int64_t n = (inverse && onesided) ? 2 * (in_len - 1) : in_len;
  if (ctx.has_input(1)) {
    KILN_ASSIGN_OR_RETURN(n, scalar_int_input(ctx, 1, "dft_length"));
  }
  if (n < 1 || n > kMaxSignalLength) return ctx.error("dft_length must be in [1, 2^24], got " + std::to_string(n));
  if (onesided && !inverse && channels == 2) {
    return ctx.error("onesided forward DFT needs a real input (last dimension 1)");
  }

  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < rank - 1; ++d) inner *= x.dim(d);
  KILN_ASSIGN_OR_RETURN(Tensor xd, cast_tensor(x, DType::kFloat64));
  const double* in = xd.data<double>();

  // Output: the axis has n entries (n/2+1 for a onesided forward transform); the last dim is 2, or 1 for
  // the inverse of a onesided (real) signal.
  const bool real_out = inverse && onesided;
  const int64_t out_len = (onesided && !inverse) ? n / 2 + 1 : n;
  const int64_t out_ch = real_out ? 1 : 2;
  Shape out_shape = x.shape();
  out_shape[axis] = out_len;
  out_shape[rank - 1] = out_ch;
  Tensor y(DType::kFloat64, out_shape);
  double* out = y.data<double>();

  std::vector<cd> sig(n);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      // Gather the signal along the axis, zero-padded or truncated to n.
      std::fill(sig.begin(), sig.end(), cd(0, 0));
      auto at = [&](int64_t k) {
        const int64_t base = ((o * in_len + k) * inner + i) * channels;
        return cd(in[base], channels == 2 ? in[base + 1] : 0.0);
      };
      if (real_out) {
        // Hermitian extension of the one-sided spectrum: X[n-k] = conj(X[k]).
        const int64_t m = std::min(in_len, n / 2 + 1);
        for (int64_t k = 0; k < m; ++k) sig[k] = at(k);
        for (int64_t k = n / 2 + 1; k < n; ++k) {
          if (n - k < m) sig[k] = std::conj(sig[n - k]);
        }
      } else {
        for (int64_t k = 0; k < std::min(in_len, n); ++k) sig[k] = at(k);
      }
      std::vector<cd> spec = sig;
      transform(spec, inverse ? 1.0 : -1.0);
      for (int64_t f = 0; f < out_len; ++f) {
        cd acc = spec[f];
        if (inverse) acc /= static_cast<double>(n);
        const int64_t base = ((o * out_len + f) * inner + i) * out_ch;
        out[base] = acc.real();
        if (!real_out) out[base + 1] = acc.imag();
      }
    }
  }
  KILN_ASSIGN_OR_RETURN(Tensor result, to_dtype(y, x.dtype()));
  ctx.set_output(0, result);
  return OkStatus();
}

Status stft_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("STFT needs signal and frame_step");
  const Tensor& x = ctx.input(0);
  if (!dtype_is_float(x.dtype())) return ctx.error("signal must be a float tensor, got " + x.description());
  if (x.rank() != 3 || (x.dim(2) != 1 && x.dim(2) != 2)) {
    return ctx.error("signal must have shape [batch, length, 1 or 2], got " + shape_to_string(x.shape()));
  }
  const int64_t batch = x.dim(0), length = x.dim(1), channels = x.dim(2);
  KILN_ASSIGN_OR_RETURN(int64_t step, scalar_int_input(ctx, 1, "frame_step"));
  if (step < 1) return ctx.error("frame_step must be >= 1, got " + std::to_string(step));
  std::vector<double> window;
  int64_t frame_length = -1;
  if (ctx.has_input(2)) {
    const Tensor& w = ctx.input(2);
    if (w.rank() != 1) return ctx.error("window must be 1-D, got " + w.description());
    KILN_ASSIGN_OR_RETURN(Tensor wd, cast_tensor(w, DType::kFloat64));
    window.assign(wd.data<double>(), wd.data<double>() + wd.numel());
    frame_length = w.dim(0);
  }
  if (ctx.has_input(3)) {
    KILN_ASSIGN_OR_RETURN(int64_t fl, scalar_int_input(ctx, 3, "frame_length"));
    if (frame_length >= 0 && fl != frame_length) {
      return ctx.error("frame_length " + std::to_string(fl) + " differs from window length " +
                       std::to_string(frame_length));
    }
    frame_length = fl;
  }
  if (frame_length < 0) frame_length = length;
  if (frame_length < 1 || frame_length > length) {
    return ctx.error("frame_length " + std::to_string(frame_length) + " must be in [1, signal length " +
                     std::to_string(length) + "]");
  }
  if (window.empty()) window.assign(frame_length, 1.0);
  const bool onesided = ctx.attr_int("onesided", 1) != 0;
  if (onesided && channels == 2) return ctx.error("onesided STFT needs a real signal (last dimension 1)");
  const int64_t frames = 1 + (length - frame_length) / step;
  const int64_t bins = onesided ? frame_length / 2 + 1 : frame_length;
  KILN_ASSIGN_OR_RETURN(Tensor xd, cast_tensor(x, DType::kFloat64));
  const double* in = xd.data<double>();
  Tensor y(DType::kFloat64, {batch, frames, bins, 2});
  double* out = y.data<double>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t f = 0; f < frames; ++f) {
      std::vector<cd> frame(frame_length);
      for (int64_t t = 0; t < frame_length; ++t) {
        const int64_t base = (b * length + f * step + t) * channels;
        frame[t] = cd(in[base], channels == 2 ? in[base + 1] : 0.0) * window[t];
      }
      transform(frame, -1.0);
      for (int64_t k = 0; k < bins; ++k) {
        const cd acc = frame[k];
        double* o = out + ((b * frames + f) * bins + k) * 2;
        o[0] = acc.real();
        o[1] = acc.imag();
      }
    }
  }
  KILN_ASSIGN_OR_RETURN(Tensor result, to_dtype(y, x.dtype()));
  ctx.set_output(0, result);
  return OkStatus();
}

// Hann, Hamming and Blackman windows: w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N), with N the size
// (periodic) or size - 1 (symmetric).
template <int kKind>
Status window_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("window op needs input size");
  KILN_ASSIGN_OR_RETURN(int64_t size, scalar_int_input(ctx, 0, "size"));
  if (size < 0 || size > kMaxSignalLength) return ctx.error("size must be in [0, 2^24], got " + std::to_string(size));
  const int64_t dt = ctx.attr_int("output_datatype", 1);
  if (!dtype_is_valid(static_cast<int32_t>(dt))) return ctx.error("invalid output_datatype " + std::to_string(dt));
  const bool periodic = ctx.attr_int("periodic", 1) != 0;
  const double denom = static_cast<double>(periodic ? size : size - 1);
  double a0 = 0, a1 = 0, a2 = 0;
  if (kKind == 0) { a0 = 0.5; a1 = 0.5; }                       // Hann
  if (kKind == 1) { a0 = 25.0 / 46.0; a1 = 1.0 - a0; }          // Hamming
  if (kKind == 2) { a0 = 0.42; a1 = 0.5; a2 = 0.08; }           // Blackman
  Tensor w(DType::kFloat64, {size});
  for (int64_t i = 0; i < size; ++i) {
    const double phase = denom == 0 ? 0.0 : 2.0 * std::numbers::pi * static_cast<double>(i) / denom;
    w.data<double>()[i] = a0 - a1 * std::cos(phase) + a2 * std::cos(2.0 * phase);
  }
  KILN_ASSIGN_OR_RETURN(Tensor result, cast_tensor(w, static_cast<DType>(dt)));
  ctx.set_output(0, result);
  return OkStatus();
}

Status mel_weight_matrix_kernel(KernelContext& ctx) {
  for (size_t i = 0; i < 5; ++i) {
    if (!ctx.has_input(i)) return ctx.error("MelWeightMatrix needs 5 inputs");
  }
  KILN_ASSIGN_OR_RETURN(int64_t num_mel_bins, scalar_int_input(ctx, 0, "num_mel_bins"));
  KILN_ASSIGN_OR_RETURN(int64_t dft_length, scalar_int_input(ctx, 1, "dft_length"));
  KILN_ASSIGN_OR_RETURN(int64_t sample_rate, scalar_int_input(ctx, 2, "sample_rate"));
  if (ctx.input(3).numel() != 1 || ctx.input(4).numel() != 1) return ctx.error("edge frequencies must be scalars");
  const double lower = ctx.input(3).scalar_as_double(0);
  const double upper = ctx.input(4).scalar_as_double(0);
  if (num_mel_bins < 1 || dft_length < 1 || sample_rate < 1 || num_mel_bins > 65536 || dft_length > kMaxSignalLength) {
    return ctx.error("num_mel_bins, dft_length and sample_rate must be positive (got " + std::to_string(num_mel_bins) +
                     ", " + std::to_string(dft_length) + ", " + std::to_string(sample_rate) + ")");
  }
  if (!(lower >= 0 && upper > lower && upper <= sample_rate / 2.0 + 1e-6)) {
    return ctx.error("need 0 <= lower_edge_hertz < upper_edge_hertz <= sample_rate / 2, got " + std::to_string(lower) +
                     ", " + std::to_string(upper));
  }
  const int64_t dt = ctx.attr_int("output_datatype", 1);
  if (!dtype_is_valid(static_cast<int32_t>(dt))) return ctx.error("invalid output_datatype " + std::to_string(dt));
  const int64_t spec_bins = dft_length / 2 + 1;
  // Mel-spaced points (num_mel_bins + 2 of them) mapped to spectrogram bins, as ONNX's reference does.
  const double low_mel = 2595.0 * std::log10(1.0 + lower / 700.0);
  const double high_mel = 2595.0 * std::log10(1.0 + upper / 700.0);
  const int64_t points = num_mel_bins + 2;
  const double mel_step = (high_mel - low_mel) / static_cast<double>(points);
  std::vector<int64_t> bin(points);
  for (int64_t i = 0; i < points; ++i) {
    const double mel = static_cast<double>(i) * mel_step + low_mel;
    const double hz = 700.0 * (std::pow(10.0, mel / 2595.0) - 1.0);
    bin[i] = static_cast<int64_t>(std::floor(static_cast<double>(dft_length + 1) * hz / static_cast<double>(sample_rate)));
    bin[i] = std::clamp<int64_t>(bin[i], 0, spec_bins - 1);
  }
  Tensor m(DType::kFloat64, {spec_bins, num_mel_bins});
  double* md = m.data<double>();
  for (int64_t i = 0; i < num_mel_bins; ++i) {
    const int64_t lo = bin[i], center = bin[i + 1], hi = bin[i + 2];
    if (center == lo) {
      md[center * num_mel_bins + i] = 1.0;
    } else {
      for (int64_t j = lo; j <= center; ++j) {
        md[j * num_mel_bins + i] = static_cast<double>(j - lo) / static_cast<double>(center - lo);
      }
    }
    for (int64_t j = center; j < hi; ++j) {
      md[j * num_mel_bins + i] = static_cast<double>(hi - j) / static_cast<double>(hi - center);
    }
  }
  KILN_ASSIGN_OR_RETURN(Tensor result, cast_tensor(m, static_cast<DType>(dt)));
  ctx.set_output(0, result);
  return OkStatus();
}

}  // namespace

void register_signal_ops(ir::OpRegistry& r) {
  r.add("DFT", 17, dft_kernel);
  r.add("STFT", 17, stft_kernel);
  r.add("HannWindow", 17, window_kernel<0>);
  r.add("HammingWindow", 17, window_kernel<1>);
  r.add("BlackmanWindow", 17, window_kernel<2>);
  r.add("MelWeightMatrix", 17, mel_weight_matrix_kernel);
}

}  // namespace kiln::cpu
