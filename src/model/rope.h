// RoPE parameters of a model, computed from its config exactly as transformers' ROPE_INIT_FUNCTIONS
// do (modeling_rope_utils.py): inverse frequencies for the rotary dimension (qk_rope_head_dim for
// MLA, head_dim otherwise) and the attention_scaling that multiplies cos/sin.
//   default: inv_freq_j = 1 / θ^(2j/d)
//   linear:  inv_freq_j / factor
//   yarn:    blend of extrapolated (1/θ^(2j/d)) and interpolated (that / factor) frequencies with a
//            linear ramp between the correction dims of beta_fast and beta_slow (floored/ceiled,
//            "truncate"), computed against original_max_position_embeddings; attention_scaling =
//            mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set, else
//            mscale(factor) = 0.1·ln(factor) + 1.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace dseek {

struct RopeParams {
  int64_t dim = 0;              // rotary dimension d
  std::vector<float> inv_freq;  // d/2 entries, f32 as transformers computes them
  float attention_scaling = 1.0f;
  bool interleaved = false;  // rope dims stored as pairs (2j, 2j+1): DeepSeek-V2/V3 checkpoints
};

RopeParams rope_params(const ModelConfig& config);

// Rotates x [T, H, d] in place for positions pos0 .. pos0 + T − 1.
void apply_rope(const RopeParams& rope, const Tensor& x, int64_t pos0);
// Rotates x [T, H, d] in place, row t at position positions[t] (i64 [T] on x's device).
void apply_rope(const RopeParams& rope, const Tensor& x, const Tensor& positions);

}  // namespace dseek
