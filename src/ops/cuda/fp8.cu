// FP8 quantisation and the block-scaled FP8 GEMM on the GPU (maths in ops/fp8.h).
//
// quantize: one block of 128 threads per tile; thread c owns column c of the tile and walks its
// rows (1 for activation tiles, up to 128 for weight blocks), so loads are coalesced. The tile's
// amax is a block max (exact, as on the CPU), the scale comes from the shared fp8_tile_scale and
// the codes from the hardware's round-to-nearest-even, saturating conversion (__NV_SATFINITE), so
// codes and scales match cpu::quantize_fp8 bit for bit. Non-finite inputs are found with
// __syncthreads_or and reported through a device flag.
//
// fp8_gemm: a plain tiled kernel, correctness first (no tensor cores yet). A 64×64 output tile per
// block of 256 threads, each thread 4×4 outputs; A and W are staged through shared memory 32
// columns of K at a time, decoded from E4M3 to f32 (exact). Products of two E4M3 values are exact
// in f32, each 128-wide k-block is summed into `partial` and then promoted, scaled by the two
// tile scales, into `total` — the same promotion interval as DeepSeek-V3's recipe. A 64-row tile
// of W never straddles a 128-row scale block (tiles start at multiples of 64), so one w-scale per
// k-block serves the whole tile.
#include <algorithm>
#include <cuda_fp8.h>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/fp8_kernels.h"
#include "ops/cuda/fp8_scale.h"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kTile = 128;

__device__ __forceinline__ uint8_t encode_e4m3(float v) {
  return uint8_t(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float decode_e4m3(uint8_t b) {
  __nv_fp8_e4m3 v;
  v.__x = b;
  return float(v);
}

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

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 256;

// grid (ceil(M/64), ceil(N/64)), block 256.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_gemm_kernel(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
                    const float* sw, int64_t N, const void* bias, DType bias_dtype, T* y) {
  __shared__ float As[kBK][kBM + 1];  // +1: the transposed stores hit distinct banks
  __shared__ float Ws[kBK][kBN + 1];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int64_t k_blocks = (K + kTile - 1) / kTile;
  const float* sw_row = sw + (n0 / kTile) * k_blocks;
  float total[4][4] = {}, partial[4][4];
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) partial[i][j] = 0.0f;
    const int64_t k_end = min(K, (kb + 1) * kTile);
    for (int64_t k0 = kb * kTile; k0 < k_end; k0 += kBK) {
      // 64×32 bytes of each operand: 8 per thread, consecutive threads along K (coalesced).
      for (int e = tid; e < kBM * kBK; e += kThreads) {
        const int r = e / kBK, kk = e % kBK;
        const int64_t k = k0 + kk;
        const int64_t m = m0 + r, n = n0 + r;
        As[kk][r] = (m < M && k < k_end) ? decode_e4m3(a[m * K + k]) : 0.0f;
        Ws[kk][r] = (n < N && k < k_end) ? decode_e4m3(w[n * K + k]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kBK; ++kk) {
        float av[4], wv[4];
        for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
        for (int j = 0; j < 4; ++j) wv[j] = Ws[kk][tx + 16 * j];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) partial[i][j] += av[i] * wv[j];
      }
      __syncthreads();
    }
    const float swb = sw_row[kb];
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty + 16 * i;
      const float sam = m < M ? sa[m * k_blocks + kb] : 0.0f;
      for (int j = 0; j < 4; ++j) total[i][j] += partial[i][j] * sam * swb;
    }
  }
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
  DSEEK_DISPATCH_ACT(act, T,
                     quantize_fp8_kernel<T><<<unsigned(tiles), kTile, 0, stream()>>>(
                         static_cast<const T*>(x), rows, cols, tile_rows, tiles_per_row, pow2, q,
                         scale, bad));
  DSEEK_CUDA_CHECK_LAUNCH("quantize_fp8_kernel");
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
