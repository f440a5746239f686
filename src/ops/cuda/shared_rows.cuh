// Copying a tile of rows from global memory into shared memory as f32, for the attention kernels
// (attention_forward.cuh, mla_decode.cu) that stream query, key and latent rows through shared
// memory.
//
// Why not one lane per column, one row after another (the loops this replaced): each lane then
// waits for one 2-byte load at a time, a few hundred cycles each from L2 or HBM. Here the whole
// block shares the tile: the rows are cut into 16-byte chunks, consecutive threads take
// consecutive chunks (coalesced), and each thread issues kLoadsInFlight chunk loads before it
// converts and stores the first. (On an H200, run F of docs/BENCHMARKS.md, this did not change
// end-to-end decode speed: the loads were not what limited those kernels there.)
#pragma once

#include <cstdint>

#include "ops/cuda/element.cuh"

namespace dseek::ops::cuda {

// 16 bytes of row elements, as one vector load moves them.
template <typename T>
struct alignas(16) RowChunk {
  static constexpr int kElems = int(16 / sizeof(T));
  T e[kElems];
};

constexpr int kLoadsInFlight = 4;

// Rows 0 .. n_rows − 1 of `width` elements land at dst + j·dst_stride as f32. row_src(j) gives row
// j's first element in global memory, or nullptr for a row of zeros (past the keys a block may
// read). A row whose start is 16-byte aligned moves in vector loads, any other element by element
// (the same result). Every thread of the block must call it; it has no barrier: the caller
// synchronises before reading dst. n_rows · width must fit an int (tiles are a few thousand).
template <typename T, typename RowSrc>
__device__ __forceinline__ void load_rows_f32(float* dst, int64_t dst_stride, int n_rows, int width,
                                              RowSrc row_src) {
  constexpr int E = RowChunk<T>::kElems;
  const int chunks_per_row = (width + E - 1) / E;
  const int chunks = n_rows * chunks_per_row;
  const int threads = int(blockDim.x);
  for (int base = int(threadIdx.x); base < chunks; base += kLoadsInFlight * threads) {
    RowChunk<T> v[kLoadsInFlight];
#pragma unroll
    for (int b = 0; b < kLoadsInFlight; ++b) {
      const int c = base + b * threads;
      if (c >= chunks) continue;
      const int j = c / chunks_per_row, col = (c - j * chunks_per_row) * E;
      const T* src = row_src(j);
      const int n = min(E, width - col);
      if (src != nullptr && n == E && (reinterpret_cast<uintptr_t>(src + col) & 15u) == 0) {
        v[b] = *reinterpret_cast<const RowChunk<T>*>(src + col);
      } else {
#pragma unroll
        for (int i = 0; i < E; ++i)
          v[b].e[i] = src != nullptr && i < n ? src[col + i] : from_f32<T>(0.0f);
      }
    }
#pragma unroll
    for (int b = 0; b < kLoadsInFlight; ++b) {
      const int c = base + b * threads;
      if (c >= chunks) continue;
      const int j = c / chunks_per_row, col = (c - j * chunks_per_row) * E;
      const int n = min(E, width - col);
      float* out = dst + int64_t(j) * dst_stride + col;
#pragma unroll
      for (int i = 0; i < E; ++i)
        if (i < n) out[i] = to_f32(v[b].e[i]);
    }
  }
}

}  // namespace dseek::ops::cuda
