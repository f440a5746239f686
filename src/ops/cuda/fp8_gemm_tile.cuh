// Device code shared by fp8.cu and fp8_train.cu: the E4M3 conversions, and the tile loop of the
// plain block-scaled FP8 GEMM (fp8_gemm and the grouped fp8_grouped_gemm run the same loop, they
// differ only in where a tile's rows end and which W and scale rows it reads).
//
// gemm_tile: a 64×64 output tile per block of 256 threads, each thread 4×4 outputs; A and W are
// staged through shared memory 32 columns of K at a time, decoded from E4M3 to f32 (exact).
// Products of two E4M3 values are exact in f32; each 128-wide k-block is summed into `partial`
// and then promoted, scaled by the two tile scales, into `total` — the same promotion interval as
// DeepSeek-V3's recipe. A 64-row tile of W never straddles a 128-row scale block (tiles start at
// multiples of 64), so one w-scale per k-block serves the whole tile.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

namespace dseek::ops::cuda::fp8 {

constexpr int kTile = 128;  // the side of a scale tile (1×128 activations, 128×128 weights)
constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 256;

__device__ __forceinline__ uint8_t encode_e4m3(float v) {
  return uint8_t(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float decode_e4m3(uint8_t b) {
  __nv_fp8_e4m3 v;
  v.__x = b;
  return float(v);
}

// total[i][j] (overwritten) = Σ_kb sa[m, kb]·sw_row[kb]·Σ_{k in kb} a[m, k]·w[n, k] for the output
// (m, n) = (m0 + ty + 16i, n0 + tx + 16j) of thread (ty, tx) = (tid / 16, tid % 16). a [.., K]:
// codes, rows m < m_end exist (the others read as 0, their scales are not read); sa [.., kb]: the
// rows' tile scales (kb = ceil(K/128)); w [N, K]: codes; sw_row [kb]: the scales of the 128-row W
// block holding n0. Called once by all 256 threads of the block (it synchronises, so never from
// divergent code); its two shared arrays are static, allocated in each kernel that calls it.
__device__ __forceinline__ void gemm_tile(const uint8_t* a, const float* sa, int64_t m0,
                                          int64_t m_end, int64_t K, const uint8_t* w,
                                          const float* sw_row, int64_t n0, int64_t N,
                                          float (&total)[4][4]) {
  __shared__ float As[kBK][kBM + 1];  // +1: the transposed stores hit distinct banks
  __shared__ float Ws[kBK][kBN + 1];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t k_blocks = (K + kTile - 1) / kTile;
  float partial[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) total[i][j] = 0.0f;
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
        As[kk][r] = (m < m_end && k < k_end) ? decode_e4m3(a[m * K + k]) : 0.0f;
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
      const float sam = m < m_end ? sa[m * k_blocks + kb] : 0.0f;
      for (int j = 0; j < 4; ++j) total[i][j] += partial[i][j] * sam * swb;
    }
  }
}

}  // namespace dseek::ops::cuda::fp8
