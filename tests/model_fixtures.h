// The committed transformers fixtures (tests/fixtures/models/<name>/: config.json, weights and
// reference.json with transformers' logits), shared by the CPU conformance tests and the GPU
// backend tests.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace dseek::testing {

inline std::filesystem::path fixtures_root() {
  return std::filesystem::path(DSEEK_SOURCE_DIR) / "tests" / "fixtures" / "models";
}

// Names of the fixture directories that hold a reference.json, sorted.
inline std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(fixtures_root(), ec)) {
    if (std::filesystem::exists(entry.path() / "reference.json"))
      names.push_back(entry.path().filename());
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace dseek::testing
