// Raw-pointer CUDA kernels of the FP8 ops (ops/fp8.h has the maths; ops/cpu/fp8_cpu.h the CPU
// twins). Kept beside cuda_ops.h, in the same style, so the FP8 work stays in its own files.
// Row-major contiguous device arrays; `tile_rows` is 1 (1×128 tiles) or 128 (128×128 blocks);
// scales f32 [ceil(rows/tile_rows), ceil(cols/128)]. Launches go on dseek::cuda::stream().
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

// Codes and scales of x [rows, cols] (act f32 or bf16), bit-identical to cpu::quantize_fp8. A
// non-finite x sets *bad (a device int the caller zeroed) to 1; that tile's outputs are then
// unspecified. Does not synchronise.
void quantize_fp8(const void* x, DType act, int64_t rows, int64_t cols, int64_t tile_rows,
                  bool pow2, uint8_t* q, float* scale, int* bad);
// 1×128 tiles where cols % 8 == 0 take a kernel with more loads in flight (the same codes); off,
// the four-columns-a-lane kernel (for benchmarks: bench_cuda_fp8's quantisation rows).
void set_quantize_fp8_rows_wide(bool wide);
// 128×128 blocks of E matrices in one launch (a stack of expert weights): table [E] device
// pointers to [rows, cols] (act f32 or bf16, contiguous, 16-byte aligned), where rows and cols
// are multiples of 4 (quantize_fp8_stack_takes). Codes q [E, rows, cols] and scales [E,
// ceil(rows/128), ceil(cols/128)] bit-identical to quantize_fp8 of each matrix; where qt is given
// also (q may be null: instead) Wᵀ's blocks, qt [E, cols, rows] and scale_t [E, ceil(cols/128),
// ceil(rows/128)] — the codes and scales transposed, which is Wᵀ quantised blockwise. Non-finite
// values set *bad.
bool quantize_fp8_stack_takes(int64_t rows, int64_t cols);
void quantize_fp8_stack(const void* const* table, DType act, int64_t E, int64_t rows, int64_t cols,
                        bool pow2, uint8_t* q, float* scale, uint8_t* qt, float* scale_t, int* bad);
// y = q · s in `out` (f32 or bf16).
void dequantize_fp8(const uint8_t* q, const float* scale, int64_t rows, int64_t cols,
                    int64_t tile_rows, void* y, DType out);
// y [M, N] (in `out`, f32 or bf16, overwritten) = Σ_b sa[m, b]·sw[n/128, b]·(Σ_{k in b} a·w)
// (+ bias[n], dtype bias_dtype, when bias is not null). a [M, K] in 1×128 tiles, w [N, K] in
// 128×128 blocks. f32 accumulation of each 128-wide k-block, promoted into an f32 total.
void fp8_gemm(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
              const float* sw, int64_t N, const void* bias, DType bias_dtype, void* y, DType out);

// The same product through cuBLASLt's block-scaled FP8 GEMM (Hopper, cuBLAS >= 12.9: A scale mode
// BLK128x128_32F for W, B scale mode VEC128_32F for a; fp8_cublaslt.cpp has the layouts). Returns
// false, having done nothing, when that path does not apply: not an sm_90 device, K or N not a
// multiple of 128, a bias, `out` not f32/bf16, an operand not 256-byte aligned, or no cuBLASLt
// algorithm for the problem; the caller then runs fp8_gemm. Throws on a cuBLASLt error once an
// algorithm was found.
bool fp8_gemm_cublaslt(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
                       const float* sw, int64_t N, const void* bias, void* y, DType out);
// dW [M, N] = beta·dW + dyt[M, :K]·xt[N, :K]ᵀ (f32) with both operands in 1×128 tiles along K
// (row stride ld; scales sdy [K/128, M], sx [K/128, N]), on cuBLASLt's block-scaled FP8 GEMM: the
// dense wgrad of ops/fp8_train.h. Returns false (nothing enqueued) where it does not apply.
bool fp8_wgrad_cublaslt(const uint8_t* dyt, const float* sdy, int64_t M, const uint8_t* xt,
                        const float* sx, int64_t N, int64_t K, int64_t ld, float* dw, float beta);

// Copies a row-major f32 [rows, cols] into `dst` [dst_rows, ld] (zero-padded), transposed when
// `transpose` (then dst_rows >= cols and ld >= rows, else dst_rows >= rows and ld >= cols): the
// scale layouts cuBLASLt's block-scaled GEMM reads.
void fp8_pack_scales(const float* src, int64_t rows, int64_t cols, bool transpose, float* dst,
                     int64_t dst_rows, int64_t ld);

}  // namespace dseek::ops::cuda
