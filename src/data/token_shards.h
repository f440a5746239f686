// Tokenized corpus on disk, as written by `dseek data prepare` and read by the training loader.
//
//   DATA_DIR/index.json        {"format": "dseek-tokens-v1", "vocab_size", "eos_id", "bos_id",
//                               "shards": [{"file", "docs_file", "tokens", "documents"}], ...}
//   DATA_DIR/shard-00000.bin   token ids, uint32 little-endian, documents back to back
//   DATA_DIR/shard-00000.docs  uint64 little-endian end offset of each document in the shard
//
// Shards are written under temporary names and renamed when complete; index.json is written
// last (atomically), so an interrupted `prepare` never looks like a finished data set.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dseek {

class ShardWriter {
 public:
  // max_shard_tokens: a shard is closed at the first document boundary past this size.
  ShardWriter(std::string dir, int64_t vocab_size, int32_t eos_id, int32_t bos_id,
              int64_t max_shard_tokens = int64_t(1) << 28);
  ~ShardWriter();

  void append(const std::vector<int32_t>& tokens);  // part of the current document
  void end_document();                              // empty documents are dropped
  // Closes the last shard and writes index.json; `extra` is merged into the index (provenance).
  void finish(const nlohmann::json& extra = {});

  int64_t total_tokens() const { return total_tokens_ + int64_t(shard_tokens_); }
  int64_t total_documents() const { return total_documents_; }

 private:
  void open_shard();
  void close_shard();

  std::string dir_;
  int64_t vocab_size_;
  int32_t eos_id_, bos_id_;
  int64_t max_shard_tokens_;
  std::FILE* tokens_file_ = nullptr;
  std::vector<uint64_t> doc_ends_;  // of the open shard
  uint64_t shard_tokens_ = 0, doc_tokens_ = 0;
  int64_t total_tokens_ = 0, total_documents_ = 0;
  nlohmann::json shards_ = nlohmann::json::array();
  bool finished_ = false;
};

// Read side: memory-mapped shards with random access to documents.
class TokenDataset {
 public:
  // Validates index.json and every shard (sizes, document offsets, token ids < vocab_size);
  // errors name the file at fault.
  static std::shared_ptr<TokenDataset> open(const std::string& dir);

  int64_t num_documents() const { return int64_t(docs_.size()); }
  int64_t num_tokens() const { return total_tokens_; }
  int64_t vocab_size() const { return vocab_size_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t bos_id() const { return bos_id_; }
  // Tokens of document d: pointer and length (valid while the dataset lives).
  const uint32_t* document(int64_t d, int64_t* length) const;
  const nlohmann::json& index() const { return index_; }

 private:
  struct Doc {
    const uint32_t* tokens;
    int64_t length;
  };
  std::vector<std::shared_ptr<void>> mappings_;
  std::vector<Doc> docs_;
  int64_t total_tokens_ = 0, vocab_size_ = 0;
  int32_t eos_id_ = -1, bos_id_ = -1;
  nlohmann::json index_;
};

// Writes `text` to `path` atomically (temporary file in the same directory, fsync, rename);
// throws naming the path on any failure (a full disk included) and leaves no temporary behind.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace dseek
