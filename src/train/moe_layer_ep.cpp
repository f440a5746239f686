// The expert-parallel half of the CPU MoE layer (train/expert_parallel.h): the routed experts'
// dispatch / expert MLPs / combine exchanges, forward and backward, and the expert- and
// device-level balance losses over the global batch. moe_layer_host.cpp routes and sorts the slots
// and weights the outputs exactly as on one process; only where the expert rows are computed
// changes.
//
// Layouts. Source side: the T·K slots sorted by expert (MoeHostCache::slots), so the rows for
// rank q are the contiguous run of its experts [q·P, (q+1)·P). Owner side: the rows received from
// rank q for local expert j sit at row offset Σ of the counts before (q, j) in q-major order;
// expert j's input is the rows of (0, j), (1, j), …, (N−1, j) stacked — the group's batch order.
// q is a rank within the expert-parallel group, whose own communicator (ExpertParallel::exchange)
// the exchanges run on.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "train/expert_parallel.h"
#include "train/layers.h"

namespace dseek::train {
namespace {

std::string expert_prefix(const std::string& prefix, int64_t e) {
  return prefix + ".experts." + std::to_string(e);
}

// Elements (rows · D) per rank, all_to_all_v's counts.
std::vector<int64_t> elements(const std::vector<int64_t>& rows, int64_t D) {
  std::vector<int64_t> out(rows);
  for (int64_t& n : out) n *= D;
  return out;
}

// Local expert j's rows out of the receive buffer, stacked in source-rank order.
Tensor gather_expert_rows(const ExpertParallel& ep, const ExchangeCounts& k,
                          const std::vector<float>& buffer, int64_t j, int64_t rows, int64_t D) {
  Tensor out = Tensor::empty({rows, D});
  int64_t at = 0;
  for (int q = 0; q < ep.ranks(); ++q) {
    const size_t b = size_t(q * ep.per_rank() + j);
    const int64_t n = k.recv_per_expert[b];
    std::memcpy(out.data<float>() + at * D, buffer.data() + k.recv_at[b] * D,
                size_t(n * D) * sizeof(float));
    at += n;
  }
  return out;
}

// The inverse: expert j's result rows back to their places in a buffer of the receive layout.
void scatter_expert_rows(const ExpertParallel& ep, const ExchangeCounts& k, const Tensor& rows,
                         int64_t j, int64_t D, std::vector<float>& buffer) {
  int64_t at = 0;
  for (int q = 0; q < ep.ranks(); ++q) {
    const size_t b = size_t(q * ep.per_rank() + j);
    const int64_t n = k.recv_per_expert[b];
    std::memcpy(buffer.data() + k.recv_at[b] * D, rows.data<float>() + at * D,
                size_t(n * D) * sizeof(float));
    at += n;
  }
}

int64_t expert_rows(const ExpertParallel& ep, const ExchangeCounts& k, int64_t j) {
  int64_t rows = 0;
  for (int q = 0; q < ep.ranks(); ++q) rows += k.recv_per_expert[size_t(q * ep.per_rank() + j)];
  return rows;
}

}  // namespace

void moe_experts_forward_ep(const LayerContext& ctx, const std::string& prefix, MoeCache& cache) {
  const ExpertParallel& ep = *ctx.expert_parallel;
  dist::ProcessGroup& group = *ep.exchange;
  MoeHostCache& c = cache.host;
  const int64_t T = cache.x.size(0), D = ctx.config.hidden_size, E = ctx.config.n_routed_experts,
                K = ctx.config.num_experts_per_tok, P = ep.per_rank();
  DSEEK_CHECK(ep.experts == E && E % ep.ranks() == 0,
              "[train] expert parallel: {} experts over {} ranks, the layer has {}", ep.experts,
              ep.ranks(), E);

  // Rows per expert out, rows per (source rank, local expert) in: the capacity-free count
  // exchange (the block for group rank q: the counts of its P experts).
  std::vector<int64_t> send_per_expert(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e)
    send_per_expert[size_t(e)] = c.offsets[size_t(e + 1)] - c.offsets[size_t(e)];
  c.ep_counts = exchange_counts(ep, send_per_expert);
  const ExchangeCounts& k = c.ep_counts;
  const std::vector<int64_t> send_elements = elements(k.send_rows, D),
                             recv_elements = elements(k.recv_rows, D);

  // Dispatch: slot i's token row, in slot (= destination) order.
  const float* xp = cache.x.data<float>();
  std::vector<float> send(size_t(T * K * D)), recv(size_t(k.local_rows * D));
  for (int64_t i = 0; i < T * K; ++i)
    std::memcpy(send.data() + i * D, xp + (c.slots[size_t(i)] / K) * D, size_t(D) * sizeof(float));
  group.all_to_all_v(send, send_elements, recv, recv_elements);

  // The local experts, each once over its rows from every rank.
  c.experts.assign(size_t(P), MlpCache{});
  std::vector<float> result(recv.size());
  for (int64_t j = 0; j < P; ++j) {
    const int64_t rows = expert_rows(ep, k, j);
    if (rows == 0) continue;
    const Tensor in = gather_expert_rows(ep, k, recv, j, rows, D);
    const Tensor y =
        mlp_forward(ctx.params, expert_prefix(prefix, ep.first() + j), in, c.experts[size_t(j)]);
    scatter_expert_rows(ep, k, y, j, D, result);
  }

  // Combine: the outputs return in slot order.
  group.all_to_all_v(result, recv_elements, send, send_elements);
  c.expert_out = Tensor::empty({T * K, D});
  float* yo = c.expert_out.data<float>();
  for (int64_t i = 0; i < T * K; ++i)
    std::memcpy(yo + c.slots[size_t(i)] * D, send.data() + i * D, size_t(D) * sizeof(float));

  // Node-limited routing: the most ranks any token of this batch was sent to.
  c.ep_max_ranks = max_owner_ranks(ep, c.routing.expert_ids.data(), T, K);
}

void moe_experts_backward_ep(const LayerContext& ctx, const std::string& prefix,
                             const MoeCache& cache, const Tensor& dy, Tensor& dx) {
  const ExpertParallel& ep = *ctx.expert_parallel;
  dist::ProcessGroup& group = *ep.exchange;
  const MoeHostCache& c = cache.host;
  const int64_t T = cache.x.size(0), D = ctx.config.hidden_size, K = ctx.config.num_experts_per_tok,
                P = ep.per_rank();
  const ExchangeCounts& k = c.ep_counts;
  const std::vector<int64_t> send_elements = elements(k.send_rows, D),
                             recv_elements = elements(k.recv_rows, D);

  // The gradient of each slot's unweighted output: its token's dy times its routing weight.
  const float* dyp = dy.data<float>();
  std::vector<float> send(size_t(T * K * D)), recv(size_t(k.local_rows * D));
  for (int64_t i = 0; i < T * K; ++i) {
    const int64_t slot = c.slots[size_t(i)];
    const float w = c.routing.weights[size_t(slot)];
    const float* src = dyp + (slot / K) * D;
    float* dst = send.data() + i * D;
    for (int64_t j = 0; j < D; ++j) dst[j] = src[j] * w;
  }
  group.all_to_all_v(send, send_elements, recv, recv_elements);

  std::vector<float> result(recv.size());
  for (int64_t j = 0; j < P; ++j) {
    const int64_t rows = expert_rows(ep, k, j);
    if (rows == 0) continue;
    const Tensor d_rows = gather_expert_rows(ep, k, recv, j, rows, D);
    const Tensor d_in = mlp_backward(ctx.params, expert_prefix(prefix, ep.first() + j),
                                     c.experts[size_t(j)], d_rows);
    scatter_expert_rows(ep, k, d_in, j, D, result);
  }
  group.all_to_all_v(result, recv_elements, send, send_elements);

  // Added in slot order = ascending expert, rows in token order: one process's order.
  float* dxp = dx.data<float>();
  for (int64_t i = 0; i < T * K; ++i) {
    float* dst = dxp + (c.slots[size_t(i)] / K) * D;
    const float* src = send.data() + i * D;
    for (int64_t j = 0; j < D; ++j) dst[j] += src[j];
  }
}

BalanceLoss global_balance_loss(const ExpertParallel& ep, const Routing& routing, int64_t devices,
                                double alpha) {
  const int64_t T = routing.tokens, E = routing.experts, K = routing.top_k;
  DSEEK_CHECK(devices > 0 && E % devices == 0,
              "[moe] device balance loss: {} experts do not split over {} devices", E, devices);
  const int64_t per_device = E / devices;
  // [count_d, Σ_t s_{t,d}] per group, then the token count: summed over the ranks.
  std::vector<double> sums(size_t(2 * devices + 1), 0.0);
  for (int32_t e : routing.expert_ids) sums[size_t(e / per_device)] += 1.0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      sums[size_t(devices + e / per_device)] += routing.scores[size_t(t * E + e)];
  sums.back() = double(T);
  ep.group->all_reduce(std::span<double>(sums));
  const double Tg = sums.back();
  BalanceLoss out;
  std::vector<double> f(static_cast<size_t>(devices));
  for (int64_t d = 0; d < devices; ++d) {
    // f'_d = mean over the group's experts of E/(K·T)·count_i; P'_d = Σ_{i∈group} P_i.
    f[size_t(d)] = sums[size_t(d)] * double(E) / (double(K) * Tg) / double(per_device);
    out.value += alpha * f[size_t(d)] * (sums[size_t(devices + d)] / Tg);
  }
  // ∂L/∂s_{t,i} = α f'_d / T_global; times W because every rank's backward scales its loss by
  // 1/W (the ranks' gradients sum to the gradient of the mean of their identical L's).
  const double n = double(ep.group->size());
  out.grad_scores.resize(routing.scores.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      out.grad_scores[size_t(t * E + e)] = float(n * alpha * f[size_t(e / per_device)] / Tg);
  return out;
}

}  // namespace dseek::train
