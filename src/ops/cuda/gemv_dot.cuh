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

// Token rows as stream_dot reads them: 8 consecutive bf16 of row r at column k.
struct PlainRows {
  const __nv_bfloat16* x;
  int64_t ld;  // elements between rows
  __device__ __forceinline__ uint4 load(int r, int64_t k) const {
    return *reinterpret_cast<const uint4*>(x + int64_t(r) * ld + k);
  }
};

// The rows of h = silu_mul(gate, up) for the [gate | up] rows of a stacked gate_up product (rows
// ld apart, up at column offset `up`), computed as they are read: each value is the silu_mul
// kernel's (activation.cu) f32 expression rounded once to bf16, so the product is the same as
// silu_mul followed by the GEMV, without h in memory or a kernel for it.
struct SwigluRows {
  const __nv_bfloat16* gu;
  int64_t ld, up;
  __device__ __forceinline__ uint4 load(int r, int64_t k) const {
    const __nv_bfloat16* row = gu + int64_t(r) * ld + k;
    const uint4 g_raw = *reinterpret_cast<const uint4*>(row);
    const uint4 u_raw = *reinterpret_cast<const uint4*>(row + up);
    const __nv_bfloat16* g = reinterpret_cast<const __nv_bfloat16*>(&g_raw);
    const __nv_bfloat16* u = reinterpret_cast<const __nv_bfloat16*>(&u_raw);
    uint4 out;
    __nv_bfloat16* h = reinterpret_cast<__nv_bfloat16*>(&out);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float gv = __bfloat162float(g[i]);
      h[i] = __float2bfloat16(gv / (1.0f + expf(-gv)) * __bfloat162float(u[i]));
    }
    return out;
  }
};

// h = silu_mul(gate, up) for `rows` rows of a stacked gate_up product (SwigluRows's layout) into
// h [rows, I] in shared memory, by every thread of the block, once: the values SwigluRows::load
// gives, so a GEMV over h (PlainRows) sums what one over SwigluRows sums, where each warp would
// recompute every value of h (an expf each) on its loads' critical path. I % 8 == 0.
__device__ __forceinline__ void swiglu_rows_to_shared(const SwigluRows& gu, int rows, int64_t I,
                                                      __nv_bfloat16* h) {
  const int64_t per_row = I / 8;
  for (int64_t i = threadIdx.x; i < int64_t(rows) * per_row; i += blockDim.x) {
    const int64_t r = i / per_row, k = (i % per_row) * 8;
    *reinterpret_cast<uint4*>(h + r * I + k) = gu.load(int(r), k);
  }
}

// acc[j][r] += Σ_k W[n0 + j, k]·x[r, k] over this lane's k (8 consecutive elements at lane·8 +
// s·256 + i·kSteps·256), for j < n_count and r < rows (≤ kRows); x[r, k] from rows.load. Needs
// in % 8 == 0 and 16-byte aligned rows (ldw, the rows' strides and offsets multiples of 8,
// aligned bases). Weights are read streaming (__ldcs: each is read once; L2 is left to the token
// rows and the next kernels' inputs).
template <int kOutputs, int kRows, int kSteps, typename Rows>
__device__ __forceinline__ void stream_dot(const __nv_bfloat16* __restrict__ W, int64_t ldw,
                                           int64_t n0, int n_count, const Rows& rows_in, int64_t in,
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
        const uint4 xr = rows_in.load(r, k);
#pragma unroll
        for (int j = 0; j < kOutputs; ++j) add_products8(w[j][s], xr, acc[j][r]);
      }
    }
  }
}

}  // namespace dseek::ops::cuda
