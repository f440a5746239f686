// zero_grad(defer_overwritten = true): the weight gradients a GEMM overwrites after zero_grad
// (Param::grad_zero: the linears' wgrads and the routed experts' grouped wgrads) are not zeroed by
// zero_grad once that writer has overwritten them; they are stale until it does, and every other
// gradient (norms, embeddings: writers that add) is zeroed as before. Run on the CPU, the MoE
// layer through the GPU's path (LayerContext::moe_ops_on_cpu), over gradients poisoned with NaN:
// a stale gradient read or added to anywhere shows up as NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "dist_params.h"
#include "model/rope.h"
#include "train/layers.h"
#include "train/optimizer.h"
#include "train/param.h"
#include "train/train_config.h"
#include "train/train_model.h"

namespace dseek::train {
namespace {

using testing::random_rows;

const std::string kPrefix = "model.layers.1.mlp";

bool is_expert(const Param& p) {
  return p.name.rfind(kPrefix + ".experts.", 0) == 0;
}
// The MoE layer's gradients are all GEMMs' (router, shared experts, routed experts).
bool gemm_written(const Param& p) {
  return p.name.rfind(kPrefix + ".", 0) == 0 && p.name.size() > 7 &&
         p.name.compare(p.name.size() - 7, 7, ".weight") == 0;
}

void poison(ParamSet& params) {
  for (Param& p : params.all())
    if (p.grad.defined())
      for (int64_t i = 0; i < p.grad.numel(); ++i)
        p.grad.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
}

std::map<std::string, std::vector<float>> grads_of(const ParamSet& params) {
  std::map<std::string, std::vector<float>> g;
  for (const Param& p : params.all())
    if (p.grad.defined() && p.name.rfind(kPrefix + ".", 0) == 0) g[p.name] = p.grad.to_vector();
  return g;
}

struct MoeLayer {
  ModelConfig cfg = preset_model_config("tiny", 300);
  RopeParams rope = rope_params(cfg);
  ParamSet params;
  Tensor x, dy;
  MoeLayer() {
    TrainModel::init_params(cfg, 21, 0.1, params);
    x = random_rows(40, cfg.hidden_size, 3);
    dy = random_rows(40, cfg.hidden_size, 4);
  }
  // One forward and backward of the MoE layer on the ops path (the grouped expert GEMMs).
  void step() {
    LayerContext ctx{cfg, rope, params};
    ctx.moe_ops_on_cpu = true;
    MoeCache cache;
    BalanceOptions balance;
    moe_forward(ctx, kPrefix, x, {x.size(0)}, balance, cache);
    moe_backward(ctx, kPrefix, cache, dy, 1.0f);
  }
};

TEST(TrainZeroGrad, DeferredZerosGiveTheSameGradients) {
  MoeLayer m;
  ASSERT_TRUE(m.cfg.is_moe_layer(1));
  m.params.zero_grad();
  m.step();
  const auto want = grads_of(m.params);
  // The wgrads overwrote the weights' zeros (the experts' grouped ones among them); nothing else
  // is marked.
  int64_t experts = 0, gemms = 0;
  for (const Param& p : m.params.all()) {
    if (!p.grad.defined()) continue;
    EXPECT_EQ(p.grad_overwritten, gemm_written(p)) << p.name;
    experts += is_expert(p);
    gemms += gemm_written(p);
  }
  EXPECT_EQ(experts, 3 * m.cfg.n_routed_experts);
  EXPECT_GT(gemms, experts);  // the router and the shared experts too

  // Deferred: the overwritten gradients' memory keeps the poison (stale), the rest is zeroed.
  poison(m.params);
  m.params.zero_grad(/*defer_overwritten=*/true);
  for (const Param& p : m.params.all()) {
    if (!p.grad.defined()) continue;
    EXPECT_EQ(p.grad_stale, gemm_written(p)) << p.name;
    EXPECT_TRUE(p.grad_zero) << p.name;
    if (!gemm_written(p)) {
      EXPECT_EQ(p.grad.to_vector(), std::vector<float>(size_t(p.grad.numel()))) << p.name;
    }
  }
  EXPECT_TRUE(std::isnan(m.params.at(kPrefix + ".experts.0.up_proj.weight").grad.data<float>()[0]));
  m.step();
  const auto got = grads_of(m.params);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, g] : want) {
    const std::vector<float>& h = got.at(name);
    ASSERT_EQ(h.size(), g.size()) << name;
    EXPECT_EQ(std::memcmp(h.data(), g.data(), g.size() * sizeof(float)), 0) << name;
  }
  for (const Param& p : m.params.all()) EXPECT_FALSE(p.grad_stale) << p.name;

  // Two micro-batches after a deferred zero_grad: the first overwrites, the second adds.
  poison(m.params);
  m.params.zero_grad(true);
  m.step();
  m.step();
  for (const auto& [name, g] : want) {
    const std::vector<float> h = m.params.at(name).grad.to_vector();
    for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(h[i], g[i] + g[i]) << name << " [" << i << "]";
  }

  // settle_grads writes what was deferred; zero_grad() without deferring writes everything.
  poison(m.params);
  m.params.zero_grad(true);
  m.params.settle_grads();
  for (const Param& p : m.params.all()) {
    if (!p.grad.defined()) continue;
    EXPECT_FALSE(p.grad_stale) << p.name;
    EXPECT_EQ(p.grad.to_vector(), std::vector<float>(size_t(p.grad.numel()))) << p.name;
  }
  poison(m.params);
  m.params.zero_grad();
  for (const Param& p : m.params.all()) {
    if (p.grad.defined()) {
      EXPECT_EQ(p.grad.to_vector(), std::vector<float>(size_t(p.grad.numel()))) << p.name;
    }
  }
}

// A stale expert gradient whose writer then adds (not every expert's grad was zero: a partial
// earlier contribution) is zeroed before the addition (settle_grad), never added to.
TEST(TrainZeroGrad, AddingToAStaleGradientZerosItFirst) {
  MoeLayer m;
  m.params.zero_grad();
  m.step();
  const auto want = grads_of(m.params);
  poison(m.params);
  m.params.zero_grad(true);
  // One expert's gradient no longer holds zero_grad's zeros: its projection's wgrad must add,
  // and the other experts' stale memory must be zeros first.
  Param& first = m.params.at(kPrefix + ".experts.0.gate_proj.weight");
  first.grad_zero = false;
  first.grad_stale = false;
  for (int64_t i = 0; i < first.grad.numel(); ++i) first.grad.data<float>()[i] = 0.0f;
  m.step();
  for (const auto& [name, g] : want) {
    const std::vector<float> h = m.params.at(name).grad.to_vector();
    EXPECT_EQ(std::memcmp(h.data(), g.data(), g.size() * sizeof(float)), 0) << name;
  }
}

// The whole model over poisoned gradients, with MTP and with tied embeddings (the embedding's
// gradient then gets the head's wgrad, which may overwrite, and the embeddings' additions): after
// zero_grad(true) one step, and two micro-batches, give zero_grad()'s gradients bit for bit.
TEST(TrainZeroGrad, DeferredZerosTrainTheWholeModelAlike) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied embeddings" : "separate head");
    ModelConfig cfg = preset_model_config("tiny", 300);
    cfg.tie_word_embeddings = tied;
    cfg.num_nextn_predict_layers = 1;
    ParamSet params;
    TrainModel::init_params(cfg, 9, 0.05, params);
    TrainModel model(cfg, params);
    std::vector<int32_t> ids(41);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 53 + 7) % 300);
    const std::vector<int32_t> in(ids.begin(), ids.end() - 1), tg(ids.begin() + 1, ids.end());
    LossOptions o;
    o.mtp_lambda = 0.3;
    auto grads = [&] {
      std::map<std::string, std::vector<float>> g;
      for (const Param& p : params.all())
        if (p.grad.defined()) g[p.name] = p.grad.to_vector();
      return g;
    };
    params.zero_grad();
    model.forward_backward(in, tg, o, 1.0f);
    const auto want = grads();
    int64_t overwritten = 0;
    for (const Param& p : params.all()) overwritten += p.grad_overwritten;
    EXPECT_GT(overwritten, 0);
    for (int round = 0; round < 2; ++round) {  // the second: every writer's flag already set
      poison(params);
      params.zero_grad(true);
      model.forward_backward(in, tg, o, 1.0f);
      for (const auto& [name, g] : grads())
        EXPECT_EQ(std::memcmp(g.data(), want.at(name).data(), g.size() * sizeof(float)), 0) << name;
    }
    params.zero_grad();
    model.forward_backward(in, tg, o, 1.0f);
    model.forward_backward(in, tg, o, 1.0f);
    const auto want2 = grads();
    poison(params);
    params.zero_grad(true);
    model.forward_backward(in, tg, o, 1.0f);
    model.forward_backward(in, tg, o, 1.0f);
    for (const auto& [name, g] : grads())
      EXPECT_EQ(std::memcmp(g.data(), want2.at(name).data(), g.size() * sizeof(float)), 0) << name;
  }
}

// forward_backward leaves no stale gradient: a marked gradient whose writer did not overwrite it
// in the step is zeroed by the step's end (ParamSet::settle_grads).
TEST(TrainZeroGrad, ForwardBackwardSettlesWhatWasNotOverwritten) {
  const ModelConfig cfg = preset_model_config("tiny", 300);
  ParamSet params;
  TrainModel::init_params(cfg, 5, 0.02, params);
  TrainModel model(cfg, params);
  // The CPU's host MoE path adds into the gradients; here a stale one would be NaN after the step
  // if the host path added to it, and its memory must not survive the step as garbage. Mark an
  // MTP-only parameter (untouched when MTP is off) to see the settling alone.
  Param* untouched = nullptr;
  for (Param& p : params.all())
    if (p.grad.defined() && p.name.find("eh_proj") != std::string::npos) untouched = &p;
  ASSERT_NE(untouched, nullptr);
  untouched->grad_overwritten = true;
  poison(params);
  params.zero_grad(true);
  EXPECT_TRUE(untouched->grad_stale);
  std::vector<int32_t> ids(33);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 37) % 300);
  const std::vector<int32_t> in(ids.begin(), ids.end() - 1), tg(ids.begin() + 1, ids.end());
  LossOptions o;
  o.mtp_lambda = 0.0;
  model.forward_backward(in, tg, o, 1.0f);
  EXPECT_FALSE(untouched->grad_stale);
  EXPECT_EQ(untouched->grad.to_vector(), std::vector<float>(size_t(untouched->grad.numel())));
}

// train::BackwardGradNorm on the CPU (the trainer's one-process path): the sums of squares taken
// layer by layer through TrainModel's on_block_backward give grad_norm's bits after the backward,
// with every gradient zeroed and with the experts' zeros deferred (stale gradients are zeroed
// before they are read). The GPU twin: BackendTrain.BackwardGradNormIsGradNorm.
TEST(TrainZeroGrad, BackwardGradNormIsGradNorm) {
  const ModelConfig cfg = preset_model_config("tiny", 300);
  ParamSet params;
  TrainModel::init_params(cfg, 21, 0.1, params);
  TrainModel model(cfg, params);
  std::vector<int32_t> inputs, targets;
  for (int32_t i = 0; i < 64; ++i) {
    inputs.push_back(i * 7 % 300);
    targets.push_back(i * 11 % 300);
  }
  for (bool defer : {false, true}) {
    params.zero_grad(defer);
    BackwardGradNorm parts(params, cfg.num_hidden_layers);
    LossOptions o;
    int64_t calls = 0;
    o.on_block_backward = [&](int64_t layer) {
      ++calls;
      parts.on_block_backward(layer);
    };
    model.forward_backward(inputs, targets, o, 1.0f, 32);
    // defer: clip() instead of norm() (the trainer's call): host values on the CPU.
    const double want = grad_norm(params);
    const GradClip clip = defer ? parts.clip(want / 2) : GradClip(parts.norm(), 1.0f);
    const double got = clip.norm();
    EXPECT_GE(calls, cfg.num_hidden_layers);
    EXPECT_GT(want, 0.0);
    EXPECT_EQ(std::memcmp(&got, &want, sizeof(double)), 0) << got << " vs " << want;
    EXPECT_EQ(clip.factor_on_device(), nullptr);
    if (defer) {
      EXPECT_EQ(clip.factor(), clip_factor(want, want / 2));
    }
  }
}

}  // namespace
}  // namespace dseek::train
