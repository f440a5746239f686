// `dseek data passkey`: training data for passkey retrieval (data/passkey.h) mixed with ordinary
// text, as token shards `dseek train` reads. Each passkey document is a prompt of a random length
// in [min_length, length] with the key at a random depth, followed by its answer " <key>." and
// EOS, so the model is trained to copy the key where the question asks for it; the text documents
// (optional) keep it a language model. The loader shuffles documents, which mixes the two.
//
// With `rows` > 0 the output is instead packed rows of `rows` positions in the post-training
// format (data/chat_rows.h, task "sft", trained with train.task=sft): every document is its own
// segment, so attention never reaches another document's key, and with `answer_only` the loss
// counts only the answer tokens of the passkey documents (text documents keep every token), which
// puts the whole gradient of those documents on retrieval.
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
  int64_t rows = 0;          // > 0: packed segment rows of this many positions (see above)
  bool answer_only = false;  // rows only: passkey documents train their answer tokens only
};

struct PasskeyDataSummary {
  int64_t passkey_documents = 0, text_documents = 0, tokens = 0;
};

// Errors: "[passkey] --length ...", "[passkey] --count ...", and those of the tokenizer, reader
// and shard writer.
PasskeyDataSummary write_passkey_data(const PasskeyDataOptions& options);

}  // namespace dseek
