#include "infer/sampler.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace dseek {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

void SamplingParams::validate() const {
  DSEEK_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
              "[sampler] temperature: must be >= 0 (0 = greedy), got {}", temperature);
  DSEEK_CHECK(top_k >= 0, "[sampler] top_k: must be >= 0 (0 = off), got {}", top_k);
  DSEEK_CHECK(std::isfinite(top_p) && top_p > 0.0f && top_p <= 1.0f,
              "[sampler] top_p: must be in (0, 1], got {}", top_p);
  DSEEK_CHECK(std::isfinite(min_p) && min_p >= 0.0f && min_p <= 1.0f,
              "[sampler] min_p: must be in [0, 1], got {}", min_p);
  DSEEK_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f,
              "[sampler] repetition_penalty: must be > 0 (1 = off), got {}", repetition_penalty);
}

void apply_repetition_penalty(std::vector<float>& logits, std::span<const int32_t> history,
                              float penalty) {
  if (penalty == 1.0f) return;
  // HF gathers the seen ids' scores and scatters the penalised values back, so an id seen twice is
  // penalised once; remember which ids were done.
  std::vector<int32_t> seen(history.begin(), history.end());
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  for (int32_t id : seen) {
    DSEEK_CHECK(id >= 0 && size_t(id) < logits.size(),
                "[sampler] history: id {} is outside the vocabulary of {} logits", id,
                logits.size());
    float& x = logits[size_t(id)];
    x = x < 0.0f ? x * penalty : x / penalty;
  }
}

void apply_temperature(std::vector<float>& logits, float temperature) {
  assert(temperature > 0.0f);
  if (temperature == 1.0f) return;
  for (float& x : logits) x /= temperature;
}

void apply_top_k(std::vector<float>& logits, int64_t top_k) {
  if (top_k <= 0 || size_t(top_k) >= logits.size()) return;
  std::vector<float> values(logits);
  auto kth = values.begin() + (top_k - 1);
  std::nth_element(values.begin(), kth, values.end(), std::greater<float>());
  const float threshold = *kth;
  for (float& x : logits) {
    if (x < threshold) x = kNegInf;
  }
}

std::vector<double> softmax(const std::vector<float>& logits) {
  float max_logit = kNegInf;
  for (float x : logits) max_logit = std::max(max_logit, x);
  DSEEK_CHECK(max_logit > kNegInf, "[sampler] logits: every token was filtered out");
  std::vector<double> probs(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = logits[i] == kNegInf ? 0.0 : std::exp(double(logits[i]) - double(max_logit));
    total += probs[i];
  }
  for (double& p : probs) p /= total;
  return probs;
}

void apply_top_p(std::vector<float>& logits, float top_p) {
  if (top_p >= 1.0f) return;
  // Only finite entries matter: filtered ones have probability 0 and sit first in HF's ascending
  // sort.
  std::vector<int32_t> order;
  order.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] != kNegInf) order.push_back(int32_t(i));
  }
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return logits[size_t(a)] < logits[size_t(b)]; });
  const std::vector<double> probs = softmax(logits);
  const double limit = 1.0 - double(top_p);
  double cumulative = 0.0;
  for (size_t j = 0; j + 1 < order.size(); ++j) {  // the last (most likely) token always stays
    cumulative += probs[size_t(order[j])];
    if (cumulative > limit) break;
    logits[size_t(order[j])] = kNegInf;
  }
}

void apply_min_p(std::vector<float>& logits, float min_p) {
  if (min_p <= 0.0f) return;
  const std::vector<double> probs = softmax(logits);
  const double threshold = double(min_p) * *std::max_element(probs.begin(), probs.end());
  for (size_t i = 0; i < logits.size(); ++i) {
    // The most likely token has probability >= threshold (min_p <= 1), so one always survives.
    if (probs[i] < threshold) logits[i] = kNegInf;
  }
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

std::vector<float> Sampler::processed(std::span<const float> logits,
                                      std::span<const int32_t> history) const {
  DSEEK_CHECK(!logits.empty(), "[sampler] logits: empty row");
  std::vector<float> row(logits.begin(), logits.end());
  for (size_t i = 0; i < row.size(); ++i) {
    DSEEK_CHECK(!std::isnan(row[i]), "[sampler] logits: NaN at id {}", i);
  }
  apply_repetition_penalty(row, history, params_.repetition_penalty);
  if (params_.greedy()) return row;
  apply_temperature(row, params_.temperature);
  apply_top_k(row, params_.top_k);
  apply_top_p(row, params_.top_p);
  apply_min_p(row, params_.min_p);
  return row;
}

std::vector<double> Sampler::distribution(std::span<const float> logits,
                                          std::span<const int32_t> history) const {
  std::vector<float> row = processed(logits, history);
  if (params_.greedy()) {
    std::vector<double> one_hot(row.size(), 0.0);
    one_hot[size_t(std::max_element(row.begin(), row.end()) - row.begin())] = 1.0;
    return one_hot;
  }
  return softmax(row);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  std::vector<float> row = processed(logits, history);
  // std::max_element returns the first maximum, as torch.argmax does.
  if (params_.greedy()) return int32_t(std::max_element(row.begin(), row.end()) - row.begin());
  const std::vector<double> probs = softmax(row);
  const double u = rng_.uniform();
  double cumulative = 0.0;
  int32_t last_candidate = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0.0) continue;
    cumulative += probs[i];
    last_candidate = int32_t(i);
    if (u < cumulative) return int32_t(i);
  }
  return last_candidate;  // rounding left cumulative a hair below 1
}

}  // namespace dseek
