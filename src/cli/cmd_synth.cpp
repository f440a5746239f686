// `dseek synth`: operator synthesis from the command line.
//   dseek synth search --task lm-proj|lm-ffn|conv --d-in N --d-out N [--tokens T] [--image S]
//                      --coeffs r=4,g=4 --method mcts|sample --budget N --jobs J --seed S
//                      --max-depth D --quality teacher-fit|lm|vision --out DIR
//     searches (synth/search.h), evaluating candidates with the analytic + latency + teacher-fit
//     evaluator (synth/evaluate.h), storing every result in DIR/synth.sqlite (synth/store.h); the
//     same command with the same DIR resumes. Progress on stderr.
//   dseek synth show DIR [--top N] [--format png|svg|both]
//     the candidates by quality with the Pareto fronts of quality vs FLOPs and vs latency marked,
//     plots of both (DIR/pareto_flops.*, DIR/pareto_latency.*) and the front's operator files
//     (DIR/front/<hash>.json, loadable by synth/serialize.h).
//   dseek synth bench --device cpu|cuda [--dtype f32|bf16] [--tokens 4096] [--backward]
//                     [--ops FILE.json ...] [--from DIR --top K] [--shapes v2-lite|LIST]
//                     [--runs N] [--warmup N] [--row-ms MS] [--json FILE]
//     the known designs (dense, low rank, grouped), operator files and a search's best candidates
//     at a real model's projection shapes: FLOPs, params, median latency, speed-up against dense
//     (synth/bench.h), as a markdown table on stdout (and JSON).
//   dseek synth proxy --kind lm-proj|lm-ffn|conv ... (alias --task)
//     known designs and operator files on the proxy LM (lm-*) or the digits CNN (conv), paired
//     by seed, with standard errors.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "core/cuda.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/digits.h"
#include "data/token_shards.h"
#include "plot/chart.h"
#include "synth/bench.h"
#include "synth/conv_designs.h"
#include "synth/cost.h"
#include "synth/evaluate.h"
#include "synth/lower.h"
#include "synth/pareto.h"
#include "synth/proxy.h"
#include "synth/serialize.h"
#include "synth/store.h"
#include "synth/task.h"
#include "synth/vision_proxy.h"

namespace dseek::cli {
namespace {

using namespace dseek::synth;

struct SearchArgs {
  TaskOptions task;
  std::string coeffs, method = "mcts", quality, out, device = "cpu", digits;
  int64_t budget = 64, max_evaluations = -1;
  int jobs = 1, batch = 8, fit_steps = 300, latency_runs = 5;
  int64_t proxy_steps = 300, proxy_repeats = 1;
  uint64_t seed = 1;
  double cost_weight = 0.1, exploration = 0.5, fit_lr = 1e-2;
};

void run_search(SearchArgs args) {
  args.task.coeffs = parse_coeffs(args.coeffs);
  const Task task = make_task(args.task);
  DSEEK_CHECK(args.quality == "teacher-fit" || args.quality == "lm" || args.quality == "vision",
              "[synth search] --quality {}: teacher-fit, lm or vision", args.quality);
  DSEEK_CHECK(args.quality != "lm" || task.name == "lm-proj" || task.name == "lm-ffn",
              "[synth search] --quality lm scores language-model projections: --task lm-proj or "
              "lm-ffn, not {}",
              task.name);
  DSEEK_CHECK(
      args.quality != "vision" || (task.name == "conv" && args.task.d_in == args.task.d_out &&
                                   args.task.image == kDigitsSide),
      "[synth search] --quality vision trains a CNN on 8x8 digit images with the candidate "
      "in its C -> C convolutions: --task conv --image 8 and --d-in = --d-out, got --task "
      "{} --image {} --d-in {} --d-out {}",
      task.name, args.task.image, args.task.d_in, args.task.d_out);
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
  ao.quality = args.quality == "lm"       ? Quality::Lm
               : args.quality == "vision" ? Quality::Vision
                                          : Quality::TeacherFit;
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
  if (ao.quality == Quality::Vision) {
    // The conv task's baseline is k×k for a coefficient k, else 1×1 (task.h): so is the proxy's.
    ao.vision.kernel = 1;
    for (const auto& [name, value] : args.task.coeffs)
      if (name == "k") ao.vision.kernel = value;
    ao.vision.channels = args.task.d_in;
    ao.vision.steps = args.proxy_steps;
    ao.vision.warmup = std::min<int64_t>(ao.vision.warmup, args.proxy_steps / 5);
    ao.vision.repeats = args.proxy_repeats;
    ao.vision.seed = args.seed;
    ao.vision.digits = args.digits;
    const VisionResult base = vision_baseline(ao.vision);
    fmt::print(stderr,
               "vision proxy baseline (dense {}x{}, {} steps x {} repeats): validation loss "
               "{:.4f}, accuracy {:.2f}% ({:.1f} s)\n",
               ao.vision.kernel, ao.vision.kernel, ao.vision.steps, ao.vision.repeats,
               base.val_loss, 100.0 * base.val_accuracy, base.seconds);
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
  // Only in vision / equivariant runs, so the stores of earlier runs keep their settings.
  if (ao.quality == Quality::Vision) settings["vision"] = ao.vision.key();
  if (args.task.translation_equivariant) settings["translation_equivariant"] = true;
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

// Operator files and the `top` best candidates (by quality) of the search in `from`, appended to
// `ops`; `legend` gets a line per candidate (its label, quality and primitives).
void add_operators(const std::string& cmd, const std::vector<std::string>& files,
                   const std::string& from, int top, std::vector<BenchOperator>& ops,
                   std::vector<std::string>& legend) {
  for (const std::string& file : files) {
    BenchOperator b;
    b.label = std::filesystem::path(file).filename().string();
    std::ifstream in(file, std::ios::binary);
    DSEEK_CHECK(in.good(), "[{}] --ops {}: cannot read", cmd, file);
    std::stringstream text;
    text << in.rdbuf();
    try {
      b.record = operator_from_json(text.str());
    } catch (const Error& e) {
      fail("[{}] --ops {}: {}", cmd, file, e.what());
    }
    ops.push_back(std::move(b));
  }
  if (!from.empty()) {
    namespace fs = std::filesystem;
    DSEEK_CHECK(fs::is_regular_file(fs::path(from) / "synth.sqlite"),
                "[{}] --from {}: no results store here (dseek synth search --out {} writes one)",
                cmd, from, from);
    std::vector<StoredCandidate> all = Store(from).load();
    std::vector<const StoredCandidate*> ok;
    for (const StoredCandidate& sc : all)
      if (sc.candidate.status == "ok") ok.push_back(&sc);
    std::stable_sort(ok.begin(), ok.end(), [](const StoredCandidate* x, const StoredCandidate* y) {
      return x->candidate.eval.quality < y->candidate.eval.quality;
    });
    DSEEK_CHECK(!ok.empty(), "[{}] --from {}: no candidate was evaluated successfully", cmd, from);
    for (size_t i = 0; i < ok.size() && int(i) < top; ++i) {
      BenchOperator b;
      b.label = fmt::format("top{} {:08x}", i + 1, uint32_t(ok[i]->candidate.hash >> 32));
      b.record.spec = ok[i]->spec;
      b.record.op = ok[i]->candidate.op;
      legend.push_back(fmt::format("{}: quality {:.4g}, {}", b.label, ok[i]->candidate.eval.quality,
                                   history_str(b.record.op, b.record.spec.vars)));
      ops.push_back(std::move(b));
    }
  }
}

struct BenchArgs {
  std::string device = "cpu", dtype = "f32", shapes = "v2-lite", from, json, builtins = "default";
  std::vector<std::string> ops;
  int64_t tokens = 4096, max_elements = int64_t(1) << 28;
  int top = 0, runs = 10, warmup = 2;
  double row_ms = 3000.0;
  bool backward = false;
};

void run_bench(const BenchArgs& a) {
  BenchOptions o;
  o.device = a.device == "cuda" ? Device::CUDA : Device::CPU;
  o.dtype = a.dtype == "bf16" ? DType::BF16 : DType::F32;
  DSEEK_CHECK(o.dtype == DType::F32 || o.device == Device::CUDA,
              "[synth bench] --dtype bf16 runs on --device cuda only (the CPU ops compute in f32)");
  DSEEK_CHECK(!a.backward || o.dtype == DType::F32,
              "[synth bench] --backward times the f32 training path (the train override runs the "
              "operator in f32): use --dtype f32");
  DSEEK_CHECK(a.tokens > 0 && a.runs > 0 && a.warmup >= 0 && a.row_ms > 0 && a.max_elements > 0,
              "[synth bench] --tokens {}, --runs {}, --warmup {}, --row-ms {}, --max-elements {}: "
              "must be positive (--warmup may be 0)",
              a.tokens, a.runs, a.warmup, a.row_ms, a.max_elements);
  DSEEK_CHECK((a.top > 0) == !a.from.empty(),
              "[synth bench] --from DIR and --top K go together (the K best candidates of the "
              "search in DIR), got --from '{}' --top {}",
              a.from, a.top);
  o.tokens = a.tokens;
  o.backward = a.backward;
  o.runs = a.runs;
  o.warmup = a.warmup;
  o.row_ms = a.row_ms;
  o.max_elements = a.max_elements;
  const std::vector<BenchShape> shapes = parse_bench_shapes(a.shapes);
  if (o.device == Device::CUDA) cuda::require("--device cuda");

  std::vector<BenchOperator> ops = known_operators(a.builtins);
  std::vector<std::string> legend;
  add_operators("synth bench", a.ops, a.from, a.top, ops, legend);

  fmt::print(stderr, "synth bench: {} operators x {} shapes on {} ({}), {} tokens\n", ops.size(),
             shapes.size(), a.device, a.dtype, a.tokens);
  const std::vector<BenchRow> rows = run_bench(ops, shapes, o, [](const BenchRow& r) {
    fmt::print(stderr, "  {} {}: {}\n", r.shape, r.op,
               r.ok ? fmt::format("{:.4f} ms", r.forward_ms) : r.note);
  });
  fmt::print("{}", bench_markdown(rows, o));
  if (!legend.empty()) {
    fmt::print("\n");
    for (const std::string& l : legend) fmt::print("{}\n", l);
  }
  if (!a.json.empty()) {
    write_file_atomic(a.json, bench_json(rows, o) + "\n");
    fmt::print("\nwrote {}\n", a.json);
  }
}

// The end of both proxy tables: the candidates' legend, the time taken and the JSON file.
void finish_proxy_table(const std::vector<std::string>& legend, double seconds,
                        const std::string& json_path, const nlohmann::ordered_json& rows) {
  if (!legend.empty()) {
    fmt::print("\n");
    for (const std::string& l : legend) fmt::print("{}\n", l);
  }
  fmt::print("\n{:.0f} s\n", seconds);
  if (!json_path.empty()) {
    write_file_atomic(json_path, rows.dump(2) + "\n");
    fmt::print("wrote {}\n", json_path);
  }
}

struct ProxyArgs {
  std::string kind = "lm-proj", builtins, from, json, digits;  // builtins "": the kind's defaults
  std::vector<std::string> ops;
  int64_t steps = 300, seeds = 8, latency_runs = 20, channels = 16;
  uint64_t seed = 0;
  int jobs = 1, top = 0;
};

// f(i) for i in [0, n) on `jobs` threads; the first error is rethrown after all have finished
// unless `errors` collects them (one message per i, "" when it succeeded).
void parallel_for(int64_t n, int jobs, const std::function<void(int64_t)>& f,
                  std::vector<std::string>* errors = nullptr) {
  std::atomic<int64_t> next{0};
  std::vector<std::string> err(static_cast<size_t>(n));
  auto worker = [&] {
    for (int64_t i = next++; i < n; i = next++) {
      try {
        f(i);
      } catch (const Error& e) {
        err[size_t(i)] = e.what();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int j = 1; j < jobs; ++j) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();
  if (errors) {
    *errors = std::move(err);
    return;
  }
  for (const std::string& e : err)
    if (!e.empty()) fail("{}", e);
}

// The proxy's quality of known designs and operator files, seed by seed: each seed's operator run
// is paired with the dense model's run of that seed (same data order, same init of every weight
// but the replaced ones), and the table reports the mean and standard error of the per-seed
// relative differences, with FLOPs and the CPU latency at the proxy's projection shapes.
void run_proxy_table(const ProxyArgs& a) {
  DSEEK_CHECK(
      a.seeds > 0 && a.jobs >= 1 && a.steps > 0 && a.latency_runs > 0,
      "[synth proxy] --seeds {}, --jobs {}, --steps {}, --latency-runs {}: must be positive",
      a.seeds, a.jobs, a.steps, a.latency_runs);
  DSEEK_CHECK((a.top > 0) == !a.from.empty(),
              "[synth proxy] --from DIR and --top K go together, got --from '{}' --top {}", a.from,
              a.top);
  ProxyTask task;
  task.kind = a.kind;
  task.steps = a.steps;
  task.warmup = std::min<int64_t>(task.warmup, a.steps / 5);
  std::vector<BenchOperator> ops = known_operators(
      a.builtins.empty() ? "dense,lowrank/2,lowrank/4,grouped/2,grouped/4" : a.builtins);
  std::vector<std::string> legend;
  add_operators("synth proxy", a.ops, a.from, a.top, ops, legend);
  // Each operator's coefficients at the proxy's up_proj shape (the override fits the others).
  const BenchShape up{"up_proj", task.d_model, task.d_ff};
  std::vector<Valuation> values;
  for (const BenchOperator& b : ops) values.push_back(bench_valuation(b, 1, up));

  const int64_t S = a.seeds, n_ops = int64_t(ops.size());
  fmt::print(stderr, "synth proxy: {} ({} steps), {} operators x {} seeds on {} jobs\n", task.kind,
             task.steps, n_ops, S, a.jobs);
  std::mutex print;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // The dense model per seed first (cached by proxy.cpp for the operators' runs).
  std::vector<double> base(static_cast<size_t>(S));
  parallel_for(S, a.jobs, [&](int64_t s) {
    ProxyTask t = task;
    t.seed = a.seed + uint64_t(s);
    const ProxyResult r = proxy_baseline(t);
    base[size_t(s)] = r.val_loss;
    std::lock_guard<std::mutex> lock(print);
    fmt::print(stderr, "  dense linear seed {}: {:.4f} ({:.1f} s; {:.0f} s in)\n", t.seed,
               r.val_loss, r.seconds, elapsed());
  });
  std::vector<ProxyResult> runs(size_t(n_ops * S));
  std::vector<std::string> errors;
  parallel_for(
      n_ops * S, a.jobs,
      [&](int64_t i) {
        const int64_t o = i / S, s = i % S;
        ProxyTask t = task;
        t.seed = a.seed + uint64_t(s);
        const BenchOperator& b = ops[size_t(o)];
        runs[size_t(i)] = proxy_train(b.record.op, b.record.spec.vars, values[size_t(o)], t);
        std::lock_guard<std::mutex> lock(print);
        fmt::print(stderr, "  {} seed {}: {:.4f} ({:+.2f}%, {:.1f} s; {:.0f} s in)\n", b.label,
                   t.seed, runs[size_t(i)].val_loss, 100.0 * runs[size_t(i)].rel_diff,
                   runs[size_t(i)].seconds, elapsed());
      },
      &errors);

  // CPU latency of the replaced projections at the proxy's shapes (one step's tokens), summed.
  const int64_t tokens = task.seq_len * task.batch;
  std::vector<BenchShape> shapes = {up};
  if (task.kind == "lm-ffn") shapes.push_back({"down_proj", task.d_ff, task.d_model});
  auto latency = [&](const BenchOperator& b) {
    double ms = 0.0;
    for (const BenchShape& shape : shapes) {
      const Valuation v = bench_valuation(b, tokens, shape);
      const LoweredPlan plan = lower(b.record.op, v);
      LatencyOptions lo;
      lo.runs = int(a.latency_runs);
      lo.warmup = 2;
      ms += measure_latency(plan, random_plan_inputs(b.record.op, v, plan, 1), lo).forward_ms;
    }
    return ms;
  };
  const BenchOperator dense = known_operator("dense");
  const double dense_ms = latency(dense);

  const ProxyResult base_costs = proxy_baseline([&] {
    ProxyTask t = task;
    t.seed = a.seed;
    return t;
  }());
  double base_mean = 0.0;
  for (double v : base) base_mean += v / double(S);
  fmt::print("proxy {}: {} steps, seeds {}..{}, paired by seed (docs/SYNTH.md)\n\n", task.kind,
             task.steps, a.seed, a.seed + uint64_t(S) - 1);
  fmt::print(
      "| operator | params | FLOPs/token | FLOPs ratio | val loss | Δ val loss (paired) ± s.e. "
      "| CPU latency ratio | s/run |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  fmt::print("| dense linear (baseline) | {} | {} | 1 | {:.4f} | | 1 | |\n",
             base_costs.baseline_params, base_costs.baseline_flops, base_mean);
  nlohmann::ordered_json j;
  j["kind"] = task.kind;
  j["task"] = task.key();
  j["seeds"] = S;
  j["baseline_val_losses"] = base;
  j["rows"] = nlohmann::ordered_json::array();
  for (int64_t o = 0; o < n_ops; ++o) {
    const BenchOperator& b = ops[size_t(o)];
    std::string error;
    std::vector<double> val;
    double seconds = 0.0;
    for (int64_t s = 0; s < S; ++s) {
      const size_t i = size_t(o * S + s);
      if (!errors[i].empty()) error = errors[i];
      val.push_back(runs[i].val_loss);
      seconds += runs[i].seconds / double(S);
    }
    if (!error.empty()) {
      fmt::print("| {} | | | | | {} | | |\n", b.label, error);
      j["rows"].push_back({{"operator", b.label}, {"error", error}});
      continue;
    }
    const ProxyResult& r0 = runs[size_t(o * S)];
    const PairedDiff d = paired_relative_diff(val, base);
    double mean = 0.0;
    for (double v : val) mean += v / double(S);
    double ms = 0.0;
    std::string lat;
    try {
      ms = latency(b);
      lat = fmt::format("{:.2f}", ms / dense_ms);
    } catch (const Error& e) {
      lat = e.what();
    }
    fmt::print("| {} | {} | {} | {:.3f} | {:.4f} | {:+.2f}% ± {:.2f}% | {} | {:.1f} |\n", b.label,
               r0.params, r0.flops, double(r0.flops) / double(r0.baseline_flops), mean,
               100.0 * d.mean, 100.0 * d.se, lat, seconds);
    j["rows"].push_back({{"operator", b.label},
                         {"params", r0.params},
                         {"flops", r0.flops},
                         {"baseline_flops", r0.baseline_flops},
                         {"val_losses", val},
                         {"rel_diff", d.mean},
                         {"rel_diff_se", d.se},
                         {"latency_ms", ms},
                         {"dense_latency_ms", dense_ms},
                         {"seconds_per_run", seconds}});
  }
  finish_proxy_table(legend, elapsed(), a.json, j);
}

// The same table for the conv task on the vision proxy (synth/vision_proxy.h): known convolution
// designs (synth/conv_designs.h) and operator files in the digits CNN, paired by seed with the
// dense k×k convolution, with the change of accuracy and the CPU latency of one training batch's
// convolution ([batch, C, 8, 8]).
void run_vision_table(const ProxyArgs& a) {
  DSEEK_CHECK(a.seeds > 0 && a.jobs >= 1 && a.steps > 0 && a.latency_runs > 0 && a.channels > 0,
              "[synth proxy] --seeds {}, --jobs {}, --steps {}, --latency-runs {}, --channels {}: "
              "must be positive",
              a.seeds, a.jobs, a.steps, a.latency_runs, a.channels);
  DSEEK_CHECK((a.top > 0) == !a.from.empty(),
              "[synth proxy] --from DIR and --top K go together, got --from '{}' --top {}", a.from,
              a.top);
  VisionTask task;
  task.channels = a.channels;
  task.steps = a.steps;
  task.warmup = std::min<int64_t>(task.warmup, a.steps / 5);
  task.digits = a.digits;
  std::vector<BenchOperator> ops = known_conv_operators(
      a.builtins.empty() ? "dense,separable,depthwise,grouped/2,grouped/4,lowrank/2,lowrank/4,"
                           "pointwise"
                         : a.builtins,
      task.channels, kDigitsSide, task.kernel);
  std::vector<std::string> legend;
  add_operators("synth proxy", a.ops, a.from, a.top, ops, legend);
  std::vector<Valuation> values;
  for (const BenchOperator& b : ops) {
    DSEEK_CHECK(!b.record.spec.valuations.empty(), "[synth proxy] {}: no valuation", b.label);
    try {
      values.push_back(
          vision_valuation(b.record.op, b.record.spec.vars, b.record.spec.valuations[0], task));
    } catch (const Error& e) {
      fail("[synth proxy] {}: {}", b.label, e.what());
    }
  }

  const int64_t S = a.seeds, n_ops = int64_t(ops.size());
  fmt::print(stderr,
             "synth proxy: conv on the digits ({} steps, C = {}), {} operators x {} seeds "
             "on {} jobs\n",
             task.steps, task.channels, n_ops, S, a.jobs);
  std::mutex print;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<VisionResult> base(static_cast<size_t>(S));
  parallel_for(S, a.jobs, [&](int64_t s) {
    VisionTask t = task;
    t.seed = a.seed + uint64_t(s);
    base[size_t(s)] = vision_baseline(t);
    std::lock_guard<std::mutex> lock(print);
    fmt::print(stderr,
               "  {} (baseline) seed {}: loss {:.4f}, accuracy {:.2f}% ({:.1f} s; {:.0f} s "
               "in)\n",
               ops[0].label, t.seed, base[size_t(s)].val_loss, 100.0 * base[size_t(s)].val_accuracy,
               base[size_t(s)].seconds, elapsed());
  });
  std::vector<VisionResult> runs(size_t(n_ops * S));
  std::vector<std::string> errors;
  parallel_for(
      n_ops * S, a.jobs,
      [&](int64_t i) {
        const int64_t o = i / S, s = i % S;
        VisionTask t = task;
        t.seed = a.seed + uint64_t(s);
        const BenchOperator& b = ops[size_t(o)];
        runs[size_t(i)] = vision_train(b.record.op, b.record.spec.vars, values[size_t(o)], t);
        const VisionResult& r = runs[size_t(i)];
        std::lock_guard<std::mutex> lock(print);
        fmt::print(stderr,
                   "  {} seed {}: loss {:.4f} ({:+.2f}%), accuracy {:.2f}% ({:.1f} s; "
                   "{:.0f} s in)\n",
                   b.label, t.seed, r.val_loss, 100.0 * r.rel_diff, 100.0 * r.val_accuracy,
                   r.seconds, elapsed());
      },
      &errors);

  // CPU latency of one convolution at a training batch's shape.
  auto latency = [&](size_t o) {
    Valuation v = values[o];
    const Operator& op = ops[o].record.op;
    for (int x = 0; x < ops[o].record.spec.vars.count(); ++x)
      if (op.output[0].exp[size_t(x)] != 0) v[size_t(x)] = task.batch;  // N, a bare variable
    const LoweredPlan plan = lower(op, v);
    LatencyOptions lo;
    lo.runs = int(a.latency_runs);
    lo.warmup = 2;
    return measure_latency(plan, random_plan_inputs(op, v, plan, 1), lo).forward_ms;
  };
  // Timed once each, after the training, dense first: the ratio's reference is row 0 itself.
  std::vector<double> ms(static_cast<size_t>(n_ops), 0.0);
  std::vector<std::string> lat(static_cast<size_t>(n_ops));
  for (int64_t o = 0; o < n_ops; ++o) {
    try {
      ms[size_t(o)] = latency(size_t(o));
    } catch (const Error& e) {
      lat[size_t(o)] = e.what();
    }
  }
  const double dense_ms = ms[0];
  fmt::print(
      "vision proxy: {} conv layers of C = {} on the UCI digits (8x8, every 5th image held out), "
      "{} steps of {} images, seeds {}..{}, paired by seed (docs/SYNTH.md)\n\n",
      task.layers, task.channels, task.steps, task.batch, a.seed, a.seed + uint64_t(S) - 1);
  fmt::print(
      "| operator | params | FLOPs/image | FLOPs ratio | val loss | val accuracy | Δ val loss "
      "(paired) ± s.e. | Δ accuracy ± s.e. | CPU latency ratio | s/run |\n"
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  nlohmann::ordered_json j;
  j["kind"] = "conv";
  j["task"] = task.key();
  j["seeds"] = S;
  j["rows"] = nlohmann::ordered_json::array();
  for (int64_t o = 0; o < n_ops; ++o) {
    const BenchOperator& b = ops[size_t(o)];
    std::string error;
    std::vector<double> loss, acc;
    double seconds = 0.0;
    for (int64_t s = 0; s < S; ++s) {
      const size_t i = size_t(o * S + s);
      if (!errors[i].empty()) error = errors[i];
      loss.push_back(runs[i].val_loss);
      acc.push_back(runs[i].val_accuracy);
      seconds += runs[i].seconds / double(S);
    }
    if (!error.empty()) {
      fmt::print("| {} | | | | | | {} | | | |\n", b.label, error);
      j["rows"].push_back({{"operator", b.label}, {"error", error}});
      continue;
    }
    std::vector<double> base_loss, acc_diff;
    for (int64_t s = 0; s < S; ++s) {
      base_loss.push_back(base[size_t(s)].val_loss);
      acc_diff.push_back(acc[size_t(s)] - base[size_t(s)].val_accuracy);
    }
    const PairedDiff d = paired_relative_diff(loss, base_loss), ad = mean_and_se(acc_diff);
    const double acc_mean = ad.mean, acc_se = ad.se;
    double mean_loss = 0.0, mean_acc = 0.0;
    for (int64_t s = 0; s < S; ++s) {
      mean_loss += loss[size_t(s)] / double(S);
      mean_acc += acc[size_t(s)] / double(S);
    }
    if (lat[size_t(o)].empty() && dense_ms > 0.0)
      lat[size_t(o)] = fmt::format("{:.2f}", ms[size_t(o)] / dense_ms);
    const VisionResult& r0 = runs[size_t(o * S)];
    fmt::print(
        "| {} | {} | {} | {:.3f} | {:.4f} | {:.2f}% | {:+.2f}% ± {:.2f}% | {:+.2f} ± {:.2f} pts | "
        "{} | {:.1f} |\n",
        b.label, r0.params, r0.flops, double(r0.flops) / double(r0.baseline_flops), mean_loss,
        100.0 * mean_acc, 100.0 * d.mean, 100.0 * d.se, 100.0 * acc_mean, 100.0 * acc_se,
        lat[size_t(o)], seconds);
    j["rows"].push_back({{"operator", b.label},
                         {"params", r0.params},
                         {"flops", r0.flops},
                         {"baseline_flops", r0.baseline_flops},
                         {"val_losses", loss},
                         {"val_accuracies", acc},
                         {"baseline_val_losses", base_loss},
                         {"rel_diff", d.mean},
                         {"rel_diff_se", d.se},
                         {"acc_diff", acc_mean},
                         {"acc_diff_se", acc_se},
                         {"latency_ms", ms[size_t(o)]},
                         {"dense_latency_ms", dense_ms},
                         {"seconds_per_run", seconds}});
  }
  finish_proxy_table(legend, elapsed(), a.json, j);
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
  s->add_flag("--translation-equivariant", args->task.translation_equivariant,
              "conv: no weight indexed by H or W (convolutions, not locally connected layers)");
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
                "relative to the dense model's (seconds per candidate); vision (conv): the same "
                "for a small CNN on the UCI digits with the candidate in its convolutions")
      ->required();
  s->add_option("--proxy-steps", args->proxy_steps, "lm, vision: training steps of the proxy model")
      ->capture_default_str();
  s->add_option("--proxy-repeats", args->proxy_repeats,
                "lm, vision: seeds averaged per candidate (one run's loss moves by ~2% with the "
                "init)")
      ->capture_default_str();
  s->add_option("--digits", args->digits,
                "vision: the digits file (default: $DSEEK_DIGITS, python3-sklearn's, the copy "
                "scripts/setup.sh caches)");
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

  auto bench_args = std::make_shared<BenchArgs>();
  auto* bench = synth->add_subcommand(
      "bench", "Latency, FLOPs and speed-up of operators at a real model's projection shapes");
  bench->add_option("--device", bench_args->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  bench->add_option("--dtype", bench_args->dtype, "f32, or bf16 (cuda, forward only)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  bench->add_option("--tokens", bench_args->tokens, "tokens T of every [T, d_in] -> [T, d_out]")
      ->capture_default_str();
  bench->add_flag("--backward", bench_args->backward, "also time forward + backward (f32)");
  bench
      ->add_option("--builtins", bench_args->builtins,
                   "known designs, dense first: default (dense,lowrank/4,lowrank/8,grouped/2,"
                   "grouped/4,grouped/8) or a list of dense, lowrank/N (r = d/N), grouped/N")
      ->capture_default_str();
  bench->add_option("--ops", bench_args->ops, "operator files (dseek synth show writes them)");
  bench->add_option("--from", bench_args->from, "a search's --out directory");
  bench->add_option("--top", bench_args->top, "with --from: its K best candidates by quality");
  bench
      ->add_option("--shapes", bench_args->shapes,
                   "v2-lite (DeepSeek-V2-Lite's projections) or [NAME=]D_INxD_OUT,...")
      ->capture_default_str();
  bench->add_option("--runs", bench_args->runs, "timed runs per row (median)")
      ->capture_default_str();
  bench->add_option("--warmup", bench_args->warmup, "untimed runs first")->capture_default_str();
  bench
      ->add_option("--row-ms", bench_args->row_ms,
                   "time cap of a row's timed runs (a slow lowering gets fewer runs)")
      ->capture_default_str();
  bench
      ->add_option("--max-elements", bench_args->max_elements,
                   "skip an operator whose lowered tensors would be larger")
      ->capture_default_str();
  bench->add_option("--json", bench_args->json, "also write the rows as JSON to this file");
  bench->callback([bench_args] { run_bench(*bench_args); });

  auto proxy_args = std::make_shared<ProxyArgs>();
  auto* proxy = synth->add_subcommand(
      "proxy", "Proxy-LM quality of known designs and operator files, paired by seed, with s.e.");
  proxy
      ->add_option("--kind,--task", proxy_args->kind,
                   "lm-proj (up_proj), lm-ffn (every projection) or conv (the digits CNN's "
                   "convolutions)")
      ->check(CLI::IsMember({"lm-proj", "lm-ffn", "conv"}))
      ->capture_default_str();
  proxy->add_option("--steps", proxy_args->steps, "training steps per run")->capture_default_str();
  proxy->add_option("--seeds", proxy_args->seeds, "runs per operator (seed, seed + 1, ...)")
      ->capture_default_str();
  proxy->add_option("--seed", proxy_args->seed, "first seed")->capture_default_str();
  proxy->add_option("--jobs", proxy_args->jobs, "runs in parallel")->capture_default_str();
  proxy->add_option("--builtins", proxy_args->builtins,
                    "known designs, dense first. lm: dense, lowrank/N (r = d_model/N), grouped/N "
                    "(default dense,lowrank/2,lowrank/4,grouped/2,grouped/4); conv: dense, "
                    "separable, depthwise, pointwise, grouped/N, lowrank/N (r = C/N) (default "
                    "all, with N = 2, 4)");
  proxy->add_option("--ops", proxy_args->ops, "operator files");
  proxy->add_option("--from", proxy_args->from, "a search's --out directory");
  proxy->add_option("--top", proxy_args->top, "with --from: its K best candidates by quality");
  proxy->add_option("--latency-runs", proxy_args->latency_runs, "CPU latency: timed runs")
      ->capture_default_str();
  proxy->add_option("--json", proxy_args->json, "also write the per-seed losses as JSON");
  proxy->add_option("--channels", proxy_args->channels, "conv: C of the CNN's convolutions")
      ->capture_default_str();
  proxy->add_option("--digits", proxy_args->digits,
                    "conv: the digits file (default: $DSEEK_DIGITS, python3-sklearn's, the copy "
                    "scripts/setup.sh caches)");
  proxy->callback([proxy_args] {
    if (proxy_args->kind == "conv")
      run_vision_table(*proxy_args);
    else
      run_proxy_table(*proxy_args);
  });
}

}  // namespace dseek::cli
