// grouped_linear's forward for few rows per expert (decode: one to a few tokens per expert), where
// the tiled GEMM kernels leave most of the GPU idle: with 6 of 64 experts hit by one token, a tile
// per (expert, 64 outputs) gives ~130 blocks, each walking k serially. Here every warp owns
// kOut output features (GemvShape) of one expert and streams their weight rows once per chunk of
// kChunk expert rows, 16 bytes a lane, so the weights are read at memory speed by thousands of
// warps. Deterministic: each output is one warp's fixed-order sum and one butterfly reduction.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/grouped_gemv.h"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kWarps = 8;  // warps per block
constexpr int kChunk = 8;  // expert rows per pass over the weight rows
// The kernel's shape: kOut output features per warp, the weight loads of kSteps k-steps issued
// before the first is used (kOut·kSteps 16-byte loads in flight a lane). 2×1 is the default;
// DSEEK_GROUPED_GEMV=4x1, 2x2 or 4x2 picks another (bench_cuda_ops times them side by side).
struct GemvShape {
  int outputs, steps;
};
GemvShape gemv_shape() {
  const char* v = std::getenv("DSEEK_GROUPED_GEMV");  // read each call: the bench switches it
  if (v && std::string(v) == "4x1") return {4, 1};
  if (v && std::string(v) == "2x2") return {2, 2};
  if (v && std::string(v) == "4x2") return {4, 2};
  return {2, 1};
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[j][r] += Σ_k W[n_j, k]·x[r, k] for this lane's share of k: 8 consecutive bf16 per load,
// the loads of kSteps k-steps (kOut rows each) issued before any is used.
template <int kOut, int kSteps>
__device__ __forceinline__ void dot_vec8(const __nv_bfloat16* W, int64_t ldw, int64_t n0,
                                         int n_count, const __nv_bfloat16* x, int64_t in, int rows,
                                         int lane, float (&acc)[kOut][kChunk]) {
  for (int64_t k0 = int64_t(lane) * 8; k0 < in; k0 += kSteps * 32 * 8) {
    uint4 raw[kSteps][kOut];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int64_t k = k0 + int64_t(s) * 32 * 8;
#pragma unroll
      for (int j = 0; j < kOut; ++j)
        raw[s][j] = j < n_count && k < in ? *reinterpret_cast<const uint4*>(W + (n0 + j) * ldw + k)
                                          : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int64_t k = k0 + int64_t(s) * 32 * 8;
      if (k >= in) break;  // this lane's later steps are past the end too
      float w[kOut][8];
#pragma unroll
      for (int j = 0; j < kOut; ++j) {
        const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&raw[s][j]);
#pragma unroll
        for (int i = 0; i < 8; ++i) w[j][i] = __bfloat162float(h[i]);
      }
#pragma unroll
      for (int r = 0; r < kChunk; ++r) {
        if (r >= rows) break;
        const uint4 xraw = *reinterpret_cast<const uint4*>(x + int64_t(r) * in + k);
        const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&xraw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xv = __bfloat162float(h[i]);
#pragma unroll
          for (int j = 0; j < kOut; ++j) acc[j][r] += w[j][i] * xv;
        }
      }
    }
  }
}

// The same, one element a lane per step: any dtype, size and alignment.
template <typename T, int kOut>
__device__ __forceinline__ void dot_scalar(const T* W, int64_t ldw, int64_t n0, int n_count,
                                           const T* x, int64_t in, int rows, int lane,
                                           float (&acc)[kOut][kChunk]) {
  for (int64_t k = lane; k < in; k += 32) {
    float w[kOut];
#pragma unroll
    for (int j = 0; j < kOut; ++j) w[j] = j < n_count ? to_f32(W[(n0 + j) * ldw + k]) : 0.0f;
#pragma unroll
    for (int r = 0; r < kChunk; ++r) {
      if (r >= rows) break;
      const float xv = to_f32(x[int64_t(r) * in + k]);
#pragma unroll
      for (int j = 0; j < kOut; ++j) acc[j][r] += w[j] * xv;
    }
  }
}

template <typename T>
__device__ __forceinline__ bool vector_ok(const T* W, int64_t ldw, const T* x, int64_t in) {
  if constexpr (sizeof(T) != 2) {
    return false;
  } else {
    return in % 8 == 0 && ldw % 8 == 0 && (reinterpret_cast<uintptr_t>(W) & 15) == 0 &&
           (reinterpret_cast<uintptr_t>(x) & 15) == 0;
  }
}

// The n-th expert (from 0) that has rows, or −1: every warp works it out for itself, 32 experts
// a step (a ballot of the non-empty ones, then the n-th set bit).
__device__ __forceinline__ int64_t nth_busy_expert(const int64_t* offsets, int64_t E, int n) {
  const int lane = int(threadIdx.x) % 32;
  for (int64_t base = 0; base < E; base += 32) {
    const int64_t i = base + lane;
    const unsigned busy = __ballot_sync(0xffffffffu, i < E && offsets[i + 1] > offsets[i]);
    const int count = __popc(busy);
    if (n < count) {
      unsigned rest = busy;
      for (int j = 0; j < n; ++j) rest &= rest - 1;  // drop the n lowest busy experts
      return base + int64_t(__ffs(int(rest)) - 1);
    }
    n -= count;
  }
  return -1;
}

// Block (output block, y): y[r, n] = Σ_k x[r, k]·W_e[n, k] for the rows r of expert e, the y-th
// expert with rows. The grid has min(E, N) block rows, not E: a decode step routes one token to
// 6 of 64 experts, and 58 rows of blocks that only found no rows were most of the launch.
template <typename T, int kOut, int kSteps>
__global__ void __launch_bounds__(kWarps * 32)
    grouped_gemv_kernel(const T* x, int64_t in, const int64_t* offsets, int64_t E,
                        const void* const* w, int64_t ldw, int64_t out, T* y) {
  const int64_t e = nth_busy_expert(offsets, E, int(blockIdx.y));
  if (e < 0) return;  // fewer busy experts than block rows (uniform over the block)
  const int64_t r_begin = offsets[e], r_end = offsets[e + 1];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + warp) * kOut;
  if (r_begin >= r_end || n0 >= out) return;  // warp-uniform
  const int n_count = int(out - n0 < kOut ? out - n0 : kOut);
  const T* W = static_cast<const T*>(w[e]);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kChunk) {
    const int rows = int(r_end - r0 < kChunk ? r_end - r0 : kChunk);
    const T* xr = x + r0 * in;
    float acc[kOut][kChunk] = {};
    if constexpr (sizeof(T) == 2) {
      if (vector_ok(W, ldw, xr, in)) {
        dot_vec8<kOut, kSteps>(reinterpret_cast<const __nv_bfloat16*>(W), ldw, n0, n_count,
                               reinterpret_cast<const __nv_bfloat16*>(xr), in, rows, lane, acc);
      } else {
        dot_scalar<T, kOut>(W, ldw, n0, n_count, xr, in, rows, lane, acc);
      }
    } else {
      dot_scalar<T, kOut>(W, ldw, n0, n_count, xr, in, rows, lane, acc);
    }
#pragma unroll
    for (int j = 0; j < kOut; ++j) {
#pragma unroll
      for (int r = 0; r < kChunk; ++r) {
        const float v = warp_sum(acc[j][r]);
        if (lane == 0 && j < n_count && r < rows) y[(r0 + r) * out + n0 + j] = from_f32<T>(v);
      }
    }
  }
}

template <typename T, int kOut, int kSteps>
void launch_gemv(const T* x, int64_t in, const int64_t* offsets, int64_t E, int64_t N,
                 const void* const* w, int64_t ldw, int64_t out, T* y) {
  const int64_t blocks = ceil_div<int64_t>(out, int64_t(kWarps) * kOut);
  DSEEK_CHECK(blocks <= INT_MAX && E <= 65535,
              "[grouped_linear] {} experts × {} outputs exceed the grid", E, out);
  const dim3 grid{unsigned(blocks), unsigned(std::min(E, N))};
  grouped_gemv_kernel<T, kOut, kSteps>
      <<<grid, kWarps * 32, 0, stream()>>>(x, in, offsets, E, w, ldw, out, y);
  DSEEK_CUDA_CHECK_LAUNCH("grouped_gemv_kernel");
}

}  // namespace

bool grouped_gemv_takes(int64_t N, int64_t E) {
  return N <= kGemvRowsPerExpert * E;
}

void grouped_gemv(const void* x, const int64_t* offsets, int64_t E, int64_t N, int64_t in,
                  const void* const* w, int64_t ldw, int64_t out, void* y, DType act) {
  const GemvShape shape = gemv_shape();
  DSEEK_DISPATCH_ACT(act, T, {
    const T* xt = static_cast<const T*>(x);
    T* yt = static_cast<T*>(y);
    if (shape.outputs == 4 && shape.steps == 2)
      launch_gemv<T, 4, 2>(xt, in, offsets, E, N, w, ldw, out, yt);
    else if (shape.outputs == 4)
      launch_gemv<T, 4, 1>(xt, in, offsets, E, N, w, ldw, out, yt);
    else if (shape.steps == 2)
      launch_gemv<T, 2, 2>(xt, in, offsets, E, N, w, ldw, out, yt);
    else
      launch_gemv<T, 2, 1>(xt, in, offsets, E, N, w, ldw, out, yt);
  });
}

}  // namespace dseek::ops::cuda
