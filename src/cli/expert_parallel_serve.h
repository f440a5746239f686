// `dseek serve --expert-parallel` under `mpirun -np N`: rank 0 runs the HTTP server and the
// engine; its model is an ExpertParallelLeader, which announces every paged cache it makes and
// every batched forward it runs (sequences, new token ids, positions, page ids) to the other ranks
// before running it. Ranks 1..N−1 run follow_expert_parallel_leader: they keep a mirror of the
// paged cache (every page held, so the page ids rank 0 hands out are valid there) and run the
// same forward_batch on it, which is what their MoE layers' sums with rank 0 need. Every cache row
// is written by a batched forward, so the mirror holds what rank 0's cache holds. No MTP drafts
// (the leader reports no MTP layers): the MTP forward is not mirrored.
#pragma once

#include <memory>
#include <vector>

#include "model/model.h"

namespace dseek::dist {
class ProcessGroup;
}

namespace dseek::cli {

class ExpertParallelLeader final : public Model {
 public:
  ExpertParallelLeader(Model& model, dist::ProcessGroup& group);
  ~ExpertParallelLeader() override;  // stop()

  const ModelConfig& config() const override { return model_.config(); }
  // The unbatched paths are not mirrored: they throw (the engine uses forward_batch only).
  Tensor forward(const std::vector<int32_t>& ids) override;
  Tensor forward(const std::vector<int32_t>& ids, KVCache& cache) override;
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override;
  Tensor forward_mtp(const std::vector<int32_t>& ids, int depth) override;
  BatchOutput forward_batch(const std::vector<BatchSequence>& batch,
                            PagedKVCache& cache) override;
  Tensor forward_mtp_batch(const std::vector<MtpBatchSequence>& batch,
                           PagedKVCache& cache) override;
  std::unique_ptr<PagedKVCache> new_paged_cache(int64_t page_tokens,
                                                int64_t num_pages) const override;
  int64_t num_mtp_layers() const override { return 0; }
  int64_t routed_expert_bytes() const override { return model_.routed_expert_bytes(); }

  // Tells the followers to return (once; later calls do nothing). Call it after the engine has
  // stopped, from the thread that last used the group.
  void stop();

 private:
  Model& model_;
  dist::ProcessGroup& group_;
  bool stopped_ = false;
};

// Ranks 1..N−1: mirror rank 0's cache and batched forwards until it stops.
void follow_expert_parallel_leader(Model& model, dist::ProcessGroup& group);

}  // namespace dseek::cli
