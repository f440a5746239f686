// Model-config overrides of `dseek train` (model.rope_scaling.*, model.max_position_embeddings):
// how a run changes the shape-free parts of a model it starts from, as DeepSeek-Coder-V2 extends
// its context by continuing training with YaRN rope scaling (4K → 128K in stages). The weights do
// not depend on these fields, so an init_from checkpoint loads unchanged into the extended model.
#pragma once

#include "model/config.h"
#include "train/train_config.h"

namespace dseek::train {

// Applies the overrides set in `config` (those left at "" / -1 keep the model's values) and
// re-validates the model config. Switching the type to yarn or linear starts from that type's
// defaults (transformers' defaults: β_fast 32, β_slow 1, mscale 1, mscale_all_dim 0, original
// context = the model's max_position_embeddings before the change); when max_position_embeddings
// is not given it becomes original × factor. Type "none" removes the scaling. Errors name the key:
// "[train] model.rope_scaling.factor: ...".
void apply_model_overrides(const TrainConfig& config, ModelConfig& model);

// True when any override is set (a resumed run keeps the config it recorded instead).
bool has_model_overrides(const TrainConfig& config);

}  // namespace dseek::train
