#include "onnx/tensor_proto.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "onnx/onnx-data.pb.h"
#include "onnx/onnx-ml.pb.h"

namespace kiln::onnx_io {

namespace {

// Guards against a corrupted file claiming an absurd size before anything is allocated.
constexpr int64_t kMaxElements = int64_t{1} << 40;

Result<Shape> dims_of(const onnx::TensorProto& p) {
  Shape s;
  int64_t n = 1;
  for (int64_t d : p.dims()) {
    if (d < 0) return InvalidModel("tensor '" + p.name() + "' has a negative dimension " + std::to_string(d));
    if (d > 0 && n > kMaxElements / d) return InvalidModel("tensor '" + p.name() + "' is impossibly large");
    n *= d;
    s.push_back(d);
  }
  return s;
}

template <class Src, class Dst>
void copy_typed(const Src& field, Tensor& t) {
  Dst* out = t.data<Dst>();
  int64_t i = 0;
  for (auto v : field) out[i++] = static_cast<Dst>(v);
}

Status size_mismatch(const onnx::TensorProto& p, int64_t got, int64_t want) {
  return InvalidModel("tensor '" + p.name() + "' of shape " + shape_to_string(Shape(p.dims().begin(), p.dims().end())) +
                      " holds " + std::to_string(got) + " values where " + std::to_string(want) + " are expected");
}

Result<std::string> read_external(const onnx::TensorProto& p, const std::string& base_dir) {
  std::string location;
  int64_t offset = 0, length = -1;
  for (const auto& kv : p.external_data()) {
    if (kv.key() == "location") location = kv.value();
    else if (kv.key() == "offset") offset = std::stoll(kv.value());
    else if (kv.key() == "length") length = std::stoll(kv.value());
  }
  if (location.empty()) return InvalidModel("tensor '" + p.name() + "' has external data without a location");
  if (location.find("..") != std::string::npos || (!location.empty() && location[0] == '/'))
    return InvalidModel("tensor '" + p.name() + "': external data location '" + location +
                        "' must be a relative path inside the model's folder");
  std::string path = base_dir.empty() ? location : base_dir + "/" + location;
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("tensor '" + p.name() + "': cannot open external data file '" + path + "'");
  f.seekg(0, std::ios::end);
  int64_t size = f.tellg();
  if (offset < 0 || offset > size) return InvalidModel("tensor '" + p.name() + "': external data offset out of file '" + path + "'");
  if (length < 0) length = size - offset;
  if (offset + length > size)
    return InvalidModel("tensor '" + p.name() + "': external data file '" + path + "' is too short (" +
                        std::to_string(size) + " bytes, need " + std::to_string(offset + length) + ")");
  std::string bytes(static_cast<size_t>(length), '\0');
  f.seekg(offset);
  f.read(bytes.data(), length);
  return bytes;
}

}  // namespace

std::string pack_sub_byte(const Tensor& t) {
  int bits = dtype_bits(t.dtype());
  int per_byte = 8 / bits;
  int64_t n = t.numel();
  std::string out(static_cast<size_t>((n + per_byte - 1) / per_byte), '\0');
  const uint8_t* src = t.data<uint8_t>();
  uint8_t mask = static_cast<uint8_t>((1u << bits) - 1);
  for (int64_t i = 0; i < n; ++i)
    out[i / per_byte] = static_cast<char>(static_cast<uint8_t>(out[i / per_byte]) | ((src[i] & mask) << (bits * (i % per_byte))));
  return out;
}

Status unpack_sub_byte(const std::string& bytes, Tensor* t) {
  int bits = dtype_bits(t->dtype());
  int per_byte = 8 / bits;
  int64_t n = t->numel();
  if (static_cast<int64_t>(bytes.size()) != (n + per_byte - 1) / per_byte)
    return InvalidModel("packed " + dtype_name(t->dtype()) + " data has " + std::to_string(bytes.size()) +
                        " bytes for " + std::to_string(n) + " elements");
  uint8_t mask = static_cast<uint8_t>((1u << bits) - 1);
  bool is_signed = dtype_is_signed_int(t->dtype());
  uint8_t* dst = t->data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    uint8_t v = (static_cast<uint8_t>(bytes[i / per_byte]) >> (bits * (i % per_byte))) & mask;
    if (is_signed && (v >> (bits - 1))) v = static_cast<uint8_t>(v | ~mask);  // sign-extend
    dst[i] = v;
  }
  return OkStatus();
}

Result<Tensor> tensor_from_proto(const onnx::TensorProto& p, const std::string& base_dir) {
  if (!dtype_is_valid(p.data_type()) || p.data_type() == static_cast<int>(DType::kComplex64) ||
      p.data_type() == static_cast<int>(DType::kComplex128))
    return Unsupported("tensor '" + p.name() + "' has unsupported data type " + std::to_string(p.data_type()));
  if (p.has_segment()) return Unsupported("tensor '" + p.name() + "' is segmented; segments are not supported");
  DType dtype = static_cast<DType>(p.data_type());
  KILN_ASSIGN_OR_RETURN(Shape shape, dims_of(p));
  Tensor t(dtype, shape);
  const int64_t n = t.numel();

  std::string external;
  bool is_external = p.data_location() == onnx::TensorProto::EXTERNAL;
  if (is_external) {
    KILN_ASSIGN_OR_RETURN(external, read_external(p, base_dir));
  }
  const std::string& raw = is_external ? external : p.raw_data();
  if (dtype == DType::kString) {
    if (p.string_data_size() != n) return size_mismatch(p, p.string_data_size(), n);
    for (int64_t i = 0; i < n; ++i) t.strings()[i] = p.string_data(static_cast<int>(i));
    return t;
  }
  if (is_external || p.has_raw_data()) {
    if (dtype_is_sub_byte(dtype)) {
      KILN_RETURN_IF_ERROR(unpack_sub_byte(raw, &t).with_context("tensor '" + p.name() + "'"));
      return t;
    }
    if (raw.size() != t.nbytes()) {
      return InvalidModel("tensor '" + p.name() + "' (" + t.description() + ") has " + std::to_string(raw.size()) +
                          " bytes of data where " + std::to_string(t.nbytes()) + " are expected");
    }
    if (n > 0) std::memcpy(t.raw_data(), raw.data(), raw.size());
    if (dtype == DType::kBool) {  // normalise to 0/1 so C++ bool reads are well defined
      uint8_t* b = t.data<uint8_t>();
      for (int64_t i = 0; i < n; ++i) b[i] = b[i] != 0;
    }
    return t;
  }
  // Typed fields, as the ONNX spec assigns each dtype to one of them.
  switch (dtype) {
    case DType::kFloat32:
      if (p.float_data_size() != n) return size_mismatch(p, p.float_data_size(), n);
      copy_typed<decltype(p.float_data()), float>(p.float_data(), t);
      break;
    case DType::kFloat64:
      if (p.double_data_size() != n) return size_mismatch(p, p.double_data_size(), n);
      copy_typed<decltype(p.double_data()), double>(p.double_data(), t);
      break;
    case DType::kInt64:
      if (p.int64_data_size() != n) return size_mismatch(p, p.int64_data_size(), n);
      copy_typed<decltype(p.int64_data()), int64_t>(p.int64_data(), t);
      break;
    case DType::kUInt32:
    case DType::kUInt64:
      if (p.uint64_data_size() != n) return size_mismatch(p, p.uint64_data_size(), n);
      if (dtype == DType::kUInt32) copy_typed<decltype(p.uint64_data()), uint32_t>(p.uint64_data(), t);
      else copy_typed<decltype(p.uint64_data()), uint64_t>(p.uint64_data(), t);
      break;
    case DType::kInt4: case DType::kUInt4: case DType::kFloat4E2M1: case DType::kInt2: case DType::kUInt2: {
      // int32_data holds the packed bytes, one byte per int32.
      std::string packed;
      for (int32_t v : p.int32_data()) packed.push_back(static_cast<char>(v & 0xff));
      KILN_RETURN_IF_ERROR(unpack_sub_byte(packed, &t).with_context("tensor '" + p.name() + "'"));
      break;
    }
    default: {
      // int32_data carries every other type of 32 bits or less, as its bit pattern widened to int32.
      if (p.int32_data_size() != n) return size_mismatch(p, p.int32_data_size(), n);
      size_t es = dtype_size(dtype);
      for (int64_t i = 0; i < n; ++i) {
        int32_t v = p.int32_data(static_cast<int>(i));
        if (dtype == DType::kBool) v = v != 0;
        std::memcpy(static_cast<char*>(t.raw_data()) + i * es, &v, es);  // little-endian low bytes
      }
      break;
    }
  }
  return t;
}

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* p) {
  p->Clear();
  p->set_name(name);
  p->set_data_type(static_cast<int>(t.dtype()));
  for (int64_t d : t.shape()) p->add_dims(d);
  if (t.dtype() == DType::kString) {
    for (int64_t i = 0; i < t.numel(); ++i) p->add_string_data(t.strings()[i]);
  } else if (dtype_is_sub_byte(t.dtype())) {
    p->set_raw_data(pack_sub_byte(t));
  } else {
    p->set_raw_data(std::string(static_cast<const char*>(t.raw_data()), t.nbytes()));
  }
}

Result<Value> value_from_sequence_proto(const onnx::SequenceProto& p, const std::string& base_dir) {
  if (p.elem_type() != onnx::SequenceProto::TENSOR && p.elem_type() != onnx::SequenceProto::UNDEFINED)
    return Unsupported("sequence '" + p.name() + "': only sequences of tensors are supported");
  std::vector<Tensor> items;
  DType elem = DType::kUndefined;
  for (const auto& tp : p.tensor_values()) {
    KILN_ASSIGN_OR_RETURN(Tensor t, tensor_from_proto(tp, base_dir));
    elem = t.dtype();
    items.push_back(std::move(t));
  }
  return Value::sequence(std::move(items), elem);
}

Result<Value> value_from_optional_proto(const onnx::OptionalProto& p, const std::string& base_dir) {
  if (p.has_tensor_value()) {
    KILN_ASSIGN_OR_RETURN(Tensor t, tensor_from_proto(p.tensor_value(), base_dir));
    return Value(std::move(t));
  }
  if (p.has_sequence_value()) return value_from_sequence_proto(p.sequence_value(), base_dir);
  if (p.elem_type() == onnx::OptionalProto::TENSOR || p.elem_type() == onnx::OptionalProto::SEQUENCE ||
      p.elem_type() == onnx::OptionalProto::UNDEFINED)
    return Value::none();
  return Unsupported("optional '" + p.name() + "': unsupported element type");
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return IoError("cannot read '" + path + "'");
  return ss.str();
}

namespace {
std::string dir_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}
}  // namespace

Result<Tensor> read_tensor_file(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  onnx::TensorProto p;
  if (!p.ParseFromString(bytes)) return InvalidArgument("'" + path + "' is not a valid serialized onnx.TensorProto");
  auto t = tensor_from_proto(p, dir_of(path));
  if (!t.ok()) return t.status().with_context(path);
  return t;
}

Status write_tensor_file(const Tensor& t, const std::string& name, const std::string& path) {
  onnx::TensorProto p;
  tensor_to_proto(t, name, &p);
  std::ofstream f(path, std::ios::binary);
  if (!f || !p.SerializeToOstream(&f)) return IoError("cannot write '" + path + "'");
  return OkStatus();
}

Result<Value> read_value_file(const std::string& path, const std::string& kind) {
  if (kind == "tensor") {
    KILN_ASSIGN_OR_RETURN(Tensor t, read_tensor_file(path));
    return Value(std::move(t));
  }
  KILN_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  if (kind == "sequence") {
    onnx::SequenceProto p;
    if (!p.ParseFromString(bytes)) return InvalidArgument("'" + path + "' is not a valid serialized onnx.SequenceProto");
    return value_from_sequence_proto(p, dir_of(path));
  }
  onnx::OptionalProto p;
  if (!p.ParseFromString(bytes)) return InvalidArgument("'" + path + "' is not a valid serialized onnx.OptionalProto");
  return value_from_optional_proto(p, dir_of(path));
}

}  // namespace kiln::onnx_io
