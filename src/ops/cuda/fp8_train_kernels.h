// Raw-pointer CUDA kernels of ops/fp8_train.h (FP8 training: column tiles, transposed weight
// blocks, grouped FP8 GEMMs). Row-major contiguous device arrays; offsets are i64 [groups + 1] on
// the device (read there: no host synchronisation). Launches go on dseek::cuda::stream().
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

// Column tiles of x [rows, cols] (act f32 or bf16), bit-identical to cpu::quantize_fp8_cols: q
// [rows, cols] (0 outside every group), scale [rows/128 + groups, cols] (0 in unused rows). A
// non-finite x inside a group sets *bad (a device int the caller zeroed) to 1.
void quantize_fp8_cols(const void* x, DType act, int64_t rows, int64_t cols,
                       const int64_t* offsets, int64_t groups, uint8_t* q, float* scale, int* bad);

// The column tiles of quantize_fp8_cols transposed for the wgmma wgrad, in one pass: qt [cols, P]
// (P = 128·(rows/128 + groups); column c's tile in slot j at qt[c·P + 128·j …], zeros past its
// rows and in unused slots), scale as quantize_fp8_cols's. The source is x [rows, cols] (act f32
// or bf16), or x̂ = codes q_rows [rows, cols] times their 1×128 row-tile scales s_rows [rows,
// ceil(cols/128)] (fp8_col_tiles_t_from_rows). bad: as quantize_fp8_cols (may be null for x̂).
void fp8_col_tiles_t(const void* x, DType act, int64_t rows, int64_t cols, const int64_t* offsets,
                     int64_t groups, uint8_t* qt, float* scale, int* bad);
void fp8_col_tiles_t_from_rows(const uint8_t* q_rows, const float* s_rows, int64_t rows,
                               int64_t cols, const int64_t* offsets, int64_t groups, uint8_t* qt,
                               float* scale, int* bad);

// E matrices of codes [E, R, C] in 128×128 blocks (scales [E, ceil(R/128), ceil(C/128)]) to their
// transposes [E, C, R] (scales [E, ceil(C/128), ceil(R/128)]): exactly W's blocks re-quantised in
// the transposed orientation.
void fp8_transpose_blocks(const uint8_t* q, const float* scale, int64_t E, int64_t R, int64_t C,
                          uint8_t* qt, float* scale_t);

// Grouped block-scaled GEMM: for the rows r of group e, y[r, n] (in `out`, f32 or bf16) =
// Σ_b sa[r, b]·sw_e[n/128, b]·(Σ_{k in b} a[r, k]·w_e[n, k]), with a [M, K] in 1×128 tiles and
// w stacked [E, N, K] in 128×128 blocks (sw [E, ceil(N/128), ceil(K/128)]). Rows past
// offsets[E] are not written.
void fp8_grouped_gemm(const uint8_t* a, const float* sa, int64_t M, int64_t K,
                      const int64_t* offsets, int64_t E, const uint8_t* w, const float* sw,
                      int64_t N, void* y, DType out);

// Grouped weight gradient from column tiles: dw[e] [N, K] (f32, contiguous; beta 0 overwrites,
// 1 adds) += Σ over the column tiles j of group e of sdy[j, n]·sx[j, k]·Σ_{t in j} dy[t, n]·x[t, k]
// with dy [rows, N] and x [rows, K] in column tiles (scales [rows/128 + E, N] and [.., K]); the
// offsets bound every group's rows. `squares` (nullable, f64 on the device) gets Σ v² over every
// written dW (cuda_ops.h's grouped_linear_backward_dw).
void fp8_grouped_wgrad(const uint8_t* dy, const float* sdy, const uint8_t* x, const float* sx,
                       int64_t rows, int64_t N, int64_t K, const int64_t* offsets, int64_t E,
                       float* const* dw, float beta, double* squares = nullptr);

// fp8_grouped_wgrad on column tiles already transposed by fp8_col_tiles_t (dyt [N, P], xt [K, P]);
// only where fp8_wgmma_takes(K, N).
void fp8_grouped_wgrad_t(const uint8_t* dyt, const float* sdy, const uint8_t* xt, const float* sx,
                         int64_t rows, int64_t N, int64_t K, const int64_t* offsets, int64_t E,
                         float* const* dw, float beta, double* squares = nullptr);

// The dense block-scaled GEMM of ops::fp8_gemm (a [M, K] in 1×128 tiles, w [N, K] in 128×128
// blocks, y [M, N] f32 or bf16, no bias) on the wgmma kernel; only where fp8_wgmma_takes(K, N).
void fp8_gemm_wgmma(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
                    const float* sw, int64_t N, void* y, DType out);

// Whether fp8_grouped_gemm (reduction K, output width N) and fp8_grouped_wgrad (dW [N, K]) run on
// the wgmma kernels of fp8_wgmma_kernels.cuh here: grouped_gemm_wgmma() (a Hopper with sm_90a
// code, DSEEK_GROUPED_GEMM not "mma") and K, N multiples of 16; else the CUDA-core kernels.
bool fp8_wgmma_takes(int64_t K, int64_t N);

// Which wgmma kernels the FP8 GEMMs run — the warp-specialised ones whose tiles the tensor memory
// accelerator loads (fp8_tma_kernels.cuh: the row GEMMs of fp8_grouped_gemm and fp8_gemm_wgmma,
// and the wgrad of fp8_grouped_wgrad(_t); the default, where the operands' addresses suit tensor
// maps) or the ones loading through cp.async (fp8_wgmma_kernels.cuh) — is grouped_gemm_tc.h's
// tma_loads(). The two give the same values.

}  // namespace dseek::ops::cuda
