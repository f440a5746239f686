// The CUDA runtime as dseek uses it: one device, one stream, stream-ordered allocation from a
// memory pool that keeps freed blocks (so per-op allocations cost no cudaMalloc), and copies.
// This header has no CUDA types, so every library can include it; a build without CUDA
// (cmake -DDSEEK_CUDA=OFF) links src/core/cuda_none.cpp, where available() is false and
// everything else throws a dseek::Error saying how to build with CUDA.
//
// Every kernel runs on stream(); copies to the host synchronise it, so host code sees results in
// order without explicit synchronisation. Device errors become dseek::Error naming the call
// ("[cuda] cudaMallocAsync(1.5 GiB): out of memory").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dseek::cuda {

// True when dseek was built with CUDA and a device is present (the check runs once).
bool available();
// Built with CUDA at all (whether or not this machine has a GPU).
bool compiled();
// "NVIDIA H200 (sm_90, 139.8 GiB, CUDA runtime 13.0)", or why there is none.
std::string describe();
// Throws dseek::Error naming `what` when !available() (e.g. "--device cuda").
void require(const std::string& what);
// CUDA devices on this machine (0 without a driver, or in a build without CUDA); does not start
// the runtime.
int device_count();
// The device dseek runs on: 0 unless select_device chose another before the runtime started
// (the first available(), describe(), alloc(), ...). A multi-rank job on one node maps each rank
// to its own GPU this way (dist::select_rank_gpu) before anything touches the device. Throws for
// an ordinal outside [0, device_count()) or once the runtime has started on another device.
void select_device(int ordinal);
int device_ordinal();

void* alloc(size_t bytes);  // stream-ordered, 256-byte aligned; bytes 0 gives a valid pointer
void free(void* ptr);       // stream-ordered: safe while kernels that use ptr are still queued

void copy_to_device(void* dst, const void* src, size_t bytes);  // async after host memory is read
void copy_to_host(void* dst, const void* src, size_t bytes);    // waits for the stream
void copy_on_device(void* dst, const void* src, size_t bytes);
void fill_bytes(void* dst, int byte, size_t bytes);

// n contiguous elements between float dtypes (f32, bf16, f16): round to nearest even, as
// convert_from_f32 on the CPU.
void convert(const void* src, DType from, void* dst, DType to, size_t n);
// Gathers a strided view (up to 8 dimensions, strides in elements) into contiguous memory.
void strided_copy(const void* src, void* dst, size_t element_bytes, const int64_t* shape,
                  const int64_t* strides, int dims);

// Writes a strided view into another strided view of the same shape (up to 8 dimensions,
// strides in elements, stride 0 broadcasts the source), converting between float dtypes.
void strided_convert(const void* src, DType from, const int64_t* src_strides, void* dst, DType to,
                     const int64_t* dst_strides, const int64_t* shape, int dims);

void synchronize();  // waits for the current stream; raises any asynchronous kernel error

// A CUDA graph: the stream's work between begin_capture() and end_capture(), recorded once and
// replayed by launch() as one submission (a decode step is ~1000 small kernels, and launching
// them one by one from the host costs more than running them). Capture records and runs nothing;
// every kernel's arguments and every address it touches are frozen, so inputs that change between
// replays must be read from device memory the caller rewrites before each launch(). Memory
// allocated during capture must be freed during capture (the graph then owns it). A call that
// cannot be recorded (a copy to the host, a synchronisation) throws and spoils the capture: the
// caller then calls discard_capture(). Only the capturing thread is restricted meanwhile.
class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  void begin_capture();
  void end_capture();               // instantiates the recorded work
  void discard_capture() noexcept;  // ends a capture that failed; the graph stays empty
  void launch() const;              // enqueues one replay on the stream
  bool ready() const { return exec_ != nullptr; }

 private:
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  bool capturing_ = false;
};

// HostReadback: small results copied from the device into page-locked host memory without
// waiting for the stream, each into a slot with an event, so the host can queue more work before
// it reads them (greedy decoding reads each step's token while the next step runs). A slot is
// reused only after wait() on it or after the copy queued after it in the stream is done.
class HostReadback {
 public:
  HostReadback(int slots, size_t slot_bytes);
  ~HostReadback();  // waits for copies in flight
  HostReadback(const HostReadback&) = delete;
  HostReadback& operator=(const HostReadback&) = delete;
  // Queues the copy of slot_bytes from device address src into `slot` on the stream.
  void copy(int slot, const void* src);
  // Waits for slot's last copy; its bytes (valid until the slot's next copy).
  const void* wait(int slot);

 private:
  void* host_ = nullptr;  // page-locked, slots · slot_bytes
  std::vector<void*> events_;
  size_t slot_bytes_ = 0;
};

// Fork: independent parts of a step on a second stream beside the main one (an MLA layer's latent
// projection beside its query's, the shared experts beside the routing chain). A decode step's
// kernels are small and mostly wait on one another; two chains in flight fill the gaps.
//
//   cuda::Fork fork(cuda::branches_enabled());  // the side stream waits for the main's work so far
//   {
//     cuda::Fork::Side side(fork);   // this thread's kernels, copies and allocations go to the
//     side
//     ...                            // stream until `side` goes out of scope
//   }
//   ...                              // main-stream work, running beside the side's
//   fork.join();                     // the main stream waits for the side's work
//
// A tensor the side work reads must stay alive until join(): freed on the main stream earlier, its
// memory could go to a main-stream allocation while the side still reads it. Tensors made on the
// side may be used and freed on the main stream after join(). A graph captured over a fork gets
// two parallel branches. Forks do not nest. Disabled (or in a build without CUDA) nothing changes
// streams: the same work runs on the main stream in program order.
class Fork {
 public:
  explicit Fork(bool enabled);
  ~Fork();      // joins, if join() was not called
  void join();  // the main stream waits for the side's work; later Side scopes are an error
  bool enabled() const { return active_; }
  Fork(const Fork&) = delete;
  Fork& operator=(const Fork&) = delete;

  class Side {
   public:
    explicit Side(Fork& fork);
    ~Side();
    Side(const Side&) = delete;
    Side& operator=(const Side&) = delete;

   private:
    bool switched_ = false;
  };

 private:
  bool active_ = false;  // forked and not yet joined
};

// True inside a Fork::Side scope of this thread: state that kernels use as scratch (cuBLASLt's
// workspace) needs one copy per stream.
bool on_side_stream();

// Whether model code forks independent work onto a second stream (Fork): on unless DSEEK_BRANCHES=0
// in the environment; the switch is for comparisons (bench_decode_cuda times both).
bool branches_enabled();
void set_branches_enabled(bool on);

// Background: work whose results the main stream needs only later, on a third stream of lower
// priority (AdamW::step_async: each layer's update beside the next step's forward, which waits for
// a layer's update only where it reads that layer's weights). The main stream's kernels get the
// SMs first; the background's fill what they leave.
//
//   {
//     cuda::Background bg;          // waits for the main stream's work so far; this thread's
//     ...                           // kernels and copies go to the background stream
//     const uint64_t m = bg.mark(); // a point on the background stream
//   }                               // back on the main stream, which does not wait
//   ...
//   cuda::wait_background(m);       // the current stream waits until the background passes m
//
// Allocating inside a Background scope is an error (its memory could be handed to the main stream
// while the background still uses it). Marks share a small pool of events: waiting for an old mark
// may wait for a later point of the background stream, never an earlier one. Not inside a Fork.
class Background {
 public:
  Background();
  ~Background();
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  uint64_t mark();
};
void wait_background(uint64_t mark);
// Keeps `sms` multiprocessors out of the main stream's persistent kernels and cuBLASLt plans
// (compute_sms) until the main stream waits for background mark `until`: AdamW::step_async's
// update then keeps running beside the forward's GEMMs instead of waiting for their ends (a
// persistent GEMM holds each SM it gets for its whole run). `sms` 0 keeps none.
void keep_sms_for_background(int sms, uint64_t until);
// The SMs the main stream's persistent kernels and cuBLASLt plans spread over: all of them, less
// those kept for the background stream until the main stream has waited for its mark.
int compute_sms();

// Bytes the pool holds and the device's free/total memory (for diagnostics and benchmarks).
struct MemoryInfo {
  size_t pool_reserved = 0, pool_used = 0, device_free = 0, device_total = 0;
};
MemoryInfo memory_info();

}  // namespace dseek::cuda
