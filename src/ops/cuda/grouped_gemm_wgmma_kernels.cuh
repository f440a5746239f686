// Kernels of the bf16 grouped expert GEMMs on Hopper's warpgroup tensor cores (wgmma; launchers
// in grouped_gemm_tc.cu, which picks them over the mma.sync kernels of grouped_gemm_tc_kernels.cuh
// on sm_90a). The same three products with the same arguments and tile schedule:
//   - grouped_rows_wgmma_kernel<B_KN>: C[m, n] = Σ_k A[m, k]·B(k, n) over one expert's row tile;
//     forward B(k, n) = W_e[n, k] (B K-major), dx B(k, n) = W_e[k, n] (B N-major);
//   - grouped_dw_wgmma_kernel: dW_e[o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i] (A = dyᵀ
//     M-major, B = x N-major), one block per (i tile, o tile, expert), rows in order:
//     deterministic, no atomics.
//
// A block computes a kBM × kBN = 128 × 128 tile with two warpgroups (256 threads), each one
// m64n128 product (64 f32 accumulators per thread), stepping k by kBK = 64 through a ring of
// kStages = 3 shared-memory stages of 32 KiB (A and B tiles of 16 KiB, the 128-byte swizzled
// layouts of wgmma.cuh): 97 KiB with the alignment slack, so two blocks share an SM and one's
// loads, barriers and stores overlap the other's products. All 256 threads load with cp.async,
// one step ahead of the product; the product of step s runs asynchronously while the loads of
// step s + 1 are issued, and wgmma.wait_group<1> keeps one step in flight. Per step:
//   wait for this thread's loads of step s; fence.proxy.async (generic → async proxy); barrier
//   (every thread's loads of s are in place, and both warpgroups' products of s − 2, whose buffer
//   the next load refills, are done); issue the loads of s + 1; issue step s's four k16
//   products; commit; wait until only step s's are outstanding.
// (Measured on an H200, docs/BENCHMARKS.md run H: this beat the same kernel with 5 stages and one
// block an SM, and a persistent warp-specialised variant with a cp.async loader warpgroup and
// mbarriers, by 10–80%.)
// Global loads move 16-byte chunks; the contiguous extent must be a multiple of 8 and the base
// 16-byte aligned (as grouped_gemm_tc_kernels.cuh: a weight that is not gets plain loads, per
// block). Chunks past an end are zeros, so partial tiles compute on zeros and are masked at the
// store.
#pragma once

#include <cstdint>

#include "ops/cuda/grouped_gemm_tc_kernels.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda::grouped_wgmma {

using attention_tc::bf16;
using grouped_tc::Operand;

constexpr int kBM = 128, kBN = 128, kBK = 64, kThreads = 256, kStages = 3;
constexpr int kTileBytes = 128 * kBK * 2;  // one operand tile of a stage: 16 KiB
constexpr int kStageBytes = 2 * kTileBytes;
static_assert(kBK * 2 == wgmma::kLineBytes, "a K-major line holds one step's k");

// Dynamic shared memory of the ring, with room to align it to 1024 bytes.
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + wgmma::kAtomBytes;

// One step's k range [k0, min(k0 + kBK, k_end)) of an operand into its swizzled tile (the base
// 1024-aligned). K-major: 128 lines (rows mn0 + line), 8 chunks of 8 k each. MN-major: 64 lines
// (k0 + line), 16 chunks of 8 mn each, chunks 0–7 in the first 64-column region and 8–15 in the
// second, 8 KiB further. Called by all kThreads threads; cp.async chunks join the caller's next
// commit group.
template <bool MN_MAJOR>
__device__ __forceinline__ void load_tile(unsigned char* tile, const Operand& op, int64_t k0,
                                          int64_t k_end) {
  constexpr int kChunksPerLine = MN_MAJOR ? 16 : 8;
  constexpr int kLines = MN_MAJOR ? kBK : kBM;
#pragma unroll
  for (int j = 0; j < kLines * kChunksPerLine / kThreads; ++j) {
    const int i = int(threadIdx.x) + j * kThreads;
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
// `half` = the warpgroup) or n128 (B, half 0) operand.
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

// acc += Σ_{k_begin ≤ k < k_end} A(m, k)·B(k, n) for this warpgroup's 64 rows of the block tile,
// k in steps of kBK in a fixed order. Every thread of the block calls it (it holds barriers).
template <bool A_MN, bool B_MN>
__device__ __forceinline__ void gemm_mainloop(float (&acc)[64], const Operand& A, const Operand& B,
                                              int64_t k_begin, int64_t k_end) {
  unsigned char* raw = attention_tc::dynamic_smem();
  const uint32_t raw_address = wgmma::smem_address(raw);
  const uint32_t pad = (wgmma::kAtomBytes - (raw_address % wgmma::kAtomBytes)) % wgmma::kAtomBytes;
  unsigned char* smem = raw + pad;
  const uint32_t smem_addr = raw_address + pad;
  const int half = int(threadIdx.x) / 128;  // this warpgroup's 64 rows of the tile
  const int64_t steps = (k_end - k_begin + kBK - 1) / kBK;
  auto load = [&](int64_t step) {
    unsigned char* stage = smem + int(step % kStages) * kStageBytes;
    const int64_t k0 = k_begin + step * kBK;
    load_tile<A_MN>(stage, A, k0, k_end);
    load_tile<B_MN>(stage + kTileBytes, B, k0, k_end);
  };
  // Every thread commits one group per step (empty ones too), so wait<kStages − 3> at step s
  // means the groups of steps ≤ s have landed.
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < steps) load(s);
    attention_tc::cp_async_commit();
  }
  for (int64_t s = 0; s < steps; ++s) {
    attention_tc::cp_async_wait<kStages - 3>();
    wgmma::fence_proxy_async();
    __syncthreads();
    if (s + kStages - 2 < steps) load(s + kStages - 2);
    attention_tc::cp_async_commit();
    const uint32_t stage = smem_addr + uint32_t(s % kStages) * kStageBytes;
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[i]);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)
      wgmma::mma_m64n128k16<A_MN ? 1 : 0, B_MN ? 1 : 0>(
          acc, slice_desc<A_MN>(stage, half, kk), slice_desc<B_MN>(stage + kTileBytes, 0, kk));
    wgmma::commit();
    wgmma::wait<1>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[i]);
  }
  wgmma::wait<0>();
  attention_tc::cp_async_wait<0>();
#pragma unroll
  for (int i = 0; i < 64; ++i) wgmma::fence_operand(acc[i]);
}

// Calls f(m, n, c0, c1) for this thread's accumulator pairs: tile rows m0 + …, columns n, n + 1
// (the register layout in wgmma.cuh).
template <typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[64], int64_t m0, int64_t n0, F f) {
  const int t = int(threadIdx.x) % 128, half = int(threadIdx.x) / 128;
  const int64_t row = m0 + half * 64 + (t / 32) * 16 + (t % 32) / 4;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int64_t n = n0 + j * 8 + 2 * (t % 4);
    f(row, n, acc[4 * j], acc[4 * j + 1]);
    f(row + 8, n, acc[4 * j + 2], acc[4 * j + 3]);
  }
}

// As grouped_tc::grouped_rows_tc_kernel (same arguments and grid; tiles of kBM rows).
template <bool B_KN>
__global__ void __launch_bounds__(kThreads, 2)
    grouped_rows_wgmma_kernel(const bf16* A, const int64_t* offsets, const int64_t* tile_start,
                              int64_t E, const void* const* w, int64_t ldw, int64_t n_total,
                              int64_t k_total, bf16* C) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();  // not launched on builds without sm_90a code (grouped_wgmma_available)
#else
  const int64_t cols = (n_total + kBN - 1) / kBN;
  const int64_t tile = int64_t(blockIdx.x) / cols, n0 = (int64_t(blockIdx.x) % cols) * kBN;
  if (tile >= tile_start[E]) return;  // the grid covers the most tiles any routing can need
  const int64_t e = expert_of_tile(tile_start, E, tile);
  const int64_t m0 = offsets[e] + (tile - tile_start[e]) * kBM, m_end = offsets[e + 1];
  const bf16* W = static_cast<const bf16*>(w[e]);
  const Operand a{A, k_total, m0, m_end, true};
  const Operand b{W, ldw, n0, n_total, (reinterpret_cast<uintptr_t>(W) & 15) == 0};
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  gemm_mainloop<false, B_KN>(acc, a, b, 0, k_total);
  for_each_pair(acc, m0, n0, [&](int64_t m, int64_t n, float c0, float c1) {
    // n is even and n_total a multiple of 8: n < n_total covers n + 1.
    if (m < m_end && n < n_total) attention_tc::store_bf16x2(C + m * n_total + n, c0, c1);
  });
#endif
}

// As grouped_tc::grouped_dw_tc_kernel (same arguments and grid). `squares`, where not null, gets
// Σ v² (in double) of the dW values this block wrote, at the block's linear index (x fastest):
// the gradient norm's share of these matrices without reading them again (cuda_ops.h's
// grouped_linear_backward_dw).
__global__ void __launch_bounds__(kThreads, 2)
    grouped_dw_wgmma_kernel(const bf16* x, const bf16* dy, const int64_t* offsets, int64_t out,
                            int64_t in, float* const* dw, float beta, double* squares) {
#if defined(__CUDA_ARCH__) && !defined(DSEEK_WGMMA_PTX)
  __trap();
#else
  const int64_t e = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  // A(m = o, k = r) = dy[r·out + o], B(k = r, n = i) = x[r·in + i]: both MN-major.
  const Operand a{dy, out, m0, out, true};
  const Operand b{x, in, n0, in, true};
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  gemm_mainloop<true, true>(acc, a, b, offsets[e], offsets[e + 1]);
  float* d = dw[e];
  double sum = 0.0;
  for_each_pair(acc, m0, n0, [&](int64_t m, int64_t n, float c0, float c1) {
    if (m >= out || n >= in) return;
    float* p = d + m * in + n;
    if (beta != 0.0f) {
      c0 = beta * p[0] + c0;
      c1 = beta * p[1] + c1;
    }
    p[0] = c0;
    p[1] = c1;
    sum += double(c0) * double(c0) + double(c1) * double(c1);
  });
  if (squares) {  // uniform across the block
    __shared__ double scratch[32];
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0)
      squares[(int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = sum;
  }
#endif
}

}  // namespace dseek::ops::cuda::grouped_wgmma
