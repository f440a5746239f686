// Expert parallelism's token exchange (train/expert_exchange.h) on N ranks: each rank's T tokens
// routed top-K over E experts uniformly at random (rank r owns experts [r·E/N, (r+1)·E/N)), their
// hidden rows sent to the experts' owners and back, as an expert-parallel MoE layer does.
//   mpirun -np N --bind-to none bench_alltoall [--gpu] [tokens (4096)] [hidden (2048)]
//                                              [experts (64)] [top_k (6)] [reps (10)]
// --gpu: one GPU per rank, the NCCL group (rows in bf16); otherwise CPU ranks and MPI (rows in
// f32, the CPU's activations). Rows of the table, each the median over reps of the slowest rank:
//   all_to_all_v_rows    one dispatch: the permuted rows to their owners (NCCL send/receive pairs
//                        in one group call; MPI_Alltoallv)
//   dispatch + combine   the layer's whole exchange, both ways: the count exchange and plan (a
//                        device→host copy of the offsets), rows out, the expert-major gather, its
//                        inverse, rows back
//   host staged (--gpu)  the same dispatch through host memory: copy out, MPI_Alltoallv, copy in
//                        (the naive way)
//   pair swap (link)     ranks 0↔1, 2↔3, … swap one buffer of the dispatch's off-rank size
//                        through the same call: the link as the library drives it, both ways
//   device copy / memcpy rank 0 copies a dispatch-sized buffer alone (memory, not the link)
// GB/s: the bytes a rank sends to other ranks (the mean over ranks) over the time.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/cuda.h"
#include "core/tensor.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"
#include "ops/moe.h"
#include "random_routing.h"
#include "train/expert_exchange.h"
#include "train/expert_parallel.h"

using namespace dseek;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Settings {
  bool gpu = false;
  int64_t tokens = 4096, hidden = 2048, experts = 64, top_k = 6;
  int reps = 10;
};

// Median over reps of the slowest rank's time of op (after one warm-up call).
double time_op(dist::ProcessGroup& world, const std::function<void()>& op, int reps) {
  op();
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    world.barrier();
    const double t0 = now();
    op();
    // Every rank's time in its own slot of a summed vector: the slowest is its maximum.
    std::vector<double> all(size_t(world.size()), 0.0);
    all[size_t(world.rank())] = now() - t0;
    world.all_reduce(std::span<double>(all));
    times.push_back(*std::max_element(all.begin(), all.end()));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void run(const Settings& s) {
  dist::ProcessGroup& world = dist::world();
  std::unique_ptr<dist::ProcessGroup> nccl;
  if (s.gpu) {
    dist::select_rank_gpu(world);
    nccl = dist::make_nccl_group(world);
  }
  dist::ProcessGroup& group = s.gpu ? *nccl : world;
  const Device device = s.gpu ? Device::CUDA : Device::CPU;
  const DType act = s.gpu ? DType::BF16 : DType::F32;
  const int rank = world.rank(), N = world.size();
  const int64_t T = s.tokens, D = s.hidden, E = s.experts, K = s.top_k;
  if (E % N != 0 || K > E) {
    if (rank == 0)
      std::fprintf(stderr, "bench_alltoall: %d ranks must divide %lld experts\n", N,
                   static_cast<long long>(E));
    dist::abort_world(1);
    return;
  }
  const auto sync = [&] {
    if (s.gpu) cuda::synchronize();
  };

  train::ExpertParallel ep;
  ep.group = &group;
  ep.experts = E;
  ep.size = N;
  ep.exchange = group.split(0);

  std::mt19937 rng(uint32_t(1234 + rank));
  const Tensor ids = bench::random_topk_ids(T, E, K, rng, device);
  const ops::MoeDispatch d = ops::moe_dispatch(ids, E);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x_host(size_t(T * D));
  for (float& v : x_host) v = normal(rng);
  const Tensor x = Tensor::from_vector(x_host, {T, D}).to(act).to(device);
  const Tensor x_perm = ops::moe_permute(x, d);
  const train::ExpertExchange plan = train::plan_expert_exchange(ep, d, ids);
  const int64_t row_bytes = D * int64_t(dtype_size(act));

  // Bytes this rank sends to other ranks, and their mean over the ranks.
  int64_t off_rows = 0;
  for (int q = 0; q < N; ++q)
    if (q != rank) off_rows += plan.send_rows[size_t(q)];
  std::vector<double> off(size_t(N), 0.0);
  off[size_t(rank)] = double(off_rows * row_bytes);
  world.all_reduce(std::span<double>(off));
  double mean_off = 0;
  for (double b : off) mean_off += b / N;

  if (rank == 0) {
    std::printf(
        "expert-parallel token exchange over %d ranks (%s): %lld tokens a rank, top-%lld of %lld "
        "experts, hidden %lld in %s (%lld B a row); %.1f MiB a rank to other ranks (mean), "
        "%d reps, median of the slowest rank\n",
        N, s.gpu ? ("one GPU each, NCCL; " + cuda::describe()).c_str() : "CPU ranks, MPI",
        static_cast<long long>(T), static_cast<long long>(K), static_cast<long long>(E),
        static_cast<long long>(D), std::string(dtype_name(act)).c_str(),
        static_cast<long long>(row_bytes), mean_off / (1 << 20), s.reps);
    std::printf("%-44s %10s %12s\n", "exchange", "ms", "GB/s a rank");
  }
  const auto row = [&](const std::string& name, double t, double bytes) {
    if (rank == 0) std::printf("%-44s %10.3f %12.2f\n", name.c_str(), t * 1e3, bytes / t / 1e9);
    std::fflush(stdout);
  };

  Tensor recv = Tensor::empty({plan.local_rows, D}, act, device);
  row("all_to_all_v_rows (dispatch)",
      time_op(
          world,
          [&] {
            ep.exchange->all_to_all_v_rows(x_perm, plan.send_rows, recv, plan.recv_rows);
            sync();
          },
          s.reps),
      mean_off);

  row("dispatch + combine (plan, gathers, both ways)",
      time_op(
          world,
          [&] {
            const train::ExpertExchange p = train::plan_expert_exchange(ep, d, ids);
            const Tensor mine = train::send_to_owners(ep, p, x_perm);
            const Tensor back = train::return_to_sources(ep, p, mine);
            sync();
          },
          s.reps),
      2 * mean_off);

  if (s.gpu) {
    std::vector<std::byte> out(x_perm.nbytes()), in(recv.nbytes());
    std::vector<int64_t> send_bytes(plan.send_rows), recv_bytes(plan.recv_rows);
    for (int64_t& b : send_bytes) b *= row_bytes;
    for (int64_t& b : recv_bytes) b *= row_bytes;
    row("host staged (copy out, MPI_Alltoallv, in)",
        time_op(
            world,
            [&] {
              if (!out.empty()) cuda::copy_to_host(out.data(), x_perm.raw(), out.size());
              world.all_to_all_v_bytes(out.data(), send_bytes, in.data(), recv_bytes);
              if (!in.empty()) cuda::copy_to_device(recv.raw(), in.data(), in.size());
              sync();
            },
            s.reps),
        mean_off);
  }

  // Pairs swap one buffer of the mean off-rank size (an odd rank count leaves the last alone).
  const int partner = (rank ^ 1) < N ? rank ^ 1 : -1;
  const int64_t pair_rows = std::max<int64_t>(1, int64_t(mean_off) / row_bytes);
  std::vector<int64_t> pair_counts(size_t(N), 0);
  if (partner >= 0) pair_counts[size_t(partner)] = pair_rows;
  const Tensor pair_send = Tensor::zeros({partner >= 0 ? pair_rows : 0, D}, act, device);
  Tensor pair_recv = Tensor::empty({partner >= 0 ? pair_rows : 0, D}, act, device);
  row("pair swap 0<->1, 2<->3, ... (link)",
      time_op(
          world,
          [&] {
            ep.exchange->all_to_all_v_rows(pair_send, pair_counts, pair_recv, pair_counts);
            sync();
          },
          s.reps),
      double(pair_rows * row_bytes));

  const Tensor copy = Tensor::empty(x_perm.shape(), act, device);
  row(s.gpu ? "device copy (rank 0 alone)" : "memcpy (rank 0 alone)",
      time_op(
          world,
          [&] {
            if (rank == 0) copy.copy_from(x_perm);
            sync();
          },
          s.reps),
      double(x_perm.nbytes()));
}

}  // namespace

int main(int argc, char** argv) {
  dist::init_world(&argc, &argv);
  if (dist::world().backend() != "mpi") {
    std::fprintf(stderr, "bench_alltoall: run under mpirun -np N (N >= 2)\n");
    return 1;
  }
  Settings s;
  int at = 1;
  if (argc > at && std::string(argv[at]) == "--gpu") {
    s.gpu = true;
    ++at;
  }
  int64_t* fields[] = {&s.tokens, &s.hidden, &s.experts, &s.top_k};
  for (int64_t* f : fields)
    if (argc > at) *f = std::atoll(argv[at++]);
  if (argc > at) s.reps = std::atoi(argv[at++]);
  try {
    run(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_alltoall: %s\n", e.what());
    dist::abort_world(1);
    return 1;
  }
  dist::finalize_world();
  return 0;
}
