// TrainConfig: every setting of `dseek train`, readable from a TOML or JSON file (sections as
// below, e.g. `[optim] lr = 3e-3` or {"optim": {"lr": 0.003}}) and from `--set section.key=value`
// flags, which win over the file. Unknown keys, wrong types and bad values are errors naming the
// file and key. docs/TRAINING.md documents every field (a test checks that it lists them all).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace dseek::train {

struct TrainConfig {
  // [model]
  std::string preset = "tiny";  // tiny | small | tiny-dense | v2-lite | v3 (see preset_model_config)
  std::string model_config;     // an HF config.json (or its directory); overrides the preset
  double init_std = 0.02;       // weights ~ normal(0, init_std)
  // Start from these weights (a run, one of its checkpoints, or an HF/exported model directory)
  // with a fresh optimizer: fine-tuning and continued pretraining (see train/init_from.h).
  std::string init_from;
  // Rope-scaling overrides applied to the model config before the model is built (context
  // extension, train/model_overrides.h). "" / -1 keep the model's own value.
  std::string rope_type;  // none | yarn | linear
  double rope_factor = -1;
  int64_t rope_original_max = -1;
  double rope_beta_fast = -1, rope_beta_slow = -1, rope_mscale = -1, rope_mscale_all_dim = -1;
  int64_t max_position_embeddings = -1;
  // [data]
  std::string data;             // a `dseek data prepare` directory
  std::string tokenizer;        // tokenizer.json or its directory (copied into the run)
  int64_t seq_len = 128;
  double val_fraction = 0.02;
  // [train]
  int64_t steps = 200;
  int64_t batch_size = 8;  // sequences per micro-batch
  int64_t grad_accum = 1;  // micro-batches per optimizer step
  int64_t seed = 0;
  double compute_budget = 0.0;  // FLOPs; > 0 picks batch_size, lr and steps by the scaling laws
  std::string compute_dtype = "f32";  // f32 | bf16 (bf16 matmuls, f32 master weights)
  std::string precision = "default";  // default | fp8 (FP8 GEMMs in the linears, docs/FP8.md)
  std::string device = "cpu";         // cpu | cuda (parameters, optimizer and layers on the GPU)
  std::string task = "pretrain";      // pretrain | sft | dpo (the data directory's kind)
  // train.synth_override = { file = "op.json", site = "mlp.up_proj" }: MLP projections replaced
  // by a synthesised operator (train/synth_override.h); "" / "" = none.
  std::string synth_file, synth_site;
  // [dpo]
  double dpo_beta = 0.1;  // β of the DPO loss (train/dpo.h)
  // [optim]
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 20;
  std::string schedule = "cosine";  // constant | cosine | wsd | multistep
  double decay_start = 0.8;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
  std::string moment_dtype = "f32";  // f32 | bf16: AdamW's moments (one process)
  std::string expert_grad_dtype = "f32";  // f32 | bf16: routed experts' weight gradients (1 GPU)
  std::string grad_dtype = "f32";         // f32 | bf16: every GEMM-written weight gradient (1 GPU)
  // [moe]
  std::string bias_update_speed = "0.001";  // γ schedule ("0.001", "0.001,0@900"); 0 freezes
  std::string aux_loss = "none";            // none | sequence | expert | device
  double aux_alpha = 1e-4;
  int64_t aux_devices = 1;
  // [mtp]
  std::string mtp_lambda = "0.3";  // λ schedule ("0.3,0.1@800"); 0 turns MTP training off
  // [eval]
  int64_t eval_interval = 50;
  int64_t eval_sequences = 32;
  // [log]
  int64_t expert_load_interval = 10;
  // [checkpoint]
  int64_t checkpoint_interval = 100;
  int64_t keep_last = 3;
  // [dist] (data parallelism over MPI ranks, docs/DISTRIBUTED.md)
  int64_t dist_deterministic = 0;  // 1: fixed-order, bit-reproducible reductions
  double dist_bucket_mb = 4.0;     // gradient bucket size (MiB of f32)
  std::string dist_all_reduce = "mpi";  // mpi | hfreduce (dist/hfreduce.h)
  int64_t expert_parallel = 1;     // ranks per group the routed experts are spread over (1: none)
  int64_t ep_max_ranks = 0;        // node-limited routing: most ranks per token (0: any)
  int64_t pipeline_parallel = 1;   // pipeline stages the layers are split over (1: none)
  int64_t micro_batches = 1;       // pipeline: micro-batches each train.batch_size batch splits into
  // [run]
  std::string out;
  int64_t threads = 0;  // 0: OpenMP's default
};

struct ConfigField {
  std::string key;  // "optim.lr"
  std::string type;  // "int", "float", "string"
  std::string doc;
};
// Every field, in documentation order.
const std::vector<ConfigField>& train_config_fields();

// Reads a .toml or .json file into `config` (only the keys present change).
void load_train_config_file(const std::string& path, TrainConfig& config);
// Applies one "section.key=value" override.
void apply_train_config_override(const std::string& assignment, TrainConfig& config);
// Checks values and their combinations; throws "[train] <key>: ..." naming the key.
void validate_train_config(const TrainConfig& config);
// The config as JSON (what the run directory records).
std::string train_config_to_json(const TrainConfig& config);

// Model shape of a named preset for a vocabulary of `vocab_size` tokens:
//   tiny       DeepSeek-V3-style: MLA (q_lora), 8 routed + 1 shared experts, sigmoid noaux_tc
//              with groups, one dense layer, one MTP module; ~2M parameters
//   small      the same family, wider and deeper (~12M)
//   tiny-dense a DeepSeek-LLM-style dense Llama model of tiny's width
//   v2-lite    DeepSeek-V2-Lite's shape (15.7B; for planning, far beyond a CPU)
//   v3         DeepSeek-V3's shape (671B; likewise)
ModelConfig preset_model_config(const std::string& preset, int64_t vocab_size);
std::vector<std::string> preset_names();

}  // namespace dseek::train
