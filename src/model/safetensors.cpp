// Safetensors reader. Validation follows the reference implementation (the Rust `safetensors`
// crate, `SafeTensors::read_metadata` + `Metadata::validate`):
//   - the header length N must be at most 100,000,000 bytes and 8 + N must fit in the file;
//   - the header must be UTF-8 JSON starting with '{';
//   - sorted by offset, the tensors must tile the data section exactly: the first starts at 0,
//     each one starts where the previous ended (no gap, no overlap), and the last ends at the end
//     of the file ("MetadataIncompleteBuffer" otherwise), so trailing bytes are refused;
//   - each tensor's byte size must equal numel × dtype size, with overflow checked.
// Beyond the reference we also refuse duplicate keys (serde keeps the last one silently) and
// dtypes dseek cannot compute with.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace dseek {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

using json = nlohmann::json;

// Strict UTF-8 check (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid_utf8(const unsigned char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
      return false;
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

// Parses the header, refusing duplicate keys at any depth.
json parse_header(const char* text, size_t n, const std::string& source) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty() && parsed.is_string()) {
      if (!keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + n, callback);
  } catch (const json::exception& e) {
    fail("[safetensors] {}: header is not valid JSON: {}", source, e.what());
  }
  DSEEK_CHECK(duplicate.empty(), "[safetensors] {}: header has the key '{}' twice", source,
              duplicate);
  return header;
}

uint64_t read_offset(const json& value, const std::string& source, const std::string& name) {
  DSEEK_CHECK(value.is_number_unsigned(),
              "[safetensors] {}: tensor '{}': data_offsets must be non-negative integers, got {}",
              source, name, value.dump());
  return value.get<uint64_t>();
}

TensorInfo parse_entry(const json& entry, const std::string& name, uint64_t data_size,
                       const std::string& source) {
  DSEEK_CHECK(entry.is_object(), "[safetensors] {}: tensor '{}': entry is not an object", source,
              name);
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    DSEEK_CHECK(entry.contains(key), "[safetensors] {}: tensor '{}': missing '{}'", source, name,
                key);
  }
  const json& dtype = entry["dtype"];
  DSEEK_CHECK(dtype.is_string(), "[safetensors] {}: tensor '{}': dtype is not a string", source,
              name);
  TensorInfo info;
  try {
    info.dtype = dtype_from_safetensors(dtype.get<std::string>());
  } catch (const Error& e) {
    fail("[safetensors] {}: tensor '{}': {}", source, name, e.what());
  }
  const json& shape = entry["shape"];
  DSEEK_CHECK(shape.is_array(), "[safetensors] {}: tensor '{}': shape is not an array", source,
              name);
  uint64_t numel = 1;
  for (const json& d : shape) {
    DSEEK_CHECK(
        d.is_number_unsigned() && d.get<uint64_t>() <= uint64_t(INT64_MAX),
        "[safetensors] {}: tensor '{}': shape {} has a dimension that is not a non-negative "
        "integer",
        source, name, shape.dump());
    uint64_t dim = d.get<uint64_t>();
    DSEEK_CHECK(!__builtin_mul_overflow(numel, dim, &numel) && numel <= uint64_t(INT64_MAX),
                "[safetensors] {}: tensor '{}': shape {} overflows", source, name, shape.dump());
    info.shape.push_back(int64_t(dim));
  }
  const json& offsets = entry["data_offsets"];
  DSEEK_CHECK(offsets.is_array() && offsets.size() == 2,
              "[safetensors] {}: tensor '{}': data_offsets must be [begin, end]", source, name);
  uint64_t begin = read_offset(offsets[0], source, name);
  uint64_t end = read_offset(offsets[1], source, name);
  DSEEK_CHECK(begin <= end, "[safetensors] {}: tensor '{}': data_offsets [{}, {}] begin after end",
              source, name, begin, end);
  DSEEK_CHECK(end <= data_size,
              "[safetensors] {}: tensor '{}': data_offsets [{}, {}] beyond the data section of {} "
              "bytes",
              source, name, begin, end, data_size);
  uint64_t bytes;
  DSEEK_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_size(info.dtype)), &bytes),
              "[safetensors] {}: tensor '{}': byte size overflows", source, name);
  DSEEK_CHECK(
      end - begin == bytes,
      "[safetensors] {}: tensor '{}': data_offsets [{}, {}] hold {} bytes but shape {} of {} "
      "needs {}",
      source, name, begin, end, end - begin, shape_str(info.shape), dtype_name(info.dtype), bytes);
  info.begin = size_t(begin);
  info.end = size_t(end);
  return info;
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::from_buffer(std::shared_ptr<void> owner,
                                                              const void* data, size_t size,
                                                              const std::string& source) {
  const char* bytes = static_cast<const char*>(data);
  DSEEK_CHECK(size >= 8,
              "[safetensors] {}: file is {} bytes, shorter than the 8-byte header length", source,
              size);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(bytes[i]);
  DSEEK_CHECK(header_len <= kMaxHeaderBytes,
              "[safetensors] {}: header length {} exceeds the limit of {} bytes", source,
              header_len, kMaxHeaderBytes);
  DSEEK_CHECK(header_len <= size - 8,
              "[safetensors] {}: header length {} runs past the end of the {}-byte file", source,
              header_len, size);
  const char* header_text = bytes + 8;
  DSEEK_CHECK(is_valid_utf8(reinterpret_cast<const unsigned char*>(header_text), header_len),
              "[safetensors] {}: header is not valid UTF-8", source);
  DSEEK_CHECK(header_len > 0 && header_text[0] == '{',
              "[safetensors] {}: header does not start with '{{'", source);
  json header = parse_header(header_text, header_len, source);
  DSEEK_CHECK(header.is_object(), "[safetensors] {}: header is not a JSON object", source);

  auto file = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = source;
  file->owner_ = std::move(owner);
  file->data_ = header_text + header_len;
  uint64_t data_size = size - 8 - header_len;

  std::vector<std::pair<const std::string*, const TensorInfo*>> by_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      DSEEK_CHECK(it.value().is_object(), "[safetensors] {}: __metadata__ is not an object",
                  source);
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        DSEEK_CHECK(m.value().is_string(),
                    "[safetensors] {}: __metadata__ value of '{}' is not a string", source,
                    m.key());
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto [pos, inserted] =
        file->tensors_.emplace(it.key(), parse_entry(it.value(), it.key(), data_size, source));
    assert(inserted);  // duplicates were refused while parsing
    (void)inserted;
    by_offset.emplace_back(&pos->first, &pos->second);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  size_t expected = 0;
  const std::string* previous = nullptr;
  for (const auto& [name, info] : by_offset) {
    if (info->begin < expected) {
      fail("[safetensors] {}: tensor '{}' (bytes [{}, {})) overlaps tensor '{}'", source, *name,
           info->begin, info->end, *previous);
    }
    if (info->begin > expected) {
      fail(
          "[safetensors] {}: tensor '{}' starts at byte {} but the previous tensor ends at {}: the "
          "data section has a gap",
          source, *name, info->begin, expected);
    }
    expected = info->end;
    previous = name;
  }
  DSEEK_CHECK(expected == data_size,
              "[safetensors] {}: tensors cover {} bytes of a {}-byte data section (trailing bytes "
              "are not allowed)",
              source, expected, data_size);
  return file;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("[safetensors] {}: cannot open: {}", path, std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int err = errno;
    ::close(fd);
    fail("[safetensors] {}: not a regular file{}", path,
         err ? std::string(": ") + std::strerror(err) : "");
  }
  size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("[safetensors] {}: file is {} bytes, shorter than the 8-byte header length", path, size);
  }
  void* addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (addr == MAP_FAILED) fail("[safetensors] {}: mmap failed: {}", path, std::strerror(err));
  std::shared_ptr<void> mapping(addr, [size](void* p) { munmap(p, size); });
  return from_buffer(mapping, addr, size, path);
}

Tensor SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  DSEEK_CHECK(it != tensors_.end(), "[safetensors] {}: no tensor '{}'", path_, name);
  const TensorInfo& info = it->second;
  const char* p = data_ + info.begin;
  // The format does not align the data section; a misaligned view would be undefined behaviour to
  // read as its element type, so such tensors are copied (the reference writer pads to 8 bytes).
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(info.dtype) != 0) {
    Tensor copy = Tensor::empty(info.shape, info.dtype);
    std::memcpy(copy.raw(), p, info.end - info.begin);
    return copy;
  }
  return Tensor::borrow(const_cast<char*>(p), info.shape, info.dtype, owner_);
}

}  // namespace dseek
