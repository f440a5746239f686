// Shared by the issue-10 benchmarks (bench_train_cuda, bench_decode_cuda): the model shape they
// run, random fill of weights fast enough for billions of parameters, timing, and the JSON result
// file that scripts/device/bench_issue10.sh merges with bench/issue10_torch.py's.
//
// The shape is DeepSeek-V2-Lite's (vocab 102400, hidden 2048, 16 heads, MLA kv_lora 512 without
// q_lora, qk_nope 128, qk_rope 64, v_head 128, 64 routed experts of width 1408 top-6 + 2 shared,
// layer 0 dense of width 10944, softmax greedy routing) at any depth; 27 layers is the real model
// (15.7B parameters). Plain RoPE (the real checkpoint uses YaRN ×40: the same work) and
// max_position_embeddings 8192, enough for the 4K prefill. `tiny` is the same structure at toy
// sizes, for running the benches' logic on a CPU.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"

namespace dseek::bench {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The config.json text of the benchmark shape (hub style, as transformers' DeepseekV2Config reads
// it); parse_model_config turns it into the ModelConfig dseek runs, and `bench_train_cuda
// --write-config` writes that config back out for bench/issue10_torch.py: one shape, both sides.
inline std::string shape_config_json(const std::string& shape, int64_t layers) {
  nlohmann::json j = {
      {"architectures", {"DeepseekV2ForCausalLM"}},
      {"model_type", "deepseek_v2"},
      {"num_hidden_layers", layers},
      {"q_lora_rank", nullptr},
      {"n_group", 1},
      {"topk_group", 1},
      {"topk_method", "greedy"},
      {"scoring_func", "softmax"},
      {"norm_topk_prob", false},
      {"routed_scaling_factor", 1.0},
      {"moe_layer_freq", 1},
      {"first_k_dense_replace", 1},
      {"aux_loss_alpha", 0.001},
      {"seq_aux", true},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 8192},
      {"initializer_range", 0.02},
      {"rms_norm_eps", 1e-6},
      {"use_cache", true},
      {"tie_word_embeddings", false},
      {"rope_theta", 10000.0},
      {"rope_scaling", nullptr},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"torch_dtype", "bfloat16"},
  };
  if (shape == "v2-lite") {
    j.update({{"vocab_size", 102400},
              {"hidden_size", 2048},
              {"intermediate_size", 10944},
              {"moe_intermediate_size", 1408},
              {"num_attention_heads", 16},
              {"num_key_value_heads", 16},
              {"kv_lora_rank", 512},
              {"qk_nope_head_dim", 128},
              {"qk_rope_head_dim", 64},
              {"v_head_dim", 128},
              {"n_routed_experts", 64},
              {"n_shared_experts", 2},
              {"num_experts_per_tok", 6},
              {"bos_token_id", 100000},
              {"eos_token_id", 100001}});
  } else if (shape == "v3-width") {
    // DeepSeek-V3's matrices (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, expert width
    // 2048, dense width 18432, vocab 129280) with 16 routed experts top-4 and softmax routing
    // instead of V3's 256 top-8 sigmoid: a few layers of it fit one GPU's memory with f32 masters,
    // gradients and bf16 moments, and each expert still gets 1024 of 4096 tokens' rows. For the
    // FP8 step time where the GEMMs are as wide as the paper's (docs/FP8.md).
    j.update({{"vocab_size", 129280},
              {"hidden_size", 7168},
              {"intermediate_size", 18432},
              {"moe_intermediate_size", 2048},
              {"num_attention_heads", 128},
              {"num_key_value_heads", 128},
              {"q_lora_rank", 1536},
              {"kv_lora_rank", 512},
              {"qk_nope_head_dim", 128},
              {"qk_rope_head_dim", 64},
              {"v_head_dim", 128},
              {"n_routed_experts", 16},
              {"n_shared_experts", 1},
              {"num_experts_per_tok", 4},
              {"bos_token_id", 0},
              {"eos_token_id", 1}});
  } else if (shape == "tiny") {
    j.update({{"vocab_size", 512},
              {"hidden_size", 64},
              {"intermediate_size", 96},
              {"moe_intermediate_size", 32},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 4},
              {"kv_lora_rank", 32},
              {"qk_nope_head_dim", 16},
              {"qk_rope_head_dim", 8},
              {"v_head_dim", 16},
              {"n_routed_experts", 8},
              {"n_shared_experts", 2},
              {"num_experts_per_tok", 2},
              {"bos_token_id", 0},
              {"eos_token_id", 1}});
  } else {
    fail("[bench] shape '{}': expected v2-lite, v3-width or tiny", shape);
  }
  return j.dump(2);
}

inline ModelConfig shape_config(const std::string& shape, int64_t layers) {
  return parse_model_config(shape_config_json(shape, layers), shape + " shape");
}

// Random weights, fast enough for billions of parameters: uniform values in [-a, a] with
// a = std·√3 (standard deviation `std`), a few per 64-bit draw, every tensor cut into chunks of
// 2^20 values and all chunks of all tensors filled by all threads, each chunk from its own
// xoshiro stream (tensor seed, chunk index). ~1 ns per value against ~15 ns for init_weights'
// single-threaded Box–Muller normals: seconds instead of minutes at 2–16B parameters. A
// benchmark's speed does not depend on the distribution (routing sees random scores either way).
struct FillTarget {
  void* data = nullptr;  // contiguous, f32 or bf16
  DType dtype = DType::F32;
  int64_t count = 0;
  uint64_t seed = 0;  // per tensor (e.g. run seed ^ fnv1a64(name))
  bool ones = false;  // norm weights: 1 instead of random
};

inline constexpr int64_t kFillChunk = int64_t(1) << 20;

inline void fill_chunk(const FillTarget& t, int64_t chunk, float a) {
  const int64_t begin = chunk * kFillChunk, end = std::min(t.count, begin + kFillChunk);
  Rng rng(t.seed * 0x9e3779b97f4a7c15ull + uint64_t(chunk));
  if (t.dtype == DType::F32) {
    float* out = static_cast<float*>(t.data);
    for (int64_t i = begin; i < end; i += 2) {
      const uint64_t r = rng.next_u64();
      // Two 32-bit halves → two values in [-a, a) (24 bits of each are used).
      out[i] = t.ones ? 1.0f : a * (float(uint32_t(r) >> 8) * 0x1.0p-23f - 1.0f);
      if (i + 1 < end)
        out[i + 1] = t.ones ? 1.0f : a * (float(uint32_t(r >> 32) >> 8) * 0x1.0p-23f - 1.0f);
    }
  } else {
    uint16_t* out = static_cast<uint16_t*>(t.data);
    for (int64_t i = begin; i < end; i += 4) {
      const uint64_t r = rng.next_u64();
      // Four 16-bit quarters → four values in [-a, a) (bf16 keeps 8 bits of mantissa anyway).
      for (int64_t k = 0; k < 4 && i + k < end; ++k) {
        const float u = float(uint32_t(r >> (16 * k)) & 0xffffu) * 0x1.0p-15f - 1.0f;
        out[i + k] = f32_to_bf16(t.ones ? 1.0f : a * u);
      }
    }
  }
}

inline void fill_random(const std::vector<FillTarget>& targets, double std) {
  for (const FillTarget& t : targets)
    DSEEK_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16,
                "[bench] fill: f32 or bf16, got {}", dtype_name(t.dtype));
  std::vector<std::pair<size_t, int64_t>> chunks;  // (target, chunk)
  for (size_t i = 0; i < targets.size(); ++i)
    for (int64_t c = 0; c * kFillChunk < targets[i].count; ++c) chunks.emplace_back(i, c);
  const float a = float(std * std::sqrt(3.0));
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t j = 0; j < chunks.size(); ++j)
    fill_chunk(targets[chunks[j].first], chunks[j].second, a);
}

// Uniform random token ids in [0, vocab).
inline std::vector<int32_t> random_ids(size_t n, int64_t vocab, Rng& rng) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = int32_t(rng.next_u64() % uint64_t(vocab));
  return ids;
}

// The index of the largest of n floats (first on ties): greedy decoding.
inline int32_t argmax(const std::vector<float>& row, size_t begin, size_t n) {
  size_t best = begin;
  for (size_t i = begin + 1; i < begin + n; ++i)
    if (row[i] > row[best]) best = i;
  return int32_t(best - begin);
}

// Results: one JSON object per benchmark row, the file rewritten as each row changes, so a crash
// leaves the rows measured before it. begin() records a row as failed ("error": the process
// died or hung during it) before its work starts; end() replaces it with the outcome.
class Results {
 public:
  explicit Results(std::string path) : path_(std::move(path)) {}
  void add(nlohmann::json row) {
    rows_.push_back(std::move(row));
    write();
  }
  size_t begin(nlohmann::json row) {
    row["error"] = "crashed or timed out during this part (see the log)";
    add(std::move(row));
    return rows_.size() - 1;
  }
  void end(size_t index, nlohmann::json row) {
    rows_.at(index) = std::move(row);
    write();
  }
  void write() const {
    if (path_.empty()) return;
    std::ofstream out(path_);
    out << nlohmann::json(rows_).dump(2) << "\n";
    DSEEK_CHECK(out.good(), "[bench] {}: cannot write", path_);
  }

 private:
  std::string path_;
  std::vector<nlohmann::json> rows_;
};

}  // namespace dseek::bench
