// Warp-level tensor-core building blocks of the bf16 attention kernels (attention_tc.cu):
// mma.sync.m16n8k16 (bf16 inputs, f32 accumulators), ldmatrix from shared memory and cp.async
// tile loads, as inline PTX (sm_80 and later; the build targets sm_90a and compute_80).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with lane =
// 4·g + c (g = groupID = lane / 4, c = threadID_in_group = lane % 4):
//   A (16×16, row-major), 4 registers of 2 bf16: a[0] = A[g][2c, 2c+1], a[1] = A[g+8][2c, 2c+1],
//     a[2] = A[g][2c+8, 2c+9], a[3] = A[g+8][2c+8, 2c+9]
//   B (16×8, "col": k fastest), 2 registers: b[0] = B[2c, 2c+1][g], b[1] = B[2c+8, 2c+9][g]
//   C (16×8 f32), 4 floats: C[g][2c], C[g][2c+1], C[g+8][2c], C[g+8][2c+1]
// The lower-indexed element of a pair sits in the low 16 bits of its register.
// ldmatrix.x4 loads four 8×8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of matrix i,
// and lane l receives element [l/4][2(l%4), 2(l%4)+1] of each (with .trans: [2(l%4),
// 2(l%4)+1][l/4]), which is exactly the pair the fragments above ask for.
//
// Shared-memory tiles are rows of D bf16 padded to D + kPad: a row is then 16 bytes (4 banks)
// further along the 128-byte bank window than the previous one, so the eight rows of an ldmatrix
// matrix hit eight different bank groups (D is a multiple of 64 here).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace dseek::ops::cuda::attention_tc {

using bf16 = __nv_bfloat16;

constexpr int kPad = 8;  // bf16 elements of padding per shared-memory row

// ⌈a / b⌉, for tile counts on the host and the device.
__host__ __device__ constexpr int64_t div_up(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

#ifndef DSEEK_ATTENTION_EMULATION
// The block's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return smem_raw;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// c += a · b for one 16×8×16 step.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// 16 bytes global → shared without passing through registers; valid = false writes zeros and
// reads nothing (src-size 0), so tails past the end of a tensor stay finite.
__device__ __forceinline__ void cp_async_16(bf16* dst, const bf16* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
               "l"(__cvta_generic_to_global(src)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#else
// A host build (bench/kernels/attention_tc_emulate.cpp) defines these warp-level primitives (and
// dynamic_smem, __shfl_xor_sync, threadIdx) with the PTX semantics above, before this header.
#endif

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// dst[0], dst[1] = lo, hi rounded to bf16, one 4-byte store (dst 4-byte aligned).
__device__ __forceinline__ void store_bf16x2(bf16* dst, float lo, float hi) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(lo, hi);
}

// Rows row0 .. row0 + ROWS of a [*, D] bf16 matrix (row r at g + r·row_stride, 16-byte aligned)
// into a shared tile [ROWS][D + kPad] with cp.async; rows ≥ n_rows become zeros. All kThreads
// threads of the block call it (the caller commits the group).
template <int ROWS, int D, int kThreads>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* g, int64_t row_stride,
                                          int64_t row0, int64_t n_rows) {
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  for (int i = int(threadIdx.x); i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks, ch = i % kChunks;
    const bool valid = row0 + r < n_rows;
    const bf16* src = valid ? g + (row0 + r) * row_stride + ch * 8 : g;
    cp_async_16(tile + r * (D + kPad) + ch * 8, src, valid);
  }
}

// acc[n] += A · Bᵀ for one warp: A = 16 rows of a shared tile (a points at the first, row stride
// a_ld), B = NT·8 rows of another (b at the first, stride b_ld), both KD columns wide; acc[nt] is
// the C fragment of columns 8nt .. 8nt + 7 (B rows). NT even.
template <int KD, int NT>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const bf16* a, int a_ld, const bf16* b,
                                        int b_ld) {
  static_assert(KD % 16 == 0 && NT % 2 == 0, "mma_abt: KD multiple of 16, NT even");
  const int lane = int(threadIdx.x % 32);
  // A matrices: 0 = rows 0-7 / cols 0-7, 1 = rows 8-15 / cols 0-7, 2 = rows 0-7 / cols 8-15,
  // 3 = rows 8-15 / cols 8-15 → a[0..3].
  const bf16* a_lane = a + (lane % 16) * a_ld + (lane / 16) * 8;
  // B matrices (rows are n, columns k): 0 = n 0-7 / k 0-7, 1 = n 0-7 / k 8-15, 2 = n 8-15 /
  // k 0-7, 3 = n 8-15 / k 8-15 → b0, b1 of n-tile 2np, then of n-tile 2np + 1.
  const bf16* b_lane = b + ((lane % 8) + (lane / 16) * 8) * b_ld + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kc = 0; kc < KD / 16; ++kc) {
    uint32_t af[4];
    ldsm_x4(af, a_lane + kc * 16);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4(bf, b_lane + np * 16 * b_ld + kc * 16);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc[n] += P · B for one warp: P (16 × 16·KT) given as A fragments in registers, B = 16·KT rows
// of a shared tile (b at the first, stride b_ld) read as [k][n], NT·8 columns. NT even.
template <int KT, int NT>
__device__ __forceinline__ void mma_pb(float (&acc)[NT][4], const uint32_t (&p)[KT][4],
                                       const bf16* b, int b_ld) {
  static_assert(NT % 2 == 0, "mma_pb: NT even");
  const int lane = int(threadIdx.x % 32);
  // Transposed B matrices (rows are k, columns n): 0 = k 0-7 / n 0-7, 1 = k 8-15 / n 0-7,
  // 2 = k 0-7 / n 8-15, 3 = k 8-15 / n 8-15 → b0, b1 of n-tile 2np, then of n-tile 2np + 1.
  const bf16* b_lane = b + ((lane % 8) + ((lane / 8) % 2) * 8) * b_ld + (lane / 16) * 8;
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, b_lane + kk * 16 * b_ld + np * 16);
      mma_bf16(acc[2 * np], p[kk], bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], p[kk], bf[2], bf[3]);
    }
  }
}

// C fragments of a 16 × 8·NT f32 tile as the A fragments (bf16) of the next product over the
// same columns: n-tiles 2kk and 2kk + 1 are the two 8-column halves of k-step kk.
template <int NT>
__device__ __forceinline__ void c_to_a(const float (&s)[NT][4], uint32_t (&p)[NT / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    p[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
    p[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
    p[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    p[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// Sum over the four lanes of a quad (the lanes holding one C-fragment row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

}  // namespace dseek::ops::cuda::attention_tc
