// bench_train: CPU training throughput — one optimizer step = forward + backward of a batch of B
// sequences of T tokens (train::TrainModel, all sequences in one batch as the trainer runs them),
// global-norm clipping, AdamW, zeroing the gradients — on synthetic uniformly random tokens (no
// files needed), for the `tiny` and `small` presets. Baselines measured in the same run:
//   naive     the same step with each sequence run on its own (forward_backward with seq_len 0 per
//             sequence, loss_scale 1/B): the same math, but GEMMs of T rows instead of B·T;
//   roofline  OpenBLAS sgemm GFLOP/s of 1024×1024×1024 (the machine's f32 GEMM peak, near enough)
//             and of a shape taken from the model (M = B·T tokens, N = 3d, K = d: the dense MLP's
//             projections), each with all threads and with one.
//
// Model FLOPs of a step (the convention of Kaplan et al. 2020 / PaLM, so numbers compare with
// other trainers' "model FLOPs utilisation"): per main-model token
//   6 · N_active  +  6 · L' · T · H · (d_qk + d_v)
// where N_active counts every weight matrix a token is multiplied by — all matrices except the
// embedding table (a lookup); routed experts scaled by top-k / E; the router; the output head once
// for the main model and once per MTP depth (the head is shared); the MTP modules' eh_proj and
// blocks when λ > 0 (counted for all T tokens, though depth k sees T − k) — and the second term is
// attention's QKᵀ and AV (2·T·H·d each forward, ×3 for forward + backward) over L' = main + MTP
// layers. With d_qk = d_v = d_attn / H it is 12·L'·T·d_attn, the usual formula; it counts the full
// T×T score matrix although causal attention needs only half (again the usual convention). Norms,
// softmax, RoPE, SwiGLU and the optimizer are not counted. GFLOP/s = FLOPs per step / step time.
//
// Usage: bench_train [--presets tiny,small] [--vocab 4096] [--seq-len 128] [--batch 8]
//                    [--steps 5] [--warmup 1] [--naive-steps 2] [--threads N] [--mtp-lambda 0.3]
//                    [--seed 0] [--write-configs DIR]
// The header names the kernels OpenBLAS chose and warns when they are generic ones on an AVX2 CPU
// (OPENBLAS_CORETYPE overrides the detection).
// --write-configs writes DIR/<preset>.json (the HF config.json of each preset at --vocab) for
// scripts/bench/torch_train_cpu.py, the PyTorch baseline of the same step, and exits.
#include <cblas.h>
#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench_flags.h"
#include "cli/validators.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/init_weights.h"
#include "train/optimizer.h"
#include "train/param.h"
#include "train/train_config.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Options {
  std::vector<std::string> presets = {"tiny", "small"};
  int64_t vocab = 4096, seq_len = 128, batch = 8, steps = 5, warmup = 1, naive_steps = 2;
  int64_t threads = 0, seed = 0;
  double mtp_lambda = 0.3;
  std::string write_configs;  // a directory: write the presets' config.json files and stop
};

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Weights a token is multiplied by, per the header's rule; `mtp` when the MTP modules run.
double active_params_per_token(const ModelConfig& c, bool mtp) {
  const int64_t L = c.num_hidden_layers, depths = mtp ? c.num_nextn_predict_layers : 0;
  double n = 0.0;
  for (const WeightSpec& spec : checkpoint_layout(c)) {
    if (spec.shape.size() != 2) continue;  // norms, biases: no matrix product
    const std::string& name = spec.name;
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") continue;  // below
    if (starts_with(name, "model.layers.")) {
      const int64_t layer = std::stoll(name.substr(13));
      if (layer >= L + depths) continue;  // an MTP module that does not run
      // MTP modules hold their own copies of the embedding and head in checkpoints; training
      // shares the main ones (counted below).
      if (name.find(".embed_tokens.") != std::string::npos ||
          name.find(".shared_head.head.") != std::string::npos)
        continue;
    }
    double w = double(shape_numel(spec.shape));
    if (name.find(".mlp.experts.") != std::string::npos)
      w *= double(c.num_experts_per_tok) / double(c.n_routed_experts);
    n += w;
  }
  // The output head (tied or not): the main model, then once per MTP depth.
  n += double(c.vocab_size) * double(c.hidden_size) * double(1 + depths);
  return n;
}

double attention_flops_per_token(const ModelConfig& c, int64_t T, bool mtp) {
  const int64_t layers = c.num_hidden_layers + (mtp ? c.num_nextn_predict_layers : 0);
  const int64_t d_qk = c.is_mla() ? c.qk_head_dim() : c.head_dim;
  const int64_t d_v = c.is_mla() ? c.v_head_dim : c.head_dim;
  return 6.0 * double(layers) * double(T) * double(c.num_attention_heads) * double(d_qk + d_v);
}

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, Rng& rng) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = int32_t(rng.next_u64() % uint64_t(vocab));
  return ids;
}

struct StepTiming {
  double step_s = 0.0;     // mean seconds per optimizer step
  double fwd_bwd_s = 0.0;  // of which forward + backward
  double optim_s = 0.0;    // of which clipping + AdamW + zeroing
  double forward_s = 0.0;  // a forward alone on the same batch (timed apart from the step)
  double last_loss = 0.0;
};

// Runs `warmup` then `steps` optimizer steps; `naive` runs each sequence alone.
StepTiming time_steps(TrainModel& model, AdamW& optimizer, const Options& o, bool naive,
                      int64_t steps, Rng& rng) {
  const int64_t B = o.batch, T = o.seq_len;
  LossOptions loss;
  loss.mtp_lambda = o.mtp_lambda;
  StepTiming timing;
  for (int64_t s = 0; s < o.warmup + steps; ++s) {
    // Targets are the inputs shifted by one, as the loader's [T+1] windows give them.
    std::vector<int32_t> inputs, targets;
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<int32_t> window =
          random_tokens(size_t(T + 1), model.config().vocab_size, rng);
      inputs.insert(inputs.end(), window.begin(), window.end() - 1);
      targets.insert(targets.end(), window.begin() + 1, window.end());
    }
    const auto t0 = Clock::now();
    double loss_sum = 0.0;
    if (naive) {
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<int32_t> in(inputs.begin() + b * T, inputs.begin() + (b + 1) * T);
        const std::vector<int32_t> tg(targets.begin() + b * T, targets.begin() + (b + 1) * T);
        loss_sum += model.forward_backward(in, tg, loss, float(1.0 / double(B)), 0).main_ce;
      }
      loss_sum /= double(B);
    } else {
      loss_sum = model.forward_backward(inputs, targets, loss, 1.0f, T).main_ce;
    }
    const auto t1 = Clock::now();
    clip_grad_norm(model.params(), 1.0);
    optimizer.step(1e-3);
    model.params().zero_grad();
    if (s < o.warmup) continue;
    timing.fwd_bwd_s += std::chrono::duration<double>(t1 - t0).count();
    timing.optim_s += since(t1);
    timing.last_loss = loss_sum;
    // The forward alone, so that the backward's share (fwd+bwd − fwd) shows: it should be about
    // twice the forward's FLOPs.
    const auto t2 = Clock::now();
    if (naive) {
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<int32_t> in(inputs.begin() + b * T, inputs.begin() + (b + 1) * T);
        const std::vector<int32_t> tg(targets.begin() + b * T, targets.begin() + (b + 1) * T);
        (void)model.forward(in, tg, loss, 0);
      }
    } else {
      (void)model.forward(inputs, targets, loss, T);
    }
    timing.forward_s += since(t2);
  }
  timing.forward_s /= double(steps);
  timing.fwd_bwd_s /= double(steps);
  timing.optim_s /= double(steps);
  timing.step_s = timing.fwd_bwd_s + timing.optim_s;
  return timing;
}

// Best GFLOP/s of C = A·Bᵀ (row-major, as ops::linear calls it) over a few repetitions.
double sgemm_gflops(int64_t M, int64_t N, int64_t K, int threads) {
  Rng rng(7);
  auto fill = [&](size_t n) {
    std::vector<float> v(n);
    for (float& f : v) f = float(rng.uniform()) - 0.5f;
    return v;
  };
  const std::vector<float> a = fill(size_t(M * K)), b = fill(size_t(N * K));
  std::vector<float> c(size_t(M * N));
  openblas_set_num_threads(threads);
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int reps = std::clamp(int(2e9 / flops), 3, 200);
  double best = 0.0;
  for (int round = 0; round < 4; ++round) {  // round 0 warms up
    const auto t = Clock::now();
    for (int r = 0; r < reps; ++r)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, a.data(),
                  int(K), b.data(), int(K), 0.0f, c.data(), int(N));
    const double gflops = flops * reps / since(t) / 1e9;
    if (round > 0) best = std::max(best, gflops);
  }
  return best;
}

struct Row {
  std::string config, mode;
  int64_t params = 0;
  double active = 0.0, flops_per_step = 0.0;
  int64_t tokens_per_step = 0;
  StepTiming timing;
  int64_t gemm_m = 0, gemm_n = 0, gemm_k = 0;  // the shape-matched sgemm
};

// The flags of the file header; a bad one exits 2 with CLI11's message (--help lists them).
Options parse(int argc, char** argv) {
  Options o;
  CLI::App app{"bench_train: CPU training steps of the presets, beside a naive step and sgemm"};
  app.add_option("--presets", o.presets, "model presets, e.g. tiny,small")->delimiter(',');
  app.add_option("--vocab", o.vocab)->check(dseek::cli::at_least(2));
  app.add_option("--seq-len", o.seq_len)->check(dseek::cli::at_least(2));
  app.add_option("--batch", o.batch)->check(dseek::cli::positive);
  app.add_option("--steps", o.steps)->check(dseek::cli::positive);
  app.add_option("--warmup", o.warmup)->check(dseek::cli::non_negative);
  app.add_option("--naive-steps", o.naive_steps)->check(dseek::cli::non_negative);
  app.add_option("--threads", o.threads, "OpenMP threads (0: the default)")
      ->check(dseek::cli::non_negative);
  app.add_option("--seed", o.seed)->check(dseek::cli::non_negative);
  app.add_option("--mtp-lambda", o.mtp_lambda, "MTP loss weight (0: no MTP module)")
      ->check(dseek::cli::non_negative);
  app.add_option("--write-configs", o.write_configs,
                 "write the presets' config.json files into this folder and stop");
  parse_or_exit(app, argc, argv);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (o.threads > 0) omp_set_num_threads(int(o.threads));
  // As the trainer does: the step's large activations stay in the heap instead of being mmapped
  // and unmapped per tensor (a page fault per page per step otherwise).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  const int threads = omp_get_max_threads();
  const bool mtp = o.mtp_lambda > 0.0;
  try {
    if (!o.write_configs.empty()) {
      std::filesystem::create_directories(o.write_configs);
      for (const std::string& preset : o.presets) {
        const std::string path = o.write_configs + "/" + preset + ".json";
        std::ofstream out(path);
        out << model_config_to_json(preset_model_config(preset, o.vocab));
        DSEEK_CHECK(out.good(), "[bench] {}: cannot write", path);
        std::printf("%s\n", path.c_str());
      }
      return 0;
    }
    std::vector<Row> rows;
    for (const std::string& preset : o.presets) {
      const ModelConfig config = preset_model_config(preset, o.vocab);
      ParamSet params;
      TrainModel::init_params(config, uint64_t(o.seed), 0.02, params);
      TrainModel model(config, params);
      AdamW optimizer(params, AdamWConfig{});
      Rng rng(uint64_t(o.seed) + 1);
      Row row;
      row.config = preset;
      row.params = params.numel(true);
      row.active = active_params_per_token(config, mtp);
      row.tokens_per_step = o.batch * o.seq_len;
      row.flops_per_step = double(row.tokens_per_step) *
                           (6.0 * row.active + attention_flops_per_token(config, o.seq_len, mtp));
      row.gemm_m = row.tokens_per_step;
      row.gemm_n = 3 * config.hidden_size;
      row.gemm_k = config.hidden_size;
      std::fprintf(stderr, "%s: batched steps ...\n", preset.c_str());
      row.mode = "batched";
      row.timing = time_steps(model, optimizer, o, false, o.steps, rng);
      rows.push_back(row);
      if (o.naive_steps > 0) {
        std::fprintf(stderr, "%s: naive steps (one sequence at a time) ...\n", preset.c_str());
        row.mode = "naive (per sequence)";
        row.timing = time_steps(model, optimizer, o, true, o.naive_steps, rng);
        rows.push_back(row);
      }
    }

    // Roofline last: it changes OpenBLAS's thread count, which ops::linear pins to 1 on its
    // first GEMM (its OpenMP threads each run a single-threaded sgemm).
    std::fprintf(stderr, "sgemm roofline ...\n");
    struct Gemm {
      int64_t m, n, k;
      double all = 0.0, one = 0.0;
    };
    std::vector<Gemm> gemms = {{1024, 1024, 1024}};
    for (const Row& r : rows) {
      const bool seen = std::any_of(gemms.begin(), gemms.end(), [&](const Gemm& g) {
        return g.m == r.gemm_m && g.n == r.gemm_n && g.k == r.gemm_k;
      });
      if (!seen) gemms.push_back({r.gemm_m, r.gemm_n, r.gemm_k});
    }
    for (Gemm& g : gemms) {
      g.all = sgemm_gflops(g.m, g.n, g.k, threads);
      g.one = sgemm_gflops(g.m, g.n, g.k, 1);
    }
    openblas_set_num_threads(1);  // back to what ops::linear set
    auto shape_gflops = [&](const Row& r) {
      for (const Gemm& g : gemms)
        if (g.m == r.gemm_m && g.n == r.gemm_n && g.k == r.gemm_k) return g.all;
      return 0.0;
    };
    const double peak = gemms[0].all;

    std::printf("# dseek CPU training benchmark\n");
    // OpenBLAS picks its kernels from the CPU it detects; a release older than the CPU falls
    // back to generic SSE3 ("Prescott") kernels, several times slower (seen with Debian 12's
    // 0.3.21 on a Sapphire Rapids VM: OPENBLAS_CORETYPE=Cooperlake fixed it).
    const std::string core = openblas_get_corename();
    std::printf("%s, kernels for core '%s'\n", openblas_get_config(), core.c_str());
    if ((core == "Prescott" || core == "Core2" || core == "Nehalem") &&
        __builtin_cpu_supports("avx2"))
      std::printf(
          "WARNING: this CPU has AVX2 but OpenBLAS runs %s kernels: set OPENBLAS_CORETYPE "
          "(Haswell, SkylakeX or Cooperlake, as the CPU allows)\n",
          core.c_str());
    std::printf(
        "synthetic uniform random tokens, vocab %lld, seq_len %lld, batch %lld, MTP lambda %g; "
        "%lld measured steps after %lld warm-up (naive: %lld); %d threads (OpenMP)\n\n",
        (long long)o.vocab, (long long)o.seq_len, (long long)o.batch, o.mtp_lambda,
        (long long)o.steps, (long long)o.warmup, (long long)o.naive_steps, threads);
    std::printf(
        "| config | mode | params | active params/token | tokens/step | ms/step (fwd+bwd + "
        "optim) | fwd alone, ms | tokens/s | GFLOP/s | %% of sgemm 1024^3 | %% of sgemm "
        "M×3d×d |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const Row& r : rows) {
      const double gflops = r.flops_per_step / r.timing.step_s / 1e9;
      std::printf(
          "| %s | %s | %.2fM | %.2fM | %lld | %.1f (%.1f + %.1f) | %.1f | %.0f | %.2f | %.1f %% "
          "| %.1f %% |\n",
          r.config.c_str(), r.mode.c_str(), double(r.params) / 1e6, r.active / 1e6,
          (long long)r.tokens_per_step, r.timing.step_s * 1e3, r.timing.fwd_bwd_s * 1e3,
          r.timing.optim_s * 1e3, r.timing.forward_s * 1e3,
          double(r.tokens_per_step) / r.timing.step_s, gflops, 100.0 * gflops / peak,
          100.0 * gflops / shape_gflops(r));
    }
    for (size_t i = 0; i + 1 < rows.size(); ++i)
      if (rows[i].config == rows[i + 1].config)
        std::printf("\n%s: batched step is %.2fx the naive one's speed", rows[i].config.c_str(),
                    rows[i + 1].timing.step_s / rows[i].timing.step_s);
    std::printf(
        "\n\n| sgemm M×N×K (C = A·Bᵀ, f32, OpenBLAS) | GFLOP/s, %d threads | "
        "GFLOP/s, 1 thread |\n| --- | --- | --- |\n",
        threads);
    for (const Gemm& g : gemms)
      std::printf("| %lld×%lld×%lld | %.1f | %.1f |\n", (long long)g.m, (long long)g.n,
                  (long long)g.k, g.all, g.one);
    std::printf(
        "\nmodel FLOPs/token = 6·active params + 6·L'·T·H·(d_qk + d_v) (L' = layers incl. MTP "
        "when lambda > 0); loss after the last step: ");
    for (const Row& r : rows)
      std::printf("%s %s %.3f; ", r.config.c_str(), r.mode.c_str(), r.timing.last_loss);
    std::printf("(ln vocab = %.3f)\n", std::log(double(o.vocab)));
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
