// FP8 (E4M3) with fine-grained scales, as DeepSeek-V3 trains and ships its linear layers
// (DeepSeek-V3 technical report §3.3; inference/kernel.py of its repository):
//   - activations: one f32 scale per 1×128 tile along the last dimension (per token, per 128
//     channels): x[r, c] ≈ q[r, c] · s[r, c/128];
//   - weights: one f32 scale per 128×128 block: W[n, k] ≈ q[n, k] · s[n/128, k/128]; a checkpoint's
//     `weight_scale_inv` is exactly this s (dequantised w = fp8 · scale_inv).
// A tile's scale is s = amax/448 (448 = E4M3's largest finite value), so the tile's largest
// magnitude maps to ±448, and q = e4m3(x / s) (round to nearest even, saturating at ±448). With
// `pow2_scale` s is rounded up to a power of two (exact scaling: x / s only shifts exponents).
// Edge cases, defined the same on both devices:
//   - an all-zero tile gets s = 1 (its codes are 0 whatever s is; 1 keeps s·q well defined);
//   - a tile whose amax/448 is below FLT_MIN gets s = FLT_MIN (2^-126), so x / s stays finite and
//     the scale is a normal number (such tiles keep few significant bits: they are ~0 anyway);
//   - a NaN or ±Inf input is an error naming the tensor (CUDA: a flag set by the kernel and read
//     after it, so quantize_fp8 synchronises the stream — or, inside a DeferredFp8Checks scope,
//     read with all the scope's others at its check(): ops/fp8_nan_check.h).
// The scale tensors are f32 [rows, ceil(cols/128)] (tiles) or [ceil(rows/128), ceil(cols/128)]
// (blocks); ragged edges form smaller tiles with their own amax.
//
// fp8_gemm: y[m, n] = Σ_b s_a[m, b] · s_w[n/128, b] · (Σ_{k in k-block b} q_a[m, k] · q_w[n, k])
// for x [M, K] in 1×128 tiles and W [N, K] in 128×128 blocks: the sum over each 128-wide k-block
// is accumulated in f32 from exact products (an E4M3×E4M3 product has at most 8 significant bits)
// and then scaled and promoted into an f32 total. That models V3's recipe of promoting the tensor
// core's partial sums into f32 registers every 128 elements of K, with the dequantisation scales
// applied at promotion; the CPU twin sums each block in order, the CUDA kernel in another order.
#pragma once

#include <string_view>

#include "core/tensor.h"

namespace dseek::ops {

inline constexpr int64_t kFp8Tile = 128;  // tile width (and block height for weights)
inline constexpr float kFp8E4M3Max = 448.0f;

enum class Fp8Layout : uint8_t {
  Tile1x128,    // activations: one scale per row and 128 columns
  Block128x128  // weights: one scale per 128×128 block
};

struct Fp8Tensor {
  Tensor data;   // F8_E4M3 [rows, cols], contiguous
  Tensor scale;  // F32, see the header comment for its shape
  Fp8Layout layout = Fp8Layout::Tile1x128;
};

// The scale tensor's shape for a [rows, cols] tensor in `layout`.
Shape fp8_scale_shape(int64_t rows, int64_t cols, Fp8Layout layout);

// Quantises x (2-D [rows, cols]; Tile1x128 also takes [..., cols] and flattens the leading
// dimensions) on x's device: CPU x is f32, CUDA x f32 or bf16. `name` appears in errors.
Fp8Tensor quantize_fp8(const Tensor& x, Fp8Layout layout, bool pow2_scale, std::string_view name);

// x ≈ q · s as f32 on the CPU, in `out` (f32 or bf16) on the GPU; shape [rows, cols].
Tensor dequantize_fp8(const Fp8Tensor& q, DType out = DType::F32);

// Which GPU kernel fp8_gemm runs: Best takes cuBLASLt's block-scaled FP8 GEMM on Hopper where it
// applies (ops/cuda/fp8_cublaslt.cpp: K and N multiples of 128, M of 4, no bias, ...), else the
// wgmma kernel of ops/cuda/fp8_wgmma_kernels.cuh on Hopper (K and N multiples of 16, no bias),
// else the plain kernel; Own the same without cuBLASLt; Plain always the plain kernel (the
// reference the backend tests hold the tensor-core paths to).
enum class Fp8GemmKernel : uint8_t { Best, Own, Plain };

// y [M, N] = a · wᵀ from a (Tile1x128, [M, K]) and w (Block128x128, [N, K]), plus bias [N] (f32,
// bf16 or f16) when given. y is f32 on the CPU, `out` (f32 or bf16) on the GPU. On the GPU `into`
// (contiguous, M·N elements of `out`) receives y instead of a new tensor, and is returned.
Tensor fp8_gemm(const Fp8Tensor& a, const Fp8Tensor& w, const Tensor* bias = nullptr,
                DType out = DType::F32, Fp8GemmKernel kernel = Fp8GemmKernel::Best,
                Tensor* into = nullptr);

// linear with a block-scaled FP8 weight, as a DeepSeek-V3 checkpoint stores it: W F8_E4M3
// [out, in] and scale_inv F32 [ceil(out/128), ceil(in/128)]. x [..., in] (f32; bf16 too on the
// GPU) is quantised per 1×128 tile (amax/448 scales) and multiplied by fp8_gemm; returns
// y [..., out] in x's dtype. W is never dequantised in memory.
Tensor linear_fp8(const Tensor& x, const Tensor& weight, const Tensor& scale_inv,
                  const Tensor* bias = nullptr);

}  // namespace dseek::ops
