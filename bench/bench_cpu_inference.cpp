// CPU inference benchmark on a random-weight checkpoint shaped like DeepSeek-V2-Lite with fewer
// layers (bf16; vocab 102400, hidden 2048, 16 heads, MLA with kv_lora 512 and no q_lora, 64
// experts × 1408 with top-6 + 2 shared, first layer dense 10944). Measures, in one run:
//   - memory bandwidth of this machine (STREAM-style read and copy, all threads),
//   - prefill tokens/s (one forward of T tokens into an empty cache),
//   - decode tokens/s at batch 1 with the latent KV cache (median over runs),
//   - the decode roofline = read bandwidth / bytes of weights a decoded token touches,
//   - a naive baseline: decode by full recomputation of the sequence, without the cache.
// Usage: bench_cpu_inference [--dir DIR] [--layers N] [--prefill 128,512] [--decode N]
//                            [--context N] [--runs N]
// The checkpoint is written once into DIR (default ./bench_v2lite_<N>l, i.e. the build directory
// when run from there) and reused.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench_flags.h"
#include "cli/validators.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/init_weights.h"
#include "model/kv_cache.h"
#include "model/model.h"

using namespace dseek;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

ModelConfig v2_lite_shape(int64_t layers) {
  ModelConfig c;
  c.model_type = "deepseek_v2";
  c.vocab_size = 102400;
  c.hidden_size = 2048;
  c.intermediate_size = 10944;
  c.moe_intermediate_size = 1408;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 16;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.n_routed_experts = 64;
  c.n_shared_experts = 2;
  c.num_experts_per_tok = 6;
  c.first_k_dense_replace = 1;
  c.moe_layer_freq = 1;
  c.scoring_func = "softmax";
  c.topk_method = "greedy";
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6;
  c.bos_token_id = 100000;
  c.eos_token_ids = {100001};
  return c;
}

// Bytes of weights one decoded token reads: everything except the embedding table (one row) and
// the routed experts (only top-k of E per MoE layer).
double active_bytes_per_token(const ModelConfig& c, size_t elem) {
  double bytes = 0.0;
  for (const WeightSpec& spec : checkpoint_layout(c)) {
    double b = double(shape_numel(spec.shape)) * double(elem);
    if (spec.name == "model.embed_tokens.weight") b = double(c.hidden_size) * double(elem);
    if (spec.name.find(".mlp.experts.") != std::string::npos) {
      b *= double(c.num_experts_per_tok) / double(c.n_routed_experts);
    }
    bytes += b;
  }
  return bytes;
}

struct Bandwidth {
  double read_gbs = 0.0, copy_gbs = 0.0;
};

// STREAM-style: 1 GiB arrays (far beyond any cache), best of 5, all OpenMP threads.
Bandwidth measure_bandwidth() {
  const size_t n = (size_t(1) << 30) / sizeof(float);
  std::vector<float> a(n), b(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) a[i] = float(i % 1024) * 0.5f;  // first touch by the same threads
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) b[i] = 0.0f;
  Bandwidth best;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < 5; ++rep) {
    auto t = Clock::now();
    // 16 independent partial sums per thread: one serial float chain (no -ffast-math, so no
    // reassociation) would be limited by add latency, not by memory.
    float sum = 0.0f;
#pragma omp parallel reduction(+ : sum)
    {
      float part[16] = {};
#pragma omp for schedule(static)
      for (size_t i = 0; i < n / 16; ++i) {
        for (int j = 0; j < 16; ++j) part[j] += a[i * 16 + j];
      }
      for (float v : part) sum += v;
    }
    const double read_s = since(t);
    sink = sink + sum;
    t = Clock::now();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) b[i] = a[i];
    const double copy_s = since(t);
    best.read_gbs = std::max(best.read_gbs, double(n * sizeof(float)) / read_s / 1e9);
    // STREAM counts copy as one read + one write.
    best.copy_gbs = std::max(best.copy_gbs, 2.0 * double(n * sizeof(float)) / copy_s / 1e9);
  }
  (void)sink;
  return best;
}

std::vector<int32_t> random_ids(size_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = int32_t(rng.next_u64() % uint64_t(vocab));
  return ids;
}

int32_t argmax_last(const Tensor& logits) {
  const Tensor row = logits.select(0, logits.size(0) - 1).contiguous();
  const float* p = row.data<float>();
  return int32_t(std::max_element(p, p + row.numel()) - p);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t layers = 4, decode_tokens = 32, context = 64, runs = 3;
  std::vector<int64_t> prefill = {128, 512};
  std::string dir;
  CLI::App app{"bench_cpu_inference: CPU prefill and decode of a V2-Lite-shaped checkpoint"};
  app.add_option("--dir", dir, "the checkpoint folder (written once when missing)");
  app.add_option("--layers", layers)->check(dseek::cli::positive);
  app.add_option("--prefill", prefill, "prefill lengths, e.g. 128,512")
      ->delimiter(',')
      ->check(dseek::cli::positive);
  app.add_option("--decode", decode_tokens, "tokens to decode")->check(dseek::cli::positive);
  app.add_option("--context", context, "prompt tokens before decoding")
      ->check(dseek::cli::positive);
  app.add_option("--runs", runs)->check(dseek::cli::positive);
  parse_or_exit(app, argc, argv);
  if (dir.empty()) dir = "bench_v2lite_" + std::to_string(layers) + "l";
  try {
    const ModelConfig config = v2_lite_shape(layers);
    if (!fs::exists(fs::path(dir) / "config.json")) {
      std::fprintf(stderr,
                   "writing the random V2-Lite-shaped checkpoint (%lld layers, bf16) to %s ...\n",
                   (long long)layers, dir.c_str());
      const auto t = Clock::now();
      InitOptions options;
      options.dtype = DType::BF16;
      write_random_checkpoint(config, dir, options);
      std::fprintf(stderr, "  written in %.1f s\n", since(t));
    }
    size_t total_params = 0;
    for (const WeightSpec& spec : checkpoint_layout(config))
      total_params += size_t(shape_numel(spec.shape));
    const double active = active_bytes_per_token(config, 2);

    std::fprintf(stderr, "measuring memory bandwidth ...\n");
    const Bandwidth bw = measure_bandwidth();

    auto t = Clock::now();
    std::unique_ptr<Model> model = Model::load(dir);
    const double load_s = since(t);

    // Warm-up: one short prefill and a few decode steps touch every page of the weights.
    {
      auto cache = model->new_cache(64);
      Tensor logits = model->forward(random_ids(16, config.vocab_size, 1), *cache);
      for (int i = 0; i < 4; ++i) logits = model->forward({argmax_last(logits)}, *cache);
    }

    std::vector<std::pair<int64_t, double>> prefill_rates;
    for (int64_t T : prefill) {
      std::vector<double> rates;
      for (int64_t r = 0; r < runs; ++r) {
        auto cache = model->new_cache(T + 1);
        const auto ids = random_ids(size_t(T), config.vocab_size, 100 + uint64_t(r));
        t = Clock::now();
        (void)model->forward(ids, *cache);
        rates.push_back(double(T) / since(t));
      }
      prefill_rates.emplace_back(T, median(rates));
    }

    // Decode at batch 1 after a `context`-token prompt.
    std::vector<double> decode_rates;
    for (int64_t r = 0; r < runs; ++r) {
      auto cache = model->new_cache(context + decode_tokens + 1);
      Tensor logits =
          model->forward(random_ids(size_t(context), config.vocab_size, 7 + uint64_t(r)), *cache);
      t = Clock::now();
      for (int64_t i = 0; i < decode_tokens; ++i)
        logits = model->forward({argmax_last(logits)}, *cache);
      decode_rates.push_back(double(decode_tokens) / since(t));
    }
    const double decode_rate = median(decode_rates);

    // Naive baseline: each new token recomputes the whole sequence (no cache).
    const int64_t naive_tokens = std::min<int64_t>(decode_tokens, 8);
    std::vector<int32_t> seq = random_ids(size_t(context), config.vocab_size, 7);
    t = Clock::now();
    for (int64_t i = 0; i < naive_tokens; ++i) seq.push_back(argmax_last(model->forward(seq)));
    const double naive_rate = double(naive_tokens) / since(t);

    const double roofline = bw.read_gbs * 1e9 / active;
    std::printf("# dseek CPU inference benchmark\n");
    std::printf(
        "model: random DeepSeek-V2-Lite shape, %lld layers (1 dense + %lld MoE), bf16, "
        "%.2f B parameters (%.2f GB), %.1f MB of weights read per decoded token\n",
        (long long)layers, (long long)(layers - 1), double(total_params) / 1e9,
        double(total_params) * 2 / 1e9, active / 1e6);
    std::printf("threads: %d (OpenMP), load %.2f s (mmap)\n\n", omp_get_max_threads(), load_s);
    std::printf("| measurement | value |\n| --- | --- |\n");
    std::printf("| memory bandwidth, read (STREAM-style sum, 1 GiB) | %.1f GB/s |\n", bw.read_gbs);
    std::printf("| memory bandwidth, copy (STREAM copy, read+write) | %.1f GB/s |\n", bw.copy_gbs);
    for (const auto& [T, rate] : prefill_rates) {
      std::printf("| prefill %lld tokens | %.1f tok/s |\n", (long long)T, rate);
    }
    std::printf(
        "| decode, batch 1, latent KV cache (context %lld, %lld tokens, median of %lld) | %.2f "
        "tok/s |\n",
        (long long)context, (long long)decode_tokens, (long long)runs, decode_rate);
    std::printf("| decode roofline = read bandwidth / %.1f MB per token | %.2f tok/s |\n",
                active / 1e6, roofline);
    std::printf("| decode, %% of roofline | %.0f %% |\n", 100.0 * decode_rate / roofline);
    std::printf(
        "| naive baseline: decode by full recomputation, no cache (context %lld+) | %.2f tok/s |\n",
        (long long)context, naive_rate);
    std::printf("| speed-up of cached decode over the naive baseline | %.1fx |\n",
                decode_rate / naive_rate);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_cpu_inference: %s\n", e.what());
    return 1;
  }
  return 0;
}
