// Export of a training run as a Hugging Face model directory: config.json (hub style, what
// transformers' DeepseekV3/DeepseekV2/Llama configs read), model.safetensors (every parameter
// and buffer under its HF name, f32 or bf16), the run's tokenizer files and generation_config.json.
// `dseek logits`/`generate` and transformers' AutoModelForCausalLM load the result. MTP modules
// are exported as layers L.. without their own embedding/head (DeepSeek's layout, sharing the main
// ones): dseek's loader falls back to the main ones and transformers, which has no MTP, skips them.
#pragma once

#include <string>

#include "core/dtype.h"

namespace dseek::train {

struct ExportOptions {
  std::string run_dir;
  std::string checkpoint;  // a checkpoint directory; "" = the run's newest
  std::string out_dir;
  DType dtype = DType::F32;  // F32 or BF16
};

// Returns the checkpoint directory exported. Errors name the run, checkpoint or file at fault.
std::string export_run(const ExportOptions& options);

}  // namespace dseek::train
