// linear's forward for a few rows (a decode step's dense projections), see gemv.cu. Raw device
// pointers as in cuda_ops.h; linear (linear.cpp) picks it by gemv_takes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

// At most this many rows: each pass of the kernel reads the weight once for all of them.
constexpr int64_t kGemvMaxRows = 8;

// Whether y = x·Wᵀ (+ bias) over T rows takes the weight-streaming kernel instead of cuBLASLt:
// bf16, T ≤ kGemvMaxRows, rows of 8-element multiples on 16-byte boundaries (its vector loads).
// Off (DSEEK_LINEAR_GEMV=0 in the environment, or set_linear_gemv(false)), everything goes to
// cuBLASLt: for comparisons.
bool gemv_takes(int64_t T, int64_t in, const void* x, const void* w, int64_t ldw, DType act);
void set_linear_gemv(bool on);

// y[t, n] = Σ_k x[t, k]·W[n, k] (+ bias[n]) in f32, rounded once to act. bias in act, nullable.
void gemv(const void* x, int64_t T, int64_t in, const void* w, int64_t ldw, int64_t out,
          const void* bias, void* y, DType act);

// linear_swiglu's kernel (ops/linear.h): y = silu_mul(gu[:, :I], gu[:, I:])·Wᵀ (+ bias) for the
// [T, 2I] rows of a stacked gate_up product, h computed as the kernel reads it (the same bits as
// silu_mul, then gemv). Takes what gemv takes with in = I.
bool gemv_swiglu_takes(int64_t T, int64_t I, const void* gu, const void* w, int64_t ldw, DType act);
// h = silu_mul(gate, up) is made once a block in shared memory where its rows·I bf16 fit in
// kSwigluSharedMaxBytes (the default shared memory of a block), else recomputed by each warp as it
// reads it; both the same sums. set_gemv_swiglu_shared(false) keeps the recomputing kernels
// (grouped_gemv_swiglu's too), for benchmarks.
constexpr size_t kSwigluSharedMaxBytes = 48 * 1024;
void set_gemv_swiglu_shared(bool on);
bool gemv_swiglu_shared();
void gemv_swiglu(const void* gu, int64_t T, int64_t I, const void* w, int64_t ldw, int64_t out,
                 const void* bias, void* y, DType act);

// linear_widened's kernel (ops/linear.h): f32 y[t, n] = Σ_k f32(x[t, k])·W[n, k] for bf16 x and
// an f32 W, T ≤ kGemvMaxRows; one block per output, its warps splitting k (a router has few
// outputs, 64 to 256, so one warp per output would leave the GPU idle). Whether it applies:
bool gemv_widened_takes(int64_t T, int64_t in, const void* x, const void* w, int64_t ldw,
                        DType x_dtype);
void gemv_widened(const void* x, int64_t T, int64_t in, const float* w, int64_t ldw, int64_t out,
                  float* y);

// head_matmul's kernel for a decode step (head_gemv.cu): out[t, h, n] = Σ_k x[t, h, k]·w[h, k, n]
// for bf16, T ≤ kHeadGemvMaxRows, N a multiple of 32, w and out 16-byte aligned with out's strides
// multiples of 8, x's rows and K small enough for shared memory (T·K + 2048·T floats ≤ 48 KB).
// Off with the other GEMVs (set_linear_gemv(false)): head_matmul goes to cuBLASLt.
constexpr int64_t kHeadGemvMaxRows = 4;
bool head_gemv_takes(int64_t T, int64_t H, int64_t K, int64_t N, const void* w, const void* out,
                     int64_t out_t, int64_t out_h, DType act);
// A rotation head_gemv can run in the same launch (the absorbed query's q_pe, rotated into q_abs
// beside q_nope·W_UK: one kernel on the decode step's critical path where there were two):
// dst[t, h, :d] = RoPE(src[t, h, :d]) at positions[t], bf16, by an extra block a head, with
// rope_copy's maths (rope.cuh) and roundings: the same bits.
struct HeadGemvRope {
  const void* src = nullptr;
  int64_t s_t = 0, s_h = 0;
  void* dst = nullptr;
  int64_t d_t = 0, d_h = 0;
  int64_t d = 0;  // even
  const int64_t* positions = nullptr;
  const float* inv_freq = nullptr;  // [d / 2] on the device
  float scaling = 1.0f;
  bool interleaved = false;
};
// Rows head_gemv can make as it stages them instead of reading x (MLA's latent output, straight
// from the absorbed decode's key splits: one kernel where the split join and the GEMV were two):
// x[t, h, k] = the join of row t·H + h's splits (split_combine.cuh) rounded to bf16, as
// mla_decode's combine kernel stores it — the same bits. The used splits are recomputed on the
// device from the key count, as the decode kernels do.
struct HeadGemvJoin {
  const float* part_ml = nullptr;   // [n_splits][T·H][2]
  const float* part_acc = nullptr;  // [n_splits][T·H][K]
  int n_splits = 0;
  int64_t tile = 0;                    // keys per tile of the split plan
  const int64_t* positions = nullptr;  // the key count's source (null: all S)
  int64_t S = 0;
};
void head_gemv(const void* x, int64_t x_t, int64_t x_h, const void* w, void* out, int64_t out_t,
               int64_t out_h, int64_t T, int64_t H, int64_t K, int64_t N,
               const HeadGemvRope* rope = nullptr, const HeadGemvJoin* join = nullptr);

// Whether the decode GEMVs are on (set_linear_gemv, DSEEK_LINEAR_GEMV).
bool linear_gemv_enabled();

}  // namespace dseek::ops::cuda
