// Row-sparse gradients on the GPU (ops/grad_rows.h): the rows a step wrote are zeroed and their
// squares summed without a pass over the rows it did not write.
#include <algorithm>
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/squares.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;
constexpr int kRowsABlock = kThreads / 32;  // a warp a row
// The sum's blocks: a fixed count (not the device's SMs), so the order of the sums and with it
// the result is the same on every GPU.
constexpr int kSumBlocks = 256;

__global__ void zero_flagged_rows_kernel(float* grad, uint8_t* flags, int64_t rows, int64_t cols) {
  const int64_t r = int64_t(blockIdx.x) * kRowsABlock + threadIdx.x / 32;
  const int lane = int(threadIdx.x % 32);
  if (r >= rows || flags[r] == 0) return;
  float* row = grad + r * cols;
  if (cols % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    float4* row4 = reinterpret_cast<float4*>(row);
    for (int64_t q = lane; q < cols / 4; q += 32) row4[q] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  } else {
    for (int64_t j = lane; j < cols; j += 32) row[j] = 0.0f;
  }
  __syncwarp();
  if (lane == 0) flags[r] = 0;
}

// partial[b] = Σ g² over the flagged rows of block b's range, each thread over its columns in
// row order, then the block's fixed tree.
__global__ void flagged_squares_kernel(const float* grad, const uint8_t* flags, int64_t rows,
                                       int64_t cols, double* partial) {
  __shared__ double scratch[32];
  const int64_t per = (rows + gridDim.x - 1) / gridDim.x;
  const int64_t first = int64_t(blockIdx.x) * per, last = min(rows, first + per);
  double sum = 0.0;
  for (int64_t r = first; r < last; ++r) {
    if (flags[r] == 0) continue;  // uniform over the block
    const float* row = grad + r * cols;
    if (cols % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
      const float4* row4 = reinterpret_cast<const float4*>(row);
      for (int64_t q = threadIdx.x; q < cols / 4; q += blockDim.x) {
        sum = add_squares4(sum, row4[q]);
      }
    } else {
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        const double g = row[j];
        sum = __dadd_rn(sum, __dmul_rn(g, g));
      }
    }
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

}  // namespace

void zero_flagged_rows(float* grad, uint8_t* flags, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t blocks = (rows + kRowsABlock - 1) / kRowsABlock;
  DSEEK_CHECK(blocks <= INT32_MAX, "[grad_rows] {} rows are beyond the kernel's grid", rows);
  zero_flagged_rows_kernel<<<unsigned(blocks), kThreads, 0, stream()>>>(grad, flags, rows, cols);
  DSEEK_CUDA_CHECK_LAUNCH("zero_flagged_rows_kernel");
}

void sum_of_squares_flagged_rows(const float* grad, const uint8_t* flags, int64_t rows,
                                 int64_t cols, double* out) {
  auto* partial = static_cast<double*>(dseek::cuda::alloc(kSumBlocks * sizeof(double)));
  flagged_squares_kernel<<<kSumBlocks, kThreads, 0, stream()>>>(
      grad, flags, std::max<int64_t>(rows, 0), cols, partial);
  DSEEK_CUDA_CHECK_LAUNCH("flagged_squares_kernel");
  sum_partials(partial, kSumBlocks, out);
  dseek::cuda::free(partial);
}

}  // namespace dseek::ops::cuda
