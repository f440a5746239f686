// WeightStore: the tensors of a checkpoint directory (single file or shards) by name, and FP8
// block dequantisation for DeepSeek-V3's float8_e4m3fn checkpoints.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "model/safetensors.h"

namespace dseek {

namespace fs = std::filesystem;

namespace {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[weights] {}: cannot open", path);
  std::ostringstream text;
  text << in.rdbuf();
  DSEEK_CHECK(!in.bad(), "[weights] {}: read failed", path);
  return text.str();
}

// Shard names come from the index file: keep them inside the checkpoint directory.
void check_shard_name(const std::string& shard, const std::string& index_path,
                      const std::string& name) {
  fs::path p(shard);
  bool escapes = shard.empty() || p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  DSEEK_CHECK(!escapes,
              "[weights] {}: tensor '{}' maps to shard '{}' outside the checkpoint directory",
              index_path, name, shard);
}

}  // namespace

WeightStore WeightStore::open(const std::string& dir) {
  WeightStore store;
  std::error_code ec;
  if (fs::is_regular_file(dir, ec)) {
    auto file = SafetensorsFile::open(dir);
    store.dir_ = fs::path(dir).parent_path().string();
    for (const auto& [name, info] : file->tensors()) store.by_name_[name] = file;
    return store;
  }
  DSEEK_CHECK(fs::is_directory(dir, ec), "[weights] {}: no such checkpoint directory", dir);
  store.dir_ = dir;
  fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  fs::path single_path = fs::path(dir) / "model.safetensors";
  if (fs::exists(index_path, ec)) {
    std::string index_name = index_path.string();
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(read_text_file(index_name));
    } catch (const nlohmann::json::exception& e) {
      fail("[weights] {}: not valid JSON: {}", index_name, e.what());
    }
    DSEEK_CHECK(
        index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
        "[weights] {}: missing the 'weight_map' object", index_name);
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      const std::string& name = it.key();
      DSEEK_CHECK(it.value().is_string(), "[weights] {}: weight_map entry of '{}' is not a string",
                  index_name, name);
      std::string shard = it.value().get<std::string>();
      check_shard_name(shard, index_name, name);
      auto found = shards.find(shard);
      if (found == shards.end()) {
        fs::path shard_path = fs::path(dir) / shard;
        DSEEK_CHECK(fs::is_regular_file(shard_path, ec),
                    "[weights] {}: shard '{}' (holding tensor '{}') does not exist", index_name,
                    shard, name);
        found = shards.emplace(shard, SafetensorsFile::open(shard_path.string())).first;
      }
      DSEEK_CHECK(
          found->second->has(name),
          "[weights] {}: tensor '{}' is listed in the weight_map but absent from shard '{}'",
          index_name, name, shard);
      store.by_name_[name] = found->second;
    }
    return store;
  }
  DSEEK_CHECK(fs::exists(single_path, ec),
              "[weights] {}: no model.safetensors or model.safetensors.index.json", dir);
  auto file = SafetensorsFile::open(single_path.string());
  for (const auto& [name, info] : file->tensors()) store.by_name_[name] = file;
  return store;
}

bool WeightStore::has(const std::string& name) const {
  return by_name_.count(name) != 0;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [name, file] : by_name_) out.push_back(name);
  return out;
}

std::vector<std::shared_ptr<SafetensorsFile>> WeightStore::files() const {
  std::vector<std::shared_ptr<SafetensorsFile>> out;
  std::set<const SafetensorsFile*> seen;
  for (const auto& [name, file] : by_name_) {
    if (seen.insert(file.get()).second) out.push_back(file);
  }
  return out;
}

Tensor WeightStore::get(const std::string& name) const {
  auto it = by_name_.find(name);
  DSEEK_CHECK(it != by_name_.end(), "[weights] {}: missing tensor '{}'", dir_, name);
  return it->second->get(name);
}

Tensor WeightStore::get(const std::string& name, const Shape& expected_shape) const {
  Tensor t = get(name);
  DSEEK_CHECK(t.shape() == expected_shape, "[weights] {}: tensor '{}' has shape {}, expected {}",
              file_of(name), name, shape_str(t.shape()), shape_str(expected_shape));
  return t;
}

Tensor WeightStore::get_weight(const std::string& name, const Shape& expected_shape) const {
  Tensor t = get(name, expected_shape);
  switch (t.dtype()) {
    case DType::F32:
    case DType::BF16:
    case DType::F16: return t;
    case DType::F8_E4M3: break;
    default:
      fail("[weights] {}: tensor '{}' is {}, not a floating-point weight", file_of(name), name,
           dtype_name(t.dtype()));
  }
  const std::string suffix = ".weight";
  bool has_suffix = name.size() >= suffix.size() &&
                    name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  std::string scale_name = has_suffix ? name + "_scale_inv" : name + ".weight_scale_inv";
  DSEEK_CHECK(has(scale_name), "[weights] {}: FP8 tensor '{}' has no scale tensor '{}'",
              file_of(name), name, scale_name);
  return dequantize_fp8_blocks(t, get(scale_name), block_rows_, block_cols_, DType::BF16, name);
}

WeightStore::Fp8Weight WeightStore::get_fp8_weight(const std::string& name,
                                                   const Shape& expected_shape) const {
  Tensor t = get(name, expected_shape);
  DSEEK_CHECK(t.dtype() == DType::F8_E4M3 && t.dim() == 2,
              "[weights] {}: tensor '{}' is {} {}, expected a 2-D F8_E4M3 weight", file_of(name),
              name, dtype_name(t.dtype()), shape_str(t.shape()));
  DSEEK_CHECK(block_rows_ == 128 && block_cols_ == 128,
              "[weights] {}: FP8 tensor '{}': the FP8 GEMM needs 128x128 scale blocks, the "
              "checkpoint has {}x{}",
              file_of(name), name, block_rows_, block_cols_);
  const std::string suffix = ".weight";
  const bool has_suffix = name.size() >= suffix.size() &&
                          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  const std::string scale_name = has_suffix ? name + "_scale_inv" : name + ".weight_scale_inv";
  DSEEK_CHECK(has(scale_name), "[weights] {}: FP8 tensor '{}' has no scale tensor '{}'",
              file_of(name), name, scale_name);
  Tensor s = get(scale_name);
  const Shape want = {(t.size(0) + 127) / 128, (t.size(1) + 127) / 128};
  DSEEK_CHECK(s.shape() == want && (s.dtype() == DType::F32 || s.dtype() == DType::BF16),
              "[weights] {}: scale tensor '{}' is {} {}, expected F32 {} for the {} FP8 weight '{}'",
              file_of(scale_name), scale_name, dtype_name(s.dtype()), shape_str(s.shape()),
              shape_str(want), shape_str(t.shape()), name);
  return {t, s.dtype() == DType::F32 ? s : s.to(DType::F32)};
}

std::string WeightStore::file_of(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? dir_ : it->second->path();
}

void WeightStore::set_fp8_block_size(int64_t block_rows, int64_t block_cols) {
  DSEEK_CHECK(block_rows > 0 && block_cols > 0,
              "[weights] {}: FP8 block size [{}, {}] must be positive", dir_, block_rows,
              block_cols);
  block_rows_ = block_rows;
  block_cols_ = block_cols;
}

Tensor dequantize_fp8_blocks(const Tensor& weight, const Tensor& scale_inv, int64_t block_rows,
                             int64_t block_cols, DType out_dtype, const std::string& name) {
  DSEEK_CHECK(weight.dtype() == DType::F8_E4M3 && weight.dim() == 2,
              "[fp8] '{}': expected a 2-D F8_E4M3 weight, got {} {}", name,
              dtype_name(weight.dtype()), shape_str(weight.shape()));
  DSEEK_CHECK(scale_inv.dtype() == DType::F32 || scale_inv.dtype() == DType::BF16,
              "[fp8] '{}': scale_inv must be F32 or BF16, got {}", name,
              dtype_name(scale_inv.dtype()));
  DSEEK_CHECK(out_dtype == DType::BF16 || out_dtype == DType::F32,
              "[fp8] '{}': output dtype must be BF16 or F32, got {}", name, dtype_name(out_dtype));
  DSEEK_CHECK(block_rows > 0 && block_cols > 0, "[fp8] '{}': block size [{}, {}] must be positive",
              name, block_rows, block_cols);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const Shape scale_shape = {(rows + block_rows - 1) / block_rows,
                             (cols + block_cols - 1) / block_cols};
  DSEEK_CHECK(scale_inv.shape() == scale_shape,
              "[fp8] '{}': scale_inv has shape {}, expected {} for a {} weight in {}x{} blocks",
              name, shape_str(scale_inv.shape()), shape_str(scale_shape), shape_str(weight.shape()),
              block_rows, block_cols);
  Tensor w = weight.contiguous();
  std::vector<float> scales = scale_inv.to_vector();
  float table[256];
  for (int v = 0; v < 256; ++v) table[v] = fp8_e4m3_to_f32(uint8_t(v));
  Tensor out = Tensor::empty(weight.shape(), out_dtype);
  const uint8_t* src = w.data<uint8_t>();
  const int64_t scale_cols = scale_shape[1];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* scale_row = scales.data() + (i / block_rows) * scale_cols;
    const uint8_t* in = src + i * cols;
    if (out_dtype == DType::BF16) {
      uint16_t* dst = out.data<uint16_t>() + i * cols;
      for (int64_t j = 0; j < cols; ++j)
        dst[j] = f32_to_bf16(table[in[j]] * scale_row[j / block_cols]);
    } else {
      float* dst = out.data<float>() + i * cols;
      for (int64_t j = 0; j < cols; ++j) dst[j] = table[in[j]] * scale_row[j / block_cols];
    }
  }
  return out;
}

}  // namespace dseek
