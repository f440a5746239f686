// `dseek tokenizer train`: learns a byte-level BPE tokenizer (DeepSeek-V3's format and
// pre-tokenizer) from text files, directories or JSONL, for models too small for the real
// 100K+ vocabularies.
//   dseek tokenizer train --input PATH... [--separator %] [--vocab-size N] --out DIR
// writes DIR/tokenizer.json and DIR/tokenizer_config.json (each atomically), then loads them
// back as a check.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <optional>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/corpus_reader.h"
#include "data/token_shards.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"

namespace dseek::cli {
namespace {

struct TrainArgs {
  std::vector<std::string> inputs;
  CorpusOptions corpus;
  BpeTrainerOptions trainer;
  std::string out_dir;
  bool no_chat_tokens = false;
};

void run_train(TrainArgs args) {
  namespace fs = std::filesystem;
  const auto start = std::chrono::steady_clock::now();
  if (args.no_chat_tokens) {
    args.trainer.chat_tokens.clear();
    args.trainer.chat_template.clear();
  }
  BpeTrainer trainer(args.trainer);  // checks the options before reading any input
  CorpusReader reader(args.inputs, args.corpus);
  {
    Progress progress("counting words", int64_t(reader.total_bytes()), "B");
    CorpusPiece piece;
    while (reader.next(piece)) {
      trainer.add_text(piece.text);
      progress.update(int64_t(reader.bytes_read()));
    }
    progress.finish();
  }
  fmt::print(stderr, "{} words, {} distinct, from {} files\n", human_count(trainer.total_words()),
             human_count(trainer.distinct_words()), reader.files().size());
  const TrainedTokenizer trained = trainer.train(true);

  std::error_code ec;
  fs::create_directories(args.out_dir, ec);
  DSEEK_CHECK(!ec, "[tokenizer train] {}: cannot create the directory: {}", args.out_dir,
              ec.message());
  const fs::path dir(args.out_dir);
  write_file_atomic((dir / "tokenizer.json").string(), trained.tokenizer.dump(2) + "\n");
  write_file_atomic((dir / "tokenizer_config.json").string(), trained.config.dump(2) + "\n");
  const Tokenizer check = Tokenizer::load(args.out_dir);  // what users will load
  DSEEK_CHECK(check.vocab_size() == trained.vocab_size,
              "[tokenizer train] {}: reloaded vocab size {} differs from the trained {}",
              args.out_dir, check.vocab_size(), trained.vocab_size);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double bytes_per_token =
      trained.corpus_tokens > 0 ? double(trained.corpus_bytes) / double(trained.corpus_tokens) : 0;
  fmt::print(
      "trained {} merges, vocab size {} ({:.2f} bytes per token on the corpus) in {:.1f}s "
      "into {}\n",
      trained.merges, trained.vocab_size, bytes_per_token, seconds, args.out_dir);
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  auto* group = app.add_subcommand("tokenizer", "Train tokenizers");
  group->require_subcommand(1);
  auto* train = group->add_subcommand(
      "train", "Learn a byte-level BPE tokenizer (DeepSeek-V3 format) from a corpus");
  auto args = std::make_shared<TrainArgs>();
  train->add_option("--input", args->inputs, "text files, directories or .jsonl files")->required();
  train
      ->add_option("--out", args->out_dir,
                   "output directory for tokenizer.json and "
                   "tokenizer_config.json")
      ->required();
  train->add_option("--separator", args->corpus.separator_line,
                    "a line that separates documents in plain text files (e.g. % for fortunes)");
  train->add_option("--jsonl-field", args->corpus.jsonl_field, "JSONL field holding the text")
      ->capture_default_str();
  train
      ->add_option("--vocab-size", args->trainer.vocab_size,
                   "ids in all: 256 bytes + merges + special and chat tokens")
      ->capture_default_str();
  train
      ->add_option("--min-frequency", args->trainer.min_frequency,
                   "pairs seen fewer times are never merged")
      ->capture_default_str();
  train
      ->add_option("--pre-tokenizer", args->trainer.pre_tokenizer,
                   "\"deepseek_v3\" or a tokenizer.json whose pre-tokenizer to use")
      ->capture_default_str();
  train->add_flag("--no-chat-tokens", args->no_chat_tokens,
                  "leave out <｜User｜>/<｜Assistant｜> and the chat template");
  train->callback([args] { run_train(*args); });
}

}  // namespace dseek::cli
