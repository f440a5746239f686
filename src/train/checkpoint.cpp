#include "train/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "model/safetensors.h"
#include "train/checksum.h"

namespace dseek::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "dseek-checkpoint-v1";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kLatestFile = "latest";
constexpr const char* kTmpMarker = ".tmp-";

// The files a manifest must list, in the order they are written.
const std::vector<std::string>& payload_files() {
  static const std::vector<std::string> files = {kModelFile, kOptimizerFile, kStateFile};
  return files;
}

// Step of a complete-looking directory name "step-<digits>"; -1 for anything else (temporaries,
// `latest`, foreign files).
int64_t step_of_name(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step-") != 0 || name.size() > 5 + 18) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DSEEK_CHECK(fd >= 0, "[checkpoint] {}: cannot open directory ({})", dir.string(),
              std::strerror(errno));
  // EINVAL: the file system cannot sync directories (some network mounts); nothing more to do.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    ::close(fd);
    fail("[checkpoint] {}: fsync of the directory failed ({})", dir.string(), std::strerror(err));
  }
  ::close(fd);
}

// Writes `text` to a new file and fsyncs it. Atomicity comes from the caller (a temporary
// directory renamed as a whole, or a rename of this file).
void write_durable(const fs::path& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSEEK_CHECK(fd >= 0, "[checkpoint] {}: cannot create ({})", path.string(), std::strerror(errno));
  size_t written = 0;
  while (written < text.size()) {
    ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      fail("[checkpoint] {}: write failed ({})", path.string(), std::strerror(err));
    }
    written += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    fail("[checkpoint] {}: flush failed ({})", path.string(), std::strerror(errno));
  }
}

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  DSEEK_CHECK(file.good(), "[checkpoint] {}: cannot open", path.string());
  std::stringstream ss;
  ss << file.rdbuf();
  DSEEK_CHECK(!file.bad(), "[checkpoint] {}: read failed", path.string());
  return ss.str();
}

json parse_json_file(const fs::path& path) {
  const std::string text = read_text(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("[checkpoint] {}: invalid JSON ({})", path.string(), e.what());
  }
}

struct FileRecord {
  std::string name;
  uint64_t bytes = 0;
  std::string xxh64;  // 16 hex digits
};

struct Manifest {
  int64_t step = 0;
  std::vector<FileRecord> files;
};

// Reads and validates manifest.json (structure only; the files are checked by the callers).
Manifest read_manifest(const fs::path& dir) {
  const fs::path path = dir / kManifestFile;
  DSEEK_CHECK(fs::is_regular_file(path),
              "[checkpoint] {}: missing (the checkpoint is incomplete or this is not a checkpoint "
              "directory)",
              path.string());
  const json j = parse_json_file(path);
  DSEEK_CHECK(j.is_object() && j.value("format", "") == kFormat,
              "[checkpoint] {}: not a manifest (\"format\" must be \"{}\")", path.string(),
              kFormat);
  DSEEK_CHECK(j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() >= 0,
              "[checkpoint] {}: \"step\" must be a non-negative integer", path.string());
  DSEEK_CHECK(j.value("checksum", "") == "xxh64",
              "[checkpoint] {}: unknown \"checksum\" (want xxh64)", path.string());
  DSEEK_CHECK(j.contains("files") && j["files"].is_array(),
              "[checkpoint] {}: \"files\" must be an array", path.string());
  Manifest manifest;
  manifest.step = j["step"].get<int64_t>();
  for (const json& f : j["files"]) {
    DSEEK_CHECK(
        f.is_object() && f.contains("name") && f["name"].is_string() && f.contains("bytes") &&
            f["bytes"].is_number_unsigned() && f.contains("xxh64") && f["xxh64"].is_string() &&
            f["xxh64"].get<std::string>().size() == 16,
        "[checkpoint] {}: each of \"files\" needs \"name\", \"bytes\" and a 16-digit \"xxh64\"",
        path.string());
    manifest.files.push_back(
        {f["name"].get<std::string>(), f["bytes"].get<uint64_t>(), f["xxh64"].get<std::string>()});
  }
  for (const std::string& expected : payload_files()) {
    DSEEK_CHECK(std::any_of(manifest.files.begin(), manifest.files.end(),
                            [&](const FileRecord& r) { return r.name == expected; }),
                "[checkpoint] {}: does not list {}", path.string(), expected);
  }
  return manifest;
}

// Checks that each listed file exists with the recorded size (a stat, no reading).
void check_sizes(const fs::path& dir, const Manifest& manifest) {
  for (const FileRecord& record : manifest.files) {
    const fs::path path = dir / record.name;
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    DSEEK_CHECK(!ec, "[checkpoint] {}: missing ({})", path.string(), ec.message());
    DSEEK_CHECK(size >= record.bytes,
                "[checkpoint] {}: truncated: {} bytes, the manifest records {}", path.string(),
                size, record.bytes);
    DSEEK_CHECK(size == record.bytes,
                "[checkpoint] {}: size mismatch: {} bytes, the manifest records {}", path.string(),
                size, record.bytes);
  }
}

bool looks_complete(const fs::path& dir) {
  try {
    check_sizes(dir, read_manifest(dir));
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

void check_f32(const std::vector<std::pair<std::string, Tensor>>& tensors, const char* file) {
  for (const auto& [name, tensor] : tensors) {
    DSEEK_CHECK(!tensor.defined() || tensor.dtype() == DType::F32,
                "[checkpoint] {}: tensor '{}' is {}, checkpoints hold f32 tensors", file, name,
                dtype_name(tensor.dtype()));
  }
}

// The tensors as save_safetensors takes them: on the CPU (a GPU tensor is copied to the host; a CPU
// one is passed as it is, Tensor::to(Device) returning the tensor itself).
std::vector<std::pair<std::string, Tensor>> on_host(
    const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors)
    out.emplace_back(name, tensor.defined() ? tensor.to(Device::CPU) : tensor);
  return out;
}

// Owned f32 copies of every tensor of a safetensors file, in the order they were saved (the
// writer lays tensors out back to back in save order, so data offsets recover it).
std::vector<std::pair<std::string, Tensor>> load_tensors(const fs::path& path) {
  std::shared_ptr<SafetensorsFile> file = SafetensorsFile::open(path.string());
  std::vector<std::pair<std::string, const TensorInfo*>> order;
  for (const auto& [name, info] : file->tensors()) order.emplace_back(name, &info);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(order.size());
  for (const auto& [name, info] : order) {
    DSEEK_CHECK(info->dtype == DType::F32, "[checkpoint] {}: tensor '{}' is {}, expected f32",
                path.string(), name, dtype_name(info->dtype));
    tensors.emplace_back(name, file->get(name).clone());
  }
  return tensors;
}

// pid recorded in a temporary name "<anything>.tmp-<pid>[-suffix]"; 0 when absent.
long pid_of_temporary(const std::string& name) {
  size_t at = name.find(kTmpMarker);
  if (at == std::string::npos) return 0;
  long pid = 0;
  for (size_t i = at + std::strlen(kTmpMarker); i < name.size() && name[i] >= '0' && name[i] <= '9';
       ++i) {
    pid = pid * 10 + (name[i] - '0');
    if (pid > 1'000'000'000) return 0;
  }
  return pid;
}

// A temporary is stale unless another live process wrote it (two writers on one run directory
// are not supported, but the second must not delete the first one's work in progress). Our own
// pid counts as stale: this process writes one checkpoint at a time, and in a container a
// restarted trainer often gets the pid its crashed predecessor had.
bool is_stale_temporary(const std::string& name) {
  if (name.find(kTmpMarker) == std::string::npos) return false;
  long pid = pid_of_temporary(name);
  if (pid <= 0 || pid == long(::getpid())) return true;
  return ::kill(pid_t(pid), 0) != 0 && errno == ESRCH;
}

std::string temporary_name(const std::string& base, const char* suffix = "") {
  return base + kTmpMarker + std::to_string(::getpid()) + suffix;
}

// Removes a checkpoint without ever leaving a partial directory under a complete-looking name.
void remove_checkpoint_dir(const fs::path& root, const std::string& name) {
  std::error_code ec;
  const fs::path doomed = root / temporary_name(name, "-pruned");
  fs::rename(root / name, doomed, ec);
  if (!ec) fs::remove_all(doomed, ec);
}

// Removes stale temporaries and all but the newest keep_last complete checkpoints. Failures are
// ignored: whatever is left over is tried again by the next save.
void prune(const fs::path& root, const std::string& just_saved, int keep_last) {
  std::vector<std::pair<int64_t, std::string>> complete;
  std::vector<std::string> stale;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_stale_temporary(name)) {
      stale.push_back(name);
    } else if (int64_t step = step_of_name(name);
               step >= 0 && fs::is_regular_file(entry.path() / kManifestFile, ec)) {
      complete.emplace_back(step, name);
    }
  }
  for (const std::string& name : stale) fs::remove_all(root / name, ec);
  if (keep_last <= 0) return;
  // Newest first by step; the just-saved checkpoint takes one of the keep_last slots wherever it
  // sorts (a run resumed from an older checkpoint must not delete what it has just written).
  std::sort(complete.rbegin(), complete.rend());
  std::vector<std::string> keep = {just_saved};
  for (const auto& entry : complete) {
    if (int(keep.size()) >= keep_last) break;
    if (entry.second != just_saved) keep.push_back(entry.second);
  }
  for (const auto& entry : complete) {
    if (std::find(keep.begin(), keep.end(), entry.second) == keep.end())
      remove_checkpoint_dir(root, entry.second);
  }
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  DSEEK_CHECK(step >= 0, "[checkpoint] step must be non-negative, got {}", step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& run_dir, const CheckpointData& data, int keep_last) {
  const std::string name = checkpoint_dir_name(data.step);
  check_f32(data.model, kModelFile);
  check_f32(data.optimizer, kOptimizerFile);
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  fs::create_directories(root, ec);
  DSEEK_CHECK(!ec, "[checkpoint] {}: cannot create ({})", root.string(), ec.message());

  const fs::path tmp = root / temporary_name(name);
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  DSEEK_CHECK(!ec, "[checkpoint] {}: cannot create ({})", tmp.string(), ec.message());
  // Removes the temporary directory unless the write completes.
  struct Cleanup {
    fs::path path;
    ~Cleanup() {
      std::error_code ignored;
      if (!path.empty()) fs::remove_all(path, ignored);
    }
  } cleanup{tmp};

  const std::map<std::string, std::string> meta = {{"format", kFormat},
                                                   {"step", std::to_string(data.step)}};
  save_safetensors((tmp / kModelFile).string(), on_host(data.model), meta);
  save_safetensors((tmp / kOptimizerFile).string(), on_host(data.optimizer), meta);
  write_durable(tmp / kStateFile, data.state.dump(2) + "\n");

  json files = json::array();
  for (const std::string& file : payload_files()) {
    uint64_t bytes = 0;
    const uint64_t hash = xxh64_file((tmp / file).string(), &bytes);
    files.push_back({{"name", file}, {"bytes", bytes}, {"xxh64", hex64(hash)}});
  }
  const json manifest = {
      {"format", kFormat}, {"step", data.step}, {"checksum", "xxh64"}, {"files", files}};
  write_durable(tmp / kManifestFile, manifest.dump(2) + "\n");
  fsync_dir(tmp);

  const fs::path final_dir = root / name;
  if (fs::exists(final_dir)) {
    // Same step saved again (a resumed run passing it once more): swap atomically, then the old
    // copy sits at the temporary name and the cleanup deletes it.
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0) {
      // No RENAME_EXCHANGE on this file system: move the old one aside first. A crash in between
      // loses only this step; older checkpoints and the fallback search still find a good one.
      const fs::path aside = root / temporary_name(name, "-replaced");
      fs::rename(final_dir, aside);
      fs::rename(tmp, final_dir);
      cleanup.path = aside;
    }
  } else {
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      fail("[checkpoint] {}: rename from {} failed ({})", final_dir.string(), tmp.string(),
           std::strerror(errno));
    }
    cleanup.path.clear();
  }
  fsync_dir(root);

  const fs::path latest_tmp = root / temporary_name(kLatestFile);
  write_durable(latest_tmp, name + "\n");
  if (::rename(latest_tmp.c_str(), (root / kLatestFile).c_str()) != 0) {
    int err = errno;
    fs::remove(latest_tmp, ec);
    fail("[checkpoint] {}: rename failed ({})", (root / kLatestFile).string(), std::strerror(err));
  }
  fsync_dir(root);

  prune(root, name, keep_last);
  return final_dir.string();
}

std::string find_latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return "";
  if (fs::is_regular_file(root / kLatestFile, ec)) {
    std::string name;
    try {
      name = read_text(root / kLatestFile);
    } catch (const Error&) {
    }
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    if (step_of_name(name) >= 0 && looks_complete(root / name)) return (root / name).string();
  }
  std::vector<std::pair<int64_t, std::string>> candidates;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (int64_t step = step_of_name(name); step >= 0) candidates.emplace_back(step, name);
  }
  std::sort(candidates.rbegin(), candidates.rend());
  for (const auto& [step, name] : candidates) {
    if (looks_complete(root / name)) return (root / name).string();
  }
  return "";
}

CheckpointData load_checkpoint(const std::string& checkpoint_dir) {
  const fs::path dir(checkpoint_dir);
  DSEEK_CHECK(fs::is_directory(dir), "[checkpoint] {}: not a directory", checkpoint_dir);
  const Manifest manifest = read_manifest(dir);
  check_sizes(dir, manifest);
  for (const FileRecord& record : manifest.files) {
    const fs::path path = dir / record.name;
    const std::string actual = hex64(xxh64_file(path.string()));
    DSEEK_CHECK(actual == record.xxh64,
                "[checkpoint] {}: checksum mismatch: xxh64 {}, the manifest records {} (the file "
                "is corrupt)",
                path.string(), actual, record.xxh64);
  }
  CheckpointData data;
  data.step = manifest.step;
  data.model = load_tensors(dir / kModelFile);
  data.optimizer = load_tensors(dir / kOptimizerFile);
  data.state = parse_json_file(dir / kStateFile);
  return data;
}

}  // namespace dseek::train
