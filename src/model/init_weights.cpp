#include "model/init_weights.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"

namespace dseek {

namespace fs = std::filesystem;

namespace {

// Values are produced in fixed chunks, each from its own stream, so they do not depend on the
// number of threads or on how the writer buffers.
constexpr int64_t kChunk = int64_t(1) << 16;

void add(std::vector<WeightSpec>& out, std::string name, Shape shape,
         WeightSpec::Init init = WeightSpec::Init::Normal) {
  out.push_back({std::move(name), std::move(shape), init});
}

void add_mlp(std::vector<WeightSpec>& out, const std::string& prefix, int64_t hidden, int64_t width,
             bool bias) {
  add(out, prefix + ".gate_proj.weight", {width, hidden});
  add(out, prefix + ".up_proj.weight", {width, hidden});
  add(out, prefix + ".down_proj.weight", {hidden, width});
  if (bias) {
    add(out, prefix + ".gate_proj.bias", {width});
    add(out, prefix + ".up_proj.bias", {width});
    add(out, prefix + ".down_proj.bias", {hidden});
  }
}

void add_attention(std::vector<WeightSpec>& out, const ModelConfig& c, const std::string& p) {
  const int64_t d = c.hidden_size, h = c.num_attention_heads;
  const bool bias = c.attention_bias;
  if (c.is_mla()) {
    // transformers' DeepseekV2/V3Attention: attention_bias applies to q_a_proj,
    // kv_a_proj_with_mqa and o_proj; q_proj, q_b_proj and kv_b_proj have none.
    if (c.q_lora_rank > 0) {
      add(out, p + ".q_a_proj.weight", {c.q_lora_rank, d});
      if (bias) add(out, p + ".q_a_proj.bias", {c.q_lora_rank});
      add(out, p + ".q_a_layernorm.weight", {c.q_lora_rank}, WeightSpec::Init::Ones);
      add(out, p + ".q_b_proj.weight", {h * c.qk_head_dim(), c.q_lora_rank});
    } else {
      add(out, p + ".q_proj.weight", {h * c.qk_head_dim(), d});
    }
    add(out, p + ".kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, d});
    if (bias) add(out, p + ".kv_a_proj_with_mqa.bias", {c.kv_lora_rank + c.qk_rope_head_dim});
    add(out, p + ".kv_a_layernorm.weight", {c.kv_lora_rank}, WeightSpec::Init::Ones);
    add(out, p + ".kv_b_proj.weight", {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    add(out, p + ".o_proj.weight", {d, h * c.v_head_dim});
    if (bias) add(out, p + ".o_proj.bias", {d});
    return;
  }
  const int64_t head_dim = c.head_dim > 0 ? c.head_dim : d / h;
  const int64_t kv_heads = c.num_key_value_heads > 0 ? c.num_key_value_heads : h;
  add(out, p + ".q_proj.weight", {h * head_dim, d});
  add(out, p + ".k_proj.weight", {kv_heads * head_dim, d});
  add(out, p + ".v_proj.weight", {kv_heads * head_dim, d});
  add(out, p + ".o_proj.weight", {d, h * head_dim});
  if (bias) {
    add(out, p + ".q_proj.bias", {h * head_dim});
    add(out, p + ".k_proj.bias", {kv_heads * head_dim});
    add(out, p + ".v_proj.bias", {kv_heads * head_dim});
    add(out, p + ".o_proj.bias", {d});
  }
}

void add_decoder_layer(std::vector<WeightSpec>& out, const ModelConfig& c, int64_t layer) {
  const std::string p = fmt::format("model.layers.{}", layer);
  const int64_t d = c.hidden_size;
  add(out, p + ".input_layernorm.weight", {d}, WeightSpec::Init::Ones);
  add_attention(out, c, p + ".self_attn");
  add(out, p + ".post_attention_layernorm.weight", {d}, WeightSpec::Init::Ones);
  if (!c.is_moe_layer(layer)) {
    add_mlp(out, p + ".mlp", d, c.intermediate_size, c.mlp_bias);
    return;
  }
  add(out, p + ".mlp.gate.weight", {c.n_routed_experts, d});
  if (c.topk_method == "noaux_tc")
    add(out, p + ".mlp.gate.e_score_correction_bias", {c.n_routed_experts});
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    add_mlp(out, fmt::format("{}.mlp.experts.{}", p, e), d, c.moe_intermediate_size, false);
  }
  if (c.n_shared_experts > 0) {
    add_mlp(out, p + ".mlp.shared_experts", d, c.moe_intermediate_size * c.n_shared_experts, false);
  }
}

void fill_chunk(const WeightSpec& spec, const InitOptions& options, int64_t chunk, float* out,
                int64_t n) {
  if (spec.init == WeightSpec::Init::Ones) {
    std::fill(out, out + n, 1.0f);
    return;
  }
  uint64_t mix = options.seed ^ fnv1a64(spec.name);
  Rng rng(splitmix64(mix) + uint64_t(chunk));
  for (int64_t i = 0; i < n; ++i) out[i] = float(rng.normal() * options.std);
}

// Streams one .safetensors file: the header is known from the specs, then each tensor's bytes are
// generated and appended in order, a slab of chunks at a time.
void write_shard(const std::string& path, const std::vector<const WeightSpec*>& specs,
                 const InitOptions& options) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}, {"generator", "dseek init"}};
  const size_t elem = dtype_size(options.dtype);
  size_t offset = 0;
  for (const WeightSpec* spec : specs) {
    const size_t bytes = size_t(shape_numel(spec->shape)) * elem;
    header[spec->name] = {{"dtype", std::string(dtype_to_safetensors(options.dtype))},
                          {"shape", spec->shape},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned

  const std::string tmp = path + ".tmp";
  std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
  DSEEK_CHECK(file.good(), "[init] {}: cannot open for writing", tmp);
  uint64_t header_len = text.size();
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = (unsigned char)(header_len >> (8 * i));
  file.write(reinterpret_cast<const char*>(len_bytes), 8);
  file.write(text.data(), std::streamsize(text.size()));

  constexpr int64_t kSlabChunks = 64;  // 4M values per slab
  int64_t largest = 0;
  for (const WeightSpec* spec : specs) largest = std::max(largest, shape_numel(spec->shape));
  std::vector<float> values(
      size_t(std::min(kSlabChunks, (largest + kChunk - 1) / kChunk) * kChunk));
  std::vector<char> converted(values.size() * elem);
  for (const WeightSpec* spec : specs) {
    const int64_t numel = shape_numel(spec->shape);
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    for (int64_t first = 0; first < chunks; first += kSlabChunks) {
      const int64_t last = std::min(chunks, first + kSlabChunks);
#pragma omp parallel for schedule(static)
      for (int64_t c = first; c < last; ++c) {
        const int64_t begin = c * kChunk, n = std::min(kChunk, numel - begin);
        fill_chunk(*spec, options, c, values.data() + (c - first) * kChunk, n);
      }
      const int64_t n = std::min(numel, last * kChunk) - first * kChunk;
      convert_from_f32(values.data(), converted.data(), options.dtype, size_t(n));
      file.write(converted.data(), std::streamsize(size_t(n) * elem));
    }
  }
  file.flush();
  DSEEK_CHECK(file.good(), "[init] {}: write failed (disk full?)", tmp);
  file.close();
  fs::rename(tmp, path);
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << text;
  DSEEK_CHECK(file.good(), "[init] {}: write failed", path.string());
}

void copy_tokenizer(const std::string& source, const fs::path& out_dir) {
  fs::path src(source);
  if (fs::is_directory(src)) {
    DSEEK_CHECK(fs::exists(src / "tokenizer.json"), "[init] {}: no tokenizer.json in directory",
                source);
    fs::copy_file(src / "tokenizer.json", out_dir / "tokenizer.json",
                  fs::copy_options::overwrite_existing);
    if (fs::exists(src / "tokenizer_config.json")) {
      fs::copy_file(src / "tokenizer_config.json", out_dir / "tokenizer_config.json",
                    fs::copy_options::overwrite_existing);
    }
    return;
  }
  DSEEK_CHECK(fs::is_regular_file(src), "[init] {}: tokenizer file not found", source);
  fs::copy_file(src, out_dir / "tokenizer.json", fs::copy_options::overwrite_existing);
}

}  // namespace

std::vector<WeightSpec> checkpoint_layout(const ModelConfig& c) {
  std::vector<WeightSpec> out;
  const int64_t d = c.hidden_size, v = c.vocab_size;
  add(out, "model.embed_tokens.weight", {v, d});
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) add_decoder_layer(out, c, layer);
  add(out, "model.norm.weight", {d}, WeightSpec::Init::Ones);
  if (!c.tie_word_embeddings) add(out, "lm_head.weight", {v, d});
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    // DeepSeek-V3's MTP modules live after the main layers, each with its own embedding and head
    // (identical to the main ones in the released checkpoint; random here).
    const int64_t layer = c.num_hidden_layers + k;
    const std::string p = fmt::format("model.layers.{}", layer);
    add(out, p + ".embed_tokens.weight", {v, d});
    add(out, p + ".enorm.weight", {d}, WeightSpec::Init::Ones);
    add(out, p + ".hnorm.weight", {d}, WeightSpec::Init::Ones);
    add(out, p + ".eh_proj.weight", {d, 2 * d});
    add_decoder_layer(out, c, layer);
    add(out, p + ".shared_head.norm.weight", {d}, WeightSpec::Init::Ones);
    add(out, p + ".shared_head.head.weight", {v, d});
  }
  return out;
}

Tensor init_tensor(const WeightSpec& spec, const InitOptions& options) {
  Tensor t = Tensor::empty(spec.shape, DType::F32);
  const int64_t numel = t.numel();
  float* data = t.data<float>();
  for (int64_t c = 0; c * kChunk < numel; ++c) {
    fill_chunk(spec, options, c, data + c * kChunk, std::min(kChunk, numel - c * kChunk));
  }
  return options.dtype == DType::F32 ? t : t.to(options.dtype);
}

void write_random_checkpoint(const ModelConfig& config_in, const std::string& out_dir,
                             const InitOptions& options) {
  DSEEK_CHECK(options.dtype == DType::F32 || options.dtype == DType::BF16,
              "[init] dtype: only f32 and bf16 checkpoints are written, got {}",
              dtype_name(options.dtype));
  DSEEK_CHECK(options.std > 0.0, "[init] std: must be > 0, got {}", options.std);
  DSEEK_CHECK(options.shard_bytes > 0, "[init] shard_bytes: must be > 0");
  ModelConfig config = config_in;
  config.torch_dtype = options.dtype == DType::BF16 ? "bfloat16" : "float32";
  config.quantization = {};  // the weights written are not FP8
  validate_model_config(config, "init");

  if (!options.tokenizer.empty()) {  // before the (possibly long) write
    DSEEK_CHECK(fs::exists(options.tokenizer), "[init] {}: tokenizer not found", options.tokenizer);
  }
  const fs::path dir(out_dir);
  fs::create_directories(dir);
  const std::vector<WeightSpec> layout = checkpoint_layout(config);

  // Split into shards of at most shard_bytes (a tensor larger than that gets a shard of its own).
  const size_t elem = dtype_size(options.dtype);
  std::vector<std::vector<const WeightSpec*>> shards(1);
  size_t shard_size = 0, total = 0;
  for (const WeightSpec& spec : layout) {
    const size_t bytes = size_t(shape_numel(spec.shape)) * elem;
    if (!shards.back().empty() && shard_size + bytes > size_t(options.shard_bytes)) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back(&spec);
    shard_size += bytes;
    total += bytes;
  }

  // Stale weights from an earlier run in the same directory would be picked up by the loader.
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".safetensors") || name.ends_with(".safetensors.tmp") ||
        name == "model.safetensors.index.json") {
      fs::remove(entry.path());
    }
  }
  if (shards.size() == 1) {
    write_shard((dir / "model.safetensors").string(), shards[0], options);
  } else {
    nlohmann::ordered_json weight_map;
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string file =
          fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
      write_shard((dir / file).string(), shards[i], options);
      for (const WeightSpec* spec : shards[i]) weight_map[spec->name] = file;
    }
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                    {"weight_map", weight_map}};
    write_text(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  if (!options.tokenizer.empty()) copy_tokenizer(options.tokenizer, dir);
  // config.json last: a directory with a config is a complete checkpoint.
  write_text(dir / "config.json", model_config_to_json(config));
}

}  // namespace dseek
