// `dseek synth` through the binary: a small search writes its store and resumes from it (the
// resumed run evaluates only what is missing), `synth show` prints the Pareto table and writes
// the plots and the front's operator files, `synth bench` tables operators at given shapes, and bad
// input is a clear message with a non-zero exit.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "cli_util.h"
#include "synth/serialize.h"
#include "synth/store.h"
#include "test_plot_util.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::plot_testing;

namespace {

using dseek::testing::CliRun;
using dseek::testing::run_dseek_shell;

const std::string kSearch =
    "synth search --task lm-proj --d-in 8 --d-out 8 --tokens 16 --coeffs r=2,g=2 --max-depth 6 "
    "--method mcts --jobs 2 --batch 5 --quality teacher-fit --fit-steps 40 "
    "--latency-runs 1 ";

}  // namespace

TEST(CliSynth, SearchResumesAndShowWritesTableAndPlots) {
  TempDir out;
  const std::string dir = (out.path / "run").string();
  CliRun r = run_dseek_shell(kSearch + "--seed 3 --budget 12 --max-evaluations 7 --out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("7 candidates (7 evaluated now, 0 from the store)"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("stopped by --max-evaluations"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("synth lm-proj mcts"), std::string::npos) << r.err;  // progress (plain)

  r = run_dseek_shell(kSearch + "--seed 3 --budget 12 --out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming: 7 candidates stored"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("12 candidates (5 evaluated now, 7 from the store)"), std::string::npos)
      << r.out;
  EXPECT_EQ(synth::Store(dir).load().size(), 12u);

  r = run_dseek_shell("synth show " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("12 candidates:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("quality"), std::string::npos) << r.out;
  // The front is marked, and its best-quality member is on both fronts.
  EXPECT_NE(r.out.find(" FL "), std::string::npos) << r.out;
  for (const char* f :
       {"pareto_flops.svg", "pareto_flops.png", "pareto_latency.svg", "pareto_latency.png"}) {
    EXPECT_TRUE(fs::exists(fs::path(dir) / f)) << f;
    EXPECT_NE(r.out.find(std::string("wrote ") + (fs::path(dir) / f).string()), std::string::npos);
  }
  const Image image = read_png(fs::path(dir) / "pareto_flops.png");
  EXPECT_EQ(image.width, 900);
  int files = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(dir) / "front")) {
    const synth::OperatorRecord rec = synth::operator_from_json(slurp(entry.path()));
    EXPECT_TRUE(rec.op.complete);
    ++files;
  }
  EXPECT_GE(files, 1);
}
// --quality lm reaches the proxy: the dense model's run comes first, with the settings asked for
// (the scoring itself: SynthSearch.LmQualityIsTheProxyValidationLossRelativeToTheDenseModel).
TEST(CliSynth, LmQualityTrainsTheProxyBaselineFirst) {
  if (!fs::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "the fortunes corpus is not installed";
  TempDir out;
  const std::string dir = (out.path / "run").string();
  const CliRun r = run_dseek_shell(
      "synth search --task lm-proj --d-in 8 --d-out 8 --tokens 16 --coeffs r=2,g=2 --seed 3 "
      "--budget 4 --max-evaluations 0 --quality lm --proxy-steps 12 --proxy-repeats 2 --out " +
      dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("proxy baseline (lm-proj, 12 steps × 2 repeats): validation loss"),
            std::string::npos)
      << r.err;
}

TEST(CliSynth, BadInputIsAClearErrorWithNonZeroExit) {
  TempDir out;
  const std::string dir = (out.path / "run").string();
  struct Case {
    std::string args, message;
  };
  fs::create_directories(out.path / "afile");
  { std::ofstream(out.path / "blocker") << "x"; }
  const std::vector<Case> cases = {
      {"synth search --task lm-attn --quality teacher-fit --out " + dir, "unknown task 'lm-attn'"},
      {"synth search --task lm-proj --coeffs k3 --quality teacher-fit --out " + dir,
       "--coeffs: 'k3' is not name=value"},
      {"synth search --task lm-proj --coeffs k=0 --quality teacher-fit --out " + dir,
       "--coeffs: k=0 is not an integer >= 1"},
      {"synth search --task lm-proj --coeffs T=2 --quality teacher-fit --out " + dir,
       "coefficient 'T' clashes"},
      {"synth search --task lm-proj --quality bleu --out " + dir,
       "--quality bleu: teacher-fit, lm or vision"},
      {"synth search --task conv --quality lm --out " + dir,
       "--quality lm scores language-model projections"},
      {"synth search --task lm-proj --method beam --quality teacher-fit --out " + dir,
       "unknown method 'beam'"},
      {"synth search --task lm-proj --quality teacher-fit --out " +
           (out.path / "blocker" / "run").string(),
       "cannot create directory"},
      {"synth show " + (out.path / "afile").string(), "no results store here"},
  };
  for (const Case& c : cases) {
    const CliRun r = run_dseek_shell(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
  // A resumed run with other settings names the store and the setting.
  CliRun r = run_dseek_shell(kSearch + "--seed 3 --budget 3 --out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_dseek_shell(kSearch + "--seed 4 --budget 3 --out " + dir);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("synth.sqlite: holds a run with other settings (seed: 3 stored, 4 now)"),
            std::string::npos)
      << r.err;
}

// `synth bench` at small shapes on the CPU: every operator at every shape, dense at speed-up 1,
// the analytic FLOPs of the known designs, an operator file re-solved at each shape (a group count
// that does not divide is a row's note, not a failure), a search's best candidates, JSON and
// markdown.
TEST(CliSynth, BenchTablesKnownDesignsFilesAndSearchCandidates) {
  TempDir out;
  const std::string dir = (out.path / "run").string();
  CliRun r = run_dseek_shell(kSearch + "--seed 3 --budget 6 --out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // A grouped layer with g = 3, written at its own (search-sized) valuation.
  synth::test::LinearProblem p;
  synth::Spec spec;
  spec.vars = p.vars;
  spec.valuations = {{4, 6, 6, 1, 3}};
  spec.input = {p.sT, p.sdin};
  spec.output = {p.sT, p.sdout};
  const std::string g3 = (out.path / "grouped3.json").string();
  { std::ofstream(g3) << synth::operator_to_json(spec, synth::test::grouped_linear(p)); }
  const std::string json = (out.path / "bench.json").string();
  r = run_dseek_shell(
      "synth bench --device cpu --tokens 8 --shapes a=64x96,b=48x48 --runs 3 "
      "--warmup 1 --backward --ops " +
      g3 + " --from " + dir + " --top 2 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| fwd+bwd speed-up |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| a | 64→96 | dense |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("top1 "), std::string::npos) << r.out;  // the legend of the candidates
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  ASSERT_EQ(j["rows"].size(), 2u * (6 + 1 + 2));
  std::map<std::string, nlohmann::json> row;
  for (const auto& x : j["rows"])
    row[x["shape"].get<std::string>() + "/" + x["operator"].get<std::string>()] = x;
  const int64_t T = 8;
  for (const auto& [shape, din, dout] :
       {std::tuple<std::string, int64_t, int64_t>{"a", 64, 96}, {"b", 48, 48}}) {
    const nlohmann::json& dense = row.at(shape + "/dense");
    ASSERT_TRUE(dense["ok"].get<bool>()) << dense.dump();
    EXPECT_EQ(dense["flops"].get<int64_t>(), 2 * T * din * dout);
    EXPECT_EQ(dense["params"].get<int64_t>(), din * dout);
    EXPECT_EQ(dense["speedup"].get<double>(), 1.0);
    EXPECT_EQ(dense["train_speedup"].get<double>(), 1.0);
    EXPECT_GT(dense["forward_ms"].get<double>(), 0.0);
    EXPECT_GT(dense["train_ms"].get<double>(), 0.0);
    const nlohmann::json& lr = row.at(shape + "/low rank r=d/4");
    const int64_t rank = std::min(din, dout) / 4;
    ASSERT_TRUE(lr["ok"].get<bool>()) << lr.dump();
    EXPECT_EQ(lr["flops"].get<int64_t>(), 2 * T * rank * (din + dout));
    EXPECT_LT(lr["flops"].get<int64_t>(), dense["flops"].get<int64_t>());
    EXPECT_GT(lr["speedup"].get<double>(), 0.0);
    for (const int g : {2, 4, 8}) {
      const nlohmann::json& gr = row.at(shape + "/grouped g=" + std::to_string(g));
      ASSERT_TRUE(gr["ok"].get<bool>()) << gr.dump();
      EXPECT_EQ(gr["flops"].get<int64_t>(), 2 * T * din * dout / g);
      EXPECT_DOUBLE_EQ(gr["flops_ratio"].get<double>(), 1.0 / g);
    }
    for (const char* top : {"top1 ", "top2 "}) {
      bool found = false;
      for (const auto& [key, x] : row)
        if (key.rfind(shape + "/" + top, 0) == 0) found = x["ok"].get<bool>();
      EXPECT_TRUE(found) << shape << " " << top;
    }
  }
  const nlohmann::json& bad = row.at("a/grouped3.json");
  EXPECT_FALSE(bad["ok"].get<bool>());
  EXPECT_NE(bad["note"].get<std::string>().find(
                "grouped3.json at a (64 -> 96): size d_in/g is not a positive integer with r = 1, "
                "g = 3"),
            std::string::npos)
      << bad.dump();
  const nlohmann::json& good = row.at("b/grouped3.json");  // 48 = 3 · 16
  ASSERT_TRUE(good["ok"].get<bool>()) << good.dump();
  EXPECT_EQ(good["flops"].get<int64_t>(), 2 * T * 48 * 48 / 3);
}

TEST(CliSynth, BenchBadArgumentsAreClearErrors) {
  TempDir out;
  fs::create_directories(out.path / "afile");
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"synth bench --device tpu", "--device"},
      {"synth bench --dtype bf16", "--dtype bf16 runs on --device cuda only"},
      {"synth bench --device cuda --dtype bf16 --backward", "--backward times the f32"},
      {"synth bench --shapes 64x", "'64x' is not [NAME=]D_INxD_OUT"},
      {"synth bench --shapes 64x64,", "'' is not [NAME=]D_INxD_OUT"},
      {"synth bench --top 2", "--from DIR and --top K go together"},
      {"synth bench --from " + (out.path / "afile").string() + " --top 1", "no results store here"},
      {"synth bench --ops " + (out.path / "missing.json").string(), "cannot read"},
      {"synth bench --tokens 0", "must be positive"},
  };
  for (const Case& c : cases) {
    const CliRun r = run_dseek_shell(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
}

// `synth proxy`: each operator's runs are paired with the dense model's of the same seed, and the
// table's Δ is the mean of the per-seed relative differences (the JSON keeps every loss).
TEST(CliSynth, ProxyTablePairsRunsBySeed) {
  if (!fs::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "the fortunes corpus is not installed";
  TempDir out;
  const std::string json = (out.path / "proxy.json").string();
  const CliRun r = run_dseek_shell(
      "synth proxy --steps 4 --seeds 3 --jobs 2 --builtins dense,grouped/4 --latency-runs 2 "
      "--json " +
      json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| dense linear (baseline) |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| grouped g=4 |"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  const std::vector<double> base = j["baseline_val_losses"].get<std::vector<double>>();
  ASSERT_EQ(base.size(), 3u);
  ASSERT_EQ(j["rows"].size(), 2u);
  for (const auto& row : j["rows"]) {
    const std::vector<double> val = row["val_losses"].get<std::vector<double>>();
    ASSERT_EQ(val.size(), 3u) << row.dump();
    double mean = 0.0;
    for (size_t s = 0; s < 3; ++s) {
      EXPECT_TRUE(std::isfinite(val[s]));
      EXPECT_NE(val[s], base[s]);  // the replaced weights are drawn again
      mean += (val[s] / base[s] - 1.0) / 3.0;
    }
    EXPECT_NEAR(row["rel_diff"].get<double>(), mean, 1e-12) << row.dump();
    EXPECT_GT(row["rel_diff_se"].get<double>(), 0.0);
  }
  EXPECT_EQ(j["rows"][1]["flops"].get<int64_t>() * 4,
            j["rows"][1]["baseline_flops"].get<int64_t>());

  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"synth proxy --seeds 0", "must be positive"},
           {"synth proxy --top 2", "--from DIR and --top K go together"},
           {"synth proxy --builtins grouped/2", "dense must come first"},
           {"synth proxy --builtins dense,conv/3", "known operator 'conv/3'"}}) {
    const CliRun bad = run_dseek_shell(args);
    EXPECT_NE(bad.exit_code, 0) << args;
    EXPECT_NE(bad.err.find(message), std::string::npos) << args << "\n" << bad.err;
  }
}
