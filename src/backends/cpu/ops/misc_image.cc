// CPU reference kernel: ImageDecoder, for the formats that need no codec library. Decodes uncompressed
// BMP (24/32-bit), binary PNM (P5 gray / P6 RGB, maxval 255), non-interlaced PNG (8-bit gray, RGB,
// palette, gray+alpha, RGBA; alpha is dropped; a small inflate (RFC 1951) reads its zlib stream) and
// uncompressed baseline TIFF. JPEG, JPEG 2000 and WebP need real codecs and are reported as unsupported.
#include <cctype>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {
namespace {

constexpr int64_t kMaxImagePixels = int64_t{1} << 28;

struct Image {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, top row first
};

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

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

// ---- inflate (RFC 1951), canonical-Huffman decoding one bit at a time (like zlib's puff.c) ----
struct BitReader {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  uint32_t bitbuf = 0;
  int bitcnt = 0;
  bool overrun = false;
  int bits(int need) {
    uint32_t val = bitbuf;
    while (bitcnt < need) {
      if (pos >= size) {
        overrun = true;
        return 0;
      }
      val |= uint32_t{data[pos++]} << bitcnt;
      bitcnt += 8;
    }
    bitbuf = val >> need;
    bitcnt -= need;
    return static_cast<int>(val & ((1u << need) - 1));
  }
};

struct Huffman {
  uint16_t count[16] = {};
  std::vector<uint16_t> symbol;
};

// Builds the decoding tables; false for an over-subscribed code.
bool build_huffman(Huffman& h, const uint16_t* lengths, int n) {
  std::memset(h.count, 0, sizeof h.count);
  for (int i = 0; i < n; ++i) h.count[lengths[i]]++;
  int left = 1;
  for (int len = 1; len < 16; ++len) {
    left = left * 2 - h.count[len];
    if (left < 0) return false;
  }
  uint16_t offs[16] = {};
  for (int len = 1; len < 15; ++len) offs[len + 1] = offs[len] + h.count[len];
  h.symbol.assign(static_cast<size_t>(n), 0);
  for (int i = 0; i < n; ++i)
    if (lengths[i] != 0) h.symbol[offs[lengths[i]]++] = static_cast<uint16_t>(i);
  return true;
}

int decode_symbol(BitReader& br, const Huffman& h) {
  int code = 0, first = 0, index = 0;
  for (int len = 1; len < 16; ++len) {
    code |= br.bits(1);
    if (br.overrun) return -1;
    const int count = h.count[len];
    if (code - count < first) return h.symbol[static_cast<size_t>(index + (code - first))];
    index += count;
    first = (first + count) << 1;
    code <<= 1;
  }
  return -1;
}

bool inflate(const uint8_t* data, size_t size, std::vector<uint8_t>& out, size_t max_out) {
  static const uint16_t kLenBase[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
  static const uint16_t kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
  static const uint16_t kDistBase[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
  static const uint16_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
  BitReader br{data, size};
  bool last = false;
  while (!last) {
    last = br.bits(1) != 0;
    const int type = br.bits(2);
    if (br.overrun) return false;
    if (type == 0) {  // stored
      br.bitbuf = 0;
      br.bitcnt = 0;
      if (br.pos + 4 > size) return false;
      const uint32_t len = data[br.pos] | (uint32_t{data[br.pos + 1]} << 8);
      br.pos += 4;
      if (br.pos + len > size || out.size() + len > max_out) return false;
      out.insert(out.end(), data + br.pos, data + br.pos + len);
      br.pos += len;
      continue;
    }
    if (type == 3) return false;
    Huffman lit, dist;
    uint16_t lengths[320] = {};
    if (type == 1) {  // fixed codes
      int i = 0;
      for (; i < 144; ++i) lengths[i] = 8;
      for (; i < 256; ++i) lengths[i] = 9;
      for (; i < 280; ++i) lengths[i] = 7;
      for (; i < 288; ++i) lengths[i] = 8;
      build_huffman(lit, lengths, 288);
      for (i = 0; i < 30; ++i) lengths[i] = 5;
      build_huffman(dist, lengths, 30);
    } else {  // dynamic codes
      const int nlen = br.bits(5) + 257, ndist = br.bits(5) + 1, ncode = br.bits(4) + 4;
      if (br.overrun || nlen > 286 || ndist > 30) return false;
      static const uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
      for (int i = 0; i < ncode; ++i) lengths[kOrder[i]] = static_cast<uint16_t>(br.bits(3));
      Huffman lencode;
      if (br.overrun || !build_huffman(lencode, lengths, 19)) return false;
      int i = 0;
      while (i < nlen + ndist) {
        int sym = decode_symbol(br, lencode);
        if (sym < 0) return false;
        if (sym < 16) {
          lengths[i++] = static_cast<uint16_t>(sym);
          continue;
        }
        uint16_t len = 0;
        int rep;
        if (sym == 16) {
          if (i == 0) return false;
          len = lengths[i - 1];
          rep = 3 + br.bits(2);
        } else if (sym == 17) {
          rep = 3 + br.bits(3);
        } else {
          rep = 11 + br.bits(7);
        }
        if (br.overrun || i + rep > nlen + ndist) return false;
        while (rep--) lengths[i++] = len;
      }
      if (!build_huffman(lit, lengths, nlen) || !build_huffman(dist, lengths + nlen, ndist)) return false;
    }
    while (true) {
      int sym = decode_symbol(br, lit);
      if (sym < 0) return false;
      if (sym < 256) {
        if (out.size() >= max_out) return false;
        out.push_back(static_cast<uint8_t>(sym));
        continue;
      }
      if (sym == 256) break;
      sym -= 257;
      if (sym >= 29) return false;
      const size_t len = kLenBase[sym] + static_cast<size_t>(br.bits(kLenExtra[sym]));
      const int ds = decode_symbol(br, dist);
      if (ds < 0 || ds >= 30) return false;
      const size_t d = kDistBase[ds] + static_cast<size_t>(br.bits(kDistExtra[ds]));
      if (br.overrun || d > out.size() || out.size() + len > max_out) return false;
      for (size_t k = 0; k < len; ++k) out.push_back(out[out.size() - d]);
    }
  }
  return true;
}

Result<Image> decode_png(KernelContext& ctx, const uint8_t* d, size_t n) {
  size_t pos = 8;
  int64_t width = 0, height = 0;
  int depth = 0, color = -1, interlace = 0;
  std::vector<uint8_t> idat, palette;
  while (pos + 8 <= n) {
    const uint32_t len = read_be32(d + pos);
    const std::string type(reinterpret_cast<const char*>(d + pos + 4), 4);
    if (pos + 12 + static_cast<size_t>(len) > n) return ctx.error("PNG chunk '" + type + "' truncated");
    const uint8_t* body = d + pos + 8;
    if (type == "IHDR" && len >= 13) {
      width = read_be32(body);
      height = read_be32(body + 4);
      depth = body[8];
      color = body[9];
      interlace = body[12];
    } else if (type == "PLTE") {
      palette.assign(body, body + len);
    } else if (type == "IDAT") {
      idat.insert(idat.end(), body, body + len);
    } else if (type == "IEND") {
      break;
    }
    pos += 12 + len;
  }
  if (width <= 0 || height <= 0 || width * height > kMaxImagePixels) return ctx.error("PNG has a bad or missing IHDR");
  if (interlace != 0) return ctx.unsupported("interlaced PNG");
  int channels;
  switch (color) {
    case 0: channels = 1; break;
    case 2: channels = 3; break;
    case 3: channels = 1; break;
    case 4: channels = 2; break;
    case 6: channels = 4; break;
    default: return ctx.error("PNG color type " + std::to_string(color) + " is invalid");
  }
  if (!(depth == 8 || (color == 3 && (depth == 1 || depth == 2 || depth == 4))))
    return ctx.unsupported("PNG with bit depth " + std::to_string(depth) + " and color type " + std::to_string(color));
  const int64_t row_bytes = (width * channels * depth + 7) / 8;
  const int64_t bpp = std::max<int64_t>(1, channels * depth / 8);
  const size_t raw_size = static_cast<size_t>((row_bytes + 1) * height);
  if (idat.size() < 2 || (idat[0] & 0x0f) != 8) return ctx.error("PNG image data is not a zlib deflate stream");
  std::vector<uint8_t> raw;
  if (!inflate(idat.data() + 2, idat.size() - 2, raw, raw_size) || raw.size() != raw_size)
    return ctx.error("PNG image data is corrupt");
  // Undo the per-row filters in place.
  std::vector<uint8_t> pixels(static_cast<size_t>(row_bytes * height));
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t filter = raw[static_cast<size_t>(y * (row_bytes + 1))];
    const uint8_t* src = &raw[static_cast<size_t>(y * (row_bytes + 1) + 1)];
    uint8_t* cur = &pixels[static_cast<size_t>(y * row_bytes)];
    const uint8_t* prev = y > 0 ? cur - row_bytes : nullptr;
    for (int64_t i = 0; i < row_bytes; ++i) {
      const int a = i >= bpp ? cur[i - bpp] : 0;
      const int b = prev ? prev[i] : 0;
      const int c = prev && i >= bpp ? prev[i - bpp] : 0;
      int pred;
      switch (filter) {
        case 0: pred = 0; break;
        case 1: pred = a; break;
        case 2: pred = b; break;
        case 3: pred = (a + b) / 2; break;
        case 4: {
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: return ctx.error("PNG row filter " + std::to_string(filter) + " is invalid");
      }
      cur[i] = static_cast<uint8_t>(src[i] + pred);
    }
  }
  Image img;
  img.height = height;
  img.width = width;
  img.rgb.resize(static_cast<size_t>(width * height * 3));
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t* row = &pixels[static_cast<size_t>(y * row_bytes)];
    for (int64_t x = 0; x < width; ++x) {
      uint8_t* px = &img.rgb[static_cast<size_t>((y * width + x) * 3)];
      if (color == 3) {
        const int per_byte = 8 / depth;
        const int shift = 8 - depth * (static_cast<int>(x % per_byte) + 1);
        const size_t index = (row[x / per_byte] >> shift) & ((1 << depth) - 1);
        if (index * 3 + 2 >= palette.size()) return ctx.error("PNG palette index " + std::to_string(index) + " out of range");
        for (int c = 0; c < 3; ++c) px[c] = palette[index * 3 + static_cast<size_t>(c)];
      } else if (color == 0 || color == 4) {
        px[0] = px[1] = px[2] = row[x * channels];
      } else {
        for (int c = 0; c < 3; ++c) px[c] = row[x * channels + c];
      }
    }
  }
  return img;
}

// Baseline TIFF: uncompressed, 8-bit samples, chunky (interleaved) RGB(A) or grayscale, in strips.
Result<Image> decode_tiff(KernelContext& ctx, const uint8_t* d, size_t n) {
  const bool le = d[0] == 'I';
  auto u16 = [&](size_t at) -> uint32_t { return at + 2 > n ? 0 : le ? read_le(d + at, 2) : (uint32_t{d[at]} << 8) | d[at + 1]; };
  auto u32 = [&](size_t at) -> uint32_t { return at + 4 > n ? 0 : le ? read_le(d + at, 4) : read_be32(d + at); };
  const size_t ifd = u32(4);
  if (ifd + 2 > n) return ctx.error("TIFF header is malformed");
  const uint32_t entries = u16(ifd);
  if (ifd + 2 + size_t{entries} * 12 > n) return ctx.error("TIFF directory truncated");
  // Values of a SHORT/LONG tag (inline when they fit in 4 bytes).
  auto tag_values = [&](uint32_t tag) -> std::vector<uint32_t> {
    std::vector<uint32_t> vals;
    for (uint32_t i = 0; i < entries; ++i) {
      const size_t e = ifd + 2 + size_t{i} * 12;
      if (u16(e) != tag) continue;
      const uint32_t type = u16(e + 2), count = u32(e + 4);
      const size_t width = type == 3 ? 2 : type == 4 ? 4 : 0;
      if (width == 0 || count > (1u << 24)) return vals;
      const size_t at = size_t{count} * width <= 4 ? e + 8 : u32(e + 8);
      for (uint32_t k = 0; k < count; ++k) vals.push_back(width == 2 ? u16(at + k * 2) : u32(at + k * 4));
    }
    return vals;
  };
  auto one = [&](uint32_t tag, uint32_t dflt) {
    auto v = tag_values(tag);
    return v.empty() ? dflt : v[0];
  };
  const int64_t width = one(256, 0), height = one(257, 0);
  const uint32_t compression = one(259, 1), photometric = one(262, 2), spp = one(277, 1), planar = one(284, 1);
  const std::vector<uint32_t> bits = tag_values(258), offsets = tag_values(273), counts = tag_values(279);
  if (width <= 0 || height <= 0 || width * height > kMaxImagePixels) return ctx.error("TIFF has a bad size");
  for (uint32_t b : bits)
    if (b != 8) return ctx.unsupported("TIFF with " + std::to_string(b) + "-bit samples");
  if (compression != 1 || planar != 1 || (photometric != 2 && photometric != 1) || spp < 1 || spp > 4)
    return ctx.unsupported("TIFF with compression " + std::to_string(compression) + ", photometric " + std::to_string(photometric));
  if (offsets.empty() || offsets.size() != counts.size()) return ctx.error("TIFF strip tags are missing or inconsistent");
  std::vector<uint8_t> samples;
  for (size_t i = 0; i < offsets.size(); ++i) {
    if (size_t{offsets[i]} + counts[i] > n) return ctx.error("TIFF strip truncated");
    samples.insert(samples.end(), d + offsets[i], d + offsets[i] + counts[i]);
  }
  if (samples.size() < static_cast<size_t>(width * height * spp)) return ctx.error("TIFF pixel data truncated");
  Image img;
  img.height = height;
  img.width = width;
  img.rgb.resize(static_cast<size_t>(width * height * 3));
  for (int64_t i = 0; i < width * height; ++i)
    for (int c = 0; c < 3; ++c)
      img.rgb[static_cast<size_t>(i * 3 + c)] = samples[static_cast<size_t>(i * spp + (photometric == 2 && spp >= 3 ? c : 0))];
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
  static const uint8_t kPngSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Result<Image> img = Image{};
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') {
    img = decode_bmp(ctx, d, n);
  } else if (n >= 3 && d[0] == 'P' && (d[1] == '5' || d[1] == '6')) {
    img = decode_pnm(ctx, d, n);
  } else if (n >= 8 && std::memcmp(d, kPngSig, 8) == 0) {
    img = decode_png(ctx, d, n);
  } else if (n >= 8 && ((d[0] == 'I' && d[1] == 'I' && d[2] == 42 && d[3] == 0) || (d[0] == 'M' && d[1] == 'M' && d[2] == 0 && d[3] == 42))) {
    img = decode_tiff(ctx, d, n);
  } else {
    return ctx.unsupported("ImageDecoder handles BMP, binary PNM, PNG and uncompressed TIFF; this format (JPEG, JPEG 2000, WebP?) needs an image codec the CPU reference backend does not include");
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

// Called from register_misc_ops (misc.cc).
void register_misc_image_ops(ir::OpRegistry& r) { r.add("ImageDecoder", 20, image_decoder_kernel); }

}  // namespace kiln::cpu
