#include "data/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace dseek {

void write_file_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  DSEEK_CHECK(fd >= 0, "[io] {}: cannot create ({})", tmp, std::strerror(errno));
  size_t written = 0;
  while (written < text.size()) {
    ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("[io] {}: write failed ({})", tmp, std::strerror(err));
    }
    written += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail("[io] {}: flush failed ({})", tmp, std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail("[io] {}: rename failed ({})", path, std::strerror(err));
  }
}

namespace {

std::string shard_name(size_t index, const char* ext) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05zu.%s", index, ext);
  return buf;
}

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& what) {
  if (bytes && std::fwrite(data, 1, bytes, f) != bytes) {
    fail("[data] {}: write failed ({})", what, std::strerror(errno));
  }
}

std::shared_ptr<void> map_file(const std::string& path, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY);
  DSEEK_CHECK(fd >= 0, "[data] {}: cannot open ({})", path, std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("[data] {}: cannot stat", path);
  }
  *size = size_t(st.st_size);
  if (*size == 0) {
    ::close(fd);
    return std::shared_ptr<void>(nullptr, [](void*) {});
  }
  void* p = ::mmap(nullptr, *size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  DSEEK_CHECK(p != MAP_FAILED, "[data] {}: mmap failed ({})", path, std::strerror(errno));
  size_t len = *size;
  return std::shared_ptr<void>(p, [len](void* q) { ::munmap(q, len); });
}

}  // namespace

ShardWriter::ShardWriter(std::string dir, int64_t vocab_size, int32_t eos_id, int32_t bos_id,
                         int64_t max_shard_tokens)
    : dir_(std::move(dir)),
      vocab_size_(vocab_size),
      eos_id_(eos_id),
      bos_id_(bos_id),
      max_shard_tokens_(max_shard_tokens) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  DSEEK_CHECK(!ec, "[data] {}: cannot create directory ({})", dir_, ec.message());
  // A previous finished data set in the same place would be silently mixed with this one.
  DSEEK_CHECK(!fs::exists(fs::path(dir_) / "index.json"),
              "[data] {}: already holds a prepared data set (index.json); choose another --out or "
              "remove it",
              dir_);
}

ShardWriter::~ShardWriter() {
  if (tokens_file_) {  // abandoned (an exception): leave no half shard behind
    std::fclose(tokens_file_);
    std::remove((fs::path(dir_) / (shard_name(shards_.size(), "bin") + ".tmp")).c_str());
  }
}

void ShardWriter::open_shard() {
  std::string path = (fs::path(dir_) / (shard_name(shards_.size(), "bin") + ".tmp")).string();
  tokens_file_ = std::fopen(path.c_str(), "wb");
  DSEEK_CHECK(tokens_file_, "[data] {}: cannot create ({})", path, std::strerror(errno));
  doc_ends_.clear();
  shard_tokens_ = 0;
}

void ShardWriter::append(const std::vector<int32_t>& tokens) {
  DSEEK_CHECK(!finished_, "[data] append after finish");
  if (tokens.empty()) return;
  if (!tokens_file_) open_shard();
  std::vector<uint32_t> buf(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    DSEEK_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size_, "[data] token id {} outside the vocabulary [0, {})",
                tokens[i], vocab_size_);
    buf[i] = uint32_t(tokens[i]);
  }
  write_all(tokens_file_, buf.data(), buf.size() * 4, dir_);
  shard_tokens_ += buf.size();
  doc_tokens_ += buf.size();
}

void ShardWriter::end_document() {
  if (doc_tokens_ == 0) return;
  doc_ends_.push_back(shard_tokens_);
  doc_tokens_ = 0;
  ++total_documents_;
  if (int64_t(shard_tokens_) >= max_shard_tokens_) close_shard();
}

void ShardWriter::close_shard() {
  if (!tokens_file_) return;
  size_t index = shards_.size();
  fs::path bin = fs::path(dir_) / shard_name(index, "bin");
  fs::path docs = fs::path(dir_) / shard_name(index, "docs");
  std::string bin_tmp = bin.string() + ".tmp";
  bool ok = std::fflush(tokens_file_) == 0 && ::fsync(fileno(tokens_file_)) == 0;
  ok = (std::fclose(tokens_file_) == 0) && ok;
  tokens_file_ = nullptr;
  if (!ok) {
    std::remove(bin_tmp.c_str());
    fail("[data] {}: write failed ({})", bin_tmp, std::strerror(errno));
  }
  std::string doc_bytes(reinterpret_cast<const char*>(doc_ends_.data()), doc_ends_.size() * 8);
  write_file_atomic(docs.string(), doc_bytes);
  DSEEK_CHECK(std::rename(bin_tmp.c_str(), bin.c_str()) == 0, "[data] {}: rename failed", bin.string());
  shards_.push_back({{"file", bin.filename().string()},
                     {"docs_file", docs.filename().string()},
                     {"tokens", shard_tokens_},
                     {"documents", doc_ends_.size()}});
  total_tokens_ += int64_t(shard_tokens_);
  shard_tokens_ = 0;
}

void ShardWriter::finish(const nlohmann::json& extra) {
  DSEEK_CHECK(!finished_, "[data] finish called twice");
  end_document();
  close_shard();
  finished_ = true;
  nlohmann::json index = extra.is_object() ? extra : nlohmann::json::object();
  index["format"] = "dseek-tokens-v1";
  index["dtype"] = "uint32";
  index["vocab_size"] = vocab_size_;
  index["eos_id"] = eos_id_;
  index["bos_id"] = bos_id_;
  index["total_tokens"] = total_tokens_;
  index["total_documents"] = total_documents_;
  index["shards"] = shards_;
  write_file_atomic((fs::path(dir_) / "index.json").string(), index.dump(2) + "\n");
}

std::shared_ptr<TokenDataset> TokenDataset::open(const std::string& dir) {
  fs::path index_path = fs::path(dir) / "index.json";
  DSEEK_CHECK(fs::exists(index_path),
              "[data] {}: no index.json (not a prepared data set, or `data prepare` was interrupted)", dir);
  std::ifstream in(index_path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto ds = std::make_shared<TokenDataset>();
  try {
    ds->index_ = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    fail("[data] {}: not valid JSON ({})", index_path.string(), e.what());
  }
  const auto& index = ds->index_;
  auto field = [&](const char* name) -> const nlohmann::json& {
    DSEEK_CHECK(index.is_object() && index.contains(name), "[data] {}: missing field '{}'",
                index_path.string(), name);
    return index[name];
  };
  DSEEK_CHECK(field("format") == "dseek-tokens-v1", "[data] {}: unknown format {}", index_path.string(),
              field("format").dump());
  try {
    ds->vocab_size_ = field("vocab_size").get<int64_t>();
    ds->eos_id_ = field("eos_id").get<int32_t>();
    ds->bos_id_ = field("bos_id").get<int32_t>();
  } catch (const nlohmann::json::exception&) {
    fail("[data] {}: vocab_size, eos_id and bos_id must be integers", index_path.string());
  }
  DSEEK_CHECK(ds->vocab_size_ > 0 && ds->vocab_size_ <= (int64_t(1) << 32), "[data] {}: bad vocab_size {}",
              index_path.string(), ds->vocab_size_);
  DSEEK_CHECK(field("shards").is_array(), "[data] {}: 'shards' must be an array", index_path.string());
  for (const auto& shard : field("shards")) {
    DSEEK_CHECK(shard.is_object() && shard.contains("file") && shard["file"].is_string() &&
                    shard.contains("docs_file") && shard["docs_file"].is_string() &&
                    shard.contains("tokens") && shard["tokens"].is_number_unsigned(),
                "[data] {}: malformed shard entry {}", index_path.string(), shard.dump());
    std::string bin = (fs::path(dir) / shard["file"].get<std::string>()).string();
    std::string docs = (fs::path(dir) / shard["docs_file"].get<std::string>()).string();
    uint64_t tokens = shard["tokens"].get<uint64_t>();
    size_t bin_size = 0, docs_size = 0;
    auto bin_map = map_file(bin, &bin_size);
    auto docs_map = map_file(docs, &docs_size);
    DSEEK_CHECK(bin_size == tokens * 4, "[data] {}: {} bytes, expected {} (4 × {} tokens): truncated or corrupt",
                bin, bin_size, tokens * 4, tokens);
    DSEEK_CHECK(docs_size % 8 == 0, "[data] {}: size {} is not a multiple of 8", docs, docs_size);
    const auto* ends = static_cast<const uint64_t*>(docs_map.get());
    const auto* toks = static_cast<const uint32_t*>(bin_map.get());
    size_t n_docs = docs_size / 8;
    uint64_t prev = 0;
    for (size_t i = 0; i < n_docs; ++i) {
      DSEEK_CHECK(ends[i] > prev && ends[i] <= tokens,
                  "[data] {}: document {} ends at {}, after {} (corrupt document index)", docs, i, ends[i],
                  prev);
      ds->docs_.push_back({toks + prev, int64_t(ends[i] - prev)});
      prev = ends[i];
    }
    DSEEK_CHECK(prev == tokens, "[data] {}: documents cover {} of {} tokens", docs, prev, tokens);
    uint64_t bad = tokens;
    for (uint64_t i = 0; i < tokens; ++i) {
      if (toks[i] >= uint64_t(ds->vocab_size_)) {
        bad = i;
        break;
      }
    }
    DSEEK_CHECK(bad == tokens, "[data] {}: token {} at position {} is outside the vocabulary of {}", bin,
                bad < tokens ? toks[bad] : 0, bad, ds->vocab_size_);
    ds->total_tokens_ += int64_t(tokens);
    ds->mappings_.push_back(bin_map);
    ds->mappings_.push_back(docs_map);
  }
  return ds;
}

const uint32_t* TokenDataset::document(int64_t d, int64_t* length) const {
  DSEEK_CHECK(d >= 0 && d < num_documents(), "[data] document {} out of range [0, {})", d, num_documents());
  *length = docs_[size_t(d)].length;
  return docs_[size_t(d)].tokens;
}

}  // namespace dseek
