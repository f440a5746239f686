#include "train/export.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/token_shards.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "train/checkpoint.h"

namespace dseek::train {
namespace fs = std::filesystem;

std::string export_run(const ExportOptions& o) {
  DSEEK_CHECK(o.dtype == DType::F32 || o.dtype == DType::BF16,
              "[export] dtype: f32 or bf16, got {}", dtype_name(o.dtype));
  const fs::path run(o.run_dir);
  DSEEK_CHECK(fs::exists(run / "config.json"), "[export] {}: not a training run (no config.json)",
              o.run_dir);
  std::string ckpt = o.checkpoint;
  if (ckpt.empty()) {
    ckpt = find_latest_checkpoint(o.run_dir);
    DSEEK_CHECK(!ckpt.empty(), "[export] {}: the run has no complete checkpoint", o.run_dir);
  }
  ModelConfig config = load_model_config((run / "config.json").string());
  const CheckpointData data = load_checkpoint(ckpt);
  for (const auto& [name, t] : data.model)
    DSEEK_CHECK(name.find(".synth.") == std::string::npos,
                "[export] {}: tensor '{}' belongs to a synthesised operator "
                "(train.synth_override, {}); the inference model has no such layer",
                ckpt, name, (run / "synth_operator.json").string());

  const fs::path out(o.out_dir);
  fs::create_directories(out);
  config.torch_dtype = o.dtype == DType::BF16 ? "bfloat16" : "float32";
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, t] : data.model) {
    // Router biases stay f32 (transformers keeps e_score_correction_bias in f32 too).
    const bool keep_f32 = name.find("e_score_correction_bias") != std::string::npos;
    tensors.emplace_back(name, keep_f32 ? t : t.to(o.dtype));
  }
  save_safetensors((out / "model.safetensors").string(), tensors,
                   {{"format", "pt"}, {"generator", "dseek export"}});
  write_file_atomic((out / "config.json").string(), model_config_to_json(config));
  nlohmann::ordered_json gen;
  if (config.bos_token_id >= 0) gen["bos_token_id"] = config.bos_token_id;
  if (!config.eos_token_ids.empty()) gen["eos_token_id"] = config.eos_token_ids.front();
  gen["do_sample"] = false;
  write_file_atomic((out / "generation_config.json").string(), gen.dump(2) + "\n");
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = run / "tokenizer" / name;
    if (fs::exists(src)) fs::copy_file(src, out / name, fs::copy_options::overwrite_existing);
  }
  return ckpt;
}

}  // namespace dseek::train
