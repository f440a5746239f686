// The expert-parallel token exchange of the ops path (see expert_exchange.h).
#include "train/expert_exchange.h"

#include <algorithm>

#include "core/error.h"
#include "ops/embedding.h"
#include "train/expert_parallel.h"

namespace dseek::train {
namespace {

// out[i] = table[index[i]]: ops::embedding is exactly a row gather (any row width, the table's
// dtype kept on a GPU; the CPU op gathers f32 rows, the only activations it has).
Tensor gather_rows(const Tensor& table, const std::vector<int32_t>& index) {
  const int64_t D = table.size(1);
  if (index.empty()) return Tensor::empty({0, D}, table.dtype(), table.device());
  return ops::embedding(table, index, table.dtype());
}

}  // namespace

ExchangeCounts exchange_counts(const ExpertParallel& ep,
                               const std::vector<int64_t>& send_per_expert) {
  const int N = ep.ranks();
  const int64_t P = ep.per_rank();
  DSEEK_CHECK(int64_t(send_per_expert.size()) == int64_t(N) * P,
              "[train] expert parallel: {} expert counts for {} ranks of {} experts",
              send_per_expert.size(), N, P);
  ExchangeCounts x;
  x.recv_per_expert.assign(send_per_expert.size(), 0);
  ep.exchange->all_to_all(send_per_expert, x.recv_per_expert);
  x.send_rows.assign(size_t(N), 0);
  x.recv_rows.assign(size_t(N), 0);
  x.recv_at.assign(size_t(N * P) + 1, 0);
  for (int q = 0; q < N; ++q)
    for (int64_t j = 0; j < P; ++j) {
      const size_t b = size_t(q * P + j);
      x.send_rows[size_t(q)] += send_per_expert[b];
      x.recv_rows[size_t(q)] += x.recv_per_expert[b];
      x.recv_at[b + 1] = x.recv_at[b] + x.recv_per_expert[b];
    }
  x.local_rows = x.recv_at.back();
  return x;
}

int64_t max_owner_ranks(const ExpertParallel& ep, const int32_t* ids, int64_t T, int64_t K) {
  int64_t most = 0;
  std::vector<int32_t> owners(static_cast<size_t>(K));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) owners[size_t(k)] = int32_t(ep.owner(ids[t * K + k]));
    std::sort(owners.begin(), owners.end());
    most = std::max<int64_t>(most, std::unique(owners.begin(), owners.end()) - owners.begin());
  }
  return most;
}

ExpertExchange plan_expert_exchange(const ExpertParallel& ep, const ops::MoeDispatch& d,
                                    const Tensor& ids) {
  const int N = ep.ranks();
  const int64_t E = d.experts, P = ep.per_rank();
  DSEEK_CHECK(E == ep.experts && E == int64_t(N) * P,
              "[train] expert parallel: {} experts over {} ranks, the layer has {}", ep.experts, N,
              E);
  // Rows per expert out: the dispatch's group sizes.
  const Tensor offsets = d.offsets.to(Device::CPU);
  const int64_t* o = offsets.data<int64_t>();
  std::vector<int64_t> send_per_expert(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) send_per_expert[size_t(e)] = o[e + 1] - o[e];
  ExpertExchange x;
  static_cast<ExchangeCounts&>(x) = exchange_counts(ep, send_per_expert);
  DSEEK_CHECK(x.local_rows < (int64_t(1) << 31),
              "[train] expert parallel: {} rows for one rank's experts (at most 2^31 - 1)",
              x.local_rows);
  // The expert-major order over the received rows.
  x.owner_order.reserve(size_t(x.local_rows));
  std::vector<int64_t> local(size_t(P) + 1, 0);
  for (int64_t j = 0; j < P; ++j) {
    for (int q = 0; q < N; ++q) {
      const size_t b = size_t(q * P + j);
      for (int64_t r = x.recv_at[b]; r < x.recv_at[b + 1]; ++r) x.owner_order.push_back(int32_t(r));
    }
    local[size_t(j + 1)] = int64_t(x.owner_order.size());
  }
  x.source_order.assign(size_t(x.local_rows), 0);
  for (size_t i = 0; i < x.owner_order.size(); ++i)
    x.source_order[size_t(x.owner_order[i])] = int32_t(i);
  Tensor host_offsets = Tensor::empty({P + 1}, DType::I64);
  std::copy(local.begin(), local.end(), host_offsets.data<int64_t>());
  x.offsets = host_offsets.to(d.offsets.device());

  const Tensor host_ids = ids.to(Device::CPU).contiguous();
  x.max_ranks = max_owner_ranks(ep, host_ids.data<int32_t>(), host_ids.size(0), host_ids.size(1));
  return x;
}

Tensor send_to_owners(const ExpertParallel& ep, const ExpertExchange& plan, const Tensor& rows) {
  const Tensor send = rows.contiguous();
  Tensor received = Tensor::empty({plan.local_rows, send.size(1)}, send.dtype(), send.device());
  ep.exchange->all_to_all_v_rows(send, plan.send_rows, received, plan.recv_rows);
  return gather_rows(received, plan.owner_order);
}

Tensor return_to_sources(const ExpertParallel& ep, const ExpertExchange& plan, const Tensor& rows) {
  DSEEK_CHECK(rows.size(0) == plan.local_rows,
              "[train] expert parallel: {} result rows for {} received", rows.size(0),
              plan.local_rows);
  const Tensor send = gather_rows(rows.contiguous(), plan.source_order);
  int64_t total = 0;
  for (int64_t n : plan.send_rows) total += n;
  Tensor back = Tensor::empty({total, send.size(1)}, send.dtype(), send.device());
  ep.exchange->all_to_all_v_rows(send, plan.recv_rows, back, plan.send_rows);
  return back;
}

}  // namespace dseek::train
