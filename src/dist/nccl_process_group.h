// The NCCL process group: the f32 collectives of ProcessGroup on GPU buffers, through NCCL, over
// the ranks of an MPI job; one GPU per rank.
//
// Bootstrap. Every rank first takes its GPU (dist/rank_gpu.h's select_rank_gpu: local rank l of
// its node uses device l, before anything starts the CUDA runtime); then make_nccl_group,
// collective over the MPI group: rank 0 draws the NCCL unique id, the MPI group broadcasts it, and
// every rank joins the communicator with ncclCommInitRank.
//
// Streams. The operations run on the group's own stream, after the work already queued on dseek's
// compute stream (cuda::stream(); an event orders them), so a reduction issued during backward
// overlaps the kernels queued after it. Work::wait() makes the compute stream wait for the
// operation (it does not block the host): everything queued on the compute stream afterwards,
// including the stream-ordered free of a buffer and any copy to the host, sees the result.
// Work::test() asks whether it has finished. Buffers must stay alive until wait() has returned,
// as for every group.
//
// Operations. all_reduce, broadcast: ncclAllReduce / ncclBroadcast in place. reduce_scatter and
// all_gather with equal blocks: ncclReduceScatter / ncclAllGather; with unequal blocks (ZeRO-1's
// shards cut buckets unevenly) one ncclReduce to (ncclBroadcast from) each block's rank in one
// NCCL group call, the same traffic. gather, all_to_all_v, send, recv: ncclSend/ncclRecv pairs
// (NCCL has no tags: messages between two ranks arrive in the order sent, and a receive must name
// exactly the sent size, which the caller's protocol guarantees; a mismatch is undefined, not
// detected). The f64 all-reduce, the int64 all-to-all, broadcast_bytes and barrier are the MPI
// group's, on host memory.
//
// Determinism. With deterministic set, all_reduce all-gathers every rank's buffer and
// reduce_scatter sends every rank its block from everyone, and a kernel adds the N copies in rank
// order 0..N−1 (f32, the order the MPI group's deterministic mode adds in), so a run repeats bit
// for bit for a given rank count; NCCL's own reductions do not promise a fixed order.
//
// HFReduce. With AllReduceAlgorithm::HfReduce, all_reduce and reduce_scatter stage the buffer in
// pinned host memory, reduce it with the MPI group's HFReduce (dist/hfreduce.h) and copy the
// result back, as Fire-Flyer does (its GPUs reach the host over PCIe), pipelined by chunks of 1M
// elements: all device→host copies are queued at once, the host reduces each chunk as soon as it
// has landed, and its copy back runs while the next chunk is reduced. The call returns when the
// host has reduced the last chunk; Work::wait() orders the compute stream after the last copy back.
//
// Built only with CUDA and NCCL (CMake finds nccl.h in the CUDA toolkit, NCCL_ROOT, or the
// nvidia-nccl Python package); otherwise nccl_available() is false and make_nccl_group throws.
#pragma once

#include <memory>
#include <string>

#include "dist/process_group.h"

namespace dseek::dist {

// True when this dseek was built with NCCL.
bool nccl_available();
// Loads NCCL's library (it is opened at run time, not linked) and returns its version
// ("2.28.9"); throws saying where it looked when it cannot. Needs no GPU.
std::string nccl_version();
// Collective over `host` (an MPI group, or the single-process group: one rank), which must outlive
// the result. Every rank must have selected its GPU first.
std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup& host);

}  // namespace dseek::dist
