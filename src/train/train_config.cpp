#include "train/train_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "train/schedule.h"
#include "train/synth_override.h"

namespace dseek::train {
namespace {

// One settable field: how to read it from text / JSON and print it.
struct Binding {
  ConfigField info;
  std::function<void(TrainConfig&, const nlohmann::json&, const std::string& where)> set;
  std::function<nlohmann::json(const TrainConfig&)> get;
};

template <typename T>
Binding field(const std::string& key, const std::string& doc, T TrainConfig::*member) {
  Binding b;
  if constexpr (std::is_same_v<T, std::string>) {
    b.info = {key, "string", doc};
  } else if constexpr (std::is_integral_v<T>) {
    b.info = {key, "int", doc};
  } else {
    b.info = {key, "float", doc};
  }
  b.set = [key, member](TrainConfig& c, const nlohmann::json& v, const std::string& where) {
    if constexpr (std::is_same_v<T, std::string>) {
      // Numbers are accepted for string fields that hold schedules ("0.3" or 0.3).
      if (v.is_string()) {
        c.*member = v.get<std::string>();
      } else if (v.is_number()) {
        std::ostringstream s;
        s << v.get<double>();
        c.*member = s.str();
      } else {
        fail("[train] {}: '{}' must be a string, got {}", where, key, v.dump());
      }
    } else if constexpr (std::is_integral_v<T>) {
      DSEEK_CHECK(v.is_number_integer() || (v.is_number_float() && v.get<double>() ==
                                                                         double(int64_t(v.get<double>()))),
                  "[train] {}: '{}' must be an integer, got {}", where, key, v.dump());
      c.*member = T(v.is_number_integer() ? v.get<int64_t>() : int64_t(v.get<double>()));
    } else {
      DSEEK_CHECK(v.is_number(), "[train] {}: '{}' must be a number, got {}", where, key, v.dump());
      c.*member = v.get<double>();
    }
  };
  b.get = [member](const TrainConfig& c) { return nlohmann::json(c.*member); };
  return b;
}

const std::vector<Binding>& bindings() {
  static const std::vector<Binding> all = {
      field("model.preset", "named model shape: tiny, small, tiny-dense, v2-lite, v3", &TrainConfig::preset),
      field("model.config", "HF config.json (or its directory) to train instead of a preset; vocab_size must cover the tokenizer", &TrainConfig::model_config),
      field("model.init_std", "standard deviation of the normal initialisation of matrices and embeddings", &TrainConfig::init_std),
      field("model.init_from", "start from these weights with a fresh optimizer: a run directory (its newest checkpoint), a checkpoint directory, or an exported/HF model directory; its config.json is the model's unless model.config is given", &TrainConfig::init_from),
      field("model.rope_scaling.type", "override the rope scaling: none | yarn | linear (\"\": keep the model's)", &TrainConfig::rope_type),
      field("model.rope_scaling.factor", "rope scaling factor (context extension ratio; -1: keep)", &TrainConfig::rope_factor),
      field("model.rope_scaling.original_max_position_embeddings", "YaRN: the pre-extension context length (-1: keep, or the model's max_position_embeddings when switching to yarn)", &TrainConfig::rope_original_max),
      field("model.rope_scaling.beta_fast", "YaRN β_fast, the high-frequency correction bound (-1: keep; default 32)", &TrainConfig::rope_beta_fast),
      field("model.rope_scaling.beta_slow", "YaRN β_slow, the low-frequency correction bound (-1: keep; default 1)", &TrainConfig::rope_beta_slow),
      field("model.rope_scaling.mscale", "YaRN mscale of cos/sin (-1: keep; default 1)", &TrainConfig::rope_mscale),
      field("model.rope_scaling.mscale_all_dim", "YaRN mscale_all_dim: MLA softmax scale correction (-1: keep; default 0 = off)", &TrainConfig::rope_mscale_all_dim),
      field("model.max_position_embeddings", "override the model's context length (-1: keep; with a new rope scaling: original × factor)", &TrainConfig::max_position_embeddings),
      field("data.dir", "directory written by `dseek data prepare`", &TrainConfig::data),
      field("data.tokenizer", "tokenizer.json or a directory holding it; copied into the run", &TrainConfig::tokenizer),
      field("data.seq_len", "tokens per training sequence (T)", &TrainConfig::seq_len),
      field("data.val_fraction", "fraction of documents held out for validation", &TrainConfig::val_fraction),
      field("train.steps", "optimizer steps (the run's length; --resume continues up to it)", &TrainConfig::steps),
      field("train.batch_size", "sequences per micro-batch", &TrainConfig::batch_size),
      field("train.grad_accum", "micro-batches accumulated per optimizer step", &TrainConfig::grad_accum),
      field("train.seed", "seed of the initialisation and of the data order", &TrainConfig::seed),
      field("train.compute_budget", "FLOPs; when > 0, batch_size, lr and steps come from DeepSeek LLM's scaling laws", &TrainConfig::compute_budget),
      field("train.compute_dtype", "f32, or bf16: matmuls with bf16 copies of the weights, f32 master weights, gradients and optimizer", &TrainConfig::compute_dtype),
      field("train.precision", "default (GEMMs in train.compute_dtype), or fp8: DeepSeek-V3's FP8 training — the attention and MLP/expert projections run forward, dgrad and wgrad as E4M3 GEMMs with 1x128/128x128 scales from the f32 masters; embedding, head, routers, norms and attention core stay as compute_dtype (docs/FP8.md)", &TrainConfig::precision),
      field("train.device", "cpu, or cuda: parameters, gradients, AdamW and every layer on the GPU (one process; activations in bf16 with train.compute_dtype bf16, else f32)", &TrainConfig::device),
      field("train.task", "pretrain (data from `dseek data prepare`), sft or dpo (data from `dseek data sft` / `dseek data dpo`; see Post-training)", &TrainConfig::task),
      field("train.synth_override.file", "operator file (from `dseek synth search`, synth/serialize.h) that replaces the projections named by train.synth_override.site (see Synthesised operators)", &TrainConfig::synth_file),
      field("train.synth_override.site", "which projections the operator replaces: mlp.gate_proj, mlp.up_proj, mlp.down_proj or mlp (all three) of every dense MLP; shared_experts.gate_proj, .up_proj, .down_proj or shared_experts of every MoE layer's shared experts", &TrainConfig::synth_site),
      field("dpo.beta", "β of the DPO loss −log σ(β[(log π_c − log ref_c) − (log π_r − log ref_r)])", &TrainConfig::dpo_beta),
      field("optim.lr", "peak learning rate", &TrainConfig::lr),
      field("optim.min_lr_ratio", "final learning rate of cosine/wsd as a fraction of the peak", &TrainConfig::min_lr_ratio),
      field("optim.warmup_steps", "linear warm-up steps", &TrainConfig::warmup_steps),
      field("optim.schedule", "constant | cosine | wsd (DeepSeek-V3) | multistep (DeepSeek LLM)", &TrainConfig::schedule),
      field("optim.decay_start", "wsd: fraction of the steps where the decay begins", &TrainConfig::decay_start),
      field("optim.beta1", "AdamW β1", &TrainConfig::beta1),
      field("optim.beta2", "AdamW β2", &TrainConfig::beta2),
      field("optim.eps", "AdamW ε", &TrainConfig::eps),
      field("optim.weight_decay", "decoupled weight decay (matrices and embeddings only)", &TrainConfig::weight_decay),
      field("optim.grad_clip", "global gradient-norm clip (0: off)", &TrainConfig::grad_clip),
      field("optim.moment_dtype", "f32, or bf16: AdamW's first and second moments stored in bf16 (DeepSeek-V3's choice; half their memory and optimizer traffic; one process only)", &TrainConfig::moment_dtype),
      field("optim.expert_grad_dtype", "f32, or bf16: the routed experts' weight gradients stored in bf16 (PyTorch's bf16 gradients; half the bytes the grouped wgrad stores and 2 a parameter less for the update; one GPU, bf16 compute, not with precision fp8)", &TrainConfig::expert_grad_dtype),
      field("optim.grad_dtype", "f32, or bf16: every weight gradient a GEMM writes stored in bf16 (the routed experts', as optim.expert_grad_dtype, and the attention and MLP projections', the head's; the embedding, norms and routers keep f32; one GPU, bf16 compute, not with precision fp8)", &TrainConfig::grad_dtype),
      field("moe.bias_update_speed", "γ of auxiliary-loss-free balancing, a schedule (\"0.001\", \"0.001,0@900\"); 0 freezes the bias", &TrainConfig::bias_update_speed),
      field("moe.aux_loss", "auxiliary balance loss: none | sequence (V3) | expert | device (DeepSeekMoE)", &TrainConfig::aux_loss),
      field("moe.aux_alpha", "weight α of the auxiliary balance loss", &TrainConfig::aux_alpha),
      field("moe.aux_devices", "device-level loss: number of expert groups (devices)", &TrainConfig::aux_devices),
      field("mtp.lambda", "weight λ of the multi-token-prediction loss, a schedule (\"0.3,0.1@800\"); 0 turns MTP off", &TrainConfig::mtp_lambda),
      field("eval.interval", "steps between validation runs (and after the last step)", &TrainConfig::eval_interval),
      field("eval.sequences", "validation sequences per run (at most the held-out set)", &TrainConfig::eval_sequences),
      field("log.expert_load_interval", "steps between expert-load records in metrics.jsonl", &TrainConfig::expert_load_interval),
      field("checkpoint.interval", "steps between checkpoints (and after the last step)", &TrainConfig::checkpoint_interval),
      field("checkpoint.keep_last", "complete checkpoints kept (older ones are deleted)", &TrainConfig::keep_last),
      field("dist.deterministic", "1: data-parallel reductions in a fixed rank order, bit-reproducible for a given number of ranks; 0: MPI's own algorithms", &TrainConfig::dist_deterministic),
      field("dist.bucket_mb", "data parallelism: MiB of f32 gradients per reduce-scatter bucket", &TrainConfig::dist_bucket_mb),
      field("dist.all_reduce", "gradient reduction algorithm: mpi (MPI's collectives) | hfreduce (Fire-Flyer's HFReduce: reduce inside each node through shared memory, then across nodes, pipelined by chunk; DSEEK_HFREDUCE_RANKS_PER_NODE=k emulates nodes of k ranks)", &TrainConfig::dist_all_reduce),
      field("dist.expert_parallel", "expert parallelism: ranks per group the routed experts are spread over (1: every rank holds every expert; N > 1 divides the world size, data parallel across the groups)", &TrainConfig::expert_parallel),
      field("dist.pipeline_parallel", "pipeline parallelism: stages the layers are split over, one rank each, run with the 1F1B schedule (1: none; P divides the number of MPI ranks, data parallel across the pipelines)", &TrainConfig::pipeline_parallel),
      field("dist.micro_batches", "pipeline parallelism: micro-batches each pipeline's slice of a train.batch_size batch is split into (the batch size must be divisible by pipelines × micro-batches)", &TrainConfig::micro_batches),
      field("dist.ep_max_ranks", "node-limited routing: refuse a gate whose groups could send a token to more than this many expert-parallel ranks (0: no requirement)", &TrainConfig::ep_max_ranks),
      field("run.out", "run directory: metrics.jsonl, checkpoints/, plots", &TrainConfig::out),
      field("run.threads", "OpenMP threads (0: the default)", &TrainConfig::threads),
  };
  return all;
}

const Binding* find_binding(const std::string& key) {
  for (const Binding& b : bindings())
    if (b.info.key == key) return &b;
  return nullptr;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

[[noreturn]] void unknown_key(const std::string& key, const std::string& where) {
  std::string best;
  size_t best_d = 4;
  for (const Binding& b : bindings()) {
    const size_t d = edit_distance(key, b.info.key);
    if (d < best_d) {
      best_d = d;
      best = b.info.key;
    }
  }
  if (!best.empty()) fail("[train] {}: unknown setting '{}' (did you mean '{}'?)", where, key, best);
  fail("[train] {}: unknown setting '{}' (see docs/TRAINING.md)", where, key);
}

void set_key(TrainConfig& config, const std::string& key, const nlohmann::json& value,
             const std::string& where) {
  const Binding* b = find_binding(key);
  if (!b) unknown_key(key, where);
  b->set(config, value, where);
}

// Flattens {"optim": {"lr": 1}} into "optim.lr".
void apply_json(TrainConfig& config, const nlohmann::json& j, const std::string& prefix,
                const std::string& where) {
  DSEEK_CHECK(j.is_object(), "[train] {}: expected a table of settings{}", where,
              prefix.empty() ? "" : " under '" + prefix + "'");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it.value().is_object()) {
      apply_json(config, it.value(), key, where);
    } else {
      set_key(config, key, it.value(), where);
    }
  }
}

nlohmann::json toml_to_json(const toml::node& node, const std::string& where) {
  if (const auto* t = node.as_table()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : *t) j[std::string(k.str())] = toml_to_json(v, where);
    return j;
  }
  if (const auto* v = node.as_string()) return v->get();
  if (const auto* v = node.as_integer()) return v->get();
  if (const auto* v = node.as_floating_point()) return v->get();
  if (const auto* v = node.as_boolean()) return v->get();
  fail("[train] {}: unsupported TOML value (arrays, dates) at line {}", where,
       node.source().begin.line);
}

}  // namespace

const std::vector<ConfigField>& train_config_fields() {
  static const std::vector<ConfigField> fields = [] {
    std::vector<ConfigField> out;
    for (const Binding& b : bindings()) out.push_back(b.info);
    return out;
  }();
  return fields;
}

void load_train_config_file(const std::string& path, TrainConfig& config) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[train] {}: cannot open the config file", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (path.ends_with(".json")) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("[train] {}: invalid JSON: {}", path, e.what());
    }
    apply_json(config, j, "", path);
    return;
  }
  DSEEK_CHECK(path.ends_with(".toml"), "[train] {}: config files are .toml or .json", path);
  toml::table table;
  try {
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    fail("[train] {}:{}:{}: invalid TOML: {}", path, e.source().begin.line,
         e.source().begin.column, e.description());
  }
  apply_json(config, toml_to_json(table, path), "", path);
}

void apply_train_config_override(const std::string& assignment, TrainConfig& config) {
  const size_t eq = assignment.find('=');
  DSEEK_CHECK(eq != std::string::npos && eq > 0,
              "[train] --set '{}': expected section.key=value", assignment);
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  const Binding* b = find_binding(key);
  if (!b) unknown_key(key, "--set");
  nlohmann::json value;
  if (b->info.type == "string") {
    value = text;
  } else {
    try {
      size_t used = 0;
      if (b->info.type == "int") {
        value = int64_t(std::stoll(text, &used));
      } else {
        value = std::stod(text, &used);
      }
      DSEEK_CHECK(used == text.size(), "trailing characters");
    } catch (const std::exception&) {
      fail("[train] --set {}: '{}' is not a valid {}", key, text, b->info.type);
    }
  }
  b->set(config, value, "--set");
}

void validate_train_config(const TrainConfig& c) {
  auto positive = [](int64_t v, const char* key) {
    DSEEK_CHECK(v > 0, "[train] {}: must be positive, got {}", key, v);
  };
  positive(c.seq_len, "data.seq_len");
  positive(c.steps, "train.steps");
  positive(c.batch_size, "train.batch_size");
  positive(c.grad_accum, "train.grad_accum");
  positive(c.eval_interval, "eval.interval");
  positive(c.checkpoint_interval, "checkpoint.interval");
  positive(c.expert_load_interval, "log.expert_load_interval");
  DSEEK_CHECK(c.eval_sequences >= 0, "[train] eval.sequences: must be >= 0");
  DSEEK_CHECK(c.keep_last >= 1, "[train] checkpoint.keep_last: must be >= 1, got {}", c.keep_last);
  DSEEK_CHECK(c.threads >= 0, "[train] run.threads: must be >= 0");
  DSEEK_CHECK(c.dist_deterministic == 0 || c.dist_deterministic == 1,
              "[train] dist.deterministic: must be 0 or 1, got {}", c.dist_deterministic);
  DSEEK_CHECK(c.dist_bucket_mb > 0 && c.dist_bucket_mb <= 1024,
              "[train] dist.bucket_mb: must be in (0, 1024], got {}", c.dist_bucket_mb);
  DSEEK_CHECK(c.dist_all_reduce == "mpi" || c.dist_all_reduce == "hfreduce",
              "[train] dist.all_reduce: expected mpi or hfreduce, got '{}'", c.dist_all_reduce);
  DSEEK_CHECK(c.expert_parallel >= 1, "[train] dist.expert_parallel: must be >= 1, got {}",
              c.expert_parallel);
  DSEEK_CHECK(c.ep_max_ranks >= 0, "[train] dist.ep_max_ranks: must be >= 0, got {}",
              c.ep_max_ranks);
  DSEEK_CHECK(c.pipeline_parallel >= 1, "[train] dist.pipeline_parallel: must be >= 1, got {}",
              c.pipeline_parallel);
  DSEEK_CHECK(c.micro_batches >= 1, "[train] dist.micro_batches: must be >= 1, got {}",
              c.micro_batches);
  DSEEK_CHECK(c.batch_size % c.micro_batches == 0,
              "[train] dist.micro_batches {}: train.batch_size {} does not split into {} equal "
              "micro-batches",
              c.micro_batches, c.batch_size, c.micro_batches);
  DSEEK_CHECK(c.seed >= 0, "[train] train.seed: must be >= 0");
  DSEEK_CHECK(c.val_fraction > 0 && c.val_fraction < 1,
              "[train] data.val_fraction: must be in (0, 1), got {}", c.val_fraction);
  DSEEK_CHECK(c.init_std > 0, "[train] model.init_std: must be > 0, got {}", c.init_std);
  DSEEK_CHECK(c.task == "pretrain" || c.task == "sft" || c.task == "dpo",
              "[train] train.task: expected pretrain, sft or dpo, got '{}'", c.task);
  if (!c.synth_file.empty() || !c.synth_site.empty()) {
    DSEEK_CHECK(!c.synth_file.empty(),
                "[train] train.synth_override.file: required with train.synth_override.site '{}' "
                "(an operator file)",
                c.synth_site);
    const auto& sites = synth_override_sites();
    DSEEK_CHECK(std::find(sites.begin(), sites.end(), c.synth_site) != sites.end(),
                "[train] train.synth_override.site: '{}' is not one of {}", c.synth_site,
                synth_override_sites_list());
  }
  DSEEK_CHECK(c.dpo_beta > 0, "[train] dpo.beta: must be > 0, got {}", c.dpo_beta);
  DSEEK_CHECK(c.compute_budget >= 0, "[train] train.compute_budget: must be >= 0");
  DSEEK_CHECK(c.beta1 >= 0 && c.beta1 < 1, "[train] optim.beta1: must be in [0, 1)");
  DSEEK_CHECK(c.beta2 >= 0 && c.beta2 < 1, "[train] optim.beta2: must be in [0, 1)");
  DSEEK_CHECK(c.eps > 0, "[train] optim.eps: must be > 0");
  DSEEK_CHECK(c.weight_decay >= 0, "[train] optim.weight_decay: must be >= 0");
  DSEEK_CHECK(c.grad_clip >= 0, "[train] optim.grad_clip: must be >= 0");
  DSEEK_CHECK(c.moment_dtype == "f32" || c.moment_dtype == "bf16",
              "[train] optim.moment_dtype: expected f32 or bf16, got '{}'", c.moment_dtype);
  for (const auto& [name, value] : {std::pair{"optim.expert_grad_dtype", c.expert_grad_dtype},
                                    {"optim.grad_dtype", c.grad_dtype}}) {
    DSEEK_CHECK(value == "f32" || value == "bf16", "[train] {}: expected f32 or bf16, got '{}'",
                name, value);
    DSEEK_CHECK(value == "f32" ||
                    (c.device == "cuda" && c.precision != "fp8" && c.compute_dtype == "bf16"),
                "[train] {} bf16: bf16 gradients need train.device cuda, compute dtype bf16 and "
                "precision default (got device {}, compute {}, precision {})",
                name, c.device, c.compute_dtype, c.precision);
  }
  DSEEK_CHECK(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1,
              "[train] optim.min_lr_ratio: must be in [0, 1], got {}", c.min_lr_ratio);
  LrSchedule lr;
  lr.kind = c.schedule;
  lr.peak_lr = c.lr;
  lr.min_lr = c.lr * c.min_lr_ratio;
  lr.warmup_steps = std::min(c.warmup_steps, c.steps);
  lr.total_steps = c.steps;
  lr.decay_start = c.decay_start;
  try {
    lr.validate();
  } catch (const Error& e) {
    fail("[train] optim: {}", e.what());
  }
  DSEEK_CHECK(c.warmup_steps >= 0, "[train] optim.warmup_steps: must be >= 0");
  DSEEK_CHECK(c.aux_loss == "none" || c.aux_loss == "sequence" || c.aux_loss == "expert" ||
                  c.aux_loss == "device",
              "[train] moe.aux_loss: '{}' is not one of none, sequence, expert, device", c.aux_loss);
  DSEEK_CHECK(c.compute_dtype == "f32" || c.compute_dtype == "bf16",
              "[train] train.compute_dtype: '{}' is not f32 or bf16", c.compute_dtype);
  DSEEK_CHECK(c.precision == "default" || c.precision == "fp8",
              "[train] train.precision: '{}' is not default or fp8", c.precision);
  DSEEK_CHECK(c.device == "cpu" || c.device == "cuda",
              "[train] train.device: '{}' is not cpu or cuda", c.device);
  DSEEK_CHECK(c.aux_alpha >= 0, "[train] moe.aux_alpha: must be >= 0");
  DSEEK_CHECK(c.aux_devices >= 1, "[train] moe.aux_devices: must be >= 1");
  for (const auto& [key, text] : {std::pair<const char*, std::string>{"moe.bias_update_speed", c.bias_update_speed},
                                  {"mtp.lambda", c.mtp_lambda}}) {
    try {
      StepSchedule::parse(text);
    } catch (const Error& e) {
      fail("[train] {}: {}", key, e.what());
    }
  }
}

std::string train_config_to_json(const TrainConfig& c) {
  nlohmann::ordered_json j;
  for (const Binding& b : bindings()) {
    const size_t dot = b.info.key.find('.');
    j[b.info.key.substr(0, dot)][b.info.key.substr(dot + 1)] = b.get(c);
  }
  return j.dump(2);
}

std::vector<std::string> preset_names() { return {"tiny", "small", "tiny-dense", "v2-lite", "v3"}; }

ModelConfig preset_model_config(const std::string& preset, int64_t vocab_size) {
  DSEEK_CHECK(vocab_size > 0, "[train] preset {}: vocab_size must be positive", preset);
  ModelConfig c;
  c.vocab_size = vocab_size;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.torch_dtype = "float32";
  auto v3_family = [&](int64_t d, int64_t layers, int64_t heads, int64_t experts) {
    c.model_type = "deepseek_v3";
    c.hidden_size = d;
    c.num_hidden_layers = layers;
    c.num_attention_heads = heads;
    c.num_key_value_heads = heads;
    c.q_lora_rank = d / 2;
    c.kv_lora_rank = d / 4;
    c.qk_nope_head_dim = d / heads;
    c.qk_rope_head_dim = d / heads / 2;
    c.v_head_dim = d / heads;
    c.head_dim = c.qk_rope_head_dim;
    c.intermediate_size = 3 * d;
    c.moe_intermediate_size = 3 * d / 4;
    c.n_routed_experts = experts;
    c.n_shared_experts = 1;
    c.num_experts_per_tok = 2;
    c.first_k_dense_replace = 1;
    c.scoring_func = "sigmoid";
    c.topk_method = "noaux_tc";
    c.n_group = 4;
    c.topk_group = 2;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.5;
    c.num_nextn_predict_layers = 1;
    c.max_position_embeddings = 2048;
  };
  if (preset == "tiny") {
    v3_family(128, 4, 4, 8);
  } else if (preset == "small") {
    v3_family(256, 6, 8, 16);
    c.num_experts_per_tok = 4;
  } else if (preset == "tiny-dense") {
    c.model_type = "llama";
    c.hidden_size = 128;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 4;
    c.head_dim = 32;
    c.intermediate_size = 384;
    c.max_position_embeddings = 2048;
  } else if (preset == "v2-lite") {
    c.model_type = "deepseek_v2";
    c.hidden_size = 2048;
    c.num_hidden_layers = 27;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 16;
    c.q_lora_rank = 0;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.head_dim = 64;
    c.intermediate_size = 10944;
    c.moe_intermediate_size = 1408;
    c.n_routed_experts = 64;
    c.n_shared_experts = 2;
    c.num_experts_per_tok = 6;
    c.first_k_dense_replace = 1;
    c.scoring_func = "softmax";
    c.topk_method = "greedy";
    c.max_position_embeddings = 163840;
  } else if (preset == "v3") {
    v3_family(7168, 61, 128, 256);
    c.q_lora_rank = 1536;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.head_dim = 64;
    c.intermediate_size = 18432;
    c.moe_intermediate_size = 2048;
    c.num_experts_per_tok = 8;
    c.n_group = 8;
    c.topk_group = 4;
    c.first_k_dense_replace = 3;
    c.max_position_embeddings = 163840;
  } else {
    std::string names;
    for (const std::string& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    fail("[train] model.preset: unknown preset '{}' (one of {})", preset, names);
  }
  validate_model_config(c, "preset " + preset);
  return c;
}

}  // namespace dseek::train
