#include "cli/generation_flags.h"

#include <cstdio>
#include <filesystem>

#include "cli/validators.h"
#include "core/cuda.h"
#include "core/error.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"

namespace dseek::cli {

void add_generation_flags(CLI::App* cmd, GenerationFlags& flags, int64_t default_max_tokens) {
  flags.max_new_tokens = default_max_tokens;
  cmd->add_option("--model", flags.model, "checkpoint directory (config.json + safetensors)")
      ->required();
  cmd->add_option("--tokenizer", flags.tokenizer,
                  "tokenizer.json or a directory with one (default: the model directory)");
  cmd->add_option("-n,--max-new-tokens", flags.max_new_tokens, "most tokens to generate")
      ->check(cli::non_negative);
  CLI::Option* greedy = cmd->add_flag("--greedy", flags.greedy, "argmax decoding (temperature 0)");
  CLI::Option* temperature = cmd->add_option("--temperature", flags.sampling.temperature,
                                             "sampling temperature (0 = greedy)");
  CLI::Option* top_p =
      cmd->add_option("--top-p", flags.sampling.top_p, "nucleus sampling mass, (0, 1]");
  CLI::Option* top_k =
      cmd->add_option("--top-k", flags.sampling.top_k, "keep the k most likely (0 = off)");
  CLI::Option* min_p = cmd->add_option("--min-p", flags.sampling.min_p,
                                       "drop tokens below min_p × the top probability");
  cmd->add_option("--seed", flags.sampling.seed, "random seed");
  for (CLI::Option* o : {temperature, top_p, top_k, min_p}) greedy->excludes(o);
  cmd->add_option("--repetition-penalty", flags.sampling.repetition_penalty,
                  "HF repetition penalty over prompt and output (1 = off)");
  cmd->add_option("--stop", flags.stop, "stop when the text contains this (repeatable)");
  cmd->add_option(
      "--chat-format", flags.chat_format,
      "chat format when the tokenizer has no chat_template: " + [] {
        std::string names;
        for (const std::string& n : Tokenizer::chat_template_names()) {
          names += (names.empty() ? "" : ", ") + n;
        }
        return names;
      }());
  cmd->add_option("--device", flags.device, "where the model runs: cpu (default) or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", flags.dtype, "activation dtype: f32 (default) or bf16 (cuda only)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--dequantize-fp8", flags.dequantize_fp8,
                "an FP8 checkpoint's weights are dequantised at load (default: its projections "
                "stay FP8 and run as FP8 GEMMs)");
}

Placement placement_from_flags(const GenerationFlags& flags) {
  Placement placement;
  if (flags.device == "cuda") {
    // Ranks of an MPI job (expert-parallel inference): a GPU each where the node has enough.
    dist::spread_ranks_over_gpus(dist::world());
    cuda::require("--device cuda");
    placement.device = Device::CUDA;
  }
  if (flags.dtype == "bf16") {
    DSEEK_CHECK(placement.device == Device::CUDA,
                "[generate] --dtype bf16 needs --device cuda (the CPU computes in f32)");
    placement.act = DType::BF16;
  }
  if (flags.dequantize_fp8) placement.fp8 = Fp8Weights::Dequantise;
  validate(placement);
  return placement;
}

SamplingParams sampling_from_flags(const GenerationFlags& flags) {
  SamplingParams params = flags.sampling;
  if (flags.greedy) params.temperature = 0.0f;
  params.validate();
  return params;
}

std::optional<Tokenizer> load_tokenizer_for(const GenerationFlags& flags) {
  if (!flags.tokenizer.empty()) return Tokenizer::load(flags.tokenizer);
  if (std::filesystem::exists(std::filesystem::path(flags.model) / "tokenizer.json")) {
    return Tokenizer::load(flags.model);
  }
  return std::nullopt;
}

std::string render_conversation(const Tokenizer& tokenizer,
                                const std::vector<ChatMessage>& messages,
                                const GenerationFlags& flags) {
  if (!flags.chat_format.empty()) {
    return tokenizer.apply_chat_template(messages, /*add_generation_prompt=*/true,
                                         flags.chat_format);
  }
  DSEEK_CHECK(!tokenizer.chat_template_name().empty(),
              "[chat] tokenizer: no chat_template in tokenizer_config.json; pass --chat-format");
  return tokenizer.apply_chat_template(messages, /*add_generation_prompt=*/true);
}

std::vector<int32_t> chat_end_ids(const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  if (auto eot = tokenizer.token_to_id("<|EOT|>")) ids.push_back(*eot);
  return ids;
}

void print_timing(const GenerationResult& result) {
  const size_t decoded = result.ids.empty() ? 0 : result.ids.size() - 1;
  std::fprintf(stderr,
               "[timing] prefill %lld tok in %.3f s (%.1f tok/s) | decode %zu tok in %.3f s "
               "(%.2f tok/s) | finish: %s\n",
               (long long)result.prompt_tokens, result.prefill_seconds,
               result.prefill_tokens_per_second(), decoded, result.decode_seconds,
               result.decode_tokens_per_second(), result.finish_reason.c_str());
}

}  // namespace dseek::cli
