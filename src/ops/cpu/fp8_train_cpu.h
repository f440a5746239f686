// Raw-pointer CPU kernels of ops/fp8_train.h: column tiles (128 consecutive rows of one column,
// restarting at each group start of `offsets` [G + 1]). Row-major contiguous arrays; scales f32
// [floor(rows/128) + G, cols], tile j of group g at scale row floor(offsets[g]/128) + g + j.
#pragma once

#include <cstdint>

namespace dseek::ops::cpu {

// Codes and scales of x [rows, cols]; rows outside every group get code 0, unused scale rows 0.
// Returns the flat index of the first non-finite element inside a group (nothing meaningful is
// written then), or -1.
int64_t quantize_fp8_cols(const float* x, int64_t rows, int64_t cols, const int64_t* offsets,
                          int64_t groups, uint8_t* q, float* scale);
// y = q · s (f32); rows outside every group are 0.
void dequantize_fp8_cols(const uint8_t* q, const float* scale, int64_t rows, int64_t cols,
                         const int64_t* offsets, int64_t groups, float* y);

}  // namespace dseek::ops::cpu
