// Random-weight checkpoints of any DeepSeek shape, in the Hugging Face layout (tensor names and
// shapes as transformers' DeepSeek-V3/V2, DeepSeekMoE and Llama modules name them), so benchmarks
// and tests can run models that are never downloaded. Linear weights and embeddings are
// normal(0, std); norm weights are 1; biases (attention_bias, mlp_bias, the noaux_tc
// e_score_correction_bias) are normal(0, std). Values come from a per-tensor xoshiro256** stream
// (seed, tensor name), so the same seed gives the same checkpoint on every machine, and any one
// tensor does not depend on the rest of the shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace dseek {

struct WeightSpec {
  enum class Init : uint8_t { Normal, Ones };
  std::string name;
  Shape shape;
  Init init = Init::Normal;
};

// Every tensor of the checkpoint, in a stable order: embeddings, then each layer (attention, MLP
// or MoE), final norm, lm_head (unless tied), then MTP layers (model.layers.{L+k}.*).
std::vector<WeightSpec> checkpoint_layout(const ModelConfig& config);

struct InitOptions {
  DType dtype = DType::BF16;  // F32 or BF16
  uint64_t seed = 0;
  double std = 0.02;
  // Shards of about this size (model-0000i-of-0000n.safetensors + model.safetensors.index.json);
  // one model.safetensors when everything fits.
  int64_t shard_bytes = int64_t(2) << 30;
  // Optional tokenizer: a tokenizer.json file, or a directory holding tokenizer.json (and
  // tokenizer_config.json, copied too when present).
  std::string tokenizer;
};

// The values of one tensor of the layout (what write_random_checkpoint stores, before the cast).
Tensor init_tensor(const WeightSpec& spec, const InitOptions& options);

// Writes config.json and random weights to `out_dir` (created if missing). Tensors are generated
// and written one at a time, so a multi-GB checkpoint needs only one tensor's worth of memory.
// Each file is written to a temporary name and renamed when complete.
void write_random_checkpoint(const ModelConfig& config, const std::string& out_dir,
                             const InitOptions& options);

}  // namespace dseek
