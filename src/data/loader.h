// DataLoader: training sequences from a TokenDataset.
//
// - Split: each document goes to validation or training by a hash of its index (stable whatever
//   the training seed), about `val_fraction` of documents to validation (at least one).
// - Training order: per epoch, a permutation of the training documents drawn from (seed, epoch);
//   documents are concatenated with an EOS token after each (sequence packing), and the stream is
//   cut into windows of T+1 tokens that advance by T, so every token is a target exactly once.
// - Position: (epoch, document cursor, token offset) — a checkpoint stores it, and seek() resumes
//   exactly there, so an interrupted and resumed run sees the same batches.
// - Validation: the validation documents in order, packed the same way, always from the start.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/token_shards.h"

namespace dseek {

struct LoaderOptions {
  int64_t seq_len = 256;   // T
  int64_t batch_size = 8;  // B
  uint64_t seed = 0;
  double val_fraction = 0.01;
};

struct LoaderPosition {
  int64_t epoch = 0;
  int64_t doc_cursor = 0;    // index into this epoch's permutation
  int64_t token_offset = 0;  // within that document's tokens + its EOS
  nlohmann::json to_json() const;
  static LoaderPosition from_json(const nlohmann::json& j);
  bool operator==(const LoaderPosition&) const = default;
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<TokenDataset> dataset, LoaderOptions options);

  // Next training batch, row-major [B, T+1] token ids: inputs are [:, :T], targets [:, 1:].
  std::vector<int32_t> next_batch() { return next_batch(0, options_.batch_size); }
  // Rows [first, first + count) of the next batch, [count, T+1] (a data-parallel rank's slice);
  // the position moves past all B rows, as next_batch() does, skipping the others' windows without
  // reading their tokens.
  std::vector<int32_t> next_batch(int64_t first, int64_t count);
  LoaderPosition position() const { return position_; }
  void seek(const LoaderPosition& position);

  int64_t num_validation_sequences() const;
  // Validation sequence k (0 ≤ k < num_validation_sequences()), [T+1] tokens.
  std::vector<int32_t> validation_sequence(int64_t k) const;

  int64_t train_documents() const { return int64_t(train_docs_.size()); }
  int64_t validation_documents() const { return int64_t(val_docs_.size()); }
  int64_t train_tokens() const { return train_tokens_; }
  const LoaderOptions& options() const { return options_; }

 private:
  void make_permutation(int64_t epoch);
  // `position` moved `tokens` tokens on through the training stream (documents, epochs).
  void advance(LoaderPosition& position, int64_t tokens);
  int64_t doc_stream_length(int64_t doc) const;  // tokens + EOS
  int32_t doc_stream_token(int64_t doc, int64_t offset) const;

  std::shared_ptr<TokenDataset> dataset_;
  LoaderOptions options_;
  std::vector<int64_t> train_docs_, val_docs_;
  std::vector<int64_t> val_stream_ends_;  // cumulative stream lengths of validation documents
  int64_t train_tokens_ = 0;
  std::vector<int64_t> permutation_;  // of train_docs_, for position_.epoch
  int64_t permutation_epoch_ = -1;
  LoaderPosition position_;
};

}  // namespace dseek
