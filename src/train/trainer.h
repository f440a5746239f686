// Trainer: the `dseek train` loop. One optimizer step:
//   for each of grad_accum micro-batches of batch_size packed sequences (data/loader.h):
//       forward + backward of each sequence, gradients scaled by 1/(batch_size·grad_accum)
//   clip the global gradient norm; AdamW at the scheduled lr; zero the gradients
//   auxiliary-loss-free balancing: every noaux_tc gate's e_score_correction_bias moves by
//       b_i += γ·sign(mean load − load_i) with the step's per-layer expert load (γ scheduled)
//   log a line of metrics.jsonl; validate, checkpoint and record expert load at their intervals
//
// The run directory holds config.json (the model), train_config.json, tokenizer/, metrics.jsonl,
// run.json (parameter count, unigram entropy of the data) and checkpoints/. Resuming restores
// the parameters, buffers, optimizer moments and data position of the newest checkpoint and cuts
// metrics.jsonl back to it, so an interrupted and resumed run logs what an uninterrupted one would.
// SIGINT/SIGTERM finish the current step, write a checkpoint and stop.
#pragma once

#include <cstdint>
#include <string>

#include "train/train_config.h"

namespace dseek::train {

struct TrainSummary {
  int64_t first_step = 0, last_step = 0;  // steps run by this call: (first_step, last_step]
  double last_loss = 0.0;                 // main cross-entropy of the last step
  double last_val_loss = -1.0;            // of the last validation (-1: none ran)
  double unigram_entropy = 0.0;           // nats/token of the training data
  double tokens_per_second = 0.0;
  bool interrupted = false;
  std::string run_dir;
};

// Trains as `config` says (config.out is the run directory; with `resume`, continues from its
// newest checkpoint up to config.steps). Progress goes to stderr.
TrainSummary run_training(TrainConfig config, bool resume);

}  // namespace dseek::train
