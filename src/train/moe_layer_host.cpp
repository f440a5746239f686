// The CPU path of the MoE layer's routed experts (layers.h, maths in moe_layer.cpp): a host
// Routing, a counting sort of the slots by expert, each expert's MLP once on its gathered rows,
// and the router backward as plain loops in double. Kept as it was before the GPU path so CPU
// training is bit-identical to earlier runs; the GPU path (moe_layer.cpp) composes ops/moe.h.
#include <algorithm>
#include <cstring>

#include "train/layers.h"

namespace dseek::train {
namespace {

std::string expert_prefix(const std::string& prefix, int64_t e) {
  return prefix + ".experts." + std::to_string(e);
}

// Every expert on this process: each expert's MLP once on its gathered rows.
void local_experts_forward(const LayerContext& ctx, const std::string& prefix, MoeCache& cache) {
  MoeHostCache& c = cache.host;
  const int64_t T = cache.x.size(0), D = ctx.config.hidden_size, E = ctx.config.n_routed_experts,
                K = ctx.config.num_experts_per_tok;
  c.experts.assign(size_t(E), MlpCache{});
  c.expert_out = Tensor::empty({T * K, D});
  const float* xp = cache.x.data<float>();
  float* yo = c.expert_out.data<float>();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = c.offsets[size_t(e)], rows = c.offsets[size_t(e) + 1] - begin;
    if (rows == 0) continue;
    Tensor gathered = Tensor::empty({rows, D});
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(gathered.data<float>() + i * D, xp + (c.slots[size_t(begin + i)] / K) * D,
                  size_t(D) * sizeof(float));
    const Tensor y =
        mlp_forward(ctx.params, expert_prefix(prefix, e), gathered, c.experts[size_t(e)]);
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(yo + c.slots[size_t(begin + i)] * D, y.data<float>() + i * D,
                  size_t(D) * sizeof(float));
  }
}

}  // namespace

Tensor moe_routed_forward_host(const LayerContext& ctx, const std::string& prefix,
                               const Tensor& logits, MoeCache& cache) {
  const ModelConfig& cfg = ctx.config;
  MoeHostCache& c = cache.host;
  const int64_t T = cache.x.size(0), D = cfg.hidden_size, E = cfg.n_routed_experts,
                K = cfg.num_experts_per_tok;
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
  for (int64_t s = 0; s < T * K; ++s)
    c.slots[size_t(next[size_t(c.routing.expert_ids[size_t(s)])]++)] = s;

  if (ctx.expert_parallel)
    moe_experts_forward_ep(ctx, prefix, cache);  // the experts on their owners (moe_layer_ep.cpp)
  else
    local_experts_forward(ctx, prefix, cache);
  const float* yo = c.expert_out.data<float>();

  // out[t] = Σ_k w·y in ascending expert order (the inference MoE's summation order).
  Tensor out = Tensor::empty({T, D});
  float* op = out.data<float>();
  std::vector<int64_t> order(static_cast<size_t>(K));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) order[size_t(k)] = k;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return c.routing.expert(t, a) < c.routing.expert(t, b);
    });
    float* o = op + t * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t k : order) {
      const float w = c.routing.weight(t, k);
      const float* y = yo + (t * K + k) * D;
      for (int64_t j = 0; j < D; ++j) o[j] += y[j] * w;
    }
  }
  return out;
}

Tensor moe_routed_backward_host(const LayerContext& ctx, const std::string& prefix,
                                const MoeCache& cache, const Tensor& dy, float loss_scale,
                                Tensor& dx) {
  const ModelConfig& cfg = ctx.config;
  const MoeHostCache& c = cache.host;
  const int64_t T = cache.x.size(0), D = cfg.hidden_size, E = cfg.n_routed_experts,
                K = cfg.num_experts_per_tok;
  const Routing& r = c.routing;
  const float* dyp = dy.data<float>();
  const float* yo = c.expert_out.data<float>();
  float* dxp = dx.data<float>();

  // Routed experts: each expert's output rows were scaled by their routing weight.
  if (ctx.expert_parallel) moe_experts_backward_ep(ctx, prefix, cache, dy, dx);
  const int64_t local_experts = ctx.expert_parallel ? 0 : E;  // expert parallel: done above
  for (int64_t e = 0; e < local_experts; ++e) {
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
    const Tensor d_in =
        mlp_backward(ctx.params, expert_prefix(prefix, e), c.experts[size_t(e)], d_rows);
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
  if (!cache.aux_grad_scores.empty())
    for (size_t i = 0; i < ds.size(); ++i) ds[i] = loss_scale * cache.aux_grad_scores[i];
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
  return dz;
}

}  // namespace dseek::train
