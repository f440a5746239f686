// Hopper's tensor memory accelerator and the barriers that pace it (PTX ISA 8.0, sm_90a): what a
// warp-specialised kernel needs to have one thread load whole tiles while other warpgroups
// multiply. Used by fp8_wgmma_kernels.cuh's fp8_rows_tma_kernel.
//
//   - A tensor map (CUtensorMap, made on the host by tma_map.h) describes a 2-D array in global
//     memory and the box one copy moves; cp.async.bulk.tensor copies the box at given coordinates
//     into shared memory in the 128-byte swizzled layout of wgmma.cuh (the map's swizzle mode),
//     filling rows and columns past the array's ends with zeros.
//   - An mbarrier in shared memory counts arrivals and, for the copies, bytes: the loading thread
//     arrives once announcing the bytes to come (expect_tx) and each copy's completion subtracts
//     its bytes, so the barrier's phase completes when every byte has landed. Waiters name the
//     phase by its parity; a fresh barrier is in phase 0, and waiting on parity 1 returns at once
//     (the phase "before" it counts as complete) — so a ring's "slot free" barriers need no
//     initial arrival.
//   - setmaxnreg moves registers between warpgroups: the loading warpgroup gives most of its
//     registers up to the multiplying ones, whose partial sums and totals need them.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda::tma {

__device__ __forceinline__ void barrier_init(uint64_t* bar, int arrivals) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(wgmma::smem_address(bar)),
               "r"(arrivals));
#endif
}

// Makes the initialised barriers visible to the async proxy (the copies' completions) before any
// thread uses them; followed by a __syncthreads.
__device__ __forceinline__ void fence_barrier_init() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival that also announces `bytes` bytes of copies completing on this barrier's phase.
__device__ __forceinline__ void arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(wgmma::smem_address(bar)),
      "r"(bytes)
      : "memory");
#endif
}

__device__ __forceinline__ void arrive(uint64_t* bar) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(wgmma::smem_address(bar))
               : "memory");
#endif
}

// Spins until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void wait(uint64_t* bar, uint32_t parity) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(wgmma::smem_address(bar)),
      "r"(parity)
      : "memory");
#endif
}

// Copies the box at (inner, outer) — element coordinates, inner the contiguous dimension — of the
// map's array into shared memory at dst (1024-aligned for the 128-byte swizzle), completing
// on bar.
__device__ __forceinline__ void load_2d(void* dst, const CUtensorMap* map, int32_t inner,
                                        int32_t outer, uint64_t* bar) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4}], [%2];\n" ::"r"(wgmma::smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(wgmma::smem_address(bar)), "r"(inner), "r"(outer)
      : "memory");
#endif
}

// Fetches the map (a __grid_constant__ kernel parameter) into the TMA unit's cache ahead of use.
__device__ __forceinline__ void prefetch_map(const CUtensorMap* map) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}

// The executing warpgroup's registers a thread, lowered or raised (every thread of the
// warpgroup executes it).
template <int REGISTERS>
__device__ __forceinline__ void lower_registers() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGISTERS));
#endif
}
template <int REGISTERS>
__device__ __forceinline__ void raise_registers() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGISTERS));
#endif
}

}  // namespace dseek::ops::cuda::tma
