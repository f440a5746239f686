// The weight-streaming dot product of the decode GEMVs (gemv.cu's dense one, grouped_gemv.cu's
// experts with one row): a warp owns kOutputs weight rows of bf16 and sums them against kRows
// token rows, each lane issuing kSteps 16-byte loads per weight row before using any, so a warp
// has kOutputs·kSteps·512 bytes in flight (memory speed needs many bytes in flight, not threads).
// The token rows are a few KB, read from L1/L2 beside them.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace dseek::ops::cuda {

// Asks for the 128-byte line at p to be brought into L2 (no register, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// A warp's prefetch of one weight row of `in` bf16: a line a lane, 32 lines (4 KB) a step.
__device__ __forceinline__ void prefetch_row_l2(const __nv_bfloat16* row, int64_t in, int lane) {
  for (int64_t k = int64_t(lane) * 64; k < in; k += 32 * 64) prefetch_l2(row + k);
}

// acc += Σ over 8 products of the bf16 pairs in w_raw and x_raw, in order.
__device__ __forceinline__ void add_products8(const uint4& w_raw, const uint4& x_raw, float& acc) {
  const __nv_bfloat162* w = reinterpret_cast<const __nv_bfloat162*>(&w_raw);
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(&x_raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(w[i]), xf = __bfloat1622float2(x[i]);
    acc = fmaf(wf.x, xf.x, acc);
    acc = fmaf(wf.y, xf.y, acc);
  }
}

// acc[j][r] += Σ_k W[n0 + j, k]·x[r, k] over this lane's k (8 consecutive elements at lane·8 +
// s·256 + i·kSteps·256), for j < n_count and r < rows (≤ kRows). Needs in % 8 == 0 and 16-byte
// aligned rows (ldw and in multiples of 8, aligned bases). Weights are read streaming (__ldcs:
// each is read once per step, keeping L2 for the token rows and the next kernels' inputs).
template <int kOutputs, int kRows, int kSteps>
__device__ __forceinline__ void stream_dot(const __nv_bfloat16* __restrict__ W, int64_t ldw,
                                           int64_t n0, int n_count,
                                           const __nv_bfloat16* __restrict__ x, int64_t in,
                                           int rows, int lane, float (&acc)[kOutputs][kRows]) {
  constexpr int kStride = 32 * 8;  // elements a warp covers with one load a lane
  for (int64_t k0 = int64_t(lane) * 8; k0 < in; k0 += int64_t(kSteps) * kStride) {
    uint4 w[kOutputs][kSteps];
#pragma unroll
    for (int j = 0; j < kOutputs; ++j) {
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int64_t k = k0 + int64_t(s) * kStride;
        w[j][s] = make_uint4(0, 0, 0, 0);
        if (j < n_count && k < in)
          w[j][s] = __ldcs(reinterpret_cast<const uint4*>(W + (n0 + j) * ldw + k));
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int64_t k = k0 + int64_t(s) * kStride;
        if (k >= in) break;
        const uint4 xr = *reinterpret_cast<const uint4*>(x + int64_t(r) * in + k);
#pragma unroll
        for (int j = 0; j < kOutputs; ++j) add_products8(w[j][s], xr, acc[j][r]);
      }
    }
  }
}

}  // namespace dseek::ops::cuda
