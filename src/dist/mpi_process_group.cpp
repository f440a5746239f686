// ProcessGroup over MPI_COMM_WORLD or a communicator split from it (CPU buffers). Default
// reductions are MPI's own nonblocking collectives; deterministic ones move every rank's
// contribution to its destination (MPI_Ialltoallv / MPI_Iallgather) and add the N copies there in
// rank order when the work is waited for. With AllReduceAlgorithm::HfReduce the f32 all-reduce and
// reduce-scatter go through dist/hfreduce.h instead. Errors inside MPI use its default handler
// (MPI_ERRORS_ARE_FATAL): a lost peer ends the whole job rather than leaving a rank waiting
// forever.
#include "dist/mpi_process_group.h"

#include "core/error.h"
#include "dist/hfreduce.h"

#ifdef DSEEK_HAS_MPI
// The C API only: OpenMPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <functional>

namespace dseek::dist {
namespace {

int as_int(int64_t n, const char* what) {
  DSEEK_CHECK(n >= 0 && n <= INT_MAX, "[dist] {}: {} elements do not fit an MPI count", what, n);
  return int(n);
}

// One nonblocking operation; `finish` (deterministic mode) adds the received copies once the
// transfer is done. Owns the scratch buffers the transfer writes into.
class MpiWork final : public Work {
 public:
  MpiWork() = default;
  MpiWork(const MpiWork&) = delete;
  MpiWork& operator=(const MpiWork&) = delete;
  ~MpiWork() override {
    // A handle dropped unwaited (an exception between issue and wait) must not leave MPI writing
    // into freed scratch memory.
    if (!done_) MPI_Wait(&request, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (done_) return;
    MPI_Wait(&request, &status);
    complete();
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    MPI_Test(&request, &flag, &status);
    if (flag) complete();
    return done_;
  }

  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Status status{};  // of the completed operation (a receive's size)
  std::vector<float> scratch;
  std::function<void()> finish;

 private:
  void complete() {
    done_ = true;
    if (finish) finish();
  }
  bool done_ = false;
};

// out[i] = Σ_q copies[q·n + i], added in rank order q = 0, 1, ... (the deterministic order).
template <typename T>
void sum_in_rank_order(const T* copies, int ranks, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    T s = copies[i];
    for (int q = 1; q < ranks; ++q) s += copies[int64_t(q) * n + i];
    out[i] = s;
  }
}

class MpiProcessGroup final : public ProcessGroup {
 public:
  // Over `comm` (comm_, or a communicator split from one, which this group then frees).
  MpiProcessGroup(MPI_Comm comm, bool any_thread) : comm_(comm), any_thread_(any_thread) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // The node: the ranks that share memory with this one (which GPU a rank takes).
    MPI_Comm node;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_free(&node);
  }
  MpiProcessGroup(const MpiProcessGroup&) = delete;
  MpiProcessGroup& operator=(const MpiProcessGroup&) = delete;
  ~MpiProcessGroup() override {
    hfreduce_.reset();
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }
  bool any_thread() const override { return any_thread_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend() const override { return "mpi"; }

  std::unique_ptr<ProcessGroup> split(int color) override {
    DSEEK_CHECK(color >= 0, "[dist] split: color {} must be >= 0", color);
    MPI_Comm sub;
    MPI_Comm_split(comm_, color, rank_, &sub);
    auto group = std::make_unique<MpiProcessGroup>(sub, any_thread_);
    group->set_deterministic(deterministic_);
    return group;
  }

  void set_all_reduce_algorithm(AllReduceAlgorithm algorithm) override {
    DSEEK_CHECK(algorithm == AllReduceAlgorithm::Mpi || comm_ == MPI_COMM_WORLD,
                "[dist] HFReduce runs on the world group only, not on a split group");
    if (algorithm == AllReduceAlgorithm::HfReduce && !hfreduce_)
      hfreduce_ = std::make_unique<HfReduce>();
    if (algorithm == AllReduceAlgorithm::Mpi) hfreduce_.reset();
    algorithm_ = algorithm;
  }
  std::string all_reduce_description() const override {
    if (!hfreduce_) return "MPI";
    return fmt::format("HFReduce, {} node{} of {} rank{}", hfreduce_->nodes(),
                       hfreduce_->nodes() == 1 ? "" : "s", hfreduce_->ranks_per_node(),
                       hfreduce_->ranks_per_node() == 1 ? "" : "s");
  }

  std::unique_ptr<Work> all_reduce_async(std::span<float> data) override {
    if (hfreduce_) return hfreduce_->reduce_async(data, data, 0, deterministic_);
    auto w = std::make_unique<MpiWork>();
    const int n = as_int(int64_t(data.size()), "all_reduce");
    if (!deterministic_) {
      MPI_Iallreduce(MPI_IN_PLACE, data.data(), n, MPI_FLOAT, MPI_SUM, comm_, &w->request);
      return w;
    }
    w->scratch.resize(size_t(n) * size_t(size_));
    MPI_Iallgather(data.data(), n, MPI_FLOAT, w->scratch.data(), n, MPI_FLOAT, comm_, &w->request);
    MpiWork* raw = w.get();
    const int ranks = size_;
    w->finish = [raw, data, ranks] {
      sum_in_rank_order(raw->scratch.data(), ranks, int64_t(data.size()), data.data());
    };
    return w;
  }

  std::unique_ptr<Work> reduce_scatter_async(std::span<const float> send, std::span<float> recv,
                                             const std::vector<int64_t>& counts) override {
    const std::vector<int> c = int_counts(counts, "reduce_scatter");
    const std::vector<int> displs = offsets(c, "reduce_scatter");
    DSEEK_CHECK(int64_t(send.size()) == int64_t(displs.back()) + c.back() &&
                    int64_t(recv.size()) == c[size_t(rank_)],
                "[dist] reduce_scatter: send {} / recv {} elements for counts summing to {}",
                send.size(), recv.size(), int64_t(displs.back()) + c.back());
    if (hfreduce_)
      return hfreduce_->reduce_async(send, recv, displs[size_t(rank_)], deterministic_);
    auto w = std::make_unique<MpiWork>();
    if (!deterministic_) {
      MPI_Ireduce_scatter(send.data(), recv.data(), c.data(), MPI_FLOAT, MPI_SUM, comm_,
                          &w->request);
      return w;
    }
    // Every rank sends block q to rank q; this rank receives N copies of its own block.
    const int mine = c[size_t(rank_)];
    w->scratch.resize(size_t(mine) * size_t(size_));
    std::vector<int> recv_counts(size_t(size_), mine);
    std::vector<int> recv_displs(size_t(size_), 0);
    for (int q = 0; q < size_; ++q) recv_displs[size_t(q)] = q * mine;
    MPI_Ialltoallv(send.data(), c.data(), displs.data(), MPI_FLOAT, w->scratch.data(),
                   recv_counts.data(), recv_displs.data(), MPI_FLOAT, comm_, &w->request);
    MpiWork* raw = w.get();
    const int ranks = size_;
    w->finish = [raw, recv, ranks] {
      sum_in_rank_order(raw->scratch.data(), ranks, int64_t(recv.size()), recv.data());
    };
    return w;
  }

  std::unique_ptr<Work> all_gather_async(std::span<const float> mine, std::span<float> all,
                                         const std::vector<int64_t>& counts) override {
    const std::vector<int> c = int_counts(counts, "all_gather");
    const std::vector<int> displs = offsets(c, "all_gather");
    DSEEK_CHECK(int64_t(mine.size()) == c[size_t(rank_)] &&
                    int64_t(all.size()) == int64_t(displs.back()) + c.back(),
                "[dist] all_gather: {} / {} elements for this rank's count {}", mine.size(),
                all.size(), c[size_t(rank_)]);
    auto w = std::make_unique<MpiWork>();
    MPI_Iallgatherv(mine.data(), c[size_t(rank_)], MPI_FLOAT, all.data(), c.data(), displs.data(),
                    MPI_FLOAT, comm_, &w->request);
    return w;
  }

  std::unique_ptr<Work> broadcast_async(std::span<float> data, int root) override {
    DSEEK_CHECK(root >= 0 && root < size_, "[dist] broadcast: root {} of {} ranks", root, size_);
    auto w = std::make_unique<MpiWork>();
    MPI_Ibcast(data.data(), as_int(int64_t(data.size()), "broadcast"), MPI_FLOAT, root, comm_,
               &w->request);
    return w;
  }

  void broadcast_bytes(std::span<std::byte> data, int root) override {
    DSEEK_CHECK(root >= 0 && root < size_, "[dist] broadcast: root {} of {} ranks", root, size_);
    MPI_Bcast(data.data(), as_int(int64_t(data.size()), "broadcast"), MPI_BYTE, root, comm_);
  }

  void all_reduce(std::span<double> data) override {
    const int n = as_int(int64_t(data.size()), "all_reduce");
    if (!deterministic_) {
      MPI_Allreduce(MPI_IN_PLACE, data.data(), n, MPI_DOUBLE, MPI_SUM, comm_);
      return;
    }
    std::vector<double> copies(size_t(n) * size_t(size_));
    MPI_Allgather(data.data(), n, MPI_DOUBLE, copies.data(), n, MPI_DOUBLE, comm_);
    sum_in_rank_order(copies.data(), size_, int64_t(n), data.data());
  }

  void gather(std::span<const float> mine, std::span<float> all, const std::vector<int64_t>& counts,
              int root) override {
    const std::vector<int> c = int_counts(counts, "gather");
    const std::vector<int> displs = offsets(c, "gather");
    DSEEK_CHECK(int64_t(mine.size()) == c[size_t(rank_)] &&
                    (rank_ != root || int64_t(all.size()) == int64_t(displs.back()) + c.back()),
                "[dist] gather: {} / {} elements for this rank's count {}", mine.size(), all.size(),
                c[size_t(rank_)]);
    MPI_Gatherv(mine.data(), c[size_t(rank_)], MPI_FLOAT, all.data(), c.data(), displs.data(),
                MPI_FLOAT, root, comm_);
  }

  void barrier() override { MPI_Barrier(comm_); }

  void all_to_all_v(std::span<const float> send, const std::vector<int64_t>& send_counts,
                    std::span<float> recv, const std::vector<int64_t>& recv_counts) override {
    const std::vector<int> sc = int_counts(send_counts, "all_to_all_v");
    const std::vector<int> rc = int_counts(recv_counts, "all_to_all_v");
    const std::vector<int> sd = offsets(sc, "all_to_all_v"), rd = offsets(rc, "all_to_all_v");
    DSEEK_CHECK(int64_t(send.size()) == int64_t(sd.back()) + sc.back() &&
                    int64_t(recv.size()) == int64_t(rd.back()) + rc.back(),
                "[dist] all_to_all_v: send {} / recv {} elements for counts summing to {} / {}",
                send.size(), recv.size(), int64_t(sd.back()) + sc.back(),
                int64_t(rd.back()) + rc.back());
    MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_FLOAT, recv.data(), rc.data(), rd.data(),
                  MPI_FLOAT, comm_);
  }

  void all_to_all_v_bytes(const std::byte* send, const std::vector<int64_t>& send_bytes,
                          std::byte* recv, const std::vector<int64_t>& recv_bytes) override {
    const std::vector<int> sc = int_counts(send_bytes, "all_to_all_v");
    const std::vector<int> rc = int_counts(recv_bytes, "all_to_all_v");
    const std::vector<int> sd = offsets(sc, "all_to_all_v"), rd = offsets(rc, "all_to_all_v");
    MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE,
                  comm_);
  }

  std::unique_ptr<Work> send_async(std::span<const float> data, int peer, int tag) override {
    check_peer(peer, tag, "send");
    auto w = std::make_unique<MpiWork>();
    MPI_Isend(data.data(), as_int(int64_t(data.size()), "send"), MPI_FLOAT, peer, tag, comm_,
              &w->request);
    return w;
  }

  std::unique_ptr<Work> recv_async(std::span<float> data, int peer, int tag) override {
    check_peer(peer, tag, "recv");
    auto w = std::make_unique<MpiWork>();
    const int n = as_int(int64_t(data.size()), "recv");
    MPI_Irecv(data.data(), n, MPI_FLOAT, peer, tag, comm_, &w->request);
    // A larger message is MPI_ERR_TRUNCATE (fatal); a smaller one would leave stale elements.
    MpiWork* raw = w.get();
    w->finish = [raw, n, peer, tag] {
      int got = 0;
      MPI_Get_count(&raw->status, MPI_FLOAT, &got);
      DSEEK_CHECK(got == n, "[dist] recv: {} elements from rank {} (tag {}), expected {}", got,
                  peer, tag, n);
    };
    return w;
  }

  void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) override {
    DSEEK_CHECK(send.size() == recv.size() && send.size() % size_t(size_) == 0,
                "[dist] all_to_all: send {} / recv {} elements for {} ranks", send.size(),
                recv.size(), size_);
    const int block = as_int(int64_t(send.size()) / size_, "all_to_all");
    MPI_Alltoall(send.data(), block, MPI_INT64_T, recv.data(), block, MPI_INT64_T, comm_);
  }

 private:
  std::vector<int> int_counts(const std::vector<int64_t>& counts, const char* op) const {
    DSEEK_CHECK(int64_t(counts.size()) == size_, "[dist] {}: {} counts for {} ranks", op,
                counts.size(), size_);
    std::vector<int> c;
    for (int64_t n : counts) c.push_back(as_int(n, op));
    return c;
  }
  void check_peer(int peer, int tag, const char* op) const {
    DSEEK_CHECK(peer >= 0 && peer < size_ && peer != rank_,
                "[dist] {}: peer rank {} (this is rank {} of {})", op, peer, rank_, size_);
    DSEEK_CHECK(tag >= 0 && tag <= kMaxTag, "[dist] {}: tag {} outside 0..{}", op, tag, kMaxTag);
  }
  static std::vector<int> offsets(const std::vector<int>& c, const char* op) {
    std::vector<int> displs(c.size());
    int64_t at = 0;
    for (size_t q = 0; q < c.size(); ++q) {
      displs[q] = as_int(at, op);
      at += c[q];
    }
    as_int(at, op);
    return displs;
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool any_thread_ = false;
  std::unique_ptr<HfReduce> hfreduce_;  // when the all-reduce algorithm is HFReduce
};

}  // namespace

std::unique_ptr<ProcessGroup> make_mpi_world(int* argc, char*** argv) {
  int provided = 0;
  // Serialized where the library offers it (expert-parallel serving sums MoE outputs on the
  // engine's thread); training needs only funneled.
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  DSEEK_CHECK(provided >= MPI_THREAD_FUNNELED,
              "[dist] MPI_Init_thread: the MPI library gives thread level {}, dseek needs "
              "MPI_THREAD_FUNNELED",
              provided);
  return std::make_unique<MpiProcessGroup>(MPI_COMM_WORLD, provided >= MPI_THREAD_SERIALIZED);
}

void finalize_mpi() {
  MPI_Finalize();
}

void abort_mpi(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this satisfies [[noreturn]]
}

bool mpi_available() {
  return true;
}

}  // namespace dseek::dist

#else  // built without MPI

#include <cstdlib>

namespace dseek::dist {

std::unique_ptr<ProcessGroup> make_mpi_world(int*, char***) {
  fail(
      "[dist] this dseek was built without MPI (install libopenmpi-dev, reconfigure with "
      "-DDSEEK_MPI=ON and rebuild)");
}
void finalize_mpi() {}
void abort_mpi(int exit_code) {
  std::_Exit(exit_code);
}
bool mpi_available() {
  return false;
}

}  // namespace dseek::dist

#endif
