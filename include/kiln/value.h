// Value: what flows along a graph edge at run time. Almost always a Tensor; sequence and optional types
// (ONNX's SequenceProto and OptionalProto) exist for the ops that need them.
#pragma once

#include <vector>

#include "kiln/tensor.h"

namespace kiln {

class Value {
 public:
  enum class Kind { kNone, kTensor, kSequence };

  Value() = default;  // kNone: an empty optional (or a missing value)
  Value(Tensor t) : kind_(Kind::kTensor), tensor_(std::move(t)) {}  // NOLINT
  static Value sequence(std::vector<Tensor> items, DType elem_dtype) {
    Value v;
    v.kind_ = Kind::kSequence;
    v.sequence_ = std::move(items);
    v.elem_dtype_ = elem_dtype;
    return v;
  }
  static Value none() { return Value(); }

  Kind kind() const { return kind_; }
  bool is_tensor() const { return kind_ == Kind::kTensor; }
  bool is_sequence() const { return kind_ == Kind::kSequence; }
  bool is_none() const { return kind_ == Kind::kNone; }
  const Tensor& tensor() const { return tensor_; }
  Tensor& tensor() { return tensor_; }
  const std::vector<Tensor>& sequence_items() const { return sequence_; }
  std::vector<Tensor>& sequence_items() { return sequence_; }
  // Element dtype of a sequence (meaningful even when it is empty).
  DType elem_dtype() const { return elem_dtype_; }
  std::string description() const;

 private:
  Kind kind_ = Kind::kNone;
  Tensor tensor_;
  std::vector<Tensor> sequence_;
  DType elem_dtype_ = DType::kUndefined;
};

}  // namespace kiln
