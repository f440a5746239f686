// `dseek synth`: operator synthesis from the command line.
//   dseek synth search --task lm-proj|lm-ffn|conv --d-in N --d-out N [--tokens T] [--image S]
//                      --coeffs r=4,g=4 --method mcts|sample --budget N --jobs J --seed S
//                      --max-depth D --quality teacher-fit|lm --out DIR
//     searches (synth/search.h), evaluating candidates with the analytic + latency + teacher-fit
//     evaluator (synth/evaluate.h), storing every result in DIR/synth.sqlite (synth/store.h); the
//     same command with the same DIR resumes. Progress on stderr.
//   dseek synth show DIR [--top N] [--format png|svg|both]
//     the candidates by quality with the Pareto fronts of quality vs FLOPs and vs latency marked,
//     plots of both (DIR/pareto_flops.*, DIR/pareto_latency.*) and the front's operator files
//     (DIR/front/<hash>.json, loadable by synth/serialize.h).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/cuda.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/token_shards.h"
#include "plot/chart.h"
#include "synth/cost.h"
#include "synth/pareto.h"
#include "synth/serialize.h"
#include "synth/store.h"
#include "synth/task.h"

namespace dseek::cli {
namespace {

using namespace dseek::synth;

struct SearchArgs {
  TaskOptions task;
  std::string coeffs, method = "mcts", quality, out, device = "cpu";
  int64_t budget = 64, max_evaluations = -1;
  int jobs = 1, batch = 8, fit_steps = 300, latency_runs = 5;
  int64_t proxy_steps = 300, proxy_repeats = 1;
  uint64_t seed = 1;
  double cost_weight = 0.1, exploration = 0.5, fit_lr = 1e-2;
};

void run_search(SearchArgs args) {
  args.task.coeffs = parse_coeffs(args.coeffs);
  const Task task = make_task(args.task);
  DSEEK_CHECK(args.quality == "teacher-fit" || args.quality == "lm",
              "[synth search] --quality {}: teacher-fit or lm", args.quality);
  DSEEK_CHECK(args.quality != "lm" || task.name == "lm-proj" || task.name == "lm-ffn",
              "[synth search] --quality lm scores language-model projections: --task lm-proj or "
              "lm-ffn, not {}",
              task.name);
  const Device device = args.device == "cuda" ? Device::CUDA : Device::CPU;
  if (device == Device::CUDA) cuda::require("--device cuda");
  SearchOptions so;
  so.method = parse_method(args.method);
  so.budget = args.budget;
  so.max_evaluations = args.max_evaluations;
  so.jobs = args.jobs;
  so.batch = args.batch;
  so.seed = args.seed;
  so.exploration = args.exploration;
  so.cost_weight = args.cost_weight;
  so.ref_flops = flops(task.baseline, task.spec.valuations[0]);
  so.admissible = task.admissible;
  AnalyticOptions ao;
  ao.device = device;
  ao.latency_runs = args.latency_runs;
  ao.fit.steps = args.fit_steps;
  ao.fit.lr = args.fit_lr;
  ao.quality = args.quality == "lm" ? Quality::Lm : Quality::TeacherFit;
  ao.proxy.kind = task.name;
  ao.proxy.steps = args.proxy_steps;
  ao.proxy.repeats = args.proxy_repeats;
  ao.proxy.seed = args.seed;
  // The default warm-up (20 steps) is for the default 300 steps; short proxies warm up a fifth.
  ao.proxy.warmup = std::min<int64_t>(ao.proxy.warmup, args.proxy_steps / 5);
  if (ao.quality == Quality::Lm) {
    // The dense model's run first: it checks the proxy settings and the corpus before any
    // candidate (a bad setting would otherwise reject every candidate) and is cached for all.
    const ProxyResult base = proxy_baseline(ao.proxy);
    fmt::print(stderr,
               "proxy baseline ({}, {} steps × {} repeats): validation loss {:.4f} ({:.1f} s)\n",
               ao.proxy.kind, ao.proxy.steps, ao.proxy.repeats, base.val_loss, base.seconds);
  }

  // What the run is a function of (search.h): a resumed run must match every field.
  nlohmann::ordered_json settings = {{"task", task.name},
                                     {"d_in", args.task.d_in},
                                     {"d_out", args.task.d_out},
                                     {"tokens", args.task.tokens},
                                     {"image", args.task.image},
                                     {"coeffs", args.coeffs},
                                     {"max_depth", args.task.max_depth},
                                     {"method", method_name(so.method)},
                                     {"seed", so.seed},
                                     {"batch", so.batch},
                                     {"exploration", so.exploration},
                                     {"cost_weight", so.cost_weight},
                                     {"quality", args.quality},
                                     {"fit_steps", ao.fit.steps},
                                     {"fit_lr", ao.fit.lr},
                                     {"proxy", args.quality == "lm" ? ao.proxy.key() : ""},
                                     {"device", args.device},
                                     {"latency_runs", ao.latency_runs}};
  Store store(args.out);
  store.begin_run(settings.dump());
  const std::map<uint64_t, Candidate> known = store.load_known();
  if (!known.empty())
    fmt::print(stderr, "resuming: {} candidates stored in {}\n", known.size(), store.path());

  Progress progress(fmt::format("synth {} {}", task.name, method_name(so.method)), so.budget,
                    "cand");
  SearchHooks hooks;
  hooks.known = &known;
  hooks.save = [&](const std::vector<Candidate>& round) { store.save(task.spec, round); };
  hooks.progress = [&](const SearchProgress& p) {
    progress.set_suffix(fmt::format("{} evaluated, {} stored, best quality {:.4g}", p.evaluated,
                                    p.resumed, p.best_quality));
    progress.update(p.candidates);
  };
  const SearchResult r = search(task.spec, make_analytic_evaluator(task, ao), so, hooks);
  progress.finish();

  int ok = 0, mismatch = 0, error = 0;
  for (const Candidate& c : r.candidates)
    (c.status == "ok" ? ok : c.status == "mismatch" ? mismatch : error) += 1;
  fmt::print(
      "{} candidates ({} evaluated now, {} from the store): {} ok, {} lowering mismatches, "
      "{} rejected by the evaluator; {} iterations{}{}\n",
      r.candidates.size(), r.evaluated, r.candidates.size() - size_t(r.evaluated), ok, mismatch,
      error, r.iterations, r.exhausted ? "; the space is exhausted (no new candidate found)" : "",
      r.interrupted ? "; stopped by --max-evaluations (run again to resume)" : "");
  fmt::print("results in {}; see them with: dseek synth show {}\n", store.path(), args.out);
}

struct Row {
  const Candidate* c;
  bool front_flops = false, front_latency = false;
};

void scatter(plot::Chart& chart, const std::string& label, const std::vector<double>& x,
             const std::vector<double>& y) {
  plot::Series s;
  s.label = label;
  for (size_t i = 0; i < x.size(); ++i) {  // separated by gaps: drawn as dots
    s.x.insert(s.x.end(), {x[i], NAN});
    s.y.insert(s.y.end(), {y[i], NAN});
  }
  chart.series.push_back(std::move(s));
}

void front_line(plot::Chart& chart, std::vector<std::pair<double, double>> points) {
  std::sort(points.begin(), points.end());
  plot::Series s;
  s.label = "Pareto front";
  for (const auto& [x, y] : points) s.x.push_back(x), s.y.push_back(y);
  chart.series.push_back(std::move(s));
}

void run_show(const std::string& dir, int top, const std::string& format) {
  namespace fs = std::filesystem;
  const fs::path file = fs::path(dir) / "synth.sqlite";
  DSEEK_CHECK(fs::is_regular_file(file),
              "[synth show] {}: no results store here (dseek synth search --out {} writes one)",
              file.string(), dir);
  Store store(dir);
  const std::vector<StoredCandidate> all = store.load();
  fmt::print("run: {}\n", store.settings());
  std::vector<Row> rows;
  int mismatch = 0, error = 0;
  for (const StoredCandidate& sc : all) {
    if (sc.candidate.status == "ok") rows.push_back({&sc.candidate});
    mismatch += sc.candidate.status == "mismatch";
    error += sc.candidate.status == "error";
  }
  fmt::print("{} candidates: {} ok, {} lowering mismatches, {} rejected by the evaluator\n",
             all.size(), rows.size(), mismatch, error);
  DSEEK_CHECK(!rows.empty(), "[synth show] {}: no candidate was evaluated successfully",
              file.string());
  std::vector<double> fl, lat, q;
  for (const Row& r : rows) {
    fl.push_back(double(r.c->eval.flops));
    lat.push_back(r.c->eval.latency_ms);
    q.push_back(r.c->eval.quality);
  }
  const std::vector<bool> ff = pareto_front(fl, q), lf = pareto_front(lat, q);
  for (size_t i = 0; i < rows.size(); ++i)
    rows[i].front_flops = ff[i], rows[i].front_latency = lf[i];
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return a.c->eval.quality < b.c->eval.quality;
  });

  fmt::print("\nfront: F = Pareto-optimal in quality vs FLOPs, L = in quality vs latency\n");
  fmt::print("{:>5} {:>2} {:16} {:>10} {:>10} {:>8} {:>10}  {}\n", "#", "", "hash", "quality",
             "FLOPs", "params", "latency", "operator");
  int shown = 0;
  for (const Row& r : rows) {
    const bool on_front = r.front_flops || r.front_latency;
    if (shown >= top && !on_front) continue;
    ++shown;
    const std::string marks =
        std::string(r.front_flops ? "F" : " ") + std::string(r.front_latency ? "L" : " ");
    const Spec& spec = all[size_t(r.c->index)].spec;
    fmt::print("{:>5} {:2} {:016x} {:>10.4g} {:>10} {:>8} {:>8.4f}ms  {}\n", r.c->index, marks,
               r.c->hash, r.c->eval.quality, human_count(double(r.c->eval.flops)),
               human_count(double(r.c->eval.params)), r.c->eval.latency_ms,
               history_str(r.c->op, spec.vars));
  }

  // The front's operators as files (the `dseek train` layer override reads them).
  const fs::path front_dir = fs::path(dir) / "front";
  std::error_code ec;
  fs::create_directories(front_dir, ec);
  DSEEK_CHECK(!ec, "[synth show] {}: cannot create: {}", front_dir.string(), ec.message());
  int written = 0;
  for (const Row& r : rows) {
    if (!r.front_flops && !r.front_latency) continue;
    const fs::path path = front_dir / fmt::format("{:016x}.json", r.c->hash);
    write_file_atomic(path.string(),
                      operator_to_json(all[size_t(r.c->index)].spec, r.c->op) + "\n");
    ++written;
  }
  fmt::print("\nwrote {} front operators to {}\n", written, front_dir.string());

  bool positive = true;
  for (double x : q) positive = positive && x > 0.0;
  for (const bool use_flops : {true, false}) {
    plot::Chart chart;
    chart.title =
        fmt::format("synthesised operators: quality vs {}", use_flops ? "FLOPs" : "latency");
    chart.x_label = use_flops ? "log10 FLOPs" : "latency (ms)";
    chart.y_label = "quality (lower is better)";
    chart.log_y = positive;
    std::vector<double> x;
    std::vector<std::pair<double, double>> front;
    for (size_t i = 0; i < rows.size(); ++i) {
      const Candidate& c = *rows[i].c;
      x.push_back(use_flops ? std::log10(double(std::max<int64_t>(c.eval.flops, 1)))
                            : c.eval.latency_ms);
      if (use_flops ? rows[i].front_flops : rows[i].front_latency)
        front.emplace_back(x.back(), c.eval.quality);
    }
    std::vector<double> y;
    for (const Row& r : rows) y.push_back(r.c->eval.quality);
    scatter(chart, "candidates", x, y);
    front_line(chart, front);
    const std::string stem =
        (fs::path(dir) / (use_flops ? "pareto_flops" : "pareto_latency")).string();
    if (format != "png") {
      plot::write_svg(chart, stem + ".svg");
      fmt::print("wrote {}.svg\n", stem);
    }
    if (format != "svg") {
      plot::write_png(chart, stem + ".png");
      fmt::print("wrote {}.png\n", stem);
    }
  }
}

}  // namespace

void add_synth_commands(CLI::App& app) {
  auto* synth =
      app.add_subcommand("synth", "Operator synthesis: search for new layers, show results");
  synth->require_subcommand(1);

  auto args = std::make_shared<SearchArgs>();
  auto* s = synth->add_subcommand("search", "Search for operators that replace a layer");
  s->add_option("--task", args->task.task, "lm-proj, lm-ffn or conv")->required();
  s->add_option("--d-in", args->task.d_in, "input features (conv: channels C)")
      ->capture_default_str();
  s->add_option("--d-out", args->task.d_out, "output features (conv: C_out; lm-ffn: d_ff)")
      ->capture_default_str();
  s->add_option("--tokens", args->task.tokens, "T for lm tasks, the batch N for conv")
      ->capture_default_str();
  s->add_option("--image", args->task.image, "conv: H = W")->capture_default_str();
  s->add_option("--coeffs", args->coeffs,
                "coefficients primitives may use, e.g. r=4,g=4 or k=3,g=4");
  s->add_option("--max-depth", args->task.max_depth, "primitives per operator")
      ->capture_default_str();
  s->add_option("--method", args->method, "mcts or sample (Canvas's sampler)")
      ->capture_default_str();
  s->add_option("--budget", args->budget, "distinct candidates in the run")->capture_default_str();
  s->add_option("--max-evaluations", args->max_evaluations,
                "stop after this many evaluations (resume later with the same --out)");
  s->add_option("--jobs", args->jobs, "evaluation threads")->capture_default_str();
  s->add_option("--batch", args->batch,
                "new candidates per round (fixed, so results do not depend on --jobs)")
      ->capture_default_str();
  s->add_option("--seed", args->seed, "random seed")->capture_default_str();
  s->add_option("--exploration", args->exploration, "UCB1 exploration constant")
      ->capture_default_str();
  s->add_option("--cost-weight", args->cost_weight,
                "reward = -quality - w*log2(FLOPs / dense FLOPs)")
      ->capture_default_str();
  s->add_option("--quality", args->quality,
                "teacher-fit: validation error of fitting a random dense teacher layer; lm: "
                "validation loss of a proxy language model with the candidate in its projections, "
                "relative to the dense model's (seconds per candidate)")
      ->required();
  s->add_option("--proxy-steps", args->proxy_steps, "lm: training steps of the proxy model")
      ->capture_default_str();
  s->add_option("--proxy-repeats", args->proxy_repeats,
                "lm: seeds averaged per candidate (one run's loss moves by ~2% with the init)")
      ->capture_default_str();
  s->add_option("--fit-steps", args->fit_steps, "teacher-fit Adam steps")->capture_default_str();
  s->add_option("--fit-lr", args->fit_lr, "teacher-fit Adam learning rate")->capture_default_str();
  s->add_option("--device", args->device, "where latency is measured: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  s->add_option("--latency-runs", args->latency_runs, "timed runs per candidate (median)")
      ->capture_default_str();
  s->add_option("--out", args->out, "results directory (DIR/synth.sqlite)")->required();
  s->callback([args] { run_search(*args); });

  struct ShowArgs {
    std::string dir, format = "both";
    int top = 30;
  };
  auto show_args = std::make_shared<ShowArgs>();
  auto* show = synth->add_subcommand("show", "Pareto table and plots of a search's results");
  show->add_option("dir", show_args->dir, "the search's --out directory")->required();
  show->add_option("--top", show_args->top, "rows besides the front")->capture_default_str();
  show->add_option("--format", show_args->format, "png, svg or both")
      ->check(CLI::IsMember({"png", "svg", "both"}))
      ->capture_default_str();
  show->callback([show_args] { run_show(show_args->dir, show_args->top, show_args->format); });
}

}  // namespace dseek::cli
