// The block-scaled FP8 row GEMM of fp8_wgmma_kernels.cuh (the forward and the dgrad of the
// grouped expert GEMMs and of the dense projections cuBLASLt does not take) as a warp-specialised
// kernel, after DeepGEMM: one thread loads the tiles with the tensor memory accelerator
// (tma.cuh) and two warpgroups only multiply and promote. Same maths, tile (128 × 128 outputs,
// 128-long steps = one promotion interval), scales and stores as fp8_rows_wgmma_kernel, so the
// two give the same values; what changes is who waits for what:
//   - fp8_rows_wgmma_kernel's 256 threads load each stage with cp.async and meet at a barrier
//     every step, so the tensor cores idle while both warpgroups promote and while the barrier
//     gathers them;
//   - here the loading warpgroup (its registers lowered to 40) keeps kStages steps in flight
//     through a ring of "full" / "empty" mbarriers, and each multiplying warpgroup (registers
//     raised to 232) waits only for its own step's tiles: one warpgroup's products run while the
//     other promotes.
// Per step s (stage s mod kStages, round r = s / kStages): the loader waits until both
// multipliers released the stage (empty, parity of r − 1; the first round passes), announces the
// 32 KiB and starts the two box copies (A: 128 rows of a at (128·s, m0); B: 128 rows of the
// expert's w at (128·s, e·N + n0)); a multiplier waits for the stage's bytes (full, parity r),
// issues its four k32 products into the partial sum, waits for them, releases the stage and
// promotes. Rows of a box past the expert's (or the array's) end are another expert's codes or
// zeros: their products land in rows the store skips.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/fp8_wgmma_kernels.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/tma_ring.cuh"

namespace dseek::ops::cuda::fp8_tma {

using fp8_wgmma::kBK;
using fp8_wgmma::kBM;
using fp8_wgmma::kBN;

constexpr int kStages = 6;
constexpr int kMultipliers = tma::kMultipliers;  // warpgroups, 64 rows of the tile each
constexpr int kThreads = tma::kThreads;          // the loader first
constexpr int kMultiplierWarps = tma::kMultiplierWarps;
constexpr int kTileBytes = 128 * kBK;  // A or B: 128 lines of 128 codes
constexpr int kStageBytes = 2 * kTileBytes;
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + wgmma::kAtomBytes;  // + alignment
using tma::kLoaderRegisters;
using tma::kMultiplierRegisters;

// The ring of both kernels (tma_ring.cuh): STAGES stages of two 128 × 128 code tiles, A at the
// stage's start, B after it.
template <int STAGES>
using Ring = tma::Ring<STAGES, kStageBytes>;

// A multiplier's 64 × 128 × 128 product of a stage: its half of A (rows 64·half ...) times B, four
// k32 wgmma into `partial`, committed; finish_product waits for them (work may run in between).
__device__ __forceinline__ void start_product(float (&partial)[64], uint32_t a_tile, int half) {
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(partial[i]);
  wgmma::fence();
#pragma unroll
  for (int kk = 0; kk < kBK / 32; ++kk)
    wgmma::mma_m64n128k32_e4m3(partial, fp8_wgmma::slice_desc(a_tile, half, kk),
                               fp8_wgmma::slice_desc(a_tile + kTileBytes, 0, kk), kk > 0 ? 1 : 0);
  wgmma::commit();
}
__device__ __forceinline__ void finish_product(float (&partial)[64]) {
  wgmma::wait<0>();
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(partial[i]);
}

// Grid and arguments as fp8_rows_wgmma_kernel's, with the operands as tensor maps: map_a over a
// [M, K] (boxes of 128 rows), map_w over w as [E·N, K] (boxes of 128 rows).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    fp8_rows_tma_kernel(const __grid_constant__ CUtensorMap map_a, const float* sa, int64_t M,
                        const int64_t* offsets, const int64_t* tile_start, int64_t E,
                        const __grid_constant__ CUtensorMap map_w, const float* sw, int64_t N,
                        int64_t K, T* y) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();  // not launched on builds without sm_90a code (grouped_wgmma_available)
#else
  fp8_wgmma::RowTile r;
  if (!fp8_wgmma::row_tile(M, offsets, tile_start, E, N, r)) return;
  const int64_t e = r.e, m0 = r.m0, m_end = r.m_end, n0 = r.n0, cols = r.cols;
  const int64_t steps = (K + kBK - 1) / kBK;
  __shared__ uint64_t full[kStages], empty[kStages];
  const Ring<kStages> ring{full, empty, fp8_wgmma::ring_base()};
  const int warpgroup = int(threadIdx.x) / 128;
  ring.init();

  if (warpgroup == 0) {  // the loader
    tma::lower_registers<kLoaderRegisters>();
    if (threadIdx.x == 0) {
      tma::prefetch_map(&map_a);
      tma::prefetch_map(&map_w);
      const int32_t a_row = int32_t(m0), w_row = int32_t(e * N + n0);
      for (int64_t s = 0; s < steps; ++s)
        ring.load(s, &map_a, a_row, &map_w, w_row, int32_t(s * kBK));
    }
    return;
  }

  tma::raise_registers<kMultiplierRegisters>();
  const int half = warpgroup - 1;  // this multiplier's 64 rows of the tile
  const int t = int(threadIdx.x) % 128;
  // This thread's accumulator i = 4j + 2h + c sits at tile row 64·half + 16·warp + lane/4 + 8h,
  // column 8j + 2(lane % 4) + c (wgmma.cuh's register layout).
  const int row0 = half * 64 + (t / 32) * 16 + (t % 32) / 4;
  const int col0 = 2 * (t % 4);
  // Its two rows' scales (a row past the expert's end reads its last row's: finite, and never
  // stored) and the weight block row's; step s's are read during step s − 1.
  const float* sa0 = sa + min(m0 + row0, m_end - 1) * steps;
  const float* sa1 = sa + min(m0 + row0 + 8, m_end - 1) * steps;
  const float* sw_row = sw + (e * cols + n0 / kBN) * steps;
  float q0 = sa0[0], q1 = sa1[0], qw = sw_row[0];
  float total[64], partial[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) total[i] = 0.0f;
  for (int64_t s = 0; s < steps; ++s) {
    start_product(partial, ring.acquire(s), half);
    finish_product(partial);
    ring.release(s, t);
    const float s0 = q0 * qw, s1 = q1 * qw;
    if (s + 1 < steps) {
      q0 = sa0[s + 1];
      q1 = sa1[s + 1];
      qw = sw_row[s + 1];
    }
#pragma unroll
    for (int i = 0; i < 64; ++i) total[i] += partial[i] * ((i & 2) ? s1 : s0);
  }
  fp8_wgmma::store_tile(total, y, N, m0 + row0, n0 + col0, m_end);
#endif
}

// --- the grouped weight gradient ----------------------------------------------------------------

// fp8_wgrad_wgmma_kernel's product (dW_e [N, K] (+)= Σ over the expert's column tiles j of
// sdy[j, n]·sx[j, k]·Σ_{t in j} dyᵀ[n, t]·xᵀ[k, t]: the same 64 × 128 products, promotion and
// stores, so the same values) as a persistent warp-specialised kernel. An expert's reduction is
// short (~3 steps of 128 tokens for 64 experts of 4096 × 6 rows) and each tile ends in an f32
// store, so the one-tile-a-block kernel spends most of its time starting tiles (the first stage's
// loads) and storing them. Here one block an SM walks the 128 × 128 tiles blockIdx.x,
// + gridDim.x, …: the loader streams every tile's steps through the ring without waiting for the
// stores (the next tile's loads run while the multipliers store), and the two multiplying
// warpgroups take the tile's two halves of 64 rows of dW (64 channels of dy each), sharing the
// 128 channels of x a stage holds. Scales are read from global memory while a step's products
// run.
constexpr int kWgradStages = 6;
constexpr int kWgradStageBytes = 2 * kTileBytes;  // 128 channels of dyᵀ, 128 of xᵀ
constexpr size_t kWgradSmemBytes = size_t(kWgradStages) * kWgradStageBytes + wgmma::kAtomBytes;

struct WgradTile {
  int64_t e, n0, k0;
  int64_t base, steps;  // the expert's first column tile and how many it has
};

// Tile t of E × ⌈N/128⌉ × ⌈K/128⌉ (k fastest, experts slowest: the blocks at work at one time
// share an expert's columns in L2).
__device__ __forceinline__ WgradTile wgrad_tile(int64_t t, int64_t n_tiles, int64_t k_tiles,
                                                const int64_t* offsets) {
  WgradTile w;
  w.e = t / (n_tiles * k_tiles);
  const int64_t r = t % (n_tiles * k_tiles);
  w.n0 = (r / k_tiles) * kBM;
  w.k0 = (r % k_tiles) * kBN;
  w.base = offsets[w.e] / 128 + w.e;
  w.steps = (offsets[w.e + 1] - offsets[w.e] + 127) / 128;
  return w;
}

// Grid: min(tiles, SMs) blocks of kThreads. map_dyt over dyt [N, P] and map_xt over xt [K, P],
// boxes of 128 rows; the rest as fp8_wgrad_wgmma_kernel's. `squares`, where not null, gets each
// multiplier warp's Σ v² (in double) of the dW values it stored over all of the block's tiles, at
// blockIdx.x · kMultiplierWarps + its warp among the multipliers (a block's tiles are fixed by
// its index, so the slots' values do not depend on timing).
__global__ void __launch_bounds__(kThreads, 1)
    fp8_wgrad_tma_kernel(const __grid_constant__ CUtensorMap map_dyt, const float* sdy,
                         const __grid_constant__ CUtensorMap map_xt, const float* sx, int64_t N,
                         int64_t K, const int64_t* offsets, int64_t E, float* const* dw, float beta,
                         double* squares) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();
#else
  const int64_t n_tiles = (N + kBM - 1) / kBM, k_tiles = (K + kBN - 1) / kBN;
  const int64_t tiles = E * n_tiles * k_tiles;
  __shared__ uint64_t full[kWgradStages], empty[kWgradStages];
  const Ring<kWgradStages> ring{full, empty, fp8_wgmma::ring_base()};
  const int warpgroup = int(threadIdx.x) / 128;
  ring.init();

  if (warpgroup == 0) {  // the loader
    tma::lower_registers<kLoaderRegisters>();
    if (threadIdx.x == 0) {
      tma::prefetch_map(&map_dyt);
      tma::prefetch_map(&map_xt);
      int64_t step = 0;  // over all of this block's tiles
      for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const WgradTile w = wgrad_tile(t, n_tiles, k_tiles, offsets);
        for (int64_t s = 0; s < w.steps; ++s, ++step)
          ring.load(step, &map_dyt, int32_t(w.n0), &map_xt, int32_t(w.k0),
                    int32_t((w.base + s) * 128));
      }
    }
    return;
  }

  tma::raise_registers<kMultiplierRegisters>();
  const int half = warpgroup - 1;  // this multiplier's 64 rows of each tile
  const int t128 = int(threadIdx.x) % 128;
  // This thread's accumulator i = 4j + 2h + c: tile row 64·half + 16·warp + lane/4 + 8h, column
  // 8j + 2(lane % 4) + c (wgmma.cuh's register layout).
  const int row0 = half * 64 + (t128 / 32) * 16 + (t128 % 32) / 4, col0 = 2 * (t128 % 4);
  int64_t step = 0;
  double sum = 0.0;  // of the squares this thread stores
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const WgradTile w = wgrad_tile(t, n_tiles, k_tiles, offsets);
    float total[64], partial[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) total[i] = 0.0f;
    // Rows and columns past N and K read the last one's scales (finite, never stored).
    const int64_t n_a = min(w.n0 + row0, N - 1), n_b = min(w.n0 + row0 + 8, N - 1);
    for (int64_t s = 0; s < w.steps; ++s, ++step) {
      start_product(partial, ring.acquire(step), half);
      // The step's scales, loaded while its products run.
      const float* sdy_row = sdy + (w.base + s) * N;
      const float* sx_row = sx + (w.base + s) * K;
      const float s0 = sdy_row[n_a], s1 = sdy_row[n_b];
      float xs[32];
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const int64_t k = w.k0 + 8 * q + col0;
        xs[2 * q] = sx_row[min(k, K - 1)];
        xs[2 * q + 1] = sx_row[min(k + 1, K - 1)];
      }
      finish_product(partial);
      ring.release(step, t128);
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const float x0 = xs[2 * q], x1 = xs[2 * q + 1];
        total[4 * q + 0] += partial[4 * q + 0] * (s0 * x0);
        total[4 * q + 1] += partial[4 * q + 1] * (s0 * x1);
        total[4 * q + 2] += partial[4 * q + 2] * (s1 * x0);
        total[4 * q + 3] += partial[4 * q + 3] * (s1 * x1);
      }
    }
    float* d = dw[w.e];
#pragma unroll
    for (int q = 0; q < 16; ++q)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = w.n0 + row0 + 8 * h, k = w.k0 + 8 * q + col0;
        if (n >= N || k >= K) continue;
        // k is even and K a multiple of 16: one 8-byte store of the pair.
        float2* p = reinterpret_cast<float2*>(d + n * K + k);
        float c0 = total[4 * q + 2 * h], c1 = total[4 * q + 2 * h + 1];
        if (beta != 0.0f) {
          const float2 old = *p;
          c0 = beta * old.x + c0;
          c1 = beta * old.y + c1;
        }
        *p = make_float2(c0, c1);
        sum += double(c0) * double(c0) + double(c1) * double(c1);
      }
  }
  if (squares) {
    sum = warp_sum(sum);
    if (t128 % 32 == 0)
      squares[int64_t(blockIdx.x) * kMultiplierWarps + (int(threadIdx.x) - 128) / 32] = sum;
  }
#endif
}

}  // namespace dseek::ops::cuda::fp8_tma
