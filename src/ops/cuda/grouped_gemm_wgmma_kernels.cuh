// Kernels of the bf16 grouped expert GEMMs on Hopper's warpgroup tensor cores (wgmma; launchers
// in grouped_gemm_tc.cu, which picks them over the mma.sync kernels of grouped_gemm_tc_kernels.cuh
// on sm_90a). The same three products with the same arguments and tile schedule:
//   - grouped_rows_wgmma_kernel<B_KN>: C[m, n] = Σ_k A[m, k]·B(k, n) over one expert's row tile;
//     forward B(k, n) = W_e[n, k] (B K-major), dx B(k, n) = W_e[k, n] (B N-major);
//   - grouped_dw_wgmma_kernel: dW_e[o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i] (A = dyᵀ
//     M-major, B = x N-major), one tile per (i tile, o tile, expert), rows in order:
//     deterministic, no atomics.
//
// A tile is kBM × kBN = 128 × 128, stepped through k in kBK = 64 slices. The kernels are
// persistent (one block per SM walks the tiles b, b + gridDim.x, ...) and warp-specialised:
//   - warpgroup 0 loads: its 128 threads copy one k step of A and B (16 KiB each, the 128-byte
//     swizzled layouts of wgmma.cuh) into a ring of kStages shared-memory stages with cp.async,
//     keeping kLoadsInFlight steps in flight per thread; when a step's copies have landed, each
//     thread fences them for the async proxy and arrives on the stage's `full` mbarrier;
//   - warpgroups 1 and 2 multiply: each waits for a stage's `full` barrier, runs four m64n128k16
//     products on its 64 rows of the tile (64 f32 accumulators per thread), keeps one step in
//     flight (wgmma.wait_group<1>) and then hands the previous step's stage back on its `empty`
//     mbarrier; at the end of a tile they store the accumulators while the loaders already fill
//     the stages with the next tile's first steps.
// The loaders refill stage s only after both multiplying warpgroups released it; they run at most
// kStages − 2 steps ahead of the step being multiplied, which is what one step in flight on each
// side needs not to deadlock. The global step counter (over all of a block's tiles) names the
// stage (step mod kStages) and the barrier phase (step / kStages mod 2).
// Global loads move 16-byte chunks; the contiguous extent must be a multiple of 8 and the base
// 16-byte aligned (as grouped_gemm_tc_kernels.cuh: a weight that is not gets plain loads, per
// tile). Chunks past an end are zeros, so partial tiles compute on zeros and are masked at the
// store.
#pragma once

#include <cstdint>

#include "ops/cuda/grouped_gemm_tc_kernels.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda::grouped_wgmma {

using attention_tc::bf16;
using grouped_tc::Operand;

constexpr int kBM = 128, kBN = 128, kBK = 64;
constexpr int kThreads = 384;  // warpgroup 0 loads, 1 and 2 multiply
constexpr int kStages = 6, kLoadsInFlight = kStages - 2;
constexpr int kTileBytes = 128 * kBK * 2;  // one operand tile of a stage: 16 KiB
constexpr int kStageBytes = 2 * kTileBytes;
static_assert(kBK * 2 == wgmma::kLineBytes, "a K-major line holds one step's k");

// Dynamic shared memory: the ring, aligned to 1024 bytes, then the 2·kStages mbarriers.
constexpr size_t kSmemBytes =
    size_t(kStages) * kStageBytes + wgmma::kAtomBytes + 2 * kStages * sizeof(uint64_t);

// One step's k range [k0, min(k0 + kBK, k_end)) of an operand into its swizzled tile (the base
// 1024-aligned), by the 128 loader threads (t = 0 .. 127). K-major: 128 lines (rows mn0 + line),
// 8 chunks of 8 k each. MN-major: 64 lines (k0 + line), 16 chunks of 8 mn each, chunks 0–7 in the
// first 64-column region and 8–15 in the second, 8 KiB further. cp.async chunks join the
// caller's next commit group.
template <bool MN_MAJOR>
__device__ __forceinline__ void load_tile(unsigned char* tile, const Operand& op, int64_t k0,
                                          int64_t k_end, int t) {
  constexpr int kChunksPerLine = MN_MAJOR ? 16 : 8;
  constexpr int kLines = MN_MAJOR ? kBK : kBM;
#pragma unroll
  for (int j = 0; j < kLines * kChunksPerLine / 128; ++j) {
    const int i = t + j * 128;
    const int line = i / kChunksPerLine, chunk = i % kChunksPerLine;
    int64_t row, col;  // element (row, col) of op.g, col contiguous
    uint32_t offset;
    if (MN_MAJOR) {
      row = k0 + line;
      col = op.mn0 + chunk * 8;
      offset =
          uint32_t(chunk / 8) * (kBK * wgmma::kLineBytes) + wgmma::swizzled_chunk(line, chunk % 8);
    } else {
      row = op.mn0 + line;
      col = k0 + chunk * 8;
      offset = wgmma::swizzled_chunk(line, chunk);
    }
    const bool valid =
        MN_MAJOR ? (row < k_end && col < op.mn_end) : (row < op.mn_end && col < k_end);
    const bf16* src = valid ? op.g + row * op.ld + col : op.g;
    bf16* dst = reinterpret_cast<bf16*>(tile + offset);
    if (op.aligned) {
      attention_tc::cp_async_16(dst, src, valid);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = valid ? src[e] : __float2bfloat16_rn(0.0f);
    }
  }
}

// Descriptor of the k16 slice kk (0..3) of a tile for one warpgroup's m64 (A: its 64 rows,
// `half` = the multiplying warpgroup) or n128 (B, half 0) operand.
template <bool MN_MAJOR>
__device__ __forceinline__ uint64_t slice_desc(uint32_t tile, int half, int kk) {
  if (MN_MAJOR) {
    // Region `half` (its 64 m) for A; both regions (LBO apart) for B's 128 n.
    return wgmma::make_desc(
        tile + uint32_t(half) * (kBK * wgmma::kLineBytes) + uint32_t(kk) * 16 * wgmma::kLineBytes,
        kBK * wgmma::kLineBytes, wgmma::kAtomBytes);
  }
  return wgmma::make_desc(tile + uint32_t(half) * 64 * wgmma::kLineBytes + uint32_t(kk) * 32, 16,
                          wgmma::kAtomBytes);
}

// The shared-memory ring and its barriers, and the block's position in it.
struct Pipeline {
  unsigned char* smem;  // stage 0, 1024-aligned
  uint32_t smem_addr;   // its shared-window address
  uint64_t* full;       // [kStages]: 128 loader arrivals per phase
  uint64_t* empty;      // [kStages]: 2 arrivals (one per multiplying warpgroup) per phase
  int64_t step = 0;     // the global step this thread handles next
};

// Carves the ring out of dynamic shared memory and initialises the barriers (all threads call
// it; it ends with a __syncthreads).
__device__ __forceinline__ Pipeline make_pipeline() {
  unsigned char* raw = attention_tc::dynamic_smem();
  const uint32_t raw_address = wgmma::smem_address(raw);
  const uint32_t pad = (wgmma::kAtomBytes - (raw_address % wgmma::kAtomBytes)) % wgmma::kAtomBytes;
  Pipeline p;
  p.smem = raw + pad;
  p.smem_addr = raw_address + pad;
  p.full = reinterpret_cast<uint64_t*>(p.smem + kStages * kStageBytes);
  p.empty = p.full + kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      wgmma::mbar_init(&p.full[s], 128);
      wgmma::mbar_init(&p.empty[s], 2);
    }
  }
  __syncthreads();
  return p;
}

// Loader side of one tile: the steps of Σ_{k_begin ≤ k < k_end} into the ring.
template <bool A_MN, bool B_MN>
__device__ __forceinline__ void load_steps(Pipeline& p, const Operand& A, const Operand& B,
                                           int64_t k_begin, int64_t k_end) {
  const int t = int(threadIdx.x);  // 0 .. 127
  const int64_t steps = (k_end - k_begin + kBK - 1) / kBK;
  for (int64_t s = 0; s < steps; ++s, ++p.step) {
    const int stage = int(p.step % kStages);
    // Free once both multiplying warpgroups released its previous use (the first pass waits
    // on the phase before the barrier's first, which counts as complete).
    wgmma::mbar_wait(&p.empty[stage], int((p.step / kStages) & 1) ^ 1);
    unsigned char* st = p.smem + stage * kStageBytes;
    const int64_t k0 = k_begin + s * kBK;
    load_tile<A_MN>(st, A, k0, k_end, t);
    load_tile<B_MN>(st + kTileBytes, B, k0, k_end, t);
    attention_tc::cp_async_commit();
    if (p.step >= kLoadsInFlight) {
      // The step kLoadsInFlight back has landed: hand it to the multiplying warpgroups.
      attention_tc::cp_async_wait<kLoadsInFlight>();
      wgmma::fence_proxy_async();
      wgmma::mbar_arrive(&p.full[(p.step - kLoadsInFlight) % kStages]);
    }
  }
}

// After the loader's last tile: the steps still in flight.
__device__ __forceinline__ void flush_loads(Pipeline& p) {
  attention_tc::cp_async_wait<0>();
  wgmma::fence_proxy_async();
  for (int64_t s = p.step - kLoadsInFlight; s < p.step; ++s)
    if (s >= 0) wgmma::mbar_arrive(&p.full[s % kStages]);
}

// Multiplying side of one tile: acc = Σ over its steps, for this warpgroup's 64 rows (half).
template <bool A_MN, bool B_MN>
__device__ __forceinline__ void multiply_steps(Pipeline& p, float (&acc)[64], int half,
                                               int64_t k_begin, int64_t k_end) {
  const bool leader = threadIdx.x % 128 == 0;
  const int64_t steps = (k_end - k_begin + kBK - 1) / kBK;
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  int previous = -1;  // the stage whose product may still be running
  for (int64_t s = 0; s < steps; ++s, ++p.step) {
    const int stage = int(p.step % kStages);
    wgmma::mbar_wait(&p.full[stage], int((p.step / kStages) & 1));
    const uint32_t st = p.smem_addr + uint32_t(stage) * kStageBytes;
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[i]);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)
      wgmma::mma_m64n128k16<A_MN ? 1 : 0, B_MN ? 1 : 0>(acc, slice_desc<A_MN>(st, half, kk),
                                                        slice_desc<B_MN>(st + kTileBytes, 0, kk));
    wgmma::commit();
    wgmma::wait<1>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[i]);
    if (previous >= 0 && leader) wgmma::mbar_arrive(&p.empty[previous]);
    previous = stage;
  }
  wgmma::wait<0>();
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[i]);
  if (previous >= 0 && leader) wgmma::mbar_arrive(&p.empty[previous]);
}

// Calls f(m, n, c0, c1) for this thread's accumulator pairs: tile rows m0 + …, columns n, n + 1
// (the register layout in wgmma.cuh); half = the multiplying warpgroup (0 or 1).
template <typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[64], int half, int64_t m0,
                                              int64_t n0, F f) {
  const int t = int(threadIdx.x) % 128;
  const int64_t row = m0 + half * 64 + (t / 32) * 16 + (t % 32) / 4;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int64_t n = n0 + j * 8 + 2 * (t % 4);
    f(row, n, acc[4 * j], acc[4 * j + 1]);
    f(row + 8, n, acc[4 * j + 2], acc[4 * j + 3]);
  }
}

// As grouped_tc::grouped_rows_tc_kernel (same arguments; tiles of kBM rows), persistent: the
// grid is at most one block per SM and walks the tiles × column tiles (columns fastest) that the
// routing has.
template <bool B_KN>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_rows_wgmma_kernel(const bf16* A, const int64_t* offsets, const int64_t* tile_start,
                              int64_t E, const void* const* w, int64_t ldw, int64_t n_total,
                              int64_t k_total, bf16* C) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();  // not launched on builds without sm_90a code (grouped_wgmma_available)
#else
  Pipeline p = make_pipeline();
  const int64_t cols = (n_total + kBN - 1) / kBN, work = tile_start[E] * cols;
  const int warpgroup = int(threadIdx.x) / 128;
  float acc[64];
  for (int64_t b = blockIdx.x; b < work; b += gridDim.x) {
    const int64_t tile = b / cols, n0 = (b % cols) * kBN;
    const int64_t e = grouped_tc::expert_of_tile(tile_start, E, tile);
    const int64_t m0 = offsets[e] + (tile - tile_start[e]) * kBM, m_end = offsets[e + 1];
    if (warpgroup == 0) {
      const bf16* W = static_cast<const bf16*>(w[e]);
      const Operand a{A, k_total, m0, m_end, true};
      const Operand bw{W, ldw, n0, n_total, (reinterpret_cast<uintptr_t>(W) & 15) == 0};
      load_steps<false, B_KN>(p, a, bw, 0, k_total);
    } else {
      multiply_steps<false, B_KN>(p, acc, warpgroup - 1, 0, k_total);
      for_each_pair(acc, warpgroup - 1, m0, n0, [&](int64_t m, int64_t n, float c0, float c1) {
        // n is even and n_total a multiple of 8: n < n_total covers n + 1.
        if (m < m_end && n < n_total) attention_tc::store_bf16x2(C + m * n_total + n, c0, c1);
      });
    }
  }
  if (warpgroup == 0) flush_loads(p);
#endif
}

// As grouped_tc::grouped_dw_tc_kernel (same arguments), persistent over the (i tile, o tile,
// expert) tiles, i fastest.
__global__ void __launch_bounds__(kThreads, 1)
    grouped_dw_wgmma_kernel(const bf16* x, const bf16* dy, const int64_t* offsets, int64_t E,
                            int64_t out, int64_t in, float* const* dw, float beta) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();
#else
  Pipeline p = make_pipeline();
  const int64_t cols = (in + kBN - 1) / kBN, rows = (out + kBM - 1) / kBM, work = cols * rows * E;
  const int warpgroup = int(threadIdx.x) / 128;
  float acc[64];
  for (int64_t b = blockIdx.x; b < work; b += gridDim.x) {
    const int64_t e = b / (cols * rows), m0 = (b / cols % rows) * kBM, n0 = (b % cols) * kBN;
    if (warpgroup == 0) {
      // A(m = o, k = r) = dy[r·out + o], B(k = r, n = i) = x[r·in + i]: both MN-major.
      const Operand a{dy, out, m0, out, true};
      const Operand bx{x, in, n0, in, true};
      load_steps<true, true>(p, a, bx, offsets[e], offsets[e + 1]);
    } else {
      multiply_steps<true, true>(p, acc, warpgroup - 1, offsets[e], offsets[e + 1]);
      float* d = dw[e];
      for_each_pair(acc, warpgroup - 1, m0, n0, [&](int64_t m, int64_t n, float c0, float c1) {
        if (m >= out || n >= in) return;
        float* q = d + m * in + n;
        if (beta == 0.0f) {
          q[0] = c0;
          q[1] = c1;
        } else {
          q[0] = beta * q[0] + c0;
          q[1] = beta * q[1] + c1;
        }
      });
    }
  }
  if (warpgroup == 0) flush_loads(p);
#endif
}

}  // namespace dseek::ops::cuda::grouped_wgmma
