// DecodeGraph: batch-1 decoding on a GPU replayed as one CUDA graph per step.
//
// A decode step of a DeepSeek model is ~40 small kernels a layer (norms, projections, RoPE, the
// absorbed attention, routing, expert GEMVs, adds): ~1000 launches a token at 27 layers, each a
// few microseconds of host work — as long as the kernels themselves. Captured once into a graph
// (core/cuda.h Graph), the whole step is one launch.
//
// What makes the step replayable: everything that changes from token to token is read from
// device memory that is rewritten before each launch — the token id (this object's ids_), the
// positions of the appended rows (KVCache::device_positions: RoPE angles, the rows written, the
// number of keys mla_decode reads) — and the step's temporaries are allocated and freed inside
// the graph. The logits land in a buffer of this object; step() returns a copy.
//
// Greedy decoding (Transformer::decode_greedy) replays a second graph: the same step followed by
// the argmax of its logits (ops::argmax_rows), written into the ids buffer the next step reads,
// and a copy of that id into page-locked host memory. The host can then queue step n + 1 before
// it reads step n's token: the GPU goes from one step to the next without waiting for the host
// to read the logits, pick the token and send it back.
//
// Per cache: the first step runs eagerly (warm-up: lazily made state such as cuBLASLt plans and
// uploaded RoPE frequencies comes into being outside the capture), the second is captured and
// replayed, every later one replayed. A different cache (other storage) starts over. If capture
// fails (an op that cannot be recorded), decoding goes on without graphs and says so once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/cuda.h"
#include "core/tensor.h"
#include "model/kv_cache.h"

namespace dseek {

class DecodeGraph {
 public:
  // The step's work: from ids (i32 [1] on the GPU) through the layers (which append to the
  // cache) to logits [1, V] on the GPU, any float dtype.
  using Body = std::function<Tensor(const Tensor& device_ids)>;

  // Runs one step for token `id` (checked by the caller) against `cache`, which the step appends
  // to (the caller advances it afterwards). Returns the logits, f32 [1, V] on the GPU.
  Tensor step(int32_t id, KVCache& cache, const Body& body);

  // Greedy steps: greedy_start puts `id` into the ids buffer; each greedy_queue queues a step for
  // the id in it (appending it to `cache`; the caller advances the cache afterwards) that leaves
  // the argmax of its logits there for the next step and copies it into readback slot `slot`
  // (0 or 1); greedy_token waits for that copy and returns the id (throwing if the logits held
  // NaN, as the sampler does).
  void greedy_start(int32_t id, KVCache& cache);
  void greedy_queue(KVCache& cache, const Body& body, int slot);
  int32_t greedy_token(int slot);

  int64_t replays() const { return replays_; }  // steps that ran as a graph launch
  bool failed() const { return failed_; }       // capture failed: steps run eagerly

 private:
  void reset(KVCache& cache);
  void prepare(KVCache& cache);       // checks the cache; a different one resets
  Tensor logits_of(const Body& body);  // the body on ids_'s id, its logits checked [1, V]
  void run(const Body& body);         // the body, logits copied into logits_ (on the stream)
  void run_greedy(const Body& body);  // the body, its argmax written into ids_
  // Replays `graph`, capturing it from `work` first if it is empty; runs `work` eagerly if capture
  // failed now or before.
  void replay(std::unique_ptr<cuda::Graph>& graph, const std::function<void()>& work);

  std::vector<const void*> storage_;  // the cache's buffers the graph was recorded against
  Tensor ids_;  // i32 [2] on the GPU: the step's id, and whether a greedy pick saw NaN logits
  Tensor logits_;                     // f32 [1, V] on the GPU, written by every step
  std::unique_ptr<cuda::Graph> graph_;          // step(): the logits
  std::unique_ptr<cuda::Graph> greedy_graph_;   // greedy_queue(): the next id
  std::unique_ptr<cuda::HostReadback> tokens_;  // greedy ids, two slots
  bool warm_ = false, failed_ = false;
  int64_t replays_ = 0;
};

}  // namespace dseek
