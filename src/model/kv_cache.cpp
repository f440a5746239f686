#include "model/kv_cache.h"

#include <vector>

#include "core/cuda.h"
#include "core/error.h"

namespace dseek {

KVCache::KVCache(const std::vector<LayerSpec>& layers, int64_t max_tokens, DType dtype,
                 Device device)
    : capacity_(max_tokens), dtype_(dtype), device_(device) {
  DSEEK_CHECK(max_tokens > 0, "[kv_cache] capacity must be positive, got {}", max_tokens);
  DSEEK_CHECK(dtype == DType::F32 || (dtype == DType::BF16 && device == Device::CUDA),
              "[kv_cache] rows must be f32, or bf16 on the GPU; got {} on the {}",
              dtype_name(dtype), device_name(device));
  for (const LayerSpec& l : layers) {
    DSEEK_CHECK(l.key_width > 0 && l.value_width >= 0, "[kv_cache] bad layer widths {} / {}",
                l.key_width, l.value_width);
    keys_.push_back(Tensor::zeros({max_tokens, l.key_width}, dtype, device));
    values_.push_back(l.value_width > 0 ? Tensor::zeros({max_tokens, l.value_width}, dtype, device)
                                        : Tensor());
  }
  if (device == Device::CUDA) positions_ = Tensor::zeros({max_tokens}, DType::I64, device);
}

Tensor KVCache::device_positions(int64_t T) {
  DSEEK_CHECK(device_ == Device::CUDA, "[kv_cache] device positions are for a cache on the GPU");
  check_room(T);
  if (T == 0) return positions_.slice(0, 0, 0);
  if (staged_from_ != size_ || staged_T_ != T) {
    std::vector<int64_t> host(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) host[size_t(t)] = size_ + t;
    // Ordered on the stream after the kernels that read the previous positions.
    dseek::cuda::copy_to_device(positions_.raw(), host.data(), host.size() * sizeof(int64_t));
    staged_from_ = size_;
    staged_T_ = T;
  }
  return positions_.slice(0, 0, T);
}

void KVCache::truncate(int64_t n) {
  DSEEK_CHECK(n >= 0 && n <= size_, "[kv_cache] cannot truncate to {} tokens: {} cached", n, size_);
  size_ = n;
}

void KVCache::check_room(int64_t tokens) const {
  DSEEK_CHECK(tokens >= 0 && size_ + tokens <= capacity_,
              "[kv_cache] overflow: {} cached + {} new tokens exceed the capacity of {}", size_,
              tokens, capacity_);
}

void KVCache::advance(int64_t tokens) {
  check_room(tokens);
  size_ += tokens;
}

size_t KVCache::nbytes() const {
  size_t n = 0;
  for (size_t i = 0; i < keys_.size(); ++i)
    n += keys_[i].nbytes() + (values_[i].defined() ? values_[i].nbytes() : 0);
  return n;
}

}  // namespace dseek
