// Elementwise activations on the GPU (see ops/activation.h and ops/cpu/activation.cpp for the
// maths): silu_mul forward/backward and the residual add. One grid-stride loop each; the values
// are computed in f32 with the accurate expf (no fast-math intrinsics), so f32 results differ
// from the CPU's std::exp by an ulp or two at most. bf16 arrays that are 16-byte aligned with
// whole groups of 8 values (rows, for the row-strided form) move 8 values a load and store
// (Bf16x8); the arithmetic per value is the same expressions, so the same bits. A scalar load per
// value, with a 64-bit division for the row form, ran at 1.3–2.4 TB/s on an H100's training
// shapes.
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

__device__ __forceinline__ float silu_times(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}

template <typename T>
__global__ void silu_mul_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = from_f32<T>(silu_times(to_f32(gate[i]), to_f32(up[i])));
  }
}

template <typename T>
__global__ void silu_mul_rows_kernel(const T* gate, const T* up, int64_t ld, T* out, int64_t cols,
                                     int64_t n) {
  dseek::cuda::pdl_trigger();  // the down projection after it may start loading (pdl.cuh)
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = (i / cols) * ld + i % cols;
    out[i] = from_f32<T>(silu_times(to_f32(gate[at]), to_f32(up[at])));
  }
}

// silu_mul_rows_kernel on groups of 8 values: `groups` of a row (cols / 8), n8 in all.
__global__ void silu_mul_rows_x8_kernel(const __nv_bfloat16* gate, const __nv_bfloat16* up,
                                        int64_t ld, __nv_bfloat16* out, int64_t groups,
                                        int64_t n8) {
  dseek::cuda::pdl_trigger();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / groups, at = row * ld + (i - row * groups) * 8;
    Bf16x8 g, u;
    g.load(gate + at);
    u.load(up + at);
#pragma unroll
    for (int k = 0; k < 8; ++k) g.v[k] = silu_times(g.v[k], u.v[k]);
    g.store(out + i * 8);
  }
}

// d/dgate and d/dup of silu(g)·u given dout.
__device__ __forceinline__ void silu_mul_grads(float g, float u, float d, float& dg, float& du) {
  const float s = 1.0f / (1.0f + expf(-g));
  dg = d * u * s * (1.0f + g * (1.0f - s));
  du = d * g * s;
}

template <typename T>
__global__ void silu_mul_backward_kernel(const T* gate, const T* up, const T* dout, T* dgate,
                                         T* dup, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float dg, du;
    silu_mul_grads(to_f32(gate[i]), to_f32(up[i]), to_f32(dout[i]), dg, du);
    dgate[i] = from_f32<T>(dg);
    dup[i] = from_f32<T>(du);
  }
}

__global__ void silu_mul_backward_x8_kernel(const __nv_bfloat16* gate, const __nv_bfloat16* up,
                                            const __nv_bfloat16* dout, __nv_bfloat16* dgate,
                                            __nv_bfloat16* dup, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8;
       i += int64_t(gridDim.x) * blockDim.x) {
    Bf16x8 g, u, d, dg, du;
    g.load(gate + i * 8);
    u.load(up + i * 8);
    d.load(dout + i * 8);
#pragma unroll
    for (int k = 0; k < 8; ++k) silu_mul_grads(g.v[k], u.v[k], d.v[k], dg.v[k], du.v[k]);
    dg.store(dgate + i * 8);
    du.store(dup + i * 8);
  }
}

template <typename T>
__global__ void add_inplace_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i]));
}

__global__ void add_inplace_x8_kernel(__nv_bfloat16* y, const __nv_bfloat16* x, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8;
       i += int64_t(gridDim.x) * blockDim.x) {
    Bf16x8 a, b;
    a.load(y + i * 8);
    b.load(x + i * 8);
#pragma unroll
    for (int k = 0; k < 8; ++k) a.v[k] = a.v[k] + b.v[k];
    a.store(y + i * 8);
  }
}

}  // namespace

void silu_mul(const void* gate, const void* up, void* out, int64_t n, DType act) {
  if (n <= 0) return;
  if (act == DType::BF16 && n % 8 == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
    silu_mul_rows(gate, up, n, out, 1, n, act);  // one row of n
    return;
  }
  DSEEK_DISPATCH_ACT(
      act, T,
      silu_mul_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
          static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out), n));
  DSEEK_CUDA_CHECK_LAUNCH("silu_mul_kernel");
}

void silu_mul_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup,
                       int64_t n, DType act) {
  if (n <= 0) return;
  if (act == DType::BF16 && n % 8 == 0 && aligned16(gate) && aligned16(up) && aligned16(dout) &&
      aligned16(dgate) && aligned16(dup)) {
    using bf16 = __nv_bfloat16;
    silu_mul_backward_x8_kernel<<<blocks_for(n / 8), kThreads, 0, stream()>>>(
        static_cast<const bf16*>(gate), static_cast<const bf16*>(up),
        static_cast<const bf16*>(dout), static_cast<bf16*>(dgate), static_cast<bf16*>(dup), n / 8);
    DSEEK_CUDA_CHECK_LAUNCH("silu_mul_backward_x8_kernel");
    return;
  }
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
  if (act == DType::BF16 && cols % 8 == 0 && ld % 8 == 0 && aligned16(gate) && aligned16(up) &&
      aligned16(out)) {
    using bf16 = __nv_bfloat16;
    silu_mul_rows_x8_kernel<<<blocks_for(n / 8), kThreads, 0, stream()>>>(
        static_cast<const bf16*>(gate), static_cast<const bf16*>(up), ld, static_cast<bf16*>(out),
        cols / 8, n / 8);
    DSEEK_CUDA_CHECK_LAUNCH("silu_mul_rows_x8_kernel");
    return;
  }
  DSEEK_DISPATCH_ACT(act, T,
                     silu_mul_rows_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
                         static_cast<const T*>(gate), static_cast<const T*>(up), ld,
                         static_cast<T*>(out), cols, n));
  DSEEK_CUDA_CHECK_LAUNCH("silu_mul_rows_kernel");
}

void add_inplace(void* y, const void* x, int64_t n, DType act) {
  if (n <= 0) return;
  if (act == DType::BF16 && n % 8 == 0 && aligned16(y) && aligned16(x)) {
    add_inplace_x8_kernel<<<blocks_for(n / 8), kThreads, 0, stream()>>>(
        static_cast<__nv_bfloat16*>(y), static_cast<const __nv_bfloat16*>(x), n / 8);
    DSEEK_CUDA_CHECK_LAUNCH("add_inplace_x8_kernel");
    return;
  }
  DSEEK_DISPATCH_ACT(act, T,
                     add_inplace_kernel<T><<<blocks_for(n), kThreads, 0, stream()>>>(
                         static_cast<T*>(y), static_cast<const T*>(x), n));
  DSEEK_CUDA_CHECK_LAUNCH("add_inplace_kernel");
}

}  // namespace dseek::ops::cuda
