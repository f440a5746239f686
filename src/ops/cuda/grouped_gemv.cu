// grouped_linear's forward for few rows per expert (decode: one to a few tokens per expert), where
// the tiled GEMM kernels leave most of the GPU idle: with 6 of 64 experts hit by one token, a tile
// per (expert, 64 outputs) gives ~130 blocks, each walking k serially. Here every warp owns
// kOutputsPerWarp output features of one expert and streams their weight rows once per chunk of
// kChunk expert rows, 16 bytes a lane, so the weights are read at memory speed by thousands of
// warps. Deterministic: each output is one warp's fixed-order sum and one butterfly reduction.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_dot.cuh"
#include "ops/cuda/grouped_gemv.h"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kWarps = 8;           // warps per block
constexpr int kOutputsPerWarp = 2;  // output features per warp
constexpr int kChunk = 8;           // expert rows per pass over the weight rows
constexpr int kOutputsPerBlock = kWarps * kOutputsPerWarp;
constexpr int kOneRowSteps = 4;  // weight loads in flight a lane for an expert of one row

constexpr int kSinglePassSteps = 6;  // a lane's loads for a row of up to 1536 in one pass

// Whether an expert's one row streams with kOneRowSteps loads in flight: only where its length
// fills whole passes. A V2-Lite down projection (1408 columns: 5.5 warp-wide loads) would leave
// the second pass mostly idle, and measured 18% slower than the one-load loop on an H100 (2,248
// against 2,659 GB/s, bench_cuda_ops). Either way each lane sums its k in the same order.
__device__ __forceinline__ bool streams_whole_passes(int64_t in) {
  return in % (int64_t(kOneRowSteps) * 32 * 8) == 0;
}

// Whether an expert's one row fits a single pass of kSinglePassSteps loads a lane: every load of
// the row issued before the first is used (the 1408-column down projection: 6 loads for half the
// lanes, 5 for the rest). The one-load loop over such a row waited on 6 loads one after another,
// and the decode step's fused down projection took 21.3 µs for 35 MB of weights (run AB).
__device__ __forceinline__ bool fits_single_pass(int64_t in) {
  return in <= int64_t(kSinglePassSteps) * 32 * 8;
}

// Whether an expert's one row streams (one_row_dot) rather than going through the chunk loop.
__device__ __forceinline__ bool one_row_streams(int64_t in) {
  return fits_single_pass(in) || streams_whole_passes(in);
}

// acc += an expert's one row (`row`, `in` columns, one_row_streams(in)) against its weight rows
// n0 … n0 + n_count − 1: in one pass where it fits, else in whole passes of kOneRowSteps. Each
// lane sums its k in the same order either way.
template <typename Rows>
__device__ __forceinline__ void one_row_dot(const __nv_bfloat16* W, int64_t ldw, int64_t n0,
                                            int n_count, const Rows& row, int64_t in, int lane,
                                            float (&acc)[kOutputsPerWarp][1]) {
  if (fits_single_pass(in))
    stream_dot<kOutputsPerWarp, 1, kSinglePassSteps>(W, ldw, n0, n_count, row, in, 1, lane, acc);
  else
    stream_dot<kOutputsPerWarp, 1, kOneRowSteps>(W, ldw, n0, n_count, row, in, 1, lane, acc);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Lane 0 of the warp writes its sums: y[(row0 + r)·out + n0 + j] for j < n_count and r < rows.
template <typename T, int kRows>
__device__ __forceinline__ void write_outputs(float (&acc)[kOutputsPerWarp][kRows], int rows, T* y,
                                              int64_t row0, int64_t out, int64_t n0, int n_count,
                                              int lane) {
#pragma unroll
  for (int j = 0; j < kOutputsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float v = warp_sum(acc[j][r]);
      if (lane == 0 && j < n_count && r < rows) y[(row0 + r) * out + n0 + j] = from_f32<T>(v);
    }
  }
}

// acc[j][r] += Σ_k W[n_j, k]·x[r, k] for this lane's share of k: 8 consecutive bf16 per load.
__device__ __forceinline__ void dot_vec8(const __nv_bfloat16* W, int64_t ldw, int64_t n0,
                                         int n_count, const __nv_bfloat16* x, int64_t in, int rows,
                                         int lane, float (&acc)[kOutputsPerWarp][kChunk]) {
  for (int64_t k = int64_t(lane) * 8; k < in; k += 32 * 8) {
    float w[kOutputsPerWarp][8];
#pragma unroll
    for (int j = 0; j < kOutputsPerWarp; ++j) {
      uint4 raw = make_uint4(0, 0, 0, 0);
      if (j < n_count) raw = *reinterpret_cast<const uint4*>(W + (n0 + j) * ldw + k);
      const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) w[j][i] = __bfloat162float(h[i]);
    }
#pragma unroll
    for (int r = 0; r < kChunk; ++r) {
      if (r >= rows) break;
      const uint4 raw = *reinterpret_cast<const uint4*>(x + int64_t(r) * in + k);
      const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float xv = __bfloat162float(h[i]);
#pragma unroll
        for (int j = 0; j < kOutputsPerWarp; ++j) acc[j][r] += w[j][i] * xv;
      }
    }
  }
}

// The same, one element a lane per step: any dtype, size and alignment.
template <typename T>
__device__ __forceinline__ void dot_scalar(const T* W, int64_t ldw, int64_t n0, int n_count,
                                           const T* x, int64_t in, int rows, int lane,
                                           float (&acc)[kOutputsPerWarp][kChunk]) {
  for (int64_t k = lane; k < in; k += 32) {
    float w[kOutputsPerWarp];
#pragma unroll
    for (int j = 0; j < kOutputsPerWarp; ++j)
      w[j] = j < n_count ? to_f32(W[(n0 + j) * ldw + k]) : 0.0f;
#pragma unroll
    for (int r = 0; r < kChunk; ++r) {
      if (r >= rows) break;
      const float xv = to_f32(x[int64_t(r) * in + k]);
#pragma unroll
      for (int j = 0; j < kOutputsPerWarp; ++j) acc[j][r] += w[j] * xv;
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
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    grouped_gemv_kernel(const T* x, int64_t in, const int64_t* offsets, int64_t E,
                        const void* const* w, int64_t ldw, int64_t out, T* y,
                        bool one_row_streaming) {
  // Which experts and rows come from the dispatch before: nothing to fetch ahead (pdl.cuh).
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  const int64_t e = nth_busy_expert(offsets, E, int(blockIdx.y));
  if (e < 0) return;  // fewer busy experts than block rows (uniform over the block)
  const int64_t r_begin = offsets[e], r_end = offsets[e + 1];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + warp) * kOutputsPerWarp;
  if (r_begin >= r_end || n0 >= out) return;  // warp-uniform
  const int n_count = int(out - n0 < kOutputsPerWarp ? out - n0 : kOutputsPerWarp);
  const T* W = static_cast<const T*>(w[e]);
  if constexpr (sizeof(T) == 2) {
    // One row for this expert (every expert of a batch-1 decode step): the dense GEMV's dot with
    // several weight loads in flight a lane (gemv_dot.cuh) instead of the chunk loop's one.
    if (one_row_streaming && r_end - r_begin == 1 && one_row_streams(in) &&
        vector_ok(W, ldw, x + r_begin * in, in)) {
      float acc[kOutputsPerWarp][1] = {};
      const PlainRows row{reinterpret_cast<const __nv_bfloat16*>(x + r_begin * in), in};
      one_row_dot(reinterpret_cast<const __nv_bfloat16*>(W), ldw, n0, n_count, row, in, lane, acc);
      write_outputs(acc, 1, y, r_begin, out, n0, n_count, lane);
      return;
    }
  }
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kChunk) {
    const int rows = int(r_end - r0 < kChunk ? r_end - r0 : kChunk);
    const T* xr = x + r0 * in;
    float acc[kOutputsPerWarp][kChunk] = {};
    if constexpr (sizeof(T) == 2) {
      if (vector_ok(W, ldw, xr, in)) {
        dot_vec8(reinterpret_cast<const __nv_bfloat16*>(W), ldw, n0, n_count,
                 reinterpret_cast<const __nv_bfloat16*>(xr), in, rows, lane, acc);
      } else {
        dot_scalar(W, ldw, n0, n_count, xr, in, rows, lane, acc);
      }
    } else {
      dot_scalar(W, ldw, n0, n_count, xr, in, rows, lane, acc);
    }
    write_outputs(acc, rows, y, r0, out, n0, n_count, lane);
  }
}

// grouped_gemv_kernel for bf16 rows of h = silu_mul(gate, up) read out of the stacked gate_up
// product (gemv_dot.cuh's SwigluRows, rows 2I apart): experts of one row stream with several
// loads in flight, the others in chunks of kChunk rows, one load a step, as the kernel above.
__global__ void __launch_bounds__(kWarps * 32)
    grouped_gemv_swiglu_kernel(const __nv_bfloat16* gu, int64_t I, const int64_t* offsets,
                               int64_t E, const void* const* w, int64_t ldw, int64_t out,
                               __nv_bfloat16* y) {
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  const int64_t e = nth_busy_expert(offsets, E, int(blockIdx.y));
  if (e < 0) return;
  const int64_t r_begin = offsets[e], r_end = offsets[e + 1];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + warp) * kOutputsPerWarp;
  if (r_begin >= r_end || n0 >= out) return;  // warp-uniform
  const int n_count = int(out - n0 < kOutputsPerWarp ? out - n0 : kOutputsPerWarp);
  const auto* W = static_cast<const __nv_bfloat16*>(w[e]);
  if (r_end - r_begin == 1 && one_row_streams(I)) {
    float acc[kOutputsPerWarp][1] = {};
    one_row_dot(W, ldw, n0, n_count, SwigluRows{gu + r_begin * 2 * I, 2 * I, I}, I, lane, acc);
    write_outputs(acc, 1, y, r_begin, out, n0, n_count, lane);
    return;
  }
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kChunk) {
    const int rows = int(r_end - r0 < kChunk ? r_end - r0 : kChunk);
    float acc[kOutputsPerWarp][kChunk] = {};
    stream_dot<kOutputsPerWarp, kChunk, 1>(
        W, ldw, n0, n_count, SwigluRows{gu + r0 * 2 * I, 2 * I, I}, I, rows, lane, acc);
    write_outputs(acc, rows, y, r0, out, n0, n_count, lane);
  }
}

// grouped_gemv_swiglu_kernel with h made once a block: each chunk's rows of h = silu_mul(gate, up)
// into shared memory (swiglu_rows_to_shared, kChunk·I bf16 of dynamic shared memory, or I for an
// expert of one row) by every thread, then the warps' dots against it — the same sums. Every warp
// takes part in making h and in the barriers, so none leaves before its dots.
__global__ void __launch_bounds__(kWarps * 32)
    grouped_gemv_swiglu_shared_kernel(const __nv_bfloat16* gu, int64_t I, const int64_t* offsets,
                                      int64_t E, const void* const* w, int64_t ldw, int64_t out,
                                      __nv_bfloat16* y) {
  extern __shared__ uint4 h_raw[];
  __nv_bfloat16* h = reinterpret_cast<__nv_bfloat16*>(h_raw);
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  const int64_t e = nth_busy_expert(offsets, E, int(blockIdx.y));
  if (e < 0) return;  // uniform over the block
  const int64_t r_begin = offsets[e], r_end = offsets[e + 1];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + warp) * kOutputsPerWarp;
  const int n_count = n0 >= out ? 0 : int(out - n0 < kOutputsPerWarp ? out - n0 : kOutputsPerWarp);
  const auto* W = static_cast<const __nv_bfloat16*>(w[e]);
  if (r_end - r_begin == 1 && one_row_streams(I)) {  // uniform over the block
    swiglu_rows_to_shared(SwigluRows{gu + r_begin * 2 * I, 2 * I, I}, 1, I, h);
    __syncthreads();
    if (n_count == 0) return;
    float acc[kOutputsPerWarp][1] = {};
    one_row_dot(W, ldw, n0, n_count, PlainRows{h, I}, I, lane, acc);
    write_outputs(acc, 1, y, r_begin, out, n0, n_count, lane);
    return;
  }
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kChunk) {
    const int rows = int(r_end - r0 < kChunk ? r_end - r0 : kChunk);
    if (r0 > r_begin) __syncthreads();  // the last chunk's dots are done with h
    swiglu_rows_to_shared(SwigluRows{gu + r0 * 2 * I, 2 * I, I}, rows, I, h);
    __syncthreads();
    if (n_count == 0) continue;
    float acc[kOutputsPerWarp][kChunk] = {};
    stream_dot<kOutputsPerWarp, kChunk, 1>(W, ldw, n0, n_count, PlainRows{h, I}, I, rows, lane,
                                           acc);
    write_outputs(acc, rows, y, r0, out, n0, n_count, lane);
  }
}

std::atomic<bool>& one_row_streaming() {
  static std::atomic<bool> on{true};
  return on;
}

}  // namespace

void set_grouped_gemv_streaming(bool on) {
  one_row_streaming().store(on);
}

bool grouped_gemv_takes(int64_t N, int64_t E) {
  return N <= kGemvRowsPerExpert * E;
}

void grouped_gemv(const void* x, const int64_t* offsets, int64_t E, int64_t N, int64_t in,
                  const void* const* w, int64_t ldw, int64_t out, void* y, DType act) {
  const int64_t blocks = ceil_div<int64_t>(out, kOutputsPerBlock);
  DSEEK_CHECK(blocks <= INT_MAX && E <= 65535,
              "[grouped_linear] {} experts × {} outputs exceed "
              "the grid",
              E, out);
  const dim3 grid{unsigned(blocks), unsigned(std::min(E, N))};
  DSEEK_DISPATCH_ACT(act, T,
                     dseek::cuda::launch_pdl(grouped_gemv_kernel<T>, grid, dim3(kWarps * 32), 0,
                                             static_cast<const T*>(x), in, offsets, E, w, ldw, out,
                                             static_cast<T*>(y), one_row_streaming().load()));
  DSEEK_CUDA_CHECK_LAUNCH("grouped_gemv_kernel");
}

bool grouped_gemv_swiglu_takes(int64_t N, int64_t E, const void* gu, int64_t I, int64_t ldw,
                               DType act) {
  return act == DType::BF16 && grouped_gemv_takes(N, E) && I % 8 == 0 && ldw % 8 == 0 &&
         reinterpret_cast<uintptr_t>(gu) % 16 == 0 && one_row_streaming().load();
}

void grouped_gemv_swiglu(const void* gu, const int64_t* offsets, int64_t E, int64_t N, int64_t I,
                         const void* const* w, int64_t ldw, int64_t out, void* y) {
  const int64_t blocks = ceil_div<int64_t>(out, kOutputsPerBlock);
  DSEEK_CHECK(blocks <= INT_MAX && E <= 65535,
              "[grouped_linear_swiglu] {} experts × {} outputs exceed the grid", E, out);
  const dim3 grid{unsigned(blocks), unsigned(std::min(E, N))};
  const size_t h_bytes = size_t(kChunk * I) * sizeof(__nv_bfloat16);
  if (gemv_swiglu_shared() && h_bytes <= kSwigluSharedMaxBytes) {
    dseek::cuda::launch_pdl(grouped_gemv_swiglu_shared_kernel, grid, dim3(kWarps * 32), h_bytes,
                            static_cast<const __nv_bfloat16*>(gu), I, offsets, E, w, ldw, out,
                            static_cast<__nv_bfloat16*>(y));
    DSEEK_CUDA_CHECK_LAUNCH("grouped_gemv_swiglu_shared_kernel");
    return;
  }
  dseek::cuda::launch_pdl(grouped_gemv_swiglu_kernel, grid, dim3(kWarps * 32), 0,
                          static_cast<const __nv_bfloat16*>(gu), I, offsets, E, w, ldw, out,
                          static_cast<__nv_bfloat16*>(y));
  DSEEK_CUDA_CHECK_LAUNCH("grouped_gemv_swiglu_kernel");
}

}  // namespace dseek::ops::cuda
