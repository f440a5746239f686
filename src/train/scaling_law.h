// DeepSeek LLM scaling laws (DeepSeek LLM paper, §3): pick the batch size, learning rate and
// training length for a compute budget.
//
// Model scale is measured as non-embedding FLOPs per token (the paper's M, which unlike 6·N
// counts the attention over the context but not the vocabulary projection):
//   M = 72·n_layer·d_model² + 6·n_layer·d_model·seq_len
// For a compute budget C (FLOPs), the fitted near-optimal hyperparameters are
//   η_opt = 0.3118 · C^−0.1250          (learning rate)
//   B_opt = 0.2920 · C^0.3271           (batch size in tokens)
// and the data follow from the budget: D = C / M tokens.
// The batch is realised as whole sequences, batch_sequences = max(1, round(B_opt / seq_len)), and
// steps = ⌈D / (batch_sequences·seq_len)⌉, so the run consumes at least D tokens.
#pragma once

#include <cstdint>
#include <string>

namespace dseek::train {

// Non-embedding FLOPs per token, M above.
double flops_per_token(int64_t n_layer, int64_t d_model, int64_t seq_len);

struct ComputeBudgetChoice {
  double compute = 0.0;          // C, FLOPs
  double flops_per_token = 0.0;  // M
  double tokens = 0.0;           // D = C / M
  double batch_tokens = 0.0;     // B_opt from the law (before rounding to whole sequences)
  double lr = 0.0;               // η_opt
  int64_t batch_sequences = 0;   // sequences per optimizer step
  int64_t steps = 0;             // optimizer steps
  // One line for logs: "C=1e+17 FLOPs: M=5.66e+08 FLOPs/token, D=1.77e+08 tokens, ...".
  std::string describe() const;
};

// Throws "[scaling] ..." naming the argument when C is not a finite positive number or a shape
// value is < 1.
ComputeBudgetChoice choose_from_compute_budget(double compute, int64_t n_layer, int64_t d_model,
                                               int64_t seq_len);

}  // namespace dseek::train
