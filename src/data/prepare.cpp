#include "data/prepare.h"

#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "core/progress.h"
#include "data/token_shards.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

PrepareSummary prepare_data(const PrepareOptions& options) {
  auto start = std::chrono::steady_clock::now();
  Tokenizer tokenizer = Tokenizer::load(options.tokenizer);
  CorpusReader reader(options.inputs, options.corpus);
  const bool fim = options.fim.rate > 0;
  FimTokens fim_tokens;
  if (fim) fim_tokens = FimTokens::from_tokenizer(tokenizer);
  DSEEK_CHECK(options.fim.rate >= 0 && options.fim.rate <= 1 && options.fim.spm_rate >= 0 &&
                  options.fim.spm_rate <= 1,
              "[data] FIM rates must lie in [0, 1]");

  // Packing needs an EOS separator; BOS is optional (recorded as -1 when absent).
  int32_t bos_id = tokenizer.token_to_id("<｜begin▁of▁sentence｜>").value_or(-1);
  try {
    bos_id = tokenizer.bos_id();
  } catch (const Error&) {
  }
  ShardWriter writer(options.out_dir, tokenizer.vocab_size(), tokenizer.eos_id(), bos_id,
                     options.max_shard_tokens);
  Rng rng(options.seed);
  PrepareSummary summary;
  std::unique_ptr<Progress> progress;
  if (options.progress) progress = std::make_unique<Progress>("prepare", int64_t(reader.total_bytes()), "B");

  CorpusPiece piece;
  std::string document;  // FIM needs whole documents; plain encoding streams pieces
  while (reader.next(piece)) {
    if (fim) {
      document += piece.text;
      if (piece.document_end) {
        if (!document.empty()) {
          bool transform = rng.uniform() < options.fim.rate;
          if (transform) {
            FimMode mode = rng.uniform() < options.fim.spm_rate ? FimMode::SPM : FimMode::PSM;
            writer.append(fim_encode(tokenizer, fim_split(document, rng), fim_tokens, mode));
            ++summary.fim_documents;
          } else {
            writer.append(tokenizer.encode(document));
          }
        }
        document.clear();
      }
    } else if (!piece.text.empty()) {
      writer.append(tokenizer.encode(piece.text));
    }
    if (piece.document_end) writer.end_document();
    if (progress) {
      progress->update(int64_t(reader.bytes_read()));
      progress->set_suffix(fmt::format("{} tokens", human_count(double(writer.total_tokens()))));
    }
  }
  nlohmann::json provenance = {{"tokenizer", std::filesystem::weakly_canonical(options.tokenizer).string()},
                               {"inputs", reader.files()},
                               {"fim", {{"rate", options.fim.rate}, {"spm_rate", options.fim.spm_rate}}},
                               {"seed", options.seed}};
  writer.finish(provenance);
  if (progress) progress->finish();
  summary.documents = writer.total_documents();
  summary.tokens = writer.total_tokens();
  summary.bytes = reader.bytes_read();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace dseek
