// The CUDA execution model and the warp-level tensor-core primitives of
// src/ops/cuda/attention_mma.cuh on host threads, for the kernel emulators in this folder
// (attention_tc_emulate.cpp, grouped_gemm_tc_emulate.cpp, ..., and without tensor cores
// adamw_rows_emulate.cpp, combine_norm_emulate.cpp): one std::thread per CUDA thread, and
// mma.m16n8k16, ldmatrix and shuffles re-implemented from their PTX ISA definitions, exchanging
// fragments through per-warp buffers between barriers. cp.async copies at once; dynamic shared
// memory starts as NaN, so a read of a never-written element shows. Include before the kernel
// source (it defines DSEEK_ATTENTION_EMULATION, which makes attention_mma.cuh skip its PTX).
#pragma once

// A kernel's __shared__ variables: one for all of a block's threads (blocks run one at a time).
#define __shared__ static

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/dtype.h"

#define __launch_bounds__(...)
#ifndef __grid_constant__
#define __grid_constant__
#endif
#define DSEEK_ATTENTION_EMULATION 1

using std::max;
using std::min;

thread_local uint3 threadIdx;
inline uint3 blockIdx, blockDim, gridDim;

struct EmuWarp {
  std::barrier<> bar{32};
  uintptr_t addr[32];
  uint32_t a[32][4], b[32][2];
  double val[32];  // a shuffled float or double (a float widens and narrows back exactly)
};
inline EmuWarp* g_warps = nullptr;
// wgmma.wait_group is warpgroup-collective: when it returns in one thread, the products of all
// 128 threads are done (a barrier here, where each thread computes its own share at issue).
struct EmuWarpgroup {
  std::barrier<> bar{128};
};
inline EmuWarpgroup* g_warpgroups = nullptr;
inline std::barrier<>* g_block = nullptr;
alignas(16) inline unsigned char g_smem[232448];

inline EmuWarp& my_warp() {
  return g_warps[threadIdx.x / 32];
}
inline int my_lane() {
  return int(threadIdx.x % 32);
}

// The device's float intrinsics: one operation each, rounded to nearest (g++ in ISO C++ mode
// contracts nothing into fused multiply-adds). rsqrtf is the GPU's approximation on the device;
// here the correctly rounded value (kernels compared with each other call the same one).
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fsqrt_rn(float a) {
  return std::sqrt(a);
}
inline float rsqrtf(float a) {
  return 1.0f / std::sqrt(a);
}
inline float __uint_as_float(uint32_t u) {
  return dseek::bits_to_f32(u);
}
inline uint32_t __float_as_uint(float f) {
  return dseek::f32_to_bits(f);
}

inline void __syncthreads() {
  g_block->arrive_and_wait();
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
  EmuWarp& w = my_warp();
  const int lane = my_lane();
  w.val[lane] = double(v);
  w.bar.arrive_and_wait();
  const T r = T(w.val[lane ^ mask]);
  w.bar.arrive_and_wait();
  return r;
}

// Runs body() as block (x, y, z) of `threads` threads (a multiple of 32), shared memory NaN.
template <typename Body>
void run_block(uint3 block, unsigned threads, Body body) {
  blockIdx = block;
  blockDim = uint3{threads, 1, 1};
  std::memset(g_smem, 0xff, sizeof(g_smem));  // bf16 and f32 NaN
  std::vector<EmuWarp> warps(threads / 32);
  std::vector<EmuWarpgroup> warpgroups(threads / 128);
  std::barrier<> barrier(threads);
  g_warps = warps.data();
  g_warpgroups = warpgroups.data();
  g_block = &barrier;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      threadIdx = uint3{t, 0, 0};
      body();
    });
  for (auto& th : pool) th.join();
}

namespace dseek::ops::cuda::attention_tc {

using bf16 = __nv_bfloat16;

inline unsigned char* dynamic_smem() {
  return g_smem;
}

inline uint16_t bits(bf16 x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}
inline uint32_t pack_raw(bf16 lo, bf16 hi) {
  return uint32_t(bits(lo)) | (uint32_t(bits(hi)) << 16);
}
inline float lo_f(uint32_t r) {
  const uint32_t u = r << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float hi_f(uint32_t r) {
  const uint32_t u = r & 0xffff0000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ldmatrix.x4: lanes 8i .. 8i+7 address the rows of matrix i; lane l receives
// M_i[l/4][2(l%4)], M_i[l/4][2(l%4)+1] (with .trans: M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4]).
// Row addresses must be 16-byte aligned, as on the device.
inline void ldsm_any(uint32_t (&r)[4], const bf16* p, bool trans) {
  EmuWarp& w = my_warp();
  const int lane = my_lane();
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) std::abort();
  w.addr[lane] = reinterpret_cast<uintptr_t>(p);
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    if (!trans) {
      const bf16* row = reinterpret_cast<const bf16*>(w.addr[8 * i + lane / 4]);
      r[i] = pack_raw(row[2 * (lane % 4)], row[2 * (lane % 4) + 1]);
    } else {
      const bf16* r0 = reinterpret_cast<const bf16*>(w.addr[8 * i + 2 * (lane % 4)]);
      const bf16* r1 = reinterpret_cast<const bf16*>(w.addr[8 * i + 2 * (lane % 4) + 1]);
      r[i] = pack_raw(r0[lane / 4], r1[lane / 4]);
    }
  }
  w.bar.arrive_and_wait();
}
inline void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  ldsm_any(r, p, false);
}
inline void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  ldsm_any(r, p, true);
}

// mma.m16n8k16.row.col f32.bf16: fragments as the PTX ISA lays them out (g = l/4, c = l%4):
// A a0a1 (g, 2c..), a2a3 (g+8, 2c..), a4a5 (g, 2c+8..), a6a7 (g+8, 2c+8..); B b0b1 (k 2c.., n g),
// b2b3 (k 2c+8.., n g); C c0c1 (g, 2c..), c2c3 (g+8, 2c..).
inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  EmuWarp& w = my_warp();
  const int lane = my_lane();
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  w.b[lane][0] = b0;
  w.b[lane][1] = b1;
  w.bar.arrive_and_wait();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, cc = l % 4;
    const uint32_t* af = w.a[l];
    A[g][2 * cc] = lo_f(af[0]);
    A[g][2 * cc + 1] = hi_f(af[0]);
    A[g + 8][2 * cc] = lo_f(af[1]);
    A[g + 8][2 * cc + 1] = hi_f(af[1]);
    A[g][2 * cc + 8] = lo_f(af[2]);
    A[g][2 * cc + 9] = hi_f(af[2]);
    A[g + 8][2 * cc + 8] = lo_f(af[3]);
    A[g + 8][2 * cc + 9] = hi_f(af[3]);
    B[2 * cc][g] = lo_f(w.b[l][0]);
    B[2 * cc + 1][g] = hi_f(w.b[l][0]);
    B[2 * cc + 8][g] = lo_f(w.b[l][1]);
    B[2 * cc + 9][g] = hi_f(w.b[l][1]);
  }
  w.bar.arrive_and_wait();
  const int g = lane / 4, cc = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e / 2) * 8, col = 2 * cc + (e & 1);
    float sum = c[e];
    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
    c[e] = sum;
  }
}

// cp.async 16 bytes: source and destination must be 16-byte aligned, as on the device.
inline void cp_async_16(bf16* dst, const bf16* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    std::abort();
  if (valid)
    std::memcpy(dst, src, 16);
  else
    std::memset(dst, 0, 16);
}
inline void cp_async_commit() {}
template <int N>
void cp_async_wait() {}

}  // namespace dseek::ops::cuda::attention_tc

// Hopper warpgroup primitives (src/ops/cuda/wgmma.cuh). Shared-memory addresses are offsets into
// g_smem. The product is synchronous here (fences, commit and wait do nothing); each thread
// computes its own accumulators from the operands in shared memory, read through the descriptors
// as the PTX ISA's canonical 128-byte-swizzled layouts (K-major: line = m or n, k along it;
// MN-major: line = k, 64 m or n along it, the next 64 LBO bytes further), so a tile stored in any
// other arrangement than the one the descriptor describes gives wrong products here too.
namespace dseek::ops::cuda::wgmma {

inline uint32_t smem_address(const void* p) {
  return uint32_t(static_cast<const unsigned char*>(p) - g_smem);
}
inline void fence_proxy_async() {}
inline void fence() {}
inline void commit() {}
template <int N>
void wait() {
  g_warpgroups[threadIdx.x / 128].bar.arrive_and_wait();
}
inline void fence_operand(float&) {}

// The bf16 at canonical (line-relative) byte address a, after the 128-byte swizzle.
inline float emu_smem_bf16(uint32_t a) {
  a ^= ((a >> 7) & 7) << 4;
  if (a + 2 > sizeof(g_smem)) std::abort();
  return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(g_smem + a));
}

struct EmuDesc {
  uint32_t start, lbo, sbo;
  explicit EmuDesc(uint64_t d)
      : start(uint32_t(d & 0x3FFF) << 4),
        lbo(uint32_t((d >> 16) & 0x3FFF) << 4),
        sbo(uint32_t((d >> 32) & 0x3FFF) << 4) {
    if ((d >> 62) != 1 || ((d >> 49) & 7) != 0) std::abort();  // 128-byte swizzle, base offset 0
  }
  // Element (mn, k) of a K-major or MN-major operand.
  float at(int mn, int k, bool mn_major) const {
    if (mn_major)
      return emu_smem_bf16(start + uint32_t(mn / 64) * lbo + uint32_t(k / 8) * sbo +
                           uint32_t(k % 8) * 128 + uint32_t(mn % 64) * 2);
    return emu_smem_bf16(start + uint32_t(mn / 8) * sbo + uint32_t(mn % 8) * 128 + uint32_t(k) * 2);
  }
};

// The E4M3 code at canonical byte address a, after the 128-byte swizzle (K-major: line = m or n,
// one byte a k).
inline float emu_smem_e4m3(uint32_t a) {
  a ^= ((a >> 7) & 7) << 4;
  if (a + 1 > sizeof(g_smem)) std::abort();
  __nv_fp8_e4m3 v;
  v.__x = g_smem[a];
  return float(v);
}

template <int TRANS_A, int TRANS_B>
void mma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  const EmuDesc a(desc_a), b(desc_b);
  const int t = int(threadIdx.x % 128);
  for (int v = 0; v < 64; ++v) {
    const int row = 16 * (t / 32) + (t % 32) / 4 + 8 * ((v >> 1) & 1);
    const int col = 8 * (v >> 2) + 2 * (t % 4) + (v & 1);
    float s = d[v];
    for (int k = 0; k < 16; ++k) s += a.at(row, k, TRANS_A) * b.at(col, k, TRANS_B);
    d[v] = s;
  }
}

// m64n128k32, E4M3, both operands K-major; accumulate = 0 starts from zero (wgmma's scale-d).
inline void mma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  const EmuDesc a(desc_a), b(desc_b);
  const int t = int(threadIdx.x % 128);
  for (int v = 0; v < 64; ++v) {
    const int row = 16 * (t / 32) + (t % 32) / 4 + 8 * ((v >> 1) & 1);
    const int col = 8 * (v >> 2) + 2 * (t % 4) + (v & 1);
    float s = accumulate ? d[v] : 0.0f;
    for (int k = 0; k < 32; ++k)
      s += emu_smem_e4m3(a.start + uint32_t(row / 8) * a.sbo + uint32_t(row % 8) * 128 +
                         uint32_t(k)) *
           emu_smem_e4m3(b.start + uint32_t(col / 8) * b.sbo + uint32_t(col % 8) * 128 +
                         uint32_t(k));
    d[v] = s;
  }
}

}  // namespace dseek::ops::cuda::wgmma
