// libFuzzer target for the tokenizer. The first byte picks what the rest is:
//   0: text to encode with a small byte-level BPE tokenizer that uses DeepSeek-V3's
//      pre-tokenizer and has added tokens (then decoded, in full and streamed, and checked to
//      round-trip);
//   1: a tokenizer.json to load;
//   2: a Split regex to load and run on a fixed text;
//   3: token ids (two bytes each) to decode.
// dseek::Error is an accepted outcome for bad input; crashes, sanitizer reports and broken
// round-trips are findings.
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

nlohmann::json base_json() {
  nlohmann::json vocab = nlohmann::json::object();
  int32_t next = 0;
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    dseek::utf8::append(symbol, dseek::utf8::byte_to_char(uint8_t(b)));
    vocab[symbol] = next++;
  }
  nlohmann::json merges = nlohmann::json::array();
  for (const char* pair : {"Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ Ġ", "1 2", "ä ¸"}) {
    const std::string p = pair;
    const size_t space = p.find(' ');
    const std::string merged = p.substr(0, space) + p.substr(space + 1);
    if (!vocab.contains(merged)) vocab[merged] = next++;
    merges.push_back(p);
  }
  nlohmann::json doc = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", next},
         {"content", "<｜end▁of▁sentence｜>"},
         {"special", true},
         {"normalized", false}},
        {{"id", next + 1},
         {"content", "<pad>"},
         {"special", false},
         {"normalized", true},
         {"lstrip", true},
         {"rstrip", true}}}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", nlohmann::json::array()}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", "\\p{N}{1,3}"}}}, {"behavior", "Isolated"}},
          {{"type", "Split"},
           {"pattern", {{"Regex", "[一-龥぀-ゟ゠-ヿ]+"}}},
           {"behavior", "Isolated"}},
          {{"type", "Split"},
           {"pattern",
            {{"Regex",
              "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
              "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}}},
           {"behavior", "Isolated"}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return doc;
}

const dseek::Tokenizer& base_tokenizer() {
  static const dseek::Tokenizer tok =
      dseek::Tokenizer::from_json_text(base_json().dump(), "", "fuzz");
  return tok;
}

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const dseek::Tokenizer& tok = base_tokenizer();
  try {
    switch (data[0] % 4) {
      case 0: {
        const auto ids = tok.encode(rest);
        const std::string text = tok.decode(ids);
        // Every byte of valid input is representable, so decoding gives the input back (except
        // for the whitespace that "<pad>" strips around itself).
        check(text == rest || rest.find("<pad>") != std::string_view::npos);
        dseek::StreamDecoder stream(tok);
        std::string streamed;
        for (const int32_t id : ids) streamed += stream.push(id);
        streamed += stream.flush();
        check(streamed == text);
        break;
      }
      case 1: {
        const auto loaded = dseek::Tokenizer::from_json_text(rest, "", "fuzz.json");
        (void)loaded.encode("Hello, world! 12345 你好");
        break;
      }
      case 2: {
        nlohmann::json doc = base_json();
        doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = std::string(rest);
        const auto loaded = dseek::Tokenizer::from_json_text(doc.dump(), "", "fuzz.json");
        (void)loaded.encode("Hello,  world!\n\t12345 你好 ありがとう  ");
        break;
      }
      default: {
        std::vector<int32_t> ids;
        for (size_t i = 0; i + 1 < rest.size(); i += 2) {
          ids.push_back(int32_t(uint8_t(rest[i]) | (uint8_t(rest[i + 1]) << 8)) % 300);
        }
        const std::string text = tok.decode(ids);
        check(!dseek::utf8::first_invalid(text).has_value());
        break;
      }
    }
  } catch (const dseek::Error&) {
    // Bad input rejected with a message: fine.
  } catch (const nlohmann::json::exception&) {
    // The JSON library may reject the regex string (invalid UTF-8) in case 2: fine.
  }
  return 0;
}
