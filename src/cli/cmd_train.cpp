// `dseek train`: trains a DeepSeek-style model from prepared data (src/train/trainer.h).
// Settings come from defaults, then --config FILE (TOML or JSON), then the dedicated flags, then
// --set section.key=value; docs/TRAINING.md lists every setting.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace dseek::cli {
namespace {

struct TrainFlags {
  std::string config_file, preset, model_config, tokenizer, data, out, schedule;
  int64_t steps = 0, seed = 0, batch_size = 0, seq_len = 0, threads = 0;
  double lr = 0, compute_budget = 0;
  std::vector<std::string> sets;
  bool resume = false;
};

}  // namespace

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a DeepSeek-style model on prepared data");
  auto f = std::make_shared<TrainFlags>();
  auto* config = cmd->add_option("--config", f->config_file, "settings file (.toml or .json)");
  auto* preset = cmd->add_option("--preset", f->preset, "model shape: tiny, small, tiny-dense, v2-lite, v3");
  auto* model = cmd->add_option("--model-config", f->model_config, "HF config.json to train instead of a preset");
  auto* tok = cmd->add_option("--tokenizer", f->tokenizer, "tokenizer.json or its directory");
  auto* data = cmd->add_option("--data", f->data, "directory from `dseek data prepare`");
  auto* out = cmd->add_option("--out", f->out, "run directory");
  auto* steps = cmd->add_option("--steps", f->steps, "optimizer steps in all (a resumed run continues up to it)");
  auto* seed = cmd->add_option("--seed", f->seed, "seed of the initialisation and data order");
  auto* batch = cmd->add_option("--batch-size", f->batch_size, "sequences per micro-batch");
  auto* seq = cmd->add_option("--seq-len", f->seq_len, "tokens per sequence");
  auto* lr = cmd->add_option("--lr", f->lr, "peak learning rate");
  auto* sched = cmd->add_option("--schedule", f->schedule, "constant | cosine | wsd | multistep");
  auto* budget = cmd->add_option("--compute-budget", f->compute_budget,
                                 "FLOPs: pick batch size, lr and steps by DeepSeek LLM's scaling laws");
  auto* threads = cmd->add_option("--threads", f->threads, "OpenMP threads (0: default)");
  cmd->add_option("--set", f->sets, "override any setting: section.key=value (repeatable)");
  cmd->add_flag("--resume", f->resume, "continue the run from its newest checkpoint");
  cmd->callback([=] {
    train::TrainConfig c;
    if (config->count()) train::load_train_config_file(f->config_file, c);
    if (preset->count()) c.preset = f->preset;
    if (model->count()) c.model_config = f->model_config;
    if (tok->count()) c.tokenizer = f->tokenizer;
    if (data->count()) c.data = f->data;
    if (out->count()) c.out = f->out;
    if (steps->count()) c.steps = f->steps;
    if (seed->count()) c.seed = f->seed;
    if (batch->count()) c.batch_size = f->batch_size;
    if (seq->count()) c.seq_len = f->seq_len;
    if (lr->count()) c.lr = f->lr;
    if (sched->count()) c.schedule = f->schedule;
    if (budget->count()) c.compute_budget = f->compute_budget;
    if (threads->count()) c.threads = f->threads;
    for (const std::string& s : f->sets) train::apply_train_config_override(s, c);
    const train::TrainSummary s = train::run_training(c, f->resume);
    if (s.last_step > s.first_step) {
      fmt::print("trained steps {}..{} of {}: loss {:.4f}", s.first_step + 1, s.last_step,
                 s.run_dir, s.last_loss);
      if (s.last_val_loss >= 0) fmt::print(", validation loss {:.4f}", s.last_val_loss);
      fmt::print(" (unigram entropy {:.4f}), {:.0f} tokens/s\n", s.unigram_entropy,
                 s.tokens_per_second);
    }
    if (s.interrupted) throw CLI::RuntimeError(130);
  });
}

}  // namespace dseek::cli
