// `dseek synth` through the binary: a small search writes its store and resumes from it (the
// resumed run evaluates only what is missing), `synth show` prints the Pareto table and writes
// the plots and the front's operator files, and bad input is a clear message with a non-zero exit.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>

#include "cli_util.h"
#include "synth/serialize.h"
#include "synth/store.h"
#include "test_plot_util.h"

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
       "--quality bleu: teacher-fit or lm"},
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
