// Expert parallelism (DeepSeek-V3 §3.1 style, on CPU ranks over MPI): the routed experts of every
// MoE layer are spread over groups of N consecutive ranks of a dist::ProcessGroup of W ranks (N
// divides W; W/N groups, data-parallel across them), rank r of a group owning the contiguous slice
// [r·E/N, (r+1)·E/N); everything else (attention, norms, gates, shared experts, embedding, head)
// stays replicated and data-parallel (train/data_parallel.h). The token exchanges run on the
// expert-parallel group's own communicator (ProcessGroup::split: the N ranks of one group), the
// replicas of an expert slice reduce its gradients on theirs (the W/N ranks of the same position),
// and the routing statistics are summed over the world; so every rank of the world must run the
// same MoE layers in the same order.
//
// A step on N ranks (rank r holds its slice of the global batch, as in data parallelism):
//   dispatch: each MoE layer routes its own tokens, sorts the (token, k) slots by expert (so they
//             are grouped by owner too), exchanges the per-expert row counts (an int64
//             all-to-all), then the slots' hidden rows (an f32 all-to-all-v): capacity-free,
//             nothing is dropped;
//   experts:  the owner runs each local expert once on its rows from every source rank, in rank
//             order, which is the global batch's token order (the rows a single process sees);
//   combine:  the outputs go back by the reverse exchange and are weighted and summed per token in
//             the original order (moe_layer_host.cpp);
//   backward: the weighted output gradients travel the dispatch path, the input gradients the
//             combine path; each expert's weight gradient is complete on its owner (it saw every
//             rank's rows) and is never all-reduced.
// Routing statistics (the loads that drive the auxiliary-loss-free bias, the expert-/device-level
// balance losses) are summed over the ranks so every rank sees the global batch's. With W/N > 1
// groups each expert has W/N replicas (rank r of every group): their gradients, each over its own
// group's tokens, are summed (ExpertShard::reduce_grads) and each replica takes the same step.
//
// Node-limited routing: with a group-limited gate (group_limited_greedy, noaux_tc) whose n_group
// groups are whole multiples of a rank's slice (n_group divisible by N), the topk_group groups a
// token may use lie on at most topk_group ranks: DeepSeek-V3's "each token to at most M nodes"
// with M = topk_group and ranks standing for nodes. node_limit() gives the bound a config
// guarantees.
//
// The optimizer of the expert slice (ExpertShard) is plain AdamW on the owned experts; the global
// gradient norm adds their squares to the data-parallel shards' (DataParallel::clip_grad_norm's
// `extra`). Checkpoints hold every expert: values and moments are gathered to rank 0 first.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dist/process_group.h"
#include "model/config.h"
#include "model/moe_balance.h"
#include "train/optimizer.h"
#include "train/param.h"

namespace dseek::train {

struct ExpertParallel {
  dist::ProcessGroup* group = nullptr;  // the world (W ranks): statistics, checkpoints
  // Subgroups of the world (shared: LossOptions and ExpertShard hold copies of this struct).
  std::shared_ptr<dist::ProcessGroup> exchange;  // this rank's expert-parallel group (N ranks)
  std::shared_ptr<dist::ProcessGroup> replica;   // the W/N ranks holding the same expert slice
  int64_t experts = 0;                  // E, routed experts per MoE layer
  int size = 1;                         // N, ranks per expert-parallel group

  int ranks() const { return size; }
  int rank() const { return group->rank() % size; }      // within its expert-parallel group
  int base() const { return group->rank() - rank(); }    // world rank of its group's rank 0
  int replicas() const { return group->size() / size; }  // W/N groups
  int64_t per_rank() const { return experts / ranks(); }
  // The rank (within a group; in the world, that of group 0) owning an expert.
  int owner(int64_t expert) const { return int(expert / per_rank()); }
  int64_t first() const { return int64_t(rank()) * per_rank(); }  // this rank's first expert
  bool owns(int64_t expert) const { return owner(expert) == rank(); }
};

// Expert parallelism in groups of `size` ranks of `group` for `config` (checks: MoE layers exist,
// size divides the world and E). Collective: it splits the two subgroups off `group`.
ExpertParallel make_expert_parallel(dist::ProcessGroup& group, const ModelConfig& config, int size);

// The most ranks one token's experts can be on under `config`'s gate with E experts over `ranks`
// ranks: topk_group · (ranks a group spans) for a group-limited gate, else min(ranks, top-k).
int64_t node_limit(const ModelConfig& config, int64_t ranks);

// The routed expert a parameter belongs to ("….mlp.experts.<e>.<proj>.weight"), −1 for others.
int64_t routed_expert_of(const std::string& name);

// The expert-level (devices = E) or device-level balance loss of a MoE layer over the global
// batch: the per-group counts, score sums and token counts of every rank's routing are summed (an
// f64 all-reduce, so every rank calls it for the same layers in the same order); the value is the
// global L on every rank, the gradient that of L for this rank's scores times W (each rank's
// backward scales by 1/W). (moe_layer_ep.cpp)
BalanceLoss global_balance_loss(const ExpertParallel& ep, const Routing& routing, int64_t devices,
                                double alpha);

// AdamW over this rank's routed experts (ops::adamw_step, the arithmetic of AdamW::step, on the
// parameters' device), and the gathers a checkpoint needs (through ExpertParallel::group: on GPUs
// the NCCL group, whose gathers move device memory).
class ExpertShard {
 public:
  ExpertShard(const ExpertParallel& ep, ParamSet& params, AdamWConfig config);

  // Collective: with several expert-parallel groups, each owned expert's gradient summed over
  // its replicas (an all-reduce of every expert's slot, zeros where a rank owns none).
  void reduce_grads();
  // The owned experts' gradients (clipped in place with the global norm by the caller; in the
  // norm once, from group 0), where the parameters live.
  std::vector<Tensor> grads();
  void step(double lr);
  int64_t step_count() const { return step_count_; }

  // Collective: every expert's current value copied from its owner in group 0 into rank 0's
  // ParamSet (other ranks' copies of experts they do not own stay stale; nothing reads them).
  void gather_values();
  // Collective: on rank 0, "exp_avg.<name>" / "exp_avg_sq.<name>" of every routed expert in
  // ParamSet order; empty elsewhere.
  std::vector<std::pair<std::string, Tensor>> gather_state();
  // From full moment tensors (a checkpoint of any rank count): keeps the owned experts'.
  void load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count);

 private:
  struct Slot {
    Param* param;
    int owner;
    Tensor m, v;  // owned experts only: f32 moments on the parameter's device
  };
  // Moves the moments to where the parameters now are (the trainer moves the ParamSet to the GPU
  // after building the optimizers).
  void follow_params();
  const ExpertParallel& ep_;
  AdamWConfig config_;
  std::vector<Slot> slots_;  // every routed expert parameter, in ParamSet order
  int64_t step_count_ = 0;
};

}  // namespace dseek::train
