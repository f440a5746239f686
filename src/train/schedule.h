// Learning-rate schedules and piecewise-constant hyperparameter schedules.
//
// LrSchedule::at(s), s the 0-based optimizer step, P = peak_lr, m = min_lr, W = warmup_steps,
// N = total_steps. Every kind starts with the same linear warm-up, which reaches P on its last
// step so no step is spent at lr 0:
//   s < W:  lr = P · (s + 1) / W
// and after it:
//   "constant":  lr = P
//   "cosine":    lr = m + (P − m) · (1 + cos(π·u)) / 2,  u = (s − W) / (N − 1 − W)
//                (P on the first step after warm-up, exactly m on the last step N − 1)
//   "wsd":       DeepSeek-V3's warm-up / stable / decay: lr = P until step S =
//   round(decay_start·N),
//                then a cosine from P to m: lr = m + (P − m)·(1 + cos(π·u))/2, u = (s − S)/(N − 1 −
//                S). (V3 decays over its last ~30% of tokens and then holds two small constants;
//                the final constant stretch is left to min_lr here.)
//   "multistep": DeepSeek LLM: lr = P, then 0.316·P from step ⌈0.8·N⌉ (the first step with
//                s ≥ 0.8·N) and 0.1·P from ⌈0.9·N⌉. min_lr is not used.
// Steps past N − 1 keep the last step's value.
//
// StepSchedule: a piecewise-constant value (MTP weight λ, bias update speed γ, balance-loss α),
// written "v0" or "v0,v1@s1,v2@s2..." — v0 from step 0, v_i from step s_i on (s_i strictly
// increasing, > 0). DeepSeek-V3 uses λ = 0.3 for the first 10T tokens then 0.1: "0.3,0.1@N".
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dseek::train {

struct LrSchedule {
  std::string kind = "cosine";  // constant | cosine | wsd | multistep
  double peak_lr = 3e-4, min_lr = 3e-5;
  int64_t warmup_steps = 0, total_steps = 1;
  double decay_start = 0.8;  // wsd: fraction of total_steps where the decay begins

  // Learning rate of 0-based step `step` (≥ 0). Validates first.
  double at(int64_t step) const;
  // Throws "[schedule] ..." naming the field on an unknown kind, peak_lr ≤ 0, min_lr outside
  // [0, peak_lr], warmup_steps < 0 or > total_steps, total_steps < 1, decay_start outside (0, 1]
  // or a wsd decay that would start inside the warm-up.
  void validate() const;
};

class StepSchedule {
 public:
  StepSchedule() = default;
  explicit StepSchedule(double constant) : pieces_{{0, constant}} {}
  // Parses "0.3" or "0.3,0.1@800"; errors quote the text and the piece at fault.
  static StepSchedule parse(const std::string& text);
  // Value at 0-based step `step`; 0 for an empty (default-constructed) schedule.
  double at(int64_t step) const;
  // The canonical text, which parse() reads back to the same schedule.
  std::string str() const;

 private:
  std::vector<std::pair<int64_t, double>> pieces_;  // (from step, value), from steps increasing
};

}  // namespace dseek::train
