// Tensor: a dense, row-major (C-order) array with a dtype and a shape, owning or viewing host memory.
// Copying a Tensor shares its storage (like a shared_ptr); clone() makes a deep copy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/dtype.h"

namespace kiln {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
std::string shape_to_string(const Shape& s);  // "[1,3,224,224]"

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-initialised storage (empty strings for kString).
  Tensor(DType dtype, Shape shape);
  // A view of memory owned elsewhere (the caller keeps it alive while the tensor is used).
  static Tensor view(DType dtype, Shape shape, void* data);

  template <class T>
  static Tensor scalar(DType dtype, T value) {
    Tensor t(dtype, {});
    *t.data<T>() = value;
    return t;
  }
  template <class T>
  static Tensor from_vector(DType dtype, Shape shape, const std::vector<T>& values) {
    Tensor t(dtype, std::move(shape));
    for (size_t i = 0; i < values.size() && static_cast<int64_t>(i) < t.numel(); ++i) t.data<T>()[i] = values[i];
    return t;
  }

  bool defined() const { return dtype_ != DType::kUndefined; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t rank() const { return static_cast<int64_t>(shape_.size()); }
  int64_t dim(int64_t i) const { return shape_[i < 0 ? i + rank() : i]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw_data() { return data_; }
  const void* raw_data() const { return data_; }
  template <class T>
  T* data() { return static_cast<T*>(data_); }
  template <class T>
  const T* data() const { return static_cast<const T*>(data_); }

  // Storage of a kString tensor (numel() entries).
  std::string* strings() { return strings_ ? strings_->data() : nullptr; }
  const std::string* strings() const { return strings_ ? strings_->data() : nullptr; }

  // Same storage, another shape with the same number of elements.
  Tensor reshaped(Shape shape) const;
  Tensor clone() const;
  // Element i converted to double / int64 (any numeric dtype); for scalars and small index tensors.
  double scalar_as_double(int64_t i = 0) const;
  int64_t scalar_as_int(int64_t i = 0) const;
  // All elements as int64 (any integer dtype): for shape, axes and index inputs.
  std::vector<int64_t> to_int64_vector() const;
  std::string description() const;  // "float32[1,3,224,224]"

 private:
  DType dtype_ = DType::kUndefined;
  Shape shape_;
  std::shared_ptr<void> owner_;  // keeps data_ alive; null for views
  void* data_ = nullptr;
  std::shared_ptr<std::vector<std::string>> strings_;
};

}  // namespace kiln
