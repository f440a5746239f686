// Kernels of the bf16 tensor-core grouped expert GEMMs (launchers in grouped_gemm_tc.cu; the SIMT
// kernels and the contracts in moe.cu and cuda_ops.h). Built from the warp-level blocks of
// attention_mma.cuh (mma.sync.m16n8k16 bf16 → f32, ldmatrix, cp.async; fragment layouts in its
// header comment). Included by bench/kernels/grouped_gemm_tc_emulate.cpp, which runs this source
// on the host.
//
// A block computes a kBM × kBN = 128 × 128 tile of C = A·B with 8 warps (2 along M × 4 along N,
// 64 × 32 each: 4 × 4 mma tiles, 64 f32 accumulators per thread), stepping k by kBK = 32 through
// a kStages = 4 deep cp.async ring in dynamic shared memory (loads run 3 steps ahead of the
// products; 80 KiB, so two blocks fit an SM; __launch_bounds__ holds them to 128 registers per
// thread, which is what they need without spilling).
//
// An operand tile is stored with its contiguous global dimension contiguous in shared memory:
//   - "row" operands (k contiguous: x, dy as A of forward and dx, W as B of forward) as
//     [128 rows][kBK + kPad] and read with ldmatrix;
//   - "k-major" operands (M or N contiguous: W as B of dx, dy as A and x as B of dW) as
//     [kBK][128 + kPad] and read with ldmatrix.trans, which hands out the same fragments.
// Rows are padded by kPad = 8 bf16 so that the 8 row addresses of an ldmatrix matrix fall in 8
// different 16-byte bank groups (80 and 272 byte strides).
// Global loads move 16-byte chunks (8 bf16): the contiguous extent must be a multiple of 8 and
// the base 16-byte aligned (checked by the launchers for activations; a weight matrix that is not
// aligned is read with plain loads instead, decided per block). Chunks past an end are zeros.
//
// Three kernels:
//   - grouped_rows_tc_kernel<B_KN>: C[m, n] = Σ_k A[m, k]·B(k, n) over the rows m of one expert
//     tile (tile schedule tile_start as in moe.cu, in tiles of kBM rows); forward with
//     B(k, n) = W_e[n, k] (B_KN false), dx with B(k, n) = W_e[k, n] (B_KN true). C bf16.
//   - grouped_dw_tc_kernel: dW_e[o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i], one block per
//     (i tile, o tile, expert) that walks its expert's rows in order: deterministic, no atomics.
#pragma once

#include <cstdint>

#include "ops/cuda/attention_mma.cuh"
#include "ops/cuda/expert_tiles.cuh"

namespace dseek::ops::cuda::grouped_tc {

using attention_tc::bf16;
using attention_tc::kPad;

constexpr int kBM = 128, kBN = 128, kBK = 32, kThreads = 256, kStages = 4;
constexpr int kWarpM = 64, kWarpN = 32;             // a warp's share of the block tile
constexpr int kMT = kWarpM / 16, kNT = kWarpN / 8;  // its mma tiles (16 × 8 each)
static_assert(kBM == kBN, "one tile shape serves A and B operands");
static_assert((kBM / kWarpM) * (kBN / kWarpN) * 32 == kThreads, "8 warps cover the tile");

// Row stride and size (bf16 elements) of one operand tile in shared memory.
template <bool KMAJOR>
constexpr int tile_ld() {
  return KMAJOR ? kBM + kPad : kBK + kPad;
}
template <bool KMAJOR>
constexpr int tile_elems() {
  return KMAJOR ? kBK * tile_ld<true>() : kBM * tile_ld<false>();
}
template <bool A_KM, bool B_KN>
constexpr size_t smem_bytes() {
  return size_t(kStages) * size_t(tile_elems<A_KM>() + tile_elems<B_KN>()) * sizeof(bf16);
}

// One operand in global memory. Row operand: element (mn, k) at g[mn·ld + k]; k-major operand:
// at g[k·ld + mn]. mn0 is the block's first row (A) or column (B), mn_end the end of the valid
// ones; aligned: g is 16-byte aligned (cp.async may be used).
struct Operand {
  const bf16* g;
  int64_t ld;
  int64_t mn0, mn_end;
  bool aligned;
};

// tile[r][c] = g[(row0 + r)·ld + col0 + c] for r < ROWS, c < COLS, in 16-byte chunks; a chunk
// with row ≥ row_end or col ≥ col_end is zeros (col0 and col_end multiples of 8, so a chunk is
// either wholly inside or wholly outside). Called by all kThreads threads; cp.async chunks join
// the caller's next commit group.
template <int ROWS, int COLS>
__device__ __forceinline__ void load_chunks(bf16* tile, const bf16* g, int64_t ld, int64_t row0,
                                            int64_t row_end, int64_t col0, int64_t col_end,
                                            bool aligned) {
  constexpr int kChunks = COLS / 8;
  for (int i = int(threadIdx.x); i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const int64_t row = row0 + r, col = col0 + c;
    const bool valid = row < row_end && col < col_end;
    const bf16* src = valid ? g + row * ld + col : g;
    bf16* dst = tile + r * (COLS + kPad) + c;
    if (aligned) {
      attention_tc::cp_async_16(dst, src, valid);
    } else {
      // Plain loads; ordered before the readers by the same __syncthreads as the cp.async data.
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[j] = valid ? src[j] : __float2bfloat16_rn(0.0f);
    }
  }
}

// The k range [k0, k_end) ∩ [k0, k0 + kBK) of one operand into its tile.
template <bool KMAJOR>
__device__ __forceinline__ void load_operand(bf16* tile, const Operand& op, int64_t k0,
                                             int64_t k_end) {
  if (KMAJOR) {
    load_chunks<kBK, kBM>(tile, op.g, op.ld, k0, k_end, op.mn0, op.mn_end, op.aligned);
  } else {
    load_chunks<kBM, kBK>(tile, op.g, op.ld, op.mn0, op.mn_end, k0, k_end, op.aligned);
  }
}

// acc += A_tile · B_tile for this warp's 64 × 32 share, over the kBK columns of one stage.
template <bool A_KM, bool B_KN>
__device__ __forceinline__ void mma_stage(float (&acc)[kMT][kNT][4], const bf16* a, const bf16* b) {
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int wm = (warp / (kBN / kWarpN)) * kWarpM, wn = (warp % (kBN / kWarpN)) * kWarpN;
  constexpr int a_ld = tile_ld<A_KM>(), b_ld = tile_ld<B_KN>();
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) {
    uint32_t af[kMT][4], bf[kNT / 2][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int m = wm + mt * 16;
      if (A_KM) {
        // Stored [k][m]: matrices 0 = k 0-7 / m 0-7, 1 = k 0-7 / m 8-15, 2 = k 8-15 / m 0-7,
        // 3 = k 8-15 / m 8-15; transposed, they are a[0..3].
        attention_tc::ldsm_x4_trans(
            af[mt], a + (kk * 16 + lane % 8 + (lane / 16) * 8) * a_ld + m + ((lane / 8) % 2) * 8);
      } else {
        // Stored [m][k]: matrices 0 = m 0-7 / k 0-7, 1 = m 8-15 / k 0-7, 2 = m 0-7 / k 8-15,
        // 3 = m 8-15 / k 8-15 → a[0..3] (as attention_tc::mma_abt).
        attention_tc::ldsm_x4(af[mt], a + (m + lane % 16) * a_ld + kk * 16 + (lane / 16) * 8);
      }
    }
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      const int n = wn + np * 16;
      if (B_KN) {
        // Stored [k][n] (as attention_tc::mma_pb): b0, b1 of n-tile 2np, then of 2np + 1.
        attention_tc::ldsm_x4_trans(
            bf[np], b + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * b_ld + n + (lane / 16) * 8);
      } else {
        // Stored [n][k] (as attention_tc::mma_abt).
        attention_tc::ldsm_x4(
            bf[np], b + (n + lane % 8 + (lane / 16) * 8) * b_ld + kk * 16 + ((lane / 8) % 2) * 8);
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        attention_tc::mma_bf16(acc[mt][2 * np], af[mt], bf[np][0], bf[np][1]);
        attention_tc::mma_bf16(acc[mt][2 * np + 1], af[mt], bf[np][2], bf[np][3]);
      }
    }
  }
}

// acc += Σ_{k_begin ≤ k < k_end} A(m, k)·B(k, n) over the block's tile, k in steps of kBK in a
// fixed order. k_begin must be a multiple of 8 for a row operand (it is 0 there). Every thread of
// the block calls it (it holds __syncthreads).
template <bool A_KM, bool B_KN>
__device__ __forceinline__ void gemm_mainloop(float (&acc)[kMT][kNT][4], const Operand& A,
                                              const Operand& B, int64_t k_begin, int64_t k_end) {
  namespace at = attention_tc;
  bf16* smem = reinterpret_cast<bf16*>(at::dynamic_smem());
  constexpr int a_elems = tile_elems<A_KM>(), stage_elems = a_elems + tile_elems<B_KN>();
  const int64_t steps = (k_end - k_begin + kBK - 1) / kBK;
  auto load = [&](int64_t step) {
    bf16* st = smem + int(step % kStages) * stage_elems;
    const int64_t k0 = k_begin + step * kBK;
    load_operand<A_KM>(st, A, k0, k_end);
    load_operand<B_KN>(st + a_elems, B, k0, k_end);
  };
  // Every thread commits one group per step (empty ones too), so wait<kStages − 2> at step s
  // means the groups of steps ≤ s have landed.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) load(s);
    at::cp_async_commit();
  }
  for (int64_t s = 0; s < steps; ++s) {
    at::cp_async_wait<kStages - 2>();
    // Step s's tiles are visible to all threads, and every warp is done with step s − 1's
    // buffer, which the load below refills.
    __syncthreads();
    if (s + kStages - 1 < steps) load(s + kStages - 1);
    at::cp_async_commit();
    const bf16* st = smem + int(s % kStages) * stage_elems;
    mma_stage<A_KM, B_KN>(acc, st, st + a_elems);
  }
  at::cp_async_wait<0>();
}

// Calls f(m, n, c0, c1) for this thread's accumulator pairs: rows m0 + …, columns n, n + 1.
template <typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[kMT][kNT][4], int64_t m0,
                                              int64_t n0, F f) {
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int wm = (warp / (kBN / kWarpN)) * kWarpM, wn = (warp % (kBN / kWarpN)) * kWarpN;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t m = m0 + wm + mt * 16 + lane / 4 + half * 8;
        const int64_t n = n0 + wn + nt * 8 + 2 * (lane % 4);
        f(m, n, acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
      }
    }
  }
}

// C[m, :n_total] = A[m, :k_total] · B_e for the rows of one expert tile of kBM rows and kBN
// columns. The grid is 1-D, columns fastest: block b takes row tile b / cols of the schedule
// tile_start (E + 1 entries) and column tile b % cols, so the blocks running at once share a few
// row tiles and their experts' weights in L2 instead of streaming all of A once per column tile.
// A rows k_total apart and 16-byte aligned, C rows n_total apart; n_total, k_total and ldw
// multiples of 8.
template <bool B_KN>
__global__ void __launch_bounds__(kThreads, 2)
    grouped_rows_tc_kernel(const bf16* A, const int64_t* offsets, const int64_t* tile_start,
                           int64_t E, const void* const* w, int64_t ldw, int64_t n_total,
                           int64_t k_total, bf16* C) {
  const int64_t cols = (n_total + kBN - 1) / kBN;
  const int64_t tile = int64_t(blockIdx.x) / cols, n0 = (int64_t(blockIdx.x) % cols) * kBN;
  if (tile >= tile_start[E]) return;  // the grid covers the most tiles any routing can need
  const int64_t e = expert_of_tile(tile_start, E, tile);
  const int64_t m0 = offsets[e] + (tile - tile_start[e]) * kBM, m_end = offsets[e + 1];
  const bf16* W = static_cast<const bf16*>(w[e]);
  const Operand a{A, k_total, m0, m_end, true};
  const Operand b{W, ldw, n0, n_total, (reinterpret_cast<uintptr_t>(W) & 15) == 0};
  float acc[kMT][kNT][4] = {};
  gemm_mainloop<false, B_KN>(acc, a, b, 0, k_total);
  for_each_pair(acc, m0, n0, [&](int64_t m, int64_t n, float c0, float c1) {
    // n is even and n_total a multiple of 8: n < n_total covers n + 1.
    if (m < m_end && n < n_total) attention_tc::store_bf16x2(C + m * n_total + n, c0, c1);
  });
}

// dw[e][o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i]: block (i tile, o tile, expert); beta 0
// overwrites (an expert without rows gets zeros). x [N, in] and dy [N, out] 16-byte aligned, in
// and out multiples of 8; dw[e] rows in apart.
__global__ void __launch_bounds__(kThreads, 2)
    grouped_dw_tc_kernel(const bf16* x, const bf16* dy, const int64_t* offsets, int64_t out,
                         int64_t in, float* const* dw, float beta) {
  const int64_t e = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  // A(m = o, k = r) = dy[r·out + o], B(k = r, n = i) = x[r·in + i]: both k-major.
  const Operand a{dy, out, m0, out, true};
  const Operand b{x, in, n0, in, true};
  float acc[kMT][kNT][4] = {};
  gemm_mainloop<true, true>(acc, a, b, offsets[e], offsets[e + 1]);
  float* d = dw[e];
  for_each_pair(acc, m0, n0, [&](int64_t m, int64_t n, float c0, float c1) {
    if (m >= out || n >= in) return;
    float* p = d + m * in + n;
    if (beta == 0.0f) {
      p[0] = c0;
      p[1] = c1;
    } else {
      p[0] = beta * p[0] + c0;
      p[1] = beta * p[1] + c1;
    }
  });
}

}  // namespace dseek::ops::cuda::grouped_tc
