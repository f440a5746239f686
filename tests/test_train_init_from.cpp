// model.init_from and the rope-scaling overrides of `dseek train` (train/init_from.h,
// train/model_overrides.h), in process on a small generated corpus: the overrides reach the
// model config, the run's config.json, the export's config.json and the model itself (the loss
// changes); a run initialised from another (its run directory, a checkpoint, or its export)
// starts from exactly that model: with a negligible learning rate its validation loss equals the
// source's final one, while a fresh initialisation's does not; bad sources are clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli_util.h"
#include "data/prepare.h"
#include "data/token_shards.h"
#include "model/config.h"
#include "model/rope.h"
#include "test_util.h"
#include "tokenizer/bpe_trainer.h"
#include "train/checkpoint.h"
#include "train/export.h"
#include "train/model_overrides.h"
#include "train/trainer.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Documents of short arithmetic-like facts, varied by an LCG so that the model has something to
// learn and the validation loss depends on the weights.
std::string make_corpus() {
  const char* const names[] = {"alpha", "beta", "gamma", "delta", "omega", "sigma"};
  uint64_t x = 777;
  auto next = [&x](uint64_t n) {
    x = (x * 6364136223846793005ULL + 1442695040888963407ULL);
    return (x >> 33) % n;
  };
  std::string text;
  for (int d = 0; d < 30; ++d) {
    for (int j = 0; j < 5; ++j) {
      const uint64_t a = next(6), b = next(6);
      text += std::string(names[a]) + " plus " + names[b] + " makes " + std::to_string(a + b) +
              (j % 2 ? ".\n" : ". ");
    }
    text += "\n%\n";
  }
  return text;
}

class TrainInitFrom : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("dseek-initfrom-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    const std::string corpus = make_corpus();
    std::ofstream(root_ / "corpus.txt") << corpus;
    BpeTrainerOptions bo;
    bo.vocab_size = 320;
    BpeTrainer trainer(bo);
    trainer.add_text(corpus);
    const TrainedTokenizer t = trainer.train(false);
    fs::create_directories(root_ / "tok");
    write_file_atomic((root_ / "tok" / "tokenizer.json").string(), t.tokenizer.dump());
    write_file_atomic((root_ / "tok" / "tokenizer_config.json").string(), t.config.dump());
    PrepareOptions po;
    po.tokenizer = (root_ / "tok").string();
    po.inputs = {(root_ / "corpus.txt").string()};
    po.out_dir = (root_ / "data").string();
    po.corpus.separator_line = "%";
    po.progress = false;
    prepare_data(po);
    // The source model of the init_from tests: 4 steps from seed 1.
    source_ = new train::TrainSummary(train::run_training(config(root_ / "source", 4, 1), false));
  }
  static void TearDownTestSuite() {
    delete source_;
    fs::remove_all(root_);
  }

  // The tiny preset with small shapes, validation after every step on the same held-out set
  // (the split depends on the seed only through the data, which is shared).
  static train::TrainConfig config(const fs::path& out, int64_t steps, int64_t seed) {
    train::TrainConfig c;
    c.data = (root_ / "data").string();
    c.tokenizer = (root_ / "tok").string();
    c.out = out.string();
    c.steps = steps;
    c.seed = seed;
    c.seq_len = 32;
    c.batch_size = 4;
    c.val_fraction = 0.1;
    c.eval_interval = 1;
    c.eval_sequences = 4;
    c.warmup_steps = 0;
    c.schedule = "constant";
    c.threads = 1;
    return c;
  }
  // A run whose single step cannot move the weights: lr 1e-30 (the schedule needs lr > 0) and a
  // frozen router bias, so its validation loss is that of the weights it starts from.
  static train::TrainConfig frozen(const fs::path& out, const std::string& init_from) {
    train::TrainConfig c = config(out, 1, 1);
    c.lr = 1e-30;
    c.bias_update_speed = "0";
    c.init_from = init_from;
    return c;
  }
  static fs::path root_;
  static train::TrainSummary* source_;
};
fs::path TrainInitFrom::root_;
train::TrainSummary* TrainInitFrom::source_ = nullptr;

}  // namespace

TEST(ModelOverrides, YarnFromAnUnscaledModelKeepsItsContextAsTheOriginal) {
  ModelConfig m = train::preset_model_config("tiny", 300);
  m.max_position_embeddings = 128;
  train::TrainConfig c;
  EXPECT_FALSE(train::has_model_overrides(c));
  c.rope_type = "yarn";
  c.rope_factor = 4;
  EXPECT_TRUE(train::has_model_overrides(c));
  train::apply_model_overrides(c, m);
  EXPECT_EQ(m.rope_scaling.type, "yarn");
  EXPECT_EQ(m.rope_scaling.factor, 4.0);
  EXPECT_EQ(m.rope_scaling.original_max_position_embeddings, 128);
  EXPECT_EQ(m.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(m.rope_scaling.beta_slow, 1.0);
  EXPECT_EQ(m.max_position_embeddings, 512);
  // A second stage raises the factor only: the original context stays, the context follows.
  train::TrainConfig stage2;
  stage2.rope_factor = 8;
  stage2.rope_mscale_all_dim = 0.707;
  train::apply_model_overrides(stage2, m);
  EXPECT_EQ(m.rope_scaling.original_max_position_embeddings, 128);
  EXPECT_EQ(m.rope_scaling.mscale_all_dim, 0.707);
  EXPECT_EQ(m.max_position_embeddings, 1024);
  // The rope frequencies change: YaRN interpolates the low frequencies by the factor.
  const RopeParams scaled = rope_params(m);
  const RopeParams plain = rope_params(train::preset_model_config("tiny", 300));
  ASSERT_EQ(scaled.inv_freq.size(), plain.inv_freq.size());
  EXPECT_FLOAT_EQ(scaled.inv_freq.front(), plain.inv_freq.front());      // extrapolated
  EXPECT_NEAR(scaled.inv_freq.back(), plain.inv_freq.back() / 8, 1e-9);  // interpolated
  // Explicit values win, and "none" removes the scaling.
  train::TrainConfig explicit_max;
  explicit_max.max_position_embeddings = 700;
  explicit_max.rope_beta_fast = 16;
  train::apply_model_overrides(explicit_max, m);
  EXPECT_EQ(m.max_position_embeddings, 700);
  EXPECT_EQ(m.rope_scaling.beta_fast, 16.0);
  train::TrainConfig none;
  none.rope_type = "none";
  train::apply_model_overrides(none, m);
  EXPECT_EQ(m.rope_scaling.type, "default");
  EXPECT_EQ(m.max_position_embeddings, 700);
}

TEST(ModelOverrides, BadValuesNameTheKey) {
  const ModelConfig base = train::preset_model_config("tiny", 300);
  auto apply = [&](void (*set)(train::TrainConfig&)) {
    train::TrainConfig c;
    set(c);
    ModelConfig m = base;
    return error_of([&] { train::apply_model_overrides(c, m); });
  };
  EXPECT_NE(apply([](train::TrainConfig& c) {
              c.rope_type = "ntk";
            }).find("[train] model.rope_scaling.type: 'ntk' is not one of none, yarn, linear"),
            std::string::npos);
  EXPECT_NE(apply([](train::TrainConfig& c) {
              c.rope_factor = 4;
            }).find("[train] model.rope_scaling.factor: the model has no rope scaling"),
            std::string::npos);
  EXPECT_NE(apply([](train::TrainConfig& c) {
              c.rope_type = "yarn";
              c.rope_factor = 0.5;
            }).find("[train] model.rope_scaling.factor: must be >= 1, got 0.5"),
            std::string::npos);
  EXPECT_NE(
      apply([](train::TrainConfig& c) {
        c.rope_type = "linear";
        c.rope_factor = 2;
        c.rope_beta_fast = 8;
      }).find("[train] model.rope_scaling.beta_fast: only yarn rope scaling has this setting"),
      std::string::npos);
  EXPECT_NE(apply([](train::TrainConfig& c) {
              c.rope_type = "yarn";
              c.rope_factor = 2;
              c.rope_beta_fast = 0.5;
            }).find("need beta_fast > beta_slow > 0"),
            std::string::npos);
  EXPECT_NE(apply([](train::TrainConfig& c) {
              c.max_position_embeddings = 0;
            }).find("[train] model.max_position_embeddings: must be positive, got 0"),
            std::string::npos);
}

TEST(ModelOverrides, SettingsParseFromOverridesAndFiles) {
  train::TrainConfig c;
  train::apply_train_config_override("model.rope_scaling.type=yarn", c);
  train::apply_train_config_override("model.rope_scaling.factor=4", c);
  train::apply_train_config_override("model.rope_scaling.original_max_position_embeddings=128", c);
  train::apply_train_config_override("model.init_from=/some/run", c);
  EXPECT_EQ(c.rope_type, "yarn");
  EXPECT_EQ(c.rope_factor, 4.0);
  EXPECT_EQ(c.rope_original_max, 128);
  EXPECT_EQ(c.init_from, "/some/run");
  // The recorded train_config.json reads back to the same settings.
  const fs::path file =
      fs::temp_directory_path() / ("dseek-overrides-" + std::to_string(::getpid()) + ".json");
  std::ofstream(file) << train::train_config_to_json(c);
  train::TrainConfig back;
  train::load_train_config_file(file.string(), back);
  fs::remove(file);
  EXPECT_EQ(back.rope_type, "yarn");
  EXPECT_EQ(back.rope_factor, 4.0);
  EXPECT_EQ(back.rope_original_max, 128);
  EXPECT_EQ(back.init_from, "/some/run");
}

TEST_F(TrainInitFrom, RopeOverridesReachTheRunConfigTheExportAndTheModel) {
  train::TrainConfig c = config(root_ / "yarn", 1, 1);
  c.rope_type = "yarn";
  c.rope_factor = 4;
  c.rope_original_max = 32;
  const train::TrainSummary yarn = train::run_training(c, false);
  const ModelConfig recorded = load_model_config((root_ / "yarn" / "config.json").string());
  EXPECT_EQ(recorded.rope_scaling.type, "yarn");
  EXPECT_EQ(recorded.rope_scaling.factor, 4.0);
  EXPECT_EQ(recorded.rope_scaling.original_max_position_embeddings, 32);
  EXPECT_EQ(recorded.max_position_embeddings, 128);
  train::ExportOptions eo;
  eo.run_dir = (root_ / "yarn").string();
  eo.out_dir = (root_ / "yarn-export").string();
  train::export_run(eo);
  const json exported = json::parse(slurp(root_ / "yarn-export" / "config.json"));
  EXPECT_EQ(exported["rope_scaling"]["type"], "yarn");
  EXPECT_EQ(exported["rope_scaling"]["factor"].get<double>(), 4.0);
  EXPECT_EQ(exported["rope_scaling"]["original_max_position_embeddings"], 32);
  EXPECT_EQ(exported["max_position_embeddings"], 128);
  // The same seed without the override draws the same weights and batch; only the rope differs.
  const train::TrainSummary plain = train::run_training(config(root_ / "plain", 1, 1), false);
  EXPECT_GT(std::abs(yarn.last_loss - plain.last_loss), 1e-6);
}

TEST_F(TrainInitFrom, StartsFromTheSourceWeightsWhateverTheSourceKind) {
  ASSERT_GT(source_->last_val_loss, 0);
  const std::string ckpt = train::find_latest_checkpoint((root_ / "source").string());
  ASSERT_FALSE(ckpt.empty());
  train::ExportOptions eo;
  eo.run_dir = (root_ / "source").string();
  eo.out_dir = (root_ / "source-export").string();
  train::export_run(eo);
  int k = 0;
  for (const std::string& from :
       {(root_ / "source").string(), ckpt, (root_ / "source-export").string()}) {
    SCOPED_TRACE(from);
    const fs::path out = root_ / ("from-" + std::to_string(k++));
    const train::TrainSummary s = train::run_training(frozen(out, from), false);
    EXPECT_NEAR(s.last_val_loss, source_->last_val_loss, 1e-5);
    // The source's shape comes with it, and the run starts at step 0 with its own optimizer.
    EXPECT_EQ(load_model_config((out / "config.json").string()),
              load_model_config((root_ / "source" / "config.json").string()));
    EXPECT_EQ(s.first_step, 0);
  }
  // A fresh initialisation of the same shape is a different model.
  const train::TrainSummary fresh = train::run_training(frozen(root_ / "fresh", ""), false);
  EXPECT_GT(std::abs(fresh.last_val_loss - source_->last_val_loss), 1e-2);
}

TEST_F(TrainInitFrom, ContinuedTrainingWithYarnLoadsTheSameTensors) {
  train::TrainConfig c = frozen(root_ / "extended", (root_ / "source").string());
  c.rope_type = "yarn";
  c.rope_factor = 4;
  c.rope_original_max = 32;
  c.seq_len = 64;  // the extended stage trains on longer sequences
  const train::TrainSummary s = train::run_training(c, false);
  EXPECT_GT(s.last_val_loss, 0);
  EXPECT_EQ(load_model_config((root_ / "extended" / "config.json").string()).rope_scaling.type,
            "yarn");
}

TEST_F(TrainInitFrom, BadSourcesAreClearErrors) {
  const std::string missing = (root_ / "no-such-run").string();
  EXPECT_NE(error_of([&] {
              train::run_training(frozen(root_ / "bad1", missing), false);
            }).find("[init_from] " + missing + ": not a directory"),
            std::string::npos);
  fs::create_directories(root_ / "empty");
  EXPECT_NE(error_of([&] {
              train::run_training(frozen(root_ / "bad2", (root_ / "empty").string()), false);
            }).find("neither a run directory"),
            std::string::npos);
  // A model of another shape: the first tensor that differs is named.
  const std::string dense_run = (root_ / "dense").string();
  train::TrainConfig d = config(dense_run, 1, 1);
  d.preset = "tiny-dense";
  train::run_training(d, false);
  train::TrainConfig wrong = frozen(root_ / "bad3", (root_ / "source").string());
  wrong.model_config = (fs::path(dense_run) / "config.json").string();
  EXPECT_NE(error_of([&] { train::run_training(wrong, false); }).find("[init_from] "),
            std::string::npos);
}
