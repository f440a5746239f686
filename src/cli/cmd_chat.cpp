// dseek chat: an interactive conversation. Each stdin line is one user turn (so it works piped);
// EOF or /exit ends it, /reset clears the history. The whole history is rendered with the chat
// template every turn; the Generator keeps the KV cache of the common prefix, so only the new
// turn is prefilled.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/generation_flags.h"
#include "cli/validators.h"
#include "core/error.h"
#include "infer/generator.h"
#include "model/model.h"

namespace dseek::cli {

void add_chat_command(CLI::App& app) {
  struct Args {
    GenerationFlags flags;
    std::string system;
    int64_t context = 4096;
    bool timing = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "chat", "Chat with a model: one user turn per stdin line; /reset clears, /exit quits");
  add_generation_flags(cmd, args->flags, 512);
  cmd->add_option("--system", args->system, "system prompt");
  cmd->add_option("--context", args->context, "context size in tokens (capped by the model)")
      ->check(cli::positive);
  cmd->add_flag("--timing", args->timing, "print timing of each reply to stderr");
  cmd->callback([args] {
    const GenerationFlags& flags = args->flags;
    const std::optional<Tokenizer> tokenizer = load_tokenizer_for(flags);
    DSEEK_CHECK(tokenizer.has_value(), "[chat] no tokenizer.json in {}; pass --tokenizer",
                flags.model);
    GenerationOptions options;
    options.max_new_tokens = flags.max_new_tokens;
    options.sampling = sampling_from_flags(flags);
    options.stop = flags.stop;
    options.tokenizer = &*tokenizer;
    options.eos_ids = chat_end_ids(*tokenizer);
    std::vector<ChatMessage> messages;
    if (!args->system.empty()) messages.push_back({"system", args->system});
    // Fail on a missing template before loading the weights.
    (void)render_conversation(*tokenizer, messages, flags);

    const std::unique_ptr<Model> model = Model::load(flags.model, placement_from_flags(flags));
    Generator generator(*model, args->context);
    const bool interactive = isatty(STDIN_FILENO) != 0;
    options.on_text = [](std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
    std::string line;
    while (true) {
      if (interactive) std::fputs("> ", stderr);
      if (!std::getline(std::cin, line)) break;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line == "/exit") break;
      if (line == "/reset") {
        messages.resize(args->system.empty() ? 0 : 1);
        std::fputs("(history cleared)\n", stderr);
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({"user", line});
      const std::string prompt = render_conversation(*tokenizer, messages, flags);
      const std::vector<int32_t> ids = tokenizer->encode(prompt, /*add_bos=*/false);
      GenerationResult result;
      try {
        result = generator.generate(ids, options);
      } catch (const Error& e) {
        // A turn that does not fit the context is reported; the conversation can go on after
        // /reset.
        messages.pop_back();
        std::fprintf(stderr, "dseek: %s (try /reset)\n", e.what());
        continue;
      }
      std::fputc('\n', stdout);
      std::fflush(stdout);
      messages.push_back({"assistant", result.text});
      if (args->timing) print_timing(result);
    }
  });
}

}  // namespace dseek::cli
