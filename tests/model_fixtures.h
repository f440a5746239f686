// The committed transformers fixtures (tests/fixtures/models/<name>/: config.json, weights and
// reference.json with transformers' logits), shared by the CPU conformance tests and the GPU
// backend tests: where they are, their reference read back, logits files and token ids on a
// command line (the error measures are test_ops_util.h's).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
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

// A file of little-endian f32 values (a fixture's logits, `dseek logits --out`) whole; empty when
// it cannot be opened (a comparison with max_abs_diff then fails).
inline std::vector<float> read_f32(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  return values;
}

// The ids as dseek's --ids takes them (sep ",") or --print-ids prints them (sep " ").
inline std::string join_ids(const std::vector<int32_t>& ids, const char* sep = ",") {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : sep) + std::to_string(id);
  return s;
}

// What reference.json of fixture `name` says: the input ids and transformers' [rows, vocab]
// logits of them with their tolerance, and a greedy prompt with its continuation.
struct ModelFixture {
  std::filesystem::path dir;
  std::vector<int32_t> input_ids, greedy_prompt, greedy_continuation;
  int64_t rows = 0, vocab = 0;
  double tolerance = 0;
  std::vector<float> logits;
};

inline ModelFixture load_model_fixture(const std::string& name) {
  ModelFixture f;
  f.dir = fixtures_root() / name;
  std::ifstream in(f.dir / "reference.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  f.input_ids = j.at("input_ids").get<std::vector<int32_t>>();
  f.greedy_prompt = j.at("greedy_prompt").get<std::vector<int32_t>>();
  f.greedy_continuation = j.at("greedy_continuation").get<std::vector<int32_t>>();
  f.rows = j.at("logits_shape").at(0);
  f.vocab = j.at("logits_shape").at(1);
  f.tolerance = j.at("tolerance");
  f.logits = read_f32(f.dir / j.at("logits_file").get<std::string>());
  return f;
}

}  // namespace dseek::testing
