// The bf16 grouped expert GEMMs of grouped_gemm_wgmma_kernels.cuh as persistent warp-specialised
// kernels, the form of fp8_tma_kernels.cuh's FP8 ones: one thread loads the tiles with the tensor
// memory accelerator (tma.cuh) through a ring of kStages stages (tma_ring.cuh), two warpgroups
// multiply. Both walk their 128 × 256 output tiles blockIdx.x, + gridDim.x, … with one block an
// SM, so the loader fetches the next tile's first steps while the multipliers store a tile.
//
// grouped_rows_tma_kernel<B_KN>: the forward and dx (grouped_rows_wgmma_kernel's products, steps
// and order: the same bits) over tiles of 128 rows × 256 columns. A stage holds 64 k of the
// expert's 128-row tile of A (two 64-row boxes of the activations' map) and of the weight's 256
// columns (four boxes of expert e's own map: the experts are separate tensors, so each has a
// tensor map, made once with its ExpertMatrices).
// Rows of a box past the expert's end are the next expert's (or zeros past the array): their
// products land in rows the store skips.
//
// grouped_dw_tma_kernel: the weight gradient dW_e[o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i]
// (grouped_dw_wgmma_kernel's).
//
// Why: an expert's reduction is short (its rows, ~384 of 24,576 for 64 experts of 4096 × 6) and
// each tile ends in a large f32 store, so the one-tile-a-block cp.async kernel spends most of its
// time starting tiles (its first loads, one step ahead) and storing them: ~180 TFLOP/s on
// V2-Lite's experts. Here one block an SM walks the tiles blockIdx.x, + gridDim.x, … (n fastest,
// then o, then the expert: the blocks at work at one time share an expert's rows in L2); the
// loader streams every tile's steps through the ring without waiting for the stores, so the next
// tile's operands are in shared memory when the multipliers finish storing. The tiles are 128 (o)
// × 256 (i), reading a third less from L2 per FLOP than 128 × 128 ones: 7% faster on V2-Lite's
// experts (docs/BENCHMARKS.md, run W, where storing the tiles by bulk copies from shared memory
// gained nothing).
//
// A stage holds one 64-row step of both operands as six 64 × 64 boxes (one 128-byte swizzled
// line a row, 8 KiB each): dy's columns o0 … o0 + 63 and o0 + 64 … (A, M-major, the two regions
// of grouped_gemm_wgmma_kernels.cuh's MN-major tile) and x's columns i0 … i0 + 255 (B, four
// boxes, two n128 products a k16 slice). The step's rows start at offsets[e] + 64·s and may run
// past the expert's last row into the next expert's rows (or past the array, where the copy fills
// zeros): at an expert's last, partial step the multipliers zero those lines (whole lines, so the
// swizzle does not matter) before multiplying — warpgroup h its A region and B regions 2h, 2h +
// 1, then both meet at a named barrier, as both read all of B. The products then run in the
// cp.async kernel's order (steps of 64 rows from offsets[e], four k16 slices each) into the same
// accumulators: the same dW bits.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/grouped_gemm_wgmma_kernels.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/tma_ring.cuh"

namespace dseek::ops::cuda::grouped_tma {

using attention_tc::bf16;

using tma::kMultipliers;
using tma::kMultiplierWarps;
using tma::kThreads;

constexpr int kStep = 64;                             // rows (k) a step
constexpr int kBoxBytes = kStep * wgmma::kLineBytes;  // 64 rows × 64 bf16
static_assert(grouped_wgmma::kBK == kStep && grouped_wgmma::kBM == 128 &&
              grouped_wgmma::kBN == 128);

// Both kernels' tiles are 128 rows × 256 columns (a warpgroup's 64 rows × two n128 products a
// k16 slice), which read each A slice for twice the columns: a stage holds two boxes of A and
// four of B (48 KiB), four stages.
constexpr int kCols = 256;
constexpr int kStages = 4;
constexpr int kStageBytes = 6 * kBoxBytes;
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + wgmma::kAtomBytes;

struct DwTile {
  int64_t e, m0, n0, k_begin, k_end;  // dW_e's rows m0 … (o), columns n0 … (i); the expert's rows
};

__device__ __forceinline__ DwTile dw_tile(int64_t t, int64_t m_tiles, int64_t n_tiles,
                                          const int64_t* offsets) {
  DwTile w;
  w.e = t / (m_tiles * n_tiles);
  const int64_t r = t % (m_tiles * n_tiles);
  w.m0 = (r / n_tiles) * 128;
  w.n0 = (r % n_tiles) * kCols;
  w.k_begin = offsets[w.e];
  w.k_end = offsets[w.e + 1];
  return w;
}

// Tile t of the routing's row tiles × column tiles (columns fastest: the blocks at work at one time
// share a row tile of A in L2).
struct RowsTile {
  int64_t e, m0, m_end, n0;
};
__device__ __forceinline__ RowsTile rows_tile(int64_t t, int64_t cols, const int64_t* offsets,
                                              const int64_t* tile_start, int64_t E) {
  RowsTile r;
  const int64_t tile = t / cols;
  r.n0 = (t % cols) * kCols;
  r.e = expert_of_tile(tile_start, E, tile);
  r.m0 = offsets[r.e] + (tile - tile_start[r.e]) * 128;
  r.m_end = offsets[r.e + 1];
  return r;
}

// Keeps the compiler from moving accesses of a warpgroup's accumulators across its asynchronous
// products (wgmma::fence_operand on each).
__device__ __forceinline__ void fence_accumulators(float (&acc)[2][64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[0][i]);
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[1][i]);
}

// One 64-long step of a warpgroup's 64 × 256 tile from ring stage `stage` (A's two boxes, then
// B's four): four k16 slices, each A slice (region `half`) times B's two n128 halves; then waits
// until one step's products (this one's) are left in flight, so the previous step's stage is free.
template <bool A_MN, bool B_MN>
__device__ __forceinline__ void multiply_step(float (&acc)[2][64], uint32_t stage, int half) {
  fence_accumulators(acc);
  wgmma::fence();
#pragma unroll
  for (int kk = 0; kk < kStep / 16; ++kk) {
    const uint64_t a = grouped_wgmma::slice_desc<A_MN>(stage, half, kk);
    wgmma::mma_m64n128k16<A_MN ? 1 : 0, B_MN ? 1 : 0>(
        acc[0], a, grouped_wgmma::slice_desc<B_MN>(stage + 2 * kBoxBytes, 0, kk));
    wgmma::mma_m64n128k16<A_MN ? 1 : 0, B_MN ? 1 : 0>(
        acc[1], a, grouped_wgmma::slice_desc<B_MN>(stage + 4 * kBoxBytes, 0, kk));
  }
  wgmma::commit();
  wgmma::wait<1>();
  fence_accumulators(acc);
}

// The 256 multiplying threads meet (the loader's warpgroup is not counted).
__device__ __forceinline__ void multipliers_sync() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("bar.sync 1, %0;\n" ::"n"(128 * kMultipliers) : "memory");
#endif
}

// Grid: min(tiles, SMs) blocks of kThreads. map_dy over dy [N, out] and map_x over x [N, in]
// (tma_bf16_map, boxes of 64 rows); dw[e] [out, in], f32, or bf16 where BF16_DW (each value
// rounded to nearest even once, after the beta sum in f32: half the bytes stored, the wgrad being
// bound by its stores); beta 0 overwrites (an expert without rows gets zeros), 1 adds. `squares`,
// where not null, gets each multiplier warp's Σ v² (in double) of the dW values it stored (as
// stored) over all of the block's tiles, at blockIdx.x · kMultiplierWarps + its warp among the
// multipliers (a block's tiles are fixed by its index, so the slots' values do not depend on
// timing).
template <bool BF16_DW>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_dw_tma_kernel(const __grid_constant__ CUtensorMap map_dy,
                          const __grid_constant__ CUtensorMap map_x, const int64_t* offsets,
                          int64_t E, int64_t out, int64_t in, void* const* dw, float beta,
                          double* squares) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();  // not launched on builds without sm_90a code (grouped_wgmma_available)
#else
  const int64_t m_tiles = (out + 127) / 128, n_tiles = (in + kCols - 1) / kCols;
  const int64_t tiles = E * m_tiles * n_tiles;
  __shared__ uint64_t full[kStages], empty[kStages];
  const tma::Ring<kStages, kStageBytes> ring{full, empty, tma::ring_base()};
  const int warpgroup = int(threadIdx.x) / 128;
  ring.init();

  if (warpgroup == 0) {  // the loader
    tma::lower_registers<tma::kLoaderRegisters>();
    if (threadIdx.x == 0) {
      tma::prefetch_map(&map_dy);
      tma::prefetch_map(&map_x);
      int64_t step = 0;  // over all of this block's tiles
      for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const DwTile w = dw_tile(t, m_tiles, n_tiles, offsets);
        for (int64_t k0 = w.k_begin; k0 < w.k_end; k0 += kStep, ++step) {
          unsigned char* stage = ring.claim(step);
          uint64_t* bar = &ring.full[ring.stage(step)];
          for (int h = 0; h < 2; ++h)
            tma::load_2d(stage + h * kBoxBytes, &map_dy, int32_t(w.m0 + 64 * h), int32_t(k0), bar);
          for (int h = 0; h < 4; ++h)
            tma::load_2d(stage + (2 + h) * kBoxBytes, &map_x, int32_t(w.n0 + 64 * h), int32_t(k0),
                         bar);
        }
      }
    }
    return;
  }

  tma::raise_registers<tma::kMultiplierRegisters>();
  const int half = warpgroup - 1;  // this multiplier's 64 rows (o) of each tile
  const int t128 = int(threadIdx.x) % 128;
  int64_t step = 0;
  double sum = 0.0;  // of the squares this thread stores
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const DwTile w = dw_tile(t, m_tiles, n_tiles, offsets);
    float acc[2][64];  // columns n0 … n0 + 127, n0 + 128 … n0 + 255
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[0][i] = acc[1][i] = 0.0f;
    const int64_t steps = (w.k_end - w.k_begin + kStep - 1) / kStep;
    for (int64_t s = 0; s < steps; ++s, ++step) {
      const uint32_t stage = ring.acquire(step);
      const int64_t valid = w.k_end - (w.k_begin + s * kStep);
      if (valid < kStep) {
        // Lines valid … 63 of this warpgroup's A region and of B regions 2·half, 2·half + 1:
        // zeros.
        unsigned char* base = ring.stage_bytes(step);
        const int lines = kStep - int(valid);
        for (int i = t128; i < 3 * lines * 8; i += 128) {
          const int which = i / (lines * 8);  // 0: A, 1 and 2: B
          const int region = which == 0 ? half : 2 + 2 * half + (which - 1);
          const int line = int(valid) + (i % (lines * 8)) / 8, chunk = i % 8;
          *reinterpret_cast<uint4*>(base + region * kBoxBytes + line * wgmma::kLineBytes +
                                    chunk * 16) = make_uint4(0, 0, 0, 0);
        }
        wgmma::fence_proxy_async();
        multipliers_sync();
      }
      multiply_step<true, true>(acc, stage, half);
      if (s > 0) ring.release(step - 1, t128);
    }
    wgmma::wait<0>();
    fence_accumulators(acc);
    if (steps > 0) ring.release(step - 1, t128);

    // This thread's accumulator pairs (wgmma.cuh's register layout): rows row, row + 8 of dW_e,
    // columns n, n + 1 for n = n0 + 8j + 2(lane % 4).
    void* d = dw[w.e];
    const int64_t row = w.m0 + half * 64 + (t128 / 32) * 16 + (t128 % 32) / 4;
    auto store = [&](int64_t m, int64_t n, float c0, float c1) {
      if (m >= out || n >= in) return;
      // n is even and in a multiple of 8: one store of the pair (8 bytes, or 4 in bf16).
      if constexpr (BF16_DW) {
        uint32_t* p = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(d) + m * in + n);
        if (beta != 0.0f) {
          const uint32_t old = *p;
          c0 = beta * __uint_as_float(old << 16) + c0;
          c1 = beta * __uint_as_float(old & 0xffff0000u) + c1;
        }
        const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(c0)),
                       hi = __bfloat16_as_ushort(__float2bfloat16_rn(c1));
        *p = lo | hi << 16;
        c0 = __uint_as_float(lo << 16);  // the squares of the stored values
        c1 = __uint_as_float(hi << 16);
      } else {
        float2* p = reinterpret_cast<float2*>(static_cast<float*>(d) + m * in + n);
        if (beta != 0.0f) {
          const float2 old = *p;
          c0 = beta * old.x + c0;
          c1 = beta * old.y + c1;
        }
        *p = make_float2(c0, c1);
      }
      sum += double(c0) * double(c0) + double(c1) * double(c1);
    };
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int64_t n = w.n0 + q * 128 + j * 8 + 2 * (t128 % 4);
        store(row, n, acc[q][4 * j], acc[q][4 * j + 1]);
        store(row + 8, n, acc[q][4 * j + 2], acc[q][4 * j + 3]);
      }
  }
  if (squares) {
    sum = warp_sum(sum);
    if (t128 % 32 == 0)
      squares[int64_t(blockIdx.x) * kMultiplierWarps + (int(threadIdx.x) - 128) / 32] = sum;
  }
#endif
}

// C[m, :n_total] = A[m, :k_total] · B_e for every row m of expert e: forward (B_KN false) B(k, n) =
// W_e[n, k], dx B(k, n) = W_e[k, n]. Grid: min(the most row tiles any routing can need × column
// tiles of kCols, SMs) blocks of kThreads; the routing's own count comes from tile_start[E].
// map_a over A [M, k_total] and w_maps[e] over W_e (tma_bf16_map, boxes of 64 rows: forward
// [n_total, k_total], dx [k_total, n_total]). A last column tile's products past n_total run on
// the copies' zeros and are not stored (a branch between the two halves' products would make the
// compiler fence them).
template <bool B_KN>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_rows_tma_kernel(const __grid_constant__ CUtensorMap map_a, const CUtensorMap* w_maps,
                            const int64_t* offsets, const int64_t* tile_start, int64_t E,
                            int64_t n_total, int64_t k_total, bf16* C) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();  // not launched on builds without sm_90a code (grouped_wgmma_available)
#else
  const int64_t cols = (n_total + kCols - 1) / kCols, tiles = tile_start[E] * cols;
  const int64_t steps = (k_total + kStep - 1) / kStep;
  __shared__ uint64_t full[kStages], empty[kStages];
  const tma::Ring<kStages, kStageBytes> ring{full, empty, tma::ring_base()};
  const int warpgroup = int(threadIdx.x) / 128;
  ring.init();

  if (warpgroup == 0) {  // the loader
    tma::lower_registers<tma::kLoaderRegisters>();
    if (threadIdx.x == 0) {
      tma::prefetch_map(&map_a);
      int64_t step = 0;  // over all of this block's tiles
      for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const RowsTile r = rows_tile(t, cols, offsets, tile_start, E);
        const CUtensorMap* map_w = w_maps + r.e;
        for (int64_t s = 0; s < steps; ++s, ++step) {
          unsigned char* stage = ring.claim(step);
          uint64_t* bar = &ring.full[ring.stage(step)];
          const int32_t k0 = int32_t(s * kStep);
          for (int h = 0; h < 2; ++h)
            tma::load_2d(stage + h * kBoxBytes, &map_a, k0, int32_t(r.m0 + 64 * h), bar);
          for (int h = 0; h < 4; ++h) {
            unsigned char* box = stage + (2 + h) * kBoxBytes;
            if (B_KN)  // W_e[k, n]: 64 rows of k, 64 columns of n a box
              tma::load_2d(box, map_w, int32_t(r.n0 + 64 * h), k0, bar);
            else  // W_e[n, k]: 64 rows of n, 64 columns of k a box
              tma::load_2d(box, map_w, k0, int32_t(r.n0 + 64 * h), bar);
          }
        }
      }
    }
    return;
  }

  tma::raise_registers<tma::kMultiplierRegisters>();
  const int half = warpgroup - 1;  // this multiplier's 64 rows of each tile
  const int t128 = int(threadIdx.x) % 128;
  int64_t step = 0;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const RowsTile r = rows_tile(t, cols, offsets, tile_start, E);
    float acc[2][64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[0][i] = acc[1][i] = 0.0f;
    for (int64_t s = 0; s < steps; ++s, ++step) {
      const uint32_t stage = ring.acquire(step);
      multiply_step<false, B_KN>(acc, stage, half);
      if (s > 0) ring.release(step - 1, t128);
    }
    wgmma::wait<0>();
    fence_accumulators(acc);
    if (steps > 0) ring.release(step - 1, t128);
    const int64_t row = r.m0 + half * 64 + (t128 / 32) * 16 + (t128 % 32) / 4;
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        // n is even and n_total a multiple of 8: n < n_total covers n + 1.
        const int64_t n = r.n0 + q * 128 + j * 8 + 2 * (t128 % 4);
        if (n >= n_total) continue;
        if (row < r.m_end)
          attention_tc::store_bf16x2(C + row * n_total + n, acc[q][4 * j], acc[q][4 * j + 1]);
        if (row + 8 < r.m_end)
          attention_tc::store_bf16x2(C + (row + 8) * n_total + n, acc[q][4 * j + 2],
                                     acc[q][4 * j + 3]);
      }
  }
#endif
}
}  // namespace dseek::ops::cuda::grouped_tma
