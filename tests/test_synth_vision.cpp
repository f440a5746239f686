// The digits loader (data/digits.h) and the vision proxy (synth/vision_proxy.h).
//
// Loader: the committed fixture (the first 12 rows of scikit-learn's digits.csv.gz) parses to the
// known labels and pixels, plain and gzip read alike, corrupt rows and streams are errors naming
// the file and line, and the search order (--digits, $DSEEK_DIGITS, the package, the cache) with
// its error naming every place tried.
// Proxy: on the fixture (fast, no package needed) the dense operator as the candidate gives the
// baseline bit for bit, runs are deterministic, the known designs' costs are their hand counts,
// and an operator of the wrong shape or a bad task is a clear error; on the real file (when
// scripts/setup.sh fetched it) the dense 3×3 network learns the digits well above chance.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli_util.h"
#include "data/digits.h"
#include "gradcheck.h"
#include "synth/conv_designs.h"
#include "synth/vision_proxy.h"
#include "test_synth_util.h"
#include "test_util.h"
#include "train/param.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;
using dseek::testing::error_of;
using dseek::testing::slurp;
using dseek::testing::TempDir;
namespace fs = std::filesystem;

namespace {

const std::string kFixture =
    std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/digits/digits_head.csv";

// Sets an environment variable for the scope (unset for nullopt), restoring it afterwards.
struct ScopedEnv {
  std::string name;
  std::optional<std::string> old;
  ScopedEnv(const std::string& n, const std::optional<std::string>& value) : name(n) {
    if (const char* v = std::getenv(n.c_str())) old = v;
    if (value)
      ::setenv(n.c_str(), value->c_str(), 1);
    else
      ::unsetenv(n.c_str());
  }
  ~ScopedEnv() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

void write_gzip(const fs::path& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, text.data(), unsigned(text.size())), int(text.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// A task small enough for the 12-image fixture: 10 training images, 2 held out.
VisionTask fixture_task() {
  VisionTask t;
  t.channels = 4;
  t.layers = 2;
  t.steps = 6;
  t.batch = 4;
  t.warmup = 1;
  t.digits = kFixture;
  return t;
}

// The real data set, or "" when neither the package nor the cache has it.
std::string real_digits() {
  try {
    return find_digits();
  } catch (const Error&) {
    return "";
  }
}

}  // namespace

TEST(SynthDigits, ParsesTheCommittedRows) {
  const Digits d = load_digits(kFixture);
  ASSERT_EQ(d.count(), 12);
  ASSERT_EQ(d.pixels.size(), size_t(12 * 64));
  // sklearn's first ten images are the digits 0..9 in order, then 0 and 1 again.
  for (int i = 0; i < 12; ++i) EXPECT_EQ(d.labels[size_t(i)], i % 10) << i;
  const std::vector<uint8_t> row0(d.pixels.begin(), d.pixels.begin() + 8);
  EXPECT_EQ(row0, (std::vector<uint8_t>{0, 0, 5, 13, 9, 1, 0, 0}));
  EXPECT_EQ(d.pixels[63], 0);
  EXPECT_EQ(d.pixels[64 + 3], 12);  // image 1, row 0: 0,0,0,12,13,5,0,0
  int brightest = 0;
  for (uint8_t p : d.pixels) brightest = std::max<int>(brightest, p);
  EXPECT_EQ(brightest, 16);
}

TEST(SynthDigits, ReadsGzipAsPlainAndRefusesABrokenStream) {
  TempDir dir("digits");
  const std::string text = slurp(kFixture);
  const fs::path gz = dir.path / "digits.csv.gz";
  write_gzip(gz, text);
  const Digits plain = load_digits(kFixture), packed = load_digits(gz.string());
  EXPECT_EQ(packed.pixels, plain.pixels);
  EXPECT_EQ(packed.labels, plain.labels);

  // Cut in the middle: the stream ends early.
  const std::string bytes = slurp(gz);
  const fs::path cut = dir.path / "cut.csv.gz";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  std::string e = error_of([&] { load_digits(cut.string()); });
  EXPECT_NE(e.find("[digits] " + cut.string() + ": cannot decompress"), std::string::npos) << e;
  EXPECT_NE(e.find("scripts/setup.sh"), std::string::npos) << e;
  // A damaged byte in the compressed data (the CRC or the inflate fails).
  std::string damaged = bytes;
  damaged[damaged.size() / 2] = char(damaged[damaged.size() / 2] ^ 0x55);
  const fs::path bad = dir.path / "bad.csv.gz";
  std::ofstream(bad, std::ios::binary) << damaged;
  e = error_of([&] { load_digits(bad.string()); });
  EXPECT_TRUE(e.find("cannot decompress") != std::string::npos ||
              e.find("[digits] " + bad.string() + ":") != std::string::npos)
      << e;
  e = error_of([&] { load_digits((dir.path / "absent.csv.gz").string()); });
  EXPECT_NE(e.find("no such file"), std::string::npos) << e;
}

TEST(SynthDigits, CorruptRowsNameTheFileAndLine) {
  const std::string good = slurp(kFixture).substr(0, slurp(kFixture).find('\n') + 1);
  auto row = [](const std::string& pixels_tail, const std::string& label) {
    std::string r;
    for (int p = 0; p < 63; ++p) r += "1,";
    return r + pixels_tail + "," + label + "\n";
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {good + row("2", ""), "x.csv:2: field 65: expected a non-negative integer, got nothing"},
      {good + std::string(good.begin(), good.end() - 3) + "\n", "x.csv:2: 64 fields, expected 65"},
      {good + row("17", "3"), "x.csv:2: pixel 64 is 17, outside [0, 16]"},
      {good + row("2", "10"), "x.csv:2: label 10 outside [0, 9]"},
      {good + row("2", "3,4"), "x.csv:2: more than 65 fields"},
      {good + row("a", "3"), "x.csv:2: field 64: expected a non-negative integer, got 'a'"},
      {good + row("-2", "3"), "x.csv:2: field 64: expected a non-negative integer, got '-'"},
      {good + row("2 ", "3"), "x.csv:2: field 64: unexpected character ' '"},
      {good + row("0016", "3"), "x.csv:2: field 64 is too long"},
      {good + "\n" + good, "x.csv:2: empty line"},
      {"", "x.csv: no images"},
  };
  for (const auto& [text, message] : cases) {
    const std::string e = error_of([&] { parse_digits_csv(text, "x.csv"); });
    EXPECT_NE(e.find("[digits] " + message), std::string::npos) << message << "\n" << e;
  }
  // Accepted: no final newline, CRLF line ends.
  std::string crlf = good;
  crlf.insert(crlf.size() - 1, "\r");
  EXPECT_EQ(parse_digits_csv(crlf + good.substr(0, good.size() - 1), "x.csv").count(), 2);
}

TEST(SynthDigits, SearchOrderAndItsError) {
  TempDir dir("digits-find");
  ScopedEnv no_env("DSEEK_DIGITS", std::nullopt);
  ScopedEnv data("DSEEK_DATA", (dir.path / "data").string());
  // An explicit path wins and must exist.
  EXPECT_EQ(find_digits(kFixture), kFixture);
  std::string e = error_of([&] { find_digits((dir.path / "nope.csv").string()); });
  EXPECT_NE(e.find("[digits] --digits " + (dir.path / "nope.csv").string() + ": no such file"),
            std::string::npos)
      << e;
  {
    ScopedEnv env("DSEEK_DIGITS", kFixture);
    EXPECT_EQ(find_digits(), kFixture);
  }
  {
    ScopedEnv env("DSEEK_DIGITS", (dir.path / "gone.csv").string());
    e = error_of([&] { find_digits(); });
    EXPECT_NE(e.find("$DSEEK_DIGITS " + (dir.path / "gone.csv").string() + ": no such file"),
              std::string::npos)
        << e;
  }
  EXPECT_EQ(digits_cache_path(), (dir.path / "data" / "digits.csv.gz").string());
  if (fs::exists(kDigitsPackagePath)) {
    EXPECT_EQ(find_digits(), kDigitsPackagePath);  // the package comes before the cache
    return;
  }
  e = error_of([&] { find_digits(); });
  for (const std::string& part :
       {std::string("[digits] the UCI digits"), std::string("$DSEEK_DIGITS (not set)"),
        std::string(kDigitsPackagePath), digits_cache_path(), std::string("bash scripts/setup.sh")})
    EXPECT_NE(e.find(part), std::string::npos) << part << "\n" << e;
  fs::create_directories(dir.path / "data");
  fs::copy_file(kFixture, dir.path / "data" / "digits.csv.gz");  // plain text under .gz: read as is
  EXPECT_EQ(find_digits(), digits_cache_path());
  EXPECT_EQ(load_digits(find_digits()).count(), 12);
  {
    ScopedEnv no_data("DSEEK_DATA", std::nullopt);
    ScopedEnv home("HOME", (dir.path / "home").string());
    EXPECT_EQ(digits_cache_path(),
              (dir.path / "home" / ".cache" / "dseek" / "digits.csv.gz").string());
  }
}

TEST(SynthVision, DenseOperatorIsTheBaselineBitForBit) {
  const VisionTask task = fixture_task();
  const BenchOperator dense = known_conv_operator("dense", task.channels, 8, 3);
  const VisionResult base = vision_baseline(task);
  ASSERT_EQ(base.val_losses.size(), 1u);
  EXPECT_TRUE(std::isfinite(base.val_loss));
  const VisionResult r =
      vision_train(dense.record.op, dense.record.spec.vars, dense.record.spec.valuations[0], task);
  EXPECT_EQ(r.val_losses, r.baseline_val_losses);  // the same seeds, the same weights: bit for bit
  EXPECT_EQ(r.val_accuracies, r.baseline_val_accuracies);
  EXPECT_EQ(r.rel_diff, 0.0);
  EXPECT_EQ(r.acc_diff, 0.0);
  EXPECT_EQ(r.flops, r.baseline_flops);
  EXPECT_EQ(r.baseline_flops, 2 * 2 * 4 * 4 * 9 * 64);  // 2 layers of C·C·k² MACs per position
  EXPECT_EQ(r.baseline_params, 2 * 4 * 4 * 9);
  EXPECT_EQ(r.val_loss, base.val_loss);
}

TEST(SynthVision, DeterministicPairedAndCosted) {
  VisionTask task = fixture_task();
  task.repeats = 2;
  const int64_t C = task.channels, L = task.layers, P = 64;
  struct Want {
    const char* name;
    int64_t flops, params;
  };
  const std::vector<Want> wants = {
      {"depthwise", L * 2 * C * 9 * P, L * C * 9},
      {"separable", L * 2 * C * (9 + C) * P, L * C * (9 + C)},
      {"grouped/2", L * 2 * C * C * 9 * P / 2, L * C * C * 9 / 2},
      {"lowrank/2", L * 2 * (C / 2) * (C * 9 + C) * P, L * (C / 2) * (C * 9 + C)},
      {"pointwise", L * 2 * C * C * P, L * C * C},
  };
  for (const Want& w : wants) {
    const BenchOperator b = known_conv_operator(w.name, C, 8, 3);
    const VisionResult r =
        vision_train(b.record.op, b.record.spec.vars, b.record.spec.valuations[0], task);
    EXPECT_EQ(r.flops, w.flops) << w.name;
    EXPECT_EQ(r.params, w.params) << w.name;
    ASSERT_EQ(r.val_losses.size(), 2u) << w.name;
    double mean = 0.0;
    for (int s = 0; s < 2; ++s) {
      EXPECT_TRUE(std::isfinite(r.val_losses[size_t(s)])) << w.name;
      EXPECT_NE(r.val_losses[size_t(s)], r.baseline_val_losses[size_t(s)]) << w.name;
      mean += (r.val_losses[size_t(s)] / r.baseline_val_losses[size_t(s)] - 1.0) / 2.0;
    }
    EXPECT_NEAR(r.rel_diff, mean, 1e-12) << w.name;
    EXPECT_GT(r.rel_diff_se, 0.0) << w.name;
  }
  // Bit-identical repeats, and seed by seed the 1-repeat runs.
  const BenchOperator b = known_conv_operator("separable", C, 8, 3);
  const auto run = [&](const VisionTask& t) {
    return vision_train(b.record.op, b.record.spec.vars, b.record.spec.valuations[0], t);
  };
  const VisionResult a1 = run(task), a2 = run(task);
  EXPECT_EQ(a1.val_losses, a2.val_losses);
  EXPECT_EQ(a1.train_loss, a2.train_loss);
  VisionTask one = task;
  one.repeats = 1;
  one.seed = task.seed + 1;
  EXPECT_EQ(run(one).val_losses[0], a1.val_losses[1]);
}

// The network's backward (the lift, the ReLUs, each convolution's lowered backward and bias, the
// pooling, the head) against central finite differences of its loss, for two designs: the dense
// convolution (one weight) and the separable one (two).
TEST(SynthVision, BackwardMatchesFiniteDifferences) {
  const Digits d = load_digits(kFixture);
  std::vector<float> x;
  std::vector<int32_t> y;
  for (int i = 0; i < 3; ++i) {
    for (int p = 0; p < 64; ++p) x.push_back(float(d.pixels[size_t(i * 64 + p)]) / 8.0f - 0.6f);
    y.push_back(d.labels[size_t(i)]);
  }
  VisionTask task = fixture_task();
  task.channels = 3;
  for (const char* name : {"dense", "separable"}) {
    const BenchOperator b = known_conv_operator(name, task.channels, 8, 3);
    VisionNet net(b.record.op, b.record.spec.vars, b.record.spec.valuations[0], task);
    // Biases start at 0, so a ReLU whose whole window is background would sit exactly on its
    // kink; non-zero biases keep the finite differences off the kinks.
    std::mt19937 rng(5);
    for (train::Param& p : net.params().all()) {
      if (p.name.find("bias") != std::string::npos)
        p.value.copy_from(dseek::testing::nonzero_tensor(p.value.shape(), rng, 0.3f, 0.05f));
      p.grad = Tensor::poisoned(p.value.shape());  // every gradient must be written
    }
    const double loss = net.loss(x, y, true);
    ASSERT_TRUE(std::isfinite(loss));
    std::vector<dseek::testing::GradInput> inputs;
    for (train::Param& p : net.params().all()) {
      ASSERT_FALSE(dseek::testing::has_non_finite(p.grad)) << name << " " << p.name;
      inputs.push_back({p.name, p.value, p.grad.clone()});
    }
    EXPECT_EQ(inputs.size(), size_t(b.record.op.weights.size() == 1 ? 8 : 10)) << name;
    // The loss in double as an f32 pair (value, remainder), so the differences keep its digits.
    // (Measured worst errors: dense 2.6% on a bias of gradient 0.016, separable 1.4%; what is
    // left is the f32 forward's rounding at eps 3e-4 and ReLUs near a kink. A wrong factor or
    // mask anywhere gives errors of order 1.)
    const auto forward = [&] {
      const double l = net.loss(x, y, false);
      const float hi = float(l);
      return Tensor::from_vector({hi, float(l - double(hi))}, {2});
    };
    const dseek::testing::GradReport rep = dseek::testing::check_gradients(
        forward, Tensor::from_vector({1.0f, 1.0f}, {2}), inputs, 3e-4f, 24);
    EXPECT_LT(rep.worst, 5e-2) << name << ": " << rep.where;
    std::printf("%s: worst %.3g at %s (%ld checked)\n", name, rep.worst, rep.where.c_str(),
                long(rep.checked));
    EXPECT_GT(rep.checked, 80) << name;
  }
}

TEST(SynthVision, WrongShapesAndBadTasksAreClearErrors) {
  const VisionTask task = fixture_task();
  LinearProblem lp;
  std::string e = error_of([&] { vision_train(dense_linear(lp), lp.vars, {1, 4, 4, 1, 1}, task); });
  EXPECT_NE(e.find("[vision_proxy] the operator [T, d_in] -> [T, d_out] is not a convolution"),
            std::string::npos)
      << e;
  // A 1×1 convolution to k output channels: k is a coefficient, so it keeps its value (3), and
  // the output per image is not the proxy's [C, 8, 8].
  ConvProblem p;
  const Operator to_k =
      build({p.sN, p.sk, p.sH, p.sW}, {share_action(1, 0), expand_action(1), reduce_action(p.sC),
                                       share_action(3, 0), finalize_action({0, 3, 1, 2})});
  e = error_of([&] { vision_train(to_k, p.vars, {1, 4, 4, 8, 8, 3}, task); });
  EXPECT_NE(e.find("[vision_proxy] the operator [N, C, H, W] -> [N, k, H, W] maps [4, 8, 8] -> "
                   "[3, 8, 8] per image; the proxy needs [4, 8, 8] -> [4, 8, 8]"),
            std::string::npos)
      << e;
  e = error_of([&] { vision_train(conv2d(p), p.vars, {1, 4, 4}, task); });
  EXPECT_NE(e.find("a valuation of 3 values for 6 variables"), std::string::npos) << e;
  // A valid operator with a bad task or a missing file.
  const BenchOperator dense = known_conv_operator("dense", 4, 8, 3);
  auto with = [&](auto change) {
    VisionTask t = task;
    change(t);
    return error_of([&] {
      vision_train(dense.record.op, dense.record.spec.vars, dense.record.spec.valuations[0], t);
    });
  };
  e = with([](VisionTask& t) { t.channels = 0; });
  EXPECT_NE(e.find("[vision_proxy] task.channels: must be positive, got 0"), std::string::npos)
      << e;
  e = with([](VisionTask& t) { t.kernel = 2; });
  EXPECT_NE(e.find("task.kernel: 2 is not an odd size"), std::string::npos) << e;
  e = with([](VisionTask& t) { t.digits = "/nonexistent/digits.csv.gz"; });
  EXPECT_NE(e.find("[digits] --digits /nonexistent/digits.csv.gz: no such file"), std::string::npos)
      << e;
  e = error_of([] { known_conv_operator("grouped/3", 4, 8, 3); });
  EXPECT_NE(e.find("3 groups do not divide 4 channels"), std::string::npos) << e;
  e = error_of([] { known_conv_operator("dilated", 4, 8, 3); });
  EXPECT_NE(e.find("[synth] known conv 'dilated'"), std::string::npos) << e;
}

TEST(SynthVision, DenseBaselineLearnsTheRealDigits) {
  const std::string path = real_digits();
  if (path.empty())
    GTEST_SKIP() << "the UCI digits are not here (bash scripts/setup.sh fetches them)";
  const Digits d = load_digits(path);
  ASSERT_EQ(d.count(), 1797);
  // A short run (about 2.5 s of one core; the default task is 300 steps of 32 images, C = 16).
  VisionTask task;
  task.channels = 12;
  task.steps = 150;
  task.batch = 16;
  task.lr = 3e-2;
  const VisionResult r = vision_baseline(task);
  // Chance is 10% and ln 10 = 2.30 nats; this run reaches about 74% and 0.8 (seeds 0 and 1).
  EXPECT_GT(r.val_accuracy, 0.5) << "loss " << r.val_loss;
  EXPECT_LT(r.val_loss, 1.3);
  std::printf("dense 3x3, C = 12, 150 steps of 16: val loss %.4f, accuracy %.2f%% (%.1f s)\n",
              r.val_loss, 100.0 * r.val_accuracy, r.seconds);
}

// Through the binary, on the fixture: `synth proxy --kind conv` tables the known designs against
// the dense convolution (itself +0.00% at latency ratio 1), `synth search --quality vision` trains
// the baseline first and scores candidates, and misuse is a clear error.
TEST(SynthVision, CliProxyTableAndSearch) {
  TempDir out("vision-cli");
  const std::string json = (out.path / "vision.json").string();
  dseek::testing::CliRun r = dseek::testing::run_dseek_shell(
      "synth proxy --task conv --digits " + kFixture +
      " --channels 4 --steps 4 --seeds 2 --jobs 2 --latency-runs 1 --builtins "
      "dense,separable,grouped/2 --json " +
      json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| dense 3x3 | 288 | 36864 | 1.000 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| +0.00% ± 0.00% | +0.00 ± 0.00 pts | 1.00 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| separable 3x3 | 104 | 13312 | 0.361 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| grouped 3x3 g=2 | 144 | 18432 | 0.500 |"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  ASSERT_EQ(j["rows"].size(), 3u);
  for (const auto& row : j["rows"]) {
    const auto val = row["val_losses"].get<std::vector<double>>();
    const auto base = row["baseline_val_losses"].get<std::vector<double>>();
    ASSERT_EQ(val.size(), 2u);
    const double mean = (val[0] / base[0] + val[1] / base[1]) / 2.0 - 1.0;
    EXPECT_NEAR(row["rel_diff"].get<double>(), mean, 1e-12) << row.dump();
  }

  const std::string search =
      "synth search --task conv --d-in 4 --d-out 4 --tokens 2 --coeffs k=3 --max-depth 10 "
      "--budget 4 --batch 4 --jobs 1 --latency-runs 1 --quality vision --proxy-steps 3 --digits " +
      kFixture;
  r = dseek::testing::run_dseek_shell(search + " --out " + (out.path / "run").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("vision proxy baseline (dense 3x3, 3 steps x 1 repeats)"), std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("4 candidates (4 evaluated now"), std::string::npos) << r.out;

  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"synth search --task conv --d-in 4 --d-out 8 --coeffs k=3 --quality vision --out " +
                (out.path / "x").string(),
            "--quality vision trains a CNN on 8x8 digit images"},
           {"synth search --task lm-proj --quality vision --out " + (out.path / "y").string(),
            "--task conv --image 8 and --d-in = --d-out, got --task lm-proj"},
           {"synth proxy --kind conv --digits /nonexistent.csv",
            "--digits /nonexistent.csv: no "
            "such file"},
           {"synth proxy --kind conv --builtins depthwise", "dense must come first"}}) {
    const dseek::testing::CliRun bad = dseek::testing::run_dseek_shell(args);
    EXPECT_NE(bad.exit_code, 0) << args;
    EXPECT_NE(bad.err.find(message), std::string::npos) << args << "\n" << bad.err;
  }
}

// --translation-equivariant: the conv task admits convolutions (their weights read channels and
// window offsets only) and refuses a layer with a weight per position, also as a partial state.
TEST(SynthVision, TranslationEquivariantConvTaskRefusesPositionWeights) {
  TaskOptions o;
  o.task = "conv";
  o.d_in = o.d_out = 4;
  o.tokens = 2;
  o.coeffs = {{"k", 3}};
  o.max_depth = 12;
  const Task plain = make_task(o);
  o.translation_equivariant = true;
  const Task eq = make_task(o);
  const Vars& v = eq.spec.vars;
  auto file_op = [&](const std::string& name) {
    return known_conv_operator(name, 4, 8, 3).record.op;
  };
  for (const char* name : {"dense", "separable", "grouped/2", "lowrank/2", "pointwise"}) {
    EXPECT_TRUE(eq.admissible(file_op(name))) << name;
    EXPECT_TRUE(plain.admissible(file_op(name))) << name;
  }
  EXPECT_TRUE(eq.admissible(eq.baseline));
  // y[n,o,h,w] = Σ_c x[n,c,h,w] · W[o,c] · A[h] (a weight per row): admissible only without the
  // constraint, and its partial state is refused as soon as A reads h.
  Operator op = make_operator(eq.spec.output);
  apply(op, share_action(2, 0));
  EXPECT_FALSE(eq.admissible(op));
  EXPECT_TRUE(plain.admissible(op));
  for (const Action& a : {share_action(1, 1), expand_action(1), reduce_action(Size::var(1)),
                          share_action(3, 1), finalize_action({0, 3, 1, 2})})
    apply(op, a);
  ASSERT_TRUE(op.complete) << history_str(op, v);
  EXPECT_FALSE(eq.admissible(op));
  EXPECT_TRUE(plain.admissible(op));
  EXPECT_TRUE(weights_read(op, {2}));
  EXPECT_FALSE(weights_read(op, {3}));
  o.task = "lm-proj";
  const std::string e = error_of([&] { make_task(o); });
  EXPECT_NE(e.find("[synth] task: translation equivariance is a conv constraint, not lm-proj's"),
            std::string::npos)
      << e;
}
