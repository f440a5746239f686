// DeepSeekMoE layer for training (see layers.h). Forward: router logits z = x·W_gateᵀ, routing by
// route_from_logits (scores s = softmax|sigmoid(z); e_score_correction_bias steers the selection
// of noaux_tc gates only), each expert runs once on the rows routed to it, out[t] = Σ_k w[t,k] ·
// y_{e_k}(x_t) + shared(x_t).
//
// Backward:
//   experts:  dy_e rows = w[t,k]·dout[t]  → expert MLP backward → scatter-add into dx
//   weights:  g[t,k] = dout[t]·y_{e_k}(x_t);   w_k = f·a_k (/ (Σ_j a_j + 1e-20) when normalised),
//             a_k = s[t, e_k], f = routed_scaling_factor when the model type scales:
//               da_k = f·g_k                                  (not normalised)
//               da_k = f·(g_k/S − Σ_j g_j a_j / S²)           (normalised, S = Σ_j a_j + 1e-20)
//   balance:  ds += loss_scale · ∂(aux loss)/∂s   (moe_balance.h)
//   scores:   dz = ds ⊙ s ⊙ (1 − s)  (sigmoid)   or   dz = s ⊙ (ds − Σ_j ds_j s_j)  (softmax)
//   router:   dW_gate += dzᵀ·x,  dx += dz·W_gate
// The selection itself (top-k, groups, bias) is piecewise constant: it has no gradient.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "model/moe_balance.h"
#include "ops/linear.h"
#include "train/layers.h"

namespace dseek::train {
namespace {

std::string expert_prefix(const std::string& prefix, int64_t e) {
  return prefix + ".experts." + std::to_string(e);
}

}  // namespace

Tensor moe_forward(const LayerContext& ctx, const std::string& prefix, const Tensor& x,
                   const Segments& segments, const BalanceOptions& balance, MoeCache& c) {
  const ModelConfig& cfg = ctx.config;
  const int64_t T = x.size(0), D = cfg.hidden_size, E = cfg.n_routed_experts,
                K = cfg.num_experts_per_tok;
  c.x = x.contiguous();
  const Tensor logits = linear_forward(ctx.params, prefix + ".gate.weight", c.x);
  const float* bias = nullptr;
  if (cfg.topk_method == "noaux_tc")
    bias = ctx.params.value(prefix + ".gate.e_score_correction_bias").data<float>();
  c.routing = route_from_logits(cfg, logits, bias);

  // Group slots (t·K + k) by expert, stable: each expert's rows stay in token order.
  c.offsets.assign(size_t(E + 1), 0);
  for (int32_t e : c.routing.expert_ids) ++c.offsets[size_t(e) + 1];
  for (int64_t e = 0; e < E; ++e) c.offsets[size_t(e + 1)] += c.offsets[size_t(e)];
  c.slots.resize(size_t(T * K));
  std::vector<int64_t> next(c.offsets.begin(), c.offsets.end() - 1);
  for (int64_t s = 0; s < T * K; ++s) c.slots[size_t(next[size_t(c.routing.expert_ids[size_t(s)])]++)] = s;

  c.experts.assign(size_t(E), MlpCache{});
  c.expert_out = Tensor::empty({T * K, D});
  const float* xp = c.x.data<float>();
  float* yo = c.expert_out.data<float>();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = c.offsets[size_t(e)], rows = c.offsets[size_t(e) + 1] - begin;
    if (rows == 0) continue;
    Tensor gathered = Tensor::empty({rows, D});
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(gathered.data<float>() + i * D, xp + (c.slots[size_t(begin + i)] / K) * D,
                  size_t(D) * sizeof(float));
    const Tensor y = mlp_forward(ctx.params, expert_prefix(prefix, e), gathered, c.experts[size_t(e)]);
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(yo + c.slots[size_t(begin + i)] * D, y.data<float>() + i * D,
                  size_t(D) * sizeof(float));
  }

  // out[t] = Σ_k w·y in ascending expert order (the inference MoE's summation order).
  Tensor out = Tensor::empty({T, D});
  float* op = out.data<float>();
  std::vector<int64_t> order(static_cast<size_t>(K));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) order[size_t(k)] = k;
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return c.routing.expert(t, a) < c.routing.expert(t, b); });
    float* o = op + t * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t k : order) {
      const float w = c.routing.weight(t, k);
      const float* y = yo + (t * K + k) * D;
      for (int64_t j = 0; j < D; ++j) o[j] += y[j] * w;
    }
  }
  c.has_shared = cfg.n_shared_experts > 0;
  if (c.has_shared) {
    const Tensor shared = mlp_forward(ctx.params, prefix + ".shared_experts", c.x, c.shared);
    const float* sp = shared.data<float>();
    for (int64_t i = 0; i < T * D; ++i) op[i] += sp[i];
  }

  c.aux_loss = 0.0;
  c.aux_grad_scores.clear();
  if (balance.aux_loss != "none" && balance.alpha > 0.0) {
    BalanceLoss b;
    if (balance.aux_loss == "sequence") {
      b = sequence_balance_loss(c.routing, segments, balance.alpha, cfg.scoring_func == "sigmoid");
    } else if (balance.aux_loss == "expert") {
      b = expert_balance_loss(c.routing, balance.alpha);
    } else if (balance.aux_loss == "device") {
      b = device_balance_loss(c.routing, balance.devices, balance.alpha);
    } else {
      fail("[train] aux_loss '{}': expected none, sequence, expert or device", balance.aux_loss);
    }
    c.aux_loss = b.value;
    c.aux_grad_scores = std::move(b.grad_scores);
  }
  return out;
}

Tensor moe_backward(const LayerContext& ctx, const std::string& prefix, const MoeCache& c,
                    const Tensor& dy_in, float loss_scale) {
  const ModelConfig& cfg = ctx.config;
  const Tensor dy = dy_in.contiguous();
  const int64_t T = c.x.size(0), D = cfg.hidden_size, E = cfg.n_routed_experts,
                K = cfg.num_experts_per_tok;
  const Routing& r = c.routing;
  const float* dyp = dy.data<float>();
  const float* yo = c.expert_out.data<float>();

  Tensor dx = c.has_shared ? mlp_backward(ctx.params, prefix + ".shared_experts", c.shared, dy)
                           : Tensor::zeros({T, D});
  float* dxp = dx.data<float>();

  // Routed experts: each expert's output rows were scaled by their routing weight.
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = c.offsets[size_t(e)], rows = c.offsets[size_t(e) + 1] - begin;
    if (rows == 0) continue;
    Tensor d_rows = Tensor::empty({rows, D});
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t slot = c.slots[size_t(begin + i)];
      const float w = r.weights[size_t(slot)];
      const float* src = dyp + (slot / K) * D;
      float* dst = d_rows.data<float>() + i * D;
      for (int64_t j = 0; j < D; ++j) dst[j] = src[j] * w;
    }
    const Tensor d_in = mlp_backward(ctx.params, expert_prefix(prefix, e), c.experts[size_t(e)], d_rows);
    for (int64_t i = 0; i < rows; ++i) {
      float* dst = dxp + (c.slots[size_t(begin + i)] / K) * D;
      const float* src = d_in.data<float>() + i * D;
      for (int64_t j = 0; j < D; ++j) dst[j] += src[j];
    }
  }

  // Gradient of the scores: through the combine weights, plus the balance loss.
  const WeightRule rule = routing_weight_rule(cfg);
  const double f = rule.scale ? cfg.routed_scaling_factor : 1.0;
  std::vector<float> ds(size_t(T * E), 0.0f);
  if (!c.aux_grad_scores.empty())
    for (size_t i = 0; i < ds.size(); ++i) ds[i] = loss_scale * c.aux_grad_scores[i];
  std::vector<double> g(static_cast<size_t>(K)), a(static_cast<size_t>(K));
  for (int64_t t = 0; t < T; ++t) {
    double S = 0.0, ga = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const float* y = yo + (t * K + k) * D;
      double dot = 0.0;
      for (int64_t j = 0; j < D; ++j) dot += double(dyp[t * D + j]) * double(y[j]);
      g[size_t(k)] = dot;
      a[size_t(k)] = r.scores[size_t(t * E + r.expert(t, k))];
      S += a[size_t(k)];
      ga += dot * a[size_t(k)];
    }
    S += 1e-20;
    for (int64_t k = 0; k < K; ++k) {
      const double da = rule.normalise ? f * (g[size_t(k)] / S - ga / (S * S)) : f * g[size_t(k)];
      ds[size_t(t * E + r.expert(t, k))] += float(da);
    }
  }

  // Through softmax / sigmoid to the router logits.
  Tensor dz = Tensor::empty({T, E});
  float* dzp = dz.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* s = &r.scores[size_t(t * E)];
    const float* d = &ds[size_t(t * E)];
    if (cfg.scoring_func == "sigmoid") {
      for (int64_t e = 0; e < E; ++e) dzp[t * E + e] = d[e] * s[e] * (1.0f - s[e]);
    } else {
      double dot = 0.0;
      for (int64_t e = 0; e < E; ++e) dot += double(d[e]) * double(s[e]);
      for (int64_t e = 0; e < E; ++e) dzp[t * E + e] = s[e] * float(double(d[e]) - dot);
    }
  }
  const Tensor dx_gate = linear_backward(ctx.params, prefix + ".gate.weight", c.x, dz);
  const float* dg = dx_gate.data<float>();
  for (int64_t i = 0; i < T * D; ++i) dxp[i] += dg[i];
  return dx;
}

}  // namespace dseek::train
