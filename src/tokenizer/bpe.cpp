#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

constexpr size_t kMaxCachedPieceBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 17;

uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}

}  // namespace

BpeModel BpeModel::from_json(const nlohmann::json& json, const std::string& where) {
  const std::string at = where + ": model";
  DSEEK_CHECK(json.is_object(), "[tokenizer] {}: missing or not an object", at);
  const auto type = json.find("type");
  DSEEK_CHECK(type == json.end() || (type->is_string() && type->get<std::string>() == "BPE"),
              "[tokenizer] {}.type: only BPE models are supported, got {}", at,
              type == json.end() ? std::string("?") : type->dump());
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto it = json.find(key);
    DSEEK_CHECK(
        it == json.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty()),
        "[tokenizer] {}.{}: not supported", at, key);
  }
  const auto dropout = json.find("dropout");
  DSEEK_CHECK(dropout == json.end() || dropout->is_null() ||
                  (dropout->is_number() && dropout->get<double>() == 0.0),
              "[tokenizer] {}.dropout: BPE dropout is not supported for inference", at);

  BpeModel model;
  const auto vocab = json.find("vocab");
  DSEEK_CHECK(vocab != json.end() && vocab->is_object() && !vocab->empty(),
              "[tokenizer] {}.vocab: missing or empty", at);
  model.vocab_.reserve(vocab->size());
  int64_t max_id = -1;
  for (const auto& [token, id_json] : vocab->items()) {
    DSEEK_CHECK(id_json.is_number_integer() && id_json.get<int64_t>() >= 0 &&
                    id_json.get<int64_t>() < (int64_t(1) << 30),
                "[tokenizer] {}.vocab: token {:?} has invalid id {}", at, token, id_json.dump());
    const auto id = id_json.get<int32_t>();
    model.vocab_.emplace(token, id);
    max_id = std::max<int64_t>(max_id, id);
  }
  model.id_to_token_.resize(size_t(max_id + 1));
  model.has_id_.assign(size_t(max_id + 1), 0);
  for (const auto& [token, id] : model.vocab_) {
    model.id_to_token_[size_t(id)] = token;
    model.has_id_[size_t(id)] = 1;
  }
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8::append(symbol, utf8::byte_to_char(uint8_t(b)));
    const auto it = model.vocab_.find(symbol);
    model.byte_ids_[b] = it == model.vocab_.end() ? -1 : it->second;
  }

  const auto merges = json.find("merges");
  DSEEK_CHECK(merges != json.end() && merges->is_array(), "[tokenizer] {}.merges: missing", at);
  model.merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const auto& entry = (*merges)[rank];
    std::string left, right;
    if (entry.is_string()) {
      const std::string& line = entry.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      DSEEK_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos,
                  "[tokenizer] {}.merges[{}]: {:?} is not two tokens separated by one space", at,
                  rank, line);
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else {
      DSEEK_CHECK(
          entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string(),
          "[tokenizer] {}.merges[{}]: must be \"a b\" or [\"a\", \"b\"]", at, rank);
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    }
    const auto l = model.vocab_.find(left), r = model.vocab_.find(right);
    DSEEK_CHECK(l != model.vocab_.end() && r != model.vocab_.end(),
                "[tokenizer] {}.merges[{}]: {:?} or {:?} is not in the vocab", at, rank, left,
                right);
    const auto merged = model.vocab_.find(left + right);
    DSEEK_CHECK(merged != model.vocab_.end(),
                "[tokenizer] {}.merges[{}]: the merged token {:?} is not in the vocab", at, rank,
                left + right);
    // tokenizers collects the merges into a map in file order, so a repeated pair keeps its last
    // rank; so does this.
    model.merges_[pair_key(l->second, r->second)] = {int32_t(rank), merged->second};
  }

  const auto unk = json.find("unk_token");
  if (unk != json.end() && !unk->is_null()) {
    DSEEK_CHECK(unk->is_string(), "[tokenizer] {}.unk_token: must be a string", at);
    const auto it = model.vocab_.find(unk->get<std::string>());
    DSEEK_CHECK(it != model.vocab_.end(), "[tokenizer] {}.unk_token: {:?} is not in the vocab", at,
                unk->get<std::string>());
    model.unk_id_ = it->second;
  }
  auto flag = [&](const char* key) {
    const auto it = json.find(key);
    if (it == json.end() || it->is_null()) return false;
    DSEEK_CHECK(it->is_boolean(), "[tokenizer] {}.{}: must be true or false", at, key);
    return it->get<bool>();
  };
  model.fuse_unk_ = flag("fuse_unk");
  model.byte_fallback_ = flag("byte_fallback");
  model.ignore_merges_ = flag("ignore_merges");
  return model;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size() || !has_id_[size_t(id)]) return nullptr;
  return &id_to_token_[size_t(id)];
}

std::optional<int32_t> BpeModel::symbol_id(std::string_view symbol) const {
  return token_to_id(symbol);
}

void BpeModel::push_unknown(std::string_view symbol, std::vector<int32_t>& out) const {
  if (byte_fallback_) {
    std::vector<int32_t> bytes;
    for (const char c : symbol) {
      const auto id = token_to_id(fmt::format("<0x{:02X}>", static_cast<uint8_t>(c)));
      if (!id) {
        bytes.clear();
        break;
      }
      bytes.push_back(*id);
    }
    if (!bytes.empty()) {
      out.insert(out.end(), bytes.begin(), bytes.end());
      return;
    }
  }
  if (!unk_id_) return;  // tokenizers drops characters it cannot represent
  if (fuse_unk_ && !out.empty() && out.back() == *unk_id_) return;
  out.push_back(*unk_id_);
}

void BpeModel::merge_symbols(std::vector<int32_t>& ids) const {
  const size_t n = ids.size();
  if (n < 2) return;
  std::vector<int32_t> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t left) {
    const int32_t right = next[size_t(left)];
    if (right < 0) return;
    const auto it = merges_.find(pair_key(ids[size_t(left)], ids[size_t(right)]));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (size_t i = 0; i + 1 < n; ++i) consider(int32_t(i));
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const auto pos = size_t(top.pos);
    if (!alive[pos] || next[pos] < 0) continue;
    const auto right = size_t(next[pos]);
    const auto it = merges_.find(pair_key(ids[pos], ids[right]));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale candidate
    ids[pos] = top.new_id;
    alive[right] = 0;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[size_t(next[pos])] = int32_t(pos);
    if (prev[pos] >= 0) consider(prev[pos]);
    consider(int32_t(pos));
  }
  size_t w = 0;
  for (size_t i = 0; i < n; ++i) {
    if (alive[i]) ids[w++] = ids[i];
  }
  ids.resize(w);
}

void BpeModel::encode_piece(std::string_view piece, bool byte_level,
                            std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  const std::string key = cacheable ? std::string(piece) : std::string();
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    const auto it = cache_->words.find(key);
    if (it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  if (byte_level) {
    ids.reserve(piece.size());
    for (const char c : piece) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        ids.push_back(id);
      } else {
        std::string symbol;
        utf8::append(symbol, utf8::byte_to_char(static_cast<uint8_t>(c)));
        push_unknown(symbol, ids);
      }
    }
  } else {
    size_t pos = 0;
    while (pos < piece.size()) {
      const size_t start = pos;
      utf8::next(piece, pos);
      const std::string_view symbol = piece.substr(start, pos - start);
      if (const auto id = symbol_id(symbol)) {
        ids.push_back(*id);
      } else {
        push_unknown(symbol, ids);
      }
    }
  }
  std::optional<int32_t> whole;
  if (ignore_merges_) {
    std::string mapped;
    if (byte_level) {
      for (const char c : piece) utf8::append(mapped, utf8::byte_to_char(static_cast<uint8_t>(c)));
    } else {
      mapped = std::string(piece);
    }
    whole = token_to_id(mapped);
  }
  if (whole) {
    ids.assign(1, *whole);
  } else {
    merge_symbols(ids);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->words.size() >= kMaxCacheEntries) cache_->words.clear();
    cache_->words.emplace(key, std::move(ids));
  }
}

}  // namespace dseek
