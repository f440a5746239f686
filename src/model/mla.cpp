#include "model/mla.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/load_context.h"
#include "model/paged_kv_cache.h"
#include "ops/attention.h"
#include "ops/cpu/batched_matmul_cpu.h"
#include "ops/embedding.h"
#include "ops/l2_prefetch.h"
#include "ops/linear.h"
#include "ops/mla_cache.h"
#include "ops/mla_decode.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/rows.h"

namespace dseek {
Mla::Mla(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
         const std::string& prefix)
    : rope_(rope),
      n_heads_(config.num_attention_heads),
      nope_dim_(config.qk_nope_head_dim),
      rope_dim_(config.qk_rope_head_dim),
      v_dim_(config.v_head_dim),
      kv_lora_rank_(config.kv_lora_rank),
      q_lora_rank_(config.q_lora_rank) {
  const int64_t D = config.hidden_size, H = n_heads_, qk = nope_dim_ + rope_dim_;
  DSEEK_CHECK(rope_dim_ == rope.dim, "[model] {}: qk_rope_head_dim {} != rotary dim {}", prefix,
              rope_dim_, rope.dim);
  // V2 and V3 alike: 1/sqrt(qk) times YaRN's mscale² (transformers 5.17 yarn_apply_mscale in
  // both modeling_deepseek_v2.py and modeling_deepseek_v3.py; V2-Lite's checkpoints rely on it).
  scale_ = float(config.softmax_scale());
  if (q_lora_rank_ > 0) {
    q_a_proj_ = ctx.linear(prefix + ".q_a_proj.weight", {q_lora_rank_, D});
    if (config.attention_bias)
      q_a_bias_ = ctx.optional_weight(prefix + ".q_a_proj.bias", {q_lora_rank_});
    q_a_layernorm_ = ctx.weight(prefix + ".q_a_layernorm.weight", {q_lora_rank_});
    q_b_proj_ = ctx.linear(prefix + ".q_b_proj.weight", {H * qk, q_lora_rank_});
  } else {
    q_proj_ = ctx.linear(prefix + ".q_proj.weight", {H * qk, D});
  }
  kv_a_proj_ = ctx.linear(prefix + ".kv_a_proj_with_mqa.weight", {kv_lora_rank_ + rope_dim_, D});
  if (config.attention_bias)
    kv_a_bias_ =
        ctx.optional_weight(prefix + ".kv_a_proj_with_mqa.bias", {kv_lora_rank_ + rope_dim_});
  kv_a_layernorm_ = ctx.weight(prefix + ".kv_a_layernorm.weight", {kv_lora_rank_});
  kv_b_proj_ = ctx.weight(prefix + ".kv_b_proj.weight", {H * (nope_dim_ + v_dim_), kv_lora_rank_});
  o_proj_ = ctx.linear(prefix + ".o_proj.weight", {D, H * v_dim_});
  if (config.attention_bias) o_bias_ = ctx.optional_weight(prefix + ".o_proj.bias", {D});
  if (ctx.placement().device == Device::CUDA) {
    // The absorbed decode's per-head matrices, laid out for ops::head_matmul once, here.
    const Tensor heads = kv_b_proj_.contiguous().reshape({H, nope_dim_ + v_dim_, kv_lora_rank_});
    w_uk_ = heads.slice(1, 0, nope_dim_).contiguous();
    w_uv_t_ = heads.slice(1, nope_dim_, nope_dim_ + v_dim_).transpose(1, 2).contiguous();
  }
}

Tensor Mla::project_query(const Tensor& x) const {
  const int64_t T = x.size(0), H = n_heads_, qk = nope_dim_ + rope_dim_;
  Tensor q_flat;
  if (q_lora_rank_ > 0) {
    const Tensor q_a = apply_linear(x, q_a_proj_, q_a_bias_);
    const Tensor q_a_normed = ops::rms_norm(q_a, q_a_layernorm_, kLatentNormEps);
    q_flat = apply_linear(q_a_normed, q_b_proj_);
  } else {
    q_flat = apply_linear(x, q_proj_);
  }
  return q_flat.reshape({T, H, qk});
}

Mla::Projected Mla::project_unroped(const Tensor& x) const {
  const int64_t T = x.size(0);
  Projected p;
  p.q = project_query(x);

  const Tensor kv_a = apply_linear(x, kv_a_proj_, kv_a_bias_);  // [T, r + rope]
  p.c_kv = ops::rms_norm(kv_a.slice(1, 0, kv_lora_rank_), kv_a_layernorm_, kLatentNormEps);
  p.k_pe = kv_a.slice(1, kv_lora_rank_, kv_lora_rank_ + rope_dim_)
               .contiguous()
               .reshape({T, 1, rope_dim_});
  return p;
}

void Mla::rope_rows(const Projected& p, int64_t row0, int64_t T, int64_t pos0) const {
  const int64_t qk = nope_dim_ + rope_dim_;
  apply_rope(rope_, p.q.slice(0, row0, row0 + T).slice(2, nope_dim_, qk), pos0);
  apply_rope(rope_, p.k_pe.slice(0, row0, row0 + T), pos0);
}

Mla::Projected Mla::project(const Tensor& x, int64_t pos0) const {
  Projected p = project_unroped(x);
  rope_rows(p, 0, x.size(0), pos0);
  return p;
}

Tensor Mla::forward(const Tensor& x) const {
  const int64_t T = x.size(0), H = n_heads_, qk = nope_dim_ + rope_dim_;
  const Projected p = project(x, 0);
  // Plain MLA: per-head keys and values from the latent.
  const Tensor kv = ops::linear(p.c_kv, kv_b_proj_).reshape({T, H, nope_dim_ + v_dim_});
  // k = [k_nope; k_pe] per head, the one k_pe broadcast over the heads (stride 0): two strided
  // copies that run on whichever device the activations are.
  Tensor k = Tensor::empty({T, H, qk}, kv.dtype(), kv.device());
  k.slice(2, 0, nope_dim_).copy_from(kv.slice(2, 0, nope_dim_));
  k.slice(2, nope_dim_, qk).copy_from(p.k_pe.expand(1, H));
  const Tensor v = kv.slice(2, nope_dim_, nope_dim_ + v_dim_);
  return output_projection(ops::causal_attention(p.q, k, v, scale_));  // [T, H, v] first
}

const Tensor& Mla::kv_b_f32() const {
  std::call_once(kv_b_once_, [this] { kv_b_f32_ = kv_b_proj_.to(DType::F32); });
  return kv_b_f32_;
}

Tensor Mla::absorb_query(const Tensor& q) const {
  // q_abs[t, h, :r] = Σ_i q_nope[t, h, i] · W_UK[h][i, :]: per head h one GEMM over the tokens,
  // straight from and into the strided [T, H, ·] layouts (ops::cpu::batched_matmul's views).
  const int64_t T = q.size(0), H = n_heads_, r = kv_lora_rank_, width = r + rope_dim_;
  const int64_t head_rows = nope_dim_ + v_dim_, qk = nope_dim_ + rope_dim_;
  Tensor q_abs = Tensor::empty({T, H, width});
  const float* qp = q.data<float>();
  float* qa = q_abs.data<float>();
  // A[h][t, i] = q_nope[t, h, i]; B[h][c, i] = W_UK[h][i, c] = kv_b[h·head_rows + i, c].
  ops::cpu::batched_matmul(qp, {qk, H * qk, 1}, kv_b_f32().data<float>(), {head_rows * r, 1, r}, qa,
                           {width, H * width, 1}, H, T, r, nope_dim_);
  for (int64_t row = 0; row < T * H; ++row)
    std::memcpy(qa + row * width + r, qp + row * qk + nope_dim_, size_t(rope_dim_) * sizeof(float));
  return q_abs;
}

Tensor Mla::latent_output(const Tensor& o_lat) const {
  // Un-absorb W_UV: out[t, h, j] = W_UV[h][j, :] · o_lat[t, h, :], per head one GEMM.
  const int64_t T = o_lat.size(0), H = n_heads_, r = kv_lora_rank_;
  const int64_t head_rows = nope_dim_ + v_dim_;
  Tensor out = Tensor::empty({T, H, v_dim_});
  // A[h][t, c] = o_lat[t, h, c]; B[h][j, c] = W_UV[h][j, c] = kv_b[h·head_rows + nope + j, c].
  ops::cpu::batched_matmul(o_lat.contiguous().data<float>(), {r, H * r, 1},
                           kv_b_f32().data<float>() + nope_dim_ * r, {head_rows * r, r, 1},
                           out.data<float>(), {v_dim_, H * v_dim_, 1}, H, T, v_dim_, r);
  return output_projection(out);
}

Tensor Mla::absorb_query_gpu(const Tensor& q, const Tensor& positions) const {
  const int64_t T = q.size(0), r = kv_lora_rank_, width = r + rope_dim_;
  const int64_t qk = nope_dim_ + rope_dim_;
  const Tensor q_abs = Tensor::empty({T, n_heads_, width}, q.dtype(), q.device());
  ops::absorb_query_into(q.slice(2, 0, nope_dim_), w_uk_, q_abs.slice(2, 0, r),
                         q.slice(2, nope_dim_, qk), q_abs.slice(2, r, width), positions,
                         rope_.inv_freq, rope_.attention_scaling, rope_.interleaved);
  return q_abs;
}

Tensor Mla::latent_output_gpu(const Tensor& o_lat) const {
  return output_projection(ops::head_matmul(o_lat, w_uv_t_));  // [T, H, v] first
}

Tensor Mla::output_projection(const Tensor& heads) const {
  return apply_linear(heads.reshape({heads.size(0), n_heads_ * v_dim_}), o_proj_, o_bias_);
}

Tensor Mla::prefill_expanded(const Tensor& q, const Tensor& latent) const {
  const int64_t S = latent.size(0), H = n_heads_, r = kv_lora_rank_;
  const int64_t qk = nope_dim_ + rope_dim_;
  // Per-head keys and values of every cached token, as Mla::forward computes them for a fresh
  // sequence; the causal attention aligns the T queries with the last T keys.
  const Tensor kv = ops::linear(latent.slice(1, 0, r).contiguous(), kv_b_proj_)
                        .reshape({S, H, nope_dim_ + v_dim_});
  Tensor k = Tensor::empty({S, H, qk}, kv.dtype(), kv.device());
  k.slice(2, 0, nope_dim_).copy_from(kv.slice(2, 0, nope_dim_));
  k.slice(2, nope_dim_, qk)
      .copy_from(
          latent.slice(1, r, r + rope_dim_).contiguous().reshape({S, 1, rope_dim_}).expand(1, H));
  const Tensor v = kv.slice(2, nope_dim_, nope_dim_ + v_dim_);
  return output_projection(ops::causal_attention(q, k, v, scale_));  // [T, H, v] first
}

Tensor Mla::project_query_into_cache(const Tensor& x, const Tensor& rows, const Tensor& positions,
                                     const Tensor& slots, cuda::Fork& fork) const {
  {
    cuda::Fork::Side side(fork);
    const Tensor kv_a =
        apply_linear(x, kv_a_proj_, kv_a_bias_);  // [T, r + rope], freed on the side
    ops::mla_cache_append(kv_a, kv_a_layernorm_, kLatentNormEps, positions, rope_.inv_freq,
                          rope_.attention_scaling, rope_.interleaved, rows, slots);
  }
  return project_query(x);
}

Tensor Mla::forward_cached(const Tensor& x, KVCache& cache, int64_t layer) const {
  const int64_t T = x.size(0), r = kv_lora_rank_, width = r + rope_dim_;
  const int64_t pos0 = cache.size(), S = pos0 + T;
  cache.check_room(T);
  const Tensor& rows = cache.keys(layer);
  DSEEK_CHECK(rows.size(1) == width, "[model] cache layer {} has width {}, MLA needs {}", layer,
              rows.size(1), width);
  if (x.is_cuda()) {
    // Positions, cache rows written and keys read all come from the device-side positions, so
    // the step has no host-side length in any kernel argument (a CUDA graph replays it).
    const Tensor positions = cache.device_positions(T);
    cuda::Fork fork(cuda::branches_enabled());  // x and positions live past the join
    const Tensor q = project_query_into_cache(x, rows, positions, positions, fork);
    if (T >= kExpandedPrefillRows) {
      apply_rope(rope_, q.slice(2, nope_dim_, nope_dim_ + rope_dim_), positions);
      fork.join();
      return prefill_expanded(q, rows.slice(0, 0, S));
    }
    const Tensor q_abs = absorb_query_gpu(q, positions);
    fork.join();
    // The output projection's weights into L2 on the side stream, beside the decode kernel, which
    // reads little from HBM (ops/l2_prefetch.h; off unless switched on).
    cuda::Fork ahead(ops::prefetch_o_proj() && cuda::branches_enabled());
    if (ahead.enabled()) {
      cuda::Fork::Side side(ahead);
      const Tensor* weight[] = {&o_proj_.weight};
      ops::prefetch_l2(ops::l2_ranges(weight, INT64_MAX));
    }
    // latent_output_gpu's product, joined from the decode's key splits as it is multiplied.
    Tensor out =
        output_projection(ops::mla_decode_project(q_abs, rows, r, scale_, positions, w_uv_t_));
    ahead.join();
    return out;
  }
  const Projected p = project(x, pos0);

  // Append [c_kv; k_pe] of the new tokens.
  float* cache_rows = rows.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    float* dst = cache_rows + (pos0 + t) * width;
    std::memcpy(dst, p.c_kv.data<float>() + t * r, size_t(r) * sizeof(float));
    std::memcpy(dst + r, p.k_pe.data<float>() + t * rope_dim_, size_t(rope_dim_) * sizeof(float));
  }

  if (T >= kExpandedPrefillRows) return prefill_expanded(p.q, rows.slice(0, 0, S));
  // One shared latent key/value head over all cached tokens.
  const Tensor keys = rows.slice(0, 0, S).reshape({S, 1, width});
  const Tensor values = keys.slice(2, 0, r);
  return latent_output(ops::causal_attention(absorb_query(p.q), keys, values, scale_));
}

Tensor Mla::forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                          PagedKVCache& cache, int64_t layer) const {
  const int64_t r = kv_lora_rank_, width = r + rope_dim_;
  DSEEK_CHECK(cache.spec(layer).key_width == width,
              "[model] paged cache layer {} has width {}, MLA needs {}", layer,
              cache.spec(layer).key_width, width);
  const int64_t pt = cache.page_tokens();
  const Tensor& rows = cache.keys(layer);
  // Every sequence's rows at once: rotate at their own positions, write to their own pool slots.
  const Tensor index = paged_row_index(seqs, pt, x.device());
  const Tensor positions = index.select(0, 0), slots = index.select(0, 1);
  // x, positions and slots live past the join.
  cuda::Fork fork(x.is_cuda() && cuda::branches_enabled());
  const Tensor q = project_query_into_cache(x, rows, positions, slots, fork);
  if (x.is_cuda()) {
    const Tensor q_abs = absorb_query_gpu(q, positions);
    fork.join();
    return latent_output_gpu(
        ops::paged_attention(q_abs, rows, rows.slice(1, 0, r), 1, pt, seqs, scale_));
  }
  apply_rope(rope_, q.slice(2, nope_dim_, nope_dim_ + rope_dim_), positions);
  // CPU: a sequence with a prompt chunk of kExpandedPrefillRows+ tokens attends expanded over its
  // rows gathered out of its pages, as forward_cached does; the rest absorbed, in one call.
  const int64_t N = x.size(0);
  std::vector<ops::PagedAttentionSeq> absorbed;
  std::vector<int64_t> absorbed_rows;  // the absorbed sequences' first rows in x
  Tensor out;
  int64_t row = 0;
  for (const ops::PagedAttentionSeq& s : seqs) {
    if (s.T >= kExpandedPrefillRows) {
      if (!out.defined()) out = Tensor::empty({N, o_proj_.weight.size(0)});
      std::vector<int32_t> slots(static_cast<size_t>(s.pos0 + s.T));
      for (int64_t pos = 0; pos < s.pos0 + s.T; ++pos)
        slots[size_t(pos)] = int32_t(s.pages[size_t(pos / pt)] * pt + pos % pt);
      const Tensor latent = ops::embedding(rows, slots);  // [pos0 + T, r + rope]
      out.slice(0, row, row + s.T).copy_from(prefill_expanded(q.slice(0, row, row + s.T), latent));
    } else {
      absorbed.push_back(s);
      absorbed_rows.push_back(row);
    }
    row += s.T;
  }
  if (!out.defined())
    return latent_output(
        ops::paged_attention(absorb_query(q), rows, rows.slice(1, 0, r), 1, pt, seqs, scale_));
  if (absorbed.empty()) return out;
  // The absorbed sequences' query rows stacked, attended in one call, their outputs put back.
  int64_t n = 0;
  for (const ops::PagedAttentionSeq& s : absorbed) n += s.T;
  Tensor q_absorbed = Tensor::empty({n, q.size(1), q.size(2)});
  int64_t at = 0;
  for (size_t i = 0; i < absorbed.size(); ++i) {
    const int64_t first = absorbed_rows[i], T = absorbed[i].T;
    q_absorbed.slice(0, at, at + T).copy_from(q.slice(0, first, first + T));
    at += T;
  }
  const Tensor y = latent_output(ops::paged_attention(
      absorb_query(q_absorbed), rows, rows.slice(1, 0, r), 1, pt, absorbed, scale_));
  at = 0;
  for (size_t i = 0; i < absorbed.size(); ++i) {
    const int64_t first = absorbed_rows[i], T = absorbed[i].T;
    out.slice(0, first, first + T).copy_from(y.slice(0, at, at + T));
    at += T;
  }
  return out;
}

}  // namespace dseek
