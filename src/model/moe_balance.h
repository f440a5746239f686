// Load-balancing statistics and losses of MoE routing, as pure functions of a Routing (its chosen
// experts and unbiased scores). Training adds the losses to the language-model loss and feeds the
// gradients (with respect to Routing::scores; the expert counts are not differentiable) back
// through the gate.
//
//   expert-level (DeepSeekMoE, hub MoEGate with seq_aux false), over all T tokens:
//     f_i = E/(K·T) · count_i,  P_i = (1/T) Σ_t s_{t,i},  L = α Σ_i f_i P_i
//   sequence-wise (DeepSeek-V3 eqs. 17–20; hub MoEGate with seq_aux true), per sequence of S
//   consecutive tokens, averaged over the T/S sequences:
//     f_i = E/(K·S) · count_i,  P_i = (1/S) Σ_t s'_{t,i},  L = α Σ_i f_i P_i
//     s' = s / Σ_j s_j when normalize_scores (V3's sigmoid affinities), else s' = s (the hub's
//     softmax gates, whose scores already sum to 1)
//   device-level (DeepSeekMoE), experts split into `devices` contiguous groups G_d of E/devices:
//     f'_d = (1/|G_d|) Σ_{i∈G_d} f_i,  P'_d = Σ_{i∈G_d} P_i,  L = α Σ_d f'_d P'_d
//   MaxVio = (max_i load_i − mean load) / mean load (auxiliary-loss-free balancing paper)
//   aux-loss-free bias update: b_i += γ · sign(mean load − load_i)
#pragma once

#include <cstdint>
#include <vector>

#include "model/gate.h"

namespace dseek {

struct BalanceLoss {
  double value = 0.0;
  std::vector<float> grad_scores;  // dL/ds, [T×E] like Routing::scores
};

BalanceLoss expert_balance_loss(const Routing& routing, double alpha);
BalanceLoss sequence_balance_loss(const Routing& routing, int64_t seq_len, double alpha,
                                  bool normalize_scores);
// The same over sequences of the given lengths, back to back (documents packed in one row each
// count as a sequence; empty ones are skipped).
BalanceLoss sequence_balance_loss(const Routing& routing, const std::vector<int64_t>& lengths,
                                  double alpha, bool normalize_scores);

BalanceLoss device_balance_loss(const Routing& routing, int64_t devices, double alpha);

double max_violation(const std::vector<int64_t>& load);

// One step of auxiliary-loss-free balancing on e_score_correction_bias ([E], as the Gate holds it).
void update_correction_bias(std::vector<float>& bias, const std::vector<int64_t>& load,
                            double gamma);

}  // namespace dseek
