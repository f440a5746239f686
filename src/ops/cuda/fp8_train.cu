// FP8 training kernels on the GPU (ops/fp8_train.h has the recipe and the tile layouts).
//
// quantize_fp8_cols: one block of 256 threads (8 rows × 32 columns) per column-tile slot and 32
// columns; the slot's group is found by a binary search over the tile bases floor(o_g/128) + g
// (strictly increasing in g), so no prefix sum or host copy of the offsets is needed. Each thread
// holds 16 rows of its column in registers; the 8 row-partial maxima of a column meet in shared
// memory. Loads and stores run along the columns (coalesced). Scale rule and conversion as
// fp8.cu's quantize kernel, so the codes match cpu::quantize_fp8_cols bit for bit.
//
// fp8_grouped_gemm: fp8.cu's plain tiled GEMM (fp8_gemm_tile.cuh's tile loop: 64×64 outputs per
// 256 threads, each 128-long k-block promoted with its two scales) with grid.z over the groups:
// the blocks of group e cover its rows from offsets[e] in steps of 64 and leave at once past its
// end (correctness first: no tile scheduler yet). A 64-row tile of w_e never straddles a 128-row
// scale block.
//
// On a Hopper with sm_90a code the two grouped GEMMs run on the tensor cores instead
// (fp8_wgmma_kernels.cuh, where K and N are multiples of 16): the wgrad reads dy's and x's column
// tiles as K-major lines of 128 tokens, which col_tiles_t_kernel writes in one pass from the
// activations (or from x's cached 1×128 row tiles), quantising and transposing together through a
// 128×64 tile in shared memory. Their default forms are warp-specialised (fp8_tma_kernels.cuh:
// one thread loads the tiles with the tensor memory accelerator, two warpgroups multiply; the
// wgrad persistent over its tiles); DSEEK_LOADS=cp_async (set_tma_loads) runs the
// cp.async forms of fp8_wgmma_kernels.cuh, which give the same bits. The plain kernels below are
// the portable path and the reference the backend tests hold those to.
//
// fp8_grouped_wgrad: the same 64×64 register tiling over dW_e [N, K], the reduction running over
// the group's rows: 32 rows of dy and x at a time staged in shared memory (rows read along N and
// K, coalesced), summed over each 128-row column tile into `partial`, then promoted with
// sdy[tile, n]·sx[tile, k]. Every dW element is summed by one thread in a fixed order.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <type_traits>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/expert_tiles.cuh"
#include "ops/cuda/fp8_gemm_tile.cuh"
#include "ops/cuda/fp8_scale.h"
#include "ops/cuda/fp8_tma_kernels.cuh"
#include "ops/cuda/fp8_train_kernels.h"
#include "ops/cuda/fp8_wgmma_kernels.cuh"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/cuda/tma_map.h"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

using fp8::decode_e4m3;
using fp8::encode_e4m3;
using fp8::kBK;
using fp8::kBM;
using fp8::kBN;
using fp8::kThreads;
using fp8::kTile;

// --- column tiles -------------------------------------------------------------------------------

constexpr int kColWidth = 32, kColRowsPerPass = 8, kColThreads = kColWidth * kColRowsPerPass;
constexpr int kColRowsPerThread = kTile / kColRowsPerPass;  // 16

// The rows [range[0], range[1]) of column-tile slot `slot`: the last group whose first tile's slot
// is ≤ this slot (bases floor(o_g/128) + g strictly increase with g), found by a binary search;
// an empty range for an unused slot.
__device__ void slot_rows(const int64_t* offsets, int64_t groups, int64_t slot, int64_t* range) {
  int64_t lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] / kTile + mid <= slot)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int64_t base = offsets[lo] / kTile + lo;
  const int64_t r0 = offsets[lo] + (slot - base) * kTile, end = offsets[lo + 1];
  const bool used = base <= slot && r0 < end;
  range[0] = used ? r0 : 0;
  range[1] = used ? min(end, r0 + kTile) : 0;
}

// This block's slot (blockIdx.x) rows [r0, r1), found by thread 0 and shared: every thread of the
// block calls it (it synchronises the block).
struct SlotRange {
  int64_t r0, r1;
};
__device__ SlotRange block_slot_rows(const int64_t* offsets, int64_t groups) {
  __shared__ int64_t range[2];
  if (threadIdx.x == 0) slot_rows(offsets, groups, blockIdx.x, range);
  __syncthreads();
  return {range[0], range[1]};
}

// grid (slots, ceil(cols/32)), block 256.
template <typename T>
__global__ void __launch_bounds__(kColThreads)
    quantize_fp8_cols_kernel(const T* x, int64_t cols, const int64_t* offsets, int64_t groups,
                             uint8_t* q, float* scale, int* bad) {
  __shared__ float partial_max[kColRowsPerPass][kColWidth];
  const int64_t slot = blockIdx.x;
  const auto [r0, r1] = block_slot_rows(offsets, groups);
  if (r0 >= r1) return;  // an unused slot: uniform over the block
  const int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth;
  const int64_t c = int64_t(blockIdx.y) * kColWidth + tx;
  const bool active = c < cols;
  float v[kColRowsPerThread];
  float amax = 0.0f;
  int nonfinite = 0;
#pragma unroll
  for (int i = 0; i < kColRowsPerThread; ++i) {
    const int64_t r = r0 + ty + kColRowsPerPass * i;
    v[i] = active && r < r1 ? to_f32(x[r * cols + c]) : 0.0f;
    nonfinite |= !isfinite(v[i]);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  if (__syncthreads_or(nonfinite)) {
    if (threadIdx.x == 0) atomicExch(bad, 1);
    return;  // uniform: every thread saw the same __syncthreads_or result
  }
  partial_max[ty][tx] = amax;
  __syncthreads();
  float m = partial_max[0][tx];
  for (int j = 1; j < kColRowsPerPass; ++j) m = fmaxf(m, partial_max[j][tx]);
  const float s = fp8_tile_scale(m, false);
  if (!active) return;
  if (ty == 0) scale[slot * cols + c] = s;
#pragma unroll
  for (int i = 0; i < kColRowsPerThread; ++i) {
    const int64_t r = r0 + ty + kColRowsPerPass * i;
    if (r < r1) q[r * cols + c] = encode_e4m3(v[i] / s);
  }
}

// --- transposed weight blocks -------------------------------------------------------------------

// grid (ceil(C/32), ceil(R/32), E), block (32, 8): a 32×32 tile through shared memory.
__global__ void transpose_codes_kernel(const uint8_t* in, int64_t R, int64_t C, uint8_t* out) {
  __shared__ uint8_t tile[32][33];
  const int64_t e = blockIdx.z;
  const uint8_t* src = in + e * R * C;
  uint8_t* dst = out + e * R * C;
  const int64_t c0 = int64_t(blockIdx.x) * 32, r0 = int64_t(blockIdx.y) * 32;
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < R && c < C) tile[i][threadIdx.x] = src[r * C + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;  // dst is [C, R]
    if (c < C && r < R) dst[c * R + r] = tile[threadIdx.x][i];
  }
}

// [E, rb, cb] -> [E, cb, rb], grid-stride over the destination.
__global__ void transpose_scales_kernel(const float* in, int64_t E, int64_t rb, int64_t cb,
                                        float* out) {
  const int64_t n = E * rb * cb;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i / (rb * cb), rem = i % (rb * cb);
    const int64_t c = rem / rb, r = rem % rb;  // destination [c, r]
    out[i] = in[e * rb * cb + r * cb + c];
  }
}

// --- column tiles transposed for the wgmma wgrad -------------------------------------------------

constexpr int kTrCols = 64;

// grid (slots, ceil(C/64)), block 256: slot s's 128 rows × 64 columns of q [rows, C] through
// shared memory into qt [C, P] (P = 128 × slots), row r0 + i at column 128·s + i; zeros past the
// slot's rows and in unused slots.
__global__ void __launch_bounds__(256)
    transpose_col_tiles_kernel(const uint8_t* q, int64_t C, const int64_t* offsets, int64_t groups,
                               uint8_t* qt, int64_t P) {
  __shared__ uint8_t tile[kTile][kTrCols + 4];
  const int64_t slot = blockIdx.x;
  const SlotRange rows = block_slot_rows(offsets, groups);
  const int64_t r0 = rows.r0, n = rows.r1 - rows.r0;
  const int64_t c0 = int64_t(blockIdx.y) * kTrCols;
  for (int i = threadIdx.x; i < kTile * kTrCols; i += blockDim.x) {
    const int r = i / kTrCols, c = i % kTrCols;
    tile[r][c] = r < n && c0 + c < C ? q[(r0 + r) * C + c0 + c] : uint8_t(0);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTile * kTrCols; i += blockDim.x) {
    const int c = i / kTile, r = i % kTile;
    if (c0 + c < C) qt[(c0 + c) * P + slot * kTile + r] = tile[r][c];
  }
}

// --- column tiles, quantised and transposed in one pass ------------------------------------------

// The sources of col_tiles_t_kernel: element (r, c) as f32.
template <typename T>
// load4(r, c): elements (r, c … c + 3) in one load (c a multiple of 4, cols too, the base 16-byte
// aligned: the launcher checks), the same values as four operator() calls.
struct ActivationRows {  // x [rows, cols] in f32 or bf16
  const T* x;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const { return to_f32(x[r * cols + c]); }
  bool aligned16() const { return reinterpret_cast<uintptr_t>(x) % 16 == 0; }
  __device__ float4 load4(int64_t r, int64_t c) const {
    if constexpr (std::is_same_v<T, float>) {
      return *reinterpret_cast<const float4*>(x + r * cols + c);
    } else {
      const uint2 u = *reinterpret_cast<const uint2*>(x + r * cols + c);
      const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&u.x);
      const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&u.y);
      return make_float4(__low2float(a), __high2float(a), __low2float(b), __high2float(b));
    }
  }
};

struct Fp8Rows {  // x̂ = codes · 1×128 row-tile scales, as dequantize_fp8_kernel computes it
  const uint8_t* q;
  const float* s;
  int64_t cols, tiles_per_row;
  __device__ float operator()(int64_t r, int64_t c) const {
    return decode_e4m3(q[r * cols + c]) * s[r * tiles_per_row + c / kTile];
  }
  bool aligned16() const { return reinterpret_cast<uintptr_t>(q) % 16 == 0; }
  __device__ float4 load4(int64_t r, int64_t c) const {
    const uint32_t codes = *reinterpret_cast<const uint32_t*>(q + r * cols + c);
    const float sc = s[r * tiles_per_row + c / kTile];  // c … c + 3 share a 128-tile
    return make_float4(decode_e4m3(uint8_t(codes)) * sc, decode_e4m3(uint8_t(codes >> 8)) * sc,
                       decode_e4m3(uint8_t(codes >> 16)) * sc,
                       decode_e4m3(uint8_t(codes >> 24)) * sc);
  }
};

// grid (slots, ceil(C/64)), block 256: slot s's rows (at most 128) × 64 columns of the source into
// shared memory as f32, each thread keeping the maxima of its columns (VEC: thread t loads
// columns 4(t % 16) … + 3 of every 16th row in one load; else column t % 64 of every fourth
// row), each column's scale from those partial maxima, then the codes written transposed, 16 rows
// of one column a thread as one 16-byte store. Values, scale rule and rounding are those of
// quantize_fp8_cols_kernel, so the codes are the ones it and transpose_col_tiles_kernel give.
template <typename Source, bool VEC>
__global__ void __launch_bounds__(256)
    col_tiles_t_kernel(Source src, int64_t C, const int64_t* offsets, int64_t groups, uint8_t* qt,
                       int64_t P, float* scale, int* bad) {
  constexpr int kQuads = kTrCols / 4;
  constexpr int kPhases = VEC ? 256 / kQuads : 256 / kTrCols;  // rows loaded at a time
  __shared__ float tile[kTile][kTrCols + 1];
  __shared__ float partial_max[kPhases][kTrCols];
  __shared__ float col_scale[kTrCols];
  const int64_t slot = blockIdx.x;
  const SlotRange rows = block_slot_rows(offsets, groups);
  const int64_t r0 = rows.r0, n = rows.r1 - rows.r0;
  const int64_t c0 = int64_t(blockIdx.y) * kTrCols;
  int nonfinite = 0;
  if constexpr (VEC) {
    const int q = threadIdx.x % kQuads, phase = threadIdx.x / kQuads;
    const bool active = c0 + 4 * q < C;  // C is a multiple of 4: the quad is wholly in or out
    float amax[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int r = phase; r < kTile; r += kPhases) {
      const float4 v4 = active && r < n ? src.load4(r0 + r, c0 + 4 * q) : float4{0, 0, 0, 0};
      const float v[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        nonfinite |= !isfinite(v[j]);
        amax[j] = fmaxf(amax[j], fabsf(v[j]));
        tile[r][4 * q + j] = v[j];
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) partial_max[phase][4 * q + j] = amax[j];
  } else {
    const int c = threadIdx.x % kTrCols, phase = threadIdx.x / kTrCols;
    const bool active = c0 + c < C;
    float amax = 0.0f;
    for (int r = phase; r < kTile; r += kPhases) {
      const float v = active && r < n ? src(r0 + r, c0 + c) : 0.0f;
      nonfinite |= !isfinite(v);
      amax = fmaxf(amax, fabsf(v));
      tile[r][c] = v;
    }
    partial_max[phase][c] = amax;
  }
  if (__syncthreads_or(nonfinite) && threadIdx.x == 0 && bad) atomicExch(bad, 1);
  if (threadIdx.x < kTrCols) {
    const int c = threadIdx.x;
    const bool active = c0 + c < C;
    float m = partial_max[0][c];
    for (int j = 1; j < kPhases; ++j) m = fmaxf(m, partial_max[j][c]);
    const float s = fp8_tile_scale(m, false);
    col_scale[c] = s;
    if (active) scale[slot * C + c0 + c] = n > 0 ? s : 0.0f;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTrCols * (kTile / 16); i += blockDim.x) {
    const int cc = i % kTrCols, chunk = i / kTrCols;  // lanes on consecutive columns: no conflicts
    if (c0 + cc >= C) continue;
    const float s = col_scale[cc];
    uint32_t word[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      word[j] = 0;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int r = chunk * 16 + j * 4 + b;
        const uint32_t code = r < n ? encode_e4m3(tile[r][cc] / s) : 0u;
        word[j] |= code << (8 * b);
      }
    }
    *reinterpret_cast<uint4*>(qt + (c0 + cc) * P + slot * kTile + chunk * 16) =
        make_uint4(word[0], word[1], word[2], word[3]);
  }
}

// --- grouped GEMMs ------------------------------------------------------------------------------

// grid (ceil(M/64), ceil(N/64), E), block 256.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_grouped_gemm_kernel(const uint8_t* a, const float* sa, int64_t K, const int64_t* offsets,
                            const uint8_t* w, const float* sw, int64_t N, T* y) {
  const int64_t e = blockIdx.z;
  const int64_t end = offsets[e + 1];
  const int64_t m0 = offsets[e] + int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  if (m0 >= end) return;  // past this group's rows: uniform over the block
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t k_blocks = (K + kTile - 1) / kTile, n_blocks = (N + kTile - 1) / kTile;
  const uint8_t* we = w + e * N * K;
  const float* sw_row = sw + (e * n_blocks + n0 / kTile) * k_blocks;
  float total[4][4];
  fp8::gemm_tile(a, sa, m0, end, K, we, sw_row, n0, N, total);
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= end) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < N) y[m * N + n] = from_f32<T>(total[i][j]);
    }
  }
}

// grid (ceil(K/64), ceil(N/64), E), block 256: thread (ty, tx) owns dW[n0 + ty + 16i, k0 + tx +
// 16j].
__global__ void __launch_bounds__(kThreads)
    fp8_grouped_wgrad_kernel(const uint8_t* dy, const float* sdy, const uint8_t* x, const float* sx,
                             int64_t N, int64_t K, const int64_t* offsets, float* const* dw,
                             float beta) {
  __shared__ float Ds[kBK][kBN + 1];  // [row][n]
  __shared__ float Xs[kBK][kBM + 1];  // [row][k]
  const int64_t e = blockIdx.z;
  const int64_t begin = offsets[e], end = offsets[e + 1];
  const int64_t k0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t base = begin / kTile + e;  // scale row of the group's first column tile
  float total[4][4] = {}, partial[4][4];
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {  // one column tile; uniform over the block
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) partial[i][j] = 0.0f;
    const int64_t t_end = min(end, t0 + kTile);
    for (int64_t r0 = t0; r0 < t_end; r0 += kBK) {
      for (int idx = tid; idx < kBK * kBN; idx += kThreads) {
        const int rr = idx / kBN, cc = idx % kBN;
        const int64_t t = r0 + rr, n = n0 + cc, k = k0 + cc;
        Ds[rr][cc] = (t < t_end && n < N) ? decode_e4m3(dy[t * N + n]) : 0.0f;
        Xs[rr][cc] = (t < t_end && k < K) ? decode_e4m3(x[t * K + k]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kBK; ++kk) {
        float dv[4], xv[4];
        for (int i = 0; i < 4; ++i) dv[i] = Ds[kk][ty + 16 * i];
        for (int j = 0; j < 4; ++j) xv[j] = Xs[kk][tx + 16 * j];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) partial[i][j] += dv[i] * xv[j];
      }
      __syncthreads();
    }
    const int64_t slot = base + (t0 - begin) / kTile;
    for (int i = 0; i < 4; ++i) {
      const int64_t n = n0 + ty + 16 * i;
      const float sd = n < N ? sdy[slot * N + n] : 0.0f;
      for (int j = 0; j < 4; ++j) {
        const int64_t k = k0 + tx + 16 * j;
        const float sk = k < K ? sx[slot * K + k] : 0.0f;
        total[i][j] += partial[i][j] * sd * sk;
      }
    }
  }
  float* out = dw[e];
  for (int i = 0; i < 4; ++i) {
    const int64_t n = n0 + ty + 16 * i;
    if (n >= N) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t k = k0 + tx + 16 * j;
      if (k >= K) continue;
      float* o = out + n * K + k;
      *o = beta == 0.0f ? total[i][j] : beta * *o + total[i][j];  // never reads when overwriting
    }
  }
}

}  // namespace

void quantize_fp8_cols(const void* x, DType act, int64_t rows, int64_t cols, const int64_t* offsets,
                       int64_t groups, uint8_t* q, float* scale, int* bad) {
  const int64_t slots = rows / kTile + groups;
  dseek::cuda::fill_bytes(q, 0, size_t(rows * cols));
  dseek::cuda::fill_bytes(scale, 0, size_t(slots * cols) * sizeof(float));
  if (rows == 0 || cols == 0 || groups == 0) return;
  const dim3 grid(unsigned(slots), unsigned(ceil_div<int64_t>(cols, kColWidth)));
  DSEEK_DISPATCH_ACT(act, T,
                     quantize_fp8_cols_kernel<T><<<grid, kColThreads, 0, stream()>>>(
                         static_cast<const T*>(x), cols, offsets, groups, q, scale, bad));
  DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_cols_kernel");
}

namespace {

template <typename Source>
void launch_col_tiles_t(Source src, int64_t rows, int64_t cols, const int64_t* offsets,
                        int64_t groups, uint8_t* qt, float* scale, int* bad) {
  const int64_t slots = rows / kTile + groups;
  if (cols == 0 || groups == 0) return;
  // P·cols bytes of codes, each column's stretch 16-byte aligned (P is a multiple of 128)
  const dim3 grid(unsigned(slots), unsigned(ceil_div<int64_t>(cols, kTrCols)));
  if (cols % 4 == 0 && src.aligned16()) {  // the vector loads' rows stay aligned
    col_tiles_t_kernel<Source, true>
        <<<grid, 256, 0, stream()>>>(src, cols, offsets, groups, qt, slots * kTile, scale, bad);
  } else {
    col_tiles_t_kernel<Source, false>
        <<<grid, 256, 0, stream()>>>(src, cols, offsets, groups, qt, slots * kTile, scale, bad);
  }
  DSEEK_CUDA_CHECK_LAUNCH("col_tiles_t_kernel");
}

}  // namespace

void fp8_col_tiles_t(const void* x, DType act, int64_t rows, int64_t cols, const int64_t* offsets,
                     int64_t groups, uint8_t* qt, float* scale, int* bad) {
  DSEEK_DISPATCH_ACT(act, T,
                     launch_col_tiles_t(ActivationRows<T>{static_cast<const T*>(x), cols}, rows,
                                        cols, offsets, groups, qt, scale, bad));
}

void fp8_col_tiles_t_from_rows(const uint8_t* q_rows, const float* s_rows, int64_t rows,
                               int64_t cols, const int64_t* offsets, int64_t groups, uint8_t* qt,
                               float* scale, int* bad) {
  launch_col_tiles_t(Fp8Rows{q_rows, s_rows, cols, ceil_div<int64_t>(cols, kTile)}, rows, cols,
                     offsets, groups, qt, scale, bad);
}

void fp8_transpose_blocks(const uint8_t* q, const float* scale, int64_t E, int64_t R, int64_t C,
                          uint8_t* qt, float* scale_t) {
  if (E == 0 || R == 0 || C == 0) return;
  const dim3 grid(unsigned(ceil_div<int64_t>(C, 32)), unsigned(ceil_div<int64_t>(R, 32)),
                  unsigned(E));
  transpose_codes_kernel<<<grid, dim3(32, 8), 0, stream()>>>(q, R, C, qt);
  DSEEK_CUDA_CHECK_LAUNCH("transpose_codes_kernel");
  const int64_t rb = ceil_div<int64_t>(R, kTile), cb = ceil_div<int64_t>(C, kTile);
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(E * rb * cb, 256), 4096));
  transpose_scales_kernel<<<blocks, 256, 0, stream()>>>(scale, E, rb, cb, scale_t);
  DSEEK_CUDA_CHECK_LAUNCH("transpose_scales_kernel");
}

namespace {

using dseek::cuda::compute_sms;

// fp8_wgmma::fp8_rows_wgmma_kernel, or fp8_tma::fp8_rows_tma_kernel where chosen and the
// operands suit tensor maps, over `blocks` blocks (its arguments; offsets null: dense).
void launch_rows_wgmma(int64_t blocks, const uint8_t* a, const float* sa, int64_t M,
                       const int64_t* offsets, const int64_t* tile_start, int64_t E,
                       const uint8_t* w, const float* sw, int64_t N, int64_t K, void* y,
                       DType out) {
  if (tma_loads() && tma_codes_map_takes(a, M, K, K) && tma_codes_map_takes(w, E * N, K, K)) {
    const CUtensorMap map_a = tma_codes_map(a, M, K, K, fp8_tma::kBM, "fp8 GEMM activations");
    const CUtensorMap map_w = tma_codes_map(w, E * N, K, K, fp8_tma::kBN, "fp8 GEMM weights");
    DSEEK_DISPATCH_ACT(out, T, {
      const auto kernel = fp8_tma::fp8_rows_tma_kernel<T>;
      DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(fp8_tma::kSmemBytes)));
      kernel<<<unsigned(blocks), fp8_tma::kThreads, fp8_tma::kSmemBytes, stream()>>>(
          map_a, sa, M, offsets, tile_start, E, map_w, sw, N, K, static_cast<T*>(y));
    });
    DSEEK_CUDA_CHECK_LAUNCH("fp8_rows_tma_kernel");
    return;
  }
  DSEEK_DISPATCH_ACT(out, T, {
    const auto kernel = fp8_wgmma::fp8_rows_wgmma_kernel<T>;
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(fp8_wgmma::kSmemBytes)));
    kernel<<<unsigned(blocks), fp8_wgmma::kThreads, fp8_wgmma::kSmemBytes, stream()>>>(
        a, sa, M, offsets, tile_start, E, w, sw, N, K, static_cast<T*>(y));
  });
  DSEEK_CUDA_CHECK_LAUNCH("fp8_rows_wgmma_kernel");
}

}  // namespace

bool fp8_wgmma_takes(int64_t K, int64_t N) {
  return grouped_gemm_wgmma() && K > 0 && K % 16 == 0 && N % 16 == 0;
}

void fp8_grouped_gemm(const uint8_t* a, const float* sa, int64_t M, int64_t K,
                      const int64_t* offsets, int64_t E, const uint8_t* w, const float* sw,
                      int64_t N, void* y, DType out) {
  if (M == 0 || N == 0 || E == 0) return;
  if (fp8_wgmma_takes(K, N)) {
    // The most tiles any routing can need: one partial tile per expert beyond ceil(M / 128).
    const int64_t tiles = ceil_div<int64_t>(M, fp8_wgmma::kBM) + E,
                  cols = ceil_div<int64_t>(N, fp8_wgmma::kBN);
    DSEEK_CHECK(tiles <= INT_MAX / cols,
                "[fp8_grouped_gemm] {} row tiles × {} columns exceed the grid", tiles, N);
    const std::unique_ptr<int64_t, void (*)(void*)> tile_start(
        tile_schedule(offsets, E, fp8_wgmma::kBM), dseek::cuda::free);
    launch_rows_wgmma(tiles * cols, a, sa, M, offsets, tile_start.get(), E, w, sw, N, K, y, out);
    return;
  }
  const dim3 grid(unsigned(ceil_div<int64_t>(M, kBM)), unsigned(ceil_div<int64_t>(N, kBN)),
                  unsigned(E));
  DSEEK_DISPATCH_ACT(out, T,
                     fp8_grouped_gemm_kernel<T><<<grid, kThreads, 0, stream()>>>(
                         a, sa, K, offsets, w, sw, N, static_cast<T*>(y)));
  DSEEK_CUDA_CHECK_LAUNCH("fp8_grouped_gemm_kernel");
}

void fp8_gemm_wgmma(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
                    const float* sw, int64_t N, void* y, DType out) {
  if (M == 0 || N == 0) return;
  const int64_t tiles = ceil_div<int64_t>(M, fp8_wgmma::kBM),
                cols = ceil_div<int64_t>(N, fp8_wgmma::kBN);
  DSEEK_CHECK(tiles <= INT_MAX / cols, "[fp8_gemm] {} × {} output exceeds the grid", M, N);
  launch_rows_wgmma(tiles * cols, a, sa, M, nullptr, nullptr, 1, w, sw, N, K, y, out);
}

void fp8_grouped_wgrad(const uint8_t* dy, const float* sdy, const uint8_t* x, const float* sx,
                       int64_t rows, int64_t N, int64_t K, const int64_t* offsets, int64_t E,
                       float* const* dw, float beta, double* squares) {
  if (N == 0 || K == 0 || E == 0) {
    if (squares) matrices_sum_of_squares(dw, E, N, K, squares);  // zero
    return;
  }
  if (fp8_wgmma_takes(K, N)) {
    // wgmma reads 8-bit operands K-major only: dyᵀ and xᵀ, each column tile a 128-byte stretch.
    const int64_t slots = rows / kTile + E, P = slots * kTile;
    const std::unique_ptr<uint8_t, void (*)(void*)> dyt(
        static_cast<uint8_t*>(dseek::cuda::alloc(size_t(N * P))), dseek::cuda::free);
    const std::unique_ptr<uint8_t, void (*)(void*)> xt(
        static_cast<uint8_t*>(dseek::cuda::alloc(size_t(K * P))), dseek::cuda::free);
    transpose_col_tiles_kernel<<<dim3(unsigned(slots), unsigned(ceil_div<int64_t>(N, kTrCols))),
                                 256, 0, stream()>>>(dy, N, offsets, E, dyt.get(), P);
    DSEEK_CUDA_CHECK_LAUNCH("transpose_col_tiles_kernel");
    transpose_col_tiles_kernel<<<dim3(unsigned(slots), unsigned(ceil_div<int64_t>(K, kTrCols))),
                                 256, 0, stream()>>>(x, K, offsets, E, xt.get(), P);
    DSEEK_CUDA_CHECK_LAUNCH("transpose_col_tiles_kernel");
    fp8_grouped_wgrad_t(dyt.get(), sdy, xt.get(), sx, rows, N, K, offsets, E, dw, beta, squares);
    return;
  }
  const dim3 grid(unsigned(ceil_div<int64_t>(K, kBM)), unsigned(ceil_div<int64_t>(N, kBN)),
                  unsigned(E));
  fp8_grouped_wgrad_kernel<<<grid, kThreads, 0, stream()>>>(dy, sdy, x, sx, N, K, offsets, dw,
                                                            beta);
  DSEEK_CUDA_CHECK_LAUNCH("fp8_grouped_wgrad_kernel");
  if (squares) matrices_sum_of_squares(dw, E, N, K, squares);
}

void fp8_grouped_wgrad_t(const uint8_t* dyt, const float* sdy, const uint8_t* xt, const float* sx,
                         int64_t rows, int64_t N, int64_t K, const int64_t* offsets, int64_t E,
                         float* const* dw, float beta, double* squares) {
  if (N == 0 || K == 0 || E == 0) {
    if (squares) matrices_sum_of_squares(dw, E, N, K, squares);  // zero
    return;
  }
  DSEEK_CHECK(fp8_wgmma_takes(K, N) && E <= 65535 && ceil_div<int64_t>(N, 64) <= 65535,
              "[fp8_grouped_wgrad] dW of {} experts × [{}, {}]: not a tensor-core shape here", E, N,
              K);
  const int64_t P = (rows / kTile + E) * kTile;
  if (tma_loads() && tma_codes_map_takes(dyt, N, P, P) && tma_codes_map_takes(xt, K, P, P)) {
    const CUtensorMap map_dyt = tma_codes_map(dyt, N, P, P, 128, "fp8 wgrad dy (column tiles)");
    const CUtensorMap map_xt = tma_codes_map(xt, K, P, P, 128, "fp8 wgrad x (column tiles)");
    const auto kernel = fp8_tma::fp8_wgrad_tma_kernel;
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(fp8_tma::kWgradSmemBytes)));
    const int64_t tiles =
        E * ceil_div<int64_t>(N, fp8_tma::kBM) * ceil_div<int64_t>(K, fp8_tma::kBN);
    const unsigned blocks = unsigned(std::min<int64_t>(tiles, compute_sms()));
    std::optional<SquarePartials> partial;
    if (squares) partial.emplace(int64_t(blocks) * fp8_tma::kMultiplierWarps);
    kernel<<<blocks, fp8_tma::kThreads, fp8_tma::kWgradSmemBytes, stream()>>>(
        map_dyt, sdy, map_xt, sx, N, K, offsets, E, dw, beta, partial ? partial->data() : nullptr);
    DSEEK_CUDA_CHECK_LAUNCH("fp8_wgrad_tma_kernel");
    if (partial) partial->finish(squares);
    return;
  }
  constexpr int wg = fp8_wgmma::kWgradWarpgroups;
  const auto kernel = fp8_wgmma::fp8_wgrad_wgmma_kernel<wg>;
  const size_t smem = fp8_wgmma::smem_bytes(wg);
  DSEEK_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned(ceil_div<int64_t>(K, fp8_wgmma::kBN)),
                  unsigned(ceil_div<int64_t>(N, 64 * wg)), unsigned(E));
  kernel<<<grid, fp8_wgmma::threads(wg), smem, stream()>>>(dyt, sdy, xt, sx, N, K, P, offsets, dw,
                                                           beta);
  DSEEK_CUDA_CHECK_LAUNCH("fp8_wgrad_wgmma_kernel");
  if (squares) matrices_sum_of_squares(dw, E, N, K, squares);
}

}  // namespace dseek::ops::cuda
