// Raw-pointer CPU kernels of the MoE ops (ops/moe.h has the maths). Contiguous f32 activations;
// ids/order/position i32, offsets i64. The op (src/ops/moe.cpp) has checked shapes and ids.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "ops/moe.h"

namespace dseek::ops::cpu {

// logits [T, E] rows ld apart; bias nullable [E]; writes ids/weights [T, K] and scores [T, E].
void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias,
               const MoeRouteParams& p, int32_t* ids, float* weights, float* scores);

// ops::moe_route_backward on contiguous scores/extra [T, E], ids/dweights [T, K]; extra nullable.
void moe_route_backward(const float* scores, const int32_t* ids, const float* dweights,
                        const float* extra, int64_t T, int64_t E, const MoeRouteParams& p,
                        float* dz);

// Stable counting sort of the N = T·K slots by ids[s] (all in [0, E)).
void moe_dispatch(const int32_t* ids, int64_t N, int64_t E, int64_t* offsets, int32_t* order,
                  int32_t* position);

void moe_permute(const float* x, const int32_t* order, int64_t N, int64_t K, int64_t D,
                 float* x_perm);
void moe_permute_backward(const float* dx_perm, const int32_t* position, int64_t T, int64_t K,
                          int64_t D, float* dx);

// Per expert e: y[offsets[e]..offsets[e+1]) = x[same rows] · W_eᵀ; w[e] in w_dtype, rows ldw
// apart.
void grouped_linear(const float* x, const int64_t* offsets, int64_t E, int64_t in,
                    const void* const* w, DType w_dtype, int64_t ldw, int64_t out, float* y);
void grouped_linear_backward_dx(const float* dy, const int64_t* offsets, int64_t E, int64_t out,
                                const void* const* w, DType w_dtype, int64_t ldw, int64_t in,
                                float* dx);
// dw[e] (f32 [out, in]) (+)= Σ_rows dy[r]ᵀ x[r]; beta 0 overwrites, 1 accumulates.
void grouped_linear_backward_dw(const float* x, const float* dy, const int64_t* offsets, int64_t E,
                                int64_t out, int64_t in, float* const* dw, float beta);

// out[t] = Σ_k (ascending position) w[t,k]·y_perm[position[t·K+k]] (+ add[t]; add nullable).
void moe_combine(const float* y_perm, const float* weights, const int32_t* position, int64_t T,
                 int64_t K, int64_t D, const float* add, float* out);
void moe_combine_backward(const float* y_perm, const float* weights, const int32_t* order,
                          const int32_t* position, int64_t T, int64_t K, int64_t D,
                          const float* dout, float* dy_perm, float* dweights);

}  // namespace dseek::ops::cpu
