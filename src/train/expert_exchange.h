// The token exchange of one expert-parallel MoE layer on the ops path (ops/moe.h: the GPU's path,
// whose buffers the NCCL group moves; the CPU runs it too when LayerContext::moe_ops_on_cpu asks,
// with the MPI group). The layer's permuted rows (moe_dispatch's layout: sorted by expert, so the
// rows for the owner of experts [q·P, (q+1)·P) are one contiguous run) go to their owners; each
// owner runs its P experts as grouped GEMMs over the rows from every rank; the results come back to
// the same places, where moe_combine weighs them exactly as on one process.
//
// Layouts. What rank q sends arrives q-major: the rows from rank 0 (its rows for local expert 0,
// then 1, …), then rank 1's, …. The grouped GEMMs want each expert's rows together, and in the
// global batch's order (rank 0's, then rank 1's, …: the rows one process would see), so the
// received rows are reordered expert-major, (0, j), (1, j), …, (N−1, j) for j = 0 … P−1, with a
// row gather; the results take the inverse gather back. The plan (counts, both index maps, the
// local experts' offsets) is built on the host from the dispatch's offsets, which are copied back
// (a host synchronisation per MoE layer: the receive buffer's size depends on them), and the
// per-expert counts exchanged with the int64 all-to-all; the rows themselves never leave the
// device.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "ops/moe.h"

namespace dseek::train {

struct ExpertParallel;

// The capacity-free count exchange both expert-parallel paths start from (the ops path here, the
// CPU host loops in moe_layer_ep.cpp): each expert's rows out, each (source rank, local expert)'s
// rows in, and the receive buffer's layout.
struct ExchangeCounts {
  std::vector<int64_t> send_rows, recv_rows;  // per rank of the exchange group
  std::vector<int64_t> recv_per_expert;       // [N·P]: rows from rank q for local expert j
  std::vector<int64_t> recv_at;  // [N·P + 1]: row offset of (q, j) in the receive buffer, q-major
  int64_t local_rows = 0;        // rows this rank's experts compute (recv_at's last)
};

// Collective over ep.exchange: send_per_expert [E] is this rank's rows for each expert (grouped
// by expert, so the rows for rank q are the run of its experts [q·P, (q+1)·P)).
ExchangeCounts exchange_counts(const ExpertParallel& ep,
                               const std::vector<int64_t>& send_per_expert);

// Node-limited routing, checked: the most distinct owner ranks among any token's K experts
// (ids [T·K], row-major).
int64_t max_owner_ranks(const ExpertParallel& ep, const int32_t* ids, int64_t T, int64_t K);

struct ExpertExchange : ExchangeCounts {
  std::vector<int32_t> owner_order;   // expert-major row i = received row owner_order[i]
  std::vector<int32_t> source_order;  // received row r = expert-major row source_order[r]
  Tensor offsets;                     // [P + 1] i64 on the rows' device: the local experts' rows
  int64_t max_ranks = 0;              // the most ranks any token of this batch was sent to
};

// Collective over ep.exchange: exchanges the per-expert row counts of dispatch `d` (ids [T, K],
// the routing's, for max_ranks) and builds the plan.
ExpertExchange plan_expert_exchange(const ExpertParallel& ep, const ops::MoeDispatch& d,
                                    const Tensor& ids);
// Collective: rows in the dispatch's layout [T·K, D] → this rank's experts' rows, expert-major
// [local_rows, D] (the forward's tokens, the backward's output gradients).
Tensor send_to_owners(const ExpertParallel& ep, const ExpertExchange& plan, const Tensor& rows);
// Collective, the inverse: expert-major rows [local_rows, D] → the dispatch's layout [T·K, D] on
// the rank whose slots they are (the forward's outputs, the backward's input gradients).
Tensor return_to_sources(const ExpertParallel& ep, const ExpertExchange& plan, const Tensor& rows);

}  // namespace dseek::train
