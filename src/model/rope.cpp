#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "ops/rope.h"

namespace dseek {
namespace {

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// pos_freqs_j = θ^(2j/d), in f32 like `base ** (torch.arange(0, dim, 2).float() / dim)`.
std::vector<float> pos_freqs(double theta, int64_t dim) {
  std::vector<float> f(size_t(dim / 2));
  for (int64_t j = 0; j < dim / 2; ++j) {
    const float e = float(2 * j) / float(dim);
    f[size_t(j)] = std::pow(float(theta), e);
  }
  return f;
}

}  // namespace

RopeParams rope_params(const ModelConfig& config) {
  RopeParams p;
  p.dim = config.is_mla() ? config.qk_rope_head_dim : config.head_dim;
  DSEEK_CHECK(p.dim > 0 && p.dim % 2 == 0, "[rope] rotary dimension {} must be positive and even",
              p.dim);
  // V2 rotates complex pairs (x[2j], x[2j+1]); V3 de-interleaves when rope_interleave is set.
  p.interleaved = config.model_type == "deepseek_v2" ||
                  (config.model_type == "deepseek_v3" && config.rope_interleave);
  const RopeScaling& rs = config.rope_scaling;
  const std::vector<float> pf = pos_freqs(config.rope_theta, p.dim);
  p.inv_freq.resize(pf.size());
  if (rs.type == "default") {
    for (size_t j = 0; j < pf.size(); ++j) p.inv_freq[j] = 1.0f / pf[j];
  } else if (rs.type == "linear") {
    for (size_t j = 0; j < pf.size(); ++j) p.inv_freq[j] = (1.0f / pf[j]) / float(rs.factor);
  } else if (rs.type == "yarn") {
    const double factor = rs.factor;
    p.attention_scaling =
        (rs.mscale != 0.0 && rs.mscale_all_dim != 0.0)
            ? float(yarn_mscale(factor, rs.mscale) / yarn_mscale(factor, rs.mscale_all_dim))
            : float(yarn_mscale(factor, 1.0));
    const double beta_fast = rs.beta_fast != 0.0 ? rs.beta_fast : 32.0;
    const double beta_slow = rs.beta_slow != 0.0 ? rs.beta_slow : 1.0;
    const double max_pos = rs.original_max_position_embeddings > 0
                               ? double(rs.original_max_position_embeddings)
                               : double(config.max_position_embeddings);
    const double d = double(p.dim), base = config.rope_theta;
    auto correction_dim = [&](double rotations) {
      return d * std::log(max_pos / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
    };
    double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(beta_slow)), d - 1.0);
    if (low == high) high += 0.001;  // as transformers: avoid a zero-width ramp
    for (size_t j = 0; j < pf.size(); ++j) {
      // linear_ramp_factor in f32: (arange - low) / (high - low), clamped to [0, 1].
      float ramp = (float(j) - float(low)) / (float(high) - float(low));
      ramp = std::clamp(ramp, 0.0f, 1.0f);
      const float extrapolation_factor = 1.0f - ramp;
      const float inv_extra = 1.0f / pf[j];
      const float inv_inter = 1.0f / (float(factor) * pf[j]);
      p.inv_freq[j] = inv_inter * (1.0f - extrapolation_factor) + inv_extra * extrapolation_factor;
    }
  } else {
    fail("[rope] unsupported rope type '{}'", rs.type);
  }
  return p;
}

void apply_rope(const RopeParams& rope, const Tensor& x, int64_t pos0) {
  ops::rope_inplace(x, pos0, rope.inv_freq, rope.attention_scaling, rope.interleaved);
}

void apply_rope(const RopeParams& rope, const Tensor& x, const Tensor& positions) {
  ops::rope_inplace(x, positions, rope.inv_freq, rope.attention_scaling, rope.interleaved);
}

}  // namespace dseek
