// ProcessGroup: the ranks of a multi-process job and the collectives dseek needs between them, on
// f32 buffers (gradients, parameters, optimizer shards) and f64 buffers (metrics, expert loads).
// all_to_all_v moves variable-sized blocks between every pair of ranks (expert parallelism's token
// dispatch and combine). Implementations: MPI (mpi_process_group.cpp, CPU buffers through OpenMPI),
// a trivial single-process group, and NCCL (nccl_process_group.h: the f32 buffers are GPU memory,
// bootstrapped through MPI, whose host group it uses for everything else).
//
// Where the buffers live: device() says where the f32 collectives' buffers are (CPU for MPI and
// the single-process group, CUDA for NCCL). The f64 all-reduce, the int64 all-to-all,
// broadcast_bytes and barrier always take host memory.
//
// Collectives are collective: every rank calls the same ones, in the same order, with matching
// sizes. Nonblocking variants return a Work handle; the buffers must stay alive and untouched until
// wait() returns (or test() says true). Sums are over all ranks.
//
// Determinism. By default reductions use the library's own algorithms (MPI_Iallreduce,
// MPI_Ireduce_scatter), whose summation order the MPI standard does not fix. With deterministic
// set, every reduction instead moves all ranks' contributions to the rank(s) that need them and
// adds them there in rank order 0, 1, ..., N−1, so a run is bit-reproducible for a given rank count
// (at N× the receive traffic of a reduce-scatter).
//
// All-reduce algorithm. The f32 all_reduce_async and reduce_scatter_async use MPI's collectives by
// default; with AllReduceAlgorithm::HfReduce the MPI group runs Fire-Flyer's HFReduce instead
// (dist/hfreduce.h: intra-node reduction through shared memory, then inter-node all-reduce of each
// node's slices, pipelined by chunk). A reduce-scatter then is an HFReduce all-reduce whose last
// stage copies out only this rank's block. The single-process group accepts either (a sum of one).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dseek::dist {

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation has completed and its output buffer holds the result.
  virtual void wait() = 0;
  // Drives progress without blocking; true once complete (then wait() returns at once).
  virtual bool test() = 0;
};

enum class AllReduceAlgorithm { Mpi, HfReduce };

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single", "mpi", "nccl"
  // Where the f32 buffers of the collectives below live.
  virtual Device device() const { return Device::CPU; }
  // This rank among the ranks of its node (the processes sharing its memory: MPI_COMM_TYPE_SHARED)
  // and their number; which GPU a rank takes.
  virtual int local_rank() const { return 0; }
  virtual int local_size() const { return 1; }
  // Whether threads other than main may call the collectives, one thread at a time
  // (MPI_THREAD_SERIALIZED or better); otherwise only the main thread may (funneled).
  virtual bool any_thread() const { return true; }
  // Fixed-order reductions (see above); set before the collectives it should govern.
  bool deterministic() const { return deterministic_; }
  void set_deterministic(bool on) { deterministic_ = on; }
  // Collective: every rank sets the same algorithm at the same point (HFReduce builds its
  // communicators and shared window here; errors in the node layout are thrown on every rank).
  AllReduceAlgorithm all_reduce_algorithm() const { return algorithm_; }
  virtual void set_all_reduce_algorithm(AllReduceAlgorithm algorithm) { algorithm_ = algorithm; }
  // For the train log: "MPI", or "HFReduce, 2 nodes of 2 ranks".
  virtual std::string all_reduce_description() const {
    return algorithm_ == AllReduceAlgorithm::Mpi ? "MPI" : "HFReduce, 1 node";
  }

  // data ← Σ_ranks data, in place, on every rank.
  virtual std::unique_ptr<Work> all_reduce_async(std::span<float> data) = 0;
  // send holds Σ counts elements, rank r's block at offset Σ_{q<r} counts[q]; rank r receives the
  // sum over ranks of its block into recv (counts[r] elements). counts has size() entries.
  virtual std::unique_ptr<Work> reduce_scatter_async(std::span<const float> send,
                                                     std::span<float> recv,
                                                     const std::vector<int64_t>& counts) = 0;
  // Every rank's `mine` (counts[rank] elements) lands at its block of `all` on every rank.
  virtual std::unique_ptr<Work> all_gather_async(std::span<const float> mine, std::span<float> all,
                                                 const std::vector<int64_t>& counts) = 0;
  // data ← root's data on every rank.
  virtual std::unique_ptr<Work> broadcast_async(std::span<float> data, int root) = 0;
  // Collective: the ranks passing the same color (>= 0) form a new group, ranked in this group's
  // order (MPI_Comm_split), with this group's deterministic setting. The subgroups of expert
  // parallelism (the ranks exchanging tokens; the replicas of one expert slice). The
  // single-process group returns another single-process group; NCCL splits its MPI group and
  // bootstraps a communicator over each part.
  virtual std::unique_ptr<ProcessGroup> split(int color) = 0;
  // Host bytes ← root's bytes on every rank (blocking): NCCL's bootstrap identifier.
  virtual void broadcast_bytes(std::span<std::byte> data, int root) = 0;

  // Blocking f64 sum (metrics, expert loads as exact integers below 2^53).
  virtual void all_reduce(std::span<double> data) = 0;
  // Like all_gather, but only `root` receives (`all` is ignored elsewhere). For checkpoints.
  virtual void gather(std::span<const float> mine, std::span<float> all,
                      const std::vector<int64_t>& counts, int root) = 0;
  virtual void barrier() = 0;
  // Personalised exchange: send holds Σ send_counts elements, the block for rank q at offset
  // Σ_{p<q} send_counts[p]; recv receives rank q's block for this rank at offset Σ_{p<q}
  // recv_counts[p]. Every rank's send_counts[q] must equal rank q's recv_counts[rank] (exchange
  // the counts first with the int64 variant); blocks of 0 elements are allowed.
  virtual void all_to_all_v(std::span<const float> send, const std::vector<int64_t>& send_counts,
                            std::span<float> recv, const std::vector<int64_t>& recv_counts) = 0;
  // The same exchange for rows of any dtype (expert parallelism's tokens: bf16 activations on
  // GPUs): send [Σ send_rows, …] and recv [Σ recv_rows, …] contiguous, of one dtype and one row
  // shape, on device(); the blocks counted in rows. Checks the tensors, then moves their bytes with
  // all_to_all_v_bytes.
  void all_to_all_v_rows(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                         const std::vector<int64_t>& recv_rows);
  // all_to_all_v of bytes, the buffers on device().
  virtual void all_to_all_v_bytes(const std::byte* send, const std::vector<int64_t>& send_bytes,
                                  std::byte* recv, const std::vector<int64_t>& recv_bytes) = 0;
  // Equal blocks of int64 (counts): send and recv hold size()·block elements, block q of send goes
  // to rank q and block q of recv came from rank q.
  virtual void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) = 0;

  // Point-to-point, for pipeline parallelism's activations and gradients between neighbouring
  // stages: send's data goes to rank `peer`, where the recv naming this rank and the same tag
  // takes it (its size must equal the sent size, else an error). Not collective: only the two
  // ranks take part. Messages from one rank to another with one tag arrive in the order sent.
  // Tags are 0 ... kMaxTag (MPI guarantees at least that many). The single-process group has no
  // peer and refuses both.
  static constexpr int kMaxTag = 32767;
  virtual std::unique_ptr<Work> send_async(std::span<const float> data, int peer, int tag) = 0;
  virtual std::unique_ptr<Work> recv_async(std::span<float> data, int peer, int tag) = 0;

  // Blocking shorthands.
  void all_reduce(std::span<float> data) { all_reduce_async(data)->wait(); }
  void reduce_scatter(std::span<const float> send, std::span<float> recv,
                      const std::vector<int64_t>& counts) {
    reduce_scatter_async(send, recv, counts)->wait();
  }
  void all_gather(std::span<const float> mine, std::span<float> all,
                  const std::vector<int64_t>& counts) {
    all_gather_async(mine, all, counts)->wait();
  }
  void broadcast(std::span<float> data, int root) { broadcast_async(data, root)->wait(); }
  // A blocking send returns once `data` may be reused; for large messages MPI waits for the
  // matching receive, so two ranks sending to each other first deadlock: send_async then.
  void send(std::span<const float> data, int peer, int tag) { send_async(data, peer, tag)->wait(); }
  void recv(std::span<float> data, int peer, int tag) { recv_async(data, peer, tag)->wait(); }

 protected:
  bool deterministic_ = false;
  AllReduceAlgorithm algorithm_ = AllReduceAlgorithm::Mpi;
};

// One process: collectives are copies (sums of one term).
std::unique_ptr<ProcessGroup> make_single_process_group();

// How this process was started: the world size announced by the launcher's environment
// (OMPI_COMM_WORLD_SIZE, PMIX_SIZE or PMI_SIZE), 1 when none is set.
int launcher_world_size();

// The process-wide group. init_world() is called once from main: under a launcher announcing more
// than one rank it initialises MPI (MPI_Init_thread, serialized where offered, else funneled) and
// the group is MPI_COMM_WORLD; otherwise it is the single-process group. Without MPI support a
// launch with more than one rank is an error that says so. world() without init_world() (tests,
// library use) is the single-process group.
void init_world(int* argc, char*** argv);
ProcessGroup& world();
// MPI_Finalize after a normal exit (from main); frees HFReduce's window and communicators first.
void finalize_world();
// Ends every rank of the job after an error on this one (MPI_Abort); returns only when the group
// is a single process.
void abort_world(int exit_code);
// True when this dseek was built with MPI.
bool mpi_available();

// Rank r's part of n elements split as evenly as possible: [first, first + count).
struct Range {
  int64_t first = 0, count = 0;
};
Range even_share(int64_t n, int ranks, int r);

}  // namespace dseek::dist
