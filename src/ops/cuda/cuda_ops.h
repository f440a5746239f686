// Raw-pointer CUDA kernels behind the ops in src/ops/*.h: the twins of src/ops/cpu/cpu_ops.h.
// Like those, they know nothing of Tensor: the op (src/ops/<op>.cpp) checks shapes, dtypes and
// devices once for both backends, then calls cpu:: or cuda::. All pointers are device pointers,
// all launches go on dseek::cuda::stream() (core/cuda.h) and none synchronises unless it says so.
// This header has no CUDA types, so ops/*.cpp include it in every build; the definitions live in
// src/ops/cuda/<op>.cu and exist only when dseek is built with -DDSEEK_CUDA=ON (the ops call them
// under `#ifdef DSEEK_HAS_CUDA`).
//
// Activations on the GPU are f32 or bf16 (`act`); every kernel reads them as given, computes in
// f32 (sums and dot products accumulate in f32) and writes its outputs in `act` unless the
// comment says otherwise. Gradients of parameters are f32 (master weights are f32). Weights are
// read in their stored dtype (f32, bf16 or f16; `w_dtype`).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

// ---- norm.cu ---------------------------------------------------------------------------------
// y[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps) for rows of D (contiguous).
void rms_norm(const void* x, const void* w, DType w_dtype, void* y, int64_t rows, int64_t D,
              float eps, DType act);
// h += x (rounded to act), then y = rms_norm(h): one block a row, the same reduction as rms_norm.
void add_rms_norm(void* h, const void* x, const void* w, DType w_dtype, void* y, int64_t rows,
                  int64_t D, float eps, DType act);
// dx = r·g − (r³/D)·(g·x)·x with g = w ⊙ dy (dx in act, overwritten); dw (f32, nullable)
// (+)= Σ_rows dy ⊙ x·r, dw_beta 0 overwrites, 1 accumulates. Deterministic (no float atomics).
void rms_norm_backward(const void* x, const void* w, DType w_dtype, const void* dy, void* dx,
                       float* dw, int64_t rows, int64_t D, float eps, float dw_beta, DType act);

// ---- activation.cu ---------------------------------------------------------------------------
void silu_mul(const void* gate, const void* up, void* out, int64_t n, DType act);
// The same over [rows, cols] views whose rows start ld elements apart (out contiguous).
void silu_mul_rows(const void* gate, const void* up, int64_t ld, void* out, int64_t rows,
                   int64_t cols, DType act);
void silu_mul_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup,
                       int64_t n, DType act);
// y += x elementwise (n elements): residual connections and gradient sums.
void add_inplace(void* y, const void* x, int64_t n, DType act);

// ---- softmax.cu ------------------------------------------------------------------------------
// In place over `rows` rows of n (row stride ld).
void softmax_rows(void* x, int64_t rows, int64_t n, int64_t ld, DType act);
void softmax_backward_rows(const void* y, const void* dy, void* dx, int64_t rows, int64_t n,
                           DType act);

// ---- rope.cu ---------------------------------------------------------------------------------
// x [T, H, d] with strides (x_t, x_h) in elements, last dimension contiguous; token t at position
// positions[t] (device, T entries) or, with positions null, pos0 + t; inv_freq [d/2] f32 on the
// device. Same maths and layout as cpu::rope_row (ops/rope.h).
void rope(void* x, int64_t T, int64_t H, int64_t d, int64_t x_t, int64_t x_h, int64_t pos0,
          const int64_t* positions, const float* inv_freq, float scaling, bool interleaved,
          DType act);
void rope_backward(void* dy, int64_t T, int64_t H, int64_t d, int64_t x_t, int64_t x_h,
                   int64_t pos0, const int64_t* positions, const float* inv_freq, float scaling,
                   bool interleaved, DType act);
// dst = rope(src) at positions: both [T, H, d] with their own strides (elements), the same dtype.
void rope_copy(const void* src, int64_t s_t, int64_t s_h, void* dst, int64_t d_t, int64_t d_h,
               int64_t T, int64_t H, int64_t d, const int64_t* positions, const float* inv_freq,
               float scaling, bool interleaved, DType act);

// ---- mla_cache.cu ----------------------------------------------------------------------------
// ops::mla_cache_append on the GPU (ops/mla_cache.h): kv_a [T, r + d] (row stride kv_t, act),
// weight [r] (w_dtype), rows [R, r + d] (row stride rows_t, rows_dtype f32 or bf16), positions and
// slots i64 [T] on the device, inv_freq [d/2] f32 on the device.
void mla_cache_append(const void* kv_a, int64_t kv_t, const void* weight, DType w_dtype, float eps,
                      const int64_t* positions, const float* inv_freq, float scaling,
                      bool interleaved, void* rows, int64_t rows_t, DType rows_dtype,
                      const int64_t* slots, int64_t T, int64_t r, int64_t d, DType act);

// ---- rows.cu ---------------------------------------------------------------------------------
// dst row rows[i] (byte stride dst_stride_bytes) = src row i (contiguous rows of row_bytes);
// rows on the device, in range and distinct (checked by the caller).
void scatter_rows(void* dst, size_t dst_stride_bytes, const void* src, const int64_t* rows,
                  int64_t N, size_t row_bytes);

// ---- argmax.cu -------------------------------------------------------------------------------
// out[r] = ops::argmax_rows's index for row r of x (dtype f32 or bf16, rows ld elements apart);
// nan_rows[r · nan_stride], where not null, 1 if the row holds a NaN, else 0.
void argmax_rows(const void* x, DType dtype, int64_t ld, int64_t R, int64_t V, int32_t* out,
                 int32_t* nan_rows, int64_t nan_stride);

// ---- embedding.cu ----------------------------------------------------------------------------
// out[t] = table[ids[t]] (table rows contiguous, any float dtype incl. fp8 e4m3). ids are on the
// device and already checked to lie in [0, V) by the op.
void embedding(const void* table, DType table_dtype, const int32_t* ids, int64_t T, int64_t D,
               void* out, DType act);
// dtable[ids[t]] += dy[t] (dtable f32 [V, D]). Deterministic: rows are grouped by id on the
// device, not scattered with float atomics. row_flags (U8 [V]), where given: each id's set to 1.
void embedding_backward(const int32_t* ids, int64_t T, int64_t D, const void* dy, DType act,
                        float* dtable, int64_t V, uint8_t* row_flags = nullptr);

// ---- linear.cpp (cuBLASLt) -------------------------------------------------------------------
// y[T, out] = x[T, in] · W[out, in]ᵀ (+ bias[out]), W rows ldw apart. x, y in act; W in act (bf16
// GEMM with f32 accumulation, or f32 GEMM); bias (nullable) in bias_dtype. f32 accumulation.
void linear(const void* x, int64_t T, int64_t in, const void* w, int64_t ldw, int64_t out,
            const void* bias, DType bias_dtype, void* y, DType act);
// dx[T, in] (+)= dy·W (in act; beta 0 or 1);  dw[out, in] (+)= dyᵀ·x (dw_dtype f32, or bf16:
// the f32 sum rounded, before the old value is added when beta is 1; ld = in; beta 0 or 1);
// dbias[out] (+)= Σ_t dy[t] (f32, nullable).
void linear_backward_dx(const void* dy, int64_t T, int64_t out, const void* w, int64_t ldw,
                        int64_t in, void* dx, float beta, DType act);
void linear_backward_dw(const void* dy, const void* x, int64_t T, int64_t out, int64_t in, void* dw,
                        float beta, DType act, DType dw_dtype = DType::F32);
void linear_backward_dbias(const void* dy, int64_t T, int64_t out, float* dbias, float beta,
                           DType act);
// y[i] = act(y[i] + x[i]) for n elements, x f32, one rounding (linear_kernels.cu): how
// linear_backward_dx accumulates into a bf16 dx.
void linear_accumulate(void* y, const float* x, int64_t n, DType act);

// ---- cross_entropy.cu ------------------------------------------------------------------------
// logits [T, V] rows ld apart (act). Writes lse[T] (f32) and, on the device, loss_sum[0] (f64:
// Σ over counted rows of lse − logit[target]) and count[0] (i64). Targets on the device.
void cross_entropy_forward(const void* logits, int64_t T, int64_t V, int64_t ld,
                           const int32_t* targets, int32_t ignore_index, float* lse,
                           double* loss_sum, int64_t* count, DType act);
// dlogits (row stride ld_out, may alias logits, act) = scale·row_weight·(softmax − onehot), 0 on
// ignored rows; row_weights (f32 [T], device, nullable).
void cross_entropy_backward(const void* logits, int64_t T, int64_t V, int64_t ld,
                            const int32_t* targets, int32_t ignore_index, const float* lse,
                            float scale, void* dlogits, int64_t ld_out, const float* row_weights,
                            DType act);
// loss_sum[0] (f64, device) = Σ over counted rows of row_weights[t]·(lse[t] − logit[target]):
// the per-token weighted loss (ops/cross_entropy.h) from a forward's lse; row_weights f32 [T].
void cross_entropy_weighted_loss(const void* logits, int64_t T, int64_t ld, const int32_t* targets,
                                 int32_t ignore_index, const float* lse, const float* row_weights,
                                 double* loss_sum, DType act);

// ---- attention.cu ----------------------------------------------------------------------------
// Causal attention of one sequence, flash-style (online softmax, no [T, S] matrix in memory):
// the same arguments and maths as cpu::AttentionArgs (strides in elements), pointers on the
// device, q/k/v/out in act.
struct AttentionArgs {
  const void* q;
  int64_t q_t, q_h;
  const void* k;
  int64_t k_s, k_h;
  const void* v;
  int64_t v_s, v_h;
  void* out;  // [T, H, dv] contiguous
  int64_t T, S, H, Hk, dk, dv;
  float scale;
  // Packed sequences (ops::causal_attention_packed): seq_count > 0 host lengths summing to
  // T == S, each sequence attending only within itself. Only the tensor-core path takes them
  // (causal_attention_saves_stats); the others refuse them.
  const int64_t* seq_lengths = nullptr;
  int64_t seq_count = 0;
};
// lse2 (f32 [T, H], or null): each row's m + log2 l as well, where the forward's path keeps it
// (causal_attention_saves_stats: the tensor-core kernels; elsewhere lse2 is left alone).
void causal_attention(const AttentionArgs& a, DType act, float* lse2 = nullptr);
bool causal_attention_saves_stats(const AttentionArgs& a, DType act);
// dq [T, H, dk], dk [S, Hk, dk], dv [S, Hk, dv] contiguous, overwritten (act); dout [T, H, dv].
struct AttentionGradArgs {
  AttentionArgs fwd;
  const void* dout;
  void* dq;
  void* dk;
  void* dv;
};
// out (act [T, H, dv] contiguous) and lse2: the forward's (ops::AttentionSaved), or null; used
// where the tensor-core backward runs, which then skips the forward pass for its row statistics.
void causal_attention_backward(const AttentionGradArgs& a, DType act, const void* out = nullptr,
                               const float* lse2 = nullptr);

// ---- paged_attention.cu ----------------------------------------------------------------------
// As cpu::PagedAttentionArgs; every pointer (including q_start, pos0, page_table, page_start) on
// the device. MLA decode (Hk = 1) reads each latent row once for all heads. total_q = ΣT, max_T =
// max T and max_S = max(pos0 + T) over the sequences (they size the grid and the key splits).
struct PagedAttentionArgs {
  const void* q;
  int64_t q_t, q_h;
  const void* k;
  int64_t k_row;
  const void* v;
  int64_t v_row;
  void* out;
  int64_t H, Hk, dk, dv, page_tokens;
  float scale;
  int64_t n_seqs, total_q, max_T, max_S;
  const int64_t* q_start;
  const int64_t* pos0;
  const int32_t* page_table;
  const int64_t* page_start;
};
void paged_attention(const PagedAttentionArgs& a, DType act);

// ---- moe.cu ----------------------------------------------------------------------------------
// The MoE ops of ops/moe.h (maths there; CPU twins in ops/cpu/moe_cpu.h). No host
// synchronisation: counts and offsets stay on the device and every kernel reads them there.
// Slots s = t·K + k; N = T·K; ids/order/position i32, offsets [E + 1] i64.
struct MoeRouteArgs {
  int64_t experts, top_k;
  bool sigmoid;  // else softmax
  int method;    // ops::MoeTopK: 0 greedy, 1 group_limited_greedy, 2 noaux_tc
  int64_t n_group, topk_group;
  bool normalise, scale;
  float routed_scaling_factor;
};
// logits [T, E] f32 rows ld apart; bias f32 [E] or nullptr. One warp per token; E ≤ 1024,
// n_group ≤ 32. Writes ids/weights [T, K] and scores [T, E].
void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias, const MoeRouteArgs& a,
               int32_t* ids, float* weights, float* scores);
// ops::moe_route_backward: scores/extra [T, E], ids/dweights [T, K] contiguous, extra nullable;
// writes dz [T, E] f32. One warp per token; ids outside [0, E) are skipped.
void moe_route_backward(const float* scores, const int32_t* ids, const float* dweights,
                        const float* extra, int64_t T, int64_t E, int64_t K, bool sigmoid,
                        bool normalise, float factor, float* dz);
// Stable counting sort of the slots by expert (histogram, scan, then one block per expert
// placing its slots in slot order by prefix counts: deterministic). Ids outside [0, E) are left
// unplaced (their order/position entries stay −1).
void moe_dispatch(const int32_t* ids, int64_t N, int64_t E, int64_t* offsets, int32_t* order,
                  int32_t* position);
// moe_route, moe_dispatch (over a.experts) and moe_permute of x [T, D] in one block, for a decode
// step's few tokens: small_route_fits(T, a) must hold (T ≤ 8, E ≤ 256). The same bits as the three.
bool small_route_fits(int64_t T, const MoeRouteArgs& a);
void small_route(const float* logits, int64_t T, int64_t ld, const float* bias,
                 const MoeRouteArgs& a, int32_t* ids, float* weights, float* scores,
                 int64_t* offsets, int32_t* order, int32_t* position, const void* x, int64_t D,
                 void* x_perm, DType act);
// x_perm[i] = x[order[i] / K] (rows of D, act); a row with order −1 becomes zeros.
void moe_permute(const void* x, const int32_t* order, int64_t N, int64_t K, int64_t D, void* x_perm,
                 DType act);
// dx[t] = Σ_k dx_perm[position[t·K + k]] in k order (−1 positions skipped).
void moe_permute_backward(const void* dx_perm, const int32_t* position, int64_t T, int64_t K,
                          int64_t D, void* dx, DType act);
// Per expert e (rows offsets[e] .. offsets[e+1], read on the device): y = x · W_eᵀ. w: device
// array of E device pointers to [out, in] matrices (rows ldw apart) in act; x [N, in], y
// [N, out] in act. Tiled shared-memory kernel, f32 accumulation; rows past offsets[E] untouched.
// w_maps (nullable): the matrices' tensor maps (grouped_gemm_tc.h's expert_tma_maps), for
// Hopper's TMA kernels.
void grouped_linear(const void* x, const int64_t* offsets, int64_t E, int64_t N, int64_t in,
                    const void* const* w, int64_t ldw, int64_t out, void* y, DType act,
                    const void* w_maps = nullptr);
// dx [N, in] = dy [N, out] · W_e per expert's rows.
void grouped_linear_backward_dx(const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                                int64_t out, const void* const* w, int64_t ldw, int64_t in,
                                void* dx, DType act, const void* w_maps = nullptr);
// dw[e] (f32 [out, in] contiguous; device array of E pointers) (+)= Σ_rows dy[r]ᵀ x[r]; beta 0
// overwrites (zeros for an expert without rows), 1 accumulates. Deterministic. `squares`
// (nullable, f64 on the device) gets Σ v² over every written dW (summed as they are stored where
// the kernel can, else by matrices_sum_of_squares).
// N = offsets[E], the rows of x and dy.
void grouped_linear_backward_dw(const void* x, const void* dy, const int64_t* offsets, int64_t E,
                                int64_t N, int64_t out, int64_t in, float* const* dw, float beta,
                                DType act, double* squares = nullptr);
// out[t] = Σ_k w[t,k]·y_perm[position[t·K+k]] in ascending position (+ add[t], nullable); K ≤ 64.
void moe_combine(const void* y_perm, const float* weights, const int32_t* position, int64_t T,
                 int64_t K, int64_t D, const void* add, void* out, DType act);
// moe_combine, then add_rms_norm(out, residual) with the next layer's norm weight (f32 or bf16
// w_dtype): out = combined + residual, normed = its RMS norm — one block a token, the same bits
// as the two kernels (Block::finish at a MoE layer's end).
void moe_combine_add_rms_norm(const void* y_perm, const float* weights, const int32_t* position,
                              int64_t T, int64_t K, int64_t D, const void* add,
                              const void* residual, const void* norm_weight, DType w_dtype,
                              float eps, void* out, void* normed, DType act);
// dy_perm[i] = w[order[i]]·dout[order[i] / K] (zeros where order is −1);
// dweights[s] = dout[s / K] · y_perm[position[s]] (f32).
void moe_combine_backward(const void* y_perm, const float* weights, const int32_t* order,
                          const int32_t* position, int64_t T, int64_t K, int64_t D,
                          const void* dout, void* dy_perm, float* dweights, DType act);

// ---- grad_rows.cu (ops/grad_rows.h) -------------------------------------------------------
// Rows r of grad [rows, cols] (f32) with flags[r] != 0 set to zero, and their flags to 0.
void zero_flagged_rows(float* grad, uint8_t* flags, int64_t rows, int64_t cols);
// *out = Σ grad² over the rows with flags[r] != 0, in double (a fixed order: deterministic).
void sum_of_squares_flagged_rows(const float* grad, const uint8_t* flags, int64_t rows,
                                 int64_t cols, double* out);

// ---- split_master.cu (ops/split_master.h) ----------------------------------------------------
void split_master(const float* value, uint16_t* high, uint16_t* low, int64_t n);
void join_master(const uint16_t* high, const uint16_t* low, float* value, int64_t n);

// ---- adamw.cu --------------------------------------------------------------------------------
// Multi-tensor launches (ops/adamw.h): one kernel over many f32 tensors through a device table of
// entries, tensor i covering chunks [chunk_begin, chunk_begin + ceil(n / kMultiTensorChunk)) of
// the launch's `chunks`; entries in ascending chunk_begin, n > 0. Pointers an op does not use may
// be null (sum_of_squares and scale read `grad` only).
constexpr int64_t kMultiTensorChunk = 16384;
struct MultiTensorEntry {
  float* value;
  float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t n;
  int64_t chunk_begin;
  int64_t decay;      // 1: the step's decay factor applies, 0: factor 1
  uint16_t* compute;  // AdamW: the bf16 compute copy to re-round from the new value, or nullptr
  // AdamW: flags of the gradient's rows of row_len elements (ops/grad_rows.h; row_len a multiple
  // of 4): a row whose flag is 0 is zero and is not read. nullptr: every row is read.
  const uint8_t* row_flags;
  int64_t row_len;
  // AdamW: the master's low half where it is split (ops/split_master.h): value is then null and
  // the master is (compute, low), read and written as its two halves. nullptr: not split.
  uint16_t* low;
  // 1: `grad` points at bf16 gradients (read as f32, exactly; ParamSet::bf16_expert_grads), 0: f32.
  int64_t grad_bf16;
};
// The AdamW step's f32 scalars (ops::AdamWStep) and the decay factor of decaying tensors.
// grad_scale_at, where given, is a device f32 that replaces grad_scale (the clip factor the
// gradient norm's kernels wrote: the update is queued before the norm is known on the host).
struct AdamWScalars {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bias_correction2_sqrt, eps,
      decay_factor, grad_scale;
  const float* grad_scale_at;
};
// One AdamW step of every entry: value, exp_avg, exp_avg_sq updated in place from grad.
// bf16_moments: exp_avg and exp_avg_sq point at bf16 arrays (ops/adamw.h). short_blocks: a block
// per chunk (ops::adamw_step's short_blocks) instead of a bounded grid looping over them.
// rows: some entry has row_flags (without, the kernel has no code for them). skip_rows (a launch
// of one entry, or null): flags of its rows of skip_row_len elements (a multiple of 4); rows
// flagged 1 are not stepped (adamw_rows steps them: ops::adamw_step_rows).
void adamw_multi_tensor(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                        const AdamWScalars& s, bool bf16_moments = false, bool short_blocks = false,
                        bool rows = false, const uint8_t* skip_rows = nullptr,
                        int64_t skip_row_len = 0);
// The same step of rows rows[0..count) (device i32, in range) of one entry, rows of row_len
// elements (a multiple of 4): each element gets adamw_multi_tensor's bits. grad_rows: the entry
// has row_flags.
void adamw_rows(const MultiTensorEntry* entry, const int32_t* rows, int64_t count, int64_t row_len,
                const AdamWScalars& s, bool bf16_moments, bool grad_rows);
// One AdamW step of a matrix that also writes its FP8 image: W's 128×128 blocks (codes q
// [rows, cols], scales [⌈rows/128⌉, ⌈cols/128⌉]) and, where qt is given, Wᵀ's (qt [cols, rows],
// scale_t transposed) — ops/fp8_train.h's blocks of the updated master, pow2 off. rows and cols
// multiples of 4, value and grad 16-byte aligned, the moments 8 (bf16) or 16 (f32). The matrix
// covers tiles [tile_begin, tile_begin + ⌈rows/128⌉·⌈cols/128⌉) of the launch.
struct AdamWImageEntry {
  float* value;
  float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  uint8_t* q;
  float* scale;
  uint8_t* qt;
  float* scale_t;
  int64_t rows, cols;
  int64_t tile_begin;
  int64_t decay;  // 1: the step's decay factor applies
};
// The step of every entry (fp8.cu); a non-finite updated value sets *bad, and its tile's codes
// are not written.
void adamw_image_multi_tensor(const AdamWImageEntry* entries, int64_t count, int64_t tiles,
                              const AdamWScalars& s, bool bf16_moments, int* bad);
// out[0] (f64, device) = Σ grad² over every entry (per-chunk partials, then a fixed-order sum).
void sum_of_squares_multi_tensor(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                                 double* out);
// Its two halves: partial[c] for the chunks c in [first, last), then out[0] = Σ partial[0 ..
// chunks) in a fixed order (the same bits however the chunks were split between calls and streams).
void sum_of_squares_chunks(const MultiTensorEntry* entries, int64_t count, int64_t first,
                           int64_t last, double* partial);
void sum_partials(const double* partial, int64_t chunks, double* out);
// From a sum of squares on the device: *norm = √sum and *factor = train::clip_factor(norm,
// max_norm) — the same double operations, so the same bits as on the host.
void clip_factor_from_sum(const double* sum, double max_norm, double* norm, float* factor);
// ---- matrix_squares.cu -----------------------------------------------------------------------
// out[0] (f64, device) = Σ v² over the E matrices m[e] (f32 [rows, cols] contiguous; a device
// array of E pointers); the same bits for the same matrices.
void matrices_sum_of_squares(float* const* m, int64_t E, int64_t rows, int64_t cols, double* out);
// Slots for the partial sums of squares a kernel writes (one each, every slot written), added in
// a fixed order into out[0] by finish(): the wgrad kernels that sum the squares of what they store.
class SquarePartials {
 public:
  explicit SquarePartials(int64_t slots);
  ~SquarePartials();
  SquarePartials(const SquarePartials&) = delete;
  SquarePartials& operator=(const SquarePartials&) = delete;
  double* data() const { return data_; }
  void finish(double* out);

 private:
  int64_t slots_;
  double* data_;
};
// grad ← grad · scale for every entry.
void scale_multi_tensor(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                        float scale);
// ---- mla_decode.cu ---------------------------------------------------------------------------
// As cpu::MlaDecodeArgs (ops/cpu/mla_decode_cpu.h), device pointers in act. One block serves 32
// (query, head) rows and reads each latent row once for all of them, as key and as value; long
// caches are split over blocks (flash-decoding) and combined. rank ≤ 512; dk ≤ ~900 (the q rows
// and one tile of latent rows, f32, must fit in a block's shared memory: 256·dk bytes).
// With `positions` (i64 [T] on the device, the queries' positions): kv holds S rows of capacity and
// the keys are rows 0 .. positions[T − 1], a count read on the device (clamped to [T, S]), so
// the launch depends on the capacity only and a CUDA graph can replay it as the cache grows.
struct MlaDecodeArgs {
  const void* q;
  int64_t q_t, q_h;
  const void* kv;
  int64_t kv_s;
  void* out;
  int64_t T, S, H, dk, rank;
  float scale;
  const int64_t* positions;  // null: all S rows are keys
};
void mla_decode(const MlaDecodeArgs& a, DType act);
// mla_decode's output multiplied by w [H, rank, N] (head_matmul into out, rows out_t and heads
// out_h apart) in one launch after the decode kernel, where the tensor-core kernel splits the keys
// and the per-head GEMV takes the product: it joins the splits as it stages its rows (no combine
// kernel; a.out is not written). Returns false, having done nothing, where that does not apply.
bool mla_decode_projected(const MlaDecodeArgs& a, const void* w, void* out, int64_t out_t,
                          int64_t out_h, int64_t N, DType act);
// Whether bf16 DeepSeek-latent shapes take the tensor-core kernel (mla_decode_tc_kernels.cuh; the
// default, unless DSEEK_MLA_DECODE=simt was set when the process started) or the SIMT one: for
// tests and benchmarks comparing the two.
void set_mla_decode_tensor_cores(bool on);
bool mla_decode_tensor_cores();
// out[t, h, :N] = x[t, h, :K] · w[h] (w [H, K, N] contiguous; out's rows out_t apart, its heads
// out_h apart), f32 accumulation, everything in act: a strided-batched cuBLASLt GEMM over the
// heads (in linear.cpp).
void head_matmul(const void* x, int64_t x_t, int64_t x_h, const void* w, void* out, int64_t out_t,
                 int64_t out_h, int64_t T, int64_t H, int64_t K, int64_t N, DType act);

}  // namespace dseek::ops::cuda
