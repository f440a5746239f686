#include "train/scaling_law.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dseek::train {

double flops_per_token(int64_t n_layer, int64_t d_model, int64_t seq_len) {
  DSEEK_CHECK(n_layer >= 1, "[scaling] n_layer {} must be >= 1", n_layer);
  DSEEK_CHECK(d_model >= 1, "[scaling] d_model {} must be >= 1", d_model);
  DSEEK_CHECK(seq_len >= 1, "[scaling] seq_len {} must be >= 1", seq_len);
  const double L = double(n_layer), d = double(d_model), S = double(seq_len);
  return 72.0 * L * d * d + 6.0 * L * d * S;
}

ComputeBudgetChoice choose_from_compute_budget(double compute, int64_t n_layer, int64_t d_model,
                                               int64_t seq_len) {
  DSEEK_CHECK(std::isfinite(compute) && compute > 0.0,
              "[scaling] compute budget {} FLOPs must be a positive number", compute);
  ComputeBudgetChoice c;
  c.compute = compute;
  c.flops_per_token = flops_per_token(n_layer, d_model, seq_len);
  c.tokens = compute / c.flops_per_token;
  c.lr = 0.3118 * std::pow(compute, -0.1250);
  c.batch_tokens = 0.2920 * std::pow(compute, 0.3271);
  const double sequences = std::max(1.0, std::round(c.batch_tokens / double(seq_len)));
  const double steps = std::ceil(c.tokens / (sequences * double(seq_len)));
  DSEEK_CHECK(sequences < 1e15 && steps < 1e15,
              "[scaling] compute budget {} FLOPs is out of range: {} sequences per step, {} steps",
              compute, sequences, steps);
  c.batch_sequences = int64_t(sequences);
  c.steps = int64_t(steps);
  return c;
}

std::string ComputeBudgetChoice::describe() const {
  return fmt::format(
      "C={:.3g} FLOPs: M={:.3g} FLOPs/token, D={:.3g} tokens; lr={:.3g}, "
      "B_opt={:.3g} tokens -> {} sequences/step, {} steps",
      compute, flops_per_token, tokens, lr, batch_tokens, batch_sequences, steps);
}

}  // namespace dseek::train
