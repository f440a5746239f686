#include "train/train_batches.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace dseek::train {

TrainBatches::TrainBatches(const std::string& task, const std::string& dir, int64_t seq_len,
                           int64_t batch_size, uint64_t seed, double val_fraction)
    : task_(task), seq_len_(seq_len), batch_size_(batch_size), seed_(seed) {
  if (task_ == "pretrain") {
    tokens_ = TokenDataset::open(dir);
    LoaderOptions lo;
    lo.seq_len = seq_len;
    lo.batch_size = batch_size;
    lo.seed = seed;
    lo.val_fraction = val_fraction;
    loader_ = std::make_unique<DataLoader>(tokens_, lo);
    return;
  }
  DSEEK_CHECK(task_ == "sft" || task_ == "dpo", "[train] train.task '{}': expected pretrain, sft or dpo",
              task_);
  chat_ = ChatRows::open(dir);
  DSEEK_CHECK(chat_->task() == task_,
              "[train] train.task is {} but {} was made by `dseek data {}`", task_, dir, chat_->task());
  seq_len_ = chat_->seq_len();
  // The same stable hashed split as DataLoader; DPO trains on every pair.
  const double fraction = task_ == "sft" ? val_fraction : 0.0;
  const uint64_t threshold = uint64_t(fraction * 18446744073709551615.0);
  for (int64_t r = 0; r < chat_->rows(); ++r) {
    uint64_t state = uint64_t(r) ^ 0x5eed5eed5eed5eedull;
    const bool validation = fraction > 0 && splitmix64(state) < threshold;
    (validation ? val_rows_ : train_rows_).push_back(r);
    first_pair_.push_back(num_pairs_);
    for (SegmentKind k : chat_->row(r).kinds) num_pairs_ += k == SegmentKind::kChosen;
  }
  DSEEK_CHECK(!train_rows_.empty(), "[train] {}: no training rows left after the validation split",
              dir);
  make_permutation();
}

void TrainBatches::make_permutation() {
  permutation_ = train_rows_;
  Rng rng(seed_ * 0x9e3779b97f4a7c15ull + uint64_t(epoch_) + 1);
  for (size_t i = permutation_.size(); i > 1; --i) {
    const size_t j = size_t(rng.next_u64() % i);
    std::swap(permutation_[i - 1], permutation_[j]);
  }
}

MicroBatch TrainBatches::chat_batch(const std::vector<int64_t>& rows) const {
  MicroBatch b;
  for (int64_t r : rows) {
    const ChatRow& row = chat_->row(r);
    int64_t at = b.tokens(), pair = first_pair_[size_t(r)];
    b.inputs.insert(b.inputs.end(), row.inputs.begin(), row.inputs.end());
    b.targets.insert(b.targets.end(), row.targets.begin(), row.targets.end());
    for (size_t k = 0; k < row.lengths.size(); ++k) {
      b.segments.push_back(row.lengths[k]);
      if (row.kinds[k] == SegmentKind::kChosen) {
        DSEEK_CHECK(k + 1 < row.lengths.size() && row.kinds[k + 1] == SegmentKind::kRejected,
                    "[train] row {}: a chosen segment without its rejected one", r);
        b.pairs.push_back({at, at + row.lengths[k], at + row.lengths[k],
                           at + row.lengths[k] + row.lengths[k + 1]});
        b.pair_ids.push_back(pair++);
      }
      at += row.lengths[k];
    }
  }
  return b;
}

MicroBatch TrainBatches::next(int64_t first, int64_t count) {
  if (count < 0) count = batch_size_ - first;
  DSEEK_CHECK(first >= 0 && count >= 0 && first + count <= batch_size_,
              "[train] micro-batch slice [{}, {}) outside the batch of {}", first, first + count,
              batch_size_);
  if (loader_) {
    // This slice's [count, T+1] windows → sequences of T inputs and their T targets (the loader
    // skips the other rows' windows without reading them).
    const std::vector<int32_t> batch = loader_->next_batch(first, count);
    MicroBatch b;
    const int64_t T = seq_len_;
    for (int64_t r = 0; r < count; ++r) {
      const auto row = batch.begin() + r * (T + 1);
      b.inputs.insert(b.inputs.end(), row, row + T);
      b.targets.insert(b.targets.end(), row + 1, row + T + 1);
      b.segments.push_back(T);
    }
    return b;
  }
  std::vector<int64_t> rows;
  while (int64_t(rows.size()) < batch_size_) {
    if (cursor_ >= int64_t(permutation_.size())) {
      ++epoch_;
      cursor_ = 0;
      make_permutation();
    }
    rows.push_back(permutation_[size_t(cursor_++)]);
  }
  return chat_batch(std::vector<int64_t>(rows.begin() + first, rows.begin() + first + count));
}

MicroBatch TrainBatches::peek(int64_t first, int64_t count) {
  if (loader_) {
    const LoaderPosition at = loader_->position();
    MicroBatch b = next(first, count);
    loader_->seek(at);  // (the loader keeps the permutation of the epoch it was at)
    return b;
  }
  const int64_t epoch = epoch_, cursor = cursor_;
  MicroBatch b = next(first, count);
  if (epoch_ != epoch) {  // next() crossed into a new epoch: its permutation made again
    epoch_ = epoch;
    make_permutation();
  }
  cursor_ = cursor;
  return b;
}

int64_t TrainBatches::num_validation_sequences() const {
  return loader_ ? loader_->num_validation_sequences() : int64_t(val_rows_.size());
}

MicroBatch TrainBatches::validation(int64_t first, int64_t count) const {
  if (loader_) {
    MicroBatch b;
    for (int64_t k = first; k < first + count; ++k) {
      const std::vector<int32_t> seq = loader_->validation_sequence(k);
      b.inputs.insert(b.inputs.end(), seq.begin(), seq.end() - 1);
      b.targets.insert(b.targets.end(), seq.begin() + 1, seq.end());
      b.segments.push_back(int64_t(seq.size()) - 1);
    }
    return b;
  }
  return chat_batch(std::vector<int64_t>(val_rows_.begin() + first, val_rows_.begin() + first + count));
}

nlohmann::json TrainBatches::position() const {
  if (loader_) return loader_->position().to_json();
  return {{"epoch", epoch_}, {"row_cursor", cursor_}};
}

void TrainBatches::seek(const nlohmann::json& p) {
  if (loader_) {
    loader_->seek(LoaderPosition::from_json(p));
    return;
  }
  DSEEK_CHECK(p.contains("epoch") && p.contains("row_cursor"),
              "[train] checkpoint's data position {} is not a {} position", p.dump(), task_);
  epoch_ = p["epoch"].get<int64_t>();
  cursor_ = p["row_cursor"].get<int64_t>();
  DSEEK_CHECK(epoch_ >= 0 && cursor_ >= 0 && cursor_ <= int64_t(train_rows_.size()),
              "[train] data position {} does not fit this data set ({} training rows)", p.dump(),
              train_rows_.size());
  make_permutation();
}

int64_t TrainBatches::vocab_size() const {
  return loader_ ? tokens_->vocab_size() : chat_->vocab_size();
}
int32_t TrainBatches::eos_id() const {
  return loader_ ? tokens_->eos_id() : chat_->index().value("eos_id", -1);
}
int32_t TrainBatches::bos_id() const {
  return loader_ ? tokens_->bos_id() : chat_->index().value("bos_id", -1);
}

std::vector<MicroBatch> TrainBatches::all_rows() const {
  DSEEK_CHECK(chat_ != nullptr, "[train] all_rows: only chat data sets have rows");
  std::vector<MicroBatch> out;
  for (int64_t r = 0; r < chat_->rows(); r += batch_size_) {
    std::vector<int64_t> rows;
    for (int64_t k = r; k < std::min(chat_->rows(), r + batch_size_); ++k) rows.push_back(k);
    out.push_back(chat_batch(rows));
  }
  return out;
}

nlohmann::json TrainBatches::info() const {
  if (loader_)
    return {{"train_documents", loader_->train_documents()},
            {"validation_documents", loader_->validation_documents()},
            {"train_tokens", loader_->train_tokens()}};
  int64_t trained = 0;
  for (int64_t r : train_rows_)
    for (int32_t t : chat_->row(r).targets) trained += t >= 0;
  return {{"task", task_},
          {"train_rows", int64_t(train_rows_.size())},
          {"validation_rows", int64_t(val_rows_.size())},
          {"pairs", num_pairs_},
          {"train_tokens", int64_t(train_rows_.size()) * seq_len_},
          {"trained_targets", trained}};
}

// Shannon entropy (nats/token) of the unigram distribution of the tokens trained on: what a
// model that ignores context could reach; training must get far below it.
double TrainBatches::unigram_entropy() const {
  std::vector<int64_t> counts(size_t(vocab_size()), 0);
  int64_t total = 0;
  if (loader_) {
    for (int64_t d = 0; d < tokens_->num_documents(); ++d) {
      int64_t n = 0;
      const uint32_t* t = tokens_->document(d, &n);
      for (int64_t i = 0; i < n; ++i) ++counts[t[i]];
      total += n;
    }
  } else {
    for (int64_t r = 0; r < chat_->rows(); ++r)
      for (int32_t t : chat_->row(r).targets)
        if (t >= 0) {
          ++counts[size_t(t)];
          ++total;
        }
  }
  double h = 0.0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = double(c) / double(total);
      h -= p * std::log(p);
    }
  return h;
}

}  // namespace dseek::train
