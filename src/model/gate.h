// MoE gate (router): picks K of the E routed experts for every token and the weights that combine
// their outputs. Semantics follow Hugging Face transformers 5.x and the hub code exactly:
//
//   logits = x · Wᵀ in f32                        (W = <prefix>.weight, [E, D])
//   s      = softmax(logits) | sigmoid(logits)    (scoring_func)
//   c      = s + e_score_correction_bias          (noaux_tc only; the bias steers SELECTION only)
//   groups (n_group of E/n_group experts): group score = max of c in the group
//          (group_limited_greedy) or the sum of its top-2 c (noaux_tc); keep the best topk_group
//          groups and set c = 0 elsewhere (transformers uses masked_fill(…, 0.0), not -inf)
//   ids    = top-K of c (greedy: top-K of s)
//   w      = s[ids] for noaux_tc (unbiased), else the masked c[ids] (= s[ids] for kept groups)
//   then per model_type (where the implementations differ, see gate.cpp):
//     deepseek_v3  (DeepseekV3MoE.route_tokens_to_experts): w /= Σw + 1e-20 if norm_topk_prob;
//                  always w *= routed_scaling_factor
//     deepseek_v2  (DeepseekV2Moe.route_tokens_to_experts): norm_topk_prob is ignored;
//                  always w *= routed_scaling_factor
//     deepseek     (DeepSeekMoE 16B hub MoEGate): w /= Σw + 1e-20 if K > 1 and norm_topk_prob;
//                  routed_scaling_factor is not applied
//
// Ties between equal scores go to the lower index (torch.topk's order on CPU in practice).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/placement.h"
#include "ops/moe.h"

namespace dseek {

class WeightStore;

// The routing decision for T tokens.
struct Routing {
  std::vector<int32_t> expert_ids;  // [T×K] row-major; per token in descending selection score
  std::vector<float> weights;       // [T×K] combine weights (normalised/scaled as above)
  std::vector<float> scores;        // [T×E] unbiased affinities s, for balance losses/statistics
  int64_t tokens = 0, top_k = 0, experts = 0;

  int32_t expert(int64_t t, int64_t k) const { return expert_ids[size_t(t * top_k + k)]; }
  float weight(int64_t t, int64_t k) const { return weights[size_t(t * top_k + k)]; }
  // Tokens routed to each expert: [E].
  std::vector<int64_t> expert_load() const;
};

// How the chosen weights are post-processed (the rules above, per model_type): w /= Σw + 1e-20
// when `normalise`, then w *= routed_scaling_factor when `scale`. Training differentiates them.
struct WeightRule {
  bool normalise = false;
  bool scale = false;
};
WeightRule routing_weight_rule(const ModelConfig& config);

// The same routing as parameters of the device-side ops::moe_route (scoring, top-k method, groups
// and the weight rule of routing_weight_rule).
ops::MoeRouteParams route_params(const ModelConfig& config);

// Checks the routing fields of a config (experts, top-k, groups, scoring_func, topk_method,
// model_type); throws "[moe] <source>: <field> ..." on invalid values.
void validate_gate_config(const ModelConfig& config, const std::string& source);

// Routes from precomputed logits [T, E] (f32, any strides). correction_bias: nullptr or E values,
// used by noaux_tc (nullptr means zeros).
Routing route_from_logits(const ModelConfig& config, const Tensor& logits,
                          const float* correction_bias);

class Gate {
 public:
  // Reads <prefix>.weight [E, D] (kept in its stored dtype on the CPU; f32 under a GPU placement)
  // and, for noaux_tc, <prefix>.e_score_correction_bias [E].
  Gate(const ModelConfig& config, const WeightStore& weights, const std::string& prefix,
       const Placement& placement = Placement());
  // From tensors (tests, training): weight [E, D]; correction_bias empty or E values.
  Gate(const ModelConfig& config, Tensor weight, std::vector<float> correction_bias,
       const std::string& name = "gate");

  // x [T, D] (f32, or f32/bf16 on the GPU, where the weight must be there too) -> [T, E] f32 on
  // x's device: the router runs in f32 whatever the activation dtype, as in transformers.
  Tensor logits(const Tensor& x) const;
  Routing route(const Tensor& x) const;  // on the host, whatever x's device

  const ModelConfig& config() const { return config_; }
  const Tensor& weight() const { return weight_; }
  const std::vector<float>& correction_bias() const { return correction_bias_; }
  // correction_bias() as an [E] f32 tensor on the weight's device (undefined when empty), the
  // form ops::moe_route takes.
  const Tensor& correction_bias_tensor() const { return correction_bias_tensor_; }

 private:
  ModelConfig config_;
  std::string name_;
  Tensor weight_;
  std::vector<float> correction_bias_;  // empty unless noaux_tc
  Tensor correction_bias_tensor_;
};

}  // namespace dseek
