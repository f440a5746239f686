// Mlp: the SwiGLU feed-forward block of every DeepSeek model, used as the dense MLP of the first
// layers, as each routed expert and as the shared experts:
//   y = down_proj(silu(gate_proj(x)) ⊙ up_proj(x))
// Weights stay in their stored dtype (bf16 from a memory-mapped checkpoint is used in place); an
// FP8 checkpoint weight stays FP8 under Fp8Weights::Keep (ops::linear_fp8) and is dequantised by
// WeightStore::get_weight otherwise (MoE loads routed experts that way). Optional biases
// (<prefix>.<proj>.bias, mlp_bias in DeepseekV2MLP) are used when the checkpoint has them.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "model/linear_weight.h"
#include "model/placement.h"

namespace dseek {

class WeightStore;

class Mlp {
 public:
  // Reads <prefix>.{gate,up,down}_proj.weight with shapes [I, D], [I, D], [D, I], placed (weights
  // and biases) as `placement` says.
  Mlp(const WeightStore& weights, const std::string& prefix, int64_t hidden, int64_t intermediate,
      const Placement& placement = Placement());
  // From tensors (tests, training): gate/up [I, D], down [D, I]; biases optional.
  Mlp(Tensor gate_proj, Tensor up_proj, Tensor down_proj, const std::string& name = "mlp");

  // x [T, D] -> [T, D] on x's device in x's dtype (f32, or f32/bf16 on the GPU). T may be 0.
  Tensor forward(const Tensor& x) const;

  int64_t hidden() const { return hidden_; }
  int64_t intermediate() const { return intermediate_; }
  // The weights as held: F8_E4M3 when fp8() (their scales are gate().scale_inv, ...).
  const Tensor& gate_proj() const { return gate_proj_.weight; }
  const Tensor& up_proj() const { return up_proj_.weight; }
  const Tensor& down_proj() const { return down_proj_.weight; }
  const LinearWeight& gate() const { return gate_proj_; }
  const LinearWeight& up() const { return up_proj_; }
  const LinearWeight& down() const { return down_proj_; }
  bool fp8() const { return gate_proj_.fp8() || up_proj_.fp8() || down_proj_.fp8(); }
  bool has_bias() const {
    return gate_bias_.defined() || up_bias_.defined() || down_bias_.defined();
  }
  // On a GPU (plain weights, no biases): gate_proj and up_proj stacked [2I, D] in one allocation,
  // gate_proj() and up_proj() being its two row halves, so the two projections are one product
  // (one GEMV launch when decoding) and silu_mul reads its halves in place. Undefined otherwise.
  const Tensor& gate_up() const { return gate_up_; }

 private:
  void check_shapes() const;

  std::string name_;
  int64_t hidden_ = 0, intermediate_ = 0;
  LinearWeight gate_proj_, up_proj_, down_proj_;
  Tensor gate_bias_, up_bias_, down_bias_;  // undefined when absent
  Tensor gate_up_;                          // see gate_up()
};

}  // namespace dseek
