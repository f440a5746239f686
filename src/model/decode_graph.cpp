#include "model/decode_graph.h"

#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "ops/argmax.h"

namespace dseek {

namespace {

// The addresses a captured step bakes in: every layer's rows and the positions buffer.
std::vector<const void*> cache_storage(KVCache& cache) {
  std::vector<const void*> storage;
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    storage.push_back(cache.keys(l).raw());
    storage.push_back(cache.values(l).defined() ? cache.values(l).raw() : nullptr);
  }
  storage.push_back(cache.device_positions(0).raw());
  return storage;
}

}  // namespace

void DecodeGraph::reset(KVCache& cache) {
  graph_.reset();
  greedy_graph_.reset();
  warm_ = false;
  storage_ = cache_storage(cache);
  if (!ids_.defined()) ids_ = Tensor::zeros({2}, DType::I32, Device::CUDA);
}

Tensor DecodeGraph::logits_of(const Body& body) {
  Tensor out = body(ids_.slice(0, 0, 1));
  DSEEK_CHECK(out.dim() == 2 && out.size(0) == 1 && out.is_cuda(),
              "[decode_graph] the step must give logits [1, V] on the GPU, got {}",
              shape_str(out.shape()));
  return out;
}

void DecodeGraph::run(const Body& body) {
  const Tensor out = logits_of(body);
  if (!logits_.defined() || logits_.shape() != out.shape())
    logits_ = Tensor::empty(out.shape(), DType::F32, Device::CUDA);  // outside capture: warm-up
  logits_.copy_from(out);
}

void DecodeGraph::prepare(KVCache& cache) {
  DSEEK_CHECK(cache.device() == Device::CUDA, "[decode_graph] the cache must be on the GPU");
  if (storage_ != cache_storage(cache)) reset(cache);
}

void DecodeGraph::replay(std::unique_ptr<cuda::Graph>& graph, const std::function<void()>& work) {
  if (failed_ || !warm_) {
    work();
    warm_ = true;
    return;
  }
  if (!graph) {
    auto captured = std::make_unique<cuda::Graph>();
    try {
      captured->begin_capture();
      work();
      captured->end_capture();
      graph = std::move(captured);
    } catch (const Error& e) {
      captured->discard_capture();
      failed_ = true;
      std::fprintf(stderr, "[decode] CUDA graph capture failed, decoding without graphs: %s\n",
                   e.what());
      work();
      return;
    }
  }
  graph->launch();
  ++replays_;
}

Tensor DecodeGraph::step(int32_t id, KVCache& cache, const Body& body) {
  prepare(cache);
  // This step's inputs, written on the stream ahead of the work that reads them.
  cache.device_positions(1);
  dseek::cuda::copy_to_device(ids_.raw(), &id, sizeof(id));
  replay(graph_, [&] { run(body); });
  return logits_.clone();
}

void DecodeGraph::run_greedy(const Body& body) {
  const Tensor out = logits_of(body);
  // The embedding at the step's start has read ids_ (stream order): the next id may replace it.
  ops::argmax_rows(out, ids_.slice(0, 0, 1), ids_.slice(0, 1, 2));
}

void DecodeGraph::greedy_start(int32_t id, KVCache& cache) {
  prepare(cache);
  dseek::cuda::copy_to_device(ids_.raw(), &id, sizeof(id));
}

void DecodeGraph::greedy_queue(KVCache& cache, const Body& body, int slot) {
  prepare(cache);
  DSEEK_CHECK(slot == 0 || slot == 1, "[decode_graph] readback slot {}", slot);
  cache.device_positions(1);
  replay(greedy_graph_, [&] { run_greedy(body); });
  if (!tokens_) tokens_ = std::make_unique<cuda::HostReadback>(2, 2 * sizeof(int32_t));
  tokens_->copy(slot, ids_.raw());
}

int32_t DecodeGraph::greedy_token(int slot) {
  DSEEK_CHECK(tokens_, "[decode_graph] no greedy step was queued");
  int32_t id_and_nan[2] = {0, 0};
  std::memcpy(id_and_nan, tokens_->wait(slot), sizeof(id_and_nan));
  // As the sampler refuses a row with NaN: a model that produces them is broken.
  DSEEK_CHECK(id_and_nan[1] == 0, "[decode] the step's logits hold NaN");
  return id_and_nan[0];
}

}  // namespace dseek
