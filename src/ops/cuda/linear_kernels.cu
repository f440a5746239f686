// The small kernels around linear's cuBLASLt GEMMs (ops/cuda/linear.cpp):
// - the bias gradient dbias[o] (+)= Σ_t dy[t, o], a column sum of dy [T, out]. Rows are summed in
//   chunks (one partial sum per chunk and column, threads of a block on adjacent columns so the
//   reads coalesce), then the chunks in order: no float atomics, so the result does not depend on
//   scheduling. f32 accumulation.
// - y += x for an f32 x into y in act with one rounding: how a bf16 dx accumulates a product.
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;
constexpr int64_t kRowsPerChunk = 64;

// partial[chunk, o] = Σ_{t in chunk} dy[t, o]
template <typename T>
__global__ void dbias_partial_kernel(const T* dy, int64_t rows, int64_t out, int64_t chunk_rows,
                                     float* partial) {
  const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (o >= out) return;
  const int64_t begin = int64_t(blockIdx.y) * chunk_rows, end = min(rows, begin + chunk_rows);
  float s = 0;
  for (int64_t t = begin; t < end; ++t) s += to_f32(dy[t * out + o]);
  partial[int64_t(blockIdx.y) * out + o] = s;
}

// dbias[o] = (beta·dbias[o] +) Σ_chunks partial[chunk, o]; beta 0 never reads dbias (it may hold
// anything, NaN included).
__global__ void dbias_sum_kernel(const float* partial, int64_t chunks, int64_t out, float* dbias,
                                 float beta) {
  const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (o >= out) return;
  float s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * out + o];
  dbias[o] = beta == 0.0f ? s : beta * dbias[o] + s;
}

template <typename T>
__global__ void accumulate_kernel(T* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(to_f32(y[i]) + x[i]);
}

}  // namespace

void linear_accumulate(void* y, const float* x, int64_t n, DType act) {
  if (n == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 65535));
  DSEEK_DISPATCH_ACT(
      act, T_, accumulate_kernel<T_><<<blocks, kThreads, 0, stream()>>>(static_cast<T_*>(y), x, n));
  DSEEK_CUDA_CHECK_LAUNCH("linear accumulate_kernel");
}

void linear_backward_dbias(const void* dy, int64_t T, int64_t out, float* dbias, float beta,
                           DType act) {
  if (out == 0) return;
  if (T == 0) {
    if (beta == 0.0f) dseek::cuda::fill_bytes(dbias, 0, size_t(out) * sizeof(float));
    return;
  }
  // gridDim.y is at most 65535: longer inputs take longer chunks.
  const int64_t chunk_rows = std::max(kRowsPerChunk, ceil_div<int64_t>(T, 65535));
  const int64_t chunks = ceil_div(T, chunk_rows);
  float* partial = static_cast<float*>(dseek::cuda::alloc(size_t(chunks * out) * sizeof(float)));
  const unsigned column_blocks = unsigned(ceil_div<int64_t>(out, kThreads));
  DSEEK_DISPATCH_ACT(act, T_,
                     dbias_partial_kernel<T_>
                     <<<dim3(column_blocks, unsigned(chunks)), kThreads, 0, stream()>>>(
                         static_cast<const T_*>(dy), T, out, chunk_rows, partial));
  DSEEK_CUDA_CHECK_LAUNCH("dbias_partial_kernel");
  dbias_sum_kernel<<<column_blocks, kThreads, 0, stream()>>>(partial, chunks, out, dbias, beta);
  DSEEK_CUDA_CHECK_LAUNCH("dbias_sum_kernel");
  dseek::cuda::free(partial);
}

}  // namespace dseek::ops::cuda
