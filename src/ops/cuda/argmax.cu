// ops::argmax_rows on the GPU: one block a row. Each thread keeps the best (value, index) of the
// elements it reads, in increasing index, four 16-byte loads in flight; the block then reduces the
// pairs, a larger value or an equal one at a smaller index winning, so the result is the first
// maximum whatever the order of the partial results. NaN compares false and is never taken; a
// flag per row says whether one was seen.
#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

constexpr int kThreads = 1024;
constexpr int kLoads = 4;  // 16-byte loads a thread issues before comparing

struct Best {
  float v = -INFINITY;
  int i = INT_MAX;  // none yet
  bool nan = false;
};

__device__ __forceinline__ void consider(Best& b, float v, int i) {
  b.nan |= isnan(v);
  if (v > b.v || (v == b.v && i < b.i)) {
    b.v = v;
    b.i = i;
  }
}

__device__ __forceinline__ void consider(Best& b, const Best& o) {
  consider(b, o.v, o.i);
  b.nan |= o.nan;
}

// 16 bytes of a row as f32 values: 4 of f32, 8 of bf16.
__device__ __forceinline__ void consider_chunk(Best& b, const uint4& raw, int k, const float*) {
  consider(b, __uint_as_float(raw.x), k);
  consider(b, __uint_as_float(raw.y), k + 1);
  consider(b, __uint_as_float(raw.z), k + 2);
  consider(b, __uint_as_float(raw.w), k + 3);
}
__device__ __forceinline__ void consider_chunk(Best& b, const uint4& raw, int k,
                                               const __nv_bfloat16*) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __bfloat1622float2(h[j]);
    consider(b, f.x, k + 2 * j);
    consider(b, f.y, k + 2 * j + 1);
  }
}

// Row blockIdx.x of x. `vector`: 16-byte chunks (V a multiple of the chunk's elements, rows
// 16-byte aligned); else element by element.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(const T* __restrict__ x, int64_t ld, int V, bool vector,
                       int32_t* __restrict__ out, int32_t* __restrict__ nan_rows,
                       int64_t nan_stride) {
  const T* row = x + int64_t(blockIdx.x) * ld;
  Best b;
  if (vector) {
    constexpr int kPer = 16 / int(sizeof(T));
    const int chunks = V / kPer;
    const uint4* c = reinterpret_cast<const uint4*>(row);
    for (int c0 = int(threadIdx.x); c0 < chunks; c0 += kLoads * kThreads) {
      uint4 raw[kLoads];
#pragma unroll
      for (int s = 0; s < kLoads; ++s)
        if (c0 + s * kThreads < chunks) raw[s] = __ldcs(c + c0 + s * kThreads);
#pragma unroll
      for (int s = 0; s < kLoads; ++s)
        if (c0 + s * kThreads < chunks)
          consider_chunk(b, raw[s], (c0 + s * kThreads) * kPer, static_cast<const T*>(nullptr));
    }
  } else {
    for (int k = int(threadIdx.x); k < V; k += kThreads) {
      float v;
      if constexpr (sizeof(T) == 4)
        v = float(row[k]);
      else
        v = __bfloat162float(row[k]);
      consider(b, v, k);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    Best o;
    o.v = __shfl_xor_sync(0xffffffffu, b.v, offset);
    o.i = __shfl_xor_sync(0xffffffffu, b.i, offset);
    o.nan = __shfl_xor_sync(0xffffffffu, int(b.nan), offset) != 0;
    consider(b, o);
  }
  __shared__ Best warps[kThreads / 32];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  if (lane == 0) warps[warp] = b;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best all;
    for (int w = 0; w < kThreads / 32; ++w) consider(all, warps[w]);
    out[blockIdx.x] = all.i == INT_MAX ? 0 : all.i;
    if (nan_rows) nan_rows[int64_t(blockIdx.x) * nan_stride] = all.nan ? 1 : 0;
  }
}

}  // namespace

void argmax_rows(const void* x, DType dtype, int64_t ld, int64_t R, int64_t V, int32_t* out,
                 int32_t* nan_rows, int64_t nan_stride) {
  if (R <= 0) return;
  DSEEK_CHECK(R <= INT_MAX && V >= 1 && V <= INT_MAX, "[argmax] {} rows of {}", R, V);
  const size_t bytes = dtype == DType::F32 ? 4 : 2;
  const bool vector = (V * int64_t(bytes)) % 16 == 0 && (ld * int64_t(bytes)) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (dtype == DType::F32)
    argmax_rows_kernel<float><<<unsigned(R), kThreads, 0, stream()>>>(
        static_cast<const float*>(x), ld, int(V), vector, out, nan_rows, nan_stride);
  else
    argmax_rows_kernel<__nv_bfloat16><<<unsigned(R), kThreads, 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(x), ld, int(V), vector, out, nan_rows, nan_stride);
  DSEEK_CUDA_CHECK_LAUNCH("argmax_rows_kernel");
}

}  // namespace dseek::ops::cuda
