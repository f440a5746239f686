// The BPE model of tokenizer.json: vocab, ranked merges, and the merge loop of Hugging Face
// tokenizers (a min-heap of candidate merges ordered by rank, then position), with a word cache.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dseek {

class BpeModel {
 public:
  // `json` is the "model" field; `where` names the file for errors.
  static BpeModel from_json(const nlohmann::json& json, const std::string& where);

  // Appends the ids of one pre-tokenized piece. With `byte_level`, each byte of the piece is one
  // initial symbol (its bytes_to_unicode character); otherwise each UTF-8 character is.
  void encode_piece(std::string_view piece, bool byte_level, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Largest id + 1 of the vocabulary.
  int64_t id_limit() const { return int64_t(id_to_token_.size()); }
  // The token of `id`, or nullptr where the vocabulary has no such id.
  const std::string* id_to_token(int32_t id) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  void merge_symbols(std::vector<int32_t>& ids) const;
  std::optional<int32_t> symbol_id(std::string_view symbol) const;
  void push_unknown(std::string_view symbol, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> has_id_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  int32_t byte_ids_[256];                       // id of each byte's character, -1 if absent
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;

  // Cache of encoded pieces; shared by copies of the model (the tokenizer's state is shared).
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
};

}  // namespace dseek
