// FP8 quantisation and the block-scaled FP8 GEMM on the GPU (maths in ops/fp8.h).
//
// quantize: where cols is a multiple of 8 (and x aligned), quantize_fp8_rows_wide_kernel (half a
// warp per 1×128 tile, two passes' loads in flight); where it is a multiple of 4,
// quantize_fp8_rows_kernel (a warp per 1×128 tile) or quantize_fp8_blocks_kernel (256 threads per
// 128×128 block, one pass, the block in registers), 4 columns a thread; otherwise one block of 128
// threads per tile, thread c owning column c of the tile and walking its rows, so loads are
// coalesced. The tile's amax is a block max (exact, as on the CPU), the scale comes from the shared
// fp8_tile_scale and the codes from the hardware's round-to-nearest-even, saturating conversion
// (__NV_SATFINITE), so codes and scales match cpu::quantize_fp8 bit for bit. Non-finite inputs are
// found with
// __syncthreads_or (__all_sync) and reported through a device flag.
//
// fp8_gemm: the plain tiled kernel (CUDA cores; the reference the tensor-core paths — cuBLASLt's
// block-scaled GEMM, fp8_wgmma_kernels.cuh — are tested against, and the path on other GPUs):
// fp8_gemm_tile.cuh's tile loop (64×64 outputs per block of 256 threads, k-blocks of 128
// promoted with their two scales), then the bias and the store.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/adamw_element.cuh"
#include "ops/cuda/element.cuh"
#include "ops/cuda/fp8_gemm_tile.cuh"
#include "ops/cuda/fp8_kernels.h"
#include "ops/cuda/fp8_scale.h"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

using fp8::decode_e4m3;
using fp8::encode_e4m3;
using fp8::kBM;
using fp8::kBN;
using fp8::kThreads;
using fp8::kTile;

// grid.x = tiles (row-tile major), block = 128 threads.
template <typename T>
__global__ void quantize_fp8_kernel(const T* x, int64_t rows, int64_t cols, int64_t tile_rows,
                                    int64_t tiles_per_row, bool pow2, uint8_t* q, float* scale,
                                    int* bad) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const int64_t r0 = (t / tiles_per_row) * tile_rows, r1 = min(rows, r0 + tile_rows);
  const int64_t c = (t % tiles_per_row) * kTile + threadIdx.x;
  const bool active = c < cols;
  float amax = 0.0f;
  int nonfinite = 0;
  if (active) {
    for (int64_t r = r0; r < r1; ++r) {
      const float v = to_f32(x[r * cols + c]);
      nonfinite |= !isfinite(v);
      amax = fmaxf(amax, fabsf(v));
    }
  }
  // Both reductions are reached by every thread of the block (no early return before them).
  if (__syncthreads_or(nonfinite)) {
    if (threadIdx.x == 0) atomicExch(bad, 1);
    return;  // uniform: every thread saw the same __syncthreads_or result
  }
  amax = block_max(amax, scratch);
  const float s = fp8_tile_scale(amax, pow2);
  if (threadIdx.x == 0) scale[t] = s;
  if (active)
    for (int64_t r = r0; r < r1; ++r) q[r * cols + c] = encode_e4m3(to_f32(x[r * cols + c]) / s);
}

// The vectorised quantisers (where cols is a multiple of 4 and x 16-byte aligned): each thread
// holds 4 consecutive columns, loaded in one access, and writes their 4 codes in one 32-bit store.
// Same amax, scale and codes as quantize_fp8_kernel (the max is exact in any order).
template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&v)[4]);
template <>
__device__ __forceinline__ void load4<float>(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
}
template <>
__device__ __forceinline__ void load4<__nv_bfloat16>(const __nv_bfloat16* p, float (&v)[4]) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  __nv_bfloat162 lo, hi;
  memcpy(&lo, &u.x, 4);
  memcpy(&hi, &u.y, 4);
  const float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}
__device__ __forceinline__ uint32_t encode4(const float (&v)[4], float s) {
  return uint32_t(encode_e4m3(v[0] / s)) | (uint32_t(encode_e4m3(v[1] / s)) << 8) |
         (uint32_t(encode_e4m3(v[2] / s)) << 16) | (uint32_t(encode_e4m3(v[3] / s)) << 24);
}

constexpr int kRowTileWarps = 8;

// 1×128 tiles: one warp per tile (lane l: columns 4l … 4l + 3), grid-stride over the tiles,
// kRowTileWarps warps a block. A tile with a non-finite value sets *bad and is not written.
template <typename T>
__global__ void __launch_bounds__(kRowTileWarps * 32)
    quantize_fp8_rows_kernel(const T* x, int64_t rows, int64_t cols, int64_t tiles_per_row,
                             bool pow2, uint8_t* q, float* scale, int* bad) {
  const int lane = threadIdx.x % 32;
  const int64_t tiles = rows * tiles_per_row;
  for (int64_t t = int64_t(blockIdx.x) * kRowTileWarps + threadIdx.x / 32; t < tiles;
       t += int64_t(gridDim.x) * kRowTileWarps) {
    const int64_t r = t / tiles_per_row, c = (t % tiles_per_row) * kTile + 4 * lane;
    const bool active = c < cols;  // cols % 4 == 0: all four columns or none
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (active) load4(x + r * cols + c, v);
    const bool finite = isfinite(v[0]) && isfinite(v[1]) && isfinite(v[2]) && isfinite(v[3]);
    if (!__all_sync(0xffffffffu, finite)) {
      if (lane == 0) atomicExch(bad, 1);
      continue;  // uniform over the warp
    }
    const float amax =
        warp_max(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
    const float s = fp8_tile_scale(amax, pow2);
    if (lane == 0) scale[t] = s;
    if (active) *reinterpret_cast<uint32_t*>(q + r * cols + c) = encode4(v, s);
  }
}

// The same tiles with more bytes in flight (where cols is a multiple of 8 and x 16-byte aligned):
// 16 lanes a tile (lane l of a half-warp: columns 8l … 8l + 7, one 16-byte load of bf16, two of
// f32), so a warp holds two tiles a pass and kRowWidePasses passes' loads are issued before any
// is reduced — 4 tiles, 1 KiB of bf16, in flight a warp where quantize_fp8_rows_kernel has one
// (256 bytes), which left the row quantisation at about half the copy bandwidth. Same amax, scale
// and codes (the max is exact in any order); a tile with a non-finite value sets *bad and is not
// written, as there.
constexpr int kRowWidePasses = 2;

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]);
template <>
__device__ __forceinline__ void load8<float>(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x;
  v[1] = a.y;
  v[2] = a.z;
  v[3] = a.w;
  v[4] = b.x;
  v[5] = b.y;
  v[6] = b.z;
  v[7] = b.w;
}
template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 h;
    memcpy(&h, &w[i], 4);
    const float2 f = __bfloat1622float2(h);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowTileWarps * 32)
    quantize_fp8_rows_wide_kernel(const T* x, int64_t rows, int64_t cols, int64_t tiles_per_row,
                                  bool pow2, uint8_t* q, float* scale, int* bad) {
  constexpr int kTilesPerPass = 2, kTilesPerWarp = kTilesPerPass * kRowWidePasses;
  const int lane = threadIdx.x % 32, half = lane / 16, hl = lane % 16;
  const int64_t tiles = rows * tiles_per_row;
  const int64_t warp = int64_t(blockIdx.x) * kRowTileWarps + threadIdx.x / 32;
  const int64_t warps = int64_t(gridDim.x) * kRowTileWarps;
  for (int64_t first = warp * kTilesPerWarp; first < tiles; first += warps * kTilesPerWarp) {
    float v[kRowWidePasses][8];
    int64_t at[kRowWidePasses];  // the lane's first element, -1 where it holds none
#pragma unroll
    for (int p = 0; p < kRowWidePasses; ++p) {
      const int64_t t = first + kTilesPerPass * p + half;
      const int64_t r = t / tiles_per_row, c = (t % tiles_per_row) * kTile + 8 * hl;
      at[p] = t < tiles && c < cols ? r * cols + c : -1;  // cols % 8 == 0: all 8 or none
#pragma unroll
      for (int j = 0; j < 8; ++j) v[p][j] = 0.0f;
      if (at[p] >= 0) load8(x + at[p], v[p]);
    }
#pragma unroll
    for (int p = 0; p < kRowWidePasses; ++p) {
      const int64_t t = first + kTilesPerPass * p + half;
      bool finite = true;
      float amax = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        finite = finite && isfinite(v[p][j]);
        amax = fmaxf(amax, fabsf(v[p][j]));
      }
      // The half-warp's tile: its 16 lanes' ballot bits, and a max over xor offsets below 16.
      const unsigned ok = __ballot_sync(0xffffffffu, finite);
#pragma unroll
      for (int offset = 8; offset > 0; offset /= 2)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
      if (t >= tiles) continue;
      if (((ok >> (16 * half)) & 0xffffu) != 0xffffu) {
        if (hl == 0) atomicExch(bad, 1);
        continue;
      }
      const float s = fp8_tile_scale(amax, pow2);
      if (hl == 0) scale[t] = s;
      if (at[p] >= 0) {
        const float lo[4] = {v[p][0], v[p][1], v[p][2], v[p][3]};
        const float hi[4] = {v[p][4], v[p][5], v[p][6], v[p][7]};
        *reinterpret_cast<uint2*>(q + at[p]) = make_uint2(encode4(lo, s), encode4(hi, s));
      }
    }
  }
}

// 0: quantize_fp8_rows_kernel, 1: quantize_fp8_rows_wide_kernel where it applies.
int g_rows_wide = 1;

// A 128×128 block held in registers by a block of 256 threads: thread (ty, tx) = (tid / 32,
// tid % 32) holds columns c0 + 4tx … + 3 of rows r0 + ty, ty + 8, …, ty + 120 (zeros outside the
// matrix). Their amax gives the scale; W's codes go to q (the matrix's [rows, cols], where given)
// and Wᵀ's, where qt is given, to qt ([cols, rows]) through shared memory so that its rows are
// written whole, the scale to scale[tr·tiles_per_row + tc] and scale_t[tc·row_tiles + tr]. A
// non-finite value sets *bad and writes nothing (uniform per block). quantize_fp8_blocks_kernel
// and the AdamW step that writes the weights' images (adamw_image_kernel) both end here, so their
// codes are the same bits.
// With kThreads = 512 (the AdamW step's), warp ty holds rows ty + 16·i.
constexpr int kBlockRowsPerThread = kTile / 8;
struct BlockShared {
  float scratch[32];
  uint8_t codes[kTile][kTile + 4];  // the transposed copy's staging
};
template <int kThreads = 256>
__device__ __forceinline__ void store_block_codes(float (&v)[kTile / (kThreads / 32)][4],
                                                  int64_t rows, int64_t cols, int64_t tr,
                                                  int64_t tc, bool pow2, uint8_t* q, float* scale,
                                                  uint8_t* qt, float* scale_t, int* bad,
                                                  BlockShared& sh) {
  constexpr int kWarps = kThreads / 32, kRows = kTile / kWarps;
  float amax = 0.0f;
  int nonfinite = 0;
#pragma unroll
  for (int i = 0; i < kRows; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      nonfinite |= !isfinite(v[i][j]);
      amax = fmaxf(amax, fabsf(v[i][j]));
    }
  const int64_t row_tiles = (rows + kTile - 1) / kTile, tiles_per_row = (cols + kTile - 1) / kTile;
  const int64_t r0 = tr * kTile, c0 = tc * kTile, c = c0 + 4 * (threadIdx.x % 32);
  const int ty = threadIdx.x / 32;
  const bool active = c < cols;
  if (__syncthreads_or(nonfinite)) {
    if (threadIdx.x == 0) atomicExch(bad, 1);
    return;  // uniform: every thread saw the same __syncthreads_or result
  }
  amax = block_max(amax, sh.scratch);
  const float s = fp8_tile_scale(amax, pow2);
  if (threadIdx.x == 0) {
    if (q) scale[tr * tiles_per_row + tc] = s;
    if (qt) scale_t[tc * row_tiles + tr] = s;
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t r = r0 + ty + kWarps * i;
    const uint32_t word = encode4(v[i], s);
    if (q && active && r < rows) *reinterpret_cast<uint32_t*>(q + r * cols + c) = word;
    if (qt) *reinterpret_cast<uint32_t*>(&sh.codes[ty + kWarps * i][4 * (threadIdx.x % 32)]) = word;
  }
  if (!qt) return;
  __syncthreads();
  // Row j of the transposed tile is column c0 + j: 128 codes, rows r0 …, as 32 words of 4 rows
  // (rows % 4 == 0, so a word is all inside or all past the end).
  for (int idx = threadIdx.x; idx < kTile * kTile / 4; idx += kThreads) {
    const int j = idx / 32, i = 4 * (idx % 32);
    if (c0 + j >= cols || r0 + i >= rows) continue;
    const uint32_t word = uint32_t(sh.codes[i][j]) | (uint32_t(sh.codes[i + 1][j]) << 8) |
                          (uint32_t(sh.codes[i + 2][j]) << 16) |
                          (uint32_t(sh.codes[i + 3][j]) << 24);
    *reinterpret_cast<uint32_t*>(qt + (c0 + j) * rows + r0 + i) = word;
  }
}

// 128×128 blocks: one block of 256 threads per block tile, the block in registers (one pass over
// x, store_block_codes's layout). blockIdx.y picks the matrix: x, or table[blockIdx.y] when table
// is given (a stack of experts), written at q + y·rows·cols and scale + y·(its scale count). qt,
// where given, also receives the codes transposed ([cols, rows] a matrix: Wᵀ's 128×128 blocks,
// whose scales are W's transposed, into scale_t); q may then be null (only the transpose is
// wanted).
template <typename T>
__global__ void __launch_bounds__(256)
    quantize_fp8_blocks_kernel(const T* x, const void* const* table, int64_t rows, int64_t cols,
                               int64_t tiles_per_row, bool pow2, uint8_t* q, float* scale,
                               uint8_t* qt, float* scale_t, int* bad) {
  __shared__ BlockShared sh;
  const int64_t matrix = blockIdx.y, row_tiles = (rows + kTile - 1) / kTile;
  if (table) x = static_cast<const T*>(table[matrix]);
  const int64_t t = blockIdx.x, tr = t / tiles_per_row, tc = t % tiles_per_row;
  const int64_t r0 = tr * kTile, c = tc * kTile + 4 * (threadIdx.x % 32);
  const int ty = threadIdx.x / 32;
  const bool active = c < cols;
  float v[kBlockRowsPerThread][4];
#pragma unroll
  for (int i = 0; i < kBlockRowsPerThread; ++i) {
    const int64_t r = r0 + ty + 8 * i;
    if (active && r < rows) {
      load4(x + r * cols + c, v[i]);
    } else {
      v[i][0] = v[i][1] = v[i][2] = v[i][3] = 0.0f;
    }
  }
  const int64_t codes_per_matrix = rows * cols, scales_per_matrix = row_tiles * tiles_per_row;
  store_block_codes(v, rows, cols, tr, tc, pow2, q ? q + matrix * codes_per_matrix : nullptr,
                    q ? scale + matrix * scales_per_matrix : nullptr,
                    qt ? qt + matrix * codes_per_matrix : nullptr,
                    qt ? scale_t + matrix * scales_per_matrix : nullptr, bad, sh);
}

// One AdamW step of a matrix and its FP8 image in one pass (ops/adamw.h, AdamWImageEntry): a
// block of kThreads = 512 threads per 128×128 tile of the launch (the entries' tiles one after
// another), each thread updating its 8 rows × 4 columns four at a time with adamw_kernel's
// operations (adamw_quad) and keeping the new values in registers for store_block_codes: the codes
// quantize_fp8_blocks_kernel would make from the updated master, without reading it again.
template <bool BF16_MOMENTS, int kThreads>
__global__ void __launch_bounds__(kThreads, 1024 / kThreads)  // two blocks of 512 an SM
    adamw_image_kernel(const AdamWImageEntry* entries, int64_t count, AdamWScalars s, int* bad) {
  resolve_grad_scale(s);
  constexpr int kWarps = kThreads / 32, kRows = kTile / kWarps;
  __shared__ BlockShared sh;
  const int64_t tile = blockIdx.x;
  const AdamWImageEntry e = entry_at(entries, count, tile, &AdamWImageEntry::tile_begin);
  const int64_t tiles_per_row = (e.cols + kTile - 1) / kTile, t = tile - e.tile_begin;
  const int64_t tr = t / tiles_per_row, tc = t % tiles_per_row;
  const int64_t r0 = tr * kTile, c = tc * kTile + 4 * (threadIdx.x % 32);
  const int ty = threadIdx.x / 32;
  const bool active = c < e.cols;
  const float decay = e.decay ? s.decay_factor : 1.0f;
  const MomentArray<BF16_MOMENTS> m_of{e.exp_avg}, v_of{e.exp_avg_sq};
  float v[kRows][4];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t r = r0 + ty + kWarps * i;
    if (active && r < e.rows) {
      const float4 p =
          adamw_quad(e.value, GradRows<false>{e.grad}, m_of, v_of, r * e.cols + c, s, decay);
      v[i][0] = p.x;
      v[i][1] = p.y;
      v[i][2] = p.z;
      v[i][3] = p.w;
    } else {
      v[i][0] = v[i][1] = v[i][2] = v[i][3] = 0.0f;
    }
  }
  store_block_codes<kThreads>(v, e.rows, e.cols, tr, tc, /*pow2=*/false, e.q, e.scale, e.qt,
                              e.scale_t, bad, sh);
}

template <typename T>
__global__ void dequantize_fp8_kernel(const uint8_t* q, const float* scale, int64_t rows,
                                      int64_t cols, int64_t tile_rows, int64_t tiles_per_row,
                                      T* y) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    y[i] = from_f32<T>(decode_e4m3(q[i]) * scale[(r / tile_rows) * tiles_per_row + c / kTile]);
  }
}

// grid (ceil(M/64), ceil(N/64)), block 256.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_gemm_kernel(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
                    const float* sw, int64_t N, const void* bias, DType bias_dtype, T* y) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int64_t k_blocks = (K + kTile - 1) / kTile;
  const float* sw_row = sw + (n0 / kTile) * k_blocks;
  float total[4][4];
  fp8::gemm_tile(a, sa, m0, M, K, w, sw_row, n0, N, total);
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= N) continue;
      const float b = bias ? load_weight(bias, bias_dtype, n) : 0.0f;
      y[m * N + n] = from_f32<T>(total[i][j] + b);
    }
  }
}

__global__ void pack_scales_kernel(const float* src, int64_t rows, int64_t cols, bool transpose,
                                   float* dst, int64_t dst_rows, int64_t ld) {
  const int64_t n = dst_rows * ld;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / ld, c = i % ld;  // dst coordinates
    const int64_t sr = transpose ? c : r, sc = transpose ? r : c;
    dst[i] = sr < rows && sc < cols ? src[sr * cols + sc] : 0.0f;
  }
}

}  // namespace

void fp8_pack_scales(const float* src, int64_t rows, int64_t cols, bool transpose, float* dst,
                     int64_t dst_rows, int64_t ld) {
  const int64_t n = dst_rows * ld;
  if (n == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(n, 256), 4096));
  pack_scales_kernel<<<blocks, 256, 0, stream()>>>(src, rows, cols, transpose, dst, dst_rows, ld);
  DSEEK_CUDA_CHECK_LAUNCH("pack_scales_kernel");
}

void quantize_fp8(const void* x, DType act, int64_t rows, int64_t cols, int64_t tile_rows,
                  bool pow2, uint8_t* q, float* scale, int* bad) {
  if (rows == 0 || cols == 0) return;
  const int64_t tiles_per_row = ceil_div<int64_t>(cols, kTile);
  const int64_t tiles = ceil_div(rows, tile_rows) * tiles_per_row;
  // The vectorised kernels: 4 columns a thread (16-byte loads of f32, 8-byte of bf16; the codes'
  // rows then start on 4-byte boundaries).
  const bool vec = cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(q) % 4 == 0;
  const bool wide = g_rows_wide && cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(q) % 8 == 0;
  if (wide && tile_rows == 1) {
    // Enough warps to fill the GPU a few times over; each walks its tiles kTilesPerWarp at a time.
    const int64_t per_block = int64_t(kRowTileWarps) * 2 * kRowWidePasses;
    const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(tiles, per_block), 8192));
    DSEEK_DISPATCH_ACT(
        act, T,
        quantize_fp8_rows_wide_kernel<T><<<blocks, kRowTileWarps * 32, 0, stream()>>>(
            static_cast<const T*>(x), rows, cols, tiles_per_row, pow2, q, scale, bad));
    DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_rows_wide_kernel");
    return;
  }
  if (vec && tile_rows == 1) {
    const unsigned blocks =
        unsigned(std::min<int64_t>(ceil_div<int64_t>(tiles, kRowTileWarps), 65536));
    DSEEK_DISPATCH_ACT(act, T,
                       quantize_fp8_rows_kernel<T><<<blocks, kRowTileWarps * 32, 0, stream()>>>(
                           static_cast<const T*>(x), rows, cols, tiles_per_row, pow2, q, scale,
                           bad));
    DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_rows_kernel");
    return;
  }
  if (vec && tile_rows == kTile) {
    DSEEK_DISPATCH_ACT(act, T,
                       quantize_fp8_blocks_kernel<T><<<unsigned(tiles), 256, 0, stream()>>>(
                           static_cast<const T*>(x), nullptr, rows, cols, tiles_per_row, pow2, q,
                           scale, nullptr, nullptr, bad));
    DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_blocks_kernel");
    return;
  }
  DSEEK_DISPATCH_ACT(act, T,
                     quantize_fp8_kernel<T><<<unsigned(tiles), kTile, 0, stream()>>>(
                         static_cast<const T*>(x), rows, cols, tile_rows, tiles_per_row, pow2, q,
                         scale, bad));
  DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_kernel");
}

void set_quantize_fp8_rows_wide(bool wide) {
  g_rows_wide = wide ? 1 : 0;
}

bool quantize_fp8_stack_takes(int64_t rows, int64_t cols) {
  return rows % 4 == 0 && cols % 4 == 0;
}

void quantize_fp8_stack(const void* const* table, DType act, int64_t E, int64_t rows,
                        int64_t cols, bool pow2, uint8_t* q, float* scale, uint8_t* qt,
                        float* scale_t, int* bad) {
  if (E == 0 || rows == 0 || cols == 0) return;
  DSEEK_CHECK(quantize_fp8_stack_takes(rows, cols) && E <= 65535,
              "[quantize_fp8_stack] {} matrices [{}, {}]: rows and cols must be multiples of 4",
              E, rows, cols);
  const int64_t tiles_per_row = ceil_div<int64_t>(cols, kTile);
  const dim3 grid(unsigned(ceil_div<int64_t>(rows, kTile) * tiles_per_row), unsigned(E));
  DSEEK_DISPATCH_ACT(act, T,
                     quantize_fp8_blocks_kernel<T><<<grid, 256, 0, stream()>>>(
                         nullptr, table, rows, cols, tiles_per_row, pow2, q, scale, qt, scale_t,
                         bad));
  DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_blocks_kernel<stack>");
}

void adamw_image_multi_tensor(const AdamWImageEntry* entries, int64_t count, int64_t tiles,
                              const AdamWScalars& s, bool bf16_moments, int* bad) {
  if (count == 0 || tiles == 0) return;
  DSEEK_CHECK(tiles <= INT32_MAX, "[adamw] {} tiles of FP8 images in one launch", tiles);
  // 512 threads (8 rows each, two blocks an SM): 21.9 ms of optimizer a V2-Lite step against 23.5
  // with 256 (16 rows each, 124 registers) and 21.6 with 1024 (H100, docs/FP8.md).
  constexpr int kThreads = 512;
  const unsigned grid = unsigned(tiles);
  if (bf16_moments)
    adamw_image_kernel<true, kThreads><<<grid, kThreads, 0, stream()>>>(entries, count, s, bad);
  else
    adamw_image_kernel<false, kThreads><<<grid, kThreads, 0, stream()>>>(entries, count, s, bad);
  DSEEK_CUDA_CHECK_LAUNCH("adamw_image_kernel");
}

void dequantize_fp8(const uint8_t* q, const float* scale, int64_t rows, int64_t cols,
                    int64_t tile_rows, void* y, DType out) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  const int64_t tiles_per_row = ceil_div<int64_t>(cols, kTile);
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(n, 256), 65536));
  DSEEK_DISPATCH_ACT(out, T,
                     dequantize_fp8_kernel<T><<<blocks, 256, 0, stream()>>>(
                         q, scale, rows, cols, tile_rows, tiles_per_row, static_cast<T*>(y)));
  DSEEK_CUDA_CHECK_LAUNCH("dequantize_fp8_kernel");
}

void fp8_gemm(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
              const float* sw, int64_t N, const void* bias, DType bias_dtype, void* y, DType out) {
  if (M == 0 || N == 0) return;
  const dim3 grid(unsigned(ceil_div<int64_t>(M, kBM)), unsigned(ceil_div<int64_t>(N, kBN)));
  DSEEK_DISPATCH_ACT(out, T,
                     fp8_gemm_kernel<T><<<grid, kThreads, 0, stream()>>>(
                         a, sa, M, K, w, sw, N, bias, bias_dtype, static_cast<T*>(y)));
  DSEEK_CUDA_CHECK_LAUNCH("fp8_gemm_kernel");
}

}  // namespace dseek::ops::cuda
