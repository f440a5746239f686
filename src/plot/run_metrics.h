// A training run's metrics log and the charts `dseek plot` draws from it.
//
//   RUN_DIR/metrics.jsonl: one JSON object per line, appended by the trainer:
//     {"step": 120, "loss": 3.21, "lr": 3e-4, "max_vio": 0.41, "tokens_per_s": 5210.5}
//     {"step": 200, "val_loss": 3.35}                                   (evaluation lines)
//     {"step": 200, "expert_load": [[812, 790, ...], [...]]}            (per MoE layer, per expert)
//   "step" is required on every line; the other fields are optional and null counts as absent
//   (JSON has no NaN). Unknown fields are ignored, so the trainer may log more.
//
// A run killed mid-write leaves a last line without its newline: if that line does not parse it
// is skipped with a warning. Any other malformed line is an error naming the file and line.
#pragma once

#include <string>
#include <vector>

#include "plot/chart.h"

namespace dseek::plot {

struct Curve {
  std::vector<double> step, value;
  bool empty() const { return step.empty(); }
};

struct RunMetrics {
  Curve loss, val_loss, lr, max_vio, tokens_per_s;
  double expert_load_step = 0;                   // step of the last expert_load seen
  std::vector<std::vector<double>> expert_load;  // [MoE layer][expert] token counts; may be empty
  std::vector<std::string> warnings;             // e.g. the skipped truncated last line
};

RunMetrics read_metrics(const std::string& path);

// The charts of a run, each with the file stem it is written under: "loss" (train and val loss),
// "lr", "max_vio", "tokens_per_s" and "expert_load" (the last logged load of each expert, one line
// per MoE layer). Charts without data are left out; a log without any loss is an error.
std::vector<std::pair<std::string, Chart>> run_charts(const RunMetrics& metrics,
                                                      const std::string& path);

struct PlotRunResult {
  std::vector<std::string> files;  // written, in order
  std::vector<std::string> warnings;
};

// Reads RUN_DIR/metrics.jsonl and writes <stem>.png and/or <stem>.svg for each chart into out_dir
// (RUN_DIR when empty; created if needed).
PlotRunResult plot_run(const std::string& run_dir, const std::string& out_dir, bool png, bool svg);

}  // namespace dseek::plot
