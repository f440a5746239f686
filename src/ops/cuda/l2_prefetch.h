// ops::prefetch_l2's kernel (ops/l2_prefetch.h). No CUDA types, as cuda_ops.h (and C++17: the
// .cu files see it too).
#pragma once

#include <cstdint>

namespace dseek::ops::cuda {

// Asks for every 128-byte line of the n ranges (data[i], bytes[i]: host arrays of device
// addresses and sizes) to be brought into L2; queued on dseek::cuda::stream(). Up to
// kPrefetchRanges ranges a launch (more: several).
constexpr int kPrefetchRanges = 8;
void prefetch_l2(const void* const* data, const int64_t* bytes, int64_t n);

}  // namespace dseek::ops::cuda
