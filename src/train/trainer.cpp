#include "train/trainer.h"

#include <malloc.h>
#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <sstream>

#include "core/cuda.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/loader.h"
#include "data/token_shards.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"
#include "model/moe_balance.h"
#include "ops/fp8_train.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/dpo.h"
#include "train/dpo_reference.h"
#include "train/expert_parallel.h"
#include "train/init_from.h"
#include "train/model_overrides.h"
#include "train/optimizer.h"
#include "train/pipeline_parallel.h"
#include "train/scaling_law.h"
#include "train/schedule.h"
#include "train/synth_override.h"
#include "train/train_batches.h"
#include "train/train_model.h"

namespace dseek::train {
namespace fs = std::filesystem;
namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
}

// Installs SIGINT/SIGTERM handlers for the lifetime of a run and restores the old ones after.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal.store(0);
    old_int_ = std::signal(SIGINT, on_stop_signal);
    old_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }

 private:
  void (*old_int_)(int);
  void (*old_term_)(int);
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[train] {}: cannot read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Keeps the lines of metrics.jsonl whose step is ≤ last_step (a resumed run rewrites the rest).
void truncate_metrics(const fs::path& path, int64_t last_step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_text(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut by a crash
    }
    if (j.contains("step") && j["step"].get<int64_t>() <= last_step) kept += line + "\n";
  }
  write_file_atomic(path.string(), kept);
}

void copy_tokenizer(const std::string& source, const fs::path& dest) {
  fs::create_directories(dest);
  const fs::path src(source);
  if (fs::is_directory(src)) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json"})
      if (fs::exists(src / name))
        fs::copy_file(src / name, dest / name, fs::copy_options::overwrite_existing);
  } else {
    fs::copy_file(src, dest / "tokenizer.json", fs::copy_options::overwrite_existing);
  }
}

// MaxVio of each MoE layer's expert load (0 for a layer that routed no token) and their mean over
// the layers that routed tokens: an MTP module that did not run (λ = 0) has no balance to count.
double mean_max_violation(const std::vector<std::vector<int64_t>>& load,
                          std::vector<double>& per_layer) {
  per_layer.clear();
  double sum = 0;
  int64_t active = 0;
  for (const auto& l : load) {
    int64_t routed = 0;
    for (int64_t c : l) routed += c;
    per_layer.push_back(routed > 0 ? max_violation(l) : 0.0);
    sum += per_layer.back();
    active += routed > 0;
  }
  return active > 0 ? sum / double(active) : 0.0;
}

std::string fmt_lr(double lr) {
  return fmt::format("{:.2e}", lr);
}

// Data parallelism's per-step exchange: every rank's losses, stop request and expert loads summed
// in one f64 all-reduce (loads are integer counts, exact in f64).
struct StepTotals {
  double total = 0, ce = 0, aux = 0, stop = 0;
  std::vector<double> mtp;
  std::vector<std::vector<int64_t>> load;
};

void all_reduce_totals(dist::ProcessGroup& group, StepTotals& t, size_t mtp_depths) {
  t.mtp.resize(std::max(t.mtp.size(), mtp_depths), 0.0);
  std::vector<double> buf = {t.total, t.ce, t.aux, t.stop};
  buf.insert(buf.end(), t.mtp.begin(), t.mtp.end());
  for (const auto& l : t.load) buf.insert(buf.end(), l.begin(), l.end());
  group.all_reduce(buf);
  t.total = buf[0];
  t.ce = buf[1];
  t.aux = buf[2];
  t.stop = buf[3];
  size_t at = 4;
  for (double& m : t.mtp) m = buf[at++];
  for (auto& l : t.load)
    for (int64_t& c : l) c = int64_t(std::llround(buf[at++]));
}

// Counted (not ignored) targets of a micro-batch for the main head ([0]) and each MTP depth k
// ([k]: the targets from the k-th of each sequence on), SFT's exact means' weights.
std::vector<double> ce_target_counts(const MicroBatch& batch, size_t depths) {
  std::vector<double> counts(depths + 1, 0.0);
  int64_t tok = 0;
  for (const int64_t n : batch.segments) {
    for (int64_t j = 0; j < n; ++j)
      if (batch.targets[size_t(tok + j)] != ops::kIgnoreIndex)
        for (size_t k = 0; k <= depths && int64_t(k) <= j; ++k) counts[k] += 1.0;
    tok += n;
  }
  return counts;
}

// The exact mean over a batch split into parts (ranks' rows, micro-batches, pipelines): each
// part's loss is its own mean, so part i weighs count_i·n / Σ count, where n is the number of
// parts (the loss scale already divides by it) and Σ runs over `counts` and then over `group`
// (nullptr: `counts` is the whole batch). One entry per head: SFT's counted targets per depth,
// DPO's pairs.
void counts_to_shares(std::span<std::vector<double>> counts, dist::ProcessGroup* group, double n) {
  std::vector<double> global(counts.front().size(), 0.0);
  for (const std::vector<double>& c : counts)
    for (size_t k = 0; k < global.size(); ++k) global[k] += c[k];
  if (group) group->all_reduce(std::span<double>(global));
  for (std::vector<double>& c : counts)
    for (size_t k = 0; k < global.size(); ++k) c[k] = global[k] > 0 ? c[k] * n / global[k] : 0.0;
}

// DPO's per-token weights for LossOptions::token_weights: dpo_loss weighs the pairs for their
// own mean, scaled by `share` (counts_to_shares of the pairs) for the batch's mean. Adds the
// pairs' metrics to `stats`; pairs, refs and stats must outlive the forward.
std::function<std::vector<float>(const std::vector<double>&)> dpo_token_weights(
    const std::vector<DpoPair>& pairs, const std::vector<std::pair<double, double>>& refs,
    double beta, double share, DpoStats& stats) {
  return [&pairs, &refs, beta, share = float(share), &stats](const std::vector<double>& logp) {
    std::vector<float> weights;
    stats.add(dpo_loss(logp, pairs, refs, beta, weights));
    if (share != 1.0f)
      for (float& w : weights) w *= share;
    return weights;
  };
}

// DPO's step metrics are sums over pairs: summed over the ranks, they are the global batch's.
void all_reduce_dpo(dist::ProcessGroup& group, DpoStats& d) {
  double buf[8] = {d.loss,     d.reward_chosen, d.reward_rejected, d.margin,
                   d.accuracy, d.logp_chosen,   d.logp_rejected,   double(d.pairs)};
  group.all_reduce(std::span<double>(buf, 8));
  d = {buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], int64_t(std::llround(buf[7]))};
}

}  // namespace

TrainSummary run_training(TrainConfig cfg, bool resume) {
  DSEEK_CHECK(!cfg.out.empty(), "[train] run.out: a run directory is required (--out)");
  DSEEK_CHECK(!cfg.data.empty(),
              "[train] data.dir: a prepared data directory is required (--data)");
  if (cfg.threads > 0) omp_set_num_threads(int(cfg.threads));
  // Every step allocates and frees the same large activations; keeping freed memory in the heap
  // (instead of mmap/munmap per tensor) saves a page fault per page per step.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // Data parallelism (train/data_parallel.h): rank r trains on sequences [r·B/N, (r+1)·B/N) of
  // every micro-batch; rank 0 alone writes the run directory and prints.
  dist::ProcessGroup& group = dist::world();
  const int ranks = group.size();
  const bool lead = group.rank() == 0;
  group.set_deterministic(cfg.dist_deterministic != 0);
  group.set_all_reduce_algorithm(cfg.dist_all_reduce == "hfreduce"
                                     ? dist::AllReduceAlgorithm::HfReduce
                                     : dist::AllReduceAlgorithm::Mpi);
  const fs::path run_dir(cfg.out);
  const fs::path ckpt_root = run_dir / "checkpoints";
  std::string latest;
  if (resume) {
    latest = find_latest_checkpoint(run_dir.string());
    if (latest.empty() && lead)
      fmt::print(stderr, "[train] {}: no checkpoint to resume from; starting fresh\n",
                 run_dir.string());
  } else {
    DSEEK_CHECK(!fs::exists(ckpt_root) || fs::is_empty(ckpt_root),
                "[train] {}: the run directory already has checkpoints; pass --resume to continue "
                "it or choose another --out",
                run_dir.string());
  }

  DSEEK_CHECK(cfg.task == "pretrain" || cfg.compute_budget == 0,
              "[train] train.compute_budget: only for train.task pretrain");
  // sft/dpo rows have the data's length: data.seq_len follows it.
  TrainBatches batches(cfg.task, cfg.data, cfg.seq_len, cfg.batch_size, uint64_t(cfg.seed),
                       cfg.val_fraction);
  cfg.seq_len = batches.seq_len();
  const int64_t vocab = batches.vocab_size();

  // Model shape: the run's own config.json when resuming, else an HF config or a preset.
  ModelConfig model_config;
  if (!latest.empty() && fs::exists(run_dir / "config.json")) {
    model_config = load_model_config((run_dir / "config.json").string());
  } else if (!cfg.model_config.empty()) {
    model_config = load_model_config(cfg.model_config);
  } else if (!cfg.init_from.empty()) {
    model_config = init_from_model_config(cfg.init_from);
  } else {
    model_config = preset_model_config(cfg.preset, vocab);
  }
  if (latest.empty()) {
    // Rope scaling / context overrides (a resumed run keeps the config.json it recorded).
    apply_model_overrides(cfg, model_config);
    // Generation stops at the data's EOS; export writes these ids into config.json.
    if (batches.bos_id() >= 0) model_config.bos_token_id = batches.bos_id();
    if (batches.eos_id() >= 0) model_config.eos_token_ids = {batches.eos_id()};
  }
  DSEEK_CHECK(model_config.vocab_size >= vocab,
              "[train] model vocab_size {} is smaller than the data's vocabulary {} ({})",
              model_config.vocab_size, vocab, cfg.data);

  if (cfg.compute_budget > 0) {
    const ComputeBudgetChoice choice = choose_from_compute_budget(
        cfg.compute_budget, model_config.num_hidden_layers, model_config.hidden_size, cfg.seq_len);
    if (lead) fmt::print(stderr, "[train] compute budget: {}\n", choice.describe());
    cfg.batch_size = choice.batch_sequences;
    cfg.grad_accum = 1;
    cfg.lr = choice.lr;
    cfg.steps = choice.steps;
  }
  validate_train_config(cfg);
  // Pipeline parallelism (train/pipeline_parallel.h): one stage of the layers per rank.
  const bool pipeline = cfg.pipeline_parallel > 1;
  PipelineLayout stage_layout;
  if (pipeline) {
    const int64_t P = cfg.pipeline_parallel;
    make_pipeline_layout(model_config, int(P), 0);  // first of all: throws unless P <= layers
    DSEEK_CHECK(cfg.expert_parallel == 1,
                "[train] dist.pipeline_parallel {}: cannot be combined with dist.expert_parallel "
                "yet",
                P);
    DSEEK_CHECK(cfg.device != "cuda",
                "[train] dist.pipeline_parallel {}: runs on CPU ranks only (GPU stages are not "
                "built yet; data parallelism is); use train.device cpu",
                P);
    DSEEK_CHECK(cfg.synth_file.empty(),
                "[train] dist.pipeline_parallel {}: cannot be combined with train.synth_override "
                "yet",
                P);
    DSEEK_CHECK(!(model_config.tie_word_embeddings && cfg.compute_dtype == "bf16"),
                "[train] dist.pipeline_parallel {}: tied embeddings with train.compute_dtype "
                "bf16 are not pipelined (the last stage's copy of the embedding has no bf16 "
                "compute copy); use compute_dtype f32",
                P);
    DSEEK_CHECK(ranks % P == 0,
                "[train] dist.pipeline_parallel {}: must divide the number of MPI ranks ({}): "
                "the ranks form pipelines of {} stages, data parallel across them",
                P, ranks, P);
    const int64_t D = ranks / P;
    DSEEK_CHECK(cfg.batch_size % (D * cfg.micro_batches) == 0,
                "[train] train.batch_size {}: must be divisible by the {} pipelines times "
                "dist.micro_batches {} (each pipeline splits its slice of every batch into "
                "micro-batches)",
                cfg.batch_size, D, cfg.micro_batches);
    stage_layout = make_pipeline_layout(model_config, int(P), group.rank() % int(P), int(D),
                                        group.rank() / int(P));
  } else {
    DSEEK_CHECK(cfg.micro_batches == 1,
                "[train] dist.micro_batches {}: only pipeline parallelism splits batches into "
                "micro-batches (dist.pipeline_parallel > 1); use train.grad_accum to accumulate "
                "gradients otherwise",
                cfg.micro_batches);
  }

  // train.device cuda: parameters, gradients, AdamW and the layers on the GPU. N ranks: one GPU
  // each (local rank l of a node takes device l), data parallel through NCCL.
  const Device device = cfg.device == "cuda" ? Device::CUDA : Device::CPU;
  std::unique_ptr<dist::ProcessGroup> nccl;  // outlives the DataParallel that uses it
  if (device == Device::CUDA) {
    if (ranks > 1) {
      DSEEK_CHECK(dist::nccl_available(),
                  "[train] train.device cuda on {} ranks needs NCCL, and this dseek was built "
                  "without it (cmake finds it in the CUDA toolkit, NCCL_ROOT or the nvidia-nccl "
                  "Python package)",
                  ranks);
      dist::select_rank_gpu(group);  // before anything starts the CUDA runtime
    }
    cuda::require("train.device cuda");
    if (ranks > 1) {
      nccl = dist::make_nccl_group(group);
      nccl->set_deterministic(group.deterministic());
      nccl->set_all_reduce_algorithm(group.all_reduce_algorithm());
    }
  }
  // Expert parallelism (train/expert_parallel.h): the routed experts spread over every rank.
  ExpertParallel ep;  // after nccl: its subgroups go first
  const bool expert_parallel = cfg.expert_parallel > 1;
  if (expert_parallel) {
    DSEEK_CHECK(ranks % cfg.expert_parallel == 0,
                "[train] dist.expert_parallel {}: must divide the number of MPI ranks ({})",
                cfg.expert_parallel, ranks);
    // On GPUs the token exchanges and the experts' replicas run on NCCL subgroups.
    ep = make_expert_parallel(nccl ? *nccl : group, model_config, int(cfg.expert_parallel));
    const int64_t limit = node_limit(model_config, ep.ranks());
    DSEEK_CHECK(cfg.ep_max_ranks == 0 || limit <= cfg.ep_max_ranks,
                "[train] dist.ep_max_ranks {}: the gate ({} with n_group {}, topk_group {}) can "
                "send a token to {} of the {} ranks; node-limited routing needs a group-limited "
                "gate whose topk_group groups lie on at most {} ranks (n_group a multiple of the "
                "ranks, topk_group <= {})",
                cfg.ep_max_ranks, model_config.topk_method, model_config.n_group,
                model_config.topk_group, limit, ep.ranks(), cfg.ep_max_ranks, cfg.ep_max_ranks);
  }

  if (ranks > 1 && !pipeline) {
    DSEEK_CHECK(cfg.batch_size % ranks == 0,
                "[train] train.batch_size {}: must be divisible by the {} ranks (each rank takes "
                "an equal slice of every micro-batch)",
                cfg.batch_size, ranks);
  }

  // Synthesised operator in place of MLP projections (train/synth_override.h). The run records it;
  // a resumed run must bring the same one.
  std::unique_ptr<SynthOverride> synth;
  if (!cfg.synth_file.empty())
    synth = SynthOverride::load(cfg.synth_file, cfg.synth_site, model_config);
  const fs::path synth_record = run_dir / "synth_operator.json";
  if (!latest.empty()) {
    const bool recorded = fs::exists(synth_record);
    DSEEK_CHECK(recorded || !synth,
                "[train] {}: the run was trained without a synthesised operator; resume it without "
                "train.synth_override",
                run_dir.string());
    DSEEK_CHECK(!recorded || synth,
                "[train] {}: the run was trained with the synthesised operator in {}; resume it "
                "with the same train.synth_override (file and site)",
                run_dir.string(), synth_record.string());
    DSEEK_CHECK(!recorded || read_text(synth_record) == synth->json(),
                "[train] {}: train.synth_override.file {} is not the operator the run was "
                "trained with ({})",
                run_dir.string(), cfg.synth_file, synth_record.string());
  }

  if (lead) {
    fs::create_directories(run_dir);
    if (latest.empty() && synth) write_file_atomic(synth_record.string(), synth->json());
    if (latest.empty()) {
      write_file_atomic((run_dir / "config.json").string(), model_config_to_json(model_config));
      if (!cfg.tokenizer.empty()) copy_tokenizer(cfg.tokenizer, run_dir / "tokenizer");
    }
    write_file_atomic((run_dir / "train_config.json").string(), train_config_to_json(cfg));
  }

  ParamSet params;
  if (pipeline)
    PipelineStage::init_stage_params(model_config, stage_layout, uint64_t(cfg.seed), cfg.init_std,
                                     params);
  else
    TrainModel::init_params(model_config, uint64_t(cfg.seed), cfg.init_std, params);
  if (synth) synth->replace_params(params, uint64_t(cfg.seed), cfg.init_std);
  TrainModel model(model_config, params, pipeline ? stage_layout.held() : ModelPart(),
                   synth.get());
  std::unique_ptr<PipelineStage> stage;
  if (pipeline) stage = std::make_unique<PipelineStage>(group, stage_layout, model, params);
  const AdamWConfig adamw_config{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay,
                                 cfg.moment_dtype == "bf16" ? DType::BF16 : DType::F32};
  DSEEK_CHECK(adamw_config.moment_dtype == DType::F32 || ranks == 1,
              "[train] optim.moment_dtype bf16: one process only (the ZeRO-1, expert-parallel "
              "and pipeline optimizers keep and gather f32 moments); got {} MPI ranks",
              ranks);
  DSEEK_CHECK((cfg.expert_grad_dtype == "f32" && cfg.grad_dtype == "f32") || (ranks == 1 && !synth),
              "[train] optim.{} bf16: one process only, without a synthesised operator (the "
              "distributed optimizers reduce f32 gradients); got {} MPI ranks",
              cfg.grad_dtype == "bf16" ? "grad_dtype" : "expert_grad_dtype", ranks);
  // One process: AdamW over every parameter. N ranks: ZeRO-1, each rank the moments of its shard.
  // Pipelines: each stage's own parameters, AdamW with one pipeline, ZeRO-1 over the stage's
  // replicas with several.
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<DataParallel> dp;
  // Expert parallelism: the owned routed experts' AdamW; DataParallel leaves all experts out.
  std::unique_ptr<ExpertShard> experts;
  const int64_t bucket_elements = std::max<int64_t>(1, int64_t(cfg.dist_bucket_mb * 262144.0));
  if (ranks > 1 && !pipeline) {
    std::function<bool(const Param&)> exclude;
    if (expert_parallel) exclude = [](const Param& p) { return routed_expert_of(p.name) >= 0; };
    dp = std::make_unique<DataParallel>(nccl ? *nccl : group, params, adamw_config,
                                        model_config.num_hidden_layers, bucket_elements, exclude);
    if (expert_parallel) experts = std::make_unique<ExpertShard>(ep, params, adamw_config);
  } else if (stage && stage->replica_group()) {
    dp = std::make_unique<DataParallel>(*stage->replica_group(), params, adamw_config,
                                        model_config.num_hidden_layers, bucket_elements);
  } else {
    optimizer = std::make_unique<AdamW>(params, adamw_config);
  }
  params.set_compute_dtype(cfg.compute_dtype == "bf16" ? DType::BF16 : DType::F32);
  if (cfg.precision == "fp8") {  // FP8 GEMMs in the attention and MLP projections (docs/FP8.md)
    const int64_t fp8 = mark_fp8_linears(params);
    if (lead) fmt::print(stderr, "[train] fp8: {} projections run FP8 GEMMs\n", fp8);
  }

  if (cfg.compute_budget > 0)  // it chose the batch size
    batches = TrainBatches(cfg.task, cfg.data, cfg.seq_len, cfg.batch_size, uint64_t(cfg.seed),
                           cfg.val_fraction);

  int64_t step = 0, tokens_seen = 0;
  if (!latest.empty()) {
    const CheckpointData ck = load_checkpoint(latest);
    std::map<std::string, const Tensor*> by_name;
    for (const auto& [name, t] : ck.model) by_name[name] = &t;
    params.drop_fp8_images();  // the masters change below
    for (Param& p : params.all()) {
      auto it = by_name.find(p.name);
      DSEEK_CHECK(it != by_name.end(), "[train] {}: checkpoint lacks tensor '{}'", latest, p.name);
      DSEEK_CHECK(it->second->shape() == p.shape(),
                  "[train] {}: tensor '{}' has shape {}, the model needs {}", latest, p.name,
                  shape_str(it->second->shape()), shape_str(p.shape()));
      set_master_value(p, *it->second, p.name);
    }
    std::map<std::string, Tensor> opt_state(ck.optimizer.begin(), ck.optimizer.end());
    step = ck.state.at("step").get<int64_t>();
    const int64_t optimizer_steps = ck.state.at("optimizer_steps").get<int64_t>();
    if (dp)
      dp->load_state(opt_state, optimizer_steps);
    else
      optimizer->load_state(opt_state, optimizer_steps);
    if (experts) experts->load_state(opt_state, optimizer_steps);
    batches.seek(ck.state.at("loader"));
    tokens_seen = ck.state.value("tokens", int64_t(0));
    params.refresh_compute();
    if (lead) {
      truncate_metrics(run_dir / "metrics.jsonl", step);
      fmt::print(stderr, "[train] resumed from {} (step {}{})\n", latest, step,
                 ranks > 1 ? fmt::format(", {} ranks", ranks) : "");
    }
  } else {
    if (!cfg.init_from.empty()) {
      // Fine-tuning / continued training: the source's weights, a fresh optimizer, step 0.
      const std::string from = load_init_weights(cfg.init_from, params);
      params.refresh_compute();
      if (lead) fmt::print(stderr, "[train] initialised from {}\n", from);
    }
    if (lead) std::ofstream(run_dir / "metrics.jsonl", std::ios::trunc);
  }
  if (device == Device::CUDA) {
    // Built, loaded and rounded on the host as on the CPU; from here on everything stays on the
    // GPU (checkpoints copy to the host as they are written).
    params.to(device);
    if (optimizer) optimizer->to(device);
    if (lead) fmt::print(stderr, "[train] on the GPU: {}\n", cuda::describe());
    // One process's AdamW keeps the bf16-copied masters split (train/param.h): 2 bytes a
    // parameter less memory and update traffic, the same f32 masters. The distributed optimizers,
    // pipeline stages (whose checkpoints and embedding exchange read masters) and the synthesised
    // operators keep them whole; DSEEK_SPLIT_MASTERS=0 too.
    if (optimizer && !stage && !synth && split_masters_enabled()) {
      const int64_t split = params.split_masters();
      if (lead && split > 0)
        fmt::print(stderr,
                   "[train] split masters: {} matrices keep their f32 master as the bf16 copy and "
                   "the low 16 bits (DSEEK_SPLIT_MASTERS=0: whole)\n",
                   split);
    }
    if (optimizer && cfg.grad_dtype == "bf16") {
      const int64_t n = params.bf16_matrix_grads();
      if (lead) fmt::print(stderr, "[train] bf16 weight gradients: {} matrices\n", n);
    } else if (optimizer && cfg.expert_grad_dtype == "bf16") {
      const int64_t n = params.bf16_expert_grads();
      if (lead)
        fmt::print(stderr, "[train] bf16 expert gradients: {} routed experts' matrices\n", n);
    }
  }

  TrainSummary summary;
  summary.run_dir = run_dir.string();
  summary.first_step = summary.last_step = step;
  summary.unigram_entropy = batches.unigram_entropy();
  const nlohmann::json data_info = batches.info();
  if (lead) {
    nlohmann::ordered_json info;
    info["model_type"] = model_config.model_type;
    info["parameters"] = stage ? stage->model_parameters() : params.numel(true);
    for (const auto& [key, value] : data_info.items()) info[key] = value;
    info["unigram_entropy"] = summary.unigram_entropy;
    if (synth) {
      const SynthOverride::Cost cost = synth->cost(synth->replaced().front());
      info["synth_override"] = {{"file", cfg.synth_file},
                                {"site", cfg.synth_site},
                                {"projections", synth->replaced().size()},
                                {"params_per_projection", cost.params},
                                {"dense_params_per_projection", cost.dense_params},
                                {"flops_per_token", cost.flops},
                                {"dense_flops_per_token", cost.dense_flops}};
    }
    write_file_atomic((run_dir / "run.json").string(), info.dump(2) + "\n");
  }
  if (lead)
    fmt::print(
        stderr,
        "[train] {} ({} parameters), {} training tokens, unigram entropy {:.3f} nats/token\n",
        model_config.model_type,
        human_count(double(stage ? stage->model_parameters() : params.numel(true))),
        human_count(double(data_info["train_tokens"].get<int64_t>())), summary.unigram_entropy);
  if (lead && pipeline)
    fmt::print(stderr,
               "[train] pipeline parallel: {} stages of {} layers (stage 0: layers {}..{}), "
               "{} micro-batches of {} sequences per batch, 1F1B schedule{}\n",
               stage_layout.stages, model_config.num_hidden_layers, stage_layout.first_layer,
               stage_layout.last_layer - 1, cfg.micro_batches,
               cfg.batch_size / (stage_layout.replicas * cfg.micro_batches),
               stage_layout.replicas > 1
                   ? fmt::format("; {} pipelines, data parallel across them (ZeRO-1 over each "
                                 "stage's replicas, {} gradient buckets on stage 0)",
                                 stage_layout.replicas, dp->num_buckets())
                   : "");
  if (lead && ranks > 1 && !pipeline)
    fmt::print(stderr,
               "[train] data parallel: {} ranks ({}), {} sequences each per micro-batch, ZeRO-1 "
               "shards of {} parameters, {} gradient buckets, {} reductions ({})\n",
               ranks, nccl ? "nccl, one GPU each" : group.backend(), cfg.batch_size / ranks,
               human_count(double(dp->flat_size()) / ranks), dp->num_buckets(),
               group.deterministic() ? "deterministic"
               : nccl                ? "NCCL-ordered"
                                     : "MPI-ordered",
               nccl ? nccl->all_reduce_description() : group.all_reduce_description());
  if (lead && expert_parallel)
    fmt::print(stderr,
               "[train] expert parallel: {} routed experts per MoE layer over {} ranks ({} each), "
               "each token's experts on at most {} ranks{}\n",
               ep.experts, ep.ranks(), ep.per_rank(), node_limit(model_config, ep.ranks()),
               ep.replicas() > 1
                   ? fmt::format("; {} such groups, data-parallel across them", ep.replicas())
                   : "");
  if (step >= cfg.steps) {
    if (lead) fmt::print(stderr, "[train] already at step {} of {}\n", step, cfg.steps);
    return summary;
  }

  LrSchedule lr_schedule;
  lr_schedule.kind = cfg.schedule;
  lr_schedule.peak_lr = cfg.lr;
  lr_schedule.min_lr = cfg.lr * cfg.min_lr_ratio;
  lr_schedule.warmup_steps = std::min(cfg.warmup_steps, cfg.steps);
  lr_schedule.total_steps = cfg.steps;
  lr_schedule.decay_start = cfg.decay_start;
  const StepSchedule gamma = StepSchedule::parse(cfg.bias_update_speed);
  const StepSchedule lambda = StepSchedule::parse(cfg.mtp_lambda);
  const bool loss_free = model_config.topk_method == "noaux_tc";
  const int64_t T = cfg.seq_len, B = cfg.batch_size;
  // N ranks: each rank's gradient is of its slice's mean, scaled by 1/N, so their sum is the
  // gradient of the global batch mean.
  // Pipeline: each pipeline's slice of a batch in M micro-batches, each scaled by 1/M and by
  // 1/pipelines (summed over the pipelines: one process's gradient).
  const int64_t replicas = pipeline ? stage_layout.replicas : ranks;
  const float scale =
      pipeline
          ? float(1.0 / (double(cfg.grad_accum) * double(cfg.micro_batches) * double(replicas)))
          : float(1.0 / (double(cfg.grad_accum) * double(ranks)));
  const int64_t B_local = B / replicas;
  const int64_t val_count = std::min(cfg.eval_sequences, batches.num_validation_sequences());

  LossOptions loss_options;
  loss_options.balance.aux_loss = cfg.aux_loss;
  loss_options.balance.alpha = cfg.aux_alpha;
  loss_options.balance.devices = cfg.aux_devices;
  if (expert_parallel) loss_options.expert_parallel = &ep;

  // DPO: the reference is the model as it starts (model.init_from), scored once and cached.
  const bool dpo = cfg.task == "dpo";
  loss_options.token_logp = false;  // (DPO's token_weights and reference pass fill it anyway)
  ReferenceLogps reference;
  if (dpo) {
    const std::string ref_path = (run_dir / "reference_logps.json").string();
    if (!latest.empty() && fs::exists(ref_path)) {
      reference = load_reference_logps(ref_path, batches.num_pairs());
    } else {
      DSEEK_CHECK(step == 0, "[train] {}: resuming a DPO run needs its reference_logps.json",
                  run_dir.string());
      if (lead)
        fmt::print(stderr, "[train] dpo: reference log-probs of {} pairs{}\n", batches.num_pairs(),
                   ranks > 1 ? fmt::format(" over {} ranks", ranks) : "");
      reference = stage
                      ? compute_reference_logps(*stage, stage_layout, batches, loss_options, group)
                      : compute_reference_logps(model, batches, loss_options, group);
      if (lead) save_reference_logps(ref_path, reference);
      group.barrier();  // written before any rank could need it (a resume)
    }
  }

  std::ofstream metrics;
  if (lead) {
    metrics.open(run_dir / "metrics.jsonl", std::ios::app);
    DSEEK_CHECK(metrics.good(), "[train] {}: cannot append", (run_dir / "metrics.jsonl").string());
  }
  StopSignals signals;
  std::unique_ptr<Progress> progress;
  if (lead) {
    progress = std::make_unique<Progress>("train", cfg.steps, "step");
    progress->update(step);
  }
  const auto run_start = std::chrono::steady_clock::now();
  int64_t run_tokens = 0;

  auto save = [&](int64_t at_step) {
    CheckpointData ck;
    ck.step = at_step;
    // Expert parallelism: every expert's value from its owner into rank 0's copy (collective).
    if (experts) experts->gather_values();
    // N ranks: the moment shards gathered on rank 0 (pipelines: on each stage's replica 0;
    // collective), which alone writes; the barrier returns once the checkpoint is committed (its
    // rename) or rank 0 has failed (then MPI_Abort ends every rank).
    auto moments = dp ? dp->gather_state() : optimizer->state_tensors();
    if (stage) {
      // Every stage's values and moments on rank 0 (collective), in one process's order.
      stage->gather_checkpoint(moments, ck);
    } else {
      // A split master is joined one at a time and kept on the host, as the writer would.
      for (const Param& p : params.all())
        ck.model.emplace_back(p.name, p.split() ? master_value(p).to(Device::CPU) : p.value);
      ck.optimizer = std::move(moments);
    }
    if (experts) {
      // The experts' moments too, all in parameter order: the checkpoint one process writes.
      std::map<std::string, Tensor> by_name;
      for (auto& [name, t] : ck.optimizer) by_name[name] = std::move(t);
      for (auto& [name, t] : experts->gather_state()) by_name[name] = std::move(t);
      ck.optimizer.clear();
      if (lead)
        for (const Param& p : params.all())
          if (p.trainable)
            for (const std::string kind : {"exp_avg.", "exp_avg_sq."})
              ck.optimizer.emplace_back(kind + p.name, std::move(by_name.at(kind + p.name)));
    }
    ck.state = {{"step", at_step},
                {"optimizer_steps", dp ? dp->step_count() : optimizer->step_count()},
                {"loader", batches.position()},
                {"tokens", tokens_seen},
                {"seed", cfg.seed}};
    if (lead) save_checkpoint(run_dir.string(), ck, int(cfg.keep_last));
    group.barrier();
  };

  while (step < cfg.steps) {
    const int64_t s = step;  // 0-based index of this step
    const auto t0 = std::chrono::steady_clock::now();
    loss_options.mtp_lambda = lambda.at(s);
    // DPO trains the main head only: the MTP modules have no preference loss.
    if (dpo) loss_options.mtp_lambda = 0.0;
    double total = 0, ce = 0, aux = 0;
    std::vector<double> mtp;
    std::vector<std::vector<int64_t>> load;
    DpoStats dpo_stats;
    if (stage) {
      // Every stage reads its pipeline's slice of the batches (the first stage needs the inputs,
      // the last the targets and, for MTP, the inputs) and splits each into the M micro-batches.
      std::vector<MicroBatch> micro;
      for (int64_t a = 0; a < cfg.grad_accum; ++a)
        for (MicroBatch& m : split_micro_batch(
                 batches.next(stage_layout.replica * B_local, B_local), cfg.micro_batches))
          micro.push_back(std::move(m));
      // The exact means over each batch (one process's), whichever micro-batch and pipeline
      // holds what: micro-batch m of batch a weighs count_m·M·R / Σ over a's micro-batches and
      // the pipelines — SFT's counted targets (the cross-entropies' ce_shares), DPO's pairs (its
      // token weights, as data parallelism rescales them).
      const int64_t M = cfg.micro_batches, R = stage_layout.replicas;
      const auto shares_of = [&](std::vector<std::vector<double>> counts) {
        for (int64_t a = 0; a < cfg.grad_accum; ++a)
          counts_to_shares(std::span(counts).subspan(size_t(a * M), size_t(M)),
                           stage->replica_group(), double(M * R));
        return counts;
      };
      PipelineStage::HeadOptions head_options;
      std::vector<std::vector<double>> shares;
      std::vector<std::vector<std::pair<double, double>>> refs(micro.size());
      if (cfg.task == "sft") {
        const size_t depths = size_t(model_config.num_nextn_predict_layers);
        for (const MicroBatch& m : micro) shares.push_back(ce_target_counts(m, depths));
        shares = shares_of(std::move(shares));
        head_options = [&shares](int64_t i, LossOptions& o) { o.ce_shares = shares[size_t(i)]; };
      } else if (dpo) {
        for (size_t i = 0; i < micro.size(); ++i) {
          shares.push_back({double(micro[i].pairs.size())});
          for (int64_t id : micro[i].pair_ids) refs[i].push_back(reference[size_t(id)]);
        }
        shares = shares_of(std::move(shares));
        head_options = [&](int64_t i, LossOptions& o) {
          o.token_weights = dpo_token_weights(micro[size_t(i)].pairs, refs[size_t(i)], cfg.dpo_beta,
                                              shares[size_t(i)][0], dpo_stats);
        };
      }
      const SequenceLosses l =
          stage->train_step(micro, loss_options, scale, dp.get(), head_options);
      // Each micro-batch's losses are means over 1/M of a batch: M of them make one batch mean.
      if (dpo) all_reduce_dpo(group, dpo_stats);  // the last stages' pairs, over the world
      const double m = double(cfg.micro_batches);
      total = l.total / m;
      ce = l.main_ce / m;
      aux = l.aux / m;
      for (double v : l.mtp_ce) mtp.push_back(v / m);
      load = l.expert_load;
    }
    // FP8 projections: their weights quantised once for all the step's micro-batches (no weight
    // changes before the optimizer step below).
    std::optional<ops::Fp8WeightCacheScope> fp8_weights;
    if (!stage) fp8_weights.emplace(&params.fp8_images());
    // One process: the gradient norm's sums of squares taken layer by layer during the last
    // backward (on the GPU beside the layers still running).
    std::optional<BackwardGradNorm> backward_norm;
    for (int64_t a = 0; a < (stage ? 0 : cfg.grad_accum); ++a) {
      const MicroBatch batch = batches.next(group.rank() * B_local, B_local);
      if (dp && a + 1 == cfg.grad_accum) {
        // The last backward of the step: its finished layers' gradients start reducing at once.
        dp->arm();
        loss_options.on_block_backward = [&dp](int64_t layer) { dp->on_block_backward(layer); };
      } else if (!dp && a + 1 == cfg.grad_accum) {
        backward_norm.emplace(params, model_config.num_hidden_layers);
        loss_options.on_block_backward = [&backward_norm](int64_t layer) {
          backward_norm->on_block_backward(layer);
        };
      }
      std::vector<std::pair<double, double>> ref;  // outlives the forward_backward below
      // The step's losses are means over every rank's counted targets or pairs (one process's),
      // not the mean of the ranks' means.
      dist::ProcessGroup* over_ranks = ranks > 1 ? &group : nullptr;
      if (cfg.task == "sft" && ranks > 1) {
        std::vector<double> counts[1] = {
            ce_target_counts(batch, size_t(model_config.num_nextn_predict_layers))};
        counts_to_shares(counts, over_ranks, double(ranks));
        loss_options.ce_shares = counts[0];
      }
      if (dpo) {
        for (int64_t id : batch.pair_ids) ref.push_back(reference[size_t(id)]);
        std::vector<double> pairs[1] = {{double(batch.pairs.size())}};
        counts_to_shares(pairs, over_ranks, double(ranks));
        loss_options.token_weights =
            dpo_token_weights(batch.pairs, ref, cfg.dpo_beta, pairs[0][0], dpo_stats);
      }
      const SequenceLosses l =
          model.forward_backward(batch.inputs, batch.targets, loss_options, scale, batch.segments);
      loss_options.token_weights = nullptr;  // it refers to this micro-batch's locals
      loss_options.ce_shares.clear();
      loss_options.on_block_backward = nullptr;
      total += l.total;
      ce += l.main_ce;
      aux += l.aux;
      if (mtp.size() < l.mtp_ce.size()) mtp.resize(l.mtp_ce.size(), 0.0);
      for (size_t k = 0; k < l.mtp_ce.size(); ++k) mtp[k] += l.mtp_ce[k];
      if (load.empty()) load.assign(l.expert_load.size(), {});
      for (size_t i = 0; i < l.expert_load.size(); ++i) {
        if (load[i].empty()) load[i].assign(l.expert_load[i].size(), 0);
        for (size_t e = 0; e < l.expert_load[i].size(); ++e) load[i][e] += l.expert_load[i][e];
      }
    }
    fp8_weights.reset();                      // before the weights change
    const double n = double(cfg.grad_accum);  // each micro-batch's losses are batch means
    bool stop = g_stop_signal.load() != 0;
    double grad_norm = 0;
    const double lr = lr_schedule.at(s);
    if (stage) {
      // Each stage holds its part of the losses and loads (the last stage the cross-entropies):
      // their sum, on every rank; losses are the mean over the pipelines' slices.
      StepTotals t{total, ce, aux, stop ? 1.0 : 0.0, mtp, load};
      all_reduce_totals(group, t, size_t(model_config.num_nextn_predict_layers));
      const double d = double(stage_layout.replicas);
      total = t.total / d;
      ce = t.ce / d;
      aux = t.aux / d;
      stop = t.stop > 0;
      mtp = t.mtp;
      for (double& v : mtp) v /= d;
      while (!mtp.empty() && mtp.back() == 0.0) mtp.pop_back();  // depths that did not run
      load = t.load;
      grad_norm = dp ? stage->optimizer_step(*dp, lr, cfg.grad_clip)
                     : stage->optimizer_step(*optimizer, lr, cfg.grad_clip);
    } else if (dp) {
      // Losses: the mean of the ranks' slice means (= the global batch mean when every sequence
      // counts equally); loads: summed; a stop signal on any rank stops every rank after this step.
      StepTotals t{total, ce, aux, stop ? 1.0 : 0.0, mtp, load};
      all_reduce_totals(group, t, size_t(model_config.num_nextn_predict_layers));
      total = t.total / ranks;
      ce = t.ce / ranks;
      aux = t.aux / ranks;
      stop = t.stop > 0;
      if (!mtp.empty() || loss_options.mtp_lambda > 0.0) {
        mtp = t.mtp;
        for (double& m : mtp) m /= ranks;
        while (!mtp.empty() && mtp.back() == 0.0) mtp.pop_back();  // depths no rank ran
      }
      load = t.load;
      if (dpo) all_reduce_dpo(group, dpo_stats);
      dp->reduce_gradients();
      if (experts) experts->reduce_grads();
      grad_norm =
          dp->clip_grad_norm(cfg.grad_clip, experts ? experts->grads() : std::vector<Tensor>{},
                             !experts || ep.base() == 0);
      dp->step(lr);
      if (experts) experts->step(lr);
      params.refresh_compute();
    } else {
      // Clipping folded into the step; the step also re-rounds the bf16 compute copies. On a GPU
      // the update and the zeros run on the background stream a layer at a time, beside the next
      // step's forward (AdamW::step_async). One process: the experts' wgrads overwrite their
      // zeros, so those are not written (forward_backward settles any left over). The norm's
      // clip factor stays on the GPU (GradClip): the update is queued before the norm is read.
      // The next step's first micro-batch, peeked at (the position stays): the update takes the
      // embedding rows its forward looks up first, the rest of the embedding last.
      std::vector<int32_t> next_lookup;
      if (params.device() == Device::CUDA && lookup_rows_first() && step + 1 < cfg.steps && !stop)
        next_lookup = batches.peek(group.rank() * B_local, B_local).inputs;
      if (backward_norm) {
        const GradClip clip = backward_norm->clip(cfg.grad_clip);
        optimizer->step_async(lr, clip, /*defer_overwritten=*/true, next_lookup);
        grad_norm = clip.norm();
      } else {
        grad_norm = train::grad_norm(params);
        optimizer->step_async(lr, clip_factor(grad_norm, cfg.grad_clip),
                              /*defer_overwritten=*/true, next_lookup);
      }
    }
    // Pipeline stages and data-parallel ranks read gradients outside forward_backward: every zero
    // written.
    if (stage || dp) params.zero_grad();
    const double g = gamma.at(s);
    if (loss_free && g > 0.0) {
      for (size_t i = 0; i < load.size(); ++i) {
        // Layers that saw no tokens this step (an MTP depth with λ = 0) keep their bias.
        int64_t routed = 0;
        for (int64_t c : load[i]) routed += c;
        if (routed == 0) continue;
        const std::string bias_name = model.moe_layers()[i] + ".gate.e_score_correction_bias";
        if (!params.has(bias_name)) continue;  // another pipeline stage's layer
        Param& bias = params.at(bias_name);
        std::vector<float> b = bias.value.to_vector();
        update_correction_bias(b, load[i], g);
        copy_values(bias.value, Tensor::from_vector(b, bias.value.shape()), bias.name);
      }
    }
    if (dpo) ce = dpo_stats.mean().loss * n;  // the logged loss is DPO's, not the weighted CE
    step = s + 1;
    tokens_seen += B * cfg.grad_accum * T;
    run_tokens += B * cfg.grad_accum * T;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    nlohmann::ordered_json line;
    line["step"] = step;
    line["loss"] = ce / n;
    line["total_loss"] = total / n;
    if (dpo) {
      const DpoStats m = dpo_stats.mean();
      line["rewards/chosen"] = m.reward_chosen;
      line["rewards/rejected"] = m.reward_rejected;
      line["rewards/margins"] = m.margin;
      line["rewards/accuracies"] = m.accuracy;
      line["logps/chosen"] = m.logp_chosen;
      line["logps/rejected"] = m.logp_rejected;
    }
    if (!mtp.empty()) {
      std::vector<double> m;
      for (double v : mtp) m.push_back(v / n);
      line["mtp_loss"] = m;
    }
    if (cfg.aux_loss != "none") line["aux_loss"] = aux / n;
    line["lr"] = lr;
    line["grad_norm"] = grad_norm;
    if (!load.empty()) {
      std::vector<double> vio;
      line["max_vio"] = mean_max_violation(load, vio);
      line["max_vio_layers"] = vio;
      if (loss_free) line["bias_update_speed"] = g;
    }
    if (!mtp.empty()) line["mtp_lambda"] = loss_options.mtp_lambda;
    line["tokens"] = tokens_seen;
    line["tokens_per_s"] = double(B * cfg.grad_accum * T) / std::max(seconds, 1e-9);
    if (!load.empty() && (step % cfg.expert_load_interval == 0 || step == cfg.steps))
      line["expert_load"] = load;

    if (ranks == 1) stop = g_stop_signal.load() != 0;  // (N ranks: agreed on above)
    if ((step % cfg.eval_interval == 0 || step == cfg.steps) && val_count > 0) {
      double val = 0;
      std::vector<std::vector<int64_t>> val_load;
      // Validation in batches of B sequences (the same math, larger GEMMs); N ranks take the
      // batches in turn and sum.
      // Expert parallelism: every rank takes part in every batch's exchanges, so the ranks split
      // each batch instead; a rank left without a sequence runs the batch's first one as a
      // stand-in and counts nothing of it.
      for (int64_t k0 = 0, chunk = 0; k0 < val_count; k0 += B, ++chunk) {
        // Pipeline: every stage of a pipeline takes part in its batches (the pipelines take
        // the batches in turn).
        if (pipeline && chunk % stage_layout.replicas != stage_layout.replica) continue;
        if (!expert_parallel && !pipeline && chunk % ranks != group.rank()) continue;
        int64_t first = k0, nb = std::min(B, val_count - k0);
        bool stand_in = false;
        if (expert_parallel) {
          const dist::Range share = dist::even_share(nb, ranks, group.rank());
          first = k0 + share.first;
          nb = share.count;
          stand_in = nb == 0;
          if (stand_in) first = k0;
        }
        const MicroBatch vb = batches.validation(first, stand_in ? 1 : nb);
        LossOptions val_options = loss_options;
        val_options.token_weights = nullptr;
        val_options.ce_shares.clear();
        const SequenceLosses l =
            stage ? stage->forward(vb, val_options)
                  : model.forward(vb.inputs, vb.targets, val_options, vb.segments);
        if (stand_in) continue;
        val += l.main_ce * double(nb);
        if (val_load.empty())
          val_load = l.expert_load;
        else
          for (size_t i = 0; i < l.expert_load.size(); ++i)
            for (size_t e = 0; e < l.expert_load[i].size(); ++e)
              val_load[i][e] += l.expert_load[i][e];
      }
      if (ranks > 1) {
        StepTotals t;
        t.total = val;
        t.load = load;  // the layout of the expert loads (all MoE layers)
        for (auto& l : t.load) std::fill(l.begin(), l.end(), 0);
        for (size_t i = 0; i < val_load.size() && i < t.load.size(); ++i) t.load[i] = val_load[i];
        all_reduce_totals(group, t, 0);
        val = t.total;
        val_load = t.load;
      }
      summary.last_val_loss = val / double(val_count);
      line["val_loss"] = summary.last_val_loss;
      if (!val_load.empty()) {
        // MaxVio_global: the violation of the load summed over the whole validation set.
        std::vector<double> vio;
        line["val_max_vio"] = mean_max_violation(val_load, vio);
        line["val_max_vio_layers"] = vio;
      }
    }
    if (lead) {
      metrics << line.dump() << "\n";
      metrics.flush();
    }
    summary.last_loss = ce / n;
    summary.last_step = step;

    std::string suffix = fmt::format("loss {:.3f} lr {}", ce / n, fmt_lr(lr));
    if (line.contains("max_vio"))
      suffix += fmt::format(" vio {:.2f}", line["max_vio"].get<double>());
    if (summary.last_val_loss >= 0) suffix += fmt::format(" val {:.3f}", summary.last_val_loss);
    suffix += fmt::format(" {} tok/s", human_count(line["tokens_per_s"].get<double>()));
    if (progress) {
      progress->set_suffix(suffix);
      progress->update(step);
    }

    if (step % cfg.checkpoint_interval == 0 || step == cfg.steps || stop) save(step);
    if (stop) {
      summary.interrupted = true;
      if (lead && g_stop_signal.load() != 0)
        fmt::print(stderr, "\n[train] stopped by signal {} after step {}; checkpoint written\n",
                   g_stop_signal.load(), step);
      else if (lead)
        fmt::print(stderr,
                   "\n[train] stopped by a signal to another rank after step {}; checkpoint "
                   "written\n",
                   step);
      break;
    }
  }
  if (progress) progress->finish();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  summary.tokens_per_second = double(run_tokens) / std::max(elapsed, 1e-9);
  return summary;
}

}  // namespace dseek::train
