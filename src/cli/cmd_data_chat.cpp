// `dseek data sft` and `dseek data dpo`: chat JSONL → packed rows with loss masks for
// post-training (data/chat_rows.h), trained with `dseek train --set train.task=sft|dpo`.
#include <fmt/format.h>

#include "cli/commands.h"
#include "data/chat_rows.h"

namespace dseek::cli {

void add_data_chat_commands(CLI::App& app) {
  CLI::App* data = app.get_subcommand("data");  // registered by add_data_commands
  for (const char* task : {"sft", "dpo"}) {
    const bool sft = std::string(task) == "sft";
    auto* cmd = data->add_subcommand(
        task, sft ? "Chat JSONL ({\"messages\": [...]}) → packed rows, loss on assistant turns only"
                  : "Preference JSONL ({\"prompt\", \"chosen\", \"rejected\"}) → packed pairs for DPO");
    auto o = std::make_shared<ChatPrepareOptions>();
    cmd->add_option("--tokenizer", o->tokenizer,
                    "tokenizer directory (tokenizer.json + tokenizer_config.json with the chat_template)")
        ->required();
    cmd->add_option("--input", o->input, "JSONL file")->required();
    cmd->add_option("--out", o->out_dir, "output directory (must not hold a data set)")->required();
    cmd->add_option("--max-len", o->max_len, "row length in tokens (the training seq_len)")
        ->capture_default_str();
    cmd->add_option("--chat-format", o->chat_format,
                    "chat format for a tokenizer without a chat_template (deepseek_llm, deepseek_v3, ...)");
    cmd->callback([o, sft] {
      const ChatPrepareSummary s = sft ? prepare_sft(*o) : prepare_dpo(*o);
      fmt::print("packed {} {} into {} rows of {} ({} truncated), {} trained tokens, in {}\n",
                 s.examples, sft ? "conversations" : "pairs", s.rows, o->max_len, s.truncated,
                 s.trained_tokens, o->out_dir);
    });
  }
}

}  // namespace dseek::cli
