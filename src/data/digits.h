// The UCI optical-recognition digits (1,797 images of 8×8 pixels, 17 grey levels 0..16, labels
// 0..9), as scikit-learn ships them and Debian packages them (python3-sklearn):
// sklearn/datasets/data/digits.csv.gz, one image a line, 65 comma-separated integers — the 64
// pixels row by row, then the label. dseek's vision proxy (synth/vision_proxy.h) trains on it.
//
//   const std::string path = find_digits(explicit_path);   // or throws naming what it tried
//   const Digits d = load_digits(path);                    // d.pixels[i * 64 + p], d.labels[i]
//
// Where it is looked for, in order: an explicit path (`--digits PATH`), $DSEEK_DIGITS, the
// installed package's file (kDigitsPackagePath), and the copy scripts/setup.sh caches without
// installing the package (apt-get download + dpkg-deb, ~2 MB instead of scipy and friends):
// $DSEEK_DATA/digits.csv.gz, or ~/.cache/dseek/digits.csv.gz when DSEEK_DATA is unset.
//
// The file may be gzip-compressed or plain (zlib reads both). Parsing is strict: exactly 65
// fields of decimal digits per line, pixels in [0, 16], labels in [0, 9], no empty lines but a
// final newline; an error names the file and the line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dseek {

inline constexpr int64_t kDigitsSide = 8;  // images are kDigitsSide × kDigitsSide
inline constexpr int64_t kDigitsPixels = kDigitsSide * kDigitsSide;
inline constexpr int kDigitsMaxPixel = 16;
inline constexpr int kDigitsClasses = 10;
inline constexpr const char* kDigitsPackagePath =
    "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz";

struct Digits {
  std::vector<uint8_t> pixels;  // [count, 64] row-major, each 0..16
  std::vector<int32_t> labels;  // [count], each 0..9
  int64_t count() const { return int64_t(labels.size()); }
};

// The cached copy's path ($DSEEK_DATA/digits.csv.gz or ~/.cache/dseek/digits.csv.gz); "" when
// neither DSEEK_DATA nor HOME is set.
std::string digits_cache_path();

// The first existing file of the search order above (`explicit_path` first when not empty; an
// explicit path or $DSEEK_DIGITS that does not exist is an error, not skipped). Throws
// dseek::Error listing every place tried and the command that fetches the file.
std::string find_digits(const std::string& explicit_path = "");

// Reads and parses `path` (gzip or plain). Throws dseek::Error ("[digits] PATH:LINE: ...").
Digits load_digits(const std::string& path);

// Parses the CSV text; `name` stands for the file in errors.
Digits parse_digits_csv(const std::string& text, const std::string& name);

}  // namespace dseek
