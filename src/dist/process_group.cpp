// The single-process group, the launcher detection and the process-wide world() group.
#include "dist/process_group.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "dist/mpi_process_group.h"

namespace dseek::dist {
namespace {

// Nothing to wait for: the work was done when it was issued.
class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

void check_counts(const std::vector<int64_t>& counts, int ranks, const char* op) {
  DSEEK_CHECK(int64_t(counts.size()) == ranks, "[dist] {}: {} counts for {} ranks", op,
              counts.size(), ranks);
}

class SingleProcessGroup final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }

  std::unique_ptr<Work> all_reduce_async(std::span<float>) override {
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> reduce_scatter_async(std::span<const float> send, std::span<float> recv,
                                             const std::vector<int64_t>& counts) override {
    check_counts(counts, 1, "reduce_scatter");
    DSEEK_CHECK(int64_t(send.size()) == counts[0] && int64_t(recv.size()) == counts[0],
                "[dist] reduce_scatter: send {} / recv {} elements for a count of {}", send.size(),
                recv.size(), counts[0]);
    if (!send.empty()) std::memmove(recv.data(), send.data(), send.size_bytes());
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> all_gather_async(std::span<const float> mine, std::span<float> all,
                                         const std::vector<int64_t>& counts) override {
    check_counts(counts, 1, "all_gather");
    DSEEK_CHECK(int64_t(mine.size()) == counts[0] && int64_t(all.size()) == counts[0],
                "[dist] all_gather: {} / {} elements for a count of {}", mine.size(), all.size(),
                counts[0]);
    if (!mine.empty()) std::memmove(all.data(), mine.data(), mine.size_bytes());
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> broadcast_async(std::span<float>, int root) override {
    DSEEK_CHECK(root == 0, "[dist] broadcast: root {} in a group of 1", root);
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<ProcessGroup> split(int) override {
    auto group = std::make_unique<SingleProcessGroup>();
    group->set_deterministic(deterministic_);
    return group;
  }
  void broadcast_bytes(std::span<std::byte>, int root) override {
    DSEEK_CHECK(root == 0, "[dist] broadcast: root {} in a group of 1", root);
  }
  void all_reduce(std::span<double>) override {}
  void gather(std::span<const float> mine, std::span<float> all, const std::vector<int64_t>& counts,
              int root) override {
    DSEEK_CHECK(root == 0, "[dist] gather: root {} in a group of 1", root);
    all_gather(mine, all, counts);
  }
  void barrier() override {}
  void all_to_all_v(std::span<const float> send, const std::vector<int64_t>& send_counts,
                    std::span<float> recv, const std::vector<int64_t>& recv_counts) override {
    check_counts(send_counts, 1, "all_to_all_v");
    check_counts(recv_counts, 1, "all_to_all_v");
    DSEEK_CHECK(send_counts[0] == recv_counts[0] && int64_t(send.size()) == send_counts[0] &&
                    int64_t(recv.size()) == recv_counts[0],
                "[dist] all_to_all_v: send {} / recv {} elements for counts {} / {}", send.size(),
                recv.size(), send_counts[0], recv_counts[0]);
    if (!send.empty()) std::memmove(recv.data(), send.data(), send.size_bytes());
  }
  void all_to_all_v_bytes(const std::byte* send, const std::vector<int64_t>& send_bytes,
                          std::byte* recv, const std::vector<int64_t>& recv_bytes) override {
    check_counts(send_bytes, 1, "all_to_all_v");
    check_counts(recv_bytes, 1, "all_to_all_v");
    DSEEK_CHECK(send_bytes[0] == recv_bytes[0],
                "[dist] all_to_all_v: {} bytes sent to this rank, {} expected", send_bytes[0],
                recv_bytes[0]);
    if (send_bytes[0] > 0) std::memmove(recv, send, size_t(send_bytes[0]));
  }
  std::unique_ptr<Work> send_async(std::span<const float>, int peer, int) override {
    fail("[dist] send: a single-process group has no rank {} to send to", peer);
  }
  std::unique_ptr<Work> recv_async(std::span<float>, int peer, int) override {
    fail("[dist] recv: a single-process group has no rank {} to receive from", peer);
  }
  void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) override {
    DSEEK_CHECK(send.size() == recv.size(), "[dist] all_to_all: send {} / recv {} elements",
                send.size(), recv.size());
    if (!send.empty()) std::memmove(recv.data(), send.data(), send.size_bytes());
  }
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : 0;
}

std::unique_ptr<ProcessGroup>& world_slot() {
  static std::unique_ptr<ProcessGroup> group;
  return group;
}

}  // namespace

std::unique_ptr<ProcessGroup> make_single_process_group() {
  return std::make_unique<SingleProcessGroup>();
}

int launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"}) {
    const int n = env_int(name);
    if (n > 0) return n;
  }
  return 1;
}

void init_world(int* argc, char*** argv) {
  auto& slot = world_slot();
  DSEEK_CHECK(slot == nullptr, "[dist] init_world called twice");
  const int n = launcher_world_size();
  if (n <= 1) {
    slot = make_single_process_group();
    return;
  }
  DSEEK_CHECK(mpi_available(),
              "[dist] launched as one of {} ranks, but this dseek was built without MPI "
              "(install libopenmpi-dev, reconfigure with -DDSEEK_MPI=ON and rebuild)",
              n);
  slot = make_mpi_world(argc, argv);
}

ProcessGroup& world() {
  auto& slot = world_slot();
  if (!slot) slot = make_single_process_group();
  return *slot;
}

void finalize_world() {
  auto& slot = world_slot();
  if (slot && slot->backend() == "mpi") {
    slot->set_all_reduce_algorithm(AllReduceAlgorithm::Mpi);  // MPI_Win_free before MPI_Finalize
    finalize_mpi();
  }
}

void abort_world(int exit_code) {
  auto& slot = world_slot();
  if (slot && slot->backend() == "mpi" && slot->size() > 1) abort_mpi(exit_code);
}

void ProcessGroup::all_to_all_v_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                                     Tensor& recv, const std::vector<int64_t>& recv_rows) {
  DSEEK_CHECK(send.dim() >= 1 && recv.dim() >= 1 && send.dtype() == recv.dtype() &&
                  send.is_contiguous() && recv.is_contiguous(),
              "[dist] all_to_all_v: rows of contiguous tensors of one dtype, got {} {} and {} {}",
              dtype_name(send.dtype()), shape_str(send.shape()), dtype_name(recv.dtype()),
              shape_str(recv.shape()));
  DSEEK_CHECK(send.device() == device() && recv.device() == device(),
              "[dist] all_to_all_v: the {} group's buffers live on {}", backend(),
              device_name(device()));
  const int64_t send_row = send.size(0) ? int64_t(send.nbytes()) / send.size(0) : 0,
                recv_row = recv.size(0) ? int64_t(recv.nbytes()) / recv.size(0) : 0;
  auto bytes = [](const std::vector<int64_t>& rows, int64_t row_bytes, int64_t total,
                  const char* which) {
    std::vector<int64_t> out(rows.size());
    int64_t sum = 0;
    for (size_t q = 0; q < rows.size(); ++q) {
      DSEEK_CHECK(rows[q] >= 0, "[dist] all_to_all_v: {} rows {} for rank {}", which, rows[q], q);
      out[q] = rows[q] * row_bytes;
      sum += rows[q];
    }
    DSEEK_CHECK(sum == total, "[dist] all_to_all_v: {} counts sum to {} rows, the tensor has {}",
                which, sum, total);
    return out;
  };
  DSEEK_CHECK(send.size(0) == 0 || recv.size(0) == 0 || send_row == recv_row,
              "[dist] all_to_all_v: send rows of {} bytes, receive rows of {}", send_row, recv_row);
  all_to_all_v_bytes(static_cast<const std::byte*>(send.raw()),
                     bytes(send_rows, send_row, send.size(0), "send"),
                     static_cast<std::byte*>(recv.raw()),
                     bytes(recv_rows, recv_row ? recv_row : send_row, recv.size(0), "receive"));
}

Range even_share(int64_t n, int ranks, int r) {
  DSEEK_CHECK(ranks > 0 && r >= 0 && r < ranks && n >= 0, "[dist] even_share({}, {}, {})", n, ranks,
              r);
  const int64_t base = n / ranks, extra = n % ranks;
  return {r * base + std::min<int64_t>(r, extra), base + (r < extra ? 1 : 0)};
}

}  // namespace dseek::dist
