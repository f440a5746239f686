// Proxy training of a synthesised operator in a tiny byte-level language model (see proxy.h).
#include "synth/proxy.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>

#include "core/error.h"
#include "core/rng.h"
#include "data/corpus_reader.h"
#include "synth/enumerate.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/synth_override.h"
#include "train/train_model.h"

namespace dseek::synth {
namespace fs = std::filesystem;
namespace {

constexpr int32_t kEndOfDocument = 256;
constexpr int64_t kVocab = 257;
constexpr int64_t kHeldOutEvery = 20;  // every 20th document is validation text

struct Corpus {
  std::vector<int32_t> train, val;  // bytes, each document followed by kEndOfDocument
};

// The corpus's files: a directory gives its regular files below it, sorted, without the strfile
// indexes of the fortunes package (*.dat, binary) and its *.u8 copies (as scripts/demo.sh).
std::vector<std::string> corpus_files(const std::string& corpus) {
  std::vector<std::string> files;
  DSEEK_CHECK(fs::exists(corpus), "[proxy] corpus {}: no such file or directory", corpus);
  if (!fs::is_directory(corpus)) return {corpus};
  for (const auto& e : fs::recursive_directory_iterator(corpus)) {
    if (!e.is_regular_file()) continue;
    const std::string ext = e.path().extension().string();
    if (ext == ".dat" || ext == ".u8") continue;
    files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  DSEEK_CHECK(!files.empty(), "[proxy] corpus {}: no text files", corpus);
  return files;
}

// Read once per (corpus, separator) and process.
const Corpus& load_corpus(const std::string& path, const std::string& separator) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Corpus>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[path + '\n' + separator];
  if (slot) return *slot;
  auto corpus = std::make_unique<Corpus>();
  CorpusOptions options;
  options.separator_line = separator;
  CorpusReader reader(corpus_files(path), options);
  CorpusPiece piece;
  std::string doc;
  int64_t index = 0;
  while (reader.next(piece)) {
    doc += piece.text;
    if (!piece.document_end) continue;
    std::vector<int32_t>& out =
        index++ % kHeldOutEvery == kHeldOutEvery - 1 ? corpus->val : corpus->train;
    for (unsigned char ch : doc) out.push_back(int32_t(ch));
    out.push_back(kEndOfDocument);
    doc.clear();
  }
  slot = std::move(corpus);
  return *slot;
}

ModelConfig proxy_config(const ProxyTask& t) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = kVocab;
  c.hidden_size = t.d_model;
  c.intermediate_size = t.d_ff;
  c.num_hidden_layers = t.layers;
  c.num_attention_heads = t.heads;
  c.num_key_value_heads = t.heads;
  c.head_dim = t.d_model / t.heads;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = std::max<int64_t>(t.seq_len, 128);
  c.torch_dtype = "float32";
  c.bos_token_id = -1;
  c.eos_token_ids = {kEndOfDocument};
  validate_model_config(c, "proxy model");
  return c;
}

void check_task(const ProxyTask& t) {
  DSEEK_CHECK(t.kind == "lm-proj" || t.kind == "lm-ffn",
              "[proxy] task.kind: '{}' is not lm-proj or lm-ffn", t.kind);
  auto positive = [](int64_t v, const char* what) {
    DSEEK_CHECK(v > 0, "[proxy] task.{}: must be positive, got {}", what, v);
  };
  positive(t.steps, "steps");
  positive(t.repeats, "repeats");
  positive(t.d_model, "d_model");
  positive(t.d_ff, "d_ff");
  positive(t.layers, "layers");
  positive(t.heads, "heads");
  positive(t.seq_len, "seq_len");
  positive(t.batch, "batch");
  positive(t.val_sequences, "val_sequences");
  DSEEK_CHECK(t.warmup >= 0 && t.warmup <= t.steps, "[proxy] task.warmup: {} outside [0, {}]",
              t.warmup, t.steps);
  DSEEK_CHECK(t.d_model % t.heads == 0 && (t.d_model / t.heads) % 2 == 0,
              "[proxy] task.heads: {} must divide d_model {} into even head dims", t.heads,
              t.d_model);
  DSEEK_CHECK(t.lr > 0, "[proxy] task.lr: must be > 0, got {}", t.lr);
}

struct RunResult {
  double val_loss = 0, train_loss = 0, seconds = 0;
  std::vector<double> val_losses;  // per seed (run_proxy)
};

// Trains the proxy model (with `synth` in its projections when given) and validates it: one seed.
RunResult run_once(const ProxyTask& task, train::SynthOverride* synth) {
  const auto t0 = std::chrono::steady_clock::now();
  const Corpus& corpus = load_corpus(task.corpus, task.separator);
  const int64_t T = task.seq_len, B = task.batch;
  const int64_t train_n = int64_t(corpus.train.size()), val_n = int64_t(corpus.val.size());
  DSEEK_CHECK(train_n > T + 1 && val_n > T + 1,
              "[proxy] corpus {}: {} training and {} held-out bytes, need more than seq_len + 1 = "
              "{} of each",
              task.corpus, train_n, val_n, T + 1);
  const ModelConfig config = proxy_config(task);
  const double init_std = 0.02;
  train::ParamSet params;
  train::TrainModel::init_params(config, task.seed, init_std, params);
  if (synth) synth->replace_params(params, task.seed, init_std);
  train::TrainModel model(config, params, train::ModelPart(), synth);
  train::AdamW optimizer(params, {0.9, 0.95, 1e-8, 0.1});
  train::LrSchedule schedule;
  schedule.kind = "cosine";
  schedule.peak_lr = task.lr;
  schedule.min_lr = task.lr * 0.1;
  schedule.warmup_steps = task.warmup;
  schedule.total_steps = task.steps;
  const train::LossOptions options;  // no MTP, no MoE in a llama model

  // Windows of T + 1 tokens: inputs are the first T, targets the last T.
  auto window = [&](const std::vector<int32_t>& src, int64_t start, std::vector<int32_t>& in,
                    std::vector<int32_t>& tg) {
    in.insert(in.end(), src.begin() + start, src.begin() + start + T);
    tg.insert(tg.end(), src.begin() + start + 1, src.begin() + start + T + 1);
  };
  Rng rng(task.seed ^ 0x70726f7879ULL);  // the batches' own stream ("proxy")
  RunResult r;
  for (int64_t s = 0; s < task.steps; ++s) {
    std::vector<int32_t> in, tg;
    for (int64_t b = 0; b < B; ++b)
      window(corpus.train, int64_t(rng.next_u64() % uint64_t(train_n - T)), in, tg);
    const train::SequenceLosses l = model.forward_backward(in, tg, options, 1.0f, T);
    const double norm = train::grad_norm(params);
    optimizer.step(schedule.at(s), train::clip_factor(norm, 1.0));
    params.zero_grad();
    r.train_loss = l.main_ce;
  }
  // Validation: val_sequences windows evenly spaced over the held-out text, B at a time.
  const int64_t n = task.val_sequences;
  double sum = 0;
  for (int64_t k0 = 0; k0 < n; k0 += B) {
    std::vector<int32_t> in, tg;
    const int64_t nb = std::min(B, n - k0);
    for (int64_t k = k0; k < k0 + nb; ++k) window(corpus.val, k * (val_n - T - 1) / n, in, tg);
    sum += model.forward(in, tg, options, T).main_ce * double(nb);
  }
  r.val_loss = sum / double(n);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// The mean over the task's seeds.
RunResult run_proxy(const ProxyTask& task, train::SynthOverride* synth) {
  RunResult mean;
  for (int64_t k = 0; k < task.repeats; ++k) {
    ProxyTask one = task;
    one.seed = task.seed + uint64_t(k);
    const RunResult r = run_once(one, synth);
    mean.val_loss += r.val_loss / double(task.repeats);
    mean.val_losses.push_back(r.val_loss);
    mean.train_loss += r.train_loss / double(task.repeats);
    mean.seconds += r.seconds;
  }
  return mean;
}

std::string site_of(const ProxyTask& task) {
  return task.kind == "lm-proj" ? "mlp.up_proj" : "mlp";
}

// The baseline of a task, once per process.
RunResult cached_baseline(const ProxyTask& task, bool& computed) {
  static std::mutex mutex;
  static std::map<std::string, RunResult> cache;
  const std::string key = task.key();
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    computed = it == cache.end();
    if (!computed) return it->second;
  }
  const RunResult r = run_proxy(task, nullptr);  // concurrent first calls may both compute it
  std::lock_guard<std::mutex> lock(mutex);
  cache.emplace(key, r);
  return r;
}

// The dense projections' per-token costs for the task's site.
void dense_costs(const ProxyTask& task, ProxyResult& out) {
  const int64_t per = task.d_model * task.d_ff;
  const int64_t count = task.kind == "lm-proj" ? task.layers : 3 * task.layers;
  out.projections = count;
  out.baseline_params = per * count;
  out.baseline_flops = 2 * per * count;
}

}  // namespace

PairedDiff mean_and_se(const std::vector<double>& d) {
  DSEEK_CHECK(!d.empty(), "[proxy] mean of no paired differences");
  const double n = double(d.size());
  PairedDiff out;
  for (double x : d) out.mean += x / n;
  if (d.size() > 1) {
    double ss = 0.0;
    for (double x : d) ss += (x - out.mean) * (x - out.mean);
    out.se = std::sqrt(ss / (n - 1.0) / n);
  }
  return out;
}

PairedDiff paired_relative_diff(const std::vector<double>& op, const std::vector<double>& base) {
  DSEEK_CHECK(!op.empty() && op.size() == base.size(),
              "[proxy] paired difference of {} and {} losses", op.size(), base.size());
  std::vector<double> d;
  for (size_t s = 0; s < op.size(); ++s) d.push_back(op[s] / base[s] - 1.0);
  return mean_and_se(d);
}

std::string ProxyTask::key() const {
  return fmt::format(
      "kind={} steps={} seed={} repeats={} d_model={} d_ff={} layers={} heads={} seq_len={} "
      "batch={} warmup={} lr={} val_sequences={} corpus={} separator={}",
      kind, steps, seed, repeats, d_model, d_ff, layers, heads, seq_len, batch, warmup, lr,
      val_sequences, corpus, separator);
}

ProxyResult proxy_baseline(const ProxyTask& task) {
  check_task(task);
  bool computed = false;
  const RunResult base = cached_baseline(task, computed);
  ProxyResult out;
  dense_costs(task, out);
  out.params = out.baseline_params;
  out.flops = out.baseline_flops;
  out.val_loss = out.baseline_val_loss = base.val_loss;
  out.val_losses = out.baseline_val_losses = base.val_losses;
  out.train_loss = base.train_loss;
  out.seconds = base.seconds;
  out.baseline_seconds = computed ? base.seconds : 0.0;
  return out;
}

ProxyResult proxy_train(const Operator& op, const Vars& vars, const Valuation& values,
                        const ProxyTask& task) {
  check_task(task);
  DSEEK_CHECK(int(values.size()) == vars.count(),
              "[proxy] a valuation of {} values for {} variables", values.size(), vars.count());
  OperatorRecord record;
  record.spec.vars = vars;
  record.spec.valuations = {values};
  for (const Dim& d : op.input) record.spec.input.push_back(d.size);
  record.spec.output = op.output;
  record.op = op;
  train::SynthOverride synth(std::move(record), "proxy operator", site_of(task),
                             proxy_config(task));

  ProxyResult out;
  dense_costs(task, out);
  DSEEK_CHECK(int64_t(synth.replaced().size()) == out.projections,
              "[proxy] {} projections replaced, expected {}", synth.replaced().size(),
              out.projections);
  for (const std::string& name : synth.replaced()) {
    const train::SynthOverride::Cost c = synth.cost(name);
    out.params += c.params;
    out.flops += c.flops;
  }
  bool computed = false;
  const RunResult base = cached_baseline(task, computed);
  out.baseline_val_loss = base.val_loss;
  out.baseline_seconds = computed ? base.seconds : 0.0;
  const RunResult r = run_proxy(task, &synth);
  out.val_loss = r.val_loss;
  out.train_loss = r.train_loss;
  out.seconds = r.seconds;
  out.val_losses = r.val_losses;
  out.baseline_val_losses = base.val_losses;
  const PairedDiff d = paired_relative_diff(r.val_losses, base.val_losses);
  out.rel_diff = d.mean;
  out.rel_diff_se = d.se;
  return out;
}

}  // namespace dseek::synth
