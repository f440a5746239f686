// Safetensors reader/writer, sharded WeightStore and FP8 block dequantisation.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "cli_util.h"
#include "core/error.h"
#include "model/safetensors.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;

namespace {

std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = char(n >> (8 * i));
  return out + header + data;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Parses `bytes` and returns the error message ("" if it parsed).
std::string parse_error(const std::string& bytes) {
  auto owner = std::make_shared<std::string>(bytes);
  try {
    SafetensorsFile::from_buffer(owner, owner->data(), owner->size(), "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937 rng(seed);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng() % 251 + 1);
  if (dtype == DType::F8_E4M3) {
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] = (p[i] & 0x7f) == 0x7f ? 0x3c : p[i];  // no NaN
  }
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.contiguous().raw(), b.contiguous().raw(), a.nbytes()) == 0;
}

}  // namespace

TEST(Safetensors, RoundTripsEveryDtypeInOrderWithPaddedHeader) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.f32", random_tensor({3, 5}, DType::F32, 1)},
      {"a.bf16", random_tensor({7}, DType::BF16, 2)},
      {"m.f16", random_tensor({2, 3, 2}, DType::F16, 3)},
      {"b.f8", random_tensor({4, 9}, DType::F8_E4M3, 4)},
      {"c.i32", random_tensor({6}, DType::I32, 5)},
      {"d.i64", random_tensor({1, 3}, DType::I64, 6)},
      {"e.u8", random_tensor({13}, DType::U8, 7)},
      {"f.empty", Tensor::empty({0, 4}, DType::F32)},
      {"g.scalar", random_tensor({}, DType::F32, 8)},
  };
  std::string path = (dir.path / "model.safetensors").string();
  save_safetensors(path, tensors, {{"format", "pt"}});
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->tensors().size(), tensors.size());
  size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    SCOPED_TRACE(name);
    const TensorInfo& info = file->tensors().at(name);
    EXPECT_EQ(info.begin, offset);  // data written contiguously in the given order
    offset = info.end;
    EXPECT_TRUE(same_bytes(file->get(name), tensor));
  }
  // The header is padded with spaces to a multiple of 8, as the reference writer does.
  std::string bytes = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + offset);
  EXPECT_NE(bytes[8 + n - 1], '\0');
  // A strided view is written as its logical contents.
  Tensor base = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  save_safetensors(path, {{"t", base.transpose(0, 1)}});
  EXPECT_EQ(SafetensorsFile::open(path)->get("t").to_vector(),
            (std::vector<float>{1, 4, 2, 5, 3, 6}));
}

TEST(Safetensors, BorrowedViewKeepsTheMappingAlive) {
  TempDir dir;
  std::string path = (dir.path / "m.safetensors").string();
  save_safetensors(path, {{"w", Tensor::from_vector({1.5f, -2.0f, 3.25f}, {3})}});
  Tensor t = SafetensorsFile::open(path)->get("w");  // the file object is gone after this line
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
}

TEST(Safetensors, MisalignedDataIsCopiedNotReadInPlace) {
  // Header of 13 bytes puts the data section at offset 21: an f32 view would be misaligned.
  float values[2] = {0.5f, -7.0f};
  std::string data(reinterpret_cast<char*>(values), 8);
  std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header += " ";  // any length not a multiple of 4
  if ((8 + header.size()) % 4 == 0) header += " ";
  auto owner = std::make_shared<std::string>(raw_file(header, data));
  auto file = SafetensorsFile::from_buffer(owner, owner->data(), owner->size(), "x");
  EXPECT_EQ(file->get("w").to_vector(), (std::vector<float>{0.5f, -7.0f}));
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* expected;  // substring of the message
};

TEST(Safetensors, RefusesMalformedFilesNamingFileAndTensor) {
  const std::string t8 = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string d8(8, '\x11');
  std::string huge(8, '\0');
  uint64_t too_big = 100'000'001;
  std::memcpy(huge.data(), &too_big, 8);
  huge += "{}";
  std::vector<BadCase> cases = {
      {"short", std::string("\x02\0\0", 3), "shorter than the 8-byte"},
      {"header past end", raw_file("{}", "").substr(0, 9), "runs past the end"},
      {"header too large", huge, "exceeds the limit"},
      {"not json", raw_file("{\"t\": [", ""), "not valid JSON"},
      {"not an object", raw_file("[1, 2]", ""), "does not start with '{'"},
      {"not utf8", raw_file("{\"t\xff\": 1}", ""), "not valid UTF-8"},
      {"overlong utf8", raw_file("{\"t\xc0\xaf\": 1}", ""), "not valid UTF-8"},
      {"entry not object", raw_file(R"({"t": 5})", ""), "tensor 't': entry is not an object"},
      {"missing dtype", raw_file(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", d8),
       "missing 'dtype'"},
      {"missing shape", raw_file(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", d8),
       "missing 'shape'"},
      {"missing offsets", raw_file(R"({"t":{"dtype":"F32","shape":[2]}})", d8),
       "missing 'data_offsets'"},
      {"unsupported dtype",
       raw_file(R"({"t":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", d8),
       "unsupported safetensors dtype 'F64'"},
      {"negative dim", raw_file(R"({"t":{"dtype":"U8","shape":[-8],"data_offsets":[0,8]}})", d8),
       "not a non-negative integer"},
      {"fractional dim", raw_file(R"({"t":{"dtype":"U8","shape":[2.5],"data_offsets":[0,8]}})", d8),
       "not a non-negative integer"},
      {"shape overflow",
       raw_file(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8),
       "overflows"},
      {"size overflow",
       raw_file(R"({"t":{"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,8]}})", d8),
       "overflows"},
      {"offsets beyond data",
       raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"),
       "beyond the data section"},
      {"begin after end", raw_file(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", d8),
       "begin after end"},
      {"negative offset",
       raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", d8),
       "data_offsets must be non-negative"},
      {"size mismatch", raw_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8),
       "needs 12"},
      {"overlap",
       raw_file("{" + t8 + R"(,"u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
       "overlaps tensor 't'"},
      {"gap",
       raw_file("{" + t8 + R"(,"u":{"dtype":"U8","shape":[1],"data_offsets":[9,10]}})", d8 + "ab"),
       "has a gap"},
      {"gap at start", raw_file(R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", d8),
       "has a gap"},
      {"trailing bytes", raw_file("{" + t8 + "}", d8 + "xx"), "trailing bytes"},
      {"duplicate tensor", raw_file("{" + t8 + "," + t8 + "}", d8), "key 't' twice"},
      {"duplicate field",
       raw_file(R"({"t":{"dtype":"F32","dtype":"U8","shape":[2],"data_offsets":[0,8]}})", d8),
       "key 'dtype' twice"},
      {"metadata not string", raw_file(R"({"__metadata__":{"a":1}})", ""),
       "__metadata__ value of 'a'"},
      {"offsets not pair", raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8),
       "data_offsets must be [begin, end]"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::string message = parse_error(c.bytes);
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
    EXPECT_EQ(message.rfind("[safetensors] bad.safetensors: ", 0), 0u) << message;
  }
  EXPECT_EQ(parse_error(raw_file("{" + t8 + "}", d8)), "");  // the control parses
  EXPECT_EQ(parse_error(raw_file("{}", "")), "");            // an empty file is valid
}

TEST(Safetensors, OpenReportsMissingAndTruncatedFiles) {
  TempDir dir;
  EXPECT_THROW(
      {
        try {
          SafetensorsFile::open((dir.path / "nope.safetensors").string());
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("nope.safetensors: cannot open"), std::string::npos);
          throw;
        }
      },
      Error);
  write_file((dir.path / "short.safetensors").string(), "abc");
  EXPECT_THROW(SafetensorsFile::open((dir.path / "short.safetensors").string()), Error);
  EXPECT_THROW(SafetensorsFile::open(dir.path.string()), Error);  // a directory
}

TEST(WeightStore, SingleFileShapesAndMissingTensors) {
  TempDir dir;
  save_safetensors((dir.path / "model.safetensors").string(),
                   {{"a.weight", random_tensor({2, 3}, DType::BF16, 9)}});
  WeightStore store = WeightStore::open(dir.path.string());
  EXPECT_TRUE(store.has("a.weight"));
  EXPECT_EQ(store.names(), std::vector<std::string>{"a.weight"});
  EXPECT_EQ(store.get("a.weight", {2, 3}).shape(), (Shape{2, 3}));
  try {
    store.get("a.weight", {3, 2});
    ADD_FAILURE() << "shape mismatch accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'a.weight' has shape [2, 3], expected [3, 2]"),
              std::string::npos)
        << e.what();
  }
  try {
    store.get("b.weight");
    ADD_FAILURE() << "missing tensor accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'b.weight'"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(WeightStore::open((dir.path / "nothing_here").string()), Error);
  TempDir empty;
  EXPECT_THROW(WeightStore::open(empty.path.string()), Error);
}

TEST(WeightStore, ShardedIndexAndItsErrors) {
  TempDir dir;
  Tensor a = random_tensor({4}, DType::F32, 10), b = random_tensor({2, 2}, DType::F16, 11);
  save_safetensors((dir.path / "model-00001-of-00002.safetensors").string(), {{"a", a}});
  save_safetensors((dir.path / "model-00002-of-00002.safetensors").string(),
                   {{"b", b}, {"extra", a}});
  const std::string index_path = (dir.path / "model.safetensors.index.json").string();
  write_file(index_path, R"({"metadata": {"total_size": 24}, "weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  WeightStore store = WeightStore::open(dir.path.string());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(same_bytes(store.get("a"), a));
  EXPECT_TRUE(same_bytes(store.get("b"), b));
  EXPECT_EQ(store.file_of("b"), (dir.path / "model-00002-of-00002.safetensors").string());
  EXPECT_EQ(store.files().size(), 2u);

  auto expect_error = [&](const std::string& index, const std::string& expected) {
    write_file(index_path, index);
    try {
      WeightStore::open(dir.path.string());
      ADD_FAILURE() << "accepted: " << index;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"weight_map": {"a": "model-00009-of-00009.safetensors"}})",
               "shard 'model-00009-of-00009.safetensors' (holding tensor 'a') does not exist");
  expect_error(R"({"weight_map": {"c": "model-00001-of-00002.safetensors"}})",
               "tensor 'c' is listed in the weight_map but absent from shard");
  expect_error(R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})",
               "outside the checkpoint directory");
  expect_error(R"({"weight_map": {"a": 3}})", "weight_map entry of 'a' is not a string");
  expect_error(R"({"metadata": {}})", "missing the 'weight_map'");
  expect_error("{", "not valid JSON");
}

TEST(Fp8, DequantisesRaggedBlocksAsHandComputed) {
  const int64_t rows = 200, cols = 300;
  Tensor w = random_tensor({rows, cols}, DType::F8_E4M3, 12);
  // Scales with full mantissas so that the product needs rounding to bf16.
  std::vector<float> scales = {0.0137f, 1.713f, -0.37f, 3.1e-3f, 0.9f, 7.77f};
  Tensor s = Tensor::from_vector(scales, {2, 3});
  Tensor out = dequantize_fp8_blocks(w, s, 128, 128, DType::BF16, "w");
  Tensor out32 = dequantize_fp8_blocks(w, s.to(DType::BF16), 128, 128, DType::F32, "w");
  ASSERT_EQ(out.shape(), (Shape{rows, cols}));
  const uint8_t* wp = w.data<uint8_t>();
  const uint16_t* op = out.data<uint16_t>();
  const float* op32 = out32.data<float>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      float value = fp8_e4m3_to_f32(wp[i * cols + j]);
      float scale = scales[size_t((i / 128) * 3 + j / 128)];
      ASSERT_EQ(op[i * cols + j], f32_to_bf16(value * scale)) << i << "," << j;
      float scale_bf16 = bf16_to_f32(f32_to_bf16(scale));
      ASSERT_EQ(op32[i * cols + j], value * scale_bf16) << i << "," << j;
    }
  }
  // Other block sizes; the scale grid must match.
  Tensor s2 = Tensor::from_vector(std::vector<float>(4 * 3, 0.5f), {4, 3});
  Tensor half = dequantize_fp8_blocks(w, s2, 64, 100, DType::F32, "w");
  EXPECT_EQ(half.data<float>()[299], fp8_e4m3_to_f32(wp[299]) * 0.5f);
  EXPECT_THROW(dequantize_fp8_blocks(w, s2, 128, 128, DType::BF16, "w"), Error);
  EXPECT_THROW(dequantize_fp8_blocks(w.reshape({-1}), s, 128, 128, DType::BF16, "w"), Error);
}

TEST(Fp8, WeightStoreDequantisesWithScaleSibling) {
  TempDir dir;
  Tensor w = random_tensor({130, 20}, DType::F8_E4M3, 13);
  Tensor s = Tensor::from_vector({0.25f, 3.0f}, {2, 1});
  save_safetensors((dir.path / "model.safetensors").string(),
                   {{"l.weight", w},
                    {"l.weight_scale_inv", s},
                    {"bare.weight", w},
                    {"b.weight", random_tensor({3}, DType::BF16, 14)}});
  WeightStore store = WeightStore::open(dir.path.string());
  Tensor d = store.get_weight("l.weight", {130, 20});
  EXPECT_EQ(d.dtype(), DType::BF16);
  EXPECT_EQ(d.data<uint16_t>()[0], f32_to_bf16(fp8_e4m3_to_f32(w.data<uint8_t>()[0]) * 0.25f));
  EXPECT_EQ(d.data<uint16_t>()[129 * 20 + 19],
            f32_to_bf16(fp8_e4m3_to_f32(w.data<uint8_t>()[129 * 20 + 19]) * 3.0f));
  EXPECT_EQ(store.get_weight("b.weight", {3}).dtype(), DType::BF16);  // as stored
  EXPECT_THROW(store.get_weight("bare.weight", {130, 20}), Error);    // no scale
  store.set_fp8_block_size(64, 64);                                   // scale grid now wrong
  EXPECT_THROW(store.get_weight("l.weight", {130, 20}), Error);
}

TEST(Safetensors, FailedSaveLeavesThePreviousFileIntact) {
  TempDir dir;
  const std::string path = (dir.path / "model.safetensors").string();
  save_safetensors(path, {{"old", Tensor::from_vector({1, 2, 3}, {3})}});
  const std::string before = read_file(path);

  // A real write failure: the file-size limit makes write() fail with EFBIG part-way through.
  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    save_safetensors(path, {{"new", random_tensor({64, 64}, DType::F32, 15)}});
  } catch (const Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("[safetensors] " + path + ": write failed"), std::string::npos) << message;
  EXPECT_EQ(read_file(path), before);
  size_t entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.path)) entries += entry.exists();
  EXPECT_EQ(entries, 1u);  // no temporary file left behind

  EXPECT_THROW(save_safetensors((dir.path / "no_such_dir/model.safetensors").string(), {}), Error);
  EXPECT_THROW(save_safetensors(path, {{"a", Tensor::zeros({1})}, {"a", Tensor::zeros({1})}}),
               Error);
  EXPECT_EQ(read_file(path), before);
}
