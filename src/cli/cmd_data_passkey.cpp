// `dseek data passkey`: passkey-retrieval training documents (data/passkey_data.h), optionally
// mixed with ordinary text, as token shards for `dseek train`.
//   dseek data passkey --tokenizer T --length L [--min-length M] --count N [--text FILE...] --out DIR
//                      [--rows SEQ [--answer-only]]
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "data/passkey_data.h"

namespace dseek::cli {

void add_data_passkey_command(CLI::App& app) {
  CLI::App* data = app.get_subcommand("data");  // registered by add_data_commands
  auto* cmd = data->add_subcommand("passkey", "Passkey-retrieval documents (+ text) as token shards");
  auto o = std::make_shared<PasskeyDataOptions>();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory holding it")->required();
  cmd->add_option("--out", o->out_dir, "output directory (must not hold a data set)")->required();
  cmd->add_option("--length", o->length, "longest prompt in tokens")->required();
  cmd->add_option("--min-length", o->min_length, "shortest prompt in tokens (default: --length)");
  cmd->add_option("--count", o->count, "passkey documents")->capture_default_str();
  cmd->add_option("--text", o->text_inputs, "text files, directories or .jsonl files to mix in");
  cmd->add_option("--separator", o->corpus.separator_line,
                  "a line that separates documents in plain text files (e.g. %)");
  cmd->add_option("--rows", o->rows,
                  "write packed rows of this many positions, one segment per document (train "
                  "with train.task=sft) instead of token shards");
  cmd->add_flag("--answer-only", o->answer_only,
                "with --rows: passkey documents train only their answer tokens");
  cmd->add_option("--seed", o->seed, "seed of the keys, depths and lengths")->capture_default_str();
  cmd->callback([o] {
    const PasskeyDataSummary s = write_passkey_data(*o);
    fmt::print("wrote {} passkey documents and {} text documents ({} tokens) into {}\n",
               s.passkey_documents, s.text_documents, s.tokens, o->out_dir);
  });
}

}  // namespace dseek::cli
