#include "tokenizer/utf8.h"

#include <array>

namespace dseek::utf8 {
namespace {

enum class Step { kValid, kInvalid, kTruncated };

// Classifies the sequence starting at `pos`: its length if valid, else the length of its maximal
// ill-formed subpart (at least 1), or kTruncated when the bytes run out while still well-formed.
Step classify(std::string_view s, size_t pos, size_t& len) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) {
    len = 1;
    return Step::kValid;
  }
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    len = 1;
    return Step::kInvalid;
  }
  for (size_t j = 1; j < need; ++j) {
    if (pos + j >= s.size()) {
      len = j;
      return Step::kTruncated;
    }
    const auto b = static_cast<uint8_t>(s[pos + j]);
    const uint8_t l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
    if (b < l || b > h) {
      len = j;
      return Step::kInvalid;
    }
  }
  len = need;
  return Step::kValid;
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

struct ByteMap {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 512> to_byte{};  // every mapped character is below U+0200
  ByteMap() {
    to_byte.fill(-1);
    char32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? char32_t(b) : extra++;
      to_byte[to_char[b]] = int16_t(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

}  // namespace

std::optional<size_t> first_invalid(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 0;
    if (classify(text, pos, len) != Step::kValid) return pos;
    pos += len;
  }
  return std::nullopt;
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

char32_t next(std::string_view text, size_t& pos) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  size_t len = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  if (pos + len > text.size()) len = text.size() - pos;  // only for invalid input; keeps in bounds
  char32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t j = 1; j < len; ++j) cp = (cp << 6) | (static_cast<uint8_t>(text[pos + j]) & 0x3F);
  pos += len;
  return cp;
}

size_t decode_lossy(std::string_view bytes, std::string& out, bool final) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t len = 0;
    const Step step = classify(bytes, pos, len);
    if (step == Step::kValid) {
      out.append(bytes.substr(pos, len));
    } else if (step == Step::kTruncated && !final) {
      return pos;  // wait for the rest of the sequence
    } else {
      out.append(kReplacement);
    }
    pos += len;
  }
  return pos;
}

char32_t byte_to_char(uint8_t byte) {
  return byte_map().to_char[byte];
}

std::optional<uint8_t> char_to_byte(char32_t cp) {
  if (cp >= 512) return std::nullopt;
  const int16_t b = byte_map().to_byte[cp];
  if (b < 0) return std::nullopt;
  return uint8_t(b);
}

bool is_white_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

}  // namespace dseek::utf8
