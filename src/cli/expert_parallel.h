// `--expert-parallel` for the inference commands (generate, logits): under `mpirun -np N`, every
// rank runs the same tokens through the whole model but holds only its block of each MoE layer's
// routed experts (model/placement.h, model/moe.h); rank 0 alone prints, and sampled tokens are
// rank 0's, broadcast, so the ranks never diverge.
#pragma once

#include <cstdint>

#include "model/placement.h"

namespace dseek {
class Model;
}

namespace dseek::cli {

// Shards the routed experts of `placement` over every rank of the MPI world and makes the world's
// sums deterministic. Throws "[<command>] --expert-parallel ..." when the world has one rank.
void enable_expert_parallel(Placement& placement, const char* command);

// On rank 0, stderr: "expert parallel inference: 8 routed experts over 2 ranks (4 each; expert
// weights per rank: 12.0 KiB, 12.0 KiB)". Collective: every rank must call it.
void log_expert_parallel(const Model& model, const Placement& placement);

// Rank 0's `id`, on every rank of the shard's group (a broadcast; collective).
int32_t rank0_token(const ExpertShard& shard, int32_t id);

// Whether this process prints the command's output: rank 0, or any process without a shard.
bool prints_output(const Placement& placement);

}  // namespace dseek::cli
