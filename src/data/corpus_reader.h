// CorpusReader: walks the inputs of `dseek data prepare` — plain text files, directories (all
// regular files below them, in sorted order so the result is deterministic) and JSONL files
// (one JSON object per line with a string field, `text` by default) — and hands out documents
// piece by piece, so a corpus (or a single file) larger than RAM streams through.
//
// Documents: a JSONL line is one document; a plain text file is one document, or several if a
// separator line is given (e.g. "%" for fortune files: a line holding only the separator ends a
// document). Long documents arrive in pieces of about `piece_bytes`, cut after a newline.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace dseek {

struct CorpusOptions {
  std::string jsonl_field = "text";
  std::string separator_line;        // "" = a plain text file is one document
  size_t piece_bytes = 1 << 20;      // streaming granularity for long documents
};

struct CorpusPiece {
  std::string text;
  bool document_end = false;  // this piece ends its document
  std::string source;         // "file" or "file:line", for messages
};

class CorpusReader {
 public:
  CorpusReader(const std::vector<std::string>& inputs, CorpusOptions options);

  // Next piece; false at the end of the corpus. Throws dseek::Error for unreadable files, bad
  // JSON lines (naming file and line), a missing/non-string field, or invalid UTF-8.
  bool next(CorpusPiece& piece);

  const std::vector<std::string>& files() const { return files_; }
  uint64_t total_bytes() const { return total_bytes_; }
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  bool open_next_file();

  CorpusOptions options_;
  std::vector<std::string> files_;
  uint64_t total_bytes_ = 0, bytes_read_ = 0;
  size_t file_index_ = 0;
  std::ifstream in_;
  std::string current_;
  bool current_jsonl_ = false;
  int64_t line_number_ = 0;
  bool pending_document_ = false;  // text of the current plain document was handed out
};

// True when `text` is valid UTF-8; otherwise `bad_offset` is the first invalid byte.
bool is_valid_utf8(const std::string& text, size_t* bad_offset = nullptr);

}  // namespace dseek
