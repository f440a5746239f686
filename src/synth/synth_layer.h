// A synthesised operator as a trainable layer [T, d_in] -> [T, d_out]: the operator, its weights
// and their gradients, forward and backward through the lowered plan (lower.h), so that a
// projection of a model (a train::MlpLayer linear) can be replaced by it.
//
// The operator must be token-wise: its first input and output dims are the token count T, the
// input's T coordinate is the output's T iterator itself and nothing else reads that iterator (no
// Shift, Unfold or Merge across tokens, no weight over T) — otherwise the layer would mix the
// tokens of a sequence, and across documents of a packed batch. Every other size is fixed by the
// valuation given at construction; T comes from each call (one plan per T, kept).
//
// Init (fan-in scaled normal): an output sums n = Π(reduce extents) terms, each the input times
// one value of each of the W weights, so weights drawn from N(0, σ²) with σ = n^(−1/(2W)) keep
// Var(y) ≈ Var(x) (σ = 1/√d_in for a dense linear, (r·d_in)^(−1/4) per factor of a low-rank one).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "core/tensor.h"
#include "synth/lower.h"
#include "synth/operator.h"

namespace dseek::synth {

struct SynthLayerCache {
  LoweredCache lowered;
  int64_t tokens = 0;
};

class SynthLayer {
 public:
  // `values`: a valuation of the operator's variables (its entry for `token_var` is ignored).
  // Throws dseek::Error if the operator is not a token-wise [T, ...] -> [T, ...] layer.
  SynthLayer(const Operator& op, const Vars& vars, Valuation values, int token_var, uint64_t seed);

  int64_t d_in() const { return d_in_; }
  int64_t d_out() const { return d_out_; }
  // f32 contiguous, in the operator's weight layouts (Share order), on the layer's device.
  std::vector<Tensor>& weights() { return weights_; }
  std::vector<Tensor>& grads() { return grads_; }
  int64_t param_count() const;
  void zero_grad();
  void to(Device device);  // weights and gradients

  // x [T, d_in] f32 on the weights' device -> y [T, d_out] f32; fills `cache` for backward.
  Tensor forward(const Tensor& x, SynthLayerCache& cache);
  // dy [T, d_out]: adds dW into grads(), returns dx [T, d_in].
  Tensor backward(const SynthLayerCache& cache, const Tensor& dy);

  // The lowered plan for `tokens` tokens (built once, kept): what forward/backward run. Training
  // (train/synth_override.h) runs it on weights held in a ParamSet instead of weights().
  const LoweredPlan& plan(int64_t tokens);

 private:

  Operator op_;
  Valuation values_;
  int token_var_;
  int64_t d_in_ = 0, d_out_ = 0;
  std::vector<Tensor> weights_, grads_;
  std::map<int64_t, LoweredPlan> plans_;
};

}  // namespace dseek::synth
