// HFReduce over MPI (see hfreduce.h for the algorithm). One operation is a small state machine:
// per chunk i (slot s = i mod 2 of the shared window)
//   kStage   copy this rank's chunk i into segment [s][local rank]; post the node barrier
//   kReduce  (barrier done) add slice `local rank` of chunk i over the L segments into sum[s];
//            post its inter-node Iallreduce (deterministic: Iallgather)
//   kPublish (chunk i−1's inter-node operation done; deterministic: add the gathered node partials
//            in node order) post the node barrier
//   kCopy    (barrier done) copy chunk i−1 out of sum[(i−1) mod 2]
// for i = 0 .. chunks (the last round only drains chunk chunks−1; the first has nothing to
// publish). Chunk i's inter-node operation thus runs while chunk i+1 is staged and reduced.
//
// Why the two slots are safe to reuse: segment [s] is written again by chunk i+2's kStage, after
// every rank passed chunk i+1's publish barrier, i.e. after every rank finished chunk i's kReduce
// (its only reads of the segments); sum[s] is written again by chunk i+2's kReduce, after chunk
// i+2's stage barrier, which every rank posts only after its kCopy of chunk i. Consecutive
// operations run one after another through the same rounds, so the same holds across them.
//
// Memory model. The window comes from MPI_Win_allocate_shared and we require the unified model
// (MPI_WIN_MODEL == MPI_WIN_UNIFIED, what shared-memory windows give on cache-coherent machines):
// ranks read and write it with plain loads and stores inside one passive-target epoch
// (MPI_Win_lock_all with MPI_MODE_NOCHECK, held for the window's life). The MPI-3 rule for such
// access is "MPI_Win_sync, process synchronisation, MPI_Win_sync": the writer's MPI_Win_sync
// completes its stores to the window, the node barrier orders writer before reader, the reader's
// MPI_Win_sync makes the stores visible to its loads. We use nonblocking barriers (MPI_Ibarrier)
// so a Work can be tested without blocking; a completed Ibarrier is the same synchronisation.
// MPI_Win_fence would do, but it is blocking and (per the standard) also an RMA epoch boundary we
// do not need.
#include "dist/hfreduce.h"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace dseek::dist {

int hfreduce_ranks_per_node_from_env() {
  const char* v = std::getenv("DSEEK_HFREDUCE_RANKS_PER_NODE");
  if (!v || !*v) return 0;
  char* end = nullptr;
  errno = 0;
  const long k = std::strtol(v, &end, 10);
  DSEEK_CHECK(errno == 0 && *end == '\0' && k > 0 && k <= INT_MAX,
              "[hfreduce] DSEEK_HFREDUCE_RANKS_PER_NODE: expected a positive number of ranks per "
              "node, got '{}'",
              v);
  return int(k);
}

}  // namespace dseek::dist

#ifdef DSEEK_HAS_MPI
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <deque>
#include <vector>

namespace dseek::dist {
namespace {

enum Phase { kStage, kReduce, kPublish, kCopy };

struct Op {
  std::span<const float> in;
  std::span<float> out;
  int64_t out_first = 0;
  bool deterministic = false;
  int64_t chunks = 0;
  int64_t i = 0;  // the round
  Phase phase = kStage;
  MPI_Request barrier = MPI_REQUEST_NULL;
  MPI_Request inter[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  bool done = false;
};

}  // namespace

struct HfReduce::Impl {
  MPI_Comm node = MPI_COMM_NULL, cross = MPI_COMM_NULL;
  int local_rank = 0, local_size = 1, nodes = 1;
  int64_t chunk = 0;
  MPI_Win win = MPI_WIN_NULL;
  float* shared = nullptr;
  std::vector<float> gathered[2];  // deterministic: the node partials of a slice, node by node
  std::deque<Op*> queue;           // issued, unfinished operations, oldest first

  // Window layout: slot s holds L staging segments then the node's sum, each `chunk` floats.
  float* segment(int s, int q) const {
    return shared + (int64_t(s) * (local_size + 1) + q) * chunk;
  }
  float* sum(int s) const { return segment(s, local_size); }

  Range chunk_range(const Op& op, int64_t c) const {
    const int64_t first = c * chunk;
    return {first, std::min<int64_t>(chunk, int64_t(op.in.size()) - first)};
  }
  // This rank's slice of a chunk of `len` elements (chunk-relative).
  Range slice(int64_t len) const { return even_share(len, local_size, local_rank); }

  static bool ready(MPI_Request& r, bool block) {
    if (r == MPI_REQUEST_NULL) return true;
    if (block) {
      MPI_Wait(&r, MPI_STATUS_IGNORE);
      return true;
    }
    int flag = 0;
    MPI_Test(&r, &flag, MPI_STATUS_IGNORE);
    return flag != 0;
  }

  void stage(const Op& op) {
    const Range c = chunk_range(op, op.i);
    std::memcpy(segment(int(op.i % 2), local_rank), op.in.data() + c.first,
                size_t(c.count) * sizeof(float));
  }

  // Slice of chunk i summed over the node's segments in local-rank order, then its inter-node op.
  void reduce(Op& op) {
    const int s = int(op.i % 2);
    const Range sl = slice(chunk_range(op, op.i).count);
    float* dst = sum(s) + sl.first;
    std::memcpy(dst, segment(s, 0) + sl.first, size_t(sl.count) * sizeof(float));
    for (int q = 1; q < local_size; ++q) {
      const float* src = segment(s, q) + sl.first;
      for (int64_t k = 0; k < sl.count; ++k) dst[k] += src[k];
    }
    if (nodes == 1) return;  // the node's sum is the sum
    const int n = int(sl.count);
    if (op.deterministic)
      MPI_Iallgather(dst, n, MPI_FLOAT, gathered[s].data(), n, MPI_FLOAT, cross, &op.inter[s]);
    else
      MPI_Iallreduce(MPI_IN_PLACE, dst, n, MPI_FLOAT, MPI_SUM, cross, &op.inter[s]);
  }

  // Deterministic: the slice of chunk c ← Σ over nodes of their partials, in node order.
  void add_gathered(const Op& op, int64_t c) {
    const int s = int(c % 2);
    const Range sl = slice(chunk_range(op, c).count);
    const float* g = gathered[s].data();
    float* dst = sum(s) + sl.first;
    for (int64_t k = 0; k < sl.count; ++k) {
      float acc = g[k];
      for (int p = 1; p < nodes; ++p) acc += g[int64_t(p) * sl.count + k];
      dst[k] = acc;
    }
  }

  void copy_out(const Op& op, int64_t c) {
    const Range ch = chunk_range(op, c);
    const int64_t lo = std::max(ch.first, op.out_first);
    const int64_t hi = std::min(ch.first + ch.count, op.out_first + int64_t(op.out.size()));
    if (hi > lo)
      std::memcpy(op.out.data() + (lo - op.out_first), sum(int(c % 2)) + (lo - ch.first),
                  size_t(hi - lo) * sizeof(float));
  }

  // One phase of op; false when that would block and block is off.
  bool step(Op& op, bool block) {
    switch (op.phase) {
      case kStage:
        if (op.i < op.chunks) {
          stage(op);
          MPI_Win_sync(win);
          MPI_Ibarrier(node, &op.barrier);
          op.phase = kReduce;
        } else {
          op.phase = kPublish;
        }
        return true;
      case kReduce:
        if (!ready(op.barrier, block)) return false;
        MPI_Win_sync(win);
        reduce(op);
        op.phase = kPublish;
        return true;
      case kPublish:
        if (op.i > 0) {
          const int64_t prev = op.i - 1;
          if (!ready(op.inter[prev % 2], block)) return false;
          if (op.deterministic && nodes > 1) add_gathered(op, prev);
          MPI_Win_sync(win);
          MPI_Ibarrier(node, &op.barrier);
        }
        op.phase = kCopy;
        return true;
      case kCopy:
        if (op.i > 0) {
          if (!ready(op.barrier, block)) return false;
          MPI_Win_sync(win);
          copy_out(op, op.i - 1);
        }
        if (++op.i > op.chunks) op.done = true;
        op.phase = kStage;
        return true;
    }
    return true;
  }

  // Runs the queue (oldest first) until `target` is done, or until a step would block.
  void advance(Op& target, bool block) {
    while (!target.done) {
      Op& head = *queue.front();
      while (!head.done)
        if (!step(head, block)) return;
      queue.pop_front();
    }
  }
};

namespace {

class HfWork final : public Work {
 public:
  HfWork(HfReduce::Impl* impl, std::unique_ptr<Op> op) : impl_(impl), op_(std::move(op)) {}
  HfWork(const HfWork&) = delete;
  HfWork& operator=(const HfWork&) = delete;
  // Dropped unwaited (an exception between issue and wait): finish it, so no rank is left waiting
  // in a barrier and the queue holds no dangling operation.
  ~HfWork() override {
    if (!op_->done) impl_->advance(*op_, true);
  }
  void wait() override { impl_->advance(*op_, true); }
  bool test() override {
    impl_->advance(*op_, false);
    return op_->done;
  }

 private:
  HfReduce::Impl* impl_;
  std::unique_ptr<Op> op_;
};

}  // namespace

HfReduce::HfReduce(HfReduceOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  int world_rank = 0, world_size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  DSEEK_CHECK(options.chunk_elements > 0 && options.chunk_elements <= INT_MAX,
              "[hfreduce] chunk of {} elements (1 .. {})", options.chunk_elements, INT_MAX);
  m.chunk = options.chunk_elements;
  const int k =
      options.ranks_per_node > 0 ? options.ranks_per_node : hfreduce_ranks_per_node_from_env();
  if (k > 0) {
    DSEEK_CHECK(world_size % k == 0,
                "[hfreduce] DSEEK_HFREDUCE_RANKS_PER_NODE {}: must divide the {} ranks (emulated "
                "nodes are ranks [0,{}), [{},{}), ...)",
                k, world_size, k, k, 2 * k);
    MPI_Comm_split(MPI_COMM_WORLD, world_rank / k, world_rank, &m.node);
    // An emulated node must still share memory: it has to lie inside one real node.
    MPI_Comm real;
    MPI_Comm_split_type(m.node, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &real);
    int real_size = 0;
    MPI_Comm_size(real, &real_size);
    MPI_Comm_free(&real);
    int ok = real_size == k ? 1 : 0, all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_ok) {
      MPI_Comm_free(&m.node);
      fail(
          "[hfreduce] DSEEK_HFREDUCE_RANKS_PER_NODE {}: an emulated node of ranks [{}, {}) spans "
          "more than one shared-memory node",
          k, world_rank / k * k, world_rank / k * k + k);
    }
  } else {
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &m.node);
  }
  MPI_Comm_rank(m.node, &m.local_rank);
  MPI_Comm_size(m.node, &m.local_size);
  int sizes[2] = {m.local_size, -m.local_size}, extremes[2] = {0, 0};
  MPI_Allreduce(sizes, extremes, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (extremes[0] != -extremes[1]) {
    MPI_Comm_free(&m.node);
    fail(
        "[hfreduce] nodes of {} to {} ranks: HFReduce needs the same number of ranks on every "
        "node (set DSEEK_HFREDUCE_RANKS_PER_NODE to a common divisor)",
        -extremes[1], extremes[0]);
  }
  // Cross-node communicator: the ranks of local rank q, one per node, in node order (a node is
  // ordered by its local rank 0's world rank, the same order for every q).
  int leader = world_rank;
  MPI_Bcast(&leader, 1, MPI_INT, 0, m.node);
  MPI_Comm_split(MPI_COMM_WORLD, m.local_rank, leader, &m.cross);
  MPI_Comm_size(m.cross, &m.nodes);

  const int64_t floats = 2 * (int64_t(m.local_size) + 1) * m.chunk;
  float* base = nullptr;
  MPI_Win_allocate_shared(m.local_rank == 0 ? MPI_Aint(floats) * MPI_Aint(sizeof(float)) : 0,
                          int(sizeof(float)), MPI_INFO_NULL, m.node, &base, &m.win);
  MPI_Aint bytes = 0;
  int disp = 0;
  MPI_Win_shared_query(m.win, 0, &bytes, &disp, &m.shared);
  int* model = nullptr;
  int flag = 0;
  MPI_Win_get_attr(m.win, MPI_WIN_MODEL, &model, &flag);
  if (!flag || *model != MPI_WIN_UNIFIED) {
    MPI_Win_free(&m.win);
    MPI_Comm_free(&m.cross);
    MPI_Comm_free(&m.node);
    fail("[hfreduce] the MPI library's shared-memory window is not in the unified memory model");
  }
  MPI_Win_lock_all(MPI_MODE_NOCHECK, m.win);
  if (m.nodes > 1) {
    const int64_t slice_max = (m.chunk + m.local_size - 1) / m.local_size;
    for (auto& g : m.gathered) g.assign(size_t(slice_max) * size_t(m.nodes), 0.0f);
  }
}

HfReduce::~HfReduce() {
  Impl& m = *impl_;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // MPI freed everything already
  MPI_Win_unlock_all(m.win);
  MPI_Win_free(&m.win);
  MPI_Comm_free(&m.cross);
  MPI_Comm_free(&m.node);
}

std::unique_ptr<Work> HfReduce::reduce_async(std::span<const float> in, std::span<float> out,
                                             int64_t out_first, bool deterministic) {
  DSEEK_CHECK(out_first >= 0 && out_first + int64_t(out.size()) <= int64_t(in.size()),
              "[hfreduce] output elements [{}, {}) outside the {} reduced elements", out_first,
              out_first + int64_t(out.size()), in.size());
  auto op = std::make_unique<Op>();
  op->in = in;
  op->out = out;
  op->out_first = out_first;
  op->deterministic = deterministic;
  op->chunks = (int64_t(in.size()) + impl_->chunk - 1) / impl_->chunk;
  impl_->queue.push_back(op.get());
  return std::make_unique<HfWork>(impl_.get(), std::move(op));
}

int HfReduce::nodes() const {
  return impl_->nodes;
}
int HfReduce::ranks_per_node() const {
  return impl_->local_size;
}

}  // namespace dseek::dist

#else  // built without MPI

namespace dseek::dist {

struct HfReduce::Impl {};

HfReduce::HfReduce(HfReduceOptions) {
  fail("[hfreduce] this dseek was built without MPI (reconfigure with -DDSEEK_MPI=ON)");
}
HfReduce::~HfReduce() = default;
std::unique_ptr<Work> HfReduce::reduce_async(std::span<const float>, std::span<float>, int64_t,
                                             bool) {
  fail("[hfreduce] this dseek was built without MPI");
}
int HfReduce::nodes() const {
  return 1;
}
int HfReduce::ranks_per_node() const {
  return 1;
}

}  // namespace dseek::dist

#endif
