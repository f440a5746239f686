// DataParallel: gradient reduction and a ZeRO-1 sharded AdamW for data-parallel training over a
// dist::ProcessGroup of N ranks, each holding a full copy of the parameters.
//
// Flat space. The trainable parameters, in ParamSet order, are laid end to end in one flat index
// space of P elements. Rank r owns the shard dist::even_share(P, N, r): it keeps the AdamW moments
// of those elements only (ZeRO stage 1: 2·P/N floats of optimizer state per rank instead of 2·P).
//
// One step. Every rank runs forward/backward on its slice of the global batch with the loss scaled
// by 1/(grad_accum·N), so the SUM over ranks of the local gradients is the gradient of the global
// batch mean. The flat space is cut into buckets of bucket_elements; bucket k's gradients are
// copied into a buffer and reduce-scattered (each rank receives the sum of the part of the bucket
// that falls into its shard). Buckets are issued in descending flat order, as soon as backward has
// finished every parameter they touch (see on_block_backward), so the reductions of late layers
// run while backward continues through earlier ones; the rest go after backward. Then:
//   clip: n = √(Σ_shards Σ g²) (an f64 all-reduce), the shard scaled by max_norm/(n + 1e-6)
//         when n > max_norm — clip_grad_norm's rule on the same global gradient;
//   AdamW: adamw_update on the shard (the same arithmetic as AdamW::step element by element);
//   all-gather: every rank's updated shard, bucket by bucket, into every rank's parameters.
// With one rank this is AdamW with extra copies; the trainer uses plain AdamW then.
//
// Devices. The shard, the moments and the bucket buffers live where the group's f32 buffers do
// (group.device()): host memory for MPI, the GPU for NCCL (dist/nccl_process_group.h), where the
// copies are stream-ordered device copies, the AdamW update is ops::adamw_step's multi-tensor
// kernel over the shard's pieces and the norm ops::sum_of_squares; the same arithmetic element by
// element as on the CPU. The parameters may still be on the host while the optimizer is built and
// its state loaded; from the first step on they must be on the group's device (else an error).
//
// Checkpoints. gather_state() collects the moment shards on rank 0 as the full per-parameter
// tensors AdamW::state_tensors() names ("exp_avg.<name>", "exp_avg_sq.<name>"), so a checkpoint
// written by N ranks is the one a single process would write and resumes on any rank count;
// load_state() takes this rank's shard out of those tensors.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dist/process_group.h"
#include "train/optimizer.h"
#include "train/param.h"

namespace dseek::train {

class DataParallel {
 public:
  // num_hidden_layers: the main layers (blocks at or above it are MTP blocks). bucket_elements > 0.
  // `exclude` (optional) leaves parameters out of the flat space: expert parallelism's routed
  // experts, which their owner updates alone (train/expert_parallel.h).
  DataParallel(dist::ProcessGroup& group, ParamSet& params, AdamWConfig config,
               int64_t num_hidden_layers, int64_t bucket_elements,
               const std::function<bool(const Param&)>& exclude = nullptr);

  // Starts a step's last backward: from now on on_block_backward issues reductions. (Earlier
  // micro-batches of a step still accumulate into the gradients, so nothing is final before.)
  void arm();
  // LossOptions::on_block_backward. After main layer l's block backward, every gradient except the
  // embedding's and those of main layers < l is final (train_model.cpp runs the MTP modules, the
  // head and the final norm before the main layers, last to first, and the embedding last); after
  // an MTP block's backward, that block's own parameters are.
  void on_block_backward(int64_t layer);
  // Issues the buckets not yet issued and waits for all: the shard then holds Σ_ranks gradients.
  void reduce_gradients();
  // Global L2 norm of the reduced gradient; clips the shard as clip_grad_norm does. `extra`:
  // gradients outside the flat space (expert parallelism's owned experts), clipped with the shard
  // and counted in the norm where count_extra (once per copy: replicas pass false).
  double clip_grad_norm(double max_norm, const std::vector<Tensor>& extra = {},
                        bool count_extra = true);
  // Its two halves, for callers that combine norms over several groups (pipeline stages): Σ g² of
  // the reduced gradient over the group (the shards' sums all-reduced; the same on every rank),
  // and g ← g·factor on this rank's shard.
  double grad_sum_of_squares();
  void scale_gradients(float factor);
  // AdamW on this rank's shard, then every parameter all-gathered from the shards.
  void step(double lr);
  int64_t step_count() const { return step_count_; }

  // Collective: the full moment tensors on rank 0 (AdamW::state_tensors' names and order), none
  // elsewhere.
  std::vector<std::pair<std::string, Tensor>> gather_state();
  // From full moment tensors (AdamW::load_state's checks): keeps this rank's shard.
  void load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count);

  int64_t flat_size() const { return flat_size_; }
  dist::Range shard() const { return shard_; }
  int64_t num_buckets() const { return int64_t(buckets_.size()); }
  // This rank's moments of its shard, copied to the host (tests).
  std::vector<float> exp_avg_shard() const { return m_.to_vector(); }
  std::vector<float> exp_avg_sq_shard() const { return v_.to_vector(); }

 private:
  struct Slot {  // one trainable parameter in the flat space
    Param* param;
    int64_t offset;
    int64_t layer;  // its main or MTP block's layer index, −1 outside blocks
    bool embedding;
  };
  struct Bucket {
    int64_t first, last;          // flat [first, last)
    std::vector<int64_t> counts;  // elements of each rank's shard inside the bucket
    size_t slot_begin, slot_end;  // slots overlapping it
    Tensor buffer;                // [last − first] f32 on the group's device
    std::unique_ptr<dist::Work> work;
    bool issued = false;
  };

  void issue_ready();
  void issue(Bucket& b);
  // Throws unless every parameter's value and gradient are on the group's device.
  void check_devices() const;
  // Σ g² over every rank's shard (and `extra`'s gradients when count_extra), all-reduced.
  double global_sum_of_squares(const std::vector<Tensor>& extra, bool count_extra);
  // The shard's pieces, one per parameter it overlaps, as AdamW tensors (built at the first step).
  const ops::AdamWTensors& shard_tensors();

  dist::ProcessGroup& group_;
  AdamWConfig config_;
  int64_t num_hidden_layers_;
  std::vector<Slot> slots_;
  std::vector<char> ready_;  // per slot, during an armed backward
  std::vector<Bucket> buckets_;
  int64_t next_bucket_ = -1;  // the highest bucket not yet issued (descending order)
  bool armed_ = false;
  int64_t flat_size_ = 0;
  dist::Range shard_;
  Device device_;
  Tensor grad_, m_, v_, value_;  // this rank's shard: [shard_.count] f32 on device_
  ops::AdamWTensors shard_tensors_;
  std::vector<const void*> shard_tensor_values_;  // the parameters' storage it was built for
  int64_t step_count_ = 0;
};

}  // namespace dseek::train
