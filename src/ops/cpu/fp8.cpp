// FP8 quantisation and the block-scaled FP8 GEMM on the CPU: the reference the CUDA kernels are
// compared with (maths and edge cases in ops/fp8.h). Conversions are core/dtype.h's
// f32_to_fp8_e4m3 (round to nearest even, saturating) and a 256-entry decode table.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "ops/cpu/fp8_cpu.h"
#include "ops/cuda/fp8_scale.h"

namespace dseek::ops::cpu {
namespace {

constexpr int64_t kTile = 128;

const std::array<float, 256>& decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int v = 0; v < 256; ++v) t[size_t(v)] = fp8_e4m3_to_f32(uint8_t(v));
    return t;
  }();
  return table;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t quantize_fp8(const float* x, int64_t rows, int64_t cols, int64_t tile_rows, bool pow2,
                     uint8_t* q, float* scale) {
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!std::isfinite(x[i])) return i;
  const int64_t tr = ceil_div(rows, tile_rows), tc = ceil_div(cols, kTile);
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
  for (int64_t t = 0; t < tr * tc; ++t) {
    const int64_t r0 = (t / tc) * tile_rows, r1 = std::min(rows, r0 + tile_rows);
    const int64_t c0 = (t % tc) * kTile, c1 = std::min(cols, c0 + kTile);
    float amax = 0.0f;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
    const float s = fp8_tile_scale(amax, pow2);
    scale[t] = s;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) q[r * cols + c] = f32_to_fp8_e4m3(x[r * cols + c] / s);
  }
  return -1;
}

void dequantize_fp8(const uint8_t* q, const float* scale, int64_t rows, int64_t cols,
                    int64_t tile_rows, float* y) {
  const auto& table = decode_table();
  const int64_t tc = ceil_div(cols, kTile);
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const float* srow = scale + (r / tile_rows) * tc;
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = table[q[r * cols + c]] * srow[c / kTile];
  }
}

void fp8_gemm(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
              const float* sw, int64_t N, float* y) {
  const auto& table = decode_table();
  const int64_t kb = ceil_div(K, kTile), nb = ceil_div(N, kTile);
  // One 128-row block of W at a time is decoded (never the whole weight); the M rows of a are
  // decoded once up front (activations are small next to weights).
  std::vector<float> ad(size_t(M * K));
  for (int64_t i = 0; i < M * K; ++i) ad[size_t(i)] = table[a[i]];
#pragma omp parallel
  {
    std::vector<float> wd(size_t(kTile * K));
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t n0 = b * kTile, n1 = std::min(N, n0 + kTile);
      for (int64_t i = 0; i < (n1 - n0) * K; ++i) wd[size_t(i)] = table[w[n0 * K + i]];
      const float* swb = sw + b * kb;
      for (int64_t m = 0; m < M; ++m) {
        const float* am = ad.data() + m * K;
        const float* sam = sa + m * kb;
        for (int64_t n = n0; n < n1; ++n) {
          const float* wn = wd.data() + (n - n0) * K;
          float total = 0.0f;
          for (int64_t k = 0; k < kb; ++k) {
            const int64_t k0 = k * kTile, k1 = std::min(K, k0 + kTile);
            float partial = 0.0f;
            for (int64_t i = k0; i < k1; ++i) partial += am[i] * wn[i];
            total += partial * sam[k] * swb[k];
          }
          y[m * N + n] = total;
        }
      }
    }
  }
}

}  // namespace dseek::ops::cpu
