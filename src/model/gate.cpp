#include "model/gate.h"

#include <vector>

#include "core/error.h"
#include "model/safetensors.h"
#include "ops/device.h"
#include "ops/linear.h"

namespace dseek {

// How the chosen weights are post-processed; the three reference implementations disagree.
WeightRule routing_weight_rule(const ModelConfig& config) {
  WeightRule rule;
  if (config.model_type == "deepseek_v3") {
    // DeepseekV3MoE.route_tokens_to_experts: normalise if asked, then always scale.
    rule.normalise = config.norm_topk_prob;
    rule.scale = true;
  } else if (config.model_type == "deepseek_v2") {
    // DeepseekV2Moe.route_tokens_to_experts never reads norm_topk_prob and always scales. (The
    // hub's modeling_deepseek.py scales only when not normalising; every released V2 checkpoint
    // has norm_topk_prob false, where both agree.)
    rule.normalise = false;
    rule.scale = true;
  } else {
    // DeepSeekMoE 16B MoEGate: normalise only when K > 1; it has no routed_scaling_factor.
    rule.normalise = config.norm_topk_prob && config.num_experts_per_tok > 1;
    rule.scale = false;
  }
  return rule;
}

ops::MoeRouteParams route_params(const ModelConfig& config) {
  ops::MoeRouteParams p;
  p.experts = config.n_routed_experts;
  p.top_k = config.num_experts_per_tok;
  // validate_gate_config admits exactly these names.
  p.scoring =
      config.scoring_func == "sigmoid" ? ops::MoeScoring::Sigmoid : ops::MoeScoring::Softmax;
  p.method = config.topk_method == "noaux_tc"               ? ops::MoeTopK::NoauxTc
             : config.topk_method == "group_limited_greedy" ? ops::MoeTopK::GroupLimitedGreedy
                                                            : ops::MoeTopK::Greedy;
  p.n_group = config.n_group;
  p.topk_group = config.topk_group;
  const WeightRule rule = routing_weight_rule(config);
  p.normalise = rule.normalise;
  p.scale = rule.scale;
  p.routed_scaling_factor = float(config.routed_scaling_factor);
  return p;
}

std::vector<int64_t> Routing::expert_load() const {
  std::vector<int64_t> load(size_t(experts), 0);
  for (int32_t e : expert_ids) {
    DSEEK_CHECK(e >= 0 && e < experts, "[moe] routing names expert {}, there are {}", e, experts);
    ++load[size_t(e)];
  }
  return load;
}

void validate_gate_config(const ModelConfig& c, const std::string& source) {
  DSEEK_CHECK(
      c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2" || c.model_type == "deepseek",
      "[moe] {}: model_type '{}' has no MoE gate", source, c.model_type);
  DSEEK_CHECK(c.n_routed_experts > 0, "[moe] {}: n_routed_experts must be positive, got {}", source,
              c.n_routed_experts);
  DSEEK_CHECK(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.n_routed_experts,
              "[moe] {}: num_experts_per_tok {} must be in [1, n_routed_experts = {}]", source,
              c.num_experts_per_tok, c.n_routed_experts);
  DSEEK_CHECK(c.scoring_func == "softmax" || c.scoring_func == "sigmoid",
              "[moe] {}: unknown scoring_func '{}' (softmax or sigmoid)", source, c.scoring_func);
  DSEEK_CHECK(c.topk_method == "greedy" || c.topk_method == "group_limited_greedy" ||
                  c.topk_method == "noaux_tc",
              "[moe] {}: unknown topk_method '{}' (greedy, group_limited_greedy or noaux_tc)",
              source, c.topk_method);
  if (c.topk_method != "greedy") {
    DSEEK_CHECK(c.n_group >= 1 && c.n_routed_experts % c.n_group == 0,
                "[moe] {}: n_group {} must divide n_routed_experts {}", source, c.n_group,
                c.n_routed_experts);
    DSEEK_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group,
                "[moe] {}: topk_group {} must be in [1, n_group = {}]", source, c.topk_group,
                c.n_group);
  }
  if (c.topk_method == "noaux_tc") {
    // The group score sums the two best experts of each group.
    DSEEK_CHECK(c.n_routed_experts / c.n_group >= 2,
                "[moe] {}: noaux_tc needs at least 2 experts per group (n_routed_experts {} / "
                "n_group {})",
                source, c.n_routed_experts, c.n_group);
  }
}

Routing route_from_logits(const ModelConfig& config, const Tensor& logits,
                          const float* correction_bias) {
  validate_gate_config(config, "route_from_logits");
  const int64_t E = config.n_routed_experts, K = config.num_experts_per_tok;
  DSEEK_CHECK(logits.dim() == 2 && logits.size(1) == E,
              "[moe] router logits: shape {}, expected [T, {}]", shape_str(logits.shape()), E);
  const int64_t T = logits.size(0);
  // The op's CPU form (ops/cpu/moe.cpp) is the one implementation of the routing maths.
  // (Tensor::to(dtype) copies even to its own dtype: only bf16 logits are converted.)
  Tensor z = logits.to(Device::CPU);
  if (z.dtype() != DType::F32) z = z.to(DType::F32);
  const bool noaux = config.topk_method == "noaux_tc";
  const Tensor bias =
      noaux && correction_bias
          ? Tensor::from_vector(std::vector<float>(correction_bias, correction_bias + E), {E})
          : Tensor();
  const ops::MoeRouting m = ops::moe_route(z, route_params(config), bias);
  Routing r;
  r.tokens = T;
  r.top_k = K;
  r.experts = E;
  const int32_t* ids = m.ids.data<int32_t>();
  r.expert_ids.assign(ids, ids + T * K);
  r.weights = m.weights.to_vector();
  r.scores = m.scores.to_vector();
  return r;
}

Gate::Gate(const ModelConfig& config, const WeightStore& weights, const std::string& prefix,
           const Placement& placement)
    : config_(config), name_(prefix) {
  validate_gate_config(config, prefix);
  weight_ = place_f32(
      weights.get_weight(prefix + ".weight", {config.n_routed_experts, config.hidden_size}),
      placement);
  if (config.topk_method == "noaux_tc") {
    correction_bias_ =
        weights.get(prefix + ".e_score_correction_bias", {config.n_routed_experts}).to_vector();
  }
  if (!correction_bias_.empty())
    correction_bias_tensor_ =
        Tensor::from_vector(correction_bias_, {config.n_routed_experts}).to(weight_.device());
}

Gate::Gate(const ModelConfig& config, Tensor weight, std::vector<float> correction_bias,
           const std::string& name)
    : config_(config),
      name_(name),
      weight_(std::move(weight)),
      correction_bias_(std::move(correction_bias)) {
  validate_gate_config(config, name_);
  DSEEK_CHECK(weight_.dim() == 2 && weight_.size(0) == config.n_routed_experts &&
                  weight_.size(1) == config.hidden_size,
              "[moe] {}.weight: shape {}, expected [{}, {}]", name_, shape_str(weight_.shape()),
              config.n_routed_experts, config.hidden_size);
  DSEEK_CHECK(
      correction_bias_.empty() || int64_t(correction_bias_.size()) == config.n_routed_experts,
      "[moe] {}.e_score_correction_bias: {} values, expected {}", name_, correction_bias_.size(),
      config.n_routed_experts);
  if (!correction_bias_.empty())
    correction_bias_tensor_ =
        Tensor::from_vector(correction_bias_, {config.n_routed_experts}).to(weight_.device());
}

Tensor Gate::logits(const Tensor& x) const {
  ops::activation_dtype("moe gate", x);  // checks x's dtype
  DSEEK_CHECK(x.dim() == 2 && x.size(1) == config_.hidden_size,
              "[moe] {}: input shape {} ({}), expected [T, {}]", name_, shape_str(x.shape()),
              dtype_name(x.dtype()), config_.hidden_size);
  // transformers computes the router in f32 whatever the weight and activation dtypes: on the CPU
  // linear widens W to f32; on the GPU the placed weight is f32 and bf16 activations are widened.
  return ops::linear_widened(x, weight_);
}

Routing Gate::route(const Tensor& x) const {
  Tensor z = logits(x);
  if (z.is_cuda()) z = z.to(Device::CPU);
  return route_from_logits(config_, z,
                           correction_bias_.empty() ? nullptr : correction_bias_.data());
}

}  // namespace dseek
