// Column-tile FP8 quantisation on the CPU (ops/fp8_train.h has the layout): the reference the
// CUDA kernel matches bit for bit (same scale rule, fp8_scale.h; same round-to-nearest-even
// saturating conversion, core/dtype.h).
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "core/dtype.h"
#include "ops/cpu/fp8_train_cpu.h"
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

// Scale row of tile 0 of group g.
int64_t tile_base(const int64_t* offsets, int64_t g) { return offsets[g] / kTile + g; }

}  // namespace

int64_t quantize_fp8_cols(const float* x, int64_t rows, int64_t cols, const int64_t* offsets,
                          int64_t groups, uint8_t* q, float* scale) {
  std::fill_n(q, rows * cols, uint8_t(0));
  std::fill_n(scale, (rows / kTile + groups) * cols, 0.0f);
  for (int64_t i = offsets[0] * cols; i < offsets[groups] * cols; ++i)
    if (!std::isfinite(x[i])) return i;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = offsets[g], end = offsets[g + 1];
    const int64_t tiles = (end - begin + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if ((end - begin) * cols >= (1 << 16))
    for (int64_t j = 0; j < tiles; ++j) {
      const int64_t r0 = begin + j * kTile, r1 = std::min(end, r0 + kTile);
      float* s = scale + (tile_base(offsets, g) + j) * cols;
      for (int64_t c = 0; c < cols; ++c) {
        float amax = 0.0f;
        for (int64_t r = r0; r < r1; ++r) amax = std::max(amax, std::fabs(x[r * cols + c]));
        s[c] = fp8_tile_scale(amax, false);
      }
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < cols; ++c) q[r * cols + c] = f32_to_fp8_e4m3(x[r * cols + c] / s[c]);
    }
  }
  return -1;
}

void dequantize_fp8_cols(const uint8_t* q, const float* scale, int64_t rows, int64_t cols,
                         const int64_t* offsets, int64_t groups, float* y) {
  const auto& table = decode_table();
  std::fill_n(y, rows * cols, 0.0f);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      const float* s = scale + (tile_base(offsets, g) + (r - offsets[g]) / kTile) * cols;
      for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = table[q[r * cols + c]] * s[c];
    }
  }
}

}  // namespace dseek::ops::cpu
