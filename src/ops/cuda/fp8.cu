// FP8 quantisation and the block-scaled FP8 GEMM on the GPU (maths in ops/fp8.h).
//
// quantize: one block of 128 threads per tile; thread c owns column c of the tile and walks its
// rows (1 for activation tiles, up to 128 for weight blocks), so loads are coalesced. The tile's
// amax is a block max (exact, as on the CPU), the scale comes from the shared fp8_tile_scale and
// the codes from the hardware's round-to-nearest-even, saturating conversion (__NV_SATFINITE), so
// codes and scales match cpu::quantize_fp8 bit for bit. Non-finite inputs are found with
// __syncthreads_or and reported through a device flag.
//
// fp8_gemm: a plain tiled kernel, correctness first (no tensor cores yet): fp8_gemm_tile.cuh's
// tile loop (64×64 outputs per block of 256 threads, k-blocks of 128 promoted with their two
// scales), then the bias and the store.
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
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
