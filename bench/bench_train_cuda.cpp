// bench_train_cuda: one training step of a DeepSeek-V2-Lite-shaped model on the GPU (issue 10):
// forward + backward of B sequences of T tokens (TrainModel::forward_backward), global-norm
// clipping to 1.0, AdamW, the bf16 compute copies re-rounded, gradients zeroed — the trainer's
// step (src/train/trainer.cpp) — on uniformly random tokens. f32 master weights, gradients and
// moments; bf16 compute copies and activations under --dtype bf16 (ParamSet::set_compute_dtype).
// bench/issue10_torch.py times transformers on the same shape and scripts/device/bench_issue10.sh
// puts the two side by side.
//
// Model FLOPs per token (bench/bench_train.cpp's convention, the usual one for MFU):
//   6 · N_active + 6 · L · T · H · (d_qk + d_v)
// N_active = count_params(config).active: every matrix a token is multiplied by, the output head
// included, the routed experts at top-k of E, the embedding table (a lookup) not; the second term
// is attention's QKᵀ and AV over the full T×T square (causal needs half; the convention counts
// all). MFU = FLOPs per step / step time / the bf16 GEMM peak, which this bench also measures for
// dseek's own linear (ops::linear, cuBLASLt) on 8192³; the wrapper divides by the peak PyTorch's
// matmul reaches in the same run, as issue 10 asks.
//
// Usage: bench_train_cuda [--shape v2-lite|v3-width|tiny] [--layers 4] [--batch 2] [--seq 2048]
//            [--steps 5] [--warmup 2] [--device cuda|cpu] [--dtype bf16|f32] [--lr 1e-4]
//            [--seed 0] [--init fast|normal] [--precision default|fp8] [--moments f32|bf16]
//            [--expert-grads f32|bf16] [--grads f32|bf16] [--zero defer|all] [--update async|sync]
//            [--norm backward|after]
//            [--micro-batches 1] [--json FILE] [--write-config FILE]
// --moments bf16 keeps AdamW's moments in bf16 (optim.moment_dtype bf16).
// --expert-grads bf16 keeps the routed experts' weight gradients in bf16 (optim.expert_grad_dtype
// bf16; ParamSet::bf16_expert_grads), as PyTorch's bf16 model keeps all of its gradients.
// --grads bf16 keeps every weight gradient a GEMM writes in bf16: the routed experts', the
// attention and MLP projections', the head's (optim.grad_dtype bf16; ParamSet::bf16_matrix_grads).
// --micro-batches M accumulates M forward + backward passes of B × T tokens before each optimizer
// step, as train.grad_accum does (the FP8 weights quantised once a step: Fp8WeightCacheScope).
// --zero all writes every gradient's zeros after the step (zero_grad()); the default leaves the
// routed experts' to their wgrads, which overwrite them, as `dseek train` does (Param::grad_stale).
// --update async (the default, as `dseek train` on one GPU) queues AdamW and the zeros on the
// background stream a layer at a time (AdamW::step_async), so they run beside the next step's
// forward, which waits for each layer's update where it reads that layer; the fwd+bwd column then
// includes what of the update the forward waited for, and the optimizer column is the gradient
// norm and the queueing. --update sync: AdamW::step then zero_grad, one after the other.
// --norm backward (the default, as `dseek train` on one process) sums the gradients' squares
// layer by layer during the last backward (BackwardGradNorm); --norm after: grad_norm after it.
// --precision fp8 runs the attention and MLP/expert projections as FP8 GEMMs (train.precision fp8:
// mark_fp8_linears, ops/fp8_train.h, docs/FP8.md); the rest stays in --dtype.
// --write-config writes the shape's config.json (for bench/issue10_torch.py) and exits.
// Parameters are filled with uniform random values of std 0.02 by all host threads
// (issue10_common.h), then moved to the device; --init normal uses TrainModel::init_params
// instead (normal(0, 0.02), single-threaded: 3.3x slower on 2 cores at 0.5B parameters, and
// it does not scale with cores as the fast fill does). A step that throws (a part of training not
// on the GPU yet) prints "n/a (<reason>)" instead of a figure.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "bench_flags.h"
#include "cli/validators.h"
#include "core/cuda.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "issue10_common.h"
#include "model/config.h"
#include "model/init_weights.h"
#include "model/param_count.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"
#include "train/optimizer.h"
#include "train/param.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;
using namespace dseek::bench;

namespace {

struct Options {
  std::string shape = "v2-lite", device = "cuda", dtype, json, write_config, init = "fast";
  std::string precision = "default";  // default | fp8
  std::string moments = "f32";        // f32 | bf16: AdamW's moment dtype (optim.moment_dtype)
  std::string expert_grads = "f32";   // f32 | bf16: optim.expert_grad_dtype
  std::string grads = "f32";          // f32 | bf16: optim.grad_dtype
  std::string zero = "defer";         // defer | all: zero_grad(true) or zero_grad()
  std::string update = "async";       // async | sync: AdamW::step_async or step
  std::string norm = "backward";      // backward | after: BackwardGradNorm or grad_norm
  int64_t layers = 4, batch = 2, seq = 2048, steps = 5, warmup = 2, seed = 0;
  int64_t micro_batches = 1;  // forward_backward calls a step (train.grad_accum)
  double lr = 1e-4;
};

// The flags of the file header; a bad one exits 2 with CLI11's message (--help lists them).
Options parse(int argc, char** argv) {
  Options o;
  CLI::App app{"bench_train_cuda: one training step of a V2-Lite-shaped model (issue 10)"};
  app.add_option("--shape", o.shape, "v2-lite, v3-width or tiny");
  app.add_option("--layers", o.layers)->check(dseek::cli::positive);
  app.add_option("--batch", o.batch, "sequences a step")->check(dseek::cli::positive);
  app.add_option("--seq", o.seq, "tokens a sequence")->check(dseek::cli::at_least(2));
  app.add_option("--steps", o.steps, "timed steps")->check(dseek::cli::positive);
  app.add_option("--warmup", o.warmup, "untimed steps first")->check(dseek::cli::non_negative);
  app.add_option("--device", o.device)->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--dtype", o.dtype, "bf16 (the GPU's default) or f32 (the CPU's)")
      ->check(CLI::IsMember({"bf16", "f32"}));
  app.add_option("--lr", o.lr)->check(dseek::cli::positive);
  app.add_option("--seed", o.seed)->check(dseek::cli::non_negative);
  app.add_option("--json", o.json, "also write the figures to this file");
  app.add_option("--init", o.init)->check(CLI::IsMember({"fast", "normal"}));
  app.add_option("--precision", o.precision)->check(CLI::IsMember({"default", "fp8"}));
  app.add_option("--moments", o.moments)->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--expert-grads", o.expert_grads)->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--grads", o.grads)->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--zero", o.zero)->check(CLI::IsMember({"defer", "all"}));
  app.add_option("--update", o.update)->check(CLI::IsMember({"async", "sync"}));
  app.add_option("--norm", o.norm)->check(CLI::IsMember({"backward", "after"}));
  app.add_option("--micro-batches", o.micro_batches)->check(dseek::cli::positive);
  app.add_option("--write-config", o.write_config, "write the shape's config.json and stop");
  parse_or_exit(app, argc, argv);
  if (o.dtype.empty()) o.dtype = o.device == "cuda" ? "bf16" : "f32";
  if ((o.expert_grads == "bf16" || o.grads == "bf16") &&
      !(o.device == "cuda" && o.dtype == "bf16" && o.precision == "default")) {
    std::fprintf(stderr,
                 "bench_train_cuda: --expert-grads bf16 and --grads bf16 need --device cuda "
                 "--dtype bf16 --precision default\n");
    std::exit(2);
  }
  if (o.grads == "bf16") o.expert_grads = "bf16";
  return o;
}

// Every tensor of the layout as TrainModel::init_params lays it out (same names, trainable and
// decay flags; the shape has no MTP modules and no noaux_tc bias), values from the fast fill.
void fill_params(const ModelConfig& config, uint64_t seed, ParamSet& params) {
  DSEEK_CHECK(config.num_nextn_predict_layers == 0,
              "[bench] the benchmark shapes have no MTP modules");
  const std::vector<WeightSpec> layout = checkpoint_layout(config);
  std::vector<Tensor> values;
  std::vector<FillTarget> targets;
  for (const WeightSpec& spec : layout) {
    values.push_back(Tensor::empty(spec.shape, DType::F32));
    targets.push_back({values.back().raw(), DType::F32, values.back().numel(),
                       seed ^ fnv1a64(spec.name), spec.init == WeightSpec::Init::Ones});
  }
  fill_random(targets, 0.02);
  for (size_t i = 0; i < layout.size(); ++i) {
    params.add(layout[i].name, values[i], true, decays(layout[i].name));
    values[i] = Tensor();  // ParamSet::add copied it
  }
}

// ParamSet::to(Device) comes with the GPU optimizer work of issue 10. A build without it cannot
// move a ParamSet (its CPU-only zero_grad would write device memory from the host), so the GPU
// row reports that instead of failing to compile.
template <class Params>
void move_params(Params& params, Device device) {
  if constexpr (requires { params.to(device); }) {
    params.to(device);
  } else {
    fail("[bench] ParamSet::to(Device) is not in this build (issue 10's GPU optimizer)");
  }
}

void sync(Device device) {
  if (device == Device::CUDA) cuda::synchronize();
}

// dseek's bf16 GEMM peak: median TFLOP/s of ops::linear on [n, n]·[n, n]ᵀ over 10 runs.
double linear_peak_tflops(int64_t n) {
  Tensor x = Tensor::empty({n, n}, DType::F32), w = Tensor::empty({n, n}, DType::F32);
  fill_random({{x.raw(), DType::F32, x.numel(), 1, false}}, 1.0);
  fill_random({{w.raw(), DType::F32, w.numel(), 2, false}}, 0.02);
  const Tensor xd = x.to(DType::BF16).to(Device::CUDA), wd = w.to(DType::BF16).to(Device::CUDA);
  for (int r = 0; r < 3; ++r) (void)ops::linear(xd, wd);
  cuda::synchronize();
  std::vector<double> t;
  for (int r = 0; r < 10; ++r) {
    const auto t0 = Clock::now();
    (void)ops::linear(xd, wd);
    cuda::synchronize();
    t.push_back(seconds_since(t0));
  }
  return 2.0 * double(n) * double(n) * double(n) / median(t) / 1e12;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const Device device = o.device == "cuda" ? Device::CUDA : Device::CPU;
  Results results(o.json);
  try {
    const ModelConfig config = shape_config(o.shape, o.layers);
    if (!o.write_config.empty()) {
      std::ofstream out(o.write_config);
      out << model_config_to_json(config);
      DSEEK_CHECK(out.good(), "[bench] {}: cannot write", o.write_config);
      std::printf("%s\n", o.write_config.c_str());
      return 0;
    }
    if (device == Device::CUDA) cuda::require("bench_train_cuda --device cuda");
    const ParamCount count = count_params(config);
    const int64_t B = o.batch, T = o.seq, M = o.micro_batches, tokens = M * B * T;
    const double attn_flops = 6.0 * double(config.num_hidden_layers) * double(T) *
                              double(config.num_attention_heads) *
                              double(config.qk_head_dim() + config.v_head_dim);
    const double flops_per_token = 6.0 * double(count.active) + attn_flops;

    std::printf("# dseek training step, %s shape, %lld layers\n", o.shape.c_str(),
                (long long)o.layers);
    std::printf("device: %s\n",
                device == Device::CUDA ? cuda::describe().c_str() : "cpu (OpenMP threads)");
    std::printf(
        "%.3fB parameters, %.3fB active per token (non-embedding, head included); "
        "batch %lld x %lld tokens x %lld micro-batches, %s compute, f32 masters, AdamW (%s "
        "moments, %s expert gradients, %s other matrices' gradients), clip 1.0\n",
        double(count.total) / 1e9, double(count.active) / 1e9, (long long)B, (long long)T,
        (long long)M, o.dtype.c_str(), o.moments.c_str(), o.expert_grads.c_str(), o.grads.c_str());
    std::printf("model FLOPs per token %.3f GFLOP (6 x active %.3f + attention %.3f)\n",
                flops_per_token / 1e9, 6.0 * double(count.active) / 1e9, attn_flops / 1e9);
    std::fflush(stdout);

    nlohmann::json row = {{"bench", "train"},
                          {"impl", "dseek"},
                          {"shape", o.shape},
                          {"layers", o.layers},
                          {"batch", B},
                          {"seq", T},
                          {"micro_batches", M},
                          {"dtype", o.dtype},
                          {"precision", o.precision},
                          {"moments", o.moments},
                          {"expert_grads", o.expert_grads},
                          {"grads", o.grads},
                          {"update", o.update},
                          {"norm", o.norm},
                          {"device", o.device},
                          {"params", count.total},
                          {"active_params", count.active},
                          {"flops_per_token", flops_per_token}};

    double peak = 0;  // dseek's own bf16 GEMM TFLOP/s (0: not measured)
    if (device == Device::CUDA) {
      try {
        peak = linear_peak_tflops(8192);
        std::printf("dseek ops::linear bf16 8192^3: %.1f TFLOP/s\n", peak);
        results.add({{"bench", "gemm_peak"}, {"impl", "dseek"}, {"tflops", peak}});
      } catch (const Error& e) {
        std::printf("dseek ops::linear bf16 8192^3: n/a (%s)\n", e.what());
      }
    }

    const size_t pending = results.begin(row);
    auto t0 = Clock::now();
    ParamSet params;
    if (o.init == "fast")
      fill_params(config, uint64_t(o.seed), params);
    else
      TrainModel::init_params(config, uint64_t(o.seed), 0.02, params);
    const double init_s = seconds_since(t0);
    std::printf("init (%s): %.1f s on the host\n", o.init.c_str(), init_s);
    row["init_s"] = init_s;
    std::fflush(stdout);
    try {
      t0 = Clock::now();
      if (device == Device::CUDA) move_params(params, device);
      if (o.dtype == "bf16") params.set_compute_dtype(DType::BF16);
      if (o.precision == "fp8")
        std::printf("fp8: %lld projections run FP8 GEMMs\n", (long long)mark_fp8_linears(params));
      // As `dseek train` on one GPU: the bf16-copied masters kept split (train/param.h), unless
      // DSEEK_SPLIT_MASTERS=0.
      if (device == Device::CUDA && split_masters_enabled())
        std::printf("split masters: %lld (DSEEK_SPLIT_MASTERS=0: whole)\n",
                    (long long)params.split_masters());
      if (o.grads == "bf16")
        std::printf("bf16 matrix gradients: %lld\n", (long long)params.bf16_matrix_grads());
      else if (o.expert_grads == "bf16")
        std::printf("bf16 expert gradients: %lld\n", (long long)params.bf16_expert_grads());
      sync(device);
      const double move_s = seconds_since(t0);
      std::printf("to the device and compute copies: %.1f s\n", move_s);
      row["move_s"] = move_s;

      TrainModel model(config, params);
      AdamWConfig adamw;
      adamw.moment_dtype = o.moments == "bf16" ? DType::BF16 : DType::F32;
      AdamW optimizer(params, adamw);
      LossOptions loss;         // no balance loss: transformers' DeepseekV2 trains without one
      loss.token_logp = false;  // as `dseek train`'s language-model steps
      Rng rng(uint64_t(o.seed) + 1);
      std::vector<double> step_s, fwd_bwd_s, optim_s;
      double last_loss = 0;
      // A step's M micro-batches; targets are the inputs shifted by one, as the loader's [T+1]
      // windows give them. Made a step ahead: the update is told the next forward's ids.
      struct Batch {
        std::vector<std::vector<int32_t>> inputs, targets;
      };
      const auto make_batch = [&] {
        Batch batch{std::vector<std::vector<int32_t>>(size_t(M)),
                    std::vector<std::vector<int32_t>>(size_t(M))};
        for (int64_t m = 0; m < M; ++m)
          for (int64_t b = 0; b < B; ++b) {
            const std::vector<int32_t> w = random_ids(size_t(T + 1), config.vocab_size, rng);
            batch.inputs[size_t(m)].insert(batch.inputs[size_t(m)].end(), w.begin(), w.end() - 1);
            batch.targets[size_t(m)].insert(batch.targets[size_t(m)].end(), w.begin() + 1, w.end());
          }
        return batch;
      };
      Batch next = make_batch();
      for (int64_t s = 0; s < o.warmup + o.steps; ++s) {
        const Batch batch = std::move(next);
        const std::vector<std::vector<int32_t>>&inputs = batch.inputs, &targets = batch.targets;
        sync(device);
        const auto a = Clock::now();
        std::optional<BackwardGradNorm> backward_norm;
        {
          // As the trainer accumulates: the FP8 weights quantised once for the M passes.
          ops::Fp8WeightCacheScope fp8_weights(&params.fp8_images());
          last_loss = 0;
          for (int64_t m = 0; m < M; ++m) {
            // As `dseek train`: the last backward sums the gradients' squares layer by layer.
            if (m + 1 == M && o.norm == "backward") {
              backward_norm.emplace(params, config.num_hidden_layers);
              loss.on_block_backward = [&backward_norm](int64_t layer) {
                backward_norm->on_block_backward(layer);
              };
            }
            last_loss += model
                             .forward_backward(inputs[size_t(m)], targets[size_t(m)], loss,
                                               float(1.0 / double(M)), T)
                             .main_ce /
                         double(M);
            loss.on_block_backward = nullptr;
          }
        }
        // The next step's batch, as `dseek train` peeks at it (made while the GPU runs): the
        // update takes the rows of the embedding its first forward looks up first
        // (AdamW::step_async's next_lookup).
        const bool more = s + 1 < o.warmup + o.steps;
        if (more) next = make_batch();
        sync(device);
        const auto b = Clock::now();
        // As `dseek train` steps: the clip factor folded into AdamW, which also re-rounds the
        // bf16 compute copies (no refresh_compute pass).
        // As `dseek train` on one process: the experts' zeros left to their wgrads, and on the GPU
        // the update queued on the background stream beside the next forward (--update async).
        // With --norm backward the clip factor stays on the GPU (GradClip) and the update is
        // queued before the norm is read, as in `dseek train`.
        const std::vector<int32_t> no_lookup;
        const std::vector<int32_t>& next_lookup = more ? next.inputs[0] : no_lookup;
        if (o.update == "async" && backward_norm) {
          const GradClip clip = backward_norm->clip(1.0);
          optimizer.step_async(o.lr, clip, /*defer_overwritten=*/o.zero == "defer", next_lookup);
          (void)clip.norm();
          backward_norm.reset();
        } else if (o.update == "async") {
          optimizer.step_async(o.lr, clip_factor(grad_norm(params), 1.0),
                               /*defer_overwritten=*/o.zero == "defer", next_lookup);
        } else {
          const float factor =
              clip_factor(backward_norm ? backward_norm->norm() : grad_norm(params), 1.0);
          backward_norm.reset();
          optimizer.step(o.lr, factor);
          params.zero_grad(/*defer_overwritten=*/o.zero == "defer");
        }
        sync(device);
        const auto c = Clock::now();
        std::fprintf(stderr, "step %lld: loss %.4f, %.1f ms\n", (long long)s, last_loss,
                     std::chrono::duration<double>(c - a).count() * 1e3);
        if (s < o.warmup) continue;
        fwd_bwd_s.push_back(std::chrono::duration<double>(b - a).count());
        optim_s.push_back(std::chrono::duration<double>(c - b).count());
        step_s.push_back(std::chrono::duration<double>(c - a).count());
      }
      const double step = median(step_s);
      const double tps = double(tokens) / step;
      row.update({{"step_ms", step * 1e3},
                  {"fwd_bwd_ms", median(fwd_bwd_s) * 1e3},
                  {"optim_ms", median(optim_s) * 1e3},
                  {"tokens_per_s", tps},
                  {"tflops", tps * flops_per_token / 1e12},
                  {"loss", last_loss},
                  {"steps", o.steps}});
      std::printf("\n| impl | ms/step (fwd+bwd + optim) | tokens/s | model TFLOP/s | loss |\n");
      std::printf("| --- | --- | --- | --- | --- |\n");
      std::printf("| dseek %s%s | %.1f (%.1f + %.1f) | %.0f | %.1f | %.3f |\n", o.dtype.c_str(),
                  o.precision == "fp8" ? "+fp8" : "", step * 1e3, median(fwd_bwd_s) * 1e3,
                  median(optim_s) * 1e3, tps, tps * flops_per_token / 1e12, last_loss);
      std::printf("medians of %lld steps after %lld warm-up; ln(vocab) = %.3f; update %s\n",
                  (long long)o.steps, (long long)o.warmup, std::log(double(config.vocab_size)),
                  o.update == "async" ? "async (overlapped with the next forward)" : "sync");
      if (peak > 0)
        std::printf("MFU against dseek's own bf16 GEMM (8192^3): %.1f%%\n",
                    100.0 * tps * flops_per_token / 1e12 / peak);
    } catch (const Error& e) {
      std::printf("\n| dseek %s | n/a (%s) |\n", o.dtype.c_str(), e.what());
      row["error"] = e.what();
    }
    results.end(pending, row);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_train_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
