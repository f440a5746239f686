// Helpers shared by the chart tests (test_plot.cpp) and the `dseek plot` tests (test_cli_plot.cpp):
// scratch directories and file contents (cli_util.h's), errors as text (test_util.h's), PNG
// decoding through libpng.
#pragma once

#include <gtest/gtest.h>
#include <png.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_util.h"
#include "test_util.h"

namespace dseek::plot_testing {

namespace fs = std::filesystem;
using dseek::testing::error_of;
using dseek::testing::slurp;
using dseek::testing::TempDir;

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  unsigned at(int x, int y) const {
    const uint8_t* p = &rgb[(size_t(y) * size_t(width) + size_t(x)) * 3];
    return (unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2];
  }
  size_t count(unsigned color) const {
    size_t n = 0;
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) n += at(x, y) == color;
    return n;
  }
};

// Decodes a PNG with libpng's simplified API (independently of the writer's code path).
inline Image read_png(const fs::path& path) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  EXPECT_TRUE(png_image_begin_read_from_file(&image, path.c_str())) << image.message;
  image.format = PNG_FORMAT_RGB;
  Image out;
  out.width = int(image.width);
  out.height = int(image.height);
  out.rgb.resize(PNG_IMAGE_SIZE(image));
  EXPECT_TRUE(png_image_finish_read(&image, nullptr, out.rgb.data(), 0, nullptr)) << image.message;
  return out;
}

inline size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace dseek::plot_testing
