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
//
// On the GPU (x on CUDA, every weight placed there) forward() is the device-side composition of
// ops/moe.h instead, with no host loop and no host synchronisation: the gate logits in f32,
// moe_route, moe_dispatch, moe_permute, grouped_linear for gate and up, silu_mul, grouped_linear
// for down, and moe_combine adding the shared experts' output. It sums each token's K products in
// the same ascending expert order. The expert matrices' address tables are built once, at
// construction.
//
// Expert-parallel inference (placement.experts over N > 1 ranks, model/placement.h): the layer
// holds only its rank's block of routed experts and never reads the others' tensors. Every rank
// routes every token, evaluates its local experts' weighted contributions (a token's local ones
// summed in ascending expert order), and the ranks' [T, D] f32 partial sums are added through the
// shard's deterministic process group (in rank order, so every rank gets the same bits); the
// shared experts are added after that sum, as transformers adds them after the routed output. On
// the GPU the partial sum makes a round trip through the host for the MPI sum (correct, not fast),
// and the non-local experts' matrices all point at one zero matrix per shape.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/gate.h"
#include "model/mlp.h"
#include "model/placement.h"
#include "ops/moe.h"

namespace dseek::dist {
class ProcessGroup;
}

namespace dseek {

class WeightStore;

class MoE {
 public:
  // Reads <prefix>.gate, <prefix>.experts.{e}.{gate,up,down}_proj.weight (the hub layout) and
  // <prefix>.shared_experts when n_shared_experts > 0, placed as `placement` says; only this
  // rank's routed experts under an expert shard.
  MoE(const ModelConfig& config, const WeightStore& weights, const std::string& prefix,
      const Placement& placement = Placement());
  // From parts (tests, training). experts.size() must equal the gate's n_routed_experts.
  MoE(Gate gate, std::vector<Mlp> experts, std::optional<Mlp> shared_experts);

  // x [T, D] -> [T, D] in x's dtype on x's device (f32 on the CPU; f32 or bf16 on the GPU, where
  // the parts must have been placed). Records the routing's per-expert load (see
  // last_expert_load) on the CPU only: on the GPU that would cost a host synchronisation per
  // layer, and last_expert_load() is left empty. Not safe to call concurrently on the same object
  // (the load record is shared).
  Tensor forward(const Tensor& x) const;
  // forward(x) + residual, and normed = its RMS norm with `norm_weight` (the next layer's input
  // norm: Block::finish's add_rms_norm). On the GPU without an expert shard the combine, the add
  // and the norm are one kernel (ops::moe_combine_add_rms_norm): the same bits as forward(x) then
  // ops::add_rms_norm.
  Tensor forward_add_norm(const Tensor& x, const Tensor& residual, const Tensor& norm_weight,
                          double eps, Tensor& normed) const;
  // The routed part only, for a given routing: Σ_k w[t,k] · expert[id[t,k]](x[t]) over this
  // rank's experts (all of them without a shard; no sum across ranks here). Tokens are
  // dispatched in chunks of `chunk_tokens` (0: sized to bound the scratch memory).
  Tensor forward_experts(const Tensor& x, const Routing& routing, int64_t chunk_tokens = 0) const;

  // Prefill runs experts in parallel (on by default); off, experts run one after another and
  // only the linear kernels are parallel (the baseline of bench/bench_moe).
  void set_parallel_experts(bool enabled) { parallel_experts_ = enabled; }

  // Tokens routed to each expert by the last CPU forward(): [E] (empty after a GPU forward).
  const std::vector<int64_t>& last_expert_load() const { return last_load_; }

  const Gate& gate() const { return gate_; }
  // The routed experts this rank holds: experts()[i] is expert expert_first() + i.
  const std::vector<Mlp>& experts() const { return experts_; }
  int64_t expert_first() const { return expert_first_; }
  // Bytes of the routed experts' weights this rank holds (as held: bf16 memory-mapped on the CPU,
  // the activation dtype on the GPU).
  int64_t routed_expert_bytes() const;
  const Mlp* shared_experts() const { return shared_ ? &*shared_ : nullptr; }

 private:
  void check_parts() const;
  void build_device_experts();
  // With `then` (forward_add_norm's residual and norm), returns the sum and sets *then->normed.
  struct ResidualNorm {
    const Tensor& residual;
    const Tensor& weight;
    double eps;
    Tensor& normed;
  };
  Tensor forward_device(const Tensor& x, const ResidualNorm* then = nullptr) const;

  // Adds the ranks' partial routed sums out [T, D] (on any device) in place; no-op unsharded.
  void sum_over_ranks(Tensor& out) const;

  Gate gate_;
  std::vector<Mlp> experts_;
  int64_t expert_first_ = 0;
  dist::ProcessGroup* group_ = nullptr;  // the expert shard's group; null when unsharded
  dist::ProcessGroup* device_group_ = nullptr;  // its GPU group (NCCL), where there is one
  std::optional<Mlp> shared_;
  // The routed experts' gate, up and down matrices as ops::ExpertMatrices; built only when the
  // experts live on the GPU.
  // On the GPU: every expert's stacked [gate_proj; up_proj] (Mlp::gate_up) and down_proj.
  ops::ExpertMatrices gate_up_mats_, down_mats_;
  bool on_device_ = false;
  bool parallel_experts_ = true;
  mutable std::vector<int64_t> last_load_;
};

}  // namespace dseek
