// MoE: the DeepSeekMoE feed-forward block of MoE layers (DeepseekV3MoE / DeepseekV2Moe /
// DeepSeekMoE 16B DeepseekMoE): a gate picks K routed experts per token, each token's output is
// the weighted sum of its experts' outputs, plus the always-on shared experts (one Mlp of width
// moe_intermediate_size · n_shared_experts) when n_shared_experts > 0.
//
// Dispatch: tokens are grouped by expert with a counting sort, each expert runs once on the rows
// routed to it (gather, Mlp, scale by the routing weight), and every token then sums its K
// contributions in ascending expert order, as transformers' index_add_ loop does. The sum is
// therefore deterministic whatever the thread count. Prefill parallelises over experts (OpenMP);
// decode (one token) leaves parallelism to the linear kernels.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/gate.h"
#include "model/mlp.h"

namespace dseek {

class WeightStore;

class MoE {
 public:
  // Reads <prefix>.gate, <prefix>.experts.{e}.{gate,up,down}_proj.weight (the hub layout) and
  // <prefix>.shared_experts when n_shared_experts > 0.
  MoE(const ModelConfig& config, const WeightStore& weights, const std::string& prefix);
  // From parts (tests, training). experts.size() must equal the gate's n_routed_experts.
  MoE(Gate gate, std::vector<Mlp> experts, std::optional<Mlp> shared_experts);

  // x [T, D] f32 -> [T, D] f32. Records the routing's per-expert load (see last_expert_load).
  // Not safe to call concurrently on the same object (the load record is shared).
  Tensor forward(const Tensor& x) const;
  // The routed part only, for a given routing: Σ_k w[t,k] · expert[id[t,k]](x[t]). Tokens are
  // dispatched in chunks of `chunk_tokens` (0: sized to bound the scratch memory).
  Tensor forward_experts(const Tensor& x, const Routing& routing, int64_t chunk_tokens = 0) const;

  // Prefill runs experts in parallel (on by default); off, experts run one after another and
  // only the linear kernels are parallel (the baseline of bench/bench_moe).
  void set_parallel_experts(bool enabled) { parallel_experts_ = enabled; }

  // Tokens routed to each expert by the last forward(): [E].
  const std::vector<int64_t>& last_expert_load() const { return last_load_; }

  const Gate& gate() const { return gate_; }
  const std::vector<Mlp>& experts() const { return experts_; }
  const Mlp* shared_experts() const { return shared_ ? &*shared_ : nullptr; }

 private:
  void check_parts() const;

  Gate gate_;
  std::vector<Mlp> experts_;
  std::optional<Mlp> shared_;
  bool parallel_experts_ = true;
  mutable std::vector<int64_t> last_load_;
};

}  // namespace dseek
