// dist/rank_gpu.h: a rank's GPU by its place on its node.
#include "dist/rank_gpu.h"

#include "core/cuda.h"
#include "core/error.h"

namespace dseek::dist {

void select_rank_gpu(const ProcessGroup& host) {
  const int gpus = cuda::device_count();
  DSEEK_CHECK(host.local_size() <= gpus,
              "[dist] {} ranks on this node (rank {} of the job is local rank {}) but {} GPU{}: "
              "NCCL needs one GPU per rank",
              host.local_size(), host.rank(), host.local_rank(), gpus, gpus == 1 ? "" : "s");
  cuda::select_device(host.local_rank());
}

bool spread_ranks_over_gpus(const ProcessGroup& host) {
  if (host.size() == 1 || cuda::device_count() < host.local_size()) return false;
  cuda::select_device(host.local_rank());
  return true;
}

}  // namespace dseek::dist
