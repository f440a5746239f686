// MoE ops: routing, dispatch, grouped expert GEMMs and the weighted combine, as device-side ops
// (no host loop over tokens or experts, no host synchronisation on the GPU). They compose into the
// routed half of model/moe.h's MoE::forward:
//
//   r      = moe_route(logits, params)                  ids [T, K], weights [T, K], scores [T, E]
//   d      = moe_dispatch(r.ids, E)                     offsets [E + 1], order, position [T·K]
//   x_perm = moe_permute(x, d)                          [T·K, D]: x_perm[i] = x[order[i] / K]
//   h      = silu_mul(grouped_linear(x_perm, W_gate, d.offsets), grouped_linear(x_perm, W_up, …))
//   y_perm = grouped_linear(h, W_down, d.offsets)       [T·K, D]
//   out    = moe_combine(y_perm, r.weights, d, shared)  [T, D]
//
// moe_route: for each token t (row of logits, f32; the rules of model/gate.h, whose
// route_from_logits runs this op on the CPU):
//   s = softmax(z) | sigmoid(z)                          (scores, returned unbiased)
//   c = s + bias                                         (noaux_tc only; bias steers selection)
//   grouped methods: n_group groups of E / n_group experts; group score = max of c in the group
//     (group_limited_greedy) or the sum of its top-2 c (noaux_tc); the best topk_group groups are
//     kept and c = 0 elsewhere (transformers' masked_fill with 0.0)
//   ids = top-K of c (greedy: of s), best first, ties to the lower index, NaN above everything
//   w   = s[ids] for noaux_tc, else c[ids];  w /= Σ_k w + 1e-20 if normalise (the sum in k order);
//         then w *= routed_scaling_factor if scale
// The normalise/scale flags carry the per-model_type rules (model/gate.h routing_weight_rule).
//
// moe_dispatch: the slots s = t·K + k sorted by expert with a stable counting sort:
//   offsets[e] = Σ_{e' < e} count(e'),  order[offsets[e] + j] = the j-th slot (in slot order) of e,
//   position[order[i]] = i.
// Expert e owns rows [offsets[e], offsets[e + 1]) of every permuted tensor. On the GPU the
// placement rank of each slot is a prefix count over the ids, never the order of atomics, so the
// result is the CPU's exactly.
//
// moe_permute / backward:  x_perm[i] = x[order[i] / K];  dx[t] = Σ_k dx_perm[position[t·K + k]]
// (the K rows summed in k order).
//
// grouped_linear (per expert e, rows r in [offsets[e], offsets[e + 1])):
//   y[r] = x[r] · W_eᵀ                     W_e [out, in]
//   backward: dx[r] = dy[r] · W_e;  dW_e (+)= Σ_r dy[r]ᵀ x[r]   (dW_e f32 [out, in])
// Row counts come from the offsets tensor on the op's device (the GPU kernels read them there).
//
// moe_combine:  out[t] = Σ_k w[t, k] · y_perm[position[t·K + k]]  (+ add[t])
// with the K products summed in ascending expert order (= ascending position), then add[t] — the
// order of MoE::forward (transformers' index_add_ loop, then the shared experts).
//   backward: dy_perm[position[t·K + k]] = w[t, k] · dout[t];  dw[t, k] = dout[t] · y_perm[…]
// (d add = dout itself).
//
// Devices and dtypes: every tensor of a call on one device. Logits, scores, weights, dweights and
// dW are f32; ids/order/position i32; offsets i64. Activations (x, x_perm, y_perm, dout…) are f32,
// or bf16 on the GPU (outputs in that dtype, f32 accumulation). Expert matrices: f32, bf16 or f16
// on the CPU; on the GPU the activation dtype. The GPU expects ids in [0, E) (moe_route's output;
// the CPU op checks them): an id out of range leaves its slot unplaced (order and position −1;
// offsets[E] counts only placed slots; permute writes zero rows, grouped_linear leaves rows past
// offsets[E] unwritten, combine skips the slot) instead of touching memory out of bounds.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

enum class MoeScoring : uint8_t { Softmax, Sigmoid };
enum class MoeTopK : uint8_t { Greedy, GroupLimitedGreedy, NoauxTc };

struct MoeRouteParams {
  int64_t experts = 0;  // E
  int64_t top_k = 0;    // K
  MoeScoring scoring = MoeScoring::Softmax;
  MoeTopK method = MoeTopK::Greedy;
  int64_t n_group = 1;     // grouped methods: E / n_group experts per group
  int64_t topk_group = 1;  // groups kept
  bool normalise = false;  // w /= Σw + 1e-20
  bool scale = false;      // then w *= routed_scaling_factor
  float routed_scaling_factor = 1.0f;
};

// Throws "[moe_route] ..." on inconsistent parameters (the same rules as validate_gate_config).
void validate(const MoeRouteParams& params);

struct MoeRouting {
  Tensor ids;      // [T, K] i32, best first
  Tensor weights;  // [T, K] f32 combine weights
  Tensor scores;   // [T, E] f32 unbiased s
};
// logits [T, E] f32 (any strides); correction_bias undefined or [E] f32 (noaux_tc only; undefined
// means zeros). GPU limits: E ≤ 1024, n_group ≤ 32.
MoeRouting moe_route(const Tensor& logits, const MoeRouteParams& params,
                     const Tensor& correction_bias = Tensor());

// moe_route_backward: the gradient of the router logits z given the gradient of the combine
// weights (dweights [T, K], from moe_combine_backward) and, optionally, an extra gradient of the
// scores (extra_dscores [T, E], e.g. a balance loss's, already scaled). With a_k = s[t, ids[t,k]]
// (the chosen unbiased scores), f = routed_scaling_factor when `scale` else 1, g_k = dweights[t,k]:
//   da_k = f·g_k                                      (not normalised)
//   da_k = f·(g_k/S − Σ_j g_j a_j / S²),  S = Σ_j a_j + 1e-20     (normalised)
//   ds[t, e] = extra[t, e] + Σ_{k: ids[t,k] = e} da_k
//   dz = ds ⊙ s ⊙ (1 − s)  (sigmoid)   or   dz = s ⊙ (ds − Σ_e ds_e s_e)  (softmax)
// The selection (top-k, groups, the correction bias) is piecewise constant: no gradient. w = s[ids]
// is assumed for every method (true unless a grouped gate picks an expert of a masked group,
// which only happens when K exceeds the kept groups' experts). Reductions in double.
// scores [T, E], dweights [T, K], extra [T, E] f32 and ids [T, K] i32, all on one device (any
// strides); returns dz [T, E] f32 contiguous there. GPU limit as moe_route: E ≤ 1024.
Tensor moe_route_backward(const Tensor& scores, const Tensor& ids, const Tensor& dweights,
                          const MoeRouteParams& params, const Tensor& extra_dscores = Tensor());

struct MoeDispatch {
  Tensor offsets;   // [E + 1] i64
  Tensor order;     // [T·K] i32: the slot t·K + k at each permuted row
  Tensor position;  // [T·K] i32: the permuted row of each slot
  int64_t tokens = 0, top_k = 0, experts = 0;
};
// ids [T, K] i32 (contiguous or not), on the device the result lives on.
MoeDispatch moe_dispatch(const Tensor& ids, int64_t experts);

// x [T, D] -> x_perm [T·K, D] in x's dtype.
Tensor moe_permute(const Tensor& x, const MoeDispatch& d);

// moe_route, moe_dispatch (over params.experts) and moe_permute(x) in one call: the routed half's
// first three steps. On the GPU a decode step's few tokens (T ≤ 8, E ≤ 256) take one kernel
// instead of three, with the same bits; otherwise (and on the CPU) it runs the three ops.
// set_moe_small_route(false) makes the GPU run the three ops too (for comparisons).
struct MoeRouted {
  MoeRouting routing;
  MoeDispatch dispatch;
  Tensor x_perm;  // [T·K, D]
};
MoeRouted moe_route_permute(const Tensor& x, const Tensor& logits, const MoeRouteParams& params,
                            const Tensor& correction_bias = Tensor());
void set_moe_small_route(bool on);
// dx_perm [T·K, D] -> dx [T, D]: each token's K rows summed in k order.
Tensor moe_permute_backward(const Tensor& dx_perm, const MoeDispatch& d);

// E matrices of one shape [rows, cols] (columns contiguous, row stride `ld` the same for all), one
// dtype, one device, plus the table of their addresses the GPU kernels read (built once here, so a
// layer can keep it across calls). Experts are separate tensors in checkpoints; a stacked
// [E, rows, cols] tensor works as well.
struct ExpertMatrices {
  std::vector<Tensor> matrices;  // keeps the storage alive
  Tensor table;                  // [E] i64 addresses, on the matrices' device
  // bf16 matrices on a Hopper: their tensor maps ([E × 128] bytes on the GPU), which the TMA
  // kernels of the grouped GEMMs load tiles through; undefined elsewhere.
  Tensor tma_maps;
  int64_t experts = 0, rows = 0, cols = 0, ld = 0;
  DType dtype = DType::F32;
  Device device = Device::CPU;
};
ExpertMatrices expert_matrices(std::vector<Tensor> matrices);
ExpertMatrices expert_matrices(const Tensor& stacked);

// x_perm [N, in] -> y_perm [N, out] with W_e [out, in]; offsets [E + 1] i64 with offsets[E] = N.
Tensor grouped_linear(const Tensor& x_perm, const ExpertMatrices& w, const Tensor& offsets);
// dy_perm [N, out] -> dx_perm [N, in] = dy · W_e per expert.
Tensor grouped_linear_backward_dx(const Tensor& dy_perm, const ExpertMatrices& w,
                                  const Tensor& offsets);
// dW_e (+)= Σ_r dy[r]ᵀ x[r] over the rows of expert e, into dw (f32 [out, in], ld = in, on the
// op's device; or bf16, each value the f32 result rounded once to nearest even, with an
// accumulated one's old value added in f32 first); `accumulate` adds, else overwrites (experts
// without rows get zeros).
// Deterministic: every dW element is summed by one thread (one block's tensor-core tile for bf16)
// in a fixed row order. `squares` (nullable; a double on the op's device) receives Σ v² over every
// dW after the write, in double: the gradient norm's share of these matrices. The Hopper kernels
// add up the squares of the values as they store them; elsewhere the matrices are read again.
// The same bits for the same inputs on one device; across devices, the same value up to the
// order of the sums.
void grouped_linear_backward_dw(const Tensor& x_perm, const Tensor& dy_perm, const Tensor& offsets,
                                const ExpertMatrices& dw, bool accumulate,
                                double* squares = nullptr);
// *squares (a double on the matrices' device) = Σ v² over every matrix of m (f32 or bf16,
// contiguous).
void matrices_sum_of_squares(const ExpertMatrices& m, double* squares);

// y_perm [T·K, D], weights [T, K] f32, add undefined or [T, D] (y_perm's dtype) -> out [T, D].
Tensor moe_combine(const Tensor& y_perm, const Tensor& weights, const MoeDispatch& d,
                   const Tensor& add = Tensor());
// moe_combine, then the residual add and the next layer's RMS norm (a MoE layer's end in
// Block::finish): returns out = moe_combine(y_perm, weights, d, add) + residual and sets
// normed = rms_norm(out, norm_weight, eps), both [T, D] in y_perm's dtype. On the GPU one kernel
// (a block a token, where the combine and add_rms_norm are two launches on a decode step's
// critical path), the same bits as the two ops, which are the CPU's — where switched on:
// set_moe_combine_norm_fused(true), or DSEEK_FUSED_COMBINE_NORM=1 at start-up (off by default
// until it has been timed on a GPU; off, the GPU runs the two ops).
Tensor moe_combine_add_rms_norm(const Tensor& y_perm, const Tensor& weights, const MoeDispatch& d,
                                const Tensor& add, const Tensor& residual,
                                const Tensor& norm_weight, double eps, Tensor& normed);
void set_moe_combine_norm_fused(bool on);
bool moe_combine_norm_fused();
struct MoeCombineGrads {
  Tensor dy_perm;   // [T·K, D] in dout's dtype
  Tensor dweights;  // [T, K] f32
};
MoeCombineGrads moe_combine_backward(const Tensor& y_perm, const Tensor& weights,
                                     const MoeDispatch& d, const Tensor& dout);

}  // namespace dseek::ops
