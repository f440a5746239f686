// save_safetensors: the writer. Like the reference writer it pads the header with spaces to a
// multiple of 8 bytes (so every tensor of the data section starts 8-byte aligned relative to the
// mapping) and writes the tensors back to back. Atomic: the bytes go to a temporary file in the
// destination directory, which is fsynced and renamed over the target; on any failure the
// temporary file is removed and a previous file at the target stays untouched.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "model/safetensors.h"

namespace dseek {

namespace {

// Closes and removes the temporary file unless released.
class TempFile {
 public:
  TempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }
  void release() { path_.clear(); }

 private:
  int fd_;
  std::string path_;
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t written = ::write(fd, p, n);
    if (written < 0) {
      if (errno == EINTR) continue;
      fail("[safetensors] {}: write failed: {}", path, std::strerror(errno));
    }
    p += written;
    n -= size_t(written);
  }
}

}  // namespace

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::set<std::string> names;
  size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    DSEEK_CHECK(name != "__metadata__", "[safetensors] {}: '__metadata__' cannot name a tensor",
                path);
    DSEEK_CHECK(names.insert(name).second, "[safetensors] {}: tensor '{}' given twice", path, name);
    DSEEK_CHECK(tensor.defined(), "[safetensors] {}: tensor '{}' is undefined", path, name);
    DSEEK_CHECK(tensor.device() == Device::CPU, "[safetensors] {}: tensor '{}' is not on the CPU",
                path, name);
    contiguous.push_back(tensor.contiguous());
    size_t bytes = tensor.nbytes();
    header[name] = {{"dtype", std::string(dtype_to_safetensors(tensor.dtype()))},
                    {"shape", tensor.shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t header_len = text.size();
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = uint8_t(header_len >> (8 * i));

  std::filesystem::path target(path);
  std::filesystem::path dir = target.parent_path();
  std::string pattern = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(pattern.data());
  if (fd < 0) {
    fail("[safetensors] {}: cannot create a temporary file in '{}': {}", path,
         dir.empty() ? "." : dir.string(), std::strerror(errno));
  }
  TempFile temp(fd, pattern);
  // mkstemp creates 0600; checkpoints are meant to be shared like any other file.
  if (::fchmod(fd, 0644) != 0)
    fail("[safetensors] {}: chmod failed: {}", path, std::strerror(errno));
  write_all(fd, prefix, 8, path);
  write_all(fd, text.data(), text.size(), path);
  for (const Tensor& t : contiguous) write_all(fd, t.raw(), t.nbytes(), path);
  if (::fsync(fd) != 0) fail("[safetensors] {}: fsync failed: {}", path, std::strerror(errno));
  if (temp.close() != 0) fail("[safetensors] {}: close failed: {}", path, std::strerror(errno));
  if (::rename(temp.path().c_str(), path.c_str()) != 0) {
    fail("[safetensors] {}: rename from '{}' failed: {}", path, temp.path(), std::strerror(errno));
  }
  temp.release();
  // Make the rename itself durable; failing to sync the directory loses nothing already written.
  int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace dseek
