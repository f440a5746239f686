// Hopper warpgroup tensor-core building blocks (wgmma.mma_async, PTX ISA 8.0, sm_90a): the
// shared-memory matrix descriptor, the 128-byte swizzled tile layout it describes, and the
// fences and waits around the asynchronous product. Used by grouped_gemm_wgmma_kernels.cuh (bf16)
// and fp8_wgmma_kernels.cuh (E4M3).
//
// A warpgroup is 4 consecutive warps (128 threads). wgmma.m64nNk16 computes D[64×N] += A[64×16] ·
// B[16×N] with both operands read from shared memory through 64-bit descriptors, and D in the
// 128 threads' registers: thread t = 32w + l holds, for j = 0 .. N/8 − 1 and h = 0, 1,
//   d[4j + 2h + 0] = D[16w + l/4 + 8h][8j + 2(l%4)],   d[4j + 2h + 1] = the next column
// (the mma.m16n8 C fragment of each 8-column block, warps stacked along M).
//
// Tiles in shared memory use the 128-byte swizzle: a tile is "lines" of 128 bytes (64 bf16), and
// the 16-byte chunk c of line r is stored at chunk position c ^ (r mod 8). The XOR is taken from
// address bits 7–9, so every tile starts on a 1024-byte boundary (8 lines, one swizzle atom).
//   - K-major operand (k contiguous in global memory: x and dy as A of forward/dx, W as B of
//     forward): line = the row (m or n), the 64 k of one step along it; 8-line groups are 1024
//     bytes apart (SBO). One k16 slice starts 32 bytes further along the line.
//   - MN-major operand (m or n contiguous: W as B of dx, dy and x in dW): line = k, holding 64
//     consecutive m (or n); a 128-wide tile is two such 64-column regions of 64 lines, 8192 bytes
//     apart (LBO), 8-line groups 1024 bytes apart (SBO). One k16 slice starts 16 lines further.
// These are CUTLASS's canonical SW128 layouts (mma_traits_sm90_gmma.hpp, make_gmma_desc):
// K-major ((8,m),(T,2)):((8T,SBO),(1,T)), MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) with T = 8
// bf16 per 16 bytes.
#pragma once

#include <cstdint>

namespace dseek::ops::cuda::wgmma {

constexpr int kLineBytes = 128;   // one swizzled line: 64 bf16
constexpr int kAtomBytes = 1024;  // 8 lines: the swizzle's period and the tiles' alignment

// Byte offset of 16-byte chunk `chunk` (0..7) of line `line` in a swizzled region.
__host__ __device__ constexpr uint32_t swizzled_chunk(int line, int chunk) {
  return uint32_t(line * kLineBytes + ((chunk ^ (line & 7)) << 4));
}

// The shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, LBO
// and SBO in 16-byte units in bits 0–13, 16–29, 32–45; base offset 0 (tiles are 1024-aligned);
// layout type 1 (128-byte swizzle) in bits 62–63.
__host__ __device__ constexpr uint64_t make_desc(uint32_t smem_address, uint32_t lbo_bytes,
                                                 uint32_t sbo_bytes) {
  return uint64_t((smem_address & 0x3FFFF) >> 4) | (uint64_t((lbo_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t((sbo_bytes & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
}

#ifndef DSEEK_ATTENTION_EMULATION
// The PTX below exists for sm_90a only; other device passes (the portable compute_80 PTX) get
// empty bodies, and the kernels that use them trap there: the launchers never pick them on such a
// build (grouped_wgmma_available()).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSEEK_WGMMA_PTX 1
#endif

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Orders this thread's earlier generic-proxy writes to shared memory (st.shared, cp.async after
// its wait) before later async-proxy reads (wgmma operands).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Before the first wgmma of a batch: the accumulator registers' earlier writes are ordered.
__device__ __forceinline__ void fence() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N of this warpgroup's committed wgmma groups are still running.
template <int N>
__device__ __forceinline__ void wait() {
#ifdef DSEEK_WGMMA_PTX
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving accesses of an accumulator across the asynchronous product.
__device__ __forceinline__ void fence_operand(float& r) {
  asm volatile("" : "+f"(r)::"memory");
}

// d += A · B, m64n128k16, bf16 operands from shared memory, f32 accumulators; TRANS_A / TRANS_B:
// the operand is MN-major (1) rather than K-major (0).
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void mma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %66, %67;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "n"(TRANS_A), "n"(TRANS_B));
#else
  (void)d;
  (void)desc_a;
  (void)desc_b;
#endif
}

// d = (accumulate ? d : 0) + A · B, m64n128k32, E4M3 operands from shared memory (both K-major:
// 8-bit types have no transpose), f32 accumulators. A K-major line of 128 bytes holds 128 k, and
// one k32 slice starts 32 bytes further along it (the same offsets as a bf16 k16 slice).
__device__ __forceinline__ void mma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a,
                                                    uint64_t desc_b, int accumulate) {
#ifdef DSEEK_WGMMA_PTX
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#else
  (void)d;
  (void)desc_a;
  (void)desc_b;
  (void)accumulate;
#endif
}
#else
// A host build (bench/kernels/tc_emulation.h) defines smem_address, the fences, commit, wait,
// mma_m64n128k16 and mma_m64n128k32_e4m3 with the semantics above before including this header.
#endif

}  // namespace dseek::ops::cuda::wgmma
