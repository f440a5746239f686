// LinearWeight: one projection's weight as the model multiplies by it. Either a plain weight
// (f32/bf16/f16, or the activation dtype on the GPU) for ops::linear, or, for a DeepSeek-V3 FP8
// checkpoint loaded with Placement::fp8 == Fp8Weights::Keep, the F8_E4M3 weight as stored and its
// weight_scale_inv (f32, one per 128×128 block) for ops::linear_fp8, which quantises the
// activations per 1×128 tile and never dequantises W in memory.
#pragma once

#include <string>

#include "core/tensor.h"
#include "model/placement.h"

namespace dseek {

class WeightStore;

struct LinearWeight {
  Tensor weight;     // [out, in]
  Tensor scale_inv;  // FP8 only: F32 [ceil(out/128), ceil(in/128)], on the weight's device

  bool defined() const { return weight.defined(); }
  bool fp8() const { return scale_inv.defined(); }
};

// Reads `name` ([out, in], shape-checked). An F8_E4M3 weight stays FP8 under Fp8Weights::Keep
// when the checkpoint's blocks are 128×128 (WeightStore::get_fp8_weight: errors name the tensor),
// and the pair is copied to the device as is; anything else is WeightStore::get_weight (FP8
// dequantised, whatever the block size) then place_weight.
LinearWeight load_linear(const WeightStore& store, const std::string& name, const Shape& shape,
                         const Placement& placement);

// y = x · Wᵀ (+ bias): ops::linear, or ops::linear_fp8 for an FP8 weight. x [..., in] on the
// weight's device; y [..., out] in x's dtype. `bias` may be undefined.
Tensor apply_linear(const Tensor& x, const LinearWeight& w, const Tensor& bias = Tensor());

}  // namespace dseek
