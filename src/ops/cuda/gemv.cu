// linear's forward for a decode step: one to kGemvMaxRows token rows against a bf16 weight. A
// GEMM library tiles this as a GEMM of N = 1 and runs it far below the memory speed that bounds
// it (a decode step is nothing but weight reads: ~2 GB of dense projections and the head per
// token at V2-Lite's size). Here each warp owns kOutputsPerWarp weight rows and streams them with
// kSteps 16-byte loads a lane in flight per row, so thousands of warps keep HBM busy; the token
// rows (a few KB) come from L1/L2. Deterministic: each output is one warp's fixed-order f32 sum
// and one butterfly reduction, rounded once.
#include <cuda_bf16.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "core/env.h"
#include "core/error.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_dot.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kWarps = 8;           // warps per block
constexpr int kOutputsPerWarp = 2;  // weight rows per warp
constexpr int kSteps = 4;           // 16-byte loads in flight per lane and weight row
constexpr int kOutputsPerBlock = kWarps * kOutputsPerWarp;

// A warp's outputs: y[r, n0 + j] = its lanes' sums (+ bias), rounded once.
template <int kRows>
__device__ __forceinline__ void store_outputs(float (&acc)[kOutputsPerWarp][kRows], int rows,
                                              int64_t n0, int n_count, int lane, int64_t out,
                                              const __nv_bfloat16* __restrict__ bias,
                                              __nv_bfloat16* __restrict__ y) {
#pragma unroll
  for (int j = 0; j < kOutputsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float v = warp_sum(acc[j][r]);
      if (lane == 0 && j < n_count && r < rows) {
        if (bias) v += __bfloat162float(bias[n0 + j]);
        y[int64_t(r) * out + n0 + j] = __float2bfloat16(v);
      }
    }
  }
}

// Block b, warp w: outputs n0 = (b·kWarps + w)·kOutputsPerWarp and the next, for kRows token rows
// (rows ≤ kRows of them real) read through x (PlainRows or SwigluRows, gemv_dot.cuh). in % 8 == 0
// and 16-byte aligned rows (gemv_takes).
template <int kRows, typename Rows>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(Rows x, int rows, int64_t in, const __nv_bfloat16* __restrict__ W, int64_t ldw,
                int64_t out, const __nv_bfloat16* __restrict__ bias,
                __nv_bfloat16* __restrict__ y) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + warp) * kOutputsPerWarp;
  if (n0 >= out) return;  // warp-uniform
  const int n_count = int(out - n0 < kOutputsPerWarp ? out - n0 : kOutputsPerWarp);
  // The weights are constants: on their way to L2 while the kernel before finishes (pdl.cuh).
  for (int j = 0; j < n_count; ++j) prefetch_row_l2(W + (n0 + j) * ldw, in, lane);
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  float acc[kOutputsPerWarp][kRows] = {};
  stream_dot<kOutputsPerWarp, kRows, kSteps>(W, ldw, n0, n_count, x, in, rows, lane, acc);
  store_outputs(acc, rows, n0, n_count, lane, out, bias, y);
}

// gemv_kernel over h = silu_mul(gate, up) of the stacked gu [rows, 2I], h made once a block into
// shared memory (swiglu_rows_to_shared, rows·I bf16 of dynamic shared memory) before the warps
// stream their weights against it: the same sums as gemv_kernel<SwigluRows>.
template <int kRows>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_swiglu_shared_kernel(SwigluRows gu, int rows, int64_t I,
                              const __nv_bfloat16* __restrict__ W, int64_t ldw, int64_t out,
                              const __nv_bfloat16* __restrict__ bias,
                              __nv_bfloat16* __restrict__ y) {
  extern __shared__ uint4 h_raw[];
  __nv_bfloat16* h = reinterpret_cast<__nv_bfloat16*>(h_raw);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + warp) * kOutputsPerWarp;
  const int n_count = n0 >= out ? 0 : int(out - n0 < kOutputsPerWarp ? out - n0 : kOutputsPerWarp);
  for (int j = 0; j < n_count; ++j) prefetch_row_l2(W + (n0 + j) * ldw, I, lane);
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  // Every warp helps make h, so none returns before the barrier.
  swiglu_rows_to_shared(gu, rows, I, h);
  __syncthreads();
  if (n_count == 0) return;
  float acc[kOutputsPerWarp][kRows] = {};
  stream_dot<kOutputsPerWarp, kRows, kSteps>(W, ldw, n0, n_count, PlainRows{h, I}, I, rows, lane,
                                              acc);
  store_outputs(acc, rows, n0, n_count, lane, out, bias, y);
}

// Whether the SwiGLU GEMVs make h once a block in shared memory (set_gemv_swiglu_shared).
std::atomic<bool>& swiglu_shared() {
  static std::atomic<bool> on{true};
  return on;
}

// Block n: output n for every row; thread i reads 4 weights (16 bytes) at k = 4i, 4(i + 256), ...
// and the 4 bf16 of each row beside them; warp sums, then one thread a row adds the warps' sums
// in order (deterministic).
constexpr int kWidenedThreads = 256;

template <int kRows>
__global__ void __launch_bounds__(kWidenedThreads)
    gemv_widened_kernel(const __nv_bfloat16* __restrict__ x, int rows, int64_t in,
                        const float* __restrict__ W, int64_t ldw, int64_t out,
                        float* __restrict__ y) {
  __shared__ float partial[kWidenedThreads / 32][kRows];
  const int64_t n = blockIdx.x;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  // The weight row is constant: on its way to L2 while the kernel before finishes (pdl.cuh).
  for (int64_t k = int64_t(threadIdx.x) * 32; k < in; k += int64_t(kWidenedThreads) * 32)
    prefetch_l2(W + n * ldw + k);
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  float acc[kRows] = {};
  for (int64_t k = int64_t(threadIdx.x) * 4; k < in; k += int64_t(kWidenedThreads) * 4) {
    const float4 w = __ldcs(reinterpret_cast<const float4*>(W + n * ldw + k));
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      const uint2 raw = *reinterpret_cast<const uint2*>(x + int64_t(r) * in + k);
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
      const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
      acc[r] = fmaf(w.x, a.x, acc[r]);
      acc[r] = fmaf(w.y, a.y, acc[r]);
      acc[r] = fmaf(w.z, b.x, acc[r]);
      acc[r] = fmaf(w.w, b.y, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) partial[warp][r] = v;
  }
  __syncthreads();
  if (int(threadIdx.x) < rows) {
    const int r = int(threadIdx.x);
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWidenedThreads / 32; ++w) sum += partial[w][r];
    y[int64_t(r) * out + n] = sum;
  }
}

std::atomic<bool>& gemv_enabled() {
  static std::atomic<bool> enabled = [] { return !env_is("DSEEK_LINEAR_GEMV", "0"); }();
  return enabled;
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// One of the row-count instantiations of a GEMV kernel (one_row for T = 1, else max_rows) over
// ceil(out / kOutputsPerBlock) blocks, with `smem` bytes of dynamic shared memory; `op` names the
// op in errors.
template <typename Kernel, typename Rows>
void launch_gemv_kernel(Kernel one_row, Kernel max_rows, const char* op, const char* name,
                        const Rows& x, int64_t T, int64_t in, const void* w, int64_t ldw,
                        int64_t out, const void* bias, void* y, size_t smem) {
  DSEEK_CHECK(T >= 1 && T <= kGemvMaxRows, "[{}] gemv: {} rows", op, T);
  const int64_t blocks = ceil_div<int64_t>(out, kOutputsPerBlock);
  DSEEK_CHECK(blocks <= INT_MAX, "[{}] gemv: {} outputs exceed the grid", op, out);
  dseek::cuda::launch_pdl(T == 1 ? one_row : max_rows, dim3(unsigned(blocks)), dim3(kWarps * 32),
                          smem, x, int(T), in, static_cast<const __nv_bfloat16*>(w), ldw, out,
                          static_cast<const __nv_bfloat16*>(bias), static_cast<__nv_bfloat16*>(y));
  DSEEK_CUDA_CHECK_LAUNCH(name);
}

template <typename Rows>
void launch_gemv(const Rows& x, int64_t T, int64_t in, const void* w, int64_t ldw, int64_t out,
                 const void* bias, void* y) {
  launch_gemv_kernel(gemv_kernel<1, Rows>, gemv_kernel<kGemvMaxRows, Rows>, "linear", "gemv_kernel",
                     x, T, in, w, ldw, out, bias, y, 0);
}

}  // namespace

bool gemv_takes(int64_t T, int64_t in, const void* x, const void* w, int64_t ldw, DType act) {
  return act == DType::BF16 && T >= 1 && T <= kGemvMaxRows && in % 8 == 0 && ldw % 8 == 0 &&
         aligned16(x) && aligned16(w) && gemv_enabled().load();
}

void set_linear_gemv(bool on) {
  gemv_enabled().store(on);
}

bool linear_gemv_enabled() {
  return gemv_enabled().load();
}

void gemv(const void* x, int64_t T, int64_t in, const void* w, int64_t ldw, int64_t out,
          const void* bias, void* y, DType act) {
  DSEEK_CHECK(act == DType::BF16, "[linear] gemv of {}", dtype_name(act));
  launch_gemv(PlainRows{static_cast<const __nv_bfloat16*>(x), in}, T, in, w, ldw, out, bias, y);
}

bool gemv_swiglu_takes(int64_t T, int64_t I, const void* gu, const void* w, int64_t ldw,
                       DType act) {
  return gemv_takes(T, I, gu, w, ldw, act);  // rows 2I apart, up at I: 16-byte aligned as well
}

void gemv_swiglu(const void* gu, int64_t T, int64_t I, const void* w, int64_t ldw, int64_t out,
                 const void* bias, void* y, DType act) {
  DSEEK_CHECK(act == DType::BF16, "[linear_swiglu] gemv of {}", dtype_name(act));
  const SwigluRows rows{static_cast<const __nv_bfloat16*>(gu), 2 * I, I};
  const size_t h_bytes = size_t(T * I) * sizeof(__nv_bfloat16);
  if (!swiglu_shared().load() || h_bytes > kSwigluSharedMaxBytes) {
    launch_gemv(rows, T, I, w, ldw, out, bias, y);
    return;
  }
  launch_gemv_kernel(gemv_swiglu_shared_kernel<1>, gemv_swiglu_shared_kernel<kGemvMaxRows>,
                     "linear_swiglu", "gemv_swiglu_shared_kernel", rows, T, I, w, ldw, out, bias, y,
                     h_bytes);
}

void set_gemv_swiglu_shared(bool on) {
  swiglu_shared().store(on);
}

bool gemv_swiglu_shared() {
  return swiglu_shared().load();
}

bool gemv_widened_takes(int64_t T, int64_t in, const void* x, const void* w, int64_t ldw,
                        DType x_dtype) {
  return x_dtype == DType::BF16 && T >= 1 && T <= kGemvMaxRows && in % 4 == 0 && ldw % 4 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 8 == 0 && aligned16(w) && gemv_enabled().load();
}

void gemv_widened(const void* x, int64_t T, int64_t in, const float* w, int64_t ldw, int64_t out,
                  float* y) {
  DSEEK_CHECK(T >= 1 && T <= kGemvMaxRows && out <= INT_MAX, "[linear_widened] {} rows, {} outputs",
              T, out);
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  if (T == 1)
    dseek::cuda::launch_pdl(gemv_widened_kernel<1>, dim3(unsigned(out)), dim3(kWidenedThreads), 0,
                            xb, 1, in, w, ldw, out, y);
  else
    dseek::cuda::launch_pdl(gemv_widened_kernel<kGemvMaxRows>, dim3(unsigned(out)),
                            dim3(kWidenedThreads), 0, xb, int(T), in, w, ldw, out, y);
  DSEEK_CUDA_CHECK_LAUNCH("gemv_widened_kernel");
}

}  // namespace dseek::ops::cuda
