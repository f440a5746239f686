#include "model/placement.h"

#include "core/cuda.h"
#include "core/error.h"

namespace dseek {
namespace {

Tensor to_device(const Tensor& weight, DType dtype, Device device) {
  if (!weight.defined()) return weight;
  // Convert on the host first: the file's bytes are memory-mapped there, and a bf16 checkpoint
  // under a bf16 placement is copied straight to the GPU without a host copy.
  const Tensor converted = weight.dtype() == dtype ? weight : weight.to(dtype);
  return converted.to(device);
}

}  // namespace

void validate(const Placement& placement) {
  DSEEK_CHECK(placement.act == DType::F32 || placement.act == DType::BF16,
              "[model] placement: activations must be f32 or bf16, got {}",
              dtype_name(placement.act));
  if (placement.device == Device::CUDA) {
    cuda::require("a model placed on the GPU");
  } else {
    DSEEK_CHECK(placement.act == DType::F32,
                "[model] placement: activations on the CPU are f32, got {}",
                dtype_name(placement.act));
  }
}

Tensor place_weight(const Tensor& weight, const Placement& placement) {
  if (placement.device == Device::CPU) return weight;
  return to_device(weight, placement.act, placement.device);
}

Tensor place_f32(const Tensor& weight, const Placement& placement) {
  if (placement.device == Device::CPU) return weight;
  return to_device(weight, DType::F32, placement.device);
}

}  // namespace dseek
