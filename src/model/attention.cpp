#include "model/attention.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/load_context.h"
#include "model/paged_kv_cache.h"
#include "ops/attention.h"
#include "ops/rows.h"

namespace dseek {
Attention::Attention(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
                     const std::string& prefix)
    : rope_(rope),
      n_heads_(config.num_attention_heads),
      n_kv_heads_(config.num_key_value_heads > 0 ? config.num_key_value_heads
                                                 : config.num_attention_heads),
      head_dim_(config.head_dim > 0 ? config.head_dim
                                    : config.hidden_size / config.num_attention_heads) {
  const int64_t D = config.hidden_size, H = n_heads_, Hk = n_kv_heads_, hd = head_dim_;
  DSEEK_CHECK(Hk > 0 && H % Hk == 0, "[model] {}: {} heads not a multiple of {} key/value heads",
              prefix, H, Hk);
  // transformers' LlamaAttention: scaling = head_dim ** -0.5.
  scale_ = float(1.0 / std::sqrt(double(hd)));
  q_proj_ = ctx.linear(prefix + ".q_proj.weight", {H * hd, D});
  k_proj_ = ctx.linear(prefix + ".k_proj.weight", {Hk * hd, D});
  v_proj_ = ctx.linear(prefix + ".v_proj.weight", {Hk * hd, D});
  o_proj_ = ctx.linear(prefix + ".o_proj.weight", {D, H * hd});
  if (config.attention_bias) {
    q_bias_ = ctx.weight(prefix + ".q_proj.bias", {H * hd});
    k_bias_ = ctx.weight(prefix + ".k_proj.bias", {Hk * hd});
    v_bias_ = ctx.weight(prefix + ".v_proj.bias", {Hk * hd});
    o_bias_ = ctx.optional_weight(prefix + ".o_proj.bias", {D});
  }
}

void Attention::project_unroped(const Tensor& x, Tensor& q, Tensor& k, Tensor& v) const {
  const int64_t T = x.size(0);
  q = apply_linear(x, q_proj_, q_bias_).reshape({T, n_heads_, head_dim_});
  k = apply_linear(x, k_proj_, k_bias_).reshape({T, n_kv_heads_, head_dim_});
  v = apply_linear(x, v_proj_, v_bias_).reshape({T, n_kv_heads_, head_dim_});
}

void Attention::project(const Tensor& x, int64_t pos0, Tensor& q, Tensor& k, Tensor& v) const {
  project_unroped(x, q, k, v);
  apply_rope(rope_, q, pos0);
  apply_rope(rope_, k, pos0);
}

Tensor Attention::output(const Tensor& attn) const {
  const int64_t T = attn.size(0);
  return apply_linear(attn.reshape({T, n_heads_ * head_dim_}), o_proj_, o_bias_);
}

Tensor Attention::forward(const Tensor& x) const {
  Tensor q, k, v;
  project(x, 0, q, k, v);
  return output(ops::causal_attention(q, k, v, scale_));
}

Tensor Attention::forward_cached(const Tensor& x, KVCache& cache, int64_t layer) const {
  const int64_t T = x.size(0), pos0 = cache.size();
  cache.check_room(T);
  Tensor q, k, v;
  project(x, pos0, q, k, v);
  const int64_t width = n_kv_heads_ * head_dim_, S = pos0 + T;
  const Tensor& keys = cache.keys(layer);
  const Tensor& values = cache.values(layer);
  if (x.is_cuda()) {  // device copies into the cache rows, in the activation dtype
    keys.slice(0, pos0, S).copy_from(k.reshape({T, width}));
    values.slice(0, pos0, S).copy_from(v.reshape({T, width}));
  } else {
    std::memcpy(keys.data<float>() + pos0 * width, k.data<float>(),
                size_t(T * width) * sizeof(float));
    std::memcpy(values.data<float>() + pos0 * width, v.data<float>(),
                size_t(T * width) * sizeof(float));
  }
  const Tensor k_all = keys.slice(0, 0, S).reshape({S, n_kv_heads_, head_dim_});
  const Tensor v_all = values.slice(0, 0, S).reshape({S, n_kv_heads_, head_dim_});
  return output(ops::causal_attention(q, k_all, v_all, scale_));
}

Tensor Attention::forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                                PagedKVCache& cache, int64_t layer) const {
  const int64_t width = n_kv_heads_ * head_dim_;
  DSEEK_CHECK(cache.spec(layer).key_width == width && cache.spec(layer).value_width == width,
              "[model] paged cache layer {} has widths {} / {}, attention needs {} / {}", layer,
              cache.spec(layer).key_width, cache.spec(layer).value_width, width, width);
  Tensor q, k, v;
  project_unroped(x, q, k, v);
  const int64_t pt = cache.page_tokens(), N = x.size(0);
  // Every sequence's rows at once: rotate at their own positions, write to their own pool slots.
  const Tensor index = paged_row_index(seqs, pt, x.device());
  const Tensor positions = index.select(0, 0), slots = index.select(0, 1);
  apply_rope(rope_, q, positions);
  apply_rope(rope_, k, positions);
  ops::scatter_rows(cache.keys(layer), k.reshape({N, width}), slots);
  ops::scatter_rows(cache.values(layer), v.reshape({N, width}), slots);
  return output(ops::paged_attention(q, cache.keys(layer), cache.values(layer), n_kv_heads_, pt,
                                     seqs, scale_));
}

}  // namespace dseek
