#include "data/passkey_data.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "data/chat_rows.h"
#include "data/passkey.h"
#include "data/token_shards.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

namespace {

// The segment-rows form (see passkey_data.h).
PasskeyDataSummary write_passkey_rows(const PasskeyDataOptions& o, const Tokenizer& tokenizer,
                                      const PasskeyPieces& pieces, int64_t min_length,
                                      int32_t bos_id) {
  DSEEK_CHECK(o.rows >= o.length + 16,
              "[passkey] --rows {}: a row must hold the longest document (--length {} plus the "
              "answer, BOS and EOS: at least {})",
              o.rows, o.length, o.length + 16);
  ChatRowWriter writer(o.rows, tokenizer.eos_id());
  Rng rng(o.seed);
  PasskeyDataSummary summary;
  // A segment: BOS, body[0, n), EOS; tokens from body[trained_from] on are trained.
  auto document = [&](const int32_t* body, size_t n, size_t trained_from) {
    MaskedTokens m;
    m.tokens.reserve(n + 2);
    if (bos_id >= 0) m.tokens.push_back(bos_id);
    trained_from += m.tokens.size();
    for (size_t i = 0; i < n; ++i) m.tokens.push_back(body[i]);
    m.tokens.push_back(tokenizer.eos_id());
    m.trained.assign(m.tokens.size(), 0);
    for (size_t i = std::max<size_t>(trained_from, 1); i < m.tokens.size(); ++i) m.trained[i] = 1;
    writer.add({&m}, {SegmentKind::kSft});
    summary.tokens += int64_t(m.tokens.size());
  };
  for (int64_t i = 0; i < o.count; ++i) {
    const int64_t length = min_length + int64_t(rng.next_u64() % uint64_t(o.length - min_length + 1));
    const PasskeySample s = make_passkey_sample(tokenizer, pieces, length, rng.uniform(), rng);
    std::vector<int32_t> body = s.prompt;
    for (int32_t t : s.answer) body.push_back(t);
    document(body.data(), body.size(), o.answer_only ? s.prompt.size() : 0);
    ++summary.passkey_documents;
  }
  std::vector<std::string> files;
  if (!o.text_inputs.empty()) {
    // Text in pieces that fit a row (BOS and EOS included), every token trained.
    const size_t piece_tokens = size_t(o.rows) - 2;
    CorpusReader reader(o.text_inputs, o.corpus);
    CorpusPiece piece;
    std::vector<int32_t> text;
    auto flush = [&] {
      for (size_t at = 0; at < text.size(); at += piece_tokens) {
        const size_t end = std::min(text.size(), at + piece_tokens);
        document(text.data() + at, end - at, 0);
      }
      if (!text.empty()) ++summary.text_documents;
      text.clear();
    };
    while (reader.next(piece)) {
      if (!piece.text.empty()) {
        for (int32_t t : tokenizer.encode(piece.text)) text.push_back(t);
      }
      if (piece.document_end) flush();
    }
    flush();
    files = reader.files();
  }
  writer.write(o.out_dir, {{"task", "sft"},
                           {"vocab_size", tokenizer.vocab_size()},
                           {"eos_id", tokenizer.eos_id()},
                           {"bos_id", bos_id},
                           {"examples", summary.passkey_documents + summary.text_documents},
                           {"truncated", 0},
                           {"source", "passkey"},
                           {"passkey",
                            {{"length", o.length},
                             {"min_length", min_length},
                             {"count", o.count},
                             {"seed", o.seed},
                             {"answer_only", o.answer_only},
                             {"text_inputs", files}}}});
  return summary;
}

}  // namespace

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
  DSEEK_CHECK(o.rows > 0 || !o.answer_only, "[passkey] --answer-only needs --rows");
  int32_t bos_id = -1;
  try {
    bos_id = tokenizer.bos_id();
  } catch (const Error&) {
  }
  if (o.rows > 0) return write_passkey_rows(o, tokenizer, pieces, min_length, bos_id);
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
