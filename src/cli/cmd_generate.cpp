// dseek generate: one completion, streamed to stdout as it is produced; timing on stderr.
// `--print-ids` adds the generated ids, space-separated, as the last line of stdout.
// `--fim-prefix P --fim-suffix S [--fim-mode psm|spm]` infills code (DeepSeek-Coder FIM): the
// prompt is BOS <｜fim▁begin｜>P<｜fim▁hole｜>S<｜fim▁end｜> (data/fim.h), and what is printed is
// the middle the model writes, up to EOS.
// `--expert-parallel` under `mpirun -np N` splits the routed experts over the N ranks
// (cli/expert_parallel.h): every rank runs the same loop, rank 0's sampled token is broadcast
// each step, and rank 0 alone prints.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/expert_parallel.h"
#include "cli/generation_flags.h"
#include "core/error.h"
#include "data/fim.h"
#include "infer/generator.h"
#include "model/model.h"

namespace dseek::cli {

namespace {

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSEEK_CHECK(!item.empty() && used == item.size() && value >= 0 && value <= INT32_MAX,
                "[generate] --ids: '{}' is not a token id (expected e.g. 5,17,42)", item);
    ids.push_back(int32_t(value));
    pos = end + 1;
  }
  return ids;
}

}  // namespace

void add_generate_command(CLI::App& app) {
  struct Args {
    GenerationFlags flags;
    std::string prompt, ids, fim_prefix, fim_suffix, fim_mode = "psm";
    bool print_ids = false, chat = false, expert_parallel = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate a completion for a prompt");
  add_generation_flags(cmd, args->flags, 128);
  CLI::Option* prompt = cmd->add_option("--prompt", args->prompt, "prompt text");
  CLI::Option* ids = cmd->add_option("--ids", args->ids, "prompt token ids, comma-separated");
  prompt->excludes(ids);
  CLI::Option* fim_prefix =
      cmd->add_option("--fim-prefix", args->fim_prefix, "code before the hole (fill-in-the-middle)");
  CLI::Option* fim_suffix =
      cmd->add_option("--fim-suffix", args->fim_suffix, "code after the hole (fill-in-the-middle)");
  CLI::Option* fim_mode = cmd->add_option("--fim-mode", args->fim_mode,
                                          "psm (prefix first, as DeepSeek-Coder) or spm")
                              ->capture_default_str();
  cmd->add_flag("--print-ids", args->print_ids, "print the generated ids as the last line");
  cmd->add_flag("--chat", args->chat, "wrap --prompt as a user turn in the chat template");
  cmd->add_flag("--expert-parallel", args->expert_parallel,
                "under mpirun -np N: each rank holds 1/N of every MoE layer's routed experts");
  cmd->callback([args, prompt, ids, fim_prefix, fim_suffix, fim_mode] {
    const GenerationFlags& flags = args->flags;
    const bool fim = fim_prefix->count() + fim_suffix->count() > 0;
    DSEEK_CHECK(!fim || (fim_prefix->count() == 1 && fim_suffix->count() == 1),
                "[generate] fill-in-the-middle needs both --fim-prefix and --fim-suffix (either "
                "may be '')");
    DSEEK_CHECK(fim || fim_mode->count() == 0,
                "[generate] --fim-mode needs --fim-prefix and --fim-suffix");
    DSEEK_CHECK(prompt->count() + ids->count() + (fim ? 1 : 0) == 1,
                "[generate] give exactly one of --prompt, --ids or --fim-prefix/--fim-suffix");
    GenerationOptions options;
    options.max_new_tokens = flags.max_new_tokens;
    options.sampling = sampling_from_flags(flags);
    options.stop = flags.stop;
    const std::optional<Tokenizer> tokenizer = load_tokenizer_for(flags);
    if (tokenizer) options.tokenizer = &*tokenizer;

    std::vector<int32_t> prompt_ids;
    if (ids->count() > 0) {
      DSEEK_CHECK(!args->chat, "[generate] --chat needs --prompt, not --ids");
      prompt_ids = parse_ids(args->ids);
    } else if (fim) {
      DSEEK_CHECK(!args->chat, "[generate] --chat needs --prompt, not --fim-prefix/--fim-suffix");
      DSEEK_CHECK(tokenizer.has_value(),
                  "[generate] --fim-prefix: no tokenizer.json in {}; pass --tokenizer", flags.model);
      FimMode mode = FimMode::PSM;
      try {
        mode = parse_fim_mode(args->fim_mode);
      } catch (const Error&) {
        fail("[generate] --fim-mode: '{}' is not psm or spm", args->fim_mode);
      }
      const FimTokens tokens = FimTokens::from_tokenizer(*tokenizer);
      bool has_bos = true;
      try {
        (void)tokenizer->bos_id();
      } catch (const Error&) {
        has_bos = false;
      }
      prompt_ids = fim_prompt(*tokenizer, args->fim_prefix, args->fim_suffix, tokens, mode, has_bos);
    } else {
      DSEEK_CHECK(tokenizer.has_value(),
                  "[generate] --prompt: no tokenizer.json in {}; pass --tokenizer or use --ids",
                  flags.model);
      if (args->chat) {
        const std::string text = render_conversation(*tokenizer, {{"user", args->prompt}}, flags);
        prompt_ids = tokenizer->encode(text, /*add_bos=*/false);  // the template has its BOS
        options.eos_ids = chat_end_ids(*tokenizer);
      } else {
        bool has_bos = true;
        try {
          (void)tokenizer->bos_id();
        } catch (const Error&) {
          has_bos = false;
        }
        prompt_ids = tokenizer->encode(args->prompt, has_bos);
      }
    }
    DSEEK_CHECK(options.stop.empty() || tokenizer.has_value(),
                "[generate] --stop: stop strings need a tokenizer (none in {})", flags.model);

    Placement placement = placement_from_flags(flags);
    if (args->expert_parallel) enable_expert_parallel(placement, "generate");
    const std::unique_ptr<Model> model = Model::load(flags.model, placement);
    log_expert_parallel(*model, placement);
    if (placement.experts.sharded()) {
      options.agree_token = [&placement](int32_t id) { return rank0_token(placement.experts, id); };
    }
    const bool prints = prints_output(placement);
    bool wrote_text = false, ends_with_newline = false;
    if (prints) {
      options.on_text = [&](std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        wrote_text = true;
        ends_with_newline = text.back() == '\n';
      };
    }
    const GenerationResult result = generate(*model, prompt_ids, options);
    if (!prints) return;
    if (wrote_text && !ends_with_newline) std::fputc('\n', stdout);
    if (args->print_ids || !tokenizer) {
      std::string line;
      for (int32_t id : result.ids) line += (line.empty() ? "" : " ") + std::to_string(id);
      std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
    print_timing(result);
  });
}

}  // namespace dseek::cli
