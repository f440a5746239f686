#include "model/decode_graph.h"

#include <cstdio>

#include "core/error.h"

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
  warm_ = false;
  storage_ = cache_storage(cache);
  if (!ids_.defined()) ids_ = Tensor::zeros({1}, DType::I32, Device::CUDA);
}

void DecodeGraph::run(const Body& body) {
  const Tensor out = body(ids_);
  DSEEK_CHECK(out.dim() == 2 && out.size(0) == 1 && out.is_cuda(),
              "[decode_graph] the step must give logits [1, V] on the GPU, got {}",
              shape_str(out.shape()));
  if (!logits_.defined() || logits_.shape() != out.shape())
    logits_ = Tensor::empty(out.shape(), DType::F32, Device::CUDA);  // outside capture: warm-up
  logits_.copy_from(out);
}

Tensor DecodeGraph::step(int32_t id, KVCache& cache, const Body& body) {
  DSEEK_CHECK(cache.device() == Device::CUDA, "[decode_graph] the cache must be on the GPU");
  if (storage_ != cache_storage(cache)) reset(cache);
  // This step's inputs, written on the stream ahead of the work that reads them.
  cache.device_positions(1);
  dseek::cuda::copy_to_device(ids_.raw(), &id, sizeof(id));

  if (failed_ || !warm_) {
    run(body);
    warm_ = true;
  } else {
    if (!graph_) {
      auto graph = std::make_unique<cuda::Graph>();
      try {
        graph->begin_capture();
        run(body);
        graph->end_capture();
        graph_ = std::move(graph);
      } catch (const Error& e) {
        graph->discard_capture();
        failed_ = true;
        std::fprintf(stderr, "[decode] CUDA graph capture failed, decoding without graphs: %s\n",
                     e.what());
        run(body);
        return logits_.clone();
      }
    }
    graph_->launch();
    ++replays_;
  }
  return logits_.clone();
}

}  // namespace dseek
