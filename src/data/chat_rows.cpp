#include "data/chat_rows.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/token_shards.h"

namespace dseek {
namespace fs = std::filesystem;
namespace {

constexpr int32_t kIgnore = -100;  // ops::kIgnoreIndex (data does not link ops)
constexpr const char* kFormat = "dseek-chat-rows-v1";

std::string read_binary(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[data] {}: cannot read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void append_i32(std::string& out, int32_t v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

}  // namespace

ChatRowWriter::ChatRowWriter(int64_t seq_len, int32_t pad_id) : seq_len_(seq_len), pad_id_(pad_id) {
  DSEEK_CHECK(seq_len >= 2, "[data] --max-len {}: rows need at least 2 positions", seq_len);
}

bool ChatRowWriter::add(const std::vector<const MaskedTokens*>& parts,
                        const std::vector<SegmentKind>& kinds) {
  int64_t need = 0;
  for (const MaskedTokens* p : parts) need += std::max<int64_t>(int64_t(p->tokens.size()) - 1, 0);
  // Too long for a row: every part gets an equal share of it (its first tokens kept).
  const bool truncated = need > seq_len_;
  const int64_t share = truncated ? seq_len_ / int64_t(parts.size()) : seq_len_;
  if (truncated) need = 0;
  std::vector<int64_t> lengths;
  for (const MaskedTokens* p : parts) {
    lengths.push_back(std::min(std::max<int64_t>(int64_t(p->tokens.size()) - 1, 0), share));
    if (truncated) need += lengths.back();
  }
  int64_t used = int64_t(open_.inputs.size());
  if (used + need > seq_len_) {
    close_row();
    used = 0;
  }
  for (size_t k = 0; k < parts.size(); ++k) {
    const MaskedTokens& p = *parts[k];
    const int64_t n = lengths[k];
    if (n == 0) continue;
    for (int64_t i = 0; i < n; ++i) {
      open_.inputs.push_back(p.tokens[size_t(i)]);
      const bool trained = p.trained[size_t(i + 1)] != 0;
      open_.targets.push_back(trained ? p.tokens[size_t(i + 1)] : kIgnore);
      trained_tokens_ += trained;
    }
    open_.lengths.push_back(n);
    open_.kinds.push_back(kinds[k]);
  }
  return truncated;
}

void ChatRowWriter::close_row() {
  if (open_.inputs.empty()) return;
  const int64_t pad = seq_len_ - int64_t(open_.inputs.size());
  if (pad > 0) {
    open_.inputs.insert(open_.inputs.end(), size_t(pad), pad_id_);
    open_.targets.insert(open_.targets.end(), size_t(pad), kIgnore);
    open_.lengths.push_back(pad);
    open_.kinds.push_back(SegmentKind::kPadding);
  }
  rows_.push_back(std::move(open_));
  open_ = ChatRow{};
}

void ChatRowWriter::write(const std::string& dir, const nlohmann::json& info) {
  close_row();
  DSEEK_CHECK(!rows_.empty(), "[data] {}: no examples to write", dir);
  fs::create_directories(dir);
  std::string rows, segments;
  rows.reserve(rows_.size() * size_t(seq_len_) * 8);
  for (const ChatRow& r : rows_) {
    for (int32_t t : r.inputs) append_i32(rows, t);
    for (int32_t t : r.targets) append_i32(rows, t);
    append_i32(segments, int32_t(r.lengths.size()));
    for (size_t k = 0; k < r.lengths.size(); ++k) {
      append_i32(segments, int32_t(r.lengths[k]));
      append_i32(segments, int32_t(r.kinds[k]));
    }
  }
  write_file_atomic((fs::path(dir) / "rows.bin").string(), rows);
  write_file_atomic((fs::path(dir) / "segments.bin").string(), segments);
  nlohmann::json index = info;
  index["format"] = kFormat;
  index["seq_len"] = seq_len_;
  index["rows"] = int64_t(rows_.size());
  index["trained_tokens"] = trained_tokens_;
  write_file_atomic((fs::path(dir) / "index.json").string(), index.dump(2) + "\n");
}

std::shared_ptr<ChatRows> ChatRows::open(const std::string& dir) {
  const fs::path root(dir);
  const fs::path index_path = root / "index.json";
  DSEEK_CHECK(fs::exists(index_path),
              "[data] {}: no index.json (make the directory with `dseek data sft` or `dseek data dpo`)",
              dir);
  auto out = std::make_shared<ChatRows>();
  try {
    out->index_ = nlohmann::json::parse(read_binary(index_path));
  } catch (const nlohmann::json::exception& e) {
    fail("[data] {}: {}", index_path.string(), e.what());
  }
  const nlohmann::json& ix = out->index_;
  DSEEK_CHECK(ix.value("format", "") == kFormat, "[data] {}: format is not {}", index_path.string(),
              kFormat);
  out->task_ = ix.value("task", "");
  out->seq_len_ = ix.value("seq_len", int64_t(0));
  out->vocab_size_ = ix.value("vocab_size", int64_t(0));
  const int64_t n_rows = ix.value("rows", int64_t(0));
  const int64_t S = out->seq_len_;
  DSEEK_CHECK((out->task_ == "sft" || out->task_ == "dpo") && S > 0 && n_rows > 0 &&
                  out->vocab_size_ > 0,
              "[data] {}: needs task sft|dpo and positive seq_len, rows, vocab_size",
              index_path.string());
  const std::string rows = read_binary(root / "rows.bin");
  const std::string segs = read_binary(root / "segments.bin");
  DSEEK_CHECK(int64_t(rows.size()) == n_rows * 2 * S * 4, "[data] {}: {} bytes, expected {}",
              (root / "rows.bin").string(), rows.size(), n_rows * 2 * S * 4);
  const int32_t* rp = reinterpret_cast<const int32_t*>(rows.data());
  const int32_t* sp = reinterpret_cast<const int32_t*>(segs.data());
  const size_t s_count = segs.size() / 4;
  size_t s_at = 0;
  const std::string seg_file = (root / "segments.bin").string();
  for (int64_t r = 0; r < n_rows; ++r) {
    ChatRow row;
    row.inputs.assign(rp + r * 2 * S, rp + r * 2 * S + S);
    row.targets.assign(rp + r * 2 * S + S, rp + (r + 1) * 2 * S);
    for (int64_t i = 0; i < S; ++i) {
      DSEEK_CHECK(row.inputs[size_t(i)] >= 0 && row.inputs[size_t(i)] < out->vocab_size_ &&
                      (row.targets[size_t(i)] == kIgnore ||
                       (row.targets[size_t(i)] >= 0 && row.targets[size_t(i)] < out->vocab_size_)),
                  "[data] {}: row {} position {}: token id outside the vocabulary",
                  (root / "rows.bin").string(), r, i);
    }
    DSEEK_CHECK(s_at < s_count, "[data] {}: ends before row {}", seg_file, r);
    const int32_t c = sp[s_at++];
    DSEEK_CHECK(c > 0 && s_at + size_t(c) * 2 <= s_count, "[data] {}: row {}: bad segment count {}",
                seg_file, r, c);
    int64_t total = 0;
    for (int32_t k = 0; k < c; ++k) {
      const int32_t len = sp[s_at++], kind = sp[s_at++];
      DSEEK_CHECK(len > 0 && kind >= 0 && kind <= 3, "[data] {}: row {}: bad segment ({}, {})",
                  seg_file, r, len, kind);
      row.lengths.push_back(len);
      row.kinds.push_back(SegmentKind(kind));
      total += len;
    }
    DSEEK_CHECK(total == S, "[data] {}: row {}: segments cover {} of {} positions", seg_file, r,
                total, S);
    out->rows_.push_back(std::move(row));
  }
  DSEEK_CHECK(s_at == s_count, "[data] {}: {} trailing values", seg_file, s_count - s_at);
  return out;
}

namespace {

// Calls `each(json, "file:line")` for every non-blank line of a JSONL file.
template <typename F>
void for_each_jsonl(const std::string& path, F each) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[data] {}: cannot read", path);
  const std::string name = fs::path(path).filename().string();
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", name, n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("[data] {}: not valid JSON ({})", where, e.what());
    }
    DSEEK_CHECK(j.is_object(), "[data] {}: expected a JSON object, got {}", where, j.type_name());
    each(j, where);
  }
}

nlohmann::json base_info(const ChatRenderer& renderer, const ChatPrepareOptions& o,
                         const char* task) {
  const Tokenizer& tok = renderer.tokenizer();
  int32_t bos = -1;
  try {
    bos = tok.bos_id();
  } catch (const Error&) {
    // a tokenizer without BOS: recorded as -1, as `dseek data prepare` does
  }
  return {{"task", task},
          {"vocab_size", tok.vocab_size()},
          {"eos_id", tok.eos_id()},
          {"bos_id", bos},
          {"chat_format", renderer.format_name()},
          {"source", o.input}};
}

void check_output_dir(const std::string& dir) {
  DSEEK_CHECK(!fs::exists(fs::path(dir) / "index.json"),
              "[data] {}: already holds a data set (choose another --out)", dir);
}

}  // namespace

ChatPrepareSummary prepare_sft(const ChatPrepareOptions& o) {
  check_output_dir(o.out_dir);
  return prepare_sft(o, ChatRenderer(Tokenizer::load(o.tokenizer), o.chat_format));
}

ChatPrepareSummary prepare_sft(const ChatPrepareOptions& o, const ChatRenderer& renderer) {
  check_output_dir(o.out_dir);
  ChatRowWriter writer(o.max_len, renderer.tokenizer().eos_id());
  ChatPrepareSummary s;
  for_each_jsonl(o.input, [&](const nlohmann::json& j, const std::string& where) {
    DSEEK_CHECK(j.contains("messages"), "[data] {}: messages: missing", where);
    const MaskedTokens ex = renderer.sft_example(parse_chat_messages(j["messages"], where, "messages"), where);
    s.truncated += writer.add({&ex}, {SegmentKind::kSft});
    ++s.examples;
  });
  DSEEK_CHECK(s.examples > 0, "[data] {}: no conversations", o.input);
  nlohmann::json info = base_info(renderer, o, "sft");
  info["examples"] = s.examples;
  info["truncated"] = s.truncated;
  writer.write(o.out_dir, info);
  s.rows = writer.rows();
  s.trained_tokens = writer.trained_tokens();
  return s;
}

ChatPrepareSummary prepare_dpo(const ChatPrepareOptions& o) {
  check_output_dir(o.out_dir);
  return prepare_dpo(o, ChatRenderer(Tokenizer::load(o.tokenizer), o.chat_format));
}

ChatPrepareSummary prepare_dpo(const ChatPrepareOptions& o, const ChatRenderer& renderer) {
  check_output_dir(o.out_dir);
  ChatRowWriter writer(o.max_len, renderer.tokenizer().eos_id());
  ChatPrepareSummary s;
  for_each_jsonl(o.input, [&](const nlohmann::json& j, const std::string& where) {
    DSEEK_CHECK(j.contains("prompt"), "[data] {}: prompt: missing", where);
    std::vector<ChatMessage> prompt;
    if (j["prompt"].is_string()) {
      prompt.push_back({"user", j["prompt"].get<std::string>()});
    } else {
      prompt = parse_chat_messages(j["prompt"], where, "prompt");
    }
    for (const char* key : {"chosen", "rejected"}) {
      DSEEK_CHECK(j.contains(key), "[data] {}: {}: missing", where, key);
      DSEEK_CHECK(j[key].is_string(), "[data] {}: {}: expected a string, got {}", where, key,
                  j[key].type_name());
    }
    const MaskedTokens chosen = renderer.response_example(prompt, j["chosen"], where);
    const MaskedTokens rejected = renderer.response_example(prompt, j["rejected"], where);
    s.truncated += writer.add({&chosen, &rejected}, {SegmentKind::kChosen, SegmentKind::kRejected});
    ++s.examples;
  });
  DSEEK_CHECK(s.examples > 0, "[data] {}: no pairs", o.input);
  nlohmann::json info = base_info(renderer, o, "dpo");
  info["examples"] = s.examples;
  info["truncated"] = s.truncated;
  writer.write(o.out_dir, info);
  s.rows = writer.rows();
  s.trained_tokens = writer.trained_tokens();
  return s;
}

}  // namespace dseek
