// Packed rows of chat examples for post-training (`dseek data sft` / `dseek data dpo`).
//
// An example of n tokens becomes a segment of n − 1 positions: inputs tokens[0..n−1), targets
// tokens[1..n) with ops::kIgnoreIndex (−100) where the target is not trained (prompts, role
// headers). Segments are packed greedily, in file order, into rows of seq_len positions; a row's
// tail is a padding segment (inputs EOS, targets ignored). Training attends within each segment
// only (train/layers.h Segments), so packing never leaks one conversation into another.
// DPO: a pair is two adjacent segments in one row, chosen then rejected (kinds below); a pair
// longer than a row has both responses cut to fit (counted in index.json as "truncated").
//
//   DIR/index.json    {"format": "dseek-chat-rows-v1", "task": "sft"|"dpo", "seq_len", "rows",
//                      "vocab_size", "eos_id", "bos_id", "examples", "truncated",
//                      "trained_tokens", "chat_format", "source"}
//   DIR/rows.bin      int32 little-endian, per row: seq_len inputs then seq_len targets
//   DIR/segments.bin  int32 little-endian, per row: count c, then c × (length, kind)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat_example.h"

namespace dseek {

enum class SegmentKind : int32_t { kPadding = 0, kSft = 1, kChosen = 2, kRejected = 3 };

struct ChatRow {
  std::vector<int32_t> inputs, targets;  // seq_len each
  std::vector<int64_t> lengths;          // segment lengths, summing to seq_len
  std::vector<SegmentKind> kinds;
};

class ChatRowWriter {
 public:
  ChatRowWriter(int64_t seq_len, int32_t pad_id);
  // Adds an example (or, for DPO, a chosen/rejected pair) as segments kept together in one row.
  // Returns true when it had to be truncated to fit a row.
  bool add(const std::vector<const MaskedTokens*>& parts, const std::vector<SegmentKind>& kinds);
  // Writes rows.bin, segments.bin and index.json (with `info` merged in) into `dir`.
  void write(const std::string& dir, const nlohmann::json& info);
  int64_t rows() const { return int64_t(rows_.size()); }
  int64_t trained_tokens() const { return trained_tokens_; }

 private:
  void close_row();

  int64_t seq_len_;
  int32_t pad_id_;
  std::vector<ChatRow> rows_;
  ChatRow open_;
  int64_t trained_tokens_ = 0;
};

class ChatRows {
 public:
  // Reads and validates a `dseek data sft|dpo` directory; errors name the file at fault.
  static std::shared_ptr<ChatRows> open(const std::string& dir);

  int64_t rows() const { return int64_t(rows_.size()); }
  int64_t seq_len() const { return seq_len_; }
  const std::string& task() const { return task_; }
  int64_t vocab_size() const { return vocab_size_; }
  const ChatRow& row(int64_t r) const { return rows_.at(size_t(r)); }
  const nlohmann::json& index() const { return index_; }

 private:
  std::vector<ChatRow> rows_;
  int64_t seq_len_ = 0, vocab_size_ = 0;
  std::string task_;
  nlohmann::json index_;
};

struct ChatPrepareOptions {
  std::string tokenizer;    // file or directory (with tokenizer_config.json's chat_template)
  std::string chat_format;  // "" → the tokenizer's template
  std::string input;        // JSONL
  std::string out_dir;
  int64_t max_len = 1024;   // row length (positions); the training seq_len
};

struct ChatPrepareSummary {
  int64_t examples = 0, rows = 0, truncated = 0, trained_tokens = 0;
};

// SFT: each line {"messages": [{"role", "content"}, ...]}.
ChatPrepareSummary prepare_sft(const ChatPrepareOptions& options);
// DPO: each line {"prompt": messages or a string (one user turn), "chosen": str, "rejected": str}.
ChatPrepareSummary prepare_dpo(const ChatPrepareOptions& options);
// The same with a renderer already made (options.tokenizer and chat_format unused).
ChatPrepareSummary prepare_sft(const ChatPrepareOptions& options, const ChatRenderer& renderer);
ChatPrepareSummary prepare_dpo(const ChatPrepareOptions& options, const ChatRenderer& renderer);

}  // namespace dseek
