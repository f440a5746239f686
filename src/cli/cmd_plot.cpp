// `dseek plot RUN_DIR`: charts of a training run's metrics.jsonl (loss, learning rate, MaxVio,
// throughput, expert load) as PNG and/or SVG.
#include <fmt/format.h>

#include "cli/commands.h"
#include "plot/run_metrics.h"

namespace dseek::cli {

void add_plot_command(CLI::App& app) {
  struct Options {
    std::string run_dir, out_dir, format = "both";
  };
  auto options = std::make_shared<Options>();
  auto* plot = app.add_subcommand("plot", "Plot a training run's metrics.jsonl as PNG/SVG charts");
  plot->add_option("run_dir", options->run_dir, "run directory holding metrics.jsonl")->required();
  plot->add_option("--out", options->out_dir, "output directory (default: the run directory)");
  plot->add_option("--format", options->format, "png, svg or both")
      ->check(CLI::IsMember({"png", "svg", "both"}))
      ->capture_default_str();
  plot->callback([options] {
    const bool png = options->format != "svg", svg = options->format != "png";
    const plot::PlotRunResult result = plot::plot_run(options->run_dir, options->out_dir, png, svg);
    for (const std::string& warning : result.warnings) fmt::print(stderr, "warning: {}\n", warning);
    for (const std::string& file : result.files) fmt::print("wrote {}\n", file);
  });
}

}  // namespace dseek::cli
