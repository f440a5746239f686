// select_rank_gpu (dist/nccl_process_group.h): one GPU per rank, by the rank's place on its node.
#include "core/cuda.h"
#include "core/error.h"
#include "dist/nccl_process_group.h"

namespace dseek::dist {

void select_rank_gpu(const ProcessGroup& host) {
  const int gpus = cuda::device_count();
  DSEEK_CHECK(host.local_size() <= gpus,
              "[dist] {} ranks on this node (rank {} of the job is local rank {}) but {} GPU{}: "
              "NCCL needs one GPU per rank",
              host.local_size(), host.rank(), host.local_rank(), gpus, gpus == 1 ? "" : "s");
  cuda::select_device(host.local_rank());
}

}  // namespace dseek::dist
