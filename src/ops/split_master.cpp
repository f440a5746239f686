#include "ops/split_master.h"

#include <cstring>

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

void check_split(const Tensor& high, const Tensor& low, const std::string& what) {
  DSEEK_CHECK(high.defined() && high.dtype() == DType::BF16 && high.is_contiguous(),
              "[split_master] {}: the high half must be a bf16 contiguous tensor", what);
  DSEEK_CHECK(low.defined() && low.dtype() == DType::BF16 && low.is_contiguous() &&
                  low.shape() == high.shape() && low.device() == high.device(),
              "[split_master] {}: the low half must be 16-bit contiguous {} on {}, got {} on {}",
              what, shape_str(high.shape()), device_name(high.device()),
              low.defined() ? shape_str(low.shape()) : "undefined",
              low.defined() ? device_name(low.device()) : "-");
}

void split_master(const Tensor& value, const Tensor& high, const Tensor& low) {
  check_split(high, low, "split_master");
  DSEEK_CHECK(value.defined() && value.dtype() == DType::F32 && value.is_contiguous() &&
                  value.shape() == high.shape() && value.device() == high.device(),
              "[split_master] the master must be f32 contiguous {} on {}", shape_str(high.shape()),
              device_name(high.device()));
  const int64_t n = value.numel();
  if (value.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::split_master(value.data<float>(), static_cast<uint16_t*>(high.raw()),
                       static_cast<uint16_t*>(low.raw()), n);
    return;
#else
    cuda_not_built("split_master");
#endif
  }
  const float* v = value.data<float>();
  auto* h = static_cast<uint16_t*>(high.raw());
  auto* l = static_cast<uint16_t*>(low.raw());
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, v + i, 4);
    h[i] = split_high(bits);
    l[i] = split_low(bits);
  }
}

Tensor join_master(const Tensor& high, const Tensor& low) {
  check_split(high, low, "join_master");
  Tensor value = Tensor::empty(high.shape(), DType::F32, high.device());
  const int64_t n = value.numel();
  if (high.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::join_master(static_cast<const uint16_t*>(high.raw()),
                      static_cast<const uint16_t*>(low.raw()), value.data<float>(), n);
    return value;
#else
    cuda_not_built("join_master");
#endif
  }
  const auto* h = static_cast<const uint16_t*>(high.raw());
  const auto* l = static_cast<const uint16_t*>(low.raw());
  float* v = value.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = join_bits(h[i], l[i]);
    std::memcpy(v + i, &bits, 4);
  }
  return value;
}

}  // namespace dseek::ops
