// RMSNorm on the GPU (see ops/norm.h for the maths). One block per row; the weight gradient, a
// sum over rows, goes through per-chunk partial sums and a second pass (no float atomics, so the
// result does not depend on scheduling).
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/norm_kernels.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

// dx per row; also stores r per row for the weight gradient.
template <typename T>
__global__ void rms_norm_backward_dx_kernel(const T* x, const void* w, DType w_dtype, const T* dy,
                                            T* dx, float* r_out, int64_t D, float eps) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * D;
  const T* dyr = dy + blockIdx.x * D;
  T* dxr = dx + blockIdx.x * D;
  float ss = 0, gx = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const float v = to_f32(xr[j]);
    ss += v * v;
    gx += load_weight(w, w_dtype, j) * to_f32(dyr[j]) * v;
  }
  ss = block_sum(ss, scratch);
  gx = block_sum(gx, scratch);
  const float r = rsqrtf(ss / float(D) + eps);
  const float c = r * r * r / float(D) * gx;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const float g = load_weight(w, w_dtype, j) * to_f32(dyr[j]);
    dxr[j] = from_f32<T>(r * g - c * to_f32(xr[j]));
  }
  if (threadIdx.x == 0) r_out[blockIdx.x] = r;
}

constexpr int64_t kRowsPerChunk = 64;

// partial[chunk, j] = Σ_{rows of chunk} dy ⊙ x·r
template <typename T>
__global__ void rms_norm_dw_partial_kernel(const T* x, const T* dy, const float* r, float* partial,
                                           int64_t rows, int64_t D) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= D) return;
  const int64_t begin = blockIdx.y * kRowsPerChunk, end = min(rows, begin + kRowsPerChunk);
  float s = 0;
  for (int64_t i = begin; i < end; ++i) s += to_f32(dy[i * D + j]) * to_f32(x[i * D + j]) * r[i];
  partial[blockIdx.y * D + j] = s;
}

__global__ void rms_norm_dw_sum_kernel(const float* partial, int64_t chunks, int64_t D, float* dw,
                                       float beta) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= D) return;
  float s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * D + j];
  dw[j] = beta == 0.0f ? s : beta * dw[j] + s;
}

}  // namespace

void rms_norm(const void* x, const void* w, DType w_dtype, void* y, int64_t rows, int64_t D,
              float eps, DType act) {
  if (rows == 0 || D == 0) return;
  DSEEK_DISPATCH_ACT(act, T,
                     rms_norm_kernel<T><<<unsigned(rows), row_block_threads(D), 0, stream()>>>(
                         static_cast<const T*>(x), w, w_dtype, static_cast<T*>(y), D, eps));
  DSEEK_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

void add_rms_norm(void* h, const void* x, const void* w, DType w_dtype, void* y, int64_t rows,
                  int64_t D, float eps, DType act) {
  if (rows == 0 || D == 0) return;
  DSEEK_DISPATCH_ACT(
      act, T,
      add_rms_norm_kernel<T><<<unsigned(rows), row_block_threads(D), 0, stream()>>>(
          static_cast<T*>(h), static_cast<const T*>(x), w, w_dtype, static_cast<T*>(y), D, eps));
  DSEEK_CUDA_CHECK_LAUNCH("add_rms_norm_kernel");
}

void rms_norm_backward(const void* x, const void* w, DType w_dtype, const void* dy, void* dx,
                       float* dw, int64_t rows, int64_t D, float eps, float dw_beta, DType act) {
  if (D == 0) return;
  if (rows == 0) {
    if (dw && dw_beta == 0.0f) dseek::cuda::fill_bytes(dw, 0, size_t(D) * sizeof(float));
    return;
  }
  float* r = static_cast<float*>(dseek::cuda::alloc(size_t(rows) * sizeof(float)));
  DSEEK_DISPATCH_ACT(act, T,
                     rms_norm_backward_dx_kernel<T>
                     <<<unsigned(rows), row_block_threads(D), 0, stream()>>>(
                         static_cast<const T*>(x), w, w_dtype, static_cast<const T*>(dy),
                         static_cast<T*>(dx), r, D, eps));
  DSEEK_CUDA_CHECK_LAUNCH("rms_norm_backward_dx_kernel");
  if (dw) {
    const int64_t chunks = ceil_div(rows, kRowsPerChunk);
    float* partial = static_cast<float*>(dseek::cuda::alloc(size_t(chunks * D) * sizeof(float)));
    const dim3 grid(unsigned(ceil_div<int64_t>(D, 256)), unsigned(chunks));
    DSEEK_DISPATCH_ACT(act, T,
                       rms_norm_dw_partial_kernel<T><<<grid, 256, 0, stream()>>>(
                           static_cast<const T*>(x), static_cast<const T*>(dy), r, partial, rows, D));
    DSEEK_CUDA_CHECK_LAUNCH("rms_norm_dw_partial_kernel");
    rms_norm_dw_sum_kernel<<<unsigned(ceil_div<int64_t>(D, 256)), 256, 0, stream()>>>(partial, chunks, D, dw,
                                                                                   dw_beta);
    DSEEK_CUDA_CHECK_LAUNCH("rms_norm_dw_sum_kernel");
    dseek::cuda::free(partial);
  }
  dseek::cuda::free(r);
}

}  // namespace dseek::ops::cuda
