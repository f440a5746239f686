// Kernels of the block-scaled FP8 GEMMs of training on Hopper's warpgroup tensor cores
// (wgmma.m64n128k32 E4M3 × E4M3 → f32; launchers in fp8_train.cu, which picks them over its
// CUDA-core kernels on sm_90a). The recipe is ops/fp8_train.h's: activations and gradients in
// 1×128 tiles, weights in 128×128 blocks, and every 128-long stretch of the reduction summed by
// the tensor cores alone, then promoted into f32 totals scaled by its two tile scales — DeepSeek-
// V3's promotion interval (§3.3.2), which also bounds how far the tensor cores' reduced-precision
// accumulation can drift.
//   - fp8_rows_wgmma_kernel<T>: y[m, n] = Σ_kb sa[m, kb]·sw_e[n/128, kb]·Σ_{k in kb} a[m, k]·w_e[n,
//   k]
//     over one expert's 128-row tile (the forward with w = W, the dgrad with w = Wᵀ's blocks), or
//     over 128 rows of a dense GEMM (fp8_gemm where cuBLASLt's block-scaled GEMM does not apply);
//   - fp8_wgrad_wgmma_kernel: dW_e[n, k] (+)= Σ_j sdy[j, n]·sx[j, k]·Σ_{t in j} dy[t, n]·x[t, k]
//     over the column tiles j of expert e, reading dyᵀ and xᵀ in the padded K-major layout of
//     fp8_transpose_col_tiles (fp8_train.cu): tile j's 128 tokens are bytes 128·j … 128·j + 127
//     of every channel's line, zeros past the expert's rows.
// wgmma takes 8-bit operands K-major only, so every operand here is: the rows of a, w, dyᵀ, xᵀ
// run along the reduction. A 128-byte line of a tile is then exactly one scale tile's 128 codes,
// and one step of the main loop is one promotion interval.
//
// A block is WG warpgroups (the row kernel two, 256 threads on a 128 × 128 output tile; the wgrad
// one, on 64 × 128), each one m64n128 product into a 64-register partial sum, promoted into 64
// f32 totals after every step. Steps go through a ring of kStages shared-memory stages (an A tile
// of 64·WG lines and a B tile of 128, in the 128-byte swizzled layout of wgmma.cuh, plus the
// wgrad's scales), loaded with cp.async kStages − 1 steps ahead by all threads. Per step s:
//   wait for this thread's loads of s; fence.proxy.async; barrier (every thread's loads of s are
//   in place, and every warpgroup is done with step s − 1, whose buffer the next load refills);
//   issue the loads of s + kStages − 1; issue s's four k32 products, the first overwriting the
//   partial sum; commit; read s's scales; wait for the products; promote.
// Operands: 16-byte chunks, the reduction extent a multiple of 16 and bases 16-byte aligned (the
// launchers check); chunks past an end are zeros, so partial tiles compute on zeros and are
// masked at the store.
#pragma once

#include <cstdint>

#include "ops/cuda/attention_mma.cuh"
#include "ops/cuda/expert_tiles.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda::fp8_wgmma {

// WG warpgroups a block (the row kernel 2; the wgrad 1, see its comment): an A tile of 64·WG
// lines, a B tile of 128, 128·WG threads.
constexpr int kBN = 128, kBK = 128, kStages = 4;
constexpr int threads(int wg) {
  return 128 * wg;
}
constexpr int a_tile_bytes(int wg) {
  return 64 * wg * kBK;
}
constexpr int kBTileBytes = 128 * kBK;    // 16 KiB of codes
constexpr int kScaleBytes = 2 * 128 * 4;  // the wgrad's ≤ 128 + 128 f32 scales of a stage
// A tile, B tile, scales; every tile 1024-aligned.
constexpr int stage_bytes(int wg) {
  return a_tile_bytes(wg) + kBTileBytes + wgmma::kAtomBytes;
}
// Dynamic shared memory of the ring, with room to align it to 1024 bytes.
constexpr size_t smem_bytes(int wg) {
  return size_t(kStages) * stage_bytes(wg) + wgmma::kAtomBytes;
}
// The row kernel's shape.
constexpr int kBM = 128, kThreads = threads(2);
constexpr size_t kSmemBytes = smem_bytes(2);
static_assert(kBK == wgmma::kLineBytes, "a K-major line holds one step's 128 codes");
static_assert(kScaleBytes <= wgmma::kAtomBytes, "the scales fit the stage's last atom");

// A K-major operand: lines mn0 … (rows of g, `ld` codes apart) that exist below mn_end.
struct Operand {
  const uint8_t* g;
  int64_t ld, mn0, mn_end;
};

// Codes [k0, min(k0 + 128, k_end)) of the operand's LINES lines into a swizzled tile
// (1024-aligned): 8 chunks of 16 codes a line, spread over the block's THREADS threads. Chunks join
// the caller's next commit group.
template <int LINES, int THREADS>
__device__ __forceinline__ void load_tile(unsigned char* tile, const Operand& op, int64_t k0,
                                          int64_t k_end) {
  static_assert(LINES * 8 % THREADS == 0);
#pragma unroll
  for (int j = 0; j < LINES * 8 / THREADS; ++j) {
    const int i = int(threadIdx.x) + j * THREADS;
    const int line = i / 8, chunk = i % 8;
    const int64_t row = op.mn0 + line, col = k0 + chunk * 16;
    const bool valid = row < op.mn_end && col < k_end;
    const uint8_t* src = valid ? op.g + row * op.ld + col : op.g;
    attention_tc::cp_async_16(
        reinterpret_cast<attention_tc::bf16*>(tile + wgmma::swizzled_chunk(line, chunk)),
        reinterpret_cast<const attention_tc::bf16*>(src), valid);
  }
}

// Descriptor of the k32 slice kk (0..3) of a K-major tile, rows 64·half … 64·half + 63 (A) or all
// 128 (B, half 0; wgmma reads n128 from the same 8-line groups, SBO apart).
__device__ __forceinline__ uint64_t slice_desc(uint32_t tile, int half, int kk) {
  return wgmma::make_desc(tile + uint32_t(half) * 64 * wgmma::kLineBytes + uint32_t(kk) * 32, 16,
                          wgmma::kAtomBytes);
}

// The 1024-aligned start of the ring in dynamic shared memory.
__device__ __forceinline__ unsigned char* ring_base() {
  unsigned char* raw = attention_tc::dynamic_smem();
  const uint32_t address = wgmma::smem_address(raw);
  return raw + (wgmma::kAtomBytes - (address % wgmma::kAtomBytes)) % wgmma::kAtomBytes;
}

// total += Σ over `steps` steps s of promote(s)-scaled (Σ_{k in step s} A(m, k)·B(n, k)), step s
// covering k = k_begin + 128·s … + 127 (below k_end), for this warpgroup's 64 rows of the tile.
// load_scales(stage_scales, s) issues the cp.asyncs of step s's scales (or nothing);
// promote(total, partial, stage_scales, s) folds the partial sum in. Every thread of the block
// calls it (it holds barriers).
template <int WG, typename LoadScales, typename Promote>
__device__ __forceinline__ void mainloop(float (&total)[64], const Operand& A, const Operand& B,
                                         int64_t k_begin, int64_t k_end, int64_t steps,
                                         LoadScales load_scales, Promote promote) {
  constexpr int kA = a_tile_bytes(WG), kStage = stage_bytes(WG);
  unsigned char* smem = ring_base();
  const uint32_t smem_addr = wgmma::smem_address(smem);
  const int half = int(threadIdx.x) / 128;
  float partial[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) partial[i] = 0.0f;
  auto load = [&](int64_t step) {
    unsigned char* stage = smem + int(step % kStages) * kStage;
    const int64_t k0 = k_begin + step * kBK;
    load_tile<64 * WG, threads(WG)>(stage, A, k0, k_end);
    load_tile<128, threads(WG)>(stage + kA, B, k0, k_end);
    load_scales(reinterpret_cast<float*>(stage + kA + kBTileBytes), step);
  };
  // One commit group per step, empty ones too, so wait<kStages − 2> at step s means the groups of
  // steps ≤ s have landed.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) load(s);
    attention_tc::cp_async_commit();
  }
  for (int64_t s = 0; s < steps; ++s) {
    attention_tc::cp_async_wait<kStages - 2>();
    wgmma::fence_proxy_async();
    __syncthreads();
    if (s + kStages - 1 < steps) load(s + kStages - 1);
    attention_tc::cp_async_commit();
    unsigned char* stage = smem + int(s % kStages) * kStage;
    const uint32_t stage_addr = smem_addr + uint32_t(s % kStages) * kStage;
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::fence_operand(partial[i]);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk)
      wgmma::mma_m64n128k32_e4m3(partial, slice_desc(stage_addr, half, kk),
                                 slice_desc(stage_addr + kA, 0, kk), kk > 0 ? 1 : 0);
    wgmma::commit();
    wgmma::wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::fence_operand(partial[i]);
    promote(total, partial, reinterpret_cast<const float*>(stage + kA + kBTileBytes), s);
  }
  attention_tc::cp_async_wait<0>();
}

// This thread's accumulator (i = 4j + 2h + c) sits at tile row 64·half + 16·warp + lane/4 + 8h,
// column 8j + 2(lane % 4) + c (wgmma.cuh's register layout).
__device__ __forceinline__ int acc_row(int h) {
  const int t = int(threadIdx.x) % 128, half = int(threadIdx.x) / 128;
  return half * 64 + (t / 32) * 16 + (t % 32) / 4 + 8 * h;
}
__device__ __forceinline__ int acc_col(int j) {
  return j * 8 + 2 * (int(threadIdx.x) % 4);
}

template <typename T>
__device__ __forceinline__ void store_pair(T* p, float c0, float c1);
template <>
__device__ __forceinline__ void store_pair<float>(float* p, float c0, float c1) {
  p[0] = c0;
  p[1] = c1;
}
template <>
__device__ __forceinline__ void store_pair<attention_tc::bf16>(attention_tc::bf16* p, float c0,
                                                               float c1) {
  attention_tc::store_bf16x2(p, c0, c1);
}

// A row-GEMM block's tile: block b covers output columns [n0, n0 + 128) of row tile b / cols;
// grouped (offsets set), the row tile is one of expert e's, rows [m0, m_end) of the expert's
// (tile_start from grouped tiling); dense, rows [128·tile, M). False when the block has no tile
// (the grid covers the most tiles any routing can need, or M ends before it).
struct RowTile {
  int64_t e = 0, m0 = 0, m_end = 0, n0 = 0, cols = 0;
};
__device__ __forceinline__ bool row_tile(int64_t M, const int64_t* offsets,
                                         const int64_t* tile_start, int64_t E, int64_t N,
                                         RowTile& r) {
  r.cols = (N + kBN - 1) / kBN;
  const int64_t tile = int64_t(blockIdx.x) / r.cols;
  r.n0 = (int64_t(blockIdx.x) % r.cols) * kBN;
  r.e = 0;
  r.m0 = tile * kBM;
  r.m_end = M;
  if (offsets) {
    if (tile >= tile_start[E]) return false;
    r.e = expert_of_tile(tile_start, E, tile);
    r.m0 = offsets[r.e] + (tile - tile_start[r.e]) * kBM;
    r.m_end = offsets[r.e + 1];
    return true;
  }
  return r.m0 < M;
}

// Stores a thread's 64 accumulators (wgmma.cuh's layout: accumulator 4j + 2h + c at row
// row + 8h, column col + 8j + c) into y [·, N], rows below m_end only.
template <typename T>
__device__ __forceinline__ void store_tile(const float (&total)[64], T* y, int64_t N, int64_t row,
                                           int64_t col, int64_t m_end) {
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = row + 8 * h, n = col + 8 * j;
      // n is even and N too: n < N covers n + 1.
      if (m < m_end && n < N)
        store_pair(y + m * N + n, total[4 * j + 2 * h], total[4 * j + 2 * h + 1]);
    }
}

// Grid: 1-D, (row tiles of the schedule, including idle ones) × ceil(N/128), column tiles fastest.
// a [M, K] codes with sa [M, ceil(K/128)]; w [E, N, K] codes with sw [E, ceil(N/128),
// ceil(K/128)]; y [M, N] (T = f32 or bf16), rows of the experts only. offsets == nullptr: one
// dense GEMM of all M rows (E = 1, tile_start unused, ceil(M/128) row tiles).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    fp8_rows_wgmma_kernel(const uint8_t* a, const float* sa, int64_t M, const int64_t* offsets,
                          const int64_t* tile_start, int64_t E, const uint8_t* w, const float* sw,
                          int64_t N, int64_t K, T* y) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();  // not launched on builds without sm_90a code (grouped_wgmma_available)
#else
  RowTile r;
  if (!row_tile(M, offsets, tile_start, E, N, r)) return;
  const int64_t e = r.e, m0 = r.m0, m_end = r.m_end, n0 = r.n0, cols = r.cols;
  const int64_t kb = (K + kBK - 1) / kBK;
  const Operand A{a, K, m0, m_end};
  const Operand B{w + e * N * K, K, n0, N};
  // This thread's two rows' scales (a row past the expert's end reads its last row's: finite, and
  // never stored) and the weight block row's.
  const float* sa0 = sa + min(m0 + acc_row(0), m_end - 1) * kb;
  const float* sa1 = sa + min(m0 + acc_row(1), m_end - 1) * kb;
  const float* sw_row = sw + (e * cols + n0 / kBN) * kb;
  float total[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) total[i] = 0.0f;
  // Step s's scales are read during step s − 1, so their loads overlap a step's products.
  float q0 = sa0[0], q1 = sa1[0], qw = sw_row[0];
  mainloop<2>(
      total, A, B, 0, K, kb, [](float*, int64_t) {},
      [&](float(&t)[64], const float(&p)[64], const float*, int64_t s) {
        const float s0 = q0 * qw, s1 = q1 * qw;
        if (s + 1 < kb) {
          q0 = sa0[s + 1];
          q1 = sa1[s + 1];
          qw = sw_row[s + 1];
        }
#pragma unroll
        for (int i = 0; i < 64; ++i) t[i] += p[i] * ((i & 2) ? s1 : s0);
      });
  store_tile(total, y, N, m0 + acc_row(0), n0 + acc_col(0), m_end);
#endif
}

// Grid (ceil(K/128), ceil(N/(64·WG)), E), 128·WG threads. WG = 1 (kWgradWarpgroups): an expert's
// reduction is short (its tokens, ~3 steps of 128 for 64 experts of 4096 × 6 rows) and each
// block ends with a 64·WG × 128 f32 store, so two one-warpgroup blocks an SM — one storing while
// the other multiplies — beat one of two (180 registers a thread hold the totals and the partial
// sums, so two 256-thread blocks do not fit): 985 against 1,096 µs for the V2-Lite layer's
// gate/up wgrad on an H200. The emulator checks both. dyt [N, P] and xt [K, P]: the padded
// transposed column tiles (P = 128 × slots; expert e's tiles are slots floor(offsets[e]/128) + e +
// j); sdy [slots, N], sx [slots, K]; dw[e] [N, K] f32, beta 0 overwrites (an empty expert's dW
// becomes 0), 1 adds. Each dW element is summed by one thread in a fixed order: deterministic.
template <int WG>
__global__ void __launch_bounds__(threads(WG), WG == 1 ? 2 : 1)
    fp8_wgrad_wgmma_kernel(const uint8_t* dyt, const float* sdy, const uint8_t* xt, const float* sx,
                           int64_t N, int64_t K, int64_t P, const int64_t* offsets,
                           float* const* dw, float beta) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();
#else
  const int64_t e = blockIdx.z;
  const int64_t k0 = int64_t(blockIdx.x) * kBN, n0 = int64_t(blockIdx.y) * (64 * WG);
  const int64_t base = offsets[e] / 128 + e;  // the expert's first column tile
  const int64_t steps = (offsets[e + 1] - offsets[e] + 127) / 128;
  const Operand A{dyt, P, n0, N};
  const Operand B{xt, P, k0, K};
  // Step s's scales: sdy[base + s, n0 …] (16·WG chunks, at dst[0 …]) and sx[base + s, k0 …]
  // (32 chunks, at dst[128 …]); N and K are multiples of 16, so a chunk is wholly inside or past
  // the end.
  auto load_scales = [&](float* dst, int64_t s) {
    constexpr int kDy = 16 * WG;
    const int i = int(threadIdx.x);
    if (i >= kDy + 32) return;
    const bool is_x = i >= kDy;
    const int j = is_x ? i - kDy : i;
    const int64_t c = (is_x ? k0 : n0) + 4 * j;
    const bool valid = c < (is_x ? K : N);
    const float* src = (is_x ? sx + (base + s) * K : sdy + (base + s) * N) + (valid ? c : 0);
    attention_tc::cp_async_16(reinterpret_cast<attention_tc::bf16*>(dst + (is_x ? 128 : 0) + 4 * j),
                              reinterpret_cast<const attention_tc::bf16*>(src), valid);
  };
  float total[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) total[i] = 0.0f;
  mainloop<WG>(total, A, B, base * 128, (base + steps) * 128, steps, load_scales,
               [&](float(&t)[64], const float(&p)[64], const float* scales, int64_t) {
                 const float s0 = scales[acc_row(0)], s1 = scales[acc_row(1)];
#pragma unroll
                 for (int j = 0; j < 16; ++j) {
                   const float x0 = scales[128 + acc_col(j)], x1 = scales[128 + acc_col(j) + 1];
                   t[4 * j + 0] += p[4 * j + 0] * (s0 * x0);
                   t[4 * j + 1] += p[4 * j + 1] * (s0 * x1);
                   t[4 * j + 2] += p[4 * j + 2] * (s1 * x0);
                   t[4 * j + 3] += p[4 * j + 3] * (s1 * x1);
                 }
               });
  float* d = dw[e];
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + acc_row(h), k = k0 + acc_col(j);
      if (n >= N || k >= K) continue;
      float* p = d + n * K + k;
      const float c0 = total[4 * j + 2 * h], c1 = total[4 * j + 2 * h + 1];
      if (beta == 0.0f) {
        p[0] = c0;
        p[1] = c1;
      } else {
        p[0] = beta * p[0] + c0;
        p[1] = beta * p[1] + c1;
      }
    }
#endif
}

constexpr int kWgradWarpgroups = 1;

}  // namespace dseek::ops::cuda::fp8_wgmma
