// The UCI optical digits from scikit-learn's CSV (see digits.h).
#include "data/digits.h"

#include <zlib.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"

namespace dseek {
namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// The whole file through zlib: gzip members are inflated, anything else is read as it is.
std::string read_maybe_gzip(const std::string& path) {
  DSEEK_CHECK(fs::is_regular_file(path), "[digits] {}: no such file", path);
  gzFile f = gzopen(path.c_str(), "rb");
  DSEEK_CHECK(f != nullptr, "[digits] {}: cannot open", path);
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const int n = gzread(f, buffer, sizeof(buffer));
    if (n <= 0) break;
    text.append(buffer, size_t(n));
  }
  // A corrupt stream makes gzread return -1; a truncated one only shows in the error state
  // (Z_BUF_ERROR, "unexpected end of file"), so the state is checked either way.
  int code = Z_OK;
  const char* message = gzerror(f, &code);
  const std::string what = message ? message : "";
  const int closed = gzclose_r(f);
  DSEEK_CHECK(code == Z_OK && closed == Z_OK,
              "[digits] {}: cannot decompress: {} (zlib error {}); fetch it again with: bash "
              "scripts/setup.sh",
              path, what.empty() ? "unknown" : what, code != Z_OK ? code : closed);
  return text;
}

}  // namespace

std::string digits_cache_path() {
  const std::string data = env("DSEEK_DATA");
  if (!data.empty()) return (fs::path(data) / "digits.csv.gz").string();
  const std::string home = env("HOME");
  if (!home.empty()) return (fs::path(home) / ".cache" / "dseek" / "digits.csv.gz").string();
  return "";
}

std::string find_digits(const std::string& explicit_path) {
  // A path the user named must be the one used: a typo silently falling back to another copy
  // would train on something other than what was asked for.
  if (!explicit_path.empty()) {
    DSEEK_CHECK(fs::is_regular_file(explicit_path), "[digits] --digits {}: no such file",
                explicit_path);
    return explicit_path;
  }
  const std::string from_env = env("DSEEK_DIGITS");
  if (!from_env.empty()) {
    DSEEK_CHECK(fs::is_regular_file(from_env), "[digits] $DSEEK_DIGITS {}: no such file", from_env);
    return from_env;
  }
  if (fs::is_regular_file(kDigitsPackagePath)) return kDigitsPackagePath;
  const std::string cached = digits_cache_path();
  if (!cached.empty() && fs::is_regular_file(cached)) return cached;
  fail(
      "[digits] the UCI digits (scikit-learn's digits.csv.gz) were not found; tried: --digits "
      "(not given), $DSEEK_DIGITS (not set), {} (package python3-sklearn, not installed), {} "
      "(the cached copy). Fetch it with: bash scripts/setup.sh (apt-get download "
      "python3-sklearn, extracted to the cache; no install needed)",
      kDigitsPackagePath, cached.empty() ? "$DSEEK_DATA or $HOME unset, no cache path" : cached);
}

Digits parse_digits_csv(const std::string& text, const std::string& name) {
  Digits d;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    ++line;
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();  // a last line without newline
    size_t stop = end;
    if (stop > pos && text[stop - 1] == '\r') --stop;  // CRLF
    DSEEK_CHECK(stop > pos, "[digits] {}:{}: empty line", name, line);
    int field = 0;
    size_t i = pos;
    for (;;) {
      const size_t start = i;
      int value = 0;
      while (i < stop && text[i] >= '0' && text[i] <= '9') {
        value = value * 10 + (text[i] - '0');
        DSEEK_CHECK(i - start < 3, "[digits] {}:{}: field {} is too long", name, line, field + 1);
        ++i;
      }
      DSEEK_CHECK(i > start, "[digits] {}:{}: field {}: expected a non-negative integer, got {}",
                  name, line, field + 1,
                  i < stop ? fmt::format("'{}'", text[i]) : std::string("nothing"));
      DSEEK_CHECK(field < kDigitsPixels + 1, "[digits] {}:{}: more than {} fields", name, line,
                  kDigitsPixels + 1);
      if (field < kDigitsPixels) {
        DSEEK_CHECK(value <= kDigitsMaxPixel, "[digits] {}:{}: pixel {} is {}, outside [0, {}]",
                    name, line, field + 1, value, kDigitsMaxPixel);
        d.pixels.push_back(uint8_t(value));
      } else {
        DSEEK_CHECK(value < kDigitsClasses, "[digits] {}:{}: label {} outside [0, {}]", name, line,
                    value, kDigitsClasses - 1);
        d.labels.push_back(value);
      }
      ++field;
      if (i == stop) break;
      DSEEK_CHECK(text[i] == ',', "[digits] {}:{}: field {}: unexpected character '{}'", name, line,
                  field, text[i]);
      ++i;
    }
    DSEEK_CHECK(field == kDigitsPixels + 1,
                "[digits] {}:{}: {} fields, expected {} (64 pixels "
                "and the label)",
                name, line, field, kDigitsPixels + 1);
    pos = end + 1;
  }
  DSEEK_CHECK(d.count() > 0, "[digits] {}: no images", name);
  return d;
}

Digits load_digits(const std::string& path) {
  return parse_digits_csv(read_maybe_gzip(path), path);
}

}  // namespace dseek
