// The ring of shared-memory stages through which a warp-specialised Hopper GEMM's loading thread
// (tensor-memory-accelerator copies, tma.cuh) feeds its multiplying warpgroups: the FP8 row GEMM
// and wgrad (fp8_tma_kernels.cuh) and the bf16 grouped wgrad (grouped_gemm_tma_kernels.cuh).
// Their blocks are one loading warpgroup and kMultipliers multiplying ones.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/attention_mma.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda::tma {

constexpr int kMultipliers = 2;                     // warpgroups, 64 rows of the tile each
constexpr int kThreads = 128 * (1 + kMultipliers);  // the loader first
constexpr int kMultiplierWarps = 4 * kMultipliers;
// 40 + 2 × 232 registers a thread over 128 threads each: 64,512 of the SM's 65,536.
constexpr int kLoaderRegisters = 40, kMultiplierRegisters = 232;

// STAGES stages of STAGE_BYTES from `base` (1024-aligned: ring_base), a "full" mbarrier per stage
// (the loader's arrival and the stage's bytes) and an "empty" one (each multiplier's arrival once
// its products have read the stage). Step s of a block's walk uses stage s mod STAGES in round
// s / STAGES; the barriers' phases alternate per round, so a wait names the round's parity (the
// loader's first round passes).
template <int STAGES, int STAGE_BYTES>
struct Ring {
  uint64_t* full;   // [STAGES] in shared memory
  uint64_t* empty;  // [STAGES]
  unsigned char* base;

  // Every thread: thread 0 initialises the barriers, then the block meets.
  __device__ __forceinline__ void init() const {
    if (threadIdx.x == 0) {
      for (int i = 0; i < STAGES; ++i) {
        barrier_init(&full[i], 1);
        barrier_init(&empty[i], kMultipliers);
      }
      fence_barrier_init();
    }
    __syncthreads();
  }
  __device__ __forceinline__ int stage(int64_t s) const { return int(s % STAGES); }
  __device__ __forceinline__ uint32_t parity(int64_t s) const { return uint32_t(s / STAGES) & 1; }
  // The loader: waits until step s's stage is free, announces its bytes and copies the A box at
  // (inner, a_row) of map_a to the stage's start and the B box at (inner, b_row) of map_b to its
  // second half.
  __device__ __forceinline__ void load(int64_t s, const CUtensorMap* map_a, int32_t a_row,
                                       const CUtensorMap* map_b, int32_t b_row,
                                       int32_t inner) const {
    unsigned char* dst = claim(s);
    load_2d(dst, map_a, inner, a_row, &full[stage(s)]);
    load_2d(dst + STAGE_BYTES / 2, map_b, inner, b_row, &full[stage(s)]);
  }
  // The loader, for copies of its own: waits until step s's stage is free and announces its
  // STAGE_BYTES; the copies into the returned stage complete on &full[stage(s)].
  __device__ __forceinline__ unsigned char* claim(int64_t s) const {
    const int i = stage(s);
    wait(&empty[i], parity(s) ^ 1);
    arrive_expect_bytes(&full[i], STAGE_BYTES);
    return base + i * STAGE_BYTES;
  }
  // A multiplier: waits for step s's bytes; the shared address of its stage.
  __device__ __forceinline__ uint32_t acquire(int64_t s) const {
    wait(&full[stage(s)], parity(s));
    return wgmma::smem_address(base) + uint32_t(stage(s) * STAGE_BYTES);
  }
  // The stage of step s in the generic address space (for a multiplier's own writes to it).
  __device__ __forceinline__ unsigned char* stage_bytes(int64_t s) const {
    return base + stage(s) * STAGE_BYTES;
  }
  // A multiplier's products of step s have read the stage (one arrival per warpgroup).
  __device__ __forceinline__ void release(int64_t s, int thread_in_warpgroup) const {
    if (thread_in_warpgroup == 0) arrive(&empty[stage(s)]);
  }
};

// The 1024-aligned start of the ring in dynamic shared memory.
__device__ __forceinline__ unsigned char* ring_base() {
  unsigned char* raw = attention_tc::dynamic_smem();
  const uint32_t address = wgmma::smem_address(raw);
  return raw + (wgmma::kAtomBytes - (address % wgmma::kAtomBytes)) % wgmma::kAtomBytes;
}

}  // namespace dseek::ops::cuda::tma
