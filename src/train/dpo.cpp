#include "train/dpo.h"

#include <cmath>

#include "core/error.h"

namespace dseek::train {
namespace {

double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

}  // namespace

void DpoStats::add(const DpoStats& o) {
  loss += o.loss;
  reward_chosen += o.reward_chosen;
  reward_rejected += o.reward_rejected;
  margin += o.margin;
  accuracy += o.accuracy;
  logp_chosen += o.logp_chosen;
  logp_rejected += o.logp_rejected;
  pairs += o.pairs;
}

DpoStats DpoStats::mean() const {
  DpoStats m = *this;
  const double n = pairs > 0 ? double(pairs) : 1.0;
  m.loss /= n;
  m.reward_chosen /= n;
  m.reward_rejected /= n;
  m.margin /= n;
  m.accuracy /= n;
  m.logp_chosen /= n;
  m.logp_rejected /= n;
  return m;
}

double sequence_logp(const std::vector<double>& token_logp, int64_t begin, int64_t end) {
  DSEEK_CHECK(0 <= begin && begin <= end && end <= int64_t(token_logp.size()),
              "[dpo] token range [{}, {}) outside the batch of {}", begin, end, token_logp.size());
  double s = 0;
  for (int64_t t = begin; t < end; ++t) s += token_logp[size_t(t)];
  return s;
}

DpoStats dpo_loss(const std::vector<double>& token_logp, const std::vector<DpoPair>& pairs,
                  const std::vector<std::pair<double, double>>& ref, double beta,
                  std::vector<float>& weights) {
  DSEEK_CHECK(ref.size() == pairs.size(), "[dpo] {} reference log-probs for {} pairs", ref.size(),
              pairs.size());
  weights.assign(token_logp.size(), 0.0f);
  DpoStats s;
  const double n = pairs.empty() ? 1.0 : double(pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    const DpoPair& p = pairs[i];
    const double pc = sequence_logp(token_logp, p.chosen_begin, p.chosen_end);
    const double pr = sequence_logp(token_logp, p.rejected_begin, p.rejected_end);
    const double rc = beta * (pc - ref[i].first), rr = beta * (pr - ref[i].second);
    const double z = rc - rr;
    s.loss += softplus(-z);
    s.reward_chosen += rc;
    s.reward_rejected += rr;
    s.margin += z;
    s.accuracy += rc > rr ? 1.0 : 0.0;
    s.logp_chosen += pc;
    s.logp_rejected += pr;
    ++s.pairs;
    // Loss = −Σ_t w_t·log p_t: ∂/∂log p_t = −w_t = ∂(mean loss)/∂log π(y).
    const float w = float(beta * sigmoid(-z) / n);
    for (int64_t t = p.chosen_begin; t < p.chosen_end; ++t) weights[size_t(t)] = w;
    for (int64_t t = p.rejected_begin; t < p.rejected_end; ++t) weights[size_t(t)] = -w;
  }
  return s;
}

}  // namespace dseek::train
