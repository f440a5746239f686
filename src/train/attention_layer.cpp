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
#include <cstring>

#include "core/error.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "train/layers.h"

namespace dseek::train {
namespace {

constexpr double kLatentNormEps = 1e-6;  // q_a_layernorm / kv_a_layernorm, as transformers

void add_into(Tensor& dst, const Tensor& src) {
  float* d = dst.data<float>();
  const float* s = src.data<float>();
  for (int64_t i = 0, n = dst.numel(); i < n; ++i) d[i] += s[i];
}

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

// Causal attention of each sequence: q [N, H, dk], k [N, Hk, dk], v [N, Hk, dv] → [N, H·dv].
// Nothing crosses a segment boundary: a packed document never sees the one before it.
Tensor attention_batched(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         const Segments& segments) {
  const int64_t N = q.size(0), H = q.size(1), dv = v.size(2);
  Tensor out = Tensor::empty({N, H * dv});
  int64_t s = 0;
  for (int64_t n : segments) {
    if (n > 0) {
      const Tensor o = ops::causal_attention(q.slice(0, s, s + n), k.slice(0, s, s + n),
                                             v.slice(0, s, s + n), scale);
      std::memcpy(out.data<float>() + s * H * dv, o.data<float>(), o.nbytes());
    }
    s += n;
  }
  return out;
}

ops::AttentionGrads attention_backward_batched(const Tensor& q, const Tensor& k, const Tensor& v,
                                               float scale, const Tensor& dout,
                                               const Segments& segments) {
  ops::AttentionGrads g{Tensor::empty(q.shape()), Tensor::empty(k.shape()),
                        Tensor::empty(v.shape())};
  int64_t s = 0;
  for (int64_t n : segments) {
    if (n > 0) {
      const ops::AttentionGrads part = ops::causal_attention_backward(
          q.slice(0, s, s + n), k.slice(0, s, s + n), v.slice(0, s, s + n), scale,
          dout.slice(0, s, s + n));
      std::memcpy(g.dq.data<float>() + s * q.size(1) * q.size(2), part.dq.data<float>(),
                  part.dq.nbytes());
      std::memcpy(g.dk.data<float>() + s * k.size(1) * k.size(2), part.dk.data<float>(),
                  part.dk.nbytes());
      std::memcpy(g.dv.data<float>() + s * v.size(1) * v.size(2), part.dv.data<float>(),
                  part.dv.nbytes());
    }
    s += n;
  }
  return g;
}

Tensor mla_forward(const LayerContext& ctx, const std::string& p, const Tensor& x,
                   const Segments& segments, AttentionCache& c) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = x.size(0), H = cfg.num_attention_heads, nope = cfg.qk_nope_head_dim,
                rope = cfg.qk_rope_head_dim, vd = cfg.v_head_dim, r = cfg.kv_lora_rank,
                qk = nope + rope;
  c.x = x.contiguous();
  Tensor q_flat;
  if (cfg.q_lora_rank > 0) {
    c.q_a = linear_forward(ctx.params, p + ".q_a_proj.weight", c.x);
    c.q_a_normed = norm_forward(ctx.params, p + ".q_a_layernorm.weight", c.q_a, kLatentNormEps);
    q_flat = linear_forward(ctx.params, p + ".q_b_proj.weight", c.q_a_normed);
  } else {
    q_flat = linear_forward(ctx.params, p + ".q_proj.weight", c.x);
  }
  c.q = q_flat.reshape({T, H, qk});
  rope_batched(ctx.rope, c.q.slice(2, nope, qk), segments);

  c.kv_a = linear_forward(ctx.params, p + ".kv_a_proj_with_mqa.weight", c.x);  // [T, r + rope]
  c.c_kv = norm_forward(ctx.params, p + ".kv_a_layernorm.weight", c.kv_a.slice(1, 0, r),
                        kLatentNormEps);
  Tensor k_pe = c.kv_a.slice(1, r, r + rope).contiguous().reshape({T, 1, rope});
  rope_batched(ctx.rope, k_pe, segments);

  const Tensor kv = linear_forward(ctx.params, p + ".kv_b_proj.weight", c.c_kv)
                        .reshape({T, H, nope + vd});
  c.k = Tensor::empty({T, H, qk});
  c.v = Tensor::empty({T, H, vd});
  const float* kvp = kv.data<float>();
  const float* pe = k_pe.data<float>();
  float* kp = c.k.data<float>();
  float* vp = c.v.data<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const float* src = kvp + (t * H + h) * (nope + vd);
      std::memcpy(kp + (t * H + h) * qk, src, size_t(nope) * sizeof(float));
      std::memcpy(kp + (t * H + h) * qk + nope, pe + t * rope, size_t(rope) * sizeof(float));
      std::memcpy(vp + (t * H + h) * vd, src + nope, size_t(vd) * sizeof(float));
    }
  c.attn = attention_batched(c.q, c.k, c.v, float(cfg.softmax_scale()), segments);
  return linear_forward(ctx.params, p + ".o_proj.weight", c.attn);
}

Tensor mla_backward(const LayerContext& ctx, const std::string& p, const AttentionCache& c,
                    const Tensor& dy) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = c.x.size(0), H = cfg.num_attention_heads, nope = cfg.qk_nope_head_dim,
                rope = cfg.qk_rope_head_dim, vd = cfg.v_head_dim, r = cfg.kv_lora_rank,
                qk = nope + rope;
  const Tensor d_attn = linear_backward(ctx.params, p + ".o_proj.weight", c.attn, dy);
  ops::AttentionGrads g = attention_backward_batched(
      c.q, c.k, c.v, float(cfg.softmax_scale()), d_attn.reshape({T, H, vd}), c.segments);

  // Split dk into the per-head k_nope part (joined with dv for kv_b_proj) and the shared k_pe.
  Tensor d_kv = Tensor::empty({T, H * (nope + vd)});
  Tensor d_k_pe = Tensor::zeros({T, 1, rope});
  const float* dk = g.dk.data<float>();
  const float* dv = g.dv.data<float>();
  float* dkv = d_kv.data<float>();
  float* dpe = d_k_pe.data<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float* dst = dkv + (t * H + h) * (nope + vd);
      const float* src = dk + (t * H + h) * qk;
      std::memcpy(dst, src, size_t(nope) * sizeof(float));
      std::memcpy(dst + nope, dv + (t * H + h) * vd, size_t(vd) * sizeof(float));
      for (int64_t j = 0; j < rope; ++j) dpe[t * rope + j] += src[nope + j];
    }
  rope_backward(ctx.rope, d_k_pe, c.segments);
  const Tensor d_c_kv = linear_backward(ctx.params, p + ".kv_b_proj.weight", c.c_kv, d_kv);
  const Tensor d_latent = norm_backward(ctx.params, p + ".kv_a_layernorm.weight",
                                        c.kv_a.slice(1, 0, r), kLatentNormEps, d_c_kv);
  // d kv_a = [d latent; d k_pe (un-roped)]
  Tensor d_kv_a = Tensor::empty({T, r + rope});
  float* dka = d_kv_a.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(dka + t * (r + rope), d_latent.data<float>() + t * r, size_t(r) * sizeof(float));
    std::memcpy(dka + t * (r + rope) + r, dpe + t * rope, size_t(rope) * sizeof(float));
  }
  Tensor dx = linear_backward(ctx.params, p + ".kv_a_proj_with_mqa.weight", c.x, d_kv_a);

  rope_backward(ctx.rope, g.dq.slice(2, nope, qk), c.segments);
  const Tensor dq_flat = g.dq.reshape({T, H * qk});
  if (cfg.q_lora_rank > 0) {
    const Tensor d_qan = linear_backward(ctx.params, p + ".q_b_proj.weight", c.q_a_normed, dq_flat);
    const Tensor d_qa =
        norm_backward(ctx.params, p + ".q_a_layernorm.weight", c.q_a, kLatentNormEps, d_qan);
    add_into(dx, linear_backward(ctx.params, p + ".q_a_proj.weight", c.x, d_qa));
  } else {
    add_into(dx, linear_backward(ctx.params, p + ".q_proj.weight", c.x, dq_flat));
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
  c.x = x.contiguous();
  c.q = linear_forward(ctx.params, p + ".q_proj.weight", c.x).reshape({T, H, hd});
  c.k = linear_forward(ctx.params, p + ".k_proj.weight", c.x).reshape({T, Hk, hd});
  c.v = linear_forward(ctx.params, p + ".v_proj.weight", c.x).reshape({T, Hk, hd});
  rope_batched(ctx.rope, c.q, segments);
  rope_batched(ctx.rope, c.k, segments);
  const float scale = float(1.0 / std::sqrt(double(hd)));
  c.attn = attention_batched(c.q, c.k, c.v, scale, segments);
  return linear_forward(ctx.params, p + ".o_proj.weight", c.attn);
}

Tensor mha_backward(const LayerContext& ctx, const std::string& p, const AttentionCache& c,
                    const Tensor& dy) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = c.x.size(0), H = cfg.num_attention_heads, Hk = mha_kv_heads(cfg),
                hd = mha_head_dim(cfg);
  const Tensor d_attn = linear_backward(ctx.params, p + ".o_proj.weight", c.attn, dy);
  const float scale = float(1.0 / std::sqrt(double(hd)));
  ops::AttentionGrads g =
      attention_backward_batched(c.q, c.k, c.v, scale, d_attn.reshape({T, H, hd}), c.segments);
  rope_backward(ctx.rope, g.dq, c.segments);
  rope_backward(ctx.rope, g.dk, c.segments);
  Tensor dx = linear_backward(ctx.params, p + ".q_proj.weight", c.x, g.dq.reshape({T, H * hd}));
  add_into(dx, linear_backward(ctx.params, p + ".k_proj.weight", c.x, g.dk.reshape({T, Hk * hd})));
  add_into(dx, linear_backward(ctx.params, p + ".v_proj.weight", c.x, g.dv.reshape({T, Hk * hd})));
  return dx;
}

}  // namespace

Tensor attention_forward(const LayerContext& ctx, const std::string& prefix, const Tensor& x,
                         const Segments& segments, AttentionCache& cache) {
  DSEEK_CHECK(!ctx.config.attention_bias,
              "[train] attention_bias: training supports attention without biases");
  check_segments(segments, x.size(0), prefix);
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
