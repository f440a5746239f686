// A synthesised operator in place of MLP projections of a train model (train/synth_override.h):
// the dense operator with the linear's weights trains exactly like the linear; other operators'
// gradients match finite differences through the whole model (dense MLPs and MoE shared
// experts); the ParamSet holds the operator's weights in the replaced weight's place; operators
// that do not fit and bad settings are refused with the file, site and sizes named; a run with an
// override resumes bit-identically and refuses another operator.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "cli_util.h"
#include "synth/serialize.h"
#include "test_model_util.h"
#include "test_synth_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/synth_override.h"
#include "train/train_config.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;
using dseek::synth::OperatorRecord;
using dseek::synth::Spec;
using dseek::synth::test::LinearProblem;
namespace fs = std::filesystem;

using dseek::testing::error_of;
using dseek::testing::slurp;
using dseek::testing::TempDir;

namespace {

// A [T, d_in] -> [T, d_out] operator record with the valuation T=1, d_in=8, d_out=8, r=2, g=2 (the
// sites' sizes are put in by the override).
OperatorRecord record_of(const synth::Operator& op, const LinearProblem& p) {
  OperatorRecord r;
  r.spec.vars = p.vars;
  r.spec.valuations = {{1, 8, 8, 2, 2}};
  r.spec.input = {p.sT, p.sdin};
  r.spec.output = {p.sT, p.sdout};
  r.op = op;
  return r;
}

ModelConfig llama_config() {
  ModelConfig c = dseek::testing::tiny_config("llama");  // d 32, ff 40, 2 layers, vocab 67
  c.num_key_value_heads = 2;
  return c;
}

ModelConfig moe_config() {
  ModelConfig c = dseek::testing::tiny_config("deepseek");
  dseek::testing::add_moe(c);  // MoE from layer 1, one shared expert of width 12
  c.norm_topk_prob = true;
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& v : ids) v = d(rng);
  return ids;
}

}  // namespace

// The ParamSet: the replaced weights leave, the operator's weights take their place in order,
// with the fitted shapes, and the dense operator's init is the linear's N(0, init_std²).
TEST(SynthOverride, ParamsTakeTheReplacedWeightsPlace) {
  LinearProblem p;
  const ModelConfig c = llama_config();
  SynthOverride lr(record_of(synth::test::low_rank(p), p), "low_rank.json", "mlp", c);
  EXPECT_EQ(lr.replaced().size(), 6u);  // gate, up, down of 2 layers
  EXPECT_TRUE(lr.replaces("model.layers.1.mlp.down_proj.weight"));
  EXPECT_FALSE(lr.replaces("model.layers.1.self_attn.q_proj.weight"));
  ParamSet params;
  TrainModel::init_params(c, 3, 0.02, params);
  std::vector<std::string> before;
  for (const Param& q : params.all()) before.push_back(q.name);
  lr.replace_params(params, 3, 0.02);
  std::vector<std::string> expect;
  for (const std::string& n : before) {
    if (!lr.replaces(n)) {
      expect.push_back(n);
      continue;
    }
    for (const std::string& s : lr.param_names(n)) expect.push_back(s);
  }
  std::vector<std::string> got;
  for (const Param& q : params.all()) got.push_back(q.name);
  EXPECT_EQ(got, expect);
  // Low rank: w0 = A [d_out, r], w1 = B [r, d_in]; r = 2 from the file's valuation.
  EXPECT_EQ(params.value("model.layers.0.mlp.up_proj.synth.w0").shape(), Shape({40, 2}));
  EXPECT_EQ(params.value("model.layers.0.mlp.up_proj.synth.w1").shape(), Shape({2, 32}));
  EXPECT_EQ(params.value("model.layers.0.mlp.down_proj.synth.w0").shape(), Shape({32, 2}));
  EXPECT_EQ(params.value("model.layers.0.mlp.down_proj.synth.w1").shape(), Shape({2, 40}));
  EXPECT_TRUE(params.at("model.layers.0.mlp.up_proj.synth.w0").decay);
  TrainModel model(c, params, ModelPart(), &lr);  // accepts the replaced layout
  const SynthOverride::Cost cost = lr.cost("model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(cost.params, 2 * (32 + 40));
  EXPECT_EQ(cost.flops, 2 * 2 * (32 + 40));
  EXPECT_EQ(cost.dense_flops, 2 * 32 * 40);

  // The dense operator at the same scale as the linear it replaces: std of its weights ≈ 0.02.
  const ModelConfig wide = [] {
    ModelConfig w = llama_config();
    w.hidden_size = 64;
    w.intermediate_size = 256;
    w.head_dim = 16;
    return w;
  }();
  SynthOverride dense(record_of(synth::test::dense_linear(p), p), "dense.json", "mlp.up_proj",
                      wide);
  ParamSet dp;
  TrainModel::init_params(wide, 5, 0.02, dp);
  dense.replace_params(dp, 5, 0.02);
  const std::vector<float> w = dp.value("model.layers.0.mlp.up_proj.synth.w0").to_vector();
  ASSERT_EQ(w.size(), size_t(256 * 64));
  double s2 = 0;
  for (float x : w) s2 += double(x) * x;
  EXPECT_NEAR(std::sqrt(s2 / double(w.size())), 0.02, 0.001);
}

// The dense operator holding the linear's weights: the same losses, step by step, with AdamW.
TEST(SynthOverride, DenseOperatorTrainsLikeTheLinear) {
  LinearProblem p;
  const ModelConfig c = llama_config();
  for (const std::string site : {"mlp.up_proj", "mlp"}) {
    SCOPED_TRACE(site);
    SynthOverride dense(record_of(synth::test::dense_linear(p), p), "dense.json", site, c);
    ParamSet a, b;
    TrainModel::init_params(c, 7, 0.1, a);
    TrainModel::init_params(c, 7, 0.1, b);
    dense.replace_params(b, 99, 0.1);
    for (const std::string& name : dense.replaced()) {
      // dense_linear's only weight is W[o, i]: the linear's layout.
      Param& w0 = b.at(dense.param_names(name).at(0));
      ASSERT_EQ(w0.value.shape(), a.value(name).shape());
      w0.value.copy_from(a.value(name));
    }
    TrainModel ma(c, a), mb(c, b, ModelPart(), &dense);
    AdamW oa(a, {0.9, 0.95, 1e-8, 0.1}), ob(b, {0.9, 0.95, 1e-8, 0.1});
    for (int step = 0; step < 4; ++step) {
      const std::vector<int32_t> seq = random_ids(2 * 9 + 1, c.vocab_size, 40 + step);
      const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
      a.zero_grad();
      b.zero_grad();
      const double la = ma.forward_backward(in, tg, {}, 1.0f, 9).total;
      const double lb = mb.forward_backward(in, tg, {}, 1.0f, 9).total;
      ASSERT_TRUE(std::isfinite(la));
      EXPECT_NEAR(lb, la, 1e-5 * la) << "step " << step;
      if (step == 0) {
        for (const std::string& name : dense.replaced()) {
          const std::vector<float> ga = a.grad(name).to_vector();
          const std::vector<float> gb = b.grad(dense.param_names(name)[0]).to_vector();
          double gmax = 0;
          for (float g : ga) gmax = std::max(gmax, double(std::abs(g)));
          ASSERT_GT(gmax, 0.0);
          for (size_t i = 0; i < ga.size(); ++i)
            ASSERT_NEAR(gb[i], ga[i], 1e-5 * gmax) << name << "[" << i << "]";
        }
      }
      oa.step(3e-3, clip_factor(grad_norm(a), 1.0));
      ob.step(3e-3, clip_factor(grad_norm(b), 1.0));
    }
    // And the weights moved the same way.
    for (const std::string& name : dense.replaced()) {
      const std::vector<float> wa = a.value(name).to_vector();
      const std::vector<float> wb = b.value(dense.param_names(name)[0]).to_vector();
      for (size_t i = 0; i < wa.size(); ++i) ASSERT_NEAR(wb[i], wa[i], 1e-5) << name;
    }
  }
}

// Central differences of the total loss for sampled elements of the operators' weights (and of a
// few other parameters), through the whole model: low rank in every dense MLP projection, grouped
// as down_proj, low rank in a MoE layer's shared experts (an element whose perturbation flips an
// expert choice is skipped).
TEST(SynthOverride, GradientsMatchFiniteDifferencesThroughTheModel) {
  LinearProblem p;
  struct Case {
    std::string name, site;
    synth::Operator op;
    ModelConfig config;
    LossOptions loss;
  };
  std::vector<Case> cases = {
      {"low rank in mlp", "mlp", synth::test::low_rank(p), llama_config(), {}},
      {"grouped down_proj", "mlp.down_proj", synth::test::grouped_linear(p), llama_config(), {}},
      {"low rank shared experts", "shared_experts", synth::test::low_rank(p), moe_config(), {}},
  };
  cases[2].loss.balance = {"expert", 0.05, 1};
  for (Case& tc : cases) {
    SCOPED_TRACE(tc.name);
    SynthOverride ov(record_of(tc.op, p), tc.name, tc.site, tc.config);
    ParamSet params;
    TrainModel::init_params(tc.config, 3, 0.3, params);
    ov.replace_params(params, 3, 0.3);
    TrainModel model(tc.config, params, ModelPart(), &ov);
    const std::vector<int32_t> seq = random_ids(13, tc.config.vocab_size, 9);
    const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
    const float scale = 0.75f;
    params.zero_grad();
    const SequenceLosses base = model.forward_backward(in, tg, tc.loss, scale);
    ASSERT_TRUE(std::isfinite(base.total));
    std::mt19937 rng(17);
    double worst = 0;
    std::string where;
    int64_t checked = 0, skipped = 0, synth_checked = 0;
    for (Param& q : params.all()) {
      const bool is_synth = q.name.find(".synth.") != std::string::npos;
      if (!q.trainable || (!is_synth && q.name.find("layers.1.") == std::string::npos)) continue;
      const std::vector<float> grad = q.grad.to_vector();
      double gmax = 0;
      for (float g : grad) gmax = std::max(gmax, double(std::abs(g)));
      float* v = q.value.data<float>();
      std::uniform_int_distribution<int64_t> pick(0, q.value.numel() - 1);
      for (int s = 0; s < (is_synth ? 4 : 1); ++s) {
        const int64_t i = pick(rng);
        const float orig = v[i], eps = 1e-2f;
        v[i] = orig + eps;
        const SequenceLosses up = model.forward(in, tg, tc.loss);
        v[i] = orig - eps;
        const SequenceLosses down = model.forward(in, tg, tc.loss);
        v[i] = orig;
        if (up.expert_load != base.expert_load || down.expert_load != base.expert_load) {
          ++skipped;
          continue;
        }
        const double numeric = scale * (up.total - down.total) / (2.0 * eps);
        const double analytic = grad[size_t(i)];
        const double denom = std::max({std::abs(numeric), std::abs(analytic), 0.02 * gmax, 1e-4});
        const double err = std::abs(numeric - analytic) / denom;
        ++checked;
        synth_checked += is_synth;
        if (err > worst) {
          worst = err;
          where = q.name + "[" + std::to_string(i) + "] analytic " + std::to_string(analytic) +
                  " numeric " + std::to_string(numeric);
        }
      }
    }
    EXPECT_LT(worst, 2e-2) << where;
    EXPECT_GE(synth_checked, 8);
    EXPECT_GT(checked, 3 * skipped) << "too many routing flips to check";
  }
}

// Operators that cannot stand in for a projection, and bad sites.
TEST(SynthOverride, RefusesOperatorsThatDoNotFitAndUnknownSites) {
  LinearProblem p;
  const ModelConfig c = llama_config();  // d 32, ff 40
  // g = 3 divides neither 32 nor 40.
  OperatorRecord grouped = record_of(synth::test::grouped_linear(p), p);
  grouped.spec.valuations = {{1, 9, 9, 2, 3}};
  std::string e = error_of([&] { SynthOverride(grouped, "g3.json", "mlp.up_proj", c); });
  EXPECT_NE(e.find("g3.json"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.0.mlp.up_proj.weight ([T, 32] -> [T, 40])"), std::string::npos)
      << e;
  EXPECT_NE(e.find("is not a positive integer"), std::string::npos) << e;
  // An operator whose output is not [T, Y] over a variable: [T, d_in] -> [T, d_in].
  {
    LinearProblem q;
    OperatorRecord same;
    same.spec.vars = q.vars;
    same.spec.valuations = {{1, 8, 8, 2, 2}};
    same.spec.input = {q.sT, q.sdin};
    same.spec.output = {q.sT, q.sdin};
    same.op =
        synth::test::build({q.sT, q.sdin}, {synth::share_action(1, 0), synth::expand_action(1),
                                            synth::reduce_action(q.sdin), synth::share_action(1, 0),
                                            synth::finalize_action({0, 1})});
    e = error_of([&] { SynthOverride(same, "square.json", "mlp.up_proj", c); });
    EXPECT_NE(e.find("square.json"), std::string::npos) << e;
    EXPECT_NE(e.find("[T, 32] -> [T, 40]"), std::string::npos) << e;
    EXPECT_NE(e.find("its valuations give [T, 8] -> [T, 8]"), std::string::npos) << e;
  }
  e = error_of(
      [&] { SynthOverride(record_of(synth::test::low_rank(p), p), "x", "mlp.o_proj", c); });
  EXPECT_NE(e.find("train.synth_override.site: 'mlp.o_proj' is not one of mlp.gate_proj"),
            std::string::npos)
      << e;
  e = error_of(
      [&] { SynthOverride(record_of(synth::test::low_rank(p), p), "x", "shared_experts", c); });
  EXPECT_NE(e.find("has no such projection"), std::string::npos) << e;
  // An operator file that does not parse names the file and the field.
  TempDir dir("synth-override");
  std::ofstream(dir.path / "bad.json") << R"({"vars": 3})";
  e = error_of([&] { SynthOverride::load((dir.path / "bad.json").string(), "mlp", c); });
  EXPECT_NE(e.find("train.synth_override.file " + (dir.path / "bad.json").string()),
            std::string::npos)
      << e;
  e = error_of([&] { SynthOverride::load((dir.path / "none.json").string(), "mlp", c); });
  EXPECT_NE(e.find("cannot read"), std::string::npos) << e;
}

// train.synth_override in a TOML file (an inline table), --set, and the settings' checks.
TEST(SynthOverride, ConfigSettings) {
  TempDir dir("synth-override");
  std::ofstream(dir.path / "c.toml")
      << "[train]\nsynth_override = { file = \"op.json\", site = \"mlp.up_proj\" }\n";
  TrainConfig c;
  load_train_config_file((dir.path / "c.toml").string(), c);
  EXPECT_EQ(c.synth_file, "op.json");
  EXPECT_EQ(c.synth_site, "mlp.up_proj");
  validate_train_config(c);
  apply_train_config_override("train.synth_override.site=mlp.gate", c);
  std::string e = error_of([&] { validate_train_config(c); });
  EXPECT_NE(e.find("train.synth_override.site: 'mlp.gate' is not one of mlp.gate_proj, "
                   "mlp.up_proj, mlp.down_proj, mlp, shared_experts.gate_proj"),
            std::string::npos)
      << e;
  TrainConfig only_site;
  only_site.synth_site = "mlp";
  e = error_of([&] { validate_train_config(only_site); });
  EXPECT_NE(e.find("train.synth_override.file: required"), std::string::npos) << e;
  TrainConfig only_file;
  only_file.synth_file = "op.json";
  e = error_of([&] { validate_train_config(only_file); });
  EXPECT_NE(e.find("train.synth_override.site: '' is not one of"), std::string::npos) << e;
}

// `dseek train --synth-op --synth-site`: a run of 6 steps, and one of 3 resumed to 6, agree bit
// for bit (metrics, model and optimizer state, which hold the operator's weights); resuming with
// another operator or without one is refused; export refuses the run.
TEST(SynthOverride, CliRunResumesBitIdentically) {
  TempDir dir("synth-override");
  {
    std::ofstream corpus(dir.path / "corpus.txt");
    for (int i = 0; i < 60; ++i)
      corpus << "Fortune " << i << ": a penny saved is a penny earned, look before you leap.\n%\n";
  }
  const std::string bin = std::string("\"") + DSEEK_BINARY + "\" ";
  auto sh = [&](const std::string& args) {
    const std::string cmd = bin + args + " > \"" + (dir.path / "log").string() + "\" 2>&1";
    return std::system(cmd.c_str());
  };
  const std::string d = dir.path.string();
  ASSERT_EQ(sh("tokenizer train --input " + d +
               "/corpus.txt --separator % --vocab-size 300 --out " + d + "/tok"),
            0)
      << slurp(dir.path / "log");
  ASSERT_EQ(sh("data prepare --tokenizer " + d + "/tok --input " + d +
               "/corpus.txt --separator % --out " + d + "/data"),
            0)
      << slurp(dir.path / "log");
  ModelConfig mc = llama_config();
  mc.vocab_size = 300;
  std::ofstream(dir.path / "config.json") << model_config_to_json(mc);
  LinearProblem p;
  const OperatorRecord lr = record_of(synth::test::low_rank(p), p);
  const OperatorRecord gr = record_of(synth::test::grouped_linear(p), p);
  std::ofstream(dir.path / "low_rank.json") << synth::operator_to_json(lr.spec, lr.op);
  std::ofstream(dir.path / "grouped.json") << synth::operator_to_json(gr.spec, gr.op);

  auto train = [&](const std::string& run, int steps, const std::string& op,
                   const std::string& extra) {
    return sh("train --model-config " + d + "/config.json --data " + d + "/data --out " + d + "/" +
              run + " --steps " + std::to_string(steps) +
              " --seq-len 16 --batch-size 2 --threads 1 --set optim.schedule=constant"
              " --set optim.warmup_steps=2 --set eval.interval=1 --set checkpoint.interval=3" +
              (op.empty() ? "" : " --synth-op " + d + "/" + op + " --synth-site mlp") + " " +
              extra);
  };
  ASSERT_EQ(train("a", 6, "low_rank.json", ""), 0) << slurp(dir.path / "log");
  ASSERT_EQ(train("b", 3, "low_rank.json", ""), 0) << slurp(dir.path / "log");
  EXPECT_NE(train("b", 6, "grouped.json", "--resume"), 0) << slurp(dir.path / "log");
  EXPECT_NE(slurp(dir.path / "log").find("is not the operator the run was trained with"),
            std::string::npos)
      << slurp(dir.path / "log");
  EXPECT_NE(train("b", 6, "", "--resume"), 0);
  EXPECT_NE(slurp(dir.path / "log").find("resume it with the same train.synth_override"),
            std::string::npos)
      << slurp(dir.path / "log");
  ASSERT_EQ(train("b", 6, "low_rank.json", "--resume"), 0) << slurp(dir.path / "log");

  const std::string ma = slurp(dir.path / "a" / "metrics.jsonl"),
                    mb = slurp(dir.path / "b" / "metrics.jsonl");
  // tokens_per_s differs run to run; every other field must agree.
  auto strip = [](const std::string& text) {
    std::string out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("tokens_per_s");
      out += j.dump() + "\n";
    }
    return out;
  };
  EXPECT_EQ(std::count(ma.begin(), ma.end(), '\n'), 6);
  EXPECT_EQ(strip(mb), strip(ma));
  const fs::path ca = find_latest_checkpoint((dir.path / "a").string()),
                 cb = find_latest_checkpoint((dir.path / "b").string());
  ASSERT_EQ(ca.filename(), cb.filename());
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string x = slurp(ca / file), y = slurp(cb / file);
    EXPECT_FALSE(x.empty());
    EXPECT_TRUE(x == y) << file;
  }
  const CheckpointData ck = load_checkpoint(ca.string());
  bool has_synth = false, has_up = false;
  for (const auto& [name, t] : ck.model) {
    has_synth |= name == "model.layers.1.mlp.up_proj.synth.w1";
    has_up |= name == "model.layers.1.mlp.up_proj.weight";
  }
  EXPECT_TRUE(has_synth);
  EXPECT_FALSE(has_up);
  EXPECT_EQ(slurp(dir.path / "a" / "synth_operator.json"), synth::operator_to_json(lr.spec, lr.op));
  EXPECT_NE(sh("export --run " + d + "/a --out " + d + "/exported"), 0);
  EXPECT_NE(slurp(dir.path / "log").find("belongs to a synthesised operator"), std::string::npos)
      << slurp(dir.path / "log");
}
