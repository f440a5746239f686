// bench_decode_cuda: inference speed of a DeepSeek-V2-Lite-shaped model (27 layers: 15.7B
// parameters) on the GPU (issue 10), with random bf16 weights:
//   decode     batch 1, greedy: a 128-token prompt through the latent KV cache
//              (Transformer::forward(ids, KVCache&)), then 64 tokens one at a time, each the
//              argmax of the previous logits (copied to the host and picked there);
//              tokens/s over the 64 steps (on the GPU: steps replayed as CUDA graphs, the
//              default; the same with the argmax in the graph and the host one token behind
//              (Model::decode_greedy, as dseek generate's greedy path); op by op; and with parts
//              switched off; the same prompt, so the same tokens), against the HBM
//              roofline = copy bandwidth / bytes one token must read (the active weights in bf16 —
//              every matrix a token is multiplied by, head included, routed experts at top-k; not
//              the embedding table, of which it reads one row — plus its share of the latent
//              cache);
//   prefill    4096 tokens into an empty cache, tokens/s (logits for every row, as dseek computes
//              them; bench/issue10_torch.py asks transformers for all rows too);
//   batched    B = 32/64/128 sequences decoding together through the paged cache
//              (Transformer::forward_batch): 128-token prompts, then 32 steps of one token each;
//              tokens/s = B · steps / the forwards' time (the host argmax over B rows is left
//              out: the batched path still picks on the host).
// A part that throws (not on the GPU yet) prints "n/a (<reason>)" and the bench goes on.
//
// The weights: no checkpoint is written to disk. A safetensors image of the whole model (31 GB in
// bf16) is built in an anonymous in-memory file (memfd_create), filled with uniform random values
// of std 0.02 by all host threads (~1 ns a value: seconds, where `dseek init`'s serial normals
// and a disk write take minutes), and read through /proc/self/fd/N by the ordinary loading path
// (WeightStore + the Transformer constructor, which converts and copies every weight to the
// device once). The file disappears with the process. --checkpoint DIR loads a real checkpoint
// (or one `dseek init` wrote) instead.
//
// Usage: bench_decode_cuda [--shape v2-lite|tiny] [--layers 27] [--prompt 128] [--new 64]
//            [--prefill 4096] [--batches 32,64,128] [--batch-steps 32] [--device cuda|cpu]
//            [--dtype bf16|f32] [--checkpoint DIR] [--seed 0] [--json FILE]
#include <sys/mman.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_flags.h"
#include "cli/validators.h"
#include "core/cuda.h"
#ifdef DSEEK_HAS_CUDA
#include "core/cuda/cuda_check.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/grouped_gemv.h"
#endif
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "issue10_common.h"
#include "model/config.h"
#include "model/init_weights.h"
#include "model/kv_cache.h"
#include "model/paged_kv_cache.h"
#include "model/param_count.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "ops/mla_cache.h"
#include "ops/moe.h"
#include "ops/swiglu.h"

using namespace dseek;
using namespace dseek::bench;

namespace {

struct Options {
  std::string shape = "v2-lite", device = "cuda", dtype, checkpoint, json;
  int64_t layers = 27, prompt = 128, new_tokens = 64, prefill = 4096, batch_steps = 32, seed = 0;
  std::vector<int64_t> batches = {32, 64, 128};
};

// The flags of the file header; a bad one exits 2 with CLI11's message (--help lists them).
Options parse(int argc, char** argv) {
  Options o;
  CLI::App app{"bench_decode_cuda: batch-1, prefill and batched decode speed (issue 10)"};
  app.add_option("--shape", o.shape, "v2-lite, v3-width or tiny");
  app.add_option("--layers", o.layers, "decoder layers")->check(dseek::cli::positive);
  app.add_option("--prompt", o.prompt, "batch-1 prompt tokens")->check(dseek::cli::positive);
  app.add_option("--new", o.new_tokens, "batch-1 tokens to decode")->check(dseek::cli::positive);
  app.add_option("--prefill", o.prefill, "prefill tokens (0: no prefill row)")
      ->check(dseek::cli::non_negative);
  app.add_option("--batches", o.batches, "batched-decode batch sizes, e.g. 32,64,128")
      ->delimiter(',')
      ->check(dseek::cli::positive);
  app.add_option("--batch-steps", o.batch_steps, "batched-decode steps")
      ->check(dseek::cli::positive);
  app.add_option("--device", o.device)->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--dtype", o.dtype, "bf16 (the GPU's default) or f32 (the CPU's)")
      ->check(CLI::IsMember({"bf16", "f32"}));
  app.add_option("--checkpoint", o.checkpoint, "a checkpoint folder instead of random weights");
  app.add_option("--seed", o.seed)->check(dseek::cli::non_negative);
  app.add_option("--json", o.json, "also write the figures to this file");
  parse_or_exit(app, argc, argv);
  if (o.dtype.empty()) o.dtype = o.device == "cuda" ? "bf16" : "f32";
  return o;
}

// An anonymous in-memory file holding a safetensors image of `config`'s checkpoint layout in
// bf16 (norms 1, everything else uniform random); closed when the object goes.
class MemoryCheckpoint {
 public:
  MemoryCheckpoint(const ModelConfig& config, uint64_t seed) {
    const std::vector<WeightSpec> layout = checkpoint_layout(config);
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    size_t offset = 0;
    std::vector<size_t> begins;
    for (const WeightSpec& spec : layout) {
      const size_t bytes = size_t(shape_numel(spec.shape)) * 2;
      header[spec.name] = {
          {"dtype", "BF16"}, {"shape", spec.shape}, {"data_offsets", {offset, offset + bytes}}};
      begins.push_back(offset);
      offset += bytes;
    }
    std::string text = header.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');  // the data section starts 8-byte aligned
    size_ = 8 + text.size() + offset;
    fd_ = memfd_create("dseek-bench-checkpoint", MFD_CLOEXEC);
    DSEEK_CHECK(fd_ >= 0, "[bench] memfd_create: {}", std::strerror(errno));
    DSEEK_CHECK(ftruncate(fd_, off_t(size_)) == 0, "[bench] memfd of {:.1f} GB: {}",
                double(size_) / 1e9, std::strerror(errno));
    // MAP_POPULATE: the kernel allocates every page up front, much faster than a fault per page.
    void* addr = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, 0);
    DSEEK_CHECK(addr != MAP_FAILED, "[bench] mmap of the memfd: {}", std::strerror(errno));
    char* bytes = static_cast<char*>(addr);
    const uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) bytes[i] = char((n >> (8 * i)) & 0xff);
    std::memcpy(bytes + 8, text.data(), text.size());
    char* data = bytes + 8 + text.size();
    std::vector<FillTarget> targets;
    for (size_t t = 0; t < layout.size(); ++t)
      targets.push_back({data + begins[t], DType::BF16, shape_numel(layout[t].shape),
                         seed ^ fnv1a64(layout[t].name), layout[t].init == WeightSpec::Init::Ones});
    fill_random(targets, 0.02);
    munmap(addr, size_);
  }
  ~MemoryCheckpoint() { close(fd_); }
  MemoryCheckpoint(const MemoryCheckpoint&) = delete;
  MemoryCheckpoint& operator=(const MemoryCheckpoint&) = delete;

  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }
  size_t bytes() const { return size_; }

 private:
  int fd_ = -1;
  size_t size_ = 0;
};

void sync(Device device) {
  if (device == Device::CUDA) cuda::synchronize();
}

// Greedy token from the last row of logits [T, V] (on any device).
int32_t greedy_last(const Tensor& logits) {
  const std::vector<float> row = logits.select(0, logits.size(0) - 1).to_vector();
  return argmax(row, 0, row.size());
}

// Device-to-device copy of 1 GiB, read + write bytes per second (the roofline's bandwidth).
double copy_gbs() {
  const size_t bytes = size_t(1) << 30;
  void* a = cuda::alloc(bytes);
  void* b = cuda::alloc(bytes);
  cuda::fill_bytes(a, 1, bytes);
  std::vector<double> t;
  for (int r = 0; r < 12; ++r) {
    cuda::synchronize();
    const auto t0 = Clock::now();
    cuda::copy_on_device(b, a, bytes);
    cuda::synchronize();
    if (r >= 2) t.push_back(seconds_since(t0));
  }
  cuda::free(a);
  cuda::free(b);
  return 2.0 * double(bytes) / median(t) / 1e9;
}

struct DecodeRun {
  double prefill_s = 0;
  std::vector<double> step_s;
  std::vector<int32_t> tokens;
};

// Prompt then `n` greedy steps through one KV cache.
// device_pick: the steps through Model::decode_greedy (on the GPU the argmax runs in the step's
// graph and the host reads each token one step behind); a step's time is then the time between
// two tokens reaching the host.
DecodeRun greedy_decode(Transformer& model, const std::vector<int32_t>& prompt, int64_t n,
                        Device device, bool device_pick = false) {
  DecodeRun run;
  auto cache = model.new_cache(int64_t(prompt.size()) + n);
  sync(device);
  auto t0 = Clock::now();
  int32_t next = greedy_last(model.forward(prompt, *cache));
  run.prefill_s = seconds_since(t0);
  if (device_pick) {
    run.tokens.push_back(next);
    t0 = Clock::now();
    (void)model.decode_greedy(next, n, *cache, [&](int32_t id) {
      run.step_s.push_back(seconds_since(t0));
      t0 = Clock::now();
      if (int64_t(run.tokens.size()) < n) run.tokens.push_back(id);
      return true;
    });
    return run;
  }
  for (int64_t i = 0; i < n; ++i) {
    run.tokens.push_back(next);
    t0 = Clock::now();
    next = greedy_last(model.forward({next}, *cache));
    run.step_s.push_back(seconds_since(t0));
  }
  return run;
}

struct BatchRun {
  double forward_s = 0;  // the decode steps' forwards, synchronised
  int64_t tokens = 0;
};

// B sequences: prompts through forward_batch (in groups of 16 sequences), then `steps` timed
// decode steps of one token per sequence after two untimed ones (first-call allocations).
BatchRun batched_decode(Transformer& model, int64_t B, int64_t prompt_len, int64_t steps,
                        int64_t vocab, Rng& rng, Device device) {
  const int64_t page_tokens = 64;
  const int64_t warmup = 2, total = prompt_len + warmup + steps;
  const int64_t pages_per_seq = (total + page_tokens - 1) / page_tokens;
  auto cache = model.new_paged_cache(page_tokens, B * pages_per_seq);
  std::vector<PagedSequence> seqs(static_cast<size_t>(B));
  for (PagedSequence& s : seqs)
    DSEEK_CHECK(cache->reserve(s, total), "[bench] paged cache too small");
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
  for (auto& p : prompts) p = random_ids(size_t(prompt_len), vocab, rng);
  std::vector<int32_t> next(static_cast<size_t>(B));
  const int64_t V = vocab;
  for (int64_t g = 0; g < B; g += 16) {
    std::vector<BatchSequence> batch;
    for (int64_t b = g; b < std::min(B, g + 16); ++b)
      batch.push_back({prompts[size_t(b)], &seqs[size_t(b)], false});
    const BatchOutput out = model.forward_batch(batch, *cache);
    const std::vector<float> logits = out.logits.to_vector();
    for (size_t i = 0; i < batch.size(); ++i)
      next[size_t(g) + i] = argmax(logits, size_t(out.first_row[i] * V), size_t(V));
  }
  BatchRun run;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    std::vector<BatchSequence> batch;
    for (int64_t b = 0; b < B; ++b)
      batch.push_back({std::span<const int32_t>(&next[size_t(b)], 1), &seqs[size_t(b)], false});
    sync(device);
    const auto t0 = Clock::now();
    const BatchOutput out = model.forward_batch(batch, *cache);
    sync(device);
    if (s >= warmup) {
      run.forward_s += seconds_since(t0);
      run.tokens += B;
    }
    const std::vector<float> logits = out.logits.to_vector();
    for (int64_t b = 0; b < B; ++b)
      next[size_t(b)] = argmax(logits, size_t(out.first_row[size_t(b)] * V), size_t(V));
  }
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const Device device = o.device == "cuda" ? Device::CUDA : Device::CPU;
  Results results(o.json);
  try {
    const ModelConfig config =
        o.checkpoint.empty() ? shape_config(o.shape, o.layers) : load_model_config(o.checkpoint);
    Placement placement;
    placement.device = device;
    placement.act = o.dtype == "bf16" ? DType::BF16 : DType::F32;
    validate(placement);
    const ParamCount count = count_params(config);
    const int64_t L = config.num_hidden_layers;
    const double latent_bytes_per_pos =  // one position's cache row over all layers, act dtype
        double(kv_cache_bytes_per_token(config, placement.act));
    std::printf("# dseek inference, %s, %lld layers\n",
                o.checkpoint.empty() ? (o.shape + " shape").c_str() : o.checkpoint.c_str(),
                (long long)L);
    std::printf("device: %s, activations %s\n",
                device == Device::CUDA ? cuda::describe().c_str() : "cpu",
                dtype_name(placement.act).data());
    std::printf("%.2fB parameters, %.3fB active per token (non-embedding, head included)\n",
                double(count.total) / 1e9, double(count.active) / 1e9);

    double gbs = 0;
    if (device == Device::CUDA) {
      gbs = copy_gbs();
      std::printf("device copy: %.0f GB/s (read + write)\n", gbs);
      results.add({{"bench", "copy_bw"}, {"impl", "dseek"}, {"gbs", gbs}});
    }

    auto t0 = Clock::now();
    std::unique_ptr<MemoryCheckpoint> image;
    std::string dir = o.checkpoint;
    if (dir.empty()) {
      image = std::make_unique<MemoryCheckpoint>(config, uint64_t(o.seed));
      dir = image->path();
      std::printf("random bf16 weights in memory: %.1f GB in %.1f s\n",
                  double(image->bytes()) / 1e9, seconds_since(t0));
    }
    t0 = Clock::now();
    std::unique_ptr<Transformer> model;
    {
      const WeightStore store = WeightStore::open(dir);
      model = std::make_unique<Transformer>(config, store, placement);
    }
    image.reset();  // the device holds its copies now (the CPU placement keeps the mapping)
    sync(device);
    const double load_s = seconds_since(t0);
    std::printf("load: %.1f s\n\n", load_s);
    results.add({{"bench", "load"}, {"impl", "dseek"}, {"seconds", load_s}});
    std::fflush(stdout);

    Rng rng(uint64_t(o.seed) + 1);
    const int64_t V = config.vocab_size;
    nlohmann::json base = {{"impl", "dseek"},
                           {"layers", L},
                           {"dtype", o.dtype},
                           {"device", o.device},
                           {"active_params", count.active}};

    std::printf("| what | figure | detail |\n| --- | --- | --- |\n");
    // Batch-1 greedy decode after a prompt: one short run to warm up, then the measured one; on
    // the GPU with the steps replayed as CUDA graphs (the default) and op by op, the same prompt.
    const std::vector<int32_t> prompt = random_ids(size_t(o.prompt), V, rng);
    std::vector<int32_t> graph_tokens;
    // On the GPU the graphed step again with one part switched off at a time, then with all of
    // them off: each part's share and the baseline, in the same process on the same weights and
    // prompt. The parts: the second stream (core/cuda.h Fork), the fused SwiGLU down projections
    // (ops/swiglu.h), programmatic dependent launch (core/cuda/pdl.cuh), the fused MLA cache
    // append and one-block routing (ops/mla_cache.h, ops::moe_route_permute), and the decode
    // GEMVs (dense, router, per-head and one-row expert streaming: ops/cuda/gemv.h,
    // grouped_gemv.h) against cuBLASLt and the chunk loop.
    struct Variant {
      const char* label;
      bool graphs = true, branches = true, swiglu = true, pdl = true, fused = true, gemv = true;
      bool device_pick = false;  // the argmax in the graph (Model::decode_greedy)
    };
    const std::vector<Variant> variants =
        device != Device::CUDA
            ? std::vector<Variant>{{"decode b1", false}}
            : std::vector<Variant>{
                  {"decode b1, CUDA graphs"},
                  {"decode b1, CUDA graphs, argmax on the device", true, true, true, true, true,
                   true, true},
                  {"decode b1, no graphs", false},
                  {"decode b1, CUDA graphs, one stream", true, false},
                  {"decode b1, CUDA graphs, SwiGLU as two kernels", true, true, false},
                  {"decode b1, CUDA graphs, no PDL", true, true, true, false},
                  {"decode b1, CUDA graphs, cache append and routing unfused", true, true, true,
                   true, false},
                  {"decode b1, CUDA graphs, cuBLASLt instead of the GEMVs", true, true, true, true,
                   true, false},
                  {"decode b1, CUDA graphs, all of these off", true, false, false, false, false,
                   false}};
    auto set_decode_kernels = [&]([[maybe_unused]] const Variant& v) {
#ifdef DSEEK_HAS_CUDA
      if (device != Device::CUDA) return;
      cuda::set_branches_enabled(v.branches);
      ops::set_swiglu_fused(v.swiglu);
      cuda::set_pdl_enabled(v.pdl);
      ops::set_mla_cache_append_fused(v.fused);
      ops::set_moe_small_route(v.fused);
      ops::cuda::set_linear_gemv(v.gemv);
      ops::cuda::set_grouped_gemv_streaming(v.gemv);
#endif
    };
    for (size_t run_kind = 0; run_kind < variants.size(); ++run_kind) {
      const Variant& v = variants[run_kind];
      const bool graphs = v.graphs && device == Device::CUDA, before = run_kind >= 1;
      model->set_cuda_graphs(graphs);
      set_decode_kernels(v);
      const char* label = graphs && !model->cuda_graphs_active()
                              ? "decode b1 (CUDA graphs not applicable)"
                              : v.label;
      nlohmann::json row = base;
      row.update({{"bench", "decode"},
                  {"batch", 1},
                  {"prompt", o.prompt},
                  {"new_tokens", o.new_tokens},
                  {"cuda_graphs", graphs && model->cuda_graphs_active()}});
      const size_t pending = results.begin(row);
      try {
        (void)greedy_decode(*model, random_ids(16, V, rng), 4, device, v.device_pick);
        const DecodeRun run = greedy_decode(*model, prompt, o.new_tokens, device, v.device_pick);
        double total = 0;
        for (double s : run.step_s) total += s;
        const double tps = double(run.step_s.size()) / total;
        // Bytes a step reads: the active weights (bf16 as stored on the CPU, the activation
        // dtype on the GPU) plus the cache rows of the positions it attends to (the run's mean).
        const double weight_bytes =
            device == Device::CUDA ? double(dtype_size(placement.act)) : 2.0;
        const double mean_positions = double(o.prompt) + 0.5 * double(o.new_tokens);
        const double bytes =
            weight_bytes * double(count.active) + latent_bytes_per_pos * mean_positions;
        row.update({{"tokens_per_s", tps},
                    {"median_step_ms", median(run.step_s) * 1e3},
                    {"prompt_ms", run.prefill_s * 1e3},
                    {"bytes_per_token", bytes}});
        std::printf("| %s | %.1f tokens/s | median step %.2f ms, %lld-token prompt %.1f ms", label,
                    tps, median(run.step_s) * 1e3, (long long)o.prompt, run.prefill_s * 1e3);
        if (gbs > 0) {
          const double roofline = gbs * 1e9 / bytes;
          row["roofline_tokens_per_s"] = roofline;
          std::printf("; roofline %.0f tokens/s (%.2f GB/token), %.1f%% of it", roofline,
                      bytes / 1e9, 100.0 * tps / roofline);
        }
        if (graphs && !before) graph_tokens = run.tokens;
        if ((!graphs || before) && !graph_tokens.empty())
          std::printf("; tokens %s the graphed run's",
                      run.tokens == graph_tokens ? "=" : "DIFFER from");
        std::printf(" |\n");
        std::string head;
        for (size_t i = 0; i < run.tokens.size() && i < 8; ++i)
          head += std::to_string(run.tokens[i]) + " ";
        std::fprintf(stderr, "decode: first tokens %s\n", head.c_str());
      } catch (const Error& e) {
        std::printf("| %s | n/a (%s) | |\n", label, e.what());
        row["error"] = e.what();
      }
      results.end(pending, row);
      std::fflush(stdout);
    }
    model->set_cuda_graphs(true);
    set_decode_kernels(Variant{"default"});
    // Prefill of a long prompt into an empty cache: one warm-up, then the median of two.
    if (o.prefill > 0) {
      nlohmann::json row = base;
      row.update({{"bench", "prefill"}, {"tokens", o.prefill}});
      const size_t pending = results.begin(row);
      try {
        std::vector<double> t;
        for (int r = 0; r < 3; ++r) {
          const std::vector<int32_t> ids = random_ids(size_t(o.prefill), V, rng);
          auto cache = model->new_cache(o.prefill);
          sync(device);
          const auto a = Clock::now();
          (void)model->forward(ids, *cache);
          sync(device);
          if (r > 0) t.push_back(seconds_since(a));
        }
        const double tps = double(o.prefill) / median(t);
        row.update({{"tokens_per_s", tps}, {"ms", median(t) * 1e3}});
        std::printf("| prefill %lld | %.0f tokens/s | %.1f ms, into the KV cache |\n",
                    (long long)o.prefill, tps, median(t) * 1e3);
      } catch (const Error& e) {
        std::printf("| prefill %lld | n/a (%s) | |\n", (long long)o.prefill, e.what());
        row["error"] = e.what();
      }
      results.end(pending, row);
      std::fflush(stdout);
    }
    // Batched decode through the paged cache.
    for (int64_t B : o.batches) {
      nlohmann::json row = base;
      row.update(
          {{"bench", "decode"}, {"batch", B}, {"prompt", o.prompt}, {"new_tokens", o.batch_steps}});
      const size_t pending = results.begin(row);
      try {
        const BatchRun run = batched_decode(*model, B, o.prompt, o.batch_steps, V, rng, device);
        const double tps = double(run.tokens) / run.forward_s;
        row.update(
            {{"tokens_per_s", tps}, {"step_ms", run.forward_s / double(o.batch_steps) * 1e3}});
        std::printf("| decode b%lld | %.0f tokens/s | %.2f ms per step (forward only) |\n",
                    (long long)B, tps, run.forward_s / double(o.batch_steps) * 1e3);
      } catch (const Error& e) {
        std::printf("| decode b%lld | n/a (%s) | |\n", (long long)B, e.what());
        row["error"] = e.what();
      }
      results.end(pending, row);
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_decode_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
