#include "kiln/npy.h"

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

namespace kiln::tools {

namespace {

const std::map<std::string, DType>& descr_table() {
  static const std::map<std::string, DType> t = {
      {"<f4", DType::kFloat32}, {"<f8", DType::kFloat64}, {"<f2", DType::kFloat16}, {"|i1", DType::kInt8},
      {"|u1", DType::kUInt8},   {"<i2", DType::kInt16},   {"<u2", DType::kUInt16},  {"<i4", DType::kInt32},
      {"<u4", DType::kUInt32},  {"<i8", DType::kInt64},   {"<u8", DType::kUInt64},  {"|b1", DType::kBool},
  };
  return t;
}

// Value of `key` in the header dict, e.g. 'descr': '<f4' -> <f4 (quotes stripped) or (1, 2) -> 1, 2.
std::string dict_value(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) return "";
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (start == std::string::npos) return "";
  if (header[start] == '\'') {
    size_t end = header.find('\'', start + 1);
    return end == std::string::npos ? "" : header.substr(start + 1, end - start - 1);
  }
  if (header[start] == '(') {
    size_t end = header.find(')', start);
    return end == std::string::npos ? "" : header.substr(start + 1, end - start - 1);
  }
  size_t end = header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

}  // namespace

Result<Tensor> read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("cannot open '" + path + "'");
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) return InvalidArgument("'" + path + "' is not a NumPy .npy file");
  int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  } else {
    return Unsupported("'" + path + "': .npy format version " + std::to_string(major) + " is not supported");
  }
  if (!f || header_len > (1u << 20)) return InvalidArgument("'" + path + "': corrupted .npy header");
  std::string header(header_len, '\0');
  f.read(header.data(), header_len);
  if (!f) return InvalidArgument("'" + path + "': truncated .npy header");
  std::string descr = dict_value(header, "descr");
  auto it = descr_table().find(descr);
  if (it == descr_table().end())
    return Unsupported("'" + path + "': NumPy dtype '" + descr + "' is not supported (little-endian numbers and bool are)");
  if (dict_value(header, "fortran_order") != "False")
    return Unsupported("'" + path + "': Fortran-ordered arrays are not supported (save with np.ascontiguousarray)");
  Shape shape;
  std::stringstream dims(dict_value(header, "shape"));
  std::string item;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    try {
      int64_t d = std::stoll(item);
      if (d < 0) throw std::out_of_range("negative");
      shape.push_back(d);
    } catch (...) {
      return InvalidArgument("'" + path + "': bad shape in .npy header");
    }
  }
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d > 0 && numel > (int64_t{1} << 40) / d) return InvalidArgument("'" + path + "': impossibly large shape");
    numel *= d;
  }
  Tensor t(it->second, shape);
  f.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  if (!f && t.nbytes() > 0)
    return InvalidArgument("'" + path + "' is truncated: expected " + std::to_string(t.nbytes()) + " bytes of data");
  return t;
}

Status write_npy(const Tensor& t, const std::string& path) {
  std::string descr;
  for (const auto& [d, dt] : descr_table())
    if (dt == t.dtype()) descr = d;
  if (descr.empty()) return Unsupported("cannot write " + dtype_name(t.dtype()) + " tensors as .npy");
  std::string shape = "(";
  for (size_t i = 0; i < t.shape().size(); ++i) shape += std::to_string(t.shape()[i]) + (t.shape().size() == 1 || i + 1 < t.shape().size() ? "," : "");
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) return IoError("cannot write '" + path + "'");
  f.write("\x93NUMPY\x01\x00", 8);
  unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff), static_cast<unsigned char>(header.size() >> 8)};
  f.write(reinterpret_cast<char*>(len), 2);
  f << header;
  f.write(static_cast<const char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  if (!f) return IoError("cannot write '" + path + "'");
  return OkStatus();
}

}  // namespace kiln::tools
