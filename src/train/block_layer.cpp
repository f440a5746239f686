// Decoder layer for training: h = x + attn(input_layernorm(x)); out = h + ffn(post_attention_
// layernorm(h)), ffn the dense MLP or, where config.is_moe_layer(layer), the MoE. Backward: the
// residual passes dout through unchanged and each branch adds its input gradient.
#include "ops/activation.h"
#include "train/layers.h"

namespace dseek::train {
namespace {

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer); }

}  // namespace

Tensor block_forward(const LayerContext& ctx, int64_t layer, const Tensor& x,
                     const Segments& segments, const BalanceOptions& balance, BlockCache& c) {
  const std::string p = layer_prefix(layer);
  const double eps = ctx.config.rms_norm_eps;
  c.x = x.contiguous();
  const Tensor n1 = norm_forward(ctx.params, p + ".input_layernorm.weight", c.x, eps);
  c.h = attention_forward(ctx, p + ".self_attn", n1, segments, c.attn);
  ops::add_inplace(c.h, c.x);
  const Tensor n2 = norm_forward(ctx.params, p + ".post_attention_layernorm.weight", c.h, eps);
  c.is_moe = ctx.config.is_moe_layer(layer);
  Tensor out = c.is_moe ? moe_forward(ctx, p + ".mlp", n2, segments, balance, c.moe)
                        : mlp_forward(ctx.params, p + ".mlp", n2, c.mlp, ctx.synth);
  ops::add_inplace(out, c.h);
  return out;
}

Tensor block_backward(const LayerContext& ctx, int64_t layer, const BlockCache& c,
                      const Tensor& dy_in, float loss_scale) {
  const std::string p = layer_prefix(layer);
  const double eps = ctx.config.rms_norm_eps;
  const Tensor dy = dy_in.contiguous();
  const Tensor d_n2 = c.is_moe ? moe_backward(ctx, p + ".mlp", c.moe, dy, loss_scale)
                               : mlp_backward(ctx.params, p + ".mlp", c.mlp, dy, ctx.synth);
  Tensor dh = norm_backward(ctx.params, p + ".post_attention_layernorm.weight", c.h, eps, d_n2);
  ops::add_inplace(dh, dy);
  const Tensor d_n1 = attention_backward(ctx, p + ".self_attn", c.attn, dh);
  Tensor dx = norm_backward(ctx.params, p + ".input_layernorm.weight", c.x, eps, d_n1);
  ops::add_inplace(dx, dh);
  return dx;
}

}  // namespace dseek::train
