// UTF-8 helpers for the tokenizer: validation of input text, the lossy decoding that Hugging Face
// applies to decoded bytes (Rust's String::from_utf8_lossy: every maximal ill-formed subpart
// becomes one U+FFFD), and GPT-2's byte <-> printable-character map used by byte-level BPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dseek::utf8 {

// Offset of the first byte that does not start a well-formed UTF-8 sequence, or nullopt.
std::optional<size_t> first_invalid(std::string_view text);

// Appends the UTF-8 encoding of `cp` (a Unicode scalar value).
void append(std::string& out, char32_t cp);

// Decodes the code point at `pos` of valid UTF-8 `text`, advancing `pos`.
char32_t next(std::string_view text, size_t& pos);

// Appends the lossy decoding of `bytes` to `out`. With `final` false, a trailing sequence that is
// incomplete but could still become valid is left undecoded; returns how many bytes were consumed.
size_t decode_lossy(std::string_view bytes, std::string& out, bool final);

inline std::string lossy(std::string_view bytes) {
  std::string out;
  decode_lossy(bytes, out, true);
  return out;
}

// GPT-2's bytes_to_unicode(): the printable code point standing for each byte.
char32_t byte_to_char(uint8_t byte);
// The inverse map; nullopt for characters that stand for no byte.
std::optional<uint8_t> char_to_byte(char32_t cp);

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s accept).
bool is_white_space(char32_t cp);

}  // namespace dseek::utf8
