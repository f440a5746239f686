// Which GPU a rank of a multi-process job runs on (cuda::select_device, before anything starts
// the CUDA runtime): local rank l of a node takes device l.
#pragma once

#include "dist/process_group.h"

namespace dseek::dist {

// Training through NCCL: one GPU per rank, required; throws when the node has more ranks than
// GPUs (NCCL refuses two ranks on one GPU) or the runtime already runs on another device.
void select_rank_gpu(const ProcessGroup& host);

// Inference ranks (expert-parallel generate, logits, serve), whose sums go through the host: GPU
// l for local rank l when the node has a GPU for each rank, else every rank on device 0 (they
// share it). Nothing for a single process. Returns whether the ranks got a GPU each.
bool spread_ranks_over_gpus(const ProcessGroup& host);

}  // namespace dseek::dist
