// Next-token sampling with Hugging Face transformers' semantics, so `dseek generate` and
// `model.generate(...)` mean the same thing by the same flags. Logits pass through, in HF's order
// (generation/utils.py `_get_logits_processor`: processors first, then the warpers):
//   repetition penalty → temperature → top-k → top-p → min-p → softmax → draw.
// Greedy (temperature 0) is argmax after the repetition penalty, as HF's greedy search applies
// processors but no warpers. The sampler owns a seeded xoshiro256** stream (core/rng.h), so a seed
// gives the same tokens on every machine.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/rng.h"

namespace dseek {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax)
  int64_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off; must be in (0, 1]
  float min_p = 0.0f;               // 0 = off; must be in [0, 1]
  float repetition_penalty = 1.0f;  // 1 = off; must be > 0
  uint64_t seed = 0;

  bool greedy() const { return temperature == 0.0f; }
  // Throws dseek::Error "[sampler] <field>: ..." for out-of-range values.
  void validate() const;
};

// The individual processors, on a full row of logits [V] in place; filtered entries become -inf.
// `history` is every id seen so far (prompt included): HF's RepetitionPenaltyLogitsProcessor
// divides positive logits of seen ids by `penalty` and multiplies negative ones (each id once).
void apply_repetition_penalty(std::vector<float>& logits, std::span<const int32_t> history,
                              float penalty);
void apply_temperature(std::vector<float>& logits, float temperature);
// Keeps every logit >= the k-th largest (ties at the threshold survive, as in HF).
void apply_top_k(std::vector<float>& logits, int64_t top_k);
// HF TopPLogitsWarper: sort ascending, remove tokens whose cumulative probability is <= 1 - top_p;
// the most likely token always stays.
void apply_top_p(std::vector<float>& logits, float top_p);
// HF MinPLogitsWarper: remove tokens whose probability is < min_p · (max probability).
void apply_min_p(std::vector<float>& logits, float min_p);
// Softmax over the finite entries (filtered ones get probability 0), in double precision.
std::vector<double> softmax(const std::vector<float>& logits);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);  // validates

  const SamplingParams& params() const { return params_; }

  // The distribution the next token is drawn from, after every processor (for tests and tools).
  std::vector<double> distribution(std::span<const float> logits,
                                   std::span<const int32_t> history) const;
  // Picks the next token from one row of logits [V]. Advances the RNG unless greedy.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  std::vector<float> processed(std::span<const float> logits,
                               std::span<const int32_t> history) const;

  SamplingParams params_;
  Rng rng_;
};

}  // namespace dseek
