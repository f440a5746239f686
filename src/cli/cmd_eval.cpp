// `dseek eval passkey`: passkey retrieval accuracy by context length (data/passkey.h).
// `dseek eval fim`: fill-in-the-middle on held-out code (data/fim.h).
//   dseek eval passkey --model DIR --lengths 128,256,512,1024 --trials N [--seed S] [--json PATH]
// Each trial hides a random key at a random depth in a prompt of exactly the given length and
// decodes greedily; the trial counts when the continuation starts with the key. Prints a table of
// accuracy per length and, with --json, writes every trial (length, depth, key, answer, correct).
//   dseek eval fim --model DIR --input FILE... [--count N] [--seed S] [--fim-mode psm|spm]
// Each document is split at two random character boundaries (as training does) and the model is
// given the infill prompt (BOS + sentinels, as `dseek generate --fim-prefix` builds it). Reports
// the cross-entropy of the true middle and its EOS (nats/token, teacher forced: the FIM loss) and
// the fraction of greedy infills that reproduce the middle exactly.
//   dseek eval passkey-plot --input A.json=LABEL ... --out FILE.png|.svg
// Draws accuracy against prompt length for the --json reports of several models.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "data/corpus_reader.h"
#include "data/fim.h"
#include "data/passkey.h"
#include "data/token_shards.h"
#include "infer/generator.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "plot/chart.h"
#include "tokenizer/tokenizer.h"

namespace dseek::cli {

namespace {

struct PasskeyEvalArgs {
  std::string model, tokenizer, lengths = "128,256,512,1024", json;
  int64_t trials = 20;
  uint64_t seed = 0;
};

std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSEEK_CHECK(!item.empty() && used == item.size() && v > 0,
                "[eval] --lengths: '{}' is not a positive token count (expected e.g. 128,256)", item);
    out.push_back(v);
    pos = end + 1;
  }
  return out;
}

void run_passkey(const PasskeyEvalArgs& a) {
  DSEEK_CHECK(a.trials >= 1, "[eval] --trials: must be positive, got {}", a.trials);
  const std::vector<int64_t> lengths = parse_lengths(a.lengths);
  const Tokenizer tokenizer = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
  const PasskeyPieces pieces = PasskeyPieces::from_tokenizer(tokenizer);
  const int64_t shortest = passkey_min_length(tokenizer, pieces);
  for (int64_t l : lengths)
    DSEEK_CHECK(l >= shortest, "[eval] --lengths: {} is too short (the needle and question take {} tokens)",
                l, shortest);
  // The test is meant to go past the trained context (that is how a model without extension
  // fails), so the context limit is raised to the longest prompt; the weights do not depend on it.
  ModelConfig config = load_model_config(a.model);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end()) + 16;
  if (longest > config.max_position_embeddings) {
    fmt::print(stderr, "[eval] {}: max_position_embeddings {} raised to {} for the test\n", a.model,
               config.max_position_embeddings, longest);
    config.max_position_embeddings = longest;
  }
  const std::unique_ptr<Model> model =
      std::make_unique<Transformer>(config, WeightStore::open(a.model));
  GenerationOptions options;
  options.sampling.temperature = 0.0f;
  options.tokenizer = &tokenizer;
  Rng rng(a.seed);
  nlohmann::ordered_json report;
  report["max_position_embeddings"] = load_model_config(a.model).max_position_embeddings;
  report["model"] = a.model;
  report["trials"] = a.trials;
  report["seed"] = a.seed;
  fmt::print("| length | accuracy | correct |\n| --- | --- | --- |\n");
  for (int64_t length : lengths) {
    int64_t correct = 0;
    nlohmann::ordered_json rows = nlohmann::json::array();
    for (int64_t t = 0; t < a.trials; ++t) {
      const double depth = rng.uniform();
      const PasskeySample s = make_passkey_sample(tokenizer, pieces, length, depth, rng);
      options.max_new_tokens = int64_t(s.answer.size()) + 1;
      const GenerationResult r = generate(*model, s.prompt, options);
      const std::string answer = passkey_answer(r.text);
      const bool ok = answer == s.key;
      correct += ok;
      rows.push_back({{"depth", depth}, {"key", s.key}, {"continuation", r.text}, {"correct", ok}});
    }
    const double accuracy = double(correct) / double(a.trials);
    fmt::print("| {} | {:.2f} | {}/{} |\n", length, accuracy, correct, a.trials);
    std::fflush(stdout);
    report["lengths"].push_back({{"length", length}, {"accuracy", accuracy}, {"correct", correct}, {"trials", rows}});
  }
  if (!a.json.empty()) write_file_atomic(a.json, report.dump(2) + "\n");
}

struct FimEvalArgs {
  std::string model, tokenizer, mode = "psm", json;
  std::vector<std::string> inputs;
  CorpusOptions corpus;
  int64_t count = 50, max_new_tokens = 64;
  uint64_t seed = 0;
};

// −log p(target) under each row of logits [T, V] from row `first` on.
double cross_entropy_sum(const Tensor& logits, const std::vector<int32_t>& targets, int64_t first) {
  const Tensor l = logits.contiguous();
  const int64_t V = l.size(1);
  const float* data = l.data<float>();
  double sum = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    const float* row = data + (first + int64_t(i)) * V;
    double max = row[0];
    for (int64_t v = 1; v < V; ++v) max = std::max(max, double(row[v]));
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - max);
    sum += std::log(z) + max - double(row[targets[i]]);
  }
  return sum;
}

void run_fim(const FimEvalArgs& a) {
  DSEEK_CHECK(a.count >= 1, "[eval] --count: must be positive, got {}", a.count);
  FimMode mode = FimMode::PSM;
  try {
    mode = parse_fim_mode(a.mode);
  } catch (const Error&) {
    fail("[eval] --fim-mode: '{}' is not psm or spm", a.mode);
  }
  const Tokenizer tokenizer = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
  const FimTokens tokens = FimTokens::from_tokenizer(tokenizer);
  bool has_bos = true;
  try {
    (void)tokenizer.bos_id();
  } catch (const Error&) {
    has_bos = false;
  }
  const std::unique_ptr<Model> model = Model::load(a.model);
  GenerationOptions options;
  options.sampling.temperature = 0.0f;
  options.tokenizer = &tokenizer;
  options.max_new_tokens = a.max_new_tokens;
  Rng rng(a.seed);
  CorpusReader reader(a.inputs, a.corpus);
  CorpusPiece piece;
  std::string document;
  int64_t done = 0, exact = 0, scored_tokens = 0;
  double loss = 0;
  nlohmann::ordered_json rows = nlohmann::json::array();
  while (done < a.count && reader.next(piece)) {
    document += piece.text;
    if (!piece.document_end) continue;
    const std::string doc = std::move(document);
    document.clear();
    if (doc.empty()) continue;
    const FimSplit split = fim_split(doc, rng);
    const std::vector<int32_t> prompt =
        fim_prompt(tokenizer, split.prefix, split.suffix, tokens, mode, has_bos);
    std::vector<int32_t> targets = tokenizer.encode(split.middle);
    targets.push_back(tokenizer.eos_id());
    std::vector<int32_t> full = prompt;
    full.insert(full.end(), targets.begin(), targets.end() - 1);
    const double doc_loss = cross_entropy_sum(model->forward(full), targets, int64_t(prompt.size()) - 1);
    loss += doc_loss;
    scored_tokens += int64_t(targets.size());
    const GenerationResult r = generate(*model, prompt, options);
    const bool ok = r.text == split.middle && r.finish_reason == "stop";
    exact += ok;
    ++done;
    rows.push_back({{"middle", split.middle}, {"infill", r.text}, {"exact", ok},
                    {"loss", doc_loss / double(targets.size())}});
  }
  DSEEK_CHECK(done > 0, "[eval] --input: no documents");
  const double mean = loss / double(scored_tokens);
  fmt::print("fim ({}): {} documents, middle loss {:.4f} nats/token over {} tokens, exact infills {}/{}\n",
             a.mode, done, mean, scored_tokens, exact, done);
  if (!a.json.empty()) {
    nlohmann::ordered_json report;
    report["model"] = a.model;
    report["mode"] = a.mode;
    report["documents"] = done;
    report["middle_loss"] = mean;
    report["exact"] = exact;
    report["samples"] = rows;
    write_file_atomic(a.json, report.dump(2) + "\n");
  }
}

void run_passkey_plot(const std::vector<std::string>& inputs, const std::string& out,
                      const std::string& title) {
  plot::Chart chart;
  chart.title = title;
  chart.x_label = "prompt length (tokens)";
  chart.y_label = "passkey accuracy";
  for (const std::string& input : inputs) {
    const size_t eq = input.find('=');
    const std::string path = input.substr(0, eq);
    std::ifstream in(path, std::ios::binary);
    DSEEK_CHECK(in.good(), "[eval] --input {}: cannot open", path);
    nlohmann::json report;
    try {
      report = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("[eval] --input {}: not JSON: {}", path, e.what());
    }
    DSEEK_CHECK(report.contains("lengths") && report["lengths"].is_array(),
                "[eval] --input {}: not a `dseek eval passkey --json` report", path);
    plot::Series series;
    series.label = eq == std::string::npos ? path : input.substr(eq + 1);
    for (const nlohmann::json& row : report["lengths"]) {
      series.x.push_back(row.at("length").get<double>());
      series.y.push_back(row.at("accuracy").get<double>());
    }
    chart.series.push_back(series);
  }
  const bool svg = out.size() >= 4 && out.compare(out.size() - 4, 4, ".svg") == 0;
  const bool png = out.size() >= 4 && out.compare(out.size() - 4, 4, ".png") == 0;
  DSEEK_CHECK(svg || png, "[eval] --out {}: a .png or .svg file", out);
  if (svg) plot::write_svg(chart, out);
  else plot::write_png(chart, out);
  fmt::print("wrote {}\n", out);
}

}  // namespace

void add_eval_commands(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "Evaluate a model on synthetic tasks");
  eval->require_subcommand(1);
  auto* passkey = eval->add_subcommand("passkey", "Passkey retrieval accuracy per context length");
  auto a = std::make_shared<PasskeyEvalArgs>();
  passkey->add_option("--model", a->model, "model directory (config.json + safetensors)")->required();
  passkey->add_option("--tokenizer", a->tokenizer, "tokenizer (default: the model directory)");
  passkey->add_option("--lengths", a->lengths, "prompt lengths in tokens, comma-separated")
      ->capture_default_str();
  passkey->add_option("--trials", a->trials, "prompts per length")->capture_default_str();
  passkey->add_option("--seed", a->seed, "seed of the keys and depths")->capture_default_str();
  passkey->add_option("--json", a->json, "write every trial and the accuracies here");
  passkey->callback([a] { run_passkey(*a); });

  auto* fim = eval->add_subcommand("fim", "Fill-in-the-middle loss and exact infills on held-out code");
  auto f = std::make_shared<FimEvalArgs>();
  fim->add_option("--model", f->model, "model directory")->required();
  fim->add_option("--tokenizer", f->tokenizer, "tokenizer (default: the model directory)");
  fim->add_option("--input", f->inputs, "text files, directories or .jsonl files")->required();
  fim->add_option("--separator", f->corpus.separator_line, "document separator line in text files");
  fim->add_option("--jsonl-field", f->corpus.jsonl_field, "JSONL field holding the text")
      ->capture_default_str();
  fim->add_option("--count", f->count, "documents to evaluate")->capture_default_str();
  fim->add_option("--max-new-tokens", f->max_new_tokens, "longest infill")->capture_default_str();
  fim->add_option("--fim-mode", f->mode, "psm or spm")->capture_default_str();
  fim->add_option("--seed", f->seed, "seed of the cut points")->capture_default_str();
  fim->add_option("--json", f->json, "write every sample and the figures here");
  fim->callback([f] { run_fim(*f); });

  auto* pplot = eval->add_subcommand("passkey-plot", "Plot passkey accuracy against length for several reports");
  struct PlotArgs {
    std::vector<std::string> inputs;
    std::string out, title = "Passkey retrieval";
  };
  auto p = std::make_shared<PlotArgs>();
  pplot->add_option("--input", p->inputs, "REPORT.json[=LABEL], one per model")->required();
  pplot->add_option("--out", p->out, "a .png or .svg file")->required();
  pplot->add_option("--title", p->title, "chart title")->capture_default_str();
  pplot->callback([p] { run_passkey_plot(p->inputs, p->out, p->title); });
}

}  // namespace dseek::cli
