// HFReduce: Fire-Flyer's all-reduce (arXiv 2408.14158, §VI) over MPI on CPU buffers, an
// alternative to MPI_Iallreduce selected with ProcessGroup::set_all_reduce_algorithm (train config
// dist.all_reduce = "hfreduce"). The buffer is cut into chunks; for each chunk
//   (1) intra-node: every rank of a node copies its chunk into its own segment of one node-shared
//       host buffer (an MPI-3 shared-memory window on the node communicator); each of the node's L
//       ranks then adds one slice of the chunk (1/L of it) across the L segments, in local-rank
//       order, into the node's partial sum (a parallel reduction inside the node);
//   (2) inter-node: each slice is all-reduced among the ranks holding the same slice index on the
//       other nodes (the cross-node communicator), so all L ranks of a node drive inter-node
//       traffic at once, each for its own 1/L;
//   (3) every rank copies the summed chunk (or, for a reduce-scatter, the part it keeps) out of the
//       shared buffer.
// Overlap: chunk i's inter-node MPI_Iallreduce is in flight while chunk i+1 is staged and reduced
// inside the node (two shared slots, alternating).
//
// Deterministic mode sums in a fixed order: inside the node in local-rank order (always), across
// nodes by gathering the N node partials of a slice (MPI_Iallgather) and adding them in node order.
// Every rank then holds the same bits, run after run, for a given layout of nodes.
//
// Progress. An operation is a fixed sequence of nonblocking MPI calls (node Ibarriers, cross-node
// Iallreduce/Iallgather), the same on every rank; Work::test() advances it as far as it can without
// blocking and wait() to the end. Operations run one at a time in issue order (they share the
// window): testing or waiting for a later one first finishes the earlier ones. OpenMPI progresses
// nonblocking collectives only inside MPI calls, so the overlap of stage (2) with stage (1) happens
// within test()/wait() calls, not behind the caller's computation.
//
// Nodes. By default a node is the real shared-memory domain (MPI_Comm_split_type with
// MPI_COMM_TYPE_SHARED); every node must hold the same number of ranks. For tests and benchmarks on
// one machine, ranks_per_node = k (or the environment variable DSEEK_HFREDUCE_RANKS_PER_NODE=k)
// emulates nodes of k consecutive ranks [0,k), [k,2k), ...; k must divide the world size.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "dist/process_group.h"

namespace dseek::dist {

struct HfReduceOptions {
  // Ranks per emulated node; 0: DSEEK_HFREDUCE_RANKS_PER_NODE when set, else the real nodes.
  int ranks_per_node = 0;
  // Elements per pipelined chunk (the shared window holds 2 chunks per local rank plus 2 sums).
  int64_t chunk_elements = int64_t(1) << 20;
};

class HfReduce {
 public:
  // Collective over MPI_COMM_WORLD: builds the node and cross-node communicators and the shared
  // window. Throws (on every rank alike) for a bad node layout. Without MPI it throws.
  explicit HfReduce(HfReduceOptions options = {});
  ~HfReduce();
  HfReduce(const HfReduce&) = delete;
  HfReduce& operator=(const HfReduce&) = delete;

  // out ← the elements [out_first, out_first + out.size()) of Σ_ranks in (in.size() elements,
  // the same on every rank). All-reduce: out = in (in place allowed), out_first = 0.
  // Reduce-scatter: out = this rank's block. in and out must stay alive and untouched until the
  // work completes.
  std::unique_ptr<Work> reduce_async(std::span<const float> in, std::span<float> out,
                                     int64_t out_first, bool deterministic);

  int nodes() const;
  int ranks_per_node() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// DSEEK_HFREDUCE_RANKS_PER_NODE parsed (0 when unset); throws for text that is not a positive
// integer.
int hfreduce_ranks_per_node_from_env();

}  // namespace dseek::dist
