// Pipeline parallelism (docs/DISTRIBUTED.md): the model's main layers split into P contiguous
// stages, one MPI rank each; the embedding lives on the first stage, the final norm, the output
// head and the MTP modules on the last. Each stage holds and updates only its own tensors.
// With P·D ranks there are D such pipelines (replicas), data parallel: rank r is stage r mod P of
// replica r / P (a pipeline's stages are consecutive ranks), each replica trains on its slice of
// every batch, and the D replicas of a stage sum their gradients before the identical update.
//
// Split: stage s takes main layers even_share(L, P, s): L/P each, the first L mod P stages one
// more (the last stage also runs the head and the MTP modules, so it gets no extra layer).
//
// Schedule (1F1B, PipeDream-Flush / Megatron-LM's non-interleaved schedule): over the step's
// micro-batches 0..M−1, stage s runs min(P − s − 1, M) warm-up forwards, then alternates one
// forward and one backward, then the remaining backwards. At most P − s micro-batches' activations
// are alive on stage s. Activations go forward to stage s + 1 and their gradients come back, with
// point-to-point messages (ProcessGroup::send_async / recv); sends are nonblocking and waited for
// at the end of the step, so no two stages ever wait on each other's sends.
//
// Shared embedding: the MTP modules (and a tied head) use the embedding on the last stage. When
// the model has either, the last stage keeps a copy of model.embed_tokens.weight (a ParamSet entry
// with a gradient but no optimizer state); after the backward passes its gradient is added into
// the first stage's, the first stage updates the embedding, and the new values go back to the
// copy (Megatron-LM's word-embedding all-reduce, done as two messages).
//
// Replicas: the D replicas of a stage form a group of their own (ProcessGroup::split) and train
// their stage data-parallel with ZeRO-1 (train/data_parallel.h, the trainer's DataParallel over
// replica_group()): each bucket of the stage's gradients is reduce-scattered after the step's
// backwards, each replica updates its shard of the stage's parameters and keeps only that shard's
// AdamW moments, and the updated values are all-gathered, so every replica holds the same stage.
// With one pipeline the stage keeps plain AdamW. Gradient clipping uses the global norm: each
// stage's sum of squares (over its replicas' shards; replica 0 contributes it), summed over the
// ranks.
// Checkpoints gather every stage's values and AdamW moments on rank 0 in the order one process
// writes them, so a pipeline checkpoint resumes on one process and the other way round.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "dist/process_group.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/optimizer.h"
#include "train/train_batches.h"
#include "train/train_model.h"

namespace dseek::train {

struct PipelineLayout {
  int stages = 1, stage = 0;
  int replicas = 1, replica = 0;            // data-parallel pipelines, and this rank's
  int64_t first_layer = 0, last_layer = 0;  // this stage's main layers [first, last)
  bool shared_embedding = false;            // the last stage keeps a copy of the embedding (P > 1)
  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
  // The world rank of stage `s` of replica `d`.
  int rank_of(int s, int d) const { return d * stages + s; }
  // The tensors the stage owns (and updates), and those it holds (the owned ones plus the
  // embedding copy on the last stage).
  ModelPart owned() const;
  ModelPart held() const;
};

// Stage `stage` of `stages` (of replica `replica` of `replicas`) for `config`. Throws when there
// are more stages than main layers.
PipelineLayout make_pipeline_layout(const ModelConfig& config, int stages, int stage,
                                    int replicas = 1, int replica = 0);

// Splits a batch into `parts` micro-batches of equal token counts whose cuts fall between
// sequences (segments); throws naming the batch when they cannot. DPO pairs are not split.
std::vector<MicroBatch> split_micro_batch(const MicroBatch& batch, int64_t parts);

class PipelineStage {
 public:
  // params holds the tensors of layout.held() (init_stage_params); the group is the world, one
  // stage of one replica per rank (rank = layout.rank_of(stage, replica)).
  PipelineStage(dist::ProcessGroup& group, const PipelineLayout& layout, TrainModel& model,
                ParamSet& params);

  // Fills an empty ParamSet with the stage's tensors, with the values the whole model's
  // init_params gives them (the embedding copy as well).
  static void init_stage_params(const ModelConfig& config, const PipelineLayout& layout,
                                uint64_t seed, double std, ParamSet& params);

  // The forwards and backwards of one step over `micro` with the 1F1B schedule: gradients (each
  // micro-batch's times loss_scale) accumulate into the stage's params. Returns this stage's part
  // of the summed losses: main and MTP cross-entropies (last stage), the balance losses of its
  // MoE layers in total and aux, and the expert loads in the whole model's layout
  // (TrainModel::moe_layers()), zero for other stages' layers. Summed over the ranks, these are
  // one process's sums over the micro-batches. `replicas` (the DataParallel over
  // replica_group(), or null): armed before the step's last backward, whose finished layers'
  // buckets then reduce while the earlier layers' backward runs. `head_options`, where set, adjusts
  // a copy of `options` for micro-batch i's head on the last stage (trainer.cpp: SFT's exact
  // means' ce_shares, DPO's token weights for that micro-batch's pairs).
  using HeadOptions = std::function<void(int64_t i, LossOptions& options)>;
  SequenceLosses train_step(const std::vector<MicroBatch>& micro, const LossOptions& options,
                            float loss_scale, DataParallel* replicas = nullptr,
                            const HeadOptions& head_options = {});
  // Forward only (validation, DPO's reference pass), the same parts; on the last stage also the
  // main head's token_logp.
  SequenceLosses forward(const MicroBatch& batch, const LossOptions& options);

  // After train_step: brings the embedding copy's gradient to the first stage, clips with the
  // global norm, steps the stage's optimizer and refreshes the copy. Returns the global gradient
  // norm. AdamW: one pipeline; DataParallel (over replica_group()): several, ZeRO-1 across them.
  double optimizer_step(AdamW& optimizer, double lr, double max_norm);
  double optimizer_step(DataParallel& optimizer, double lr, double max_norm);
  // The replicas of this stage (D ranks; null with one pipeline). Made by the constructor.
  dist::ProcessGroup* replica_group() const { return replicas_.get(); }

  // Collective: every stage's values and moments gathered on rank 0, in the order one process
  // writes them (ck.model, ck.optimizer; empty on the other ranks). `moments`: the stage's
  // "exp_avg.<name>" / "exp_avg_sq.<name>" tensors, needed on replica 0 (AdamW::state_tensors,
  // or DataParallel::gather_state, which gives them to the group's rank 0).
  void gather_checkpoint(const std::vector<std::pair<std::string, Tensor>>& moments,
                         CheckpointData& ck);

  // The whole model's trainable parameter count (for run.json).
  int64_t model_parameters() const;

 private:
  // The step's per-micro-batch state on this stage.
  struct InFlight {
    std::vector<BlockCache> blocks;
    HeadCache head;
  };
  Tensor receive(int64_t rows, int peer, int tag);
  void send(const Tensor& x, int peer, int tag);
  void finish_sends();
  // The shared embedding's two messages around the update (see the header).
  void gather_embedding_grad();
  void send_embedding_values();
  // Adds micro-batch losses `part` (expert loads in this stage's order) into `sum` (the model's).
  void accumulate(const SequenceLosses& part, SequenceLosses& sum) const;
  SequenceLosses empty_losses() const;

  dist::ProcessGroup& group_;
  std::unique_ptr<dist::ProcessGroup> replicas_;  // this stage's replicas (D > 1)
  PipelineLayout layout_;
  TrainModel& model_;
  ParamSet& params_;
  std::vector<size_t> load_slots_;  // this stage's MoE layers' positions in moe_layers()
  std::vector<std::unique_ptr<dist::Work>> sends_;
  std::vector<Tensor> sent_;  // the sends' buffers, alive until finish_sends
};

}  // namespace dseek::train
