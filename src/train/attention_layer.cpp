// Self-attention for training: MLA (DeepSeek-V2/V3) and multi-head/grouped-query attention
// (Llama, DeepSeekMoE), forward and backward (see layers.h and model/mla.h for the math).
//
// MLA backward, in reverse order of the forward:
//   out = o_proj(attn)                  → d_attn
//   attn = softmax(scale·q·kᵀ)·v        → dq, dk, dv      (ops::causal_attention_backward)
//   k = [k_nope; k_pe broadcast]        → d k_nope per head, d k_pe = Σ_heads
//   [k_nope; v] = kv_b_proj(c_kv)       → d c_kv
//   k_pe = RoPE(kv_a[:, r:])            → rope backward
//   c_kv = norm(kv_a[:, :r])            → rms_norm backward
//   kv_a = kv_a_proj(x)                 → dx (part 1)
//   q_pe = RoPE(q[:, :, nope:])         → rope backward on dq's rope part
//   q = q_b(norm(q_a(x))) or q_proj(x)  → dx (part 2)
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "train/layers.h"

namespace dseek::train {
namespace {

constexpr double kLatentNormEps = 1e-6;  // q_a_layernorm / kv_a_layernorm, as transformers

// RoPE restarts at position 0 in every sequence (document) of the batch.
void rope_batched(const RopeParams& rope, const Tensor& x, const Segments& segments) {
  int64_t s = 0;
  for (int64_t n : segments) {
    if (n > 0) apply_rope(rope, x.slice(0, s, s + n), 0);
    s += n;
  }
}

void rope_backward(const RopeParams& rope, const Tensor& dy, const Segments& segments) {
  int64_t s = 0;
  for (int64_t n : segments) {
    if (n > 0)
      ops::rope_backward_inplace(dy.slice(0, s, s + n), 0, rope.inv_freq, rope.attention_scaling,
                                 rope.interleaved);
    s += n;
  }
}

Tensor mla_forward(const LayerContext& ctx, const std::string& p, const Tensor& x,
                   const Segments& segments, AttentionCache& c) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = x.size(0), H = cfg.num_attention_heads, nope = cfg.qk_nope_head_dim,
                rope = cfg.qk_rope_head_dim, vd = cfg.v_head_dim, r = cfg.kv_lora_rank,
                qk = nope + rope;
  const Tensor xc = x.contiguous();
  Tensor q_flat;
  if (cfg.q_lora_rank > 0) {
    c.q_a = linear_forward(ctx.params, p + ".q_a_proj.weight", xc, c.x);
    const Tensor q_a_normed =
        norm_forward(ctx.params, p + ".q_a_layernorm.weight", c.q_a, kLatentNormEps);
    q_flat = linear_forward(ctx.params, p + ".q_b_proj.weight", q_a_normed, c.q_a_normed);
  } else {
    q_flat = linear_forward(ctx.params, p + ".q_proj.weight", xc, c.x);
  }
  c.q = q_flat.reshape({T, H, qk});
  rope_batched(ctx.rope, c.q.slice(2, nope, qk), segments);

  c.kv_a = linear_forward(ctx.params, p + ".kv_a_proj_with_mqa.weight", xc, c.x);  // [T, r + rope]
  const Tensor c_kv =
      norm_forward(ctx.params, p + ".kv_a_layernorm.weight", c.kv_a.slice(1, 0, r), kLatentNormEps);
  Tensor k_pe = c.kv_a.slice(1, r, r + rope).contiguous().reshape({T, 1, rope});
  rope_batched(ctx.rope, k_pe, segments);

  const Tensor kv =
      linear_forward(ctx.params, p + ".kv_b_proj.weight", c_kv, c.c_kv).reshape({T, H, nope + vd});
  // k = [k_nope per head; the shared k_pe broadcast to every head], v per head.
  c.k = Tensor::empty({T, H, qk}, kv.dtype(), kv.device());
  c.k.slice(2, 0, nope).copy_from(kv.slice(2, 0, nope));
  c.k.slice(2, nope, qk).copy_from(k_pe.expand(1, H));
  c.v = kv.slice(2, nope, nope + vd).contiguous();
  const Tensor attn =
      ops::causal_attention_packed(c.q, c.k, c.v, float(cfg.softmax_scale()), segments, &c.saved)
          .reshape({T, H * vd});
  return linear_forward(ctx.params, p + ".o_proj.weight", attn, c.attn);
}

Tensor mla_backward(const LayerContext& ctx, const std::string& p, const AttentionCache& c,
                    const Tensor& dy) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = c.q.size(0), H = cfg.num_attention_heads, nope = cfg.qk_nope_head_dim,
                rope = cfg.qk_rope_head_dim, vd = cfg.v_head_dim, r = cfg.kv_lora_rank,
                qk = nope + rope;
  const Tensor d_attn = linear_backward(ctx.params, p + ".o_proj.weight", c.attn, dy);
  ops::AttentionGrads g = ops::causal_attention_packed_backward(
      c.q, c.k, c.v, float(cfg.softmax_scale()), d_attn.reshape({T, H, vd}), c.segments, &c.saved);

  // Split dk into the per-head k_nope part (joined with dv for kv_b_proj) and the shared k_pe,
  // whose gradient is the sum over heads.
  const Tensor d_kv = Tensor::empty({T, H, nope + vd}, g.dk.dtype(), g.dk.device());
  d_kv.slice(2, 0, nope).copy_from(g.dk.slice(2, 0, nope));
  d_kv.slice(2, nope, nope + vd).copy_from(g.dv);
  Tensor d_k_pe;  // [T, 1, rope]
  if (g.dk.is_cuda()) {
    // One GEMM with a row of ones over [T·rope, H]: a few launches instead of a pair per head,
    // f32 accumulation also under bf16 activations.
    const Tensor heads =
        g.dk.slice(2, nope, qk).transpose(1, 2).contiguous().reshape({T * rope, H});
    const Tensor ones = Tensor::from_vector(std::vector<float>(size_t(H), 1.0f), {1, H})
                            .to(g.dk.dtype())
                            .to(g.dk.device());
    d_k_pe = ops::linear(heads, ones).reshape({T, 1, rope});
  } else {
    // Head by head in order (the CPU trainer's summation order, kept bit for bit).
    d_k_pe = g.dk.slice(1, 0, 1).slice(2, nope, qk).clone();
    for (int64_t h = 1; h < H; ++h)
      ops::add_inplace(d_k_pe, g.dk.slice(1, h, h + 1).slice(2, nope, qk));
  }
  rope_backward(ctx.rope, d_k_pe, c.segments);
  const Tensor d_c_kv = linear_backward(ctx.params, p + ".kv_b_proj.weight", c.c_kv,
                                        d_kv.reshape({T, H * (nope + vd)}));
  const Tensor d_latent = norm_backward(ctx.params, p + ".kv_a_layernorm.weight",
                                        c.kv_a.slice(1, 0, r), kLatentNormEps, d_c_kv);
  // d kv_a = [d latent; d k_pe (un-roped)]
  const Tensor d_kv_a = Tensor::empty({T, r + rope}, d_latent.dtype(), d_latent.device());
  d_kv_a.slice(1, 0, r).copy_from(d_latent);
  d_kv_a.slice(1, r, r + rope).copy_from(d_k_pe.reshape({T, rope}));
  ops::Fp8WgradInput x_cols;  // x̂'s column tiles, for the FP8 wgrads of the projections of x
  Tensor dx = linear_backward(ctx.params, p + ".kv_a_proj_with_mqa.weight", c.x, d_kv_a, &x_cols);

  rope_backward(ctx.rope, g.dq.slice(2, nope, qk), c.segments);
  const Tensor dq_flat = g.dq.reshape({T, H * qk});
  if (cfg.q_lora_rank > 0) {
    const Tensor d_qan = linear_backward(ctx.params, p + ".q_b_proj.weight", c.q_a_normed, dq_flat);
    const Tensor d_qa =
        norm_backward(ctx.params, p + ".q_a_layernorm.weight", c.q_a, kLatentNormEps, d_qan);
    ops::add_inplace(dx, linear_backward(ctx.params, p + ".q_a_proj.weight", c.x, d_qa, &x_cols));
  } else {
    ops::add_inplace(dx, linear_backward(ctx.params, p + ".q_proj.weight", c.x, dq_flat, &x_cols));
  }
  return dx;
}

int64_t mha_head_dim(const ModelConfig& cfg) {
  return cfg.head_dim > 0 ? cfg.head_dim : cfg.hidden_size / cfg.num_attention_heads;
}
int64_t mha_kv_heads(const ModelConfig& cfg) {
  return cfg.num_key_value_heads > 0 ? cfg.num_key_value_heads : cfg.num_attention_heads;
}

Tensor mha_forward(const LayerContext& ctx, const std::string& p, const Tensor& x,
                   const Segments& segments, AttentionCache& c) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = x.size(0), H = cfg.num_attention_heads, Hk = mha_kv_heads(cfg),
                hd = mha_head_dim(cfg);
  const Tensor xc = x.contiguous();
  c.q = linear_forward(ctx.params, p + ".q_proj.weight", xc, c.x).reshape({T, H, hd});
  c.k = linear_forward(ctx.params, p + ".k_proj.weight", xc, c.x).reshape({T, Hk, hd});
  c.v = linear_forward(ctx.params, p + ".v_proj.weight", xc, c.x).reshape({T, Hk, hd});
  rope_batched(ctx.rope, c.q, segments);
  rope_batched(ctx.rope, c.k, segments);
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const Tensor attn =
      ops::causal_attention_packed(c.q, c.k, c.v, scale, segments, &c.saved).reshape({T, H * hd});
  return linear_forward(ctx.params, p + ".o_proj.weight", attn, c.attn);
}

Tensor mha_backward(const LayerContext& ctx, const std::string& p, const AttentionCache& c,
                    const Tensor& dy) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = c.q.size(0), H = cfg.num_attention_heads, Hk = mha_kv_heads(cfg),
                hd = mha_head_dim(cfg);
  const Tensor d_attn = linear_backward(ctx.params, p + ".o_proj.weight", c.attn, dy);
  const float scale = float(1.0 / std::sqrt(double(hd)));
  ops::AttentionGrads g = ops::causal_attention_packed_backward(
      c.q, c.k, c.v, scale, d_attn.reshape({T, H, hd}), c.segments, &c.saved);
  rope_backward(ctx.rope, g.dq, c.segments);
  rope_backward(ctx.rope, g.dk, c.segments);
  ops::Fp8WgradInput x_cols;  // x̂'s column tiles, for the FP8 wgrads of the projections of x
  Tensor dx =
      linear_backward(ctx.params, p + ".q_proj.weight", c.x, g.dq.reshape({T, H * hd}), &x_cols);
  ops::add_inplace(dx, linear_backward(ctx.params, p + ".k_proj.weight", c.x,
                                       g.dk.reshape({T, Hk * hd}), &x_cols));
  ops::add_inplace(dx, linear_backward(ctx.params, p + ".v_proj.weight", c.x,
                                       g.dv.reshape({T, Hk * hd}), &x_cols));
  return dx;
}

}  // namespace

Tensor attention_forward(const LayerContext& ctx, const std::string& prefix, const Tensor& x,
                         const Segments& segments, AttentionCache& cache) {
  DSEEK_CHECK(!ctx.config.attention_bias,
              "[train] attention_bias: training supports attention without biases");
  check_segments(segments, x.size(0), prefix);
  cache = AttentionCache{};  // filled afresh: no codes of an earlier batch
  cache.segments = segments;
  return ctx.config.is_mla() ? mla_forward(ctx, prefix, x, segments, cache)
                             : mha_forward(ctx, prefix, x, segments, cache);
}

Tensor attention_backward(const LayerContext& ctx, const std::string& prefix,
                          const AttentionCache& cache, const Tensor& dy) {
  return ctx.config.is_mla() ? mla_backward(ctx, prefix, cache, dy)
                             : mha_backward(ctx, prefix, cache, dy);
}

}  // namespace dseek::train
