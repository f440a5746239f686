// All-reduce of f32 gradient-sized buffers on CPU ranks: MPI_Allreduce, HFReduce (dist/hfreduce.h)
// as one node and as 2 emulated nodes, and a naive gather-sum-broadcast (rank 0 receives every
// rank's buffer in turn, adds it, broadcasts the sum), beside this machine's memcpy bandwidth.
//   mpirun -np N --bind-to none bench_allreduce [max_mib (256)] [reps (5)] [chunk_mib (4)]
// Per size and algorithm: the median over reps of the slowest rank's time, algorithm bandwidth
// (bytes / t) and bus bandwidth (2(N−1)/N · bytes / t, the traffic a ring all-reduce moves per
// rank, NCCL's convention). memcpy: one rank copying the buffer while the others wait.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/hfreduce.h"
#include "dist/process_group.h"

#ifdef DSEEK_HAS_MPI
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

using namespace dseek;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median over reps of the slowest rank's time of op (after one warm-up call).
double time_op(const std::function<void()>& op, int reps) {
  op();
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now();
    op();
    double t = now() - t0, slowest = 0;
    MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(slowest);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Rank 0 receives each rank's buffer in turn into one scratch buffer and adds it, then broadcasts.
void naive_all_reduce(std::vector<float>& data, std::vector<float>& scratch, int rank, int ranks) {
  const int n = int(data.size());
  if (rank == 0) {
    for (int q = 1; q < ranks; ++q) {
      MPI_Recv(scratch.data(), n, MPI_FLOAT, q, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      for (int i = 0; i < n; ++i) data[size_t(i)] += scratch[size_t(i)];
    }
  } else {
    MPI_Send(data.data(), n, MPI_FLOAT, 0, 0, MPI_COMM_WORLD);
  }
  MPI_Bcast(data.data(), n, MPI_FLOAT, 0, MPI_COMM_WORLD);
}

void bench(int max_mib, int reps, int chunk_mib) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const int64_t chunk = int64_t(chunk_mib) << 18;  // MiB of f32
  dist::HfReduce one_node({.ranks_per_node = ranks, .chunk_elements = chunk});
  std::unique_ptr<dist::HfReduce> two_nodes;
  if (ranks % 2 == 0)
    two_nodes = std::make_unique<dist::HfReduce>(
        dist::HfReduceOptions{.ranks_per_node = ranks / 2, .chunk_elements = chunk});
  if (rank == 0) {
    std::printf(
        "all-reduce of f32 buffers over %d MPI ranks (%d reps, median of the slowest rank; "
        "HFReduce chunks of %d MiB)\n",
        ranks, reps, chunk_mib);
    std::printf("%8s  %-26s %10s %12s %12s\n", "MiB", "algorithm", "ms", "algbw GB/s",
                "busbw GB/s");
  }
  for (int mib = 1; mib <= max_mib; mib *= 4) {
    const size_t n = size_t(mib) << 18;
    const double bytes = double(n) * sizeof(float);
    std::vector<float> data(n), scratch(rank == 0 ? n : 0), copy(n);
    for (size_t i = 0; i < n; ++i) data[i] = 1e-3f * float((i * 7 + size_t(rank)) % 13);
    struct Row {
      std::string name;
      std::function<void()> op;
    };
    std::vector<Row> rows = {
        {"MPI_Allreduce",
         [&] {
           MPI_Allreduce(MPI_IN_PLACE, data.data(), int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
         }},
        {"HFReduce, 1 node", [&] { one_node.reduce_async(data, data, 0, false)->wait(); }},
    };
    if (two_nodes)
      rows.push_back({"HFReduce, 2 nodes of " + std::to_string(ranks / 2),
                      [&] { two_nodes->reduce_async(data, data, 0, false)->wait(); }});
    rows.push_back(
        {"HFReduce det., 1 node", [&] { one_node.reduce_async(data, data, 0, true)->wait(); }});
    rows.push_back(
        {"naive gather-sum-bcast", [&] { naive_all_reduce(data, scratch, rank, ranks); }});
    rows.push_back({"memcpy (rank 0 alone)", [&] {
                      if (rank == 0) std::memcpy(copy.data(), data.data(), n * sizeof(float));
                    }});
    for (const Row& row : rows) {
      const double t = time_op(row.op, reps);
      if (rank != 0) continue;
      std::printf("%8d  %-26s %10.2f %12.2f", mib, row.name.c_str(), t * 1e3, bytes / t / 1e9);
      if (row.name.rfind("memcpy", 0) == 0)
        std::printf(" %12s\n", "-");
      else
        std::printf(" %12.2f\n", 2.0 * (ranks - 1) / ranks * bytes / t / 1e9);
      std::fflush(stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  dist::init_world(&argc, &argv);
  if (dist::world().backend() != "mpi") {
    std::fprintf(stderr, "bench_allreduce: run under mpirun -np N (N >= 2)\n");
    return 1;
  }
  bench(argc > 1 ? std::atoi(argv[1]) : 256, argc > 2 ? std::atoi(argv[2]) : 5,
        argc > 3 ? std::atoi(argv[3]) : 4);
  dist::finalize_world();
  return 0;
}

#else

int main() {
  std::fprintf(stderr, "bench_allreduce: this dseek was built without MPI\n");
  return 1;
}

#endif
