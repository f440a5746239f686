#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/cuda.h"
#include "core/error.h"

namespace dseek {

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

std::string_view device_name(Device device) {
  return device == Device::CUDA ? "cuda" : "cpu";
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    DSEEK_CHECK(d >= 0, "[tensor] negative dimension in shape {}", shape_str(shape));
  size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  if (device == Device::CUDA) {
    void* p = cuda::alloc(bytes);
    t.storage_->owner = std::shared_ptr<void>(p, [](void* q) { cuda::free(q); });
    t.storage_->data = p;
  } else {
    size_t padded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, padded ? padded : 64);
    if (!p)
      fail("[tensor] out of memory allocating {} bytes for shape {}", bytes, shape_str(shape));
    t.storage_->owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
    t.storage_->data = p;
  }
  t.storage_->bytes = bytes;
  t.storage_->device = device;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::CUDA) {
    cuda::fill_bytes(t.raw(), 0, t.nbytes());
  } else {
    std::memset(t.raw(), 0, t.nbytes());
  }
  return t;
}

Tensor Tensor::poisoned(const Shape& shape, DType dtype, Device device) {
  if (device == Device::CUDA) return poisoned(shape, dtype).to(Device::CUDA);
  Tensor t = empty(shape, dtype);
  switch (dtype) {
    case DType::F32: {
      float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
      break;
    }
    case DType::BF16:
    case DType::F16: {
      uint16_t* p = t.data<uint16_t>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = 0x7fff;
      break;
    }
    case DType::F8_E4M3: std::memset(t.raw(), 0x7f, t.nbytes()); break;
    default: std::memset(t.raw(), 0xAB, t.nbytes()); break;
  }
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  DSEEK_CHECK(int64_t(values.size()) == shape_numel(shape),
              "[tensor] {} values do not fill shape {}", values.size(), shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  std::memcpy(t.raw(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::from_ids(const std::vector<int32_t>& ids) {
  Tensor t = empty({int64_t(ids.size())}, DType::I32);
  std::memcpy(t.raw(), ids.data(), ids.size() * 4);
  return t;
}

Tensor Tensor::from_i64(const std::vector<int64_t>& values) {
  Tensor t = empty({int64_t(values.size())}, DType::I64);
  std::memcpy(t.raw(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->data = data;
  t.storage_->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  t.storage_->owner = std::move(owner);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::size(int d) const {
  if (d < 0) d += dim();
  DSEEK_CHECK(d >= 0 && d < dim(), "[tensor] dimension {} out of range for shape {}", d,
              shape_str(shape_));
  return shape_[d];
}

bool Tensor::is_contiguous() const {
  return strides_ == contiguous_strides(shape_) || numel() <= 1;
}

void* Tensor::raw() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data) + offset_ * dtype_size(dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  DSEEK_CHECK(is_contiguous(), "[tensor] reshape of a non-contiguous tensor {}", shape_str(shape_));
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      DSEEK_CHECK(infer < 0, "[tensor] reshape {} has more than one -1", shape_str(shape));
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    DSEEK_CHECK(known > 0 && numel() % known == 0, "[tensor] cannot reshape {} to {}",
                shape_str(shape_), shape_str(shape));
    s[infer] = numel() / known;
  }
  DSEEK_CHECK(shape_numel(s) == numel(), "[tensor] cannot reshape {} to {}", shape_str(shape_),
              shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  if (d < 0) d += dim();
  DSEEK_CHECK(d >= 0 && d < dim() && 0 <= start && start <= end && end <= shape_[d],
              "[tensor] slice [{}, {}) of dim {} out of range for shape {}", start, end, d,
              shape_str(shape_));
  Tensor t = *this;
  t.offset_ += size_t(start * strides_[d]);
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  if (d < 0) d += dim();
  Tensor t = slice(d, index, index + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  if (a < 0) a += dim();
  if (b < 0) b += dim();
  DSEEK_CHECK(a >= 0 && a < dim() && b >= 0 && b < dim(), "[tensor] transpose({}, {}) of shape {}",
              a, b, shape_str(shape_));
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::expand(int d, int64_t n) const {
  if (d < 0) d += dim();
  DSEEK_CHECK(d >= 0 && d < dim() && shape_[d] == 1 && n >= 0,
              "[tensor] expand of dimension {} (size {}) to {} in shape {}: only size-1 dimensions "
              "expand",
              d, d >= 0 && d < dim() ? shape_[d] : -1, n, shape_str(shape_));
  Tensor t = *this;
  t.shape_[d] = n;
  t.strides_[d] = 0;
  return t;
}

namespace {

bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16;
}

// Offsets (in elements) of a strided view's elements in logical order.
template <typename Visit>
void for_each_offset(const Shape& shape, const Shape& strides, Visit visit) {
  const int64_t n = shape_numel(shape);
  std::vector<int64_t> index(shape.size(), 0);
  int64_t offset = 0;
  for (int64_t i = 0; i < n; ++i) {
    visit(i, offset);
    for (int k = int(index.size()) - 1; k >= 0; --k) {
      offset += strides[size_t(k)];
      if (++index[size_t(k)] < shape[size_t(k)]) break;
      offset -= strides[size_t(k)] * shape[size_t(k)];
      index[size_t(k)] = 0;
    }
  }
}

}  // namespace

void Tensor::copy_from(const Tensor& src) const {
  DSEEK_CHECK(defined() && src.defined(), "[tensor] copy_from with an undefined tensor");
  DSEEK_CHECK(src.shape_ == shape_, "[tensor] copy_from: source {} does not match destination {}",
              shape_str(src.shape_), shape_str(shape_));
  DSEEK_CHECK(src.device() == device(), "[tensor] copy_from: source on {}, destination on {}",
              device_name(src.device()), device_name(device()));
  DSEEK_CHECK(src.dtype_ == dtype_ || (is_float_dtype(src.dtype_) && is_float_dtype(dtype_)),
              "[tensor] copy_from: {} into {}", dtype_name(src.dtype_), dtype_name(dtype_));
  if (numel() == 0) return;
  if (device() == Device::CUDA) {
    if (src.dtype_ == dtype_ && src.is_contiguous() && is_contiguous()) {  // a plain copy
      cuda::copy_on_device(raw(), src.raw(), nbytes());
      return;
    }
    cuda::strided_convert(src.raw(), src.dtype_, src.strides_.data(), raw(), dtype_,
                          strides_.data(), shape_.data(), dim());
    return;
  }
  const size_t esize = dtype_size(dtype_);
  char* dst = static_cast<char*>(raw());
  const char* from = static_cast<const char*>(src.raw());
  if (src.dtype_ == dtype_ && src.is_contiguous() && is_contiguous()) {  // a plain copy
    std::memmove(dst, from, nbytes());
    return;
  }
  if (src.dtype_ == dtype_) {
    std::vector<int64_t> src_offsets(static_cast<size_t>(numel()));
    for_each_offset(shape_, src.strides_,
                    [&](int64_t i, int64_t o) { src_offsets[size_t(i)] = o; });
    for_each_offset(shape_, strides_, [&](int64_t i, int64_t o) {
      std::memcpy(dst + o * int64_t(esize), from + src_offsets[size_t(i)] * int64_t(esize), esize);
    });
    return;
  }
  const Tensor values = src.to(DType::F32);  // contiguous f32 in logical order
  const float* v = values.data<float>();
  for_each_offset(shape_, strides_, [&](int64_t i, int64_t o) {
    convert_from_f32(v + i, dst + o * int64_t(esize), dtype_, 1);
  });
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  size_t esize = dtype_size(dtype_);
  int64_t n = numel();
  if (device() == Device::CUDA) {
    if (is_contiguous()) {
      cuda::copy_on_device(out.raw(), raw(), size_t(n) * esize);
    } else {
      cuda::strided_copy(raw(), out.raw(), esize, shape_.data(), strides_.data(), dim());
    }
    return out;
  }
  if (is_contiguous()) {
    std::memcpy(out.raw(), raw(), size_t(n) * esize);
    return out;
  }
  // Generic strided copy, element by element in logical order.
  std::vector<int64_t> index(shape_.size(), 0);
  const char* src = static_cast<const char*>(raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < n; ++i) {
    int64_t offset = 0;
    for (size_t k = 0; k < index.size(); ++k) offset += index[k] * strides_[k];
    std::memcpy(dst + size_t(i) * esize, src + offset * int64_t(esize), esize);
    for (int k = int(index.size()) - 1; k >= 0; --k) {
      if (++index[k] < shape_[k]) break;
      index[k] = 0;
    }
  }
  return out;
}

Tensor Tensor::to(DType dtype) const {
  Tensor src = contiguous();
  if (dtype == dtype_) return src.storage_ == storage_ ? clone() : src;
  Tensor out = empty(shape_, dtype, device());
  size_t n = size_t(numel());
  if (device() == Device::CUDA) {
    cuda::convert(src.raw(), dtype_, out.raw(), dtype, n);
    return out;
  }
  if (dtype == DType::F32) {
    convert_to_f32(src.raw(), dtype_, out.data<float>(), n);
  } else if (dtype_ == DType::F32) {
    convert_from_f32(src.data<float>(), out.raw(), dtype, n);
  } else {
    std::vector<float> tmp(n);
    convert_to_f32(src.raw(), dtype_, tmp.data(), n);
    convert_from_f32(tmp.data(), out.raw(), dtype, n);
  }
  return out;
}

Tensor Tensor::to(Device device) const {
  Tensor src = contiguous();
  if (device == this->device()) return src;
  Tensor out = empty(shape_, dtype_, device);
  if (device == Device::CUDA) {
    cuda::copy_to_device(out.raw(), src.raw(), nbytes());
  } else {
    cuda::copy_to_host(out.raw(), src.raw(), nbytes());
  }
  return out;
}

std::vector<float> Tensor::to_vector() const {
  if (device() == Device::CUDA) return to(Device::CPU).to_vector();
  Tensor f = dtype_ == DType::F32 ? contiguous() : to(DType::F32);
  const float* p = f.data<float>();
  return std::vector<float>(p, p + f.numel());
}

}  // namespace dseek
