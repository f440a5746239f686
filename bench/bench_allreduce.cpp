// All-reduce of f32 gradient-sized buffers on CPU ranks: MPI_Allreduce, HFReduce (dist/hfreduce.h)
// as one node and as 2 emulated nodes, and a naive gather-sum-broadcast (rank 0 receives every
// rank's buffer in turn, adds it, broadcasts the sum), beside this machine's memcpy bandwidth.
//   mpirun -np N --bind-to none bench_allreduce [max_mib (256)] [reps (5)] [chunk_mib (4)]
// With --gpu first, on GPU buffers, one GPU per rank (dist/nccl_process_group.h): NCCL's
// all-reduce, the NCCL group's deterministic all-reduce (all-gather, rank-order sum), HFReduce
// through pinned host memory, and the naive host round trip (copy to the host, MPI_Allreduce, copy
// back), beside rank 0's device-to-device copy of the buffer.
//   mpirun -np N --bind-to none bench_allreduce --gpu [max_mib (1024)] [reps (10)]
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

#include "core/cuda.h"
#include "core/tensor.h"
#include "dist/hfreduce.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"

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

void print_row(int mib, const std::string& name, double t, double bytes, int ranks, bool bus) {
  std::printf("%8d  %-34s %10.3f %12.2f", mib, name.c_str(), t * 1e3, bytes / t / 1e9);
  if (bus)
    std::printf(" %12.2f\n", 2.0 * (ranks - 1) / ranks * bytes / t / 1e9);
  else
    std::printf(" %12s\n", "-");
  std::fflush(stdout);
}

// The same table on GPU buffers, one GPU per rank; every operation ends with the device idle.
void bench_gpu(int max_mib, int reps) {
  dist::ProcessGroup& world = dist::world();
  dist::select_rank_gpu(world);
  std::unique_ptr<dist::ProcessGroup> nccl = dist::make_nccl_group(world);
  const int rank = world.rank(), ranks = world.size();
  if (rank == 0) {
    std::printf(
        "all-reduce of f32 GPU buffers over %d ranks, one GPU each (%s; %d reps, median of the "
        "slowest rank)\n",
        ranks, cuda::describe().c_str(), reps);
    std::printf("%8s  %-34s %10s %12s %12s\n", "MiB", "algorithm", "ms", "algbw GB/s",
                "busbw GB/s");
  }
  for (int mib = 1; mib <= max_mib; mib *= 4) {
    const int64_t n = int64_t(mib) << 18;
    const double bytes = double(n) * sizeof(float);
    std::vector<float> init(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) init[size_t(i)] = 1e-3f * float((i * 7 + rank) % 13);
    const Tensor data = Tensor::from_vector(init, {n}).to(Device::CUDA);
    const Tensor copy = Tensor::empty({n}, DType::F32, Device::CUDA);
    const std::span<float> span(data.data<float>(), size_t(n));
    std::vector<float> host(static_cast<size_t>(n));
    // (the row's algorithm is set before it is timed)
    auto nccl_all_reduce = [&](bool deterministic) {
      return [&, deterministic] {
        nccl->set_deterministic(deterministic);
        world.set_deterministic(deterministic);
        nccl->all_reduce_async(span)->wait();
        cuda::synchronize();
      };
    };
    struct Row {
      std::string name;
      std::function<void()> op;
      dist::AllReduceAlgorithm algorithm;
    };
    const std::vector<Row> rows = {
        {"NCCL all-reduce", nccl_all_reduce(false), dist::AllReduceAlgorithm::Mpi},
        {"NCCL det. (all-gather + rank-order sum)", nccl_all_reduce(true),
         dist::AllReduceAlgorithm::Mpi},
        {"HFReduce via pinned host", nccl_all_reduce(false), dist::AllReduceAlgorithm::HfReduce},
        {"host round trip + MPI_Allreduce",
         [&] {
           cuda::copy_to_host(host.data(), data.raw(), size_t(bytes));
           MPI_Allreduce(MPI_IN_PLACE, host.data(), int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
           cuda::copy_to_device(data.raw(), host.data(), size_t(bytes));
           cuda::synchronize();
         },
         dist::AllReduceAlgorithm::Mpi},
        {"device copy (rank 0 alone)",
         [&] {
           if (rank == 0) cuda::copy_on_device(copy.raw(), data.raw(), size_t(bytes));
           cuda::synchronize();
         },
         dist::AllReduceAlgorithm::Mpi},
    };
    for (const Row& row : rows) {
      nccl->set_all_reduce_algorithm(row.algorithm);  // collective (HFReduce's window)
      const double t = time_op(row.op, reps);
      if (rank == 0) print_row(mib, row.name, t, bytes, ranks, row.name.rfind("device", 0) != 0);
    }
  }
  nccl->set_all_reduce_algorithm(dist::AllReduceAlgorithm::Mpi);
}

}  // namespace

int main(int argc, char** argv) {
  dist::init_world(&argc, &argv);
  if (dist::world().backend() != "mpi") {
    std::fprintf(stderr, "bench_allreduce: run under mpirun -np N (N >= 2)\n");
    return 1;
  }
  try {
    if (argc > 1 && std::string(argv[1]) == "--gpu")
      bench_gpu(argc > 2 ? std::atoi(argv[2]) : 1024, argc > 3 ? std::atoi(argv[3]) : 10);
    else
      bench(argc > 1 ? std::atoi(argv[1]) : 256, argc > 2 ? std::atoi(argv[2]) : 5,
            argc > 3 ? std::atoi(argv[3]) : 4);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_allreduce: %s\n", e.what());
    dist::abort_world(1);
    return 1;
  }
  dist::finalize_world();
  return 0;
}

#else

int main() {
  std::fprintf(stderr, "bench_allreduce: this dseek was built without MPI\n");
  return 1;
}

#endif
