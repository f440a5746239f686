// The expert of a row tile in the grouped expert GEMMs' tile schedule (moe.cu's tile_schedule:
// tile_start[e] = the first tile of expert e, tile_start[E] = the tile count), shared by the SIMT
// kernels of moe.cu and the tensor-core kernels of grouped_gemm_tc_kernels.cuh and
// grouped_gemm_wgmma_kernels.cuh, and the FP8 ones of fp8_wgmma_kernels.cuh.
#pragma once

#include <cstdint>

namespace dseek::ops::cuda {

// tile_start [E + 1] for the row-tiled grouped GEMMs, tiles of `rows` rows, from the device
// offsets [E + 1] (device memory, no host synchronisation; the caller frees it with
// dseek::cuda::free). Defined in moe.cu.
int64_t* tile_schedule(const int64_t* offsets, int64_t E, int64_t rows);

// The expert whose row tiles contain `tile` (< tile_start[E]): the first e with
// tile_start[e + 1] > tile.
__device__ __forceinline__ int64_t expert_of_tile(const int64_t* tile_start, int64_t E,
                                                  int64_t tile) {
  int64_t lo = 0, hi = E - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (tile_start[mid + 1] > tile) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

}  // namespace dseek::ops::cuda
