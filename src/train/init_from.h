// model.init_from: the weights a run starts from instead of a random initialisation, with a fresh
// optimizer, step 0 and its own data order. This is how fine-tuning starts from a pretrained model
// and how DeepSeek-Coder-V2's long-context stages continue from the previous stage's weights (with
// a new rope scaling, which leaves every tensor's shape unchanged). A source is one of
//   a run directory        (config.json + checkpoints/): its newest complete checkpoint
//   a checkpoint directory (manifest.json, under RUN/checkpoints/): that checkpoint, RUN/config.json
//   a model directory      (config.json + model.safetensors or a sharded index): an exported run or
//                          a Hugging Face checkpoint (bf16/f16 converted to f32, FP8 dequantised)
#pragma once

#include <string>

#include "model/config.h"
#include "train/param.h"

namespace dseek::train {

// The config.json belonging to the source (the model's shape unless model.config overrides it).
ModelConfig init_from_model_config(const std::string& source);

// Copies every parameter and buffer of `params` from the source, by HF name. A tensor the model
// needs that the source lacks, or a shape mismatch, is an error naming both; tensors the model
// does not use (an MTP module's own embedding/head copies, say) are skipped. Returns a one-line
// description ("run X checkpoint step-00000100", ...) for the log.
std::string load_init_weights(const std::string& source, ParamSet& params);

}  // namespace dseek::train
