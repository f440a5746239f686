#include "model/linear_weight.h"

#include "model/safetensors.h"
#include "ops/fp8.h"
#include "ops/linear.h"

namespace dseek {

LinearWeight load_linear(const WeightStore& store, const std::string& name, const Shape& shape,
                         const Placement& placement) {
  // A checkpoint with other block sizes (quantization_config.weight_block_size) is dequantised:
  // the FP8 GEMM scales 128×128 blocks only.
  if (placement.fp8 == Fp8Weights::Keep && store.fp8_blocks_128() &&
      store.get(name).dtype() == DType::F8_E4M3) {
    WeightStore::Fp8Weight w = store.get_fp8_weight(name, shape);
    if (placement.device == Device::CPU) return {std::move(w.weight), std::move(w.scale_inv)};
    return {w.weight.to(placement.device), w.scale_inv.to(placement.device)};
  }
  return {place_weight(store.get_weight(name, shape), placement), Tensor()};
}

Tensor apply_linear(const Tensor& x, const LinearWeight& w, const Tensor& bias) {
  const Tensor* b = bias.defined() ? &bias : nullptr;
  if (!w.fp8()) return ops::linear(x, w.weight, b);
  return ops::linear_fp8(x, w.weight, w.scale_inv, b);
}

}  // namespace dseek
