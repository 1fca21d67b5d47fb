// Conversion between ONNX TensorProto / SequenceProto / OptionalProto and Kiln's Tensor / Value.
#pragma once

#include <string>

#include "core/value.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace onnx {
class TensorProto;
class SequenceProto;
class OptionalProto;
}  // namespace onnx

namespace kiln::onnx_io {

// `base_dir` is where tensors with external data (data_location EXTERNAL) find their files.
Result<Tensor> tensor_from_proto(const onnx::TensorProto& proto, const std::string& base_dir);
// Always writes raw_data (sub-byte types packed, as ONNX specifies); strings go to string_data.
void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* proto);

Result<Value> value_from_sequence_proto(const onnx::SequenceProto& proto, const std::string& base_dir);
Result<Value> value_from_optional_proto(const onnx::OptionalProto& proto, const std::string& base_dir);

// Reads a serialized TensorProto (.pb) file.
Result<Tensor> read_tensor_file(const std::string& path);
Status write_tensor_file(const Tensor& t, const std::string& name, const std::string& path);
// Reads a .pb file as the given kind: "tensor", "sequence" or "optional".
Result<Value> read_value_file(const std::string& path, const std::string& kind);

// Packs / unpacks sub-byte elements (int4/uint4/float4: two per byte, low nibble first; int2/uint2: four per
// byte, lowest bits first). `elems` holds one element per byte; signed types are sign-extended on unpack.
std::string pack_sub_byte(const Tensor& t);
Status unpack_sub_byte(const std::string& bytes, Tensor* t);

Result<std::string> read_file(const std::string& path);

}  // namespace kiln::onnx_io
