#include "data/corpus_reader.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace fs = std::filesystem;

namespace dseek {

bool is_valid_utf8(const std::string& text, size_t* bad_offset) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t len;
    uint32_t min;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, min = 0x10000;
    } else {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    if (i + len > n) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    uint32_t cp = c & (0xff >> (len + 1));
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) {
        if (bad_offset) *bad_offset = i;
        return false;
      }
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

CorpusReader::CorpusReader(const std::vector<std::string>& inputs, CorpusOptions options)
    : options_(std::move(options)) {
  DSEEK_CHECK(!inputs.empty(), "[data] no input given");
  for (const auto& input : inputs) {
    std::error_code ec;
    auto status = fs::status(input, ec);
    DSEEK_CHECK(!ec && fs::exists(status), "[data] {}: no such file or directory", input);
    if (fs::is_directory(status)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::recursive_directory_iterator(input)) {
        if (entry.is_regular_file()) found.push_back(entry.path().string());
      }
      std::sort(found.begin(), found.end());
      DSEEK_CHECK(!found.empty(), "[data] {}: directory holds no files", input);
      files_.insert(files_.end(), found.begin(), found.end());
    } else {
      files_.push_back(input);
    }
  }
  for (const auto& f : files_) total_bytes_ += fs::file_size(f);
}

bool CorpusReader::open_next_file() {
  if (in_.is_open()) in_.close();
  if (file_index_ >= files_.size()) return false;
  const std::string& path = files_[file_index_++];
  in_.open(path, std::ios::binary);
  DSEEK_CHECK(in_.good(), "[data] {}: cannot open for reading", path);
  current_ = path;
  line_number_ = 0;
  std::string ext = fs::path(path).extension().string();
  current_jsonl_ = ext == ".jsonl" || ext == ".ndjson";
  pending_document_ = false;
  return true;
}

bool CorpusReader::next(CorpusPiece& piece) {
  piece.text.clear();
  piece.document_end = false;
  std::string line;
  while (true) {
    if (!in_.is_open() || in_.eof()) {
      // A plain file's last document ends with the file.
      if (in_.is_open() && !current_jsonl_ && (pending_document_ || !piece.text.empty())) {
        pending_document_ = false;
        piece.document_end = true;
        piece.source = current_;
        in_.close();
        return true;
      }
      if (!open_next_file()) return false;
    }
    if (!std::getline(in_, line)) {
      if (in_.bad()) fail("[data] {}: read error", current_);
      continue;  // eof: handled at the top of the loop
    }
    ++line_number_;
    bytes_read_ += line.size() + 1;
    bool had_newline = !in_.eof();
    size_t bad = 0;
    if (!is_valid_utf8(line, &bad)) {
      fail("[data] {}:{}: invalid UTF-8 at byte {} of the line", current_, line_number_, bad);
    }
    if (current_jsonl_) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank line
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail("[data] {}:{}: not valid JSON ({})", current_, line_number_, e.what());
      }
      DSEEK_CHECK(j.is_object() && j.contains(options_.jsonl_field) && j[options_.jsonl_field].is_string(),
                  "[data] {}:{}: expected an object with a string field '{}'", current_, line_number_,
                  options_.jsonl_field);
      piece.text = j[options_.jsonl_field].get<std::string>();
      piece.document_end = true;
      piece.source = fmt::format("{}:{}", current_, line_number_);
      return true;
    }
    std::string_view content(line);
    if (!content.empty() && content.back() == '\r') content.remove_suffix(1);
    if (!options_.separator_line.empty() && content == options_.separator_line) {
      if (pending_document_ || !piece.text.empty()) {
        pending_document_ = false;
        piece.document_end = true;
        piece.source = current_;
        return true;
      }
      continue;  // empty document between two separators
    }
    piece.text += line;
    if (had_newline) piece.text += '\n';
    if (piece.text.size() >= options_.piece_bytes) {
      pending_document_ = true;
      piece.source = current_;
      return true;
    }
  }
}

}  // namespace dseek
