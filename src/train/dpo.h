// Direct Preference Optimization (Rafailov et al. 2023), as DeepSeek LLM's chat models were
// aligned after SFT. For a pair (prompt x, chosen y_c, rejected y_r), with log π(y|x) the sum of
// the response tokens' log-probabilities under the policy and ref those of the frozen reference
// (the initial model, computed once before training):
//   z = β·[(log π(y_c) − ref_c) − (log π(y_r) − ref_r)],   loss = −log σ(z) = softplus(−z)
//   ∂loss/∂log π(y_c) = −β·σ(−z),   ∂loss/∂log π(y_r) = +β·σ(−z)
// Since log π(y) = −Σ_t CE_t, the gradient is a per-token weighted cross-entropy: weight
// +β·σ(−z) on chosen tokens and −β·σ(−z) on rejected ones (divided by the pairs averaged over),
// which TrainModel runs through LossOptions::token_weights. Metrics as TRL reports them:
// rewards/chosen = β(log π(y_c) − ref_c), rewards/rejected likewise, margins = their difference,
// accuracies = the fraction of pairs whose chosen reward is the larger.
#pragma once

#include <cstdint>
#include <vector>

namespace dseek::train {

// Where a pair's responses lie in a batch: token ranges [begin, end) of the chosen and rejected
// segments (only their non-ignored targets carry log-probs).
struct DpoPair {
  int64_t chosen_begin = 0, chosen_end = 0, rejected_begin = 0, rejected_end = 0;
};

struct DpoStats {
  double loss = 0, reward_chosen = 0, reward_rejected = 0, margin = 0, accuracy = 0;
  double logp_chosen = 0, logp_rejected = 0;
  int64_t pairs = 0;
  void add(const DpoStats& other);  // sums (means over pairs once divided by pairs)
  DpoStats mean() const;
};

// Σ token_logp over [begin, end).
double sequence_logp(const std::vector<double>& token_logp, int64_t begin, int64_t end);

// Loss and metrics of `pairs` (sums over them, see DpoStats), and the per-token weights of the
// mean loss over the pairs (0 outside the responses). ref holds (ref_c, ref_r) per pair.
DpoStats dpo_loss(const std::vector<double>& token_logp, const std::vector<DpoPair>& pairs,
                  const std::vector<std::pair<double, double>>& ref, double beta,
                  std::vector<float>& weights);

}  // namespace dseek::train
