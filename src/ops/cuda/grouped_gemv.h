// grouped_linear's forward for few rows per expert (decode), see grouped_gemv.cu. Raw device
// pointers as in cuda_ops.h; grouped_linear (moe.cu) picks it by grouped_gemv_takes.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

// Up to this many rows per expert on average, the weight-streaming kernel beats the tiled GEMM
// (it reads each expert's weights once per 8 of its rows; a decode step routes a few tokens).
constexpr int64_t kGemvRowsPerExpert = 8;

// Whether grouped_linear's forward over N rows and E experts takes grouped_gemv.
bool grouped_gemv_takes(int64_t N, int64_t E);

// y[r] = x[r] · W_eᵀ for the rows r of each expert e (offsets on the device), as grouped_linear;
// N rows in all.
void grouped_gemv(const void* x, const int64_t* offsets, int64_t E, int64_t N, int64_t in,
                  const void* const* w, int64_t ldw, int64_t out, void* y, DType act);

// grouped_linear_swiglu's forward (ops/moe.h): the rows of h = silu_mul(gate, up) computed as the
// kernel reads them out of the [N, 2I] stacked gate_up product gu (gemv_dot.cuh's SwigluRows):
// bf16, few rows per expert (grouped_gemv_takes), I and ldw multiples of 8, gu 16-byte aligned (the
// expert matrices' 16-byte alignment is the caller's: expert_matrices allocations are).
bool grouped_gemv_swiglu_takes(int64_t N, int64_t E, const void* gu, int64_t I, int64_t ldw,
                               DType act);
void grouped_gemv_swiglu(const void* gu, const int64_t* offsets, int64_t E, int64_t N, int64_t I,
                         const void* const* w, int64_t ldw, int64_t out, void* y);

// The decode forms, on by default: experts with one row (a batch-1 decode step) take gemv_dot.cuh's
// dot with several loads in flight, and grouped_gemv_swiglu applies. Off, experts of one row run
// the chunk loop like the others and grouped_linear_swiglu runs silu_mul and grouped_linear: for
// comparisons.
void set_grouped_gemv_streaming(bool on);

}  // namespace dseek::ops::cuda
