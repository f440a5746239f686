#include "model/moe_balance.h"

#include <algorithm>

#include "core/error.h"

namespace dseek {

namespace {

void check_routing(const Routing& r, const char* what) {
  DSEEK_CHECK(
      r.tokens > 0 && r.top_k > 0 && r.experts > 0 &&
          int64_t(r.expert_ids.size()) == r.tokens * r.top_k &&
          int64_t(r.scores.size()) == r.tokens * r.experts,
      "[moe] {}: routing of {} tokens × {} experts (top {}) is incomplete: {} ids, {} scores", what,
      r.tokens, r.experts, r.top_k, r.expert_ids.size(), r.scores.size());
  for (int32_t e : r.expert_ids) {
    DSEEK_CHECK(e >= 0 && e < r.experts, "[moe] {}: expert id {} out of range [0, {})", what, e,
                r.experts);
  }
}

// The loss over tokens [t0, t0 + n) as one group, added to `out` with weight 1/groups.
void add_group_loss(const Routing& r, int64_t t0, int64_t n, double alpha, bool normalize,
                    double groups, BalanceLoss& out) {
  const int64_t E = r.experts, K = r.top_k;
  const size_t experts = static_cast<size_t>(E);
  std::vector<double> f(experts, 0.0), P(experts, 0.0), sums(static_cast<size_t>(n), 1.0);
  for (int64_t t = t0; t < t0 + n; ++t) {
    for (int64_t k = 0; k < K; ++k) f[size_t(r.expert(t, k))] += 1.0;
  }
  for (double& v : f) v *= double(E) / (double(K) * double(n));
  for (int64_t t = t0; t < t0 + n; ++t) {
    const float* s = &r.scores[size_t(t * E)];
    double sum = 1.0;
    if (normalize) {
      sum = 0.0;
      for (int64_t e = 0; e < E; ++e) sum += s[e];
      DSEEK_CHECK(sum > 0.0, "[moe] sequence balance loss: token {} has scores summing to {}", t,
                  sum);
    }
    sums[size_t(t - t0)] = sum;
    for (int64_t e = 0; e < E; ++e) P[size_t(e)] += s[e] / sum / double(n);
  }
  double value = 0.0;
  for (int64_t e = 0; e < E; ++e) value += f[size_t(e)] * P[size_t(e)];
  out.value += alpha * value / groups;

  // dL/ds'_{t,i} = g_i = α f_i / (n · groups); through s' = s / Σs:
  // dL/ds_{t,j} = (g_j − Σ_i g_i s'_{t,i}) / Σs.
  std::vector<double> g(experts);
  for (int64_t e = 0; e < E; ++e) g[size_t(e)] = alpha * f[size_t(e)] / (double(n) * groups);
  for (int64_t t = t0; t < t0 + n; ++t) {
    const float* s = &r.scores[size_t(t * E)];
    float* grad = &out.grad_scores[size_t(t * E)];
    const double sum = sums[size_t(t - t0)];
    double dot = 0.0;
    if (normalize) {
      for (int64_t e = 0; e < E; ++e) dot += g[size_t(e)] * s[e] / sum;
    }
    for (int64_t e = 0; e < E; ++e) grad[e] = float((g[size_t(e)] - dot) / sum);
  }
}

}  // namespace

BalanceLoss expert_balance_loss(const Routing& routing, double alpha) {
  check_routing(routing, "expert balance loss");
  BalanceLoss out;
  out.grad_scores.assign(routing.scores.size(), 0.0f);
  add_group_loss(routing, 0, routing.tokens, alpha, false, 1.0, out);
  return out;
}

BalanceLoss sequence_balance_loss(const Routing& routing, int64_t seq_len, double alpha,
                                  bool normalize_scores) {
  DSEEK_CHECK(seq_len > 0 && routing.tokens % seq_len == 0,
              "[moe] sequence balance loss: {} tokens do not split into sequences of {}",
              routing.tokens, seq_len);
  return sequence_balance_loss(
      routing, std::vector<int64_t>(size_t(routing.tokens / seq_len), seq_len), alpha,
      normalize_scores);
}

BalanceLoss sequence_balance_loss(const Routing& routing, const std::vector<int64_t>& lengths,
                                  double alpha, bool normalize_scores) {
  check_routing(routing, "sequence balance loss");
  int64_t total = 0, sequences = 0;
  for (int64_t n : lengths) {
    DSEEK_CHECK(n >= 0, "[moe] sequence balance loss: negative sequence length {}", n);
    total += n;
    sequences += n > 0;
  }
  DSEEK_CHECK(total == routing.tokens,
              "[moe] sequence balance loss: sequence lengths sum to {}, the routing has {} tokens",
              total, routing.tokens);
  BalanceLoss out;
  out.grad_scores.assign(routing.scores.size(), 0.0f);
  int64_t start = 0;
  for (int64_t n : lengths) {
    if (n > 0) add_group_loss(routing, start, n, alpha, normalize_scores, double(sequences), out);
    start += n;
  }
  return out;
}

BalanceLoss device_balance_loss(const Routing& routing, int64_t devices, double alpha) {
  check_routing(routing, "device balance loss");
  const int64_t T = routing.tokens, E = routing.experts, K = routing.top_k;
  DSEEK_CHECK(devices > 0 && E % devices == 0,
              "[moe] device balance loss: {} experts do not split over {} devices", E, devices);
  const int64_t per_device = E / devices;
  const size_t D = static_cast<size_t>(devices);
  std::vector<double> f(D, 0.0), P(D, 0.0);
  for (int32_t e : routing.expert_ids) f[size_t(e / per_device)] += 1.0;
  // f'_d = mean over the device's experts of f_i = E/(K·T) · count_i.
  for (double& v : f) v *= double(E) / (double(K) * double(T)) / double(per_device);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      P[size_t(e / per_device)] += routing.scores[size_t(t * E + e)] / double(T);
    }
  }
  BalanceLoss out;
  for (size_t d = 0; d < D; ++d) out.value += alpha * f[d] * P[d];
  out.grad_scores.resize(routing.scores.size());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      out.grad_scores[size_t(t * E + e)] = float(alpha * f[size_t(e / per_device)] / double(T));
    }
  }
  return out;
}

double max_violation(const std::vector<int64_t>& load) {
  DSEEK_CHECK(!load.empty(), "[moe] max violation: no experts");
  double total = 0.0;
  for (int64_t n : load) total += double(n);
  const double mean = total / double(load.size());
  DSEEK_CHECK(mean > 0.0, "[moe] max violation: no tokens were routed");
  return (double(*std::max_element(load.begin(), load.end())) - mean) / mean;
}

void update_correction_bias(std::vector<float>& bias, const std::vector<int64_t>& load,
                            double gamma) {
  DSEEK_CHECK(bias.size() == load.size(), "[moe] bias update: {} biases for {} expert loads",
              bias.size(), load.size());
  if (load.empty()) return;
  double total = 0.0;
  for (int64_t n : load) total += double(n);
  const double mean = total / double(load.size());
  for (size_t e = 0; e < bias.size(); ++e) {
    const double diff = mean - double(load[e]);
    const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    bias[e] = float(double(bias[e]) + gamma * sign);
  }
}

}  // namespace dseek
