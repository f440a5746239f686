// Mla: multi-head latent attention of DeepSeek-V2/V3 (transformers' DeepseekV2Attention /
// DeepseekV3Attention; DeepSeek's inference/model.py MLA). With H heads, nope = qk_nope_head_dim,
// rope = qk_rope_head_dim, r = kv_lora_rank:
//   q        = q_b_proj(q_a_layernorm(q_a_proj(x)))  or  q_proj(x)        [T, H, nope + rope]
//   q_nope, q_pe = split(q);  q_pe ← RoPE
//   kv_a     = kv_a_proj_with_mqa(x)                                      [T, r + rope]
//   c_kv     = kv_a_layernorm(kv_a[:, :r]);  k_pe = RoPE(kv_a[:, r:])     (one k_pe for all heads)
// Full forward (plain): kv = kv_b_proj(c_kv) → k_nope, v per head [T, H, nope], [T, H, v_head_dim];
//   k = [k_nope; k_pe], out = o_proj(softmax(scale · q kᵀ) v).
// Cached forward (absorbed): the cache holds only [c_kv; k_pe] per token. With W_UK[h] [nope, r]
//   and W_UV[h] [v_head_dim, r] the slices of kv_b_proj for head h:
//   q_abs[t, h] = q_nope[t, h] · W_UK[h]   ([r]);   score = scale · [q_abs; q_pe] · [c_kv; k_pe]
//   o_lat[t, h] = Σ_s softmax(score) c_kv[s]  ([r]);   out[t, h] = W_UV[h] o_lat[t, h]
//   which is attention with one shared key/value head over the latent rows.
//   On the GPU the cache rows are in the activation dtype; W_UK as [H, nope, r] and W_UVᵀ as
//   [H, r, v_head_dim] are made once at load, the projections are ops::head_matmul and the
//   attention ops::mla_decode (one read of each latent row for 32 heads, split over blocks for
//   long caches), or ops::paged_attention with one key head over a paged cache.
// scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)² for deepseek_v3 under YaRN
// (config.softmax_scale()); transformers' DeepseekV2Attention applies no mscale² (plain
// qk_head_dim^-0.5), and dseek follows it. q_a_layernorm and kv_a_layernorm use eps 1e-6
// whatever rms_norm_eps says, as transformers constructs them.
#pragma once

#include <mutex>
#include <string>

#include "core/cuda.h"
#include "model/attention.h"
#include "model/linear_weight.h"

namespace dseek {

class Mla : public SelfAttention {
 public:
  Mla(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
      const std::string& prefix);

  Tensor forward(const Tensor& x) const override;
  Tensor forward_cached(const Tensor& x, KVCache& cache, int64_t layer) const override;
  // Absorbed, like forward_cached, with each sequence's latent rows in its pages.
  Tensor forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                       PagedKVCache& cache, int64_t layer) const override;
  KVCache::LayerSpec cache_spec() const override { return {kv_lora_rank_ + rope_dim_, 0}; }

  float scale() const { return scale_; }
  // Weights as held (tests check which stay FP8).
  const LinearWeight& kv_a_proj() const { return kv_a_proj_; }
  const LinearWeight& o_proj() const { return o_proj_; }
  const Tensor& kv_b_proj() const { return kv_b_proj_; }

  // A chunk of at least kExpandedPrefillRows tokens (a prompt) does not attend absorbed: it
  // expands the latent rows of the whole cache into per-head keys and values (kv_b_proj) and runs
  // the ordinary causal attention (the tensor-core flash kernel on a GPU), as DeepSeek's inference
  // code does for prefill. Absorbed, every (query, key) pair costs H·(r + rope + r) multiply-adds
  // instead of H·(qk + v): the right trade for a few new tokens (no expansion), far slower for
  // thousands. Same maths (absorption is exact).
  static constexpr int64_t kExpandedPrefillRows = 64;

 private:
  struct Projected {
    Tensor q;     // [T, H, nope + rope], q_pe roped
    Tensor c_kv;  // [T, r], normalised
    Tensor k_pe;  // [T, 1, rope], roped
  };
  Projected project(const Tensor& x, int64_t pos0) const;
  Projected project_unroped(const Tensor& x) const;
  void rope_rows(const Projected& p, int64_t row0, int64_t T, int64_t pos0) const;
  // The cached paths' projection: q [T, H, nope + rope] of x, unroped, and the new tokens'
  // [c_kv; k_pe] written to rows `slots` of the cache layer `rows`, k_pe roped at `positions` (i64
  // [T] on x's device; ops::mla_cache_append, one kernel on a GPU). On a GPU with `fork` enabled
  // (core/cuda.h) the latent half runs on the side stream beside the query's projection; the
  // caller joins the fork before reading the rows.
  Tensor project_query_into_cache(const Tensor& x, const Tensor& rows, const Tensor& positions,
                                  const Tensor& slots, cuda::Fork& fork) const;
  Tensor project_query(const Tensor& x) const;  // [T, H, nope + rope], unroped
  // q [T, H, nope + rope] → q_abs [T, H, r + rope] = [q_nope · W_UK[h]; q_pe].
  Tensor absorb_query(const Tensor& q) const;
  // o_lat [T, H, r] → W_UV[h] per head → o_proj → [T, D].
  Tensor latent_output(const Tensor& o_lat) const;
  const Tensor& kv_b_f32() const;  // kv_b_proj in f32, made on first cached use
  // GPU twins of absorb_query and latent_output (ops::head_matmul with w_uk_ / w_uv_t_). The
  // query comes unroped: q_pe is rotated at `positions` straight into its place in q_abs.
  Tensor absorb_query_gpu(const Tensor& q, const Tensor& positions) const;
  Tensor latent_output_gpu(const Tensor& o_lat) const;
  // The heads' outputs [T, H, v] → o_proj (+ bias) → [T, D]: every attention path's last step.
  Tensor output_projection(const Tensor& heads) const;
  // q [T, H, nope + rope] roped, latent [S, r + rope] (the cache's rows, this chunk's last) →
  // [T, D].
  Tensor prefill_expanded(const Tensor& q, const Tensor& latent) const;

  const RopeParams& rope_;
  int64_t n_heads_, nope_dim_, rope_dim_, v_dim_, kv_lora_rank_, q_lora_rank_;
  float scale_;
  static constexpr double kLatentNormEps = 1e-6;
  // The dense projections may be FP8 (model/linear_weight.h); kv_b_proj is always dequantised at
  // load: the absorbed paths slice it per head (W_UK, W_UV), which no FP8 GEMM here does yet.
  LinearWeight q_proj_, q_a_proj_, q_b_proj_, kv_a_proj_, o_proj_;
  Tensor q_a_layernorm_, q_a_bias_;  // q_a_bias_: attention_bias
  Tensor kv_a_bias_, kv_a_layernorm_, kv_b_proj_;
  Tensor o_bias_;
  Tensor w_uk_, w_uv_t_;  // GPU placement only: [H, nope, r] and [H, r, v_head_dim], in act
  mutable std::once_flag kv_b_once_;
  mutable Tensor kv_b_f32_;
};

}  // namespace dseek
