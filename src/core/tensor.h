// Tensor: a typed, strided view onto shared storage. Storage is either owned (allocated here) or
// borrowed from elsewhere (a memory-mapped safetensors file) with a keep-alive handle, so weights
// are used in place without copies. Device is part of the type so a CUDA twin can slot in later.
//
// Glossary of dimension names used across dseek: T tokens, B batch, H heads, D hidden size,
// E experts, K top-k, V vocabulary, L layers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace dseek {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device device);  // "cpu", "cuda"

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& shape);

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  std::shared_ptr<void> owner;  // frees or unmaps the memory when the last user goes
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised contiguous tensor (64-byte aligned on the CPU; from the CUDA pool on a GPU).
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  // Filled with NaN (float types) or 0xAB bytes (integers): for poisoning outputs in tests.
  static Tensor poisoned(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_ids(const std::vector<int32_t>& ids);
  static Tensor from_i64(const std::vector<int64_t>& values);  // i64 [n]
  // A view of memory owned by someone else; `owner` keeps it alive.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw() const;  // address of element 0
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }

  // Views (share storage).
  Tensor reshape(const Shape& shape) const;  // requires contiguous; one -1 allowed
  Tensor slice(int d, int64_t start, int64_t end) const;
  Tensor select(int d, int64_t index) const;  // drops dimension d
  Tensor transpose(int a, int b) const;
  // Dimension d (of size 1) repeated n times without copying (stride 0), as torch's expand.
  Tensor expand(int d, int64_t n) const;

  // Copies (on the tensor's own device).
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;  // via f32; same dtype returns a contiguous copy
  // Writes src's values into this tensor (a view, any strides, on src's device) in place:
  // the shapes must match, float dtypes convert (round to nearest even), other dtypes must match.
  // The building block for writing into slices (cache rows, heads of a concatenation).
  void copy_from(const Tensor& src) const;
  // A contiguous copy on `device` (the tensor itself, made contiguous, when it is already there).
  Tensor to(Device device) const;
  bool is_cuda() const { return device() == Device::CUDA; }
  Tensor to_f32() const { return to(DType::F32); }
  std::vector<float> to_vector() const;  // f32 values in logical order (copied off a GPU)

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;  // in elements
  DType dtype_ = DType::F32;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace dseek
