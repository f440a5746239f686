// Bringing weights into the GPU's L2 cache ahead of the kernels that read them. A batch-1 decode
// step's attention half is a chain of small kernels (~28 MB a V2-Lite layer read at 0.7 TB/s,
// docs/BENCHMARKS.md run AD): while the MLA decode kernel reads its few latent rows, HBM is
// nearly idle, and the output projection after it waits for its weights' first loads. Mla's
// decode step can ask for them then (DSEEK_PREFETCH_O_PROJ=1; off until timed on a GPU). Only a
// hint: nothing is written and no kernel waits for it, so results cannot change.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

struct L2Range {
  const void* data = nullptr;  // device memory
  int64_t bytes = 0;
};

// The ranges of `tensors` (defined, on the GPU, contiguous), in order, up to `max_bytes` in all
// (a range that would pass it is cut there).
std::vector<L2Range> l2_ranges(std::span<const Tensor* const> tensors, int64_t max_bytes);

// Queues on the current stream a kernel that asks for every 128-byte line of the ranges to be
// brought into L2 (prefetch.global.L2) and returns as soon as it has asked. No-op for no ranges;
// throws on a build without CUDA.
void prefetch_l2(std::span<const L2Range> ranges);

// Whether Mla's decode step prefetches its output projection's weights beside the decode kernel:
// DSEEK_PREFETCH_O_PROJ=1 at start-up, or set_prefetch_o_proj (off by default until timed).
bool prefetch_o_proj();
void set_prefetch_o_proj(bool on);

}  // namespace dseek::ops
