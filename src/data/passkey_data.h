// `dseek data passkey`: training data for passkey retrieval (data/passkey.h) mixed with ordinary
// text, as token shards `dseek train` reads. Each passkey document is a prompt of a random length
// in [min_length, length] with the key at a random depth, followed by its answer " <key>." and
// EOS, so the model is trained to copy the key where the question asks for it; the text documents
// (optional) keep it a language model. The loader shuffles documents, which mixes the two.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/corpus_reader.h"

namespace dseek {

struct PasskeyDataOptions {
  std::string tokenizer;  // file or directory
  std::string out_dir;
  int64_t length = 128;      // longest prompt, in tokens
  int64_t min_length = 0;    // shortest prompt (0: = length)
  int64_t count = 1000;      // passkey documents
  std::vector<std::string> text_inputs;  // ordinary text to mix in (files, directories, JSONL)
  CorpusOptions corpus;
  uint64_t seed = 0;
};

struct PasskeyDataSummary {
  int64_t passkey_documents = 0, text_documents = 0, tokens = 0;
};

// Errors: "[passkey] --length ...", "[passkey] --count ...", and those of the tokenizer, reader
// and shard writer.
PasskeyDataSummary write_passkey_data(const PasskeyDataOptions& options);

}  // namespace dseek
