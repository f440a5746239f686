// Model::load: config.json + safetensors (memory-mapped; bf16/f16/f32 weights are used in place,
// FP8 ones dequantised by WeightStore::get_weight). Every tensor the architecture needs must be
// present with the expected shape (errors name the tensor and its file). Extra tensors are not an
// error — real checkpoints carry some (MTP layers of an unsupported depth, rotary buffers of older
// exports) — but they are reported once on stderr, since they can also mean a mis-set config.
#include "model/model.h"

#include <cstdio>

#include "core/error.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "ops/argmax.h"

namespace dseek {

std::unique_ptr<Model> Model::load(const std::string& dir, const Placement& placement) {
  validate(placement);
  const ModelConfig config = load_model_config(dir);
  WeightStore store = WeightStore::open(dir);
  // FP8 weights scale blocks of quantization_config.weight_block_size (128×128 unless it says).
  store.set_fp8_block_size(config.quantization.block_rows, config.quantization.block_cols);
  auto model = std::make_unique<Transformer>(config, store, placement);
  const auto& unused = model->unused_tensors();
  if (!unused.empty()) {
    std::string names;
    for (size_t i = 0; i < unused.size() && i < 5; ++i) names += (i ? ", " : "") + unused[i];
    std::fprintf(stderr,
                 "dseek: warning: %s: %zu checkpoint tensors are not used by the model (%s%s)\n",
                 dir.c_str(), unused.size(), names.c_str(), unused.size() > 5 ? ", ..." : "");
  }
  if (config.num_nextn_predict_layers > model->num_mtp_layers())
    std::fprintf(stderr,
                 "dseek: warning: %s: config declares %lld MTP layers, checkpoint has %lld\n",
                 dir.c_str(), static_cast<long long>(config.num_nextn_predict_layers),
                 static_cast<long long>(model->num_mtp_layers()));
  return model;
}

std::vector<int32_t> Model::decode_greedy(int32_t first, int64_t max_steps, KVCache& cache,
                                          const std::function<bool(int32_t)>& on_token) {
  std::vector<int32_t> produced;
  int32_t id = first;
  const Tensor pick = Tensor::zeros({1}, DType::I32), nan = Tensor::zeros({1}, DType::I32);
  for (int64_t s = 0; s < max_steps && cache.size() < cache.capacity(); ++s) {
    const Tensor logits = forward({id}, cache);
    const int64_t last = logits.size(0) - 1;
    ops::argmax_rows(logits.slice(0, last, last + 1).to(Device::CPU), pick, nan);
    DSEEK_CHECK(nan.data<int32_t>()[0] == 0, "[decode] the step's logits hold NaN");
    id = pick.data<int32_t>()[0];
    produced.push_back(id);
    if (!on_token(id)) break;
  }
  return produced;
}

}  // namespace dseek
