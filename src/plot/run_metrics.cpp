#include "plot/run_metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace dseek::plot {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Appends field `name` of line `object` to `curve` when present and not null.
void take(const json& object, const char* name, double step, Curve& curve,
          const std::string& where) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return;
  DSEEK_CHECK(it->is_number(), "[plot] {}: \"{}\" must be a number, got {}", where, name,
              it->dump());
  curve.step.push_back(step);
  curve.value.push_back(it->get<double>());
}

std::vector<std::vector<double>> parse_expert_load(const json& value, const std::string& where) {
  const char* shape = "an array (per MoE layer) of arrays (per expert) of token counts";
  DSEEK_CHECK(value.is_array() && !value.empty(), "[plot] {}: \"expert_load\" must be {}", where,
              shape);
  std::vector<std::vector<double>> load;
  for (const json& layer : value) {
    DSEEK_CHECK(layer.is_array() && !layer.empty(), "[plot] {}: \"expert_load\" must be {}", where,
                shape);
    std::vector<double> counts;
    for (const json& count : layer) {
      DSEEK_CHECK(count.is_number() && count.get<double>() >= 0,
                  "[plot] {}: \"expert_load\" must be {}; found {}", where, shape, count.dump());
      counts.push_back(count.get<double>());
    }
    load.push_back(std::move(counts));
  }
  return load;
}

}  // namespace

RunMetrics read_metrics(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  DSEEK_CHECK(file.good(), "[plot] {}: cannot open (is this a run directory?)", path);
  std::stringstream ss;
  ss << file.rdbuf();
  const std::string text = ss.str();

  RunMetrics metrics;
  size_t lines_read = 0;
  size_t begin = 0, number = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    const bool terminated = end != std::string::npos;
    if (!terminated) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, number);
    json object;
    try {
      object = json::parse(line);
    } catch (const json::exception& e) {
      if (!terminated) {  // the writer was killed mid-line
        metrics.warnings.push_back(fmt::format(
            "[plot] {}: skipping the truncated last line (no newline, not valid JSON)", where));
        break;
      }
      fail("[plot] {}: invalid JSON ({})", where, e.what());
    }
    DSEEK_CHECK(object.is_object(), "[plot] {}: expected a JSON object, got {}", where,
                object.type_name());
    auto step_it = object.find("step");
    DSEEK_CHECK(step_it != object.end(), "[plot] {}: missing \"step\"", where);
    DSEEK_CHECK(step_it->is_number() && std::isfinite(step_it->get<double>()),
                "[plot] {}: \"step\" must be a number, got {}", where, step_it->dump());
    const double step = step_it->get<double>();
    take(object, "loss", step, metrics.loss, where);
    take(object, "val_loss", step, metrics.val_loss, where);
    take(object, "lr", step, metrics.lr, where);
    take(object, "max_vio", step, metrics.max_vio, where);
    take(object, "tokens_per_s", step, metrics.tokens_per_s, where);
    if (auto it = object.find("expert_load"); it != object.end() && !it->is_null()) {
      metrics.expert_load = parse_expert_load(*it, where);
      metrics.expert_load_step = step;
    }
    ++lines_read;
  }
  DSEEK_CHECK(lines_read > 0, "[plot] {}: no metrics (the file is empty)", path);
  return metrics;
}

std::vector<std::pair<std::string, Chart>> run_charts(const RunMetrics& metrics,
                                                      const std::string& path) {
  DSEEK_CHECK(!metrics.loss.empty() || !metrics.val_loss.empty(),
              "[plot] {}: no \"loss\" or \"val_loss\" values to plot", path);
  std::vector<std::pair<std::string, Chart>> charts;
  auto curve_chart = [](const char* title, const char* y_label) {
    Chart chart;
    chart.title = title;
    chart.x_label = "step";
    chart.y_label = y_label;
    return chart;
  };
  Chart loss = curve_chart("Loss", "loss");
  if (!metrics.loss.empty())
    loss.series.push_back({"train", metrics.loss.step, metrics.loss.value});
  if (!metrics.val_loss.empty())
    loss.series.push_back({"validation", metrics.val_loss.step, metrics.val_loss.value});
  charts.emplace_back("loss", std::move(loss));
  auto add_curve = [&](const char* stem, const char* title, const char* y_label,
                       const Curve& curve) {
    if (curve.empty()) return;
    Chart chart = curve_chart(title, y_label);
    chart.series.push_back({y_label, curve.step, curve.value});
    charts.emplace_back(stem, std::move(chart));
  };
  add_curve("lr", "Learning rate", "lr", metrics.lr);
  add_curve("max_vio", "MaxVio (global expert load imbalance)", "MaxVio", metrics.max_vio);
  add_curve("tokens_per_s", "Throughput", "tokens/s", metrics.tokens_per_s);
  if (!metrics.expert_load.empty()) {
    Chart chart;
    chart.title = fmt::format("Expert load at step {}", metrics.expert_load_step);
    chart.x_label = "expert";
    chart.y_label = "tokens";
    for (size_t layer = 0; layer < metrics.expert_load.size(); ++layer) {
      Series series{fmt::format("MoE layer {}", layer), {}, metrics.expert_load[layer]};
      for (size_t e = 0; e < series.y.size(); ++e) series.x.push_back(double(e));
      chart.series.push_back(std::move(series));
    }
    charts.emplace_back("expert_load", std::move(chart));
  }
  return charts;
}

PlotRunResult plot_run(const std::string& run_dir, const std::string& out_dir, bool png, bool svg) {
  DSEEK_CHECK(png || svg, "[plot] nothing to write: neither PNG nor SVG asked for");
  const std::string metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();
  RunMetrics metrics = read_metrics(metrics_path);
  const fs::path out = out_dir.empty() ? fs::path(run_dir) : fs::path(out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  DSEEK_CHECK(!ec, "[plot] {}: cannot create ({})", out.string(), ec.message());
  PlotRunResult result;
  result.warnings = std::move(metrics.warnings);
  for (const auto& [stem, chart] : run_charts(metrics, metrics_path)) {
    if (png) {
      result.files.push_back((out / (stem + ".png")).string());
      write_png(chart, result.files.back());
    }
    if (svg) {
      result.files.push_back((out / (stem + ".svg")).string());
      write_svg(chart, result.files.back());
    }
  }
  return result;
}

}  // namespace dseek::plot
