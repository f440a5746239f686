// cross_entropy: fused log-softmax + negative log-likelihood over the vocabulary, mean reduction,
// as torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
//   lse_t  = log Σ_v exp(logits[t, v])                (max subtracted first: stable for large
//   logits) loss   = (1/N) Σ_{t: target_t ≠ ignore} (lse_t − logits[t, target_t]),   N = #counted
//   targets dlogits[t, v] = dloss · (exp(logits[t, v] − lse_t) − [v = target_t]) / N,  0 on ignored
//   rows
// logits [T, V] f32 (rows may be strided, the vocabulary contiguous). Nothing of size T·V is
// allocated besides the logits and, unless done in place, their gradient; each row is streamed
// (max, then Σ exp in double, then the gradient), in parallel over rows.
// On CUDA the logits may be f32 or bf16 (sums in f32, loss in f64, the gradient in the logits'
// dtype); targets and weights stay host vectors (checked on the host, uploaded per call), lse stays
// on the device and the loss comes back to the host.
// One deliberate difference from torch: when every target is ignored (N = 0) torch returns NaN;
// here the loss is 0 and the gradient 0, so a batch of prompt-only SFT rows cannot poison training.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

inline constexpr int32_t kIgnoreIndex = -100;

struct CrossEntropyResult {
  double loss = 0;    // mean over counted targets (0 when there are none)
  int64_t count = 0;  // N: targets not equal to ignore_index
  Tensor lse;         // [T] f32 log-sum-exp per row: what the backward needs
};

// Targets must lie in [0, V) or equal ignore_index.
CrossEntropyResult cross_entropy_forward(const Tensor& logits, const std::vector<int32_t>& targets,
                                         int32_t ignore_index = kIgnoreIndex);

// dlogits [T, V] f32 contiguous for an upstream gradient dloss of the (mean) loss.
Tensor cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets,
                              const CrossEntropyResult& forward, float dloss = 1.0f,
                              int32_t ignore_index = kIgnoreIndex);
// The same written over the logits (llm.c style: the [T, V] buffer is reused for its gradient).
void cross_entropy_backward_inplace(const Tensor& logits, const std::vector<int32_t>& targets,
                                    const CrossEntropyResult& forward, float dloss = 1.0f,
                                    int32_t ignore_index = kIgnoreIndex);

// Per-token weighted form (DPO's gradient is a weighted cross-entropy over response tokens):
//   loss = Σ_t weights[t] · (lse_t − logits[t, target_t])   (a sum; ignored rows count 0)
// and its gradient dlogits[t] = weights[t] · (softmax_t − onehot_t), written over the logits.
// The mean cross-entropy is the case weights[t] = 1/N. weights has one entry per row.
double weighted_cross_entropy_loss(const Tensor& logits, const std::vector<int32_t>& targets,
                                   const CrossEntropyResult& forward,
                                   const std::vector<float>& weights,
                                   int32_t ignore_index = kIgnoreIndex);
void weighted_cross_entropy_backward_inplace(const Tensor& logits,
                                             const std::vector<int32_t>& targets,
                                             const CrossEntropyResult& forward,
                                             const std::vector<float>& weights,
                                             int32_t ignore_index = kIgnoreIndex);

}  // namespace dseek::ops
