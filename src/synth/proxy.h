// Proxy training: the quality of a synthesised operator as the validation loss of a tiny language
// model in which it replaces projections (Syno's "accuracy from a short proxy training").
//
//   ProxyResult r = proxy_train(op, vars, values, task);
//   r.val_loss vs r.baseline_val_loss (the same model with its dense projections), r.flops vs
//   r.baseline_flops, r.params vs r.baseline_params.
//
// The proxy: a DeepSeek-LLM-style dense decoder (model_type llama: RMSNorm, multi-head attention
// with RoPE, SwiGLU MLP; task.layers × d_model, d_ff, heads) over bytes (vocabulary 257: the 256
// byte values and an end-of-document token), trained with train::TrainModel and AdamW (β 0.9/0.95,
// weight decay 0.1, clip 1.0, linear warm-up then cosine to 10%) for task.steps steps of
// task.batch random windows of task.seq_len tokens, on the bundled corpus: the `fortunes` text
// that the quick start (scripts/demo.sh) trains on, documents separated by "%" lines. Every 20th
// document is held out; the validation loss is the mean next-byte cross-entropy (nats) over
// task.val_sequences windows spread evenly over the held-out text (the same windows for every
// candidate and seed).
//
// task.kind: "lm-proj" replaces mlp.up_proj of every layer ([T, d_model] → [T, d_ff]);
// "lm-ffn" replaces all three projections of every MLP (gate, up: [T, d_model] → [T, d_ff]; down:
// [T, d_ff] → [T, d_model]) — the same operator at both shapes, as Syno replaces every layer of a
// kind with one operator. The operator is fitted to each shape as train/synth_override.h says:
// `values` itself when it gives that shape, else (input [T, X], output [T, Y]) `values` with
// X = d_in and Y = d_out, so a search passes the valuation of its coefficients (rank, groups) and
// the layer sizes follow the proxy. The operator's weights start as train/synth_override.h says
// (the dense layer's output scale).
//
// Deterministic: the result is a function of (op, values, task) for a given build and thread
// count (task.seed fixes the initialisation and the batches). The baseline (dense projections, same
// seeds, same data) is computed once per task and process and cached. The default task trains one
// candidate in about 5 s of one core (300 steps of 512 tokens); task.repeats multiplies that.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "synth/operator.h"
#include "synth/size.h"

namespace dseek::synth {

struct ProxyTask {
  std::string kind = "lm-proj";  // lm-proj | lm-ffn
  int64_t steps = 300;
  uint64_t seed = 0;
  // Runs with seeds seed, seed + 1, ..., seed + repeats − 1, losses averaged (for the operator
  // and the baseline alike): the init of the replaced projections alone moves the validation loss
  // of one run by about ±2% (docs/SYNTH.md, Proxy training), so comparisons need a few.
  int64_t repeats = 1;
  // The model.
  int64_t d_model = 64, d_ff = 192, layers = 2, heads = 2;
  // Training.
  int64_t seq_len = 64, batch = 8, warmup = 20;
  double lr = 1e-2;
  int64_t val_sequences = 256;  // windows of seq_len held-out tokens (16 KiB by default)
  // The corpus: text files or directories (every regular file below, sorted), documents
  // separated by lines holding only `separator`.
  std::string corpus = "/usr/share/games/fortunes";
  std::string separator = "%";

  // Every field, for cache keys and reports.
  std::string key() const;
};

struct ProxyResult {
  // Means over the task's repeats:
  double val_loss = 0.0;           // after task.steps steps, nats per byte
  double train_loss = 0.0;         // cross-entropy of the last step
  double baseline_val_loss = 0.0;  // the dense model's val_loss
  // Per token, summed over every replaced projection of the model (synth/cost.h FLOPs, 2 per
  // multiply-add), and those of the dense projections they replace.
  int64_t params = 0, flops = 0;
  int64_t baseline_params = 0, baseline_flops = 0;
  int64_t projections = 0;  // replaced projections
  double seconds = 0.0;     // wall time of this candidate's training and validation
  // The baseline's wall time when this call computed it; 0 when it came from the cache.
  double baseline_seconds = 0.0;
  // Per seed (seed, seed + 1, ...). Seed s's operator run and baseline run are paired: they share
  // the data order and the init of every weight but the replaced ones, so the relative difference
  // is taken per seed and averaged (paired_relative_diff) — the quality --quality lm reports.
  std::vector<double> val_losses, baseline_val_losses;
  double rel_diff = 0.0;     // mean over seeds of val_loss_s / baseline_val_loss_s − 1
  double rel_diff_se = 0.0;  // its standard error (0 for one seed)
};

// The mean of d_s and its standard error sd(d) / √n (sample sd; 0 for n = 1). Throws if d is
// empty.
struct PairedDiff {
  double mean = 0.0, se = 0.0;
};
PairedDiff mean_and_se(const std::vector<double>& d);
// mean_and_se of d_s = op[s] / base[s] − 1. Throws if the sizes differ or are 0.
PairedDiff paired_relative_diff(const std::vector<double>& op, const std::vector<double>& base);

// Trains the proxy with `op` (complete, token-wise, over `vars`) in task.kind's projections.
// Throws dseek::Error when the operator does not fit the proxy's shapes, the task is invalid or
// the corpus cannot be read.
ProxyResult proxy_train(const Operator& op, const Vars& vars, const Valuation& values,
                        const ProxyTask& task);

// The dense baseline of `task` alone: {val_loss, train_loss, seconds} in a ProxyResult whose
// operator fields describe the dense projections (cached as above).
ProxyResult proxy_baseline(const ProxyTask& task);

}  // namespace dseek::synth
