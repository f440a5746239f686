// Raw-pointer CPU kernels behind the ops in src/ops/*.h. They know nothing of Tensor: the op
// headers check shapes and dtypes and call these. Each is defined in src/ops/cpu/<op>.cpp with its
// maths in the file's header comment.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cpu {

// OpenBLAS's own (pthread) workers would fight the OpenMP team for the same cores: every kernel
// that calls sgemm from inside an OpenMP team calls this first (once per process).
void use_single_threaded_blas();

// y[t, o] = sum_i x[t, i] * w[o * ldw + i], for t < T, o < out. w in F32, BF16 or F16.
void linear_gemv(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y);
void linear_gemm(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y);

// Backward of linear (f32, contiguous, W rows ldw apart). beta 0 overwrites, 1 accumulates.
//   dx[t, i] (+)= Σ_o dy[t, o] W[o, i];  dw[o, i] (+)= Σ_t dy[t, o] x[t, i] (dw f32, ld = in).
void linear_backward_dx(const float* dy, int64_t T, int64_t out, const void* w, DType w_dtype,
                        int64_t ldw, int64_t in, float* dx, float beta);
void linear_backward_dw(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                        float* dw, float beta);

// out[i] = silu(gate[i]) * up[i].
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
// dgate[i] = dout·up·σ(g)(1 + g(1 − σ(g))),  dup[i] = dout·silu(g).
void silu_mul_backward(const float* gate, const float* up, const float* dout, float* dgate,
                       float* dup, int64_t n);

}  // namespace dseek::ops::cpu

namespace dseek::ops::cpu {

// y[r, :] = w ⊙ x[r, :] / sqrt(mean(x[r, :]²) + eps), w already in f32.
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps);
// With r = (mean(x²) + eps)^(-1/2) and g = w ⊙ dy per row:
//   dx = r·g − (r³/D)·(g·x)·x  (overwritten);  dw (+)= Σ_rows dy ⊙ x·r  (dw may be null;
//   dw_beta 0 overwrites, 1 accumulates).
void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                       int64_t rows, int64_t D, float eps, float dw_beta);

// In place, each of `rows` rows of length n (row stride ld).
void softmax_rows(float* x, int64_t rows, int64_t n, int64_t ld);
// dx = y ⊙ (dy − Σ_j y_j dy_j) per row, all contiguous rows of n.
void softmax_backward_rows(const float* y, const float* dy, float* dx, int64_t rows, int64_t n);

inline constexpr int64_t kMaxRopeDim = 1024;
// Rotates one row of d values in place with cos/sin of d/2 entries (see ops/rope.h).
void rope_row(float* x, int64_t d, const float* cos, const float* sin, bool interleaved);
// The transpose of rope_row, in place: turns dy (de-interleaved layout) into dx (input layout).
void rope_row_backward(float* x, int64_t d, const float* cos, const float* sin, bool interleaved);

// cross_entropy (see ops/cross_entropy.h): logits rows ld apart. Forward writes lse[T] and the
// sum and count of the non-ignored per-row losses; backward writes dlogits (row stride ld_out; it
// may alias logits) = scale·(softmax − onehot), 0 on ignored rows; with row_weights (nullable)
// row t's gradient is scaled by row_weights[t] as well.
void cross_entropy_forward(const float* logits, int64_t T, int64_t V, int64_t ld,
                           const int32_t* targets, int32_t ignore_index, float* lse,
                           double* loss_sum, int64_t* count);
void cross_entropy_backward(const float* logits, int64_t T, int64_t V, int64_t ld,
                            const int32_t* targets, int32_t ignore_index, const float* lse,
                            float scale, float* dlogits, int64_t ld_out,
                            const float* row_weights = nullptr);

struct AttentionArgs {
  const float* q;
  int64_t q_t, q_h;  // strides (elements)
  const float* k;
  int64_t k_s, k_h;
  const float* v;
  int64_t v_s, v_h;
  float* out;  // [T, H, dv] contiguous
  int64_t T, S, H, Hk, dk, dv;
  float scale;
};
void causal_attention(const AttentionArgs& a);
// Gradients of causal_attention for dout [T, H, dv] (contiguous): dq [T, H, dk], dk [S, Hk, dk],
// dv [S, Hk, dv], all contiguous and overwritten. Probabilities are recomputed.
struct AttentionGradArgs {
  AttentionArgs fwd;  // fwd.out unused
  const float* dout;
  float* dq;
  float* dk;
  float* dv;
};
void causal_attention_backward(const AttentionGradArgs& a);

}  // namespace dseek::ops::cpu

namespace dseek::ops::cpu {

// paged_attention (see ops/paged_attention.h). Sequence i owns q rows q_start[i] .. q_start[i+1]
// (q_start has n_seqs + 1 entries), its first query sits at position pos0[i], and its page table
// is page_table[page_start[i] ..]. Key head hk of pool row r starts at k + r·k_row + hk·dk.
struct PagedAttentionArgs {
  const float* q;
  int64_t q_t, q_h;  // strides (elements)
  const float* k;
  int64_t k_row;
  const float* v;
  int64_t v_row;
  float* out;  // [ΣT, H, dv] contiguous
  int64_t H, Hk, dk, dv, page_tokens;
  float scale;
  int64_t n_seqs;
  const int64_t* q_start;
  const int64_t* pos0;
  const int32_t* page_table;
  const int64_t* page_start;
};
void paged_attention(const PagedAttentionArgs& a);

}  // namespace dseek::ops::cpu
