// CPU reference kernels: ops no other family owns (SwiGLU, CausalConvWithState, ImageDecoder).
#include <cctype>
#include <cmath>
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/attention_util.h"

namespace kiln::cpu {
namespace {

using e2::from_doubles;
using e2::is_real_float;
using e2::sigmoid;
using e2::to_doubles;

// SwiGLU: Y = A * sigmoid(alpha * A) * B, A and B of identical shape (no broadcasting).
Status swiglu_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("A and B are required");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  if (!is_real_float(a.dtype()) || a.dtype() != b.dtype())
    return ctx.error("A and B must share a float dtype, got " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()));
  if (a.shape() != b.shape())
    return ctx.error("A " + shape_to_string(a.shape()) + " and B " + shape_to_string(b.shape()) + " must have identical shapes");
  const double alpha = ctx.attr_float("alpha", 1.0f);
  std::vector<double> av = to_doubles(a);
  const std::vector<double> bv = to_doubles(b);
  for (size_t i = 0; i < av.size(); ++i) av[i] = av[i] * sigmoid(alpha * av[i]) * bv[i];
  ctx.set_output(0, from_doubles(av, a.shape(), a.dtype()));
  return OkStatus();
}

// CausalConvWithState: depthwise causal conv1d over (batch, channels, length), left-padded with
// past_state (or zeros); present_state is the last k-1 positions of the padded input.
Status causal_conv_with_state_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("input and weight are required");
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(1);
  if (!is_real_float(x.dtype()) || !is_real_float(w.dtype())) return ctx.error("unsupported dtype " + dtype_name(x.dtype()));
  if (x.rank() != 3) return ctx.error("input must be 3D (batch, channels, length), got " + shape_to_string(x.shape()));
  const int64_t batch = x.dim(0), ch = x.dim(1), len = x.dim(2);
  if (w.rank() != 3 || w.dim(0) != ch || w.dim(1) != 1 || w.dim(2) < 1)
    return ctx.error("weight must be (channels, 1, k) with channels=" + std::to_string(ch) + ", got " + shape_to_string(w.shape()));
  const int64_t k = w.dim(2);
  const std::string act = ctx.attr_string("activation", "none");
  if (act != "none" && act != "silu" && act != "swish") return ctx.error("unsupported activation '" + act + "'");
  std::vector<double> bias(static_cast<size_t>(ch), 0.0);
  if (ctx.has_input(2)) {
    const Tensor& bt = ctx.input(2);
    if (!is_real_float(bt.dtype()) || bt.shape() != Shape{ch}) return ctx.error("bias must be [" + std::to_string(ch) + "], got " + bt.description());
    bias = to_doubles(bt);
  }
  const int64_t padded_len = len + k - 1;
  std::vector<double> padded(static_cast<size_t>(batch * ch * padded_len), 0.0);
  const std::vector<double> xv = to_doubles(x);
  std::vector<double> past;
  if (ctx.has_input(3)) {
    const Tensor& ps = ctx.input(3);
    if (!is_real_float(ps.dtype()) || ps.shape() != Shape{batch, ch, k - 1})
      return ctx.error("past_state must be " + shape_to_string({batch, ch, k - 1}) + ", got " + ps.description());
    past = to_doubles(ps);
  }
  for (int64_t bc = 0; bc < batch * ch; ++bc) {
    for (int64_t p = 0; p < k - 1 && !past.empty(); ++p) padded[bc * padded_len + p] = past[bc * (k - 1) + p];
    for (int64_t t = 0; t < len; ++t) padded[bc * padded_len + k - 1 + t] = xv[bc * len + t];
  }
  const std::vector<double> wv = to_doubles(w);
  std::vector<double> out(static_cast<size_t>(batch * ch * len));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < ch; ++c) {
      const double* in = &padded[(b * ch + c) * padded_len];
      for (int64_t t = 0; t < len; ++t) {
        double acc = bias[c];
        for (int64_t j = 0; j < k; ++j) acc += wv[c * k + j] * in[t + j];
        if (act != "none") acc *= sigmoid(acc);
        out[(b * ch + c) * len + t] = acc;
      }
    }
  }
  std::vector<double> present(static_cast<size_t>(batch * ch * (k - 1)));
  for (int64_t bc = 0; bc < batch * ch; ++bc)
    for (int64_t p = 0; p < k - 1; ++p) present[bc * (k - 1) + p] = padded[bc * padded_len + len + p];
  ctx.set_output(0, from_doubles(out, x.shape(), x.dtype()));
  if (ctx.num_outputs() > 1) ctx.set_output(1, from_doubles(present, {batch, ch, k - 1}, x.dtype()));
  return OkStatus();
}

// ImageDecoder. Only the two formats that need no codec library are decoded: uncompressed BMP (24/32-bit)
// and binary PNM (P5 gray / P6 RGB, maxval 255). JPEG, PNG, TIFF, WebP and JPEG 2000 would need codec
// libraries that the CPU reference backend does not link; they are reported as unsupported.
struct Image {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, top row first
};

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr int64_t kMaxImagePixels = int64_t{1} << 28;

Result<Image> decode_bmp(KernelContext& ctx, const uint8_t* d, size_t n) {
  if (n < 54) return ctx.error("BMP data truncated");
  const uint32_t offset = read_le(d + 10, 4);
  const uint32_t header = read_le(d + 14, 4);
  if (header < 40) return ctx.unsupported("BMP core headers are not supported");
  const int32_t w = static_cast<int32_t>(read_le(d + 18, 4));
  const int32_t h_signed = static_cast<int32_t>(read_le(d + 22, 4));
  const uint32_t bpp = read_le(d + 28, 2), compression = read_le(d + 30, 4);
  if ((bpp != 24 && bpp != 32) || (compression != 0 && !(compression == 3 && bpp == 32)))
    return ctx.unsupported("BMP with " + std::to_string(bpp) + " bits per pixel / compression " + std::to_string(compression));
  const bool bottom_up = h_signed > 0;
  const int64_t height = bottom_up ? h_signed : -static_cast<int64_t>(h_signed);
  if (w <= 0 || height <= 0 || static_cast<int64_t>(w) * height > kMaxImagePixels) return ctx.error("BMP has a bad size");
  const int64_t bytes_pp = bpp / 8;
  const int64_t stride = (w * bytes_pp + 3) / 4 * 4;
  if (offset + static_cast<uint64_t>(stride) * static_cast<uint64_t>(height) > n) return ctx.error("BMP pixel data truncated");
  Image img;
  img.height = height;
  img.width = w;
  img.rgb.resize(static_cast<size_t>(height * w * 3));
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t* row = d + offset + (bottom_up ? height - 1 - y : y) * stride;
    for (int64_t x = 0; x < w; ++x) {
      uint8_t* px = &img.rgb[static_cast<size_t>((y * w + x) * 3)];
      px[0] = row[x * bytes_pp + 2];  // stored as B, G, R
      px[1] = row[x * bytes_pp + 1];
      px[2] = row[x * bytes_pp + 0];
    }
  }
  return img;
}

Result<Image> decode_pnm(KernelContext& ctx, const uint8_t* d, size_t n) {
  const bool color = d[1] == '6';
  size_t pos = 2;
  int64_t fields[3] = {0, 0, 0};
  for (int f = 0; f < 3; ++f) {
    while (pos < n && (std::isspace(d[pos]) || d[pos] == '#')) {
      if (d[pos] == '#')
        while (pos < n && d[pos] != '\n') ++pos;
      else
        ++pos;
    }
    if (pos >= n || !std::isdigit(d[pos])) return ctx.error("PNM header is malformed");
    while (pos < n && std::isdigit(d[pos]) && fields[f] < (int64_t{1} << 20)) fields[f] = fields[f] * 10 + (d[pos++] - '0');
  }
  ++pos;  // the single whitespace after maxval
  const int64_t width = fields[0], height = fields[1];
  if (fields[2] != 255) return ctx.unsupported("PNM with maxval " + std::to_string(fields[2]));
  if (width <= 0 || height <= 0 || width * height > kMaxImagePixels) return ctx.error("PNM has a bad size");
  const int64_t channels = color ? 3 : 1;
  if (pos + static_cast<size_t>(width * height * channels) > n) return ctx.error("PNM pixel data truncated");
  Image img;
  img.height = height;
  img.width = width;
  img.rgb.resize(static_cast<size_t>(width * height * 3));
  for (int64_t i = 0; i < width * height; ++i)
    for (int c = 0; c < 3; ++c) img.rgb[static_cast<size_t>(i * 3 + c)] = d[pos + static_cast<size_t>(i * channels + (color ? c : 0))];
  return img;
}

Status image_decoder_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("encoded_stream is required");
  const Tensor& in = ctx.input(0);
  if (in.dtype() != DType::kUInt8 || in.rank() != 1) return ctx.error("encoded_stream must be a 1D uint8 tensor, got " + in.description());
  const std::string fmt = ctx.attr_string("pixel_format", "RGB");
  if (fmt != "RGB" && fmt != "BGR" && fmt != "Grayscale") return ctx.error("pixel_format must be RGB, BGR or Grayscale, got '" + fmt + "'");
  const uint8_t* d = in.data<uint8_t>();
  const size_t n = static_cast<size_t>(in.numel());
  Result<Image> img = Image{};
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') {
    img = decode_bmp(ctx, d, n);
  } else if (n >= 3 && d[0] == 'P' && (d[1] == '5' || d[1] == '6')) {
    img = decode_pnm(ctx, d, n);
  } else {
    return ctx.unsupported("ImageDecoder handles only BMP and binary PNM; this format needs an image codec the CPU reference backend does not include");
  }
  if (!img.ok()) return img.status();
  const int64_t h = img->height, w = img->width;
  Tensor out(DType::kUInt8, {h, w, fmt == "Grayscale" ? 1 : 3});
  uint8_t* o = out.data<uint8_t>();
  for (int64_t i = 0; i < h * w; ++i) {
    const uint8_t* px = &img->rgb[static_cast<size_t>(i * 3)];
    if (fmt == "RGB") {
      o[i * 3] = px[0], o[i * 3 + 1] = px[1], o[i * 3 + 2] = px[2];
    } else if (fmt == "BGR") {
      o[i * 3] = px[2], o[i * 3 + 1] = px[1], o[i * 3 + 2] = px[0];
    } else {  // ITU-R 601-2 luma with Pillow's fixed-point rounding
      o[i] = static_cast<uint8_t>((px[0] * 19595 + px[1] * 38470 + px[2] * 7471 + 0x8000) >> 16);
    }
  }
  ctx.set_output(0, out);
  return OkStatus();
}

}  // namespace

void register_misc_ops(ir::OpRegistry& r) {
  r.add("SwiGLU", 28, swiglu_kernel);
  r.add("CausalConvWithState", 27, causal_conv_with_state_kernel);
  r.add("ImageDecoder", 20, image_decoder_kernel);
}

}  // namespace kiln::cpu
