// `dseek data prepare`: text files, directories and JSONL → tokenized shards for training.
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/progress.h"
#include "data/prepare.h"

namespace dseek::cli {

void add_data_commands(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Prepare training data");
  data->require_subcommand(1);
  auto* prepare = data->add_subcommand("prepare", "Tokenize text into binary shards (streaming)");
  auto options = std::make_shared<PrepareOptions>();
  prepare->add_option("--tokenizer", options->tokenizer, "tokenizer.json or a directory holding it")->required();
  prepare->add_option("--input", options->inputs, "text files, directories or .jsonl files")->required();
  prepare->add_option("--out", options->out_dir, "output directory (must not hold a data set)")->required();
  prepare->add_option("--separator", options->corpus.separator_line,
                      "a line that separates documents in plain text files (e.g. % for fortunes)");
  prepare->add_option("--jsonl-field", options->corpus.jsonl_field, "JSONL field holding the text")
      ->capture_default_str();
  prepare->add_option("--fim-rate", options->fim.rate, "fraction of documents given the FIM transform")
      ->capture_default_str();
  prepare->add_option("--fim-spm-rate", options->fim.spm_rate, "fraction of FIM documents in SPM order")
      ->capture_default_str();
  prepare->add_option("--seed", options->seed, "seed of the FIM decisions")->capture_default_str();
  prepare->add_option("--max-shard-tokens", options->max_shard_tokens, "tokens per shard")->capture_default_str();
  prepare->callback([options] {
    PrepareSummary s = prepare_data(*options);
    fmt::print("prepared {} documents, {} tokens ({} FIM) from {} bytes in {:.1f}s into {}\n", s.documents,
               s.tokens, s.fim_documents, s.bytes, s.seconds, options->out_dir);
  });
}

}  // namespace dseek::cli
