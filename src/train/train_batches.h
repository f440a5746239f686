// TrainBatches: where the trainer's micro-batches come from, by train.task:
//   pretrain  a `dseek data prepare` directory through DataLoader: B windows of seq_len tokens,
//             each one sequence (documents packed with EOS between them, as pretraining does)
//   sft, dpo  a `dseek data sft|dpo` directory (data/chat_rows.h): B packed rows per micro-batch,
//             each row split into its document segments, so no conversation attends to another;
//             rows are shuffled per epoch from (seed, epoch); for sft a hashed fraction of rows
//             (val_fraction) is held out for validation, for dpo every row trains
// A position (JSON) saved in checkpoints resumes exactly where a run stopped.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat_rows.h"
#include "data/loader.h"
#include "data/token_shards.h"
#include "train/dpo.h"
#include "train/layers.h"

namespace dseek::train {

struct MicroBatch {
  std::vector<int32_t> inputs, targets;
  Segments segments;
  std::vector<DpoPair> pairs;      // dpo: token ranges of each pair in this batch
  std::vector<int64_t> pair_ids;   // dpo: global index of each pair (reference log-probs)
  int64_t tokens() const { return int64_t(inputs.size()); }
};

class TrainBatches {
 public:
  // task: pretrain | sft | dpo; seq_len is ignored for sft/dpo (the rows' length is the data's).
  TrainBatches(const std::string& task, const std::string& dir, int64_t seq_len,
               int64_t batch_size, uint64_t seed, double val_fraction);

  // The next micro-batch of batch_size sequences (rows), or only its sequences [first, first +
  // count) (count −1: to the end): data parallelism gives each rank its slice of every global
  // micro-batch, while the position advances by the whole batch on every rank alike.
  MicroBatch next(int64_t first = 0, int64_t count = -1);
  // What next(first, count) would return, without moving the position (the trainer tells the
  // optimizer which embedding rows the next step's forward looks up).
  MicroBatch peek(int64_t first = 0, int64_t count = -1);
  int64_t num_validation_sequences() const;
  // Validation sequences [first, first + count) as one batch.
  MicroBatch validation(int64_t first, int64_t count) const;
  nlohmann::json position() const;
  void seek(const nlohmann::json& position);

  const std::string& task() const { return task_; }
  int64_t seq_len() const { return seq_len_; }
  int64_t vocab_size() const;
  int32_t eos_id() const;
  int32_t bos_id() const;
  // Every row of a dpo set as batches of batch_size rows, in order, with global pair ids (for the
  // reference log-probs, computed once over them all).
  std::vector<MicroBatch> all_rows() const;
  int64_t num_pairs() const { return num_pairs_; }
  // For run.json and the log.
  nlohmann::json info() const;
  double unigram_entropy() const;

 private:
  MicroBatch chat_batch(const std::vector<int64_t>& rows) const;

  std::string task_;
  int64_t seq_len_, batch_size_;
  uint64_t seed_;
  std::shared_ptr<TokenDataset> tokens_;
  std::unique_ptr<DataLoader> loader_;
  std::shared_ptr<ChatRows> chat_;
  std::vector<int64_t> train_rows_, val_rows_, first_pair_;  // first_pair_: per row
  std::vector<int64_t> permutation_;
  int64_t epoch_ = 0, cursor_ = 0, num_pairs_ = 0;
  void make_permutation();
};

}  // namespace dseek::train
