// The NCCL process group (see dist/nccl_process_group.h for the design).
#ifdef DSEEK_HAS_NCCL
#include "dist/nccl_process_group.h"

#include <dlfcn.h>
#include <fmt/ranges.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "dist/cuda/rank_order_sum.h"

// DSEEK_NCCL_CHECK(api().AllReduce(...)): a failure throws dseek::Error("[nccl] call: reason").
#define DSEEK_NCCL_CHECK(call)                                                      \
  do {                                                                              \
    const ncclResult_t dseek_nccl_ = (call);                                        \
    if (dseek_nccl_ != ncclSuccess)                                                 \
      ::dseek::fail("[nccl] {}: {} ({})", #call, api().GetErrorString(dseek_nccl_), \
                    api().GetLastError(nullptr));                                   \
  } while (0)

namespace dseek::dist {
namespace {

// NCCL is loaded at run time (dlopen), not linked: a CUDA build of dseek then starts on machines
// without NCCL's library (one GPU, CPUs), and only the multi-GPU group needs it. Looked for as
// libnccl.so.2 on the loader's path (LD_LIBRARY_PATH, this program's RUNPATH), then at
// $DSEEK_NCCL_LIBRARY, then where CMake found it when dseek was built.
struct NcclApi {
#define DSEEK_NCCL_FN(name) decltype(&::nccl##name) name = nullptr;
  DSEEK_NCCL_FN(GetVersion)
  DSEEK_NCCL_FN(GetErrorString)
  DSEEK_NCCL_FN(GetLastError)
  DSEEK_NCCL_FN(GetUniqueId)
  DSEEK_NCCL_FN(CommInitRank)
  DSEEK_NCCL_FN(CommDestroy)
  DSEEK_NCCL_FN(GroupStart)
  DSEEK_NCCL_FN(GroupEnd)
  DSEEK_NCCL_FN(AllReduce)
  DSEEK_NCCL_FN(ReduceScatter)
  DSEEK_NCCL_FN(AllGather)
  DSEEK_NCCL_FN(Reduce)
  DSEEK_NCCL_FN(Broadcast)
  DSEEK_NCCL_FN(Send)
  DSEEK_NCCL_FN(Recv)
#undef DSEEK_NCCL_FN
};

const NcclApi& api() {
  static const NcclApi loaded = [] {
    std::vector<std::string> tried;
    void* lib = nullptr;
    std::vector<std::string> names = {"libnccl.so.2"};
    if (const char* env = std::getenv("DSEEK_NCCL_LIBRARY"); env && *env) names.push_back(env);
#ifdef DSEEK_NCCL_LIBRARY_PATH
    names.push_back(DSEEK_NCCL_LIBRARY_PATH);
#endif
    for (const std::string& name : names) {
      lib = dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
      if (lib) break;
      const char* why = dlerror();
      tried.push_back(why ? why : name);
    }
    if (!lib)
      fail(
          "[nccl] cannot load NCCL's library ({}); put its directory on LD_LIBRARY_PATH (PyTorch "
          "installs it: python3 -c \"import nvidia.nccl as n; print(list(n.__path__)[0] + "
          "'/lib')\") "
          "or name the file in DSEEK_NCCL_LIBRARY",
          fmt::join(tried, "; "));
    NcclApi a;
    auto bind = [lib](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      if (!fn) fail("[nccl] NCCL's library has no {}", symbol);
    };
#define DSEEK_NCCL_BIND(name) bind(a.name, "nccl" #name);
    DSEEK_NCCL_BIND(GetVersion)
    DSEEK_NCCL_BIND(GetErrorString)
    DSEEK_NCCL_BIND(GetLastError)
    DSEEK_NCCL_BIND(GetUniqueId)
    DSEEK_NCCL_BIND(CommInitRank)
    DSEEK_NCCL_BIND(CommDestroy)
    DSEEK_NCCL_BIND(GroupStart)
    DSEEK_NCCL_BIND(GroupEnd)
    DSEEK_NCCL_BIND(AllReduce)
    DSEEK_NCCL_BIND(ReduceScatter)
    DSEEK_NCCL_BIND(AllGather)
    DSEEK_NCCL_BIND(Reduce)
    DSEEK_NCCL_BIND(Broadcast)
    DSEEK_NCCL_BIND(Send)
    DSEEK_NCCL_BIND(Recv)
#undef DSEEK_NCCL_BIND
    return a;
  }();
  return loaded;
}

cudaEvent_t new_event() {
  cudaEvent_t e = nullptr;
  DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// An operation queued on the group's stream: `done` is recorded after it.
class NcclWork final : public Work {
 public:
  explicit NcclWork(cudaEvent_t done) : done_(done) {}
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;
  ~NcclWork() override { cudaEventDestroy(done_); }  // released once the event has completed
  void wait() override { DSEEK_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), done_, 0)); }
  bool test() override {
    const cudaError_t status = cudaEventQuery(done_);
    if (status == cudaErrorNotReady) return false;
    DSEEK_CUDA_CHECK(status);
    return true;
  }

 private:
  cudaEvent_t done_;
};

// Finished when issued (an HFReduce of nothing).
class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> at(counts.size() + 1, 0);
  for (size_t q = 0; q < counts.size(); ++q) at[q + 1] = at[q] + counts[q];
  return at;
}

bool all_equal(const std::vector<int64_t>& counts) {
  for (int64_t c : counts)
    if (c != counts[0]) return false;
  return true;
}

class NcclProcessGroup final : public ProcessGroup {
 public:
  // Over `host`'s ranks; `owned` is host itself when this group owns it (a split's part).
  explicit NcclProcessGroup(ProcessGroup& host, std::unique_ptr<ProcessGroup> owned = nullptr)
      : owned_host_(std::move(owned)), host_(host) {
    rank_ = host.rank();
    size_ = host.size();
    cuda::require("the NCCL process group");
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (rank_ == 0) DSEEK_NCCL_CHECK(api().GetUniqueId(&id));
    host.broadcast_bytes(std::span<std::byte>(reinterpret_cast<std::byte*>(&id), sizeof(id)), 0);
    DSEEK_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    DSEEK_NCCL_CHECK(api().CommInitRank(&comm_, size_, id, rank_));
  }
  NcclProcessGroup(const NcclProcessGroup&) = delete;
  NcclProcessGroup& operator=(const NcclProcessGroup&) = delete;
  ~NcclProcessGroup() override {
    cudaStreamSynchronize(stream_);
    api().CommDestroy(comm_);
    cudaStreamDestroy(stream_);
    if (pinned_) cudaFreeHost(pinned_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  Device device() const override { return Device::CUDA; }
  int local_rank() const override { return host_.local_rank(); }
  int local_size() const override { return host_.local_size(); }

  void set_all_reduce_algorithm(AllReduceAlgorithm algorithm) override {
    host_.set_all_reduce_algorithm(algorithm);
    algorithm_ = algorithm;
  }
  std::string all_reduce_description() const override {
    return algorithm_ == AllReduceAlgorithm::Mpi
               ? std::string("NCCL")
               : host_.all_reduce_description() + " through pinned host memory";
  }

  std::unique_ptr<Work> all_reduce_async(std::span<float> data) override {
    if (algorithm_ == AllReduceAlgorithm::HfReduce)
      return staged(data, data, [&](std::span<float> host) { host_.all_reduce(host); });
    const size_t n = data.size();
    return enqueue([&](cudaStream_t s) {
      if (!deterministic_) {
        DSEEK_NCCL_CHECK(
            api().AllReduce(data.data(), data.data(), n, ncclFloat, ncclSum, comm_, s));
        return;
      }
      float* copies = scratch(n * size_t(size_), s);
      DSEEK_NCCL_CHECK(api().AllGather(data.data(), copies, n, ncclFloat, comm_, s));
      sum_in_rank_order_gpu(copies, size_, int64_t(n), data.data(), s);
      DSEEK_CUDA_CHECK(cudaFreeAsync(copies, s));
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(std::span<const float> send, std::span<float> recv,
                                             const std::vector<int64_t>& counts) override {
    check_counts(counts, "reduce_scatter");
    const std::vector<int64_t> at = offsets_of(counts);
    const int64_t mine = counts[size_t(rank_)];
    DSEEK_CHECK(int64_t(send.size()) == at.back() && int64_t(recv.size()) == mine,
                "[dist] reduce_scatter: send {} / recv {} elements for counts summing to {}",
                send.size(), recv.size(), at.back());
    // (HFReduce's reduce-scatter is its all-reduce with a partial copy-out: the same here.)
    if (algorithm_ == AllReduceAlgorithm::HfReduce)
      return staged(
          send, recv, [&](std::span<float> host) { host_.all_reduce(host); }, at[size_t(rank_)]);
    return enqueue([&](cudaStream_t s) {
      if (deterministic_) {
        // Every rank sends block q to rank q; this rank receives N copies of its own block.
        float* copies = scratch(size_t(mine) * size_t(size_), s);
        DSEEK_NCCL_CHECK(api().GroupStart());
        for (int q = 0; q < size_; ++q) {
          if (counts[size_t(q)] > 0)
            DSEEK_NCCL_CHECK(api().Send(send.data() + at[size_t(q)], size_t(counts[size_t(q)]),
                                        ncclFloat, q, comm_, s));
          if (mine > 0)
            DSEEK_NCCL_CHECK(
                api().Recv(copies + int64_t(q) * mine, size_t(mine), ncclFloat, q, comm_, s));
        }
        DSEEK_NCCL_CHECK(api().GroupEnd());
        sum_in_rank_order_gpu(copies, size_, mine, recv.data(), s);
        DSEEK_CUDA_CHECK(cudaFreeAsync(copies, s));
      } else if (all_equal(counts)) {
        DSEEK_NCCL_CHECK(api().ReduceScatter(send.data(), recv.data(), size_t(mine), ncclFloat,
                                             ncclSum, comm_, s));
      } else {
        DSEEK_NCCL_CHECK(api().GroupStart());
        for (int q = 0; q < size_; ++q)
          if (counts[size_t(q)] > 0)
            // (recvbuff is written only on the root; elsewhere the block itself, as PyTorch
            // passes)
            DSEEK_NCCL_CHECK(api().Reduce(
                send.data() + at[size_t(q)],
                q == rank_ ? recv.data() : const_cast<float*>(send.data() + at[size_t(q)]),
                size_t(counts[size_t(q)]), ncclFloat, ncclSum, q, comm_, s));
        DSEEK_NCCL_CHECK(api().GroupEnd());
      }
    });
  }

  std::unique_ptr<Work> all_gather_async(std::span<const float> mine, std::span<float> all,
                                         const std::vector<int64_t>& counts) override {
    check_counts(counts, "all_gather");
    const std::vector<int64_t> at = offsets_of(counts);
    DSEEK_CHECK(int64_t(mine.size()) == counts[size_t(rank_)] && int64_t(all.size()) == at.back(),
                "[dist] all_gather: {} / {} elements for this rank's count {}", mine.size(),
                all.size(), counts[size_t(rank_)]);
    return enqueue([&](cudaStream_t s) {
      if (all_equal(counts)) {
        DSEEK_NCCL_CHECK(
            api().AllGather(mine.data(), all.data(), mine.size(), ncclFloat, comm_, s));
        return;
      }
      DSEEK_NCCL_CHECK(api().GroupStart());
      for (int q = 0; q < size_; ++q)
        if (counts[size_t(q)] > 0)
          // (sendbuff is read only on the root; elsewhere the destination, as PyTorch passes)
          DSEEK_NCCL_CHECK(api().Broadcast(q == rank_ ? mine.data() : all.data() + at[size_t(q)],
                                           all.data() + at[size_t(q)], size_t(counts[size_t(q)]),
                                           ncclFloat, q, comm_, s));
      DSEEK_NCCL_CHECK(api().GroupEnd());
    });
  }

  std::unique_ptr<Work> broadcast_async(std::span<float> data, int root) override {
    DSEEK_CHECK(root >= 0 && root < size_, "[dist] broadcast: root {} of {} ranks", root, size_);
    return enqueue([&](cudaStream_t s) {
      DSEEK_NCCL_CHECK(
          api().Broadcast(data.data(), data.data(), data.size(), ncclFloat, root, comm_, s));
    });
  }

  // The MPI group split, then a communicator of its own bootstrapped over each part (collective
  // over this group's ranks: every part's ncclCommInitRank runs at once, each with its own id).
  // Not ncclCommSplit: that needs NCCL 2.18, and this keeps one bootstrap path.
  std::unique_ptr<ProcessGroup> split(int color) override {
    DSEEK_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::unique_ptr<ProcessGroup> part = host_.split(color);
    ProcessGroup& part_host = *part;
    auto group = std::make_unique<NcclProcessGroup>(part_host, std::move(part));
    group->set_deterministic(deterministic_);
    return group;
  }
  void broadcast_bytes(std::span<std::byte> data, int root) override {
    host_.broadcast_bytes(data, root);
  }
  void all_reduce(std::span<double> data) override { host_.all_reduce(data); }
  void barrier() override {
    DSEEK_CUDA_CHECK(cudaStreamSynchronize(stream_));
    host_.barrier();
  }
  void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) override {
    host_.all_to_all(send, recv);
  }

  void gather(std::span<const float> mine, std::span<float> all, const std::vector<int64_t>& counts,
              int root) override {
    check_counts(counts, "gather");
    DSEEK_CHECK(root >= 0 && root < size_, "[dist] gather: root {} of {} ranks", root, size_);
    const std::vector<int64_t> at = offsets_of(counts);
    DSEEK_CHECK(int64_t(mine.size()) == counts[size_t(rank_)] &&
                    (rank_ != root || int64_t(all.size()) == at.back()),
                "[dist] gather: {} / {} elements for this rank's count {}", mine.size(), all.size(),
                counts[size_t(rank_)]);
    enqueue([&](cudaStream_t s) {
      if (rank_ != root) {
        if (!mine.empty())
          DSEEK_NCCL_CHECK(api().Send(mine.data(), mine.size(), ncclFloat, root, comm_, s));
        return;
      }
      if (!mine.empty())
        DSEEK_CUDA_CHECK(cudaMemcpyAsync(all.data() + at[size_t(root)], mine.data(),
                                         mine.size_bytes(), cudaMemcpyDeviceToDevice, s));
      DSEEK_NCCL_CHECK(api().GroupStart());
      for (int q = 0; q < size_; ++q)
        if (q != root && counts[size_t(q)] > 0)
          DSEEK_NCCL_CHECK(api().Recv(all.data() + at[size_t(q)], size_t(counts[size_t(q)]),
                                      ncclFloat, q, comm_, s));
      DSEEK_NCCL_CHECK(api().GroupEnd());
    })->wait();
  }

  void all_to_all_v(std::span<const float> send, const std::vector<int64_t>& send_counts,
                    std::span<float> recv, const std::vector<int64_t>& recv_counts) override {
    check_counts(send_counts, "all_to_all_v");
    check_counts(recv_counts, "all_to_all_v");
    const std::vector<int64_t> sd = offsets_of(send_counts), rd = offsets_of(recv_counts);
    DSEEK_CHECK(int64_t(send.size()) == sd.back() && int64_t(recv.size()) == rd.back() &&
                    send_counts[size_t(rank_)] == recv_counts[size_t(rank_)],
                "[dist] all_to_all_v: send {} / recv {} elements for counts summing to {} / {}",
                send.size(), recv.size(), sd.back(), rd.back());
    enqueue([&](cudaStream_t s) {
      const size_t self = size_t(rank_);
      if (send_counts[self] > 0)
        DSEEK_CUDA_CHECK(cudaMemcpyAsync(recv.data() + rd[self], send.data() + sd[self],
                                         size_t(send_counts[self]) * sizeof(float),
                                         cudaMemcpyDeviceToDevice, s));
      DSEEK_NCCL_CHECK(api().GroupStart());
      for (int q = 0; q < size_; ++q) {
        if (q == rank_) continue;
        if (send_counts[size_t(q)] > 0)
          DSEEK_NCCL_CHECK(api().Send(send.data() + sd[size_t(q)], size_t(send_counts[size_t(q)]),
                                      ncclFloat, q, comm_, s));
        if (recv_counts[size_t(q)] > 0)
          DSEEK_NCCL_CHECK(api().Recv(recv.data() + rd[size_t(q)], size_t(recv_counts[size_t(q)]),
                                      ncclFloat, q, comm_, s));
      }
      DSEEK_NCCL_CHECK(api().GroupEnd());
    })->wait();
  }

  void all_to_all_v_bytes(const std::byte* send, const std::vector<int64_t>& send_bytes,
                          std::byte* recv, const std::vector<int64_t>& recv_bytes) override {
    check_counts(send_bytes, "all_to_all_v");
    check_counts(recv_bytes, "all_to_all_v");
    const std::vector<int64_t> sd = offsets_of(send_bytes), rd = offsets_of(recv_bytes);
    const size_t self = size_t(rank_);
    DSEEK_CHECK(send_bytes[self] == recv_bytes[self],
                "[dist] all_to_all_v: {} bytes sent to this rank, {} expected", send_bytes[self],
                recv_bytes[self]);
    enqueue([&](cudaStream_t s) {
      if (send_bytes[self] > 0)
        DSEEK_CUDA_CHECK(cudaMemcpyAsync(recv + rd[self], send + sd[self], size_t(send_bytes[self]),
                                         cudaMemcpyDeviceToDevice, s));
      DSEEK_NCCL_CHECK(api().GroupStart());
      for (int q = 0; q < size_; ++q) {
        if (q == rank_) continue;
        if (send_bytes[size_t(q)] > 0)
          DSEEK_NCCL_CHECK(api().Send(send + sd[size_t(q)], size_t(send_bytes[size_t(q)]),
                                      ncclUint8, q, comm_, s));
        if (recv_bytes[size_t(q)] > 0)
          DSEEK_NCCL_CHECK(api().Recv(recv + rd[size_t(q)], size_t(recv_bytes[size_t(q)]),
                                      ncclUint8, q, comm_, s));
      }
      DSEEK_NCCL_CHECK(api().GroupEnd());
    })->wait();
  }

  std::unique_ptr<Work> send_async(std::span<const float> data, int peer, int tag) override {
    check_peer(peer, tag, "send");
    return enqueue([&](cudaStream_t s) {
      DSEEK_NCCL_CHECK(api().Send(data.data(), data.size(), ncclFloat, peer, comm_, s));
    });
  }
  std::unique_ptr<Work> recv_async(std::span<float> data, int peer, int tag) override {
    check_peer(peer, tag, "recv");
    return enqueue([&](cudaStream_t s) {
      DSEEK_NCCL_CHECK(api().Recv(data.data(), data.size(), ncclFloat, peer, comm_, s));
    });
  }

 private:
  // Queues `issue` on the group's stream after the compute stream's work so far; the returned
  // work's event follows it.
  std::unique_ptr<Work> enqueue(const std::function<void(cudaStream_t)>& issue) {
    cudaEvent_t ready = new_event();
    DSEEK_CUDA_CHECK(cudaEventRecord(ready, cuda::stream()));
    DSEEK_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    DSEEK_CUDA_CHECK(cudaEventDestroy(ready));
    issue(stream_);
    cudaEvent_t done = new_event();
    DSEEK_CUDA_CHECK(cudaEventRecord(done, stream_));
    return std::make_unique<NcclWork>(done);
  }

  // HFReduce: `send` (n elements, device) copied to pinned host memory, reduced there by `reduce`,
  // and elements [from, from + recv.size()) of the result copied into recv (device). Pipelined by
  // chunk, as Fire-Flyer overlaps its PCIe copies with the reduction: every chunk's device→host
  // copy is queued at once on the group's stream, the host reduces chunk i as soon as its copy has
  // landed (while later chunks are still in flight), and queues its host→device copy behind them
  // (so it runs while chunk i + 1 is reduced). Every rank reduces the same chunks in the same order
  // (n is the same on all ranks), which the host group's collectives need. Returns once the last
  // chunk is reduced; the work's event follows the last copy back.
  static constexpr int64_t kStageChunk = int64_t(1) << 20;  // elements (4 MB)
  std::unique_ptr<Work> staged(std::span<const float> send, std::span<float> recv,
                               const std::function<void(std::span<float>)>& reduce,
                               int64_t from = 0) {
    const int64_t n = int64_t(send.size());
    if (n == 0) return std::make_unique<DoneWork>();
    const size_t bytes = send.size_bytes();
    if (bytes > pinned_bytes_) {
      DSEEK_CUDA_CHECK(cudaStreamSynchronize(stream_));  // earlier copies out of the old buffer
      if (pinned_) DSEEK_CUDA_CHECK(cudaFreeHost(pinned_));
      pinned_ = nullptr;
      DSEEK_CUDA_CHECK(cudaMallocHost(&pinned_, bytes));
      pinned_bytes_ = bytes;
    }
    float* host = static_cast<float*>(pinned_);
    // The copies follow the compute stream's work so far (the gradients are final there).
    cudaEvent_t ready = new_event();
    DSEEK_CUDA_CHECK(cudaEventRecord(ready, cuda::stream()));
    DSEEK_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    DSEEK_CUDA_CHECK(cudaEventDestroy(ready));
    const int64_t chunks = (n + kStageChunk - 1) / kStageChunk;
    std::vector<cudaEvent_t> landed(size_t(chunks), nullptr);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t lo = c * kStageChunk, len = std::min(kStageChunk, n - lo);
      DSEEK_CUDA_CHECK(cudaMemcpyAsync(host + lo, send.data() + lo, size_t(len) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
      landed[size_t(c)] = new_event();
      DSEEK_CUDA_CHECK(cudaEventRecord(landed[size_t(c)], stream_));
    }
    const int64_t keep_lo = from, keep_hi = from + int64_t(recv.size());
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t lo = c * kStageChunk, len = std::min(kStageChunk, n - lo);
      DSEEK_CUDA_CHECK(cudaEventSynchronize(landed[size_t(c)]));
      DSEEK_CUDA_CHECK(cudaEventDestroy(landed[size_t(c)]));
      reduce(std::span<float>(host + lo, size_t(len)));
      // The part of this chunk that recv keeps, back to the device behind the copies in flight.
      const int64_t a = std::max(lo, keep_lo), b = std::min(lo + len, keep_hi);
      if (a < b)
        DSEEK_CUDA_CHECK(cudaMemcpyAsync(recv.data() + (a - keep_lo), host + a,
                                         size_t(b - a) * sizeof(float), cudaMemcpyHostToDevice,
                                         stream_));
    }
    cudaEvent_t done = new_event();
    DSEEK_CUDA_CHECK(cudaEventRecord(done, stream_));
    return std::make_unique<NcclWork>(done);
  }

  // Stream-ordered scratch on the group's stream (freed there by the caller).
  float* scratch(size_t elements, cudaStream_t s) {
    void* p = nullptr;
    DSEEK_CUDA_CHECK(cudaMallocAsync(&p, std::max<size_t>(elements, 1) * sizeof(float), s));
    return static_cast<float*>(p);
  }

  void check_counts(const std::vector<int64_t>& counts, const char* op) const {
    DSEEK_CHECK(int64_t(counts.size()) == size_, "[dist] {}: {} counts for {} ranks", op,
                counts.size(), size_);
    for (int64_t c : counts) DSEEK_CHECK(c >= 0, "[dist] {}: a count of {}", op, c);
  }
  void check_peer(int peer, int tag, const char* op) const {
    DSEEK_CHECK(peer >= 0 && peer < size_ && peer != rank_,
                "[dist] {}: peer rank {} (this is rank {} of {})", op, peer, rank_, size_);
    DSEEK_CHECK(tag >= 0 && tag <= kMaxTag, "[dist] {}: tag {} outside 0..{}", op, tag, kMaxTag);
  }

  std::unique_ptr<ProcessGroup> owned_host_;  // a split's MPI part (destroyed after comm_)
  ProcessGroup& host_;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* pinned_ = nullptr;  // HFReduce's staging buffer
  size_t pinned_bytes_ = 0;
};

}  // namespace

bool nccl_available() {
  return true;
}

std::string nccl_version() {
  int v = 0;
  DSEEK_NCCL_CHECK(api().GetVersion(&v));
  // NCCL_VERSION(X, Y, Z) = X·10000 + Y·100 + Z since 2.9.
  return fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
}

std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup& host) {
  // One process needs no bootstrap messages: a group of one rank (tests on a machine with one GPU).
  DSEEK_CHECK(host.device() == Device::CPU && (host.backend() == "mpi" || host.size() == 1),
              "[dist] the NCCL group is bootstrapped through an MPI group, got '{}'",
              host.backend());
  return std::make_unique<NcclProcessGroup>(host);
}

}  // namespace dseek::dist
#endif
