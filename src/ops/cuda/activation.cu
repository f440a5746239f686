// Elementwise activations on the GPU (see ops/activation.h and ops/cpu/activation.cpp for the
// maths): silu_mul forward/backward and the residual add. One grid-stride loop each; the values
// are computed in f32 with the accurate expf (no fast-math intrinsics), so f32 results differ
// from the CPU's std::exp by an ulp or two at most.
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU several times over; the kernels stride over the rest.
unsigned blocks_for(int64_t n) {
  return unsigned(std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 1 << 16));
}

template <typename T>
__global__ void silu_mul_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
  }
}

template <typename T>
__global__ void silu_mul_rows_kernel(const T* gate, const T* up, int64_t ld, T* out, int64_t cols,
                                     int64_t n) {
  dseek::cuda::pdl_trigger();  // the down projection after it may start loading (pdl.cuh)
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = (i / cols) * ld + i % cols;
    const float g = to_f32(gate[at]);
    out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[at]));
  }
}

template <typename T>
__global__ void silu_mul_backward_kernel(const T* gate, const T* up, const T* dout, T* dgate,
                                         T* dup, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f32(gate[i]), d = to_f32(dout[i]);
    const float s = 1.0f / (1.0f + expf(-g));
    dgate[i] = from_f32<T>(d * to_f32(up[i]) * s * (1.0f + g * (1.0f - s)));
    dup[i] = from_f32<T>(d * g * s);
  }
}

template <typename T>
__global__ void add_inplace_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i]));
}

}  // namespace

void silu_mul(const void* gate, const void* up, void* out, int64_t n, DType act) {
  if (n <= 0) return;
  DSEEK_DISPATCH_ACT(
      act, T,
      silu_mul_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
          static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out), n));
  DSEEK_CUDA_CHECK_LAUNCH("silu_mul_kernel");
}

void silu_mul_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup,
                       int64_t n, DType act) {
  if (n <= 0) return;
  DSEEK_DISPATCH_ACT(
      act, T,
      silu_mul_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
          static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<const T*>(dout),
          static_cast<T*>(dgate), static_cast<T*>(dup), n));
  DSEEK_CUDA_CHECK_LAUNCH("silu_mul_backward_kernel");
}

void silu_mul_rows(const void* gate, const void* up, int64_t ld, void* out, int64_t rows,
                   int64_t cols, DType act) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  DSEEK_DISPATCH_ACT(act, T,
                     silu_mul_rows_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
                         static_cast<const T*>(gate), static_cast<const T*>(up), ld,
                         static_cast<T*>(out), cols, n));
  DSEEK_CUDA_CHECK_LAUNCH("silu_mul_rows_kernel");
}

void add_inplace(void* y, const void* x, int64_t n, DType act) {
  if (n <= 0) return;
  DSEEK_DISPATCH_ACT(act, T,
                     add_inplace_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
                         static_cast<T*>(y), static_cast<const T*>(x), n));
  DSEEK_CUDA_CHECK_LAUNCH("add_inplace_kernel");
}

}  // namespace dseek::ops::cuda
