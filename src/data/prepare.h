// `dseek data prepare`: raw text → tokenized shards (see token_shards.h), streaming, with a
// progress display. Optionally applies the FIM transform to documents (code corpora).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/corpus_reader.h"
#include "data/fim.h"

namespace dseek {

struct PrepareOptions {
  std::string tokenizer;  // file or directory
  std::vector<std::string> inputs;
  std::string out_dir;
  CorpusOptions corpus;
  FimOptions fim;
  uint64_t seed = 0;  // for FIM decisions and cut points
  int64_t max_shard_tokens = int64_t(1) << 28;
  bool progress = true;
};

struct PrepareSummary {
  int64_t documents = 0, tokens = 0, fim_documents = 0;
  uint64_t bytes = 0;
  double seconds = 0;
};

PrepareSummary prepare_data(const PrepareOptions& options);

}  // namespace dseek
