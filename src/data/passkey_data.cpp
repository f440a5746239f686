#include "data/passkey_data.h"

#include <filesystem>

#include "core/error.h"
#include "data/passkey.h"
#include "data/token_shards.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

PasskeyDataSummary write_passkey_data(const PasskeyDataOptions& o) {
  const Tokenizer tokenizer = Tokenizer::load(o.tokenizer);
  const PasskeyPieces pieces = PasskeyPieces::from_tokenizer(tokenizer);
  const int64_t min_length = o.min_length > 0 ? o.min_length : o.length;
  const int64_t shortest = passkey_min_length(tokenizer, pieces);
  DSEEK_CHECK(min_length >= shortest && min_length <= o.length,
              "[passkey] --min-length {} / --length {}: need {} <= min-length <= length (the "
              "needle and question take {} tokens)",
              min_length, o.length, shortest, shortest);
  DSEEK_CHECK(o.count >= 1, "[passkey] --count: must be positive, got {}", o.count);
  int32_t bos_id = -1;
  try {
    bos_id = tokenizer.bos_id();
  } catch (const Error&) {
  }
  ShardWriter writer(o.out_dir, tokenizer.vocab_size(), tokenizer.eos_id(), bos_id);
  Rng rng(o.seed);
  PasskeyDataSummary summary;
  for (int64_t i = 0; i < o.count; ++i) {
    const int64_t length = min_length + int64_t(rng.next_u64() % uint64_t(o.length - min_length + 1));
    const PasskeySample s = make_passkey_sample(tokenizer, pieces, length, rng.uniform(), rng);
    writer.append(s.prompt);
    writer.append(s.answer);
    writer.end_document();
    ++summary.passkey_documents;
  }
  std::vector<std::string> files;
  if (!o.text_inputs.empty()) {
    CorpusReader reader(o.text_inputs, o.corpus);
    CorpusPiece piece;
    while (reader.next(piece)) {
      if (!piece.text.empty()) writer.append(tokenizer.encode(piece.text));
      if (piece.document_end) writer.end_document();
    }
    files = reader.files();
  }
  summary.text_documents = writer.total_documents() - summary.passkey_documents;  // non-empty ones
  summary.tokens = writer.total_tokens();
  writer.finish({{"passkey",
                  {{"length", o.length},
                   {"min_length", min_length},
                   {"count", o.count},
                   {"seed", o.seed},
                   {"text_inputs", files}}},
                 {"tokenizer", std::filesystem::weakly_canonical(o.tokenizer).string()}});
  return summary;
}

}  // namespace dseek
