// Raw-pointer CPU kernels of the FP8 ops (ops/fp8.h has the maths). Row-major contiguous arrays;
// `tile_rows` is 1 (1×128 activation tiles) or 128 (128×128 weight blocks); scales are f32
// [ceil(rows/tile_rows), ceil(cols/128)].
#pragma once

#include <cstdint>

namespace dseek::ops::cpu {

// Codes and scales of x [rows, cols]. Returns the flat index of the first non-finite element of
// x (nothing is written then), or -1.
int64_t quantize_fp8(const float* x, int64_t rows, int64_t cols, int64_t tile_rows, bool pow2,
                     uint8_t* q, float* scale);
// y = q · s, f32.
void dequantize_fp8(const uint8_t* q, const float* scale, int64_t rows, int64_t cols,
                    int64_t tile_rows, float* y);
// y [M, N] (f32, overwritten) from a [M, K] in 1×128 tiles (sa [M, ceil(K/128)]) and w [N, K] in
// 128×128 blocks (sw [ceil(N/128), ceil(K/128)]): per k-block an in-order f32 sum of exact
// products, then total += partial · sa · sw.
void fp8_gemm(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
              const float* sw, int64_t N, float* y);

}  // namespace dseek::ops::cpu
