// Pipeline parallelism's pieces in one process (train/pipeline_parallel.h): the balanced stage
// split, the micro-batch split, the stages' tensors (together exactly the model's, with the
// whole model's initial values), and the model's forward/backward run piece by piece as the
// stages run it — embedding, blocks split at a stage boundary, head — equal to forward_backward
// bit for bit. The runs over real MPI ranks are in test_train_dist.cpp (DistTrain.Pipeline*).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "core/error.h"
#include "train/pipeline_parallel.h"
#include "train/train_config.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;

namespace {

ModelConfig tiny_config() {
  ModelConfig c = preset_model_config("tiny", 300);
  return c;
}

}  // namespace

TEST(Pipeline, LayoutSplitsLayersEvenlyInOrder) {
  ModelConfig c = tiny_config();
  c.num_hidden_layers = 7;
  const std::vector<std::vector<int64_t>> expect = {{0, 3, 5, 7}, {0, 2, 4, 6, 7}};
  for (const auto& bounds : expect) {
    const int P = int(bounds.size()) - 1;
    for (int s = 0; s < P; ++s) {
      const PipelineLayout l = make_pipeline_layout(c, P, s);
      EXPECT_EQ(l.first_layer, bounds[size_t(s)]) << P << " stages, stage " << s;
      EXPECT_EQ(l.last_layer, bounds[size_t(s) + 1]) << P << " stages, stage " << s;
      EXPECT_EQ(l.first(), s == 0);
      EXPECT_EQ(l.last(), s == P - 1);
      // The tiny preset has an MTP module: the last stage needs the embedding too.
      EXPECT_TRUE(l.shared_embedding);
      EXPECT_EQ(l.held().embedding, s == 0 || s == P - 1);
      EXPECT_EQ(l.owned().embedding, s == 0);
      EXPECT_EQ(l.owned().head, s == P - 1);
    }
  }
  EXPECT_FALSE(make_pipeline_layout(c, 1, 0).shared_embedding);
  c.num_nextn_predict_layers = 0;
  EXPECT_FALSE(make_pipeline_layout(c, 2, 1).shared_embedding);
  c.tie_word_embeddings = true;
  EXPECT_TRUE(make_pipeline_layout(c, 2, 1).shared_embedding);
  try {
    make_pipeline_layout(c, 8, 0);
    ADD_FAILURE() << "8 stages of 7 layers accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the model has 7 layers, so at most 7 stages"),
              std::string::npos)
        << e.what();
  }
}

TEST(Pipeline, MicroBatchSplitKeepsSequencesWhole) {
  MicroBatch b;
  for (int32_t i = 0; i < 12; ++i) {
    b.inputs.push_back(100 + i);
    b.targets.push_back(200 + i);
  }
  b.segments = {2, 4, 3, 3};  // cuts at 6 fall between sequences
  const std::vector<MicroBatch> parts = split_micro_batch(b, 2);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].segments, (Segments{2, 4}));
  EXPECT_EQ(parts[1].segments, (Segments{3, 3}));
  EXPECT_EQ(parts[1].inputs, (std::vector<int32_t>{106, 107, 108, 109, 110, 111}));
  EXPECT_EQ(parts[0].targets, (std::vector<int32_t>{200, 201, 202, 203, 204, 205}));
  EXPECT_EQ(split_micro_batch(b, 1)[0].segments, b.segments);
  EXPECT_THROW(split_micro_batch(b, 3), Error);  // a cut at 4 inside the 4-token sequence
  EXPECT_THROW(split_micro_batch(b, 5), Error);  // 12 tokens in 5 parts
}

// The stages' tensors are the model's, each exactly once (the last stage's embedding copy
// besides), with the values the whole model's init_params gives them.
TEST(Pipeline, StageParamsPartitionTheModel) {
  const ModelConfig c = tiny_config();
  ParamSet whole;
  TrainModel::init_params(c, 11, 0.02, whole);
  for (int P : {2, 4}) {
    std::multiset<std::string> owned;
    for (int s = 0; s < P; ++s) {
      const PipelineLayout layout = make_pipeline_layout(c, P, s);
      ParamSet stage;
      PipelineStage::init_stage_params(c, layout, 11, 0.02, stage);
      TrainModel model(c, stage, layout.held());  // checks it holds its part
      for (const Param& p : stage.all()) {
        const Param& w = whole.at(p.name);
        ASSERT_EQ(p.value.shape(), w.value.shape()) << p.name;
        EXPECT_EQ(std::memcmp(p.value.data<float>(), w.value.data<float>(), p.value.nbytes()), 0)
            << p.name;
        const bool copy = layout.last() && p.name == "model.embed_tokens.weight";
        EXPECT_EQ(p.trainable, w.trainable && !copy) << p.name;
        EXPECT_TRUE(p.grad.defined() || !w.trainable) << p.name;
        if (!copy) owned.insert(p.name);
      }
    }
    ASSERT_EQ(owned.size(), whole.size()) << P << " stages";
    for (const Param& p : whole.all()) EXPECT_EQ(owned.count(p.name), 1u) << p.name;
  }
}

// The pieces a stage calls, run in the order of one process (blocks split between "stages" at
// layer 1 and 3), give forward_backward's losses and gradients bit for bit: the refactoring
// into pieces changed no arithmetic.
TEST(Pipeline, PiecesEqualForwardBackward) {
  const ModelConfig c = tiny_config();
  ParamSet a, b;
  TrainModel::init_params(c, 3, 0.05, a);
  TrainModel::init_params(c, 3, 0.05, b);
  TrainModel ma(c, a), mb(c, b);
  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> token(0, int32_t(c.vocab_size) - 1);
  std::vector<int32_t> inputs(24), targets(24);
  for (auto& t : inputs) t = token(rng);
  for (auto& t : targets) t = token(rng);
  const Segments segments = {9, 15};
  LossOptions options;
  options.mtp_lambda = 0.3;
  options.balance.aux_loss = "sequence";
  options.balance.alpha = 0.01;
  const SequenceLosses ref = ma.forward_backward(inputs, targets, options, 0.5f, segments);

  const int64_t L = c.num_hidden_layers;
  mb.check_batch(inputs, targets, segments);
  std::vector<BlockCache> s0, s1, s2;
  Tensor x = mb.embed_forward(inputs);
  x = mb.blocks_forward(0, 1, x, segments, options, s0);
  x = mb.blocks_forward(1, 3, x, segments, options, s1);
  x = mb.blocks_forward(3, L, x, segments, options, s2);
  HeadCache head;
  SequenceLosses got = mb.head_forward(x, inputs, targets, options, segments, head);
  for (const auto* blocks : {&s0, &s1, &s2}) TrainModel::add_block_stats(*blocks, got);
  mb.add_mtp_stats(head, got);
  got.total += got.aux;
  Tensor dx = mb.head_backward(head, targets, options, 0.5f);
  dx = mb.blocks_backward(3, L, s2, dx, options, 0.5f);
  dx = mb.blocks_backward(1, 3, s1, dx, options, 0.5f);
  dx = mb.blocks_backward(0, 1, s0, dx, options, 0.5f);
  mb.embed_backward(inputs, dx);

  EXPECT_EQ(got.total, ref.total);
  EXPECT_EQ(got.main_ce, ref.main_ce);
  EXPECT_EQ(got.aux, ref.aux);
  EXPECT_GT(ref.aux, 0.0);
  ASSERT_EQ(ref.mtp_ce.size(), 1u);
  EXPECT_EQ(got.mtp_ce, ref.mtp_ce);
  EXPECT_EQ(got.expert_load, ref.expert_load);
  for (size_t i = 0; i < a.size(); ++i) {
    const Param& p = a.all()[i];
    if (!p.trainable) continue;
    const Param& q = b.all()[i];
    double norm = 0;
    for (int64_t k = 0; k < p.grad.numel(); ++k) norm += std::fabs(p.grad.data<float>()[k]);
    // (A routed expert may have been chosen by no token.)
    if (p.name.find(".experts.") == std::string::npos) {
      EXPECT_GT(norm, 0.0) << p.name << ": no gradient reached it";
    }
    EXPECT_EQ(std::memcmp(p.grad.data<float>(), q.grad.data<float>(), p.grad.nbytes()), 0)
        << p.name;
  }
}
