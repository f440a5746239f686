// `dseek plot`: the metrics.jsonl reader (fields, null, a truncated last line skipped with a
// warning, bad lines as errors naming file and line) and the command end to end through the binary.
#include <gtest/gtest.h>

#include <cmath>

#include "plot/chart.h"
#include "plot/run_metrics.h"
#include "test_plot_util.h"

using namespace dseek;
using namespace dseek::plot;
using namespace dseek::plot_testing;
using namespace dseek::testing;

TEST(PlotMetrics, ReadsFieldsAndSkipsOnlyATruncatedLastLine) {
  TempDir dir;
  const fs::path path = dir.path / "metrics.jsonl";
  std::ofstream(path)
      << R"({"step": 1, "loss": 4.5, "lr": 1e-4, "max_vio": 0.9, "extra": "x"})"
         "\n\n"
      << R"({"step": 2, "loss": null, "val_loss": 4.0, "expert_load": [[1, 2], [3, 4]]})"
         "\n"
      << R"({"step": 3, "loss": 4.1, "expert_load": [[5, 6, 7]]})"
         "\n"
      << R"({"step": 4, "loss": 3.)";
  RunMetrics m = read_metrics(path.string());
  EXPECT_EQ(m.loss.step, (std::vector<double>{1, 3}));
  EXPECT_EQ(m.loss.value, (std::vector<double>{4.5, 4.1}));
  EXPECT_EQ(m.val_loss.value, (std::vector<double>{4.0}));
  EXPECT_EQ(m.lr.value, (std::vector<double>{1e-4}));
  EXPECT_EQ(m.max_vio.value, (std::vector<double>{0.9}));
  EXPECT_TRUE(m.tokens_per_s.empty());
  EXPECT_EQ(m.expert_load, (std::vector<std::vector<double>>{{5, 6, 7}}));  // the last one
  EXPECT_EQ(m.expert_load_step, 3);
  ASSERT_EQ(m.warnings.size(), 1u);
  EXPECT_NE(m.warnings[0].find("metrics.jsonl:5"), std::string::npos) << m.warnings[0];

  const auto charts = run_charts(m, path.string());
  std::vector<std::string> stems;
  for (const auto& [stem, chart] : charts) stems.push_back(stem);
  EXPECT_EQ(stems, (std::vector<std::string>{"loss", "lr", "max_vio", "expert_load"}));
  EXPECT_EQ(charts[0].second.series.size(), 2u);
  EXPECT_EQ(charts[3].second.series[0].x, (std::vector<double>{0, 1, 2}));
}

TEST(PlotMetrics, BadLinesAreErrorsNamingFileAndLine) {
  TempDir dir;
  const fs::path path = dir.path / "metrics.jsonl";
  auto error_for = [&](const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
    return error_of([&] { read_metrics(path.string()); });
  };
  std::string err =
      error_for("{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": \n{\"step\": 3}\n");
  EXPECT_NE(err.find(path.string() + ":2: invalid JSON"), std::string::npos) << err;
  // A truncated last line that still ends in a newline was not cut off by a kill: an error.
  err = error_for("{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"lo\n");
  EXPECT_NE(err.find(":2: invalid JSON"), std::string::npos) << err;
  err = error_for("{\"step\": 1, \"loss\": 2}\n{\"loss\": 3}\n");
  EXPECT_NE(err.find(":2: missing \"step\""), std::string::npos) << err;
  err = error_for("{\"step\": 1, \"loss\": \"high\"}\n");
  EXPECT_NE(err.find(":1: \"loss\" must be a number"), std::string::npos) << err;
  err = error_for("[1, 2]\n");
  EXPECT_NE(err.find(":1: expected a JSON object"), std::string::npos) << err;
  err = error_for("{\"step\": 1, \"expert_load\": [1, 2]}\n");
  EXPECT_NE(err.find(":1: \"expert_load\" must be an array (per MoE layer)"), std::string::npos)
      << err;
  err = error_for("");
  EXPECT_NE(err.find("no metrics"), std::string::npos) << err;
  err = error_for("{\"step\": 1, \"lr\": 0.1}\n");
  EXPECT_EQ(error_of([&] { read_metrics(path.string()); }), "(no error)");
  err = error_of([&] { run_charts(read_metrics(path.string()), path.string()); });
  EXPECT_NE(err.find("no \"loss\" or \"val_loss\""), std::string::npos) << err;
  err = error_of([&] { read_metrics((dir.path / "missing.jsonl").string()); });
  EXPECT_NE(err.find("missing.jsonl: cannot open"), std::string::npos) << err;
}

TEST(CliPlot, WritesEveryChartOfARun) {
  TempDir run;
  {
    std::ofstream metrics(run.path / "metrics.jsonl");
    for (int step = 1; step <= 60; ++step) {
      metrics << fmt::format(
                     R"({{"step": {}, "loss": {}, "lr": {}, "max_vio": {}, "tokens_per_s": {}}})",
                     step, 5.0 / std::sqrt(step), 3e-4 * std::min(1.0, step / 10.0), 1.0 / step,
                     1000 + step)
              << "\n";
      if (step % 20 == 0) {
        metrics << fmt::format(R"({{"step": {}, "val_loss": {}, )"
                               R"("expert_load": [[{}, 5, 7, 9], [4, 4, 4, {}]]}})",
                               step, 5.2 / std::sqrt(step), step, step)
                << "\n";
      }
    }
    metrics << R"({"step": 61, "lo)";  // killed mid-write
  }
  CliRun r = run_dseek_shell("plot " + run.path.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: [plot]"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("metrics.jsonl:64: skipping the truncated last line"), std::string::npos)
      << r.err;
  for (const char* stem : {"loss", "lr", "max_vio", "tokens_per_s", "expert_load"}) {
    for (const char* ext : {".png", ".svg"}) {
      const fs::path file = run.path / (std::string(stem) + ext);
      ASSERT_TRUE(fs::exists(file)) << file;
      EXPECT_NE(r.out.find("wrote " + file.string()), std::string::npos) << r.out;
    }
    const Image image = read_png(run.path / (std::string(stem) + ".png"));
    EXPECT_EQ(image.width, 900);
    EXPECT_EQ(image.height, 540);
    EXPECT_GT(image.count(series_color(0)), 300u) << stem;
  }
  const std::string loss_svg = slurp(run.path / "loss.svg");
  EXPECT_EQ(occurrences(loss_svg, "<polyline"), 2u);  // train and validation
  const std::string load_svg = slurp(run.path / "expert_load.svg");
  EXPECT_NE(load_svg.find(">Expert load at step 60</text>"), std::string::npos);
  EXPECT_NE(load_svg.find(">MoE layer 1</text>"), std::string::npos);

  // --out and --format svg: only SVGs, elsewhere.
  r = run_dseek_shell("plot " + run.path.string() + " --format svg --out " +
                      (run.path / "charts").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(run.path / "charts" / "loss.svg"));
  EXPECT_FALSE(fs::exists(run.path / "charts" / "loss.png"));
}

TEST(CliPlot, BadInputExitsWithTheFileAndLine) {
  TempDir run;
  std::ofstream(run.path / "metrics.jsonl")
      << "{\"step\": 1, \"loss\": 2}\n{\"step\": oops}\n{\"step\": 3}\n";
  CliRun r = run_dseek_shell("plot " + run.path.string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("metrics.jsonl:2: invalid JSON"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(run.path / "loss.png"));
  r = run_dseek_shell("plot " + (run.path / "absent").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cannot open"), std::string::npos) << r.err;
  r = run_dseek_shell("plot " + run.path.string() + " --format gif");
  EXPECT_NE(r.exit_code, 0);  // a usage error (CLI11's exit code)
  EXPECT_NE(r.err.find("--format"), std::string::npos) << r.err;
}
