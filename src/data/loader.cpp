#include "data/loader.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace dseek {

nlohmann::json LoaderPosition::to_json() const {
  return {{"epoch", epoch}, {"doc_cursor", doc_cursor}, {"token_offset", token_offset}};
}

LoaderPosition LoaderPosition::from_json(const nlohmann::json& j) {
  LoaderPosition p;
  try {
    p.epoch = j.at("epoch").get<int64_t>();
    p.doc_cursor = j.at("doc_cursor").get<int64_t>();
    p.token_offset = j.at("token_offset").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("[data] bad loader position {}: {}", j.dump(), e.what());
  }
  return p;
}

DataLoader::DataLoader(std::shared_ptr<TokenDataset> dataset, LoaderOptions options)
    : dataset_(std::move(dataset)), options_(options) {
  DSEEK_CHECK(options_.seq_len > 0 && options_.batch_size > 0, "[data] seq_len and batch_size must be positive");
  DSEEK_CHECK(options_.val_fraction >= 0 && options_.val_fraction < 1, "[data] val_fraction {} outside [0, 1)",
              options_.val_fraction);
  int64_t n = dataset_->num_documents();
  DSEEK_CHECK(n > 0, "[data] the data set holds no documents");
  // A fixed salt, not the training seed: the split must not change between runs.
  const uint64_t threshold = uint64_t(options_.val_fraction * 18446744073709551615.0);
  for (int64_t d = 0; d < n; ++d) {
    uint64_t state = uint64_t(d) ^ 0x5eed5eed5eed5eedull;
    bool validation = options_.val_fraction > 0 && splitmix64(state) < threshold;
    (validation ? val_docs_ : train_docs_).push_back(d);
  }
  if (options_.val_fraction > 0 && val_docs_.empty()) {
    DSEEK_CHECK(train_docs_.size() >= 2,
                "[data] a validation split needs at least 2 documents (the data set has {}); use "
                "val_fraction 0 or split the text into documents",
                n);
    val_docs_.push_back(train_docs_.back());
    train_docs_.pop_back();
  }
  DSEEK_CHECK(!train_docs_.empty(), "[data] no training documents left after the validation split");
  for (int64_t d : train_docs_) train_tokens_ += doc_stream_length(d);
  int64_t total = 0;
  for (int64_t d : val_docs_) val_stream_ends_.push_back(total += doc_stream_length(d));
  make_permutation(0);
}

int64_t DataLoader::doc_stream_length(int64_t doc) const {
  int64_t length = 0;
  dataset_->document(doc, &length);
  return length + 1;
}

int32_t DataLoader::doc_stream_token(int64_t doc, int64_t offset) const {
  int64_t length = 0;
  const uint32_t* tokens = dataset_->document(doc, &length);
  return offset < length ? int32_t(tokens[offset]) : dataset_->eos_id();
}

void DataLoader::make_permutation(int64_t epoch) {
  if (permutation_epoch_ == epoch) return;
  permutation_ = train_docs_;
  Rng rng(options_.seed * 0x9e3779b97f4a7c15ull + uint64_t(epoch) + 1);
  for (size_t i = permutation_.size(); i > 1; --i) {
    size_t j = size_t(rng.next_u64() % i);
    std::swap(permutation_[i - 1], permutation_[j]);
  }
  permutation_epoch_ = epoch;
}

void DataLoader::seek(const LoaderPosition& position) {
  DSEEK_CHECK(position.epoch >= 0 && position.doc_cursor >= 0 && position.doc_cursor < train_documents(),
              "[data] loader position {} does not fit this data set ({} training documents)",
              position.to_json().dump(), train_documents());
  make_permutation(position.epoch);
  DSEEK_CHECK(position.token_offset >= 0 &&
                  position.token_offset < doc_stream_length(permutation_[size_t(position.doc_cursor)]),
              "[data] loader position {} is past the end of its document", position.to_json().dump());
  position_ = position;
}

void DataLoader::advance(LoaderPosition& position, int64_t tokens) {
  // A position never rests at the end of a document: it moves on to the next one (and epoch).
  while (tokens > 0) {
    make_permutation(position.epoch);
    const int64_t doc = permutation_[size_t(position.doc_cursor)];
    const int64_t left = doc_stream_length(doc) - position.token_offset;
    if (tokens < left) {
      position.token_offset += tokens;
      return;
    }
    tokens -= left;
    position.token_offset = 0;
    if (++position.doc_cursor == train_documents()) {
      position.doc_cursor = 0;
      ++position.epoch;
    }
  }
}

std::vector<int32_t> DataLoader::next_batch(int64_t first, int64_t count) {
  const int64_t T = options_.seq_len, B = options_.batch_size;
  DSEEK_CHECK(first >= 0 && count >= 0 && first + count <= B,
              "[data] batch rows [{}, {}) outside the batch of {}", first, first + count, B);
  std::vector<int32_t> batch(size_t(count * (T + 1)));
  for (int64_t b = 0; b < B; ++b) {
    if (b >= first && b < first + count) {
      // T+1 tokens from a copy of the position (the last one is the next window's first input).
      LoaderPosition read = position_;
      int32_t* row = batch.data() + (b - first) * (T + 1);
      for (int64_t t = 0; t <= T; ++t) {
        make_permutation(read.epoch);
        row[t] = doc_stream_token(permutation_[size_t(read.doc_cursor)], read.token_offset);
        advance(read, 1);
      }
    }
    advance(position_, T);  // windows advance by T: every token is a target once
  }
  make_permutation(position_.epoch);
  return batch;
}

int64_t DataLoader::num_validation_sequences() const {
  if (val_stream_ends_.empty()) return 0;
  return std::max<int64_t>(0, (val_stream_ends_.back() - 1) / options_.seq_len);
}

std::vector<int32_t> DataLoader::validation_sequence(int64_t k) const {
  DSEEK_CHECK(k >= 0 && k < num_validation_sequences(), "[data] validation sequence {} out of range [0, {})",
              k, num_validation_sequences());
  const int64_t T = options_.seq_len;
  std::vector<int32_t> out(size_t(T + 1));
  int64_t start = k * T;
  size_t doc = size_t(std::upper_bound(val_stream_ends_.begin(), val_stream_ends_.end(), start) -
                      val_stream_ends_.begin());
  int64_t offset = start - (doc == 0 ? 0 : val_stream_ends_[doc - 1]);
  for (int64_t t = 0; t <= T; ++t) {
    out[size_t(t)] = doc_stream_token(val_docs_[doc], offset);
    if (++offset == doc_stream_length(val_docs_[doc])) {
      offset = 0;
      ++doc;
    }
  }
  return out;
}

}  // namespace dseek
