// softmax over rows on the GPU (see ops/cpu/softmax.cpp for the maths). One block per row: the
// max, then Σ exp(x − max), then the normalised values written over x. exp is evaluated twice
// instead of storing it in x between the passes, so a bf16 row is rounded once, at the end.
// Backward: dx = y ⊙ (dy − Σ y·dy), the dot product summed in f32 (the CPU sums it in double).
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

// Rows beyond the grid are strided over (every thread of a block takes the same rows, so the
// __syncthreads inside block_sum/block_max are reached by all of them).
unsigned blocks_for(int64_t rows) {
  return unsigned(std::min<int64_t>(rows, 1 << 20));
}

template <typename T>
__global__ void softmax_rows_kernel(T* x, int64_t rows, int64_t n, int64_t ld) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* row = x + r * ld;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, to_f32(row[i]));
    m = block_max(m, scratch);
    float s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(to_f32(row[i]) - m);
    const float inv = 1.0f / block_sum(s, scratch);
    // Each thread writes only the entries it read itself, so no barrier is needed before this.
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      row[i] = from_f32<T>(expf(to_f32(row[i]) - m) * inv);
  }
}

template <typename T>
__global__ void softmax_backward_rows_kernel(const T* y, const T* dy, T* dx, int64_t rows,
                                             int64_t n) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* yr = y + r * n;
    const T* gr = dy + r * n;
    T* out = dx + r * n;
    float dot = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dot += to_f32(yr[i]) * to_f32(gr[i]);
    dot = block_sum(dot, scratch);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      out[i] = from_f32<T>(to_f32(yr[i]) * (to_f32(gr[i]) - dot));
  }
}

}  // namespace

void softmax_rows(void* x, int64_t rows, int64_t n, int64_t ld, DType act) {
  if (rows <= 0 || n <= 0) return;
  DSEEK_DISPATCH_ACT(
      act, T,
      softmax_rows_kernel<T>
      <<<blocks_for(rows), row_block_threads(n), 0, stream()>>>(static_cast<T*>(x), rows, n, ld));
  DSEEK_CUDA_CHECK_LAUNCH("softmax_rows_kernel");
}

void softmax_backward_rows(const void* y, const void* dy, void* dx, int64_t rows, int64_t n,
                           DType act) {
  if (rows <= 0 || n <= 0) return;
  DSEEK_DISPATCH_ACT(
      act, T,
      softmax_backward_rows_kernel<T><<<blocks_for(rows), row_block_threads(n), 0, stream()>>>(
          static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx), rows, n));
  DSEEK_CUDA_CHECK_LAUNCH("softmax_backward_rows_kernel");
}

}  // namespace dseek::ops::cuda
