// AdamW with decoupled weight decay, exactly as torch.optim.AdamW (default, non-amsgrad,
// non-maximize), plus global gradient-norm clipping as torch.nn.utils.clip_grad_norm_.
//
// One step at learning rate lr, for every trainable parameter p with gradient g, t = step count
// after the increment (1 on the first step), moments m, v kept in f32 and starting at zero:
//   p ← p · (1 − lr·λ)                      only where Param::decay (λ = weight_decay)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
// Note that ε is added after the bias correction of √v, as torch does (not to √v̂ before it).
// Buffers (trainable == false) are never touched.
//
// Clipping: n = √(Σ g²) over every trainable gradient (accumulated in double); if n > max_norm
// all gradients are multiplied by max_norm / (n + 1e-6). A non-finite n is returned unscaled so
// the caller can skip the step.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "train/param.h"

namespace dseek::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  // Zero moments for every trainable parameter of `params`, which must outlive the optimizer and
  // gain no parameters afterwards. Throws on betas outside [0, 1), eps ≤ 0 or weight_decay < 0.
  AdamW(ParamSet& params, AdamWConfig config);

  // One update with learning rate lr (finite, ≥ 0) on every trainable param using its grad.
  void step(double lr);
  int64_t step_count() const { return step_count_; }
  const AdamWConfig& config() const { return config_; }

  // Checkpoint state: "exp_avg.<param name>" and "exp_avg_sq.<param name>" (f32, the parameter's
  // shape) for every trainable parameter, in parameter order. The tensors share the live state.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Copies the moments back (converted to f32) and sets the step count; throws naming a missing
  // tensor or a shape mismatch, and changes nothing unless every tensor is valid.
  void load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count);

 private:
  ParamSet* params_;
  AdamWConfig config_;
  int64_t step_count_ = 0;
  std::vector<Tensor> exp_avg_;  // per parameter (same index); undefined for buffers
  std::vector<Tensor> exp_avg_sq_;
};

// The per-step scalars of the update above (t: the step count after the increment), rounded to f32
// once like torch's per-tensor Python floats, and the elementwise update of n elements. AdamW and
// the ZeRO-1 sharded optimizer (train/data_parallel.h) both step through these, so a sharded step
// is the same arithmetic element by element.
struct AdamWStep {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bias_correction2_sqrt, eps;
  double lr, weight_decay;
  float decay_factor(bool decay) const { return decay ? float(1.0 - lr * weight_decay) : 1.0f; }
};
AdamWStep adamw_step_scalars(const AdamWConfig& config, double lr, int64_t t);
void adamw_update(const AdamWStep& s, float decay_factor, float* value, const float* grad, float* m,
                  float* v, int64_t n);

// Global L2 norm over all trainable grads; scales them to max_norm when it is exceeded (and
// max_norm > 0). Returns the pre-clip norm.
double clip_grad_norm(ParamSet& params, double max_norm);

// Decay rule used when building ParamSets: false for norms (*norm.weight, which covers
// *layernorm.weight, enorm/hnorm of MTP) and biases (*.bias, *e_score_correction_bias); true for
// matrices and embeddings.
bool decays(const std::string& param_name);

}  // namespace dseek::train
