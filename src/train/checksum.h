// File checksums for training checkpoints: XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0;
// spec: https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md). It reads 32-byte
// stripes in four independent multiply-rotate lanes, so it runs at memory speed (byte-at-a-time
// FNV-1a would add seconds to every multi-gigabyte checkpoint) and catches truncation, flipped
// bits and swapped blocks. It is not a cryptographic hash: it detects accidents, not tampering.
//
// Streaming form: update() may be called with pieces of any size; digest() gives the same value
// as hashing the concatenation in one call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dseek::train {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  uint64_t lanes_[4];
  uint64_t seed_;
  uint64_t total_ = 0;
  unsigned char buffer_[32];  // a partial stripe carried between update() calls
  size_t buffered_ = 0;
};

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

// XXH64 of a whole file, read in chunks; also returns its size. Throws naming the path when it
// cannot be read.
uint64_t xxh64_file(const std::string& path, uint64_t* size = nullptr);

// 16 lowercase hex digits, as xxhsum prints it.
std::string hex64(uint64_t value);

}  // namespace dseek::train
