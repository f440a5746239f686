// The memory the training layers' caches (train/layers.h) hold between a forward and its
// backward, in bytes: what a batch's activations cost (a forward keeps every block's cache until
// the backward reaches it). Every tensor of a cache counts, FP8 codes and their scales too, and
// memory that several handles share counts once (the MoE's input is also its router's and its
// shared experts'); so do the host vectors of the CPU MoE's routing (ids, weights, scores, slot
// order) and the segment lengths. Not counted: the weights the GPU MoE path refers to (parameters,
// not activations). For comparing precisions and cache layouts (tests, docs/FP8.md).
#pragma once

#include <cstdint>
#include <vector>

#include "train/layers.h"

namespace dseek::train {

int64_t cache_bytes(const BlockCache& cache);
int64_t cache_bytes(const std::vector<BlockCache>& caches);

}  // namespace dseek::train
