// AdamW against a scalar double re-implementation of torch.optim.AdamW over several steps (decay on
// and off, a buffer left alone, a parameter large enough for the threaded path), gradient clipping
// against a hand-summed norm, optimizer state round trip, the decay naming rule, and the CPU side
// of the fused op and of the device plumbing (tensor checks, a replaced parameter, copy_values,
// ParamSet::to). The CUDA twin is tested in tests/backend/test_backend_optim.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"
#include "ops/adamw.h"
#include "ops/fp8.h"
#include "ops/moe.h"
#include "ops/split_master.h"
#include "split_master_cases.h"
#include "train/optimizer.h"

using namespace dseek;
using namespace dseek::train;

namespace {

// torch.optim.AdamW, one element, in double.
struct ScalarAdamW {
  double p, m = 0.0, v = 0.0;
  void step(double g, double lr, const AdamWConfig& c, bool decay, int64_t t) {
    if (decay) p *= 1.0 - lr * c.weight_decay;
    m = c.beta1 * m + (1.0 - c.beta1) * g;
    v = c.beta2 * v + (1.0 - c.beta2) * g * g;
    const double bc1 = 1.0 - std::pow(c.beta1, double(t));
    const double bc2 = 1.0 - std::pow(c.beta2, double(t));
    p -= lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + c.eps);
  }
};

std::vector<float> random_values(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

void set_grad(Param& p, const std::vector<float>& g) {
  ASSERT_EQ(int64_t(g.size()), p.grad.numel());
  std::copy(g.begin(), g.end(), p.grad.data<float>());
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

ParamSet make_params(std::mt19937& rng) {
  ParamSet ps;
  ps.add("model.layers.0.mlp.up_proj.weight", Tensor::from_vector(random_values(12, rng), {3, 4}),
         true, true);
  ps.add("model.layers.0.input_layernorm.weight", Tensor::from_vector(random_values(4, rng), {4}),
         true, false);
  ps.add("model.layers.0.mlp.gate.e_score_correction_bias",
         Tensor::from_vector(random_values(4, rng), {4}), false, false);
  // Over the threading threshold (1 << 15 elements).
  ps.add("model.embed_tokens.weight", Tensor::from_vector(random_values(40000, rng), {400, 100}),
         true, true);
  return ps;
}

}  // namespace

TEST(Optimizer, AdamWMatchesScalarTorchFormula) {
  std::mt19937 rng(7);
  ParamSet ps = make_params(rng);
  const AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  AdamW opt(ps, config);

  std::map<std::string, std::vector<ScalarAdamW>> ref;
  for (const Param& p : ps.all())
    for (float x : p.value.to_vector()) ref[p.name].push_back(ScalarAdamW{x});
  const std::vector<float> buffer_before =
      ps.value("model.layers.0.mlp.gate.e_score_correction_bias").to_vector();

  const double lrs[] = {1e-2, 3e-2, 2e-2, 5e-3, 1e-2};
  for (int64_t t = 1; t <= 5; ++t) {
    for (Param& p : ps.all()) {
      if (!p.trainable) continue;
      const std::vector<float> g = random_values(size_t(p.value.numel()), rng, 0.5f);
      set_grad(p, g);
      for (size_t k = 0; k < g.size(); ++k)
        ref[p.name][k].step(g[k], lrs[t - 1], config, p.decay, t);
    }
    opt.step(lrs[t - 1]);
    EXPECT_EQ(opt.step_count(), t);
  }
  for (const Param& p : ps.all()) {
    if (!p.trainable) continue;
    const std::vector<float> got = p.value.to_vector();
    for (size_t k = 0; k < got.size(); ++k)
      ASSERT_NEAR(got[k], ref[p.name][k].p, 2e-6 * std::max(1.0, std::abs(ref[p.name][k].p)))
          << p.name << " [" << k << "]";
  }
  EXPECT_EQ(ps.value("model.layers.0.mlp.gate.e_score_correction_bias").to_vector(), buffer_before);
}

// optim.moment_dtype bf16: the moments are bf16 tensors, each step reads them as f32, updates
// them and the value in f32 (the value from the unrounded moments) and stores them rounded to
// nearest even — checked bit for bit against that recipe written out here, and within the bf16
// moments' error (each moment 2^-9 relative per step) of torch's f32 AdamW.
TEST(Optimizer, AdamWBf16MomentsRoundEachStep) {
  std::mt19937 rng(17);
  ParamSet ps = make_params(rng);
  AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  config.moment_dtype = DType::BF16;
  AdamW opt(ps, config);
  struct Ref {
    std::vector<float> p;
    std::vector<uint16_t> m, v;
    std::vector<ScalarAdamW> f32;
  };
  std::map<std::string, Ref> ref;
  for (const Param& p : ps.all()) {
    if (!p.trainable) continue;
    Ref& r = ref[p.name];
    r.p = p.value.to_vector();
    r.m.assign(r.p.size(), 0);
    r.v.assign(r.p.size(), 0);
    for (float x : r.p) r.f32.push_back(ScalarAdamW{x});
  }
  const double lrs[] = {1e-2, 3e-2, 2e-2, 5e-3, 1e-2};
  for (int64_t t = 1; t <= 5; ++t) {
    const ops::AdamWStep s = adamw_step_scalars(config, lrs[t - 1], t);
    for (Param& p : ps.all()) {
      if (!p.trainable) continue;
      const std::vector<float> g = random_values(size_t(p.value.numel()), rng, 0.5f);
      set_grad(p, g);
      Ref& r = ref[p.name];
      const float decay = s.decay_factor(p.decay);
      for (size_t k = 0; k < g.size(); ++k) {
        const float gk = g[k] * 1.0f;
        const float m = s.beta1 * bf16_to_f32(r.m[k]) + s.one_minus_beta1 * gk;
        const float v = s.beta2 * bf16_to_f32(r.v[k]) + s.one_minus_beta2 * gk * gk;
        const float denom = std::sqrt(v) / s.bias_correction2_sqrt + s.eps;
        r.p[k] = r.p[k] * decay - s.step_size * m / denom;
        r.m[k] = f32_to_bf16(m);
        r.v[k] = f32_to_bf16(v);
        r.f32[k].step(g[k], lrs[t - 1], config, p.decay, t);
      }
    }
    opt.step(lrs[t - 1]);
  }
  for (const auto& [name, t] : opt.state_tensors()) {  // f32 copies of bf16 values
    EXPECT_EQ(t.dtype(), DType::F32) << name;
    EXPECT_EQ(t.to_vector(), t.to(DType::BF16).to_vector()) << name;
  }
  for (const Param& p : ps.all()) {
    if (!p.trainable) continue;
    const Ref& r = ref.at(p.name);
    const std::vector<float> got = p.value.to_vector();
    for (size_t k = 0; k < got.size(); ++k) {
      ASSERT_EQ(f32_to_bits(got[k]), f32_to_bits(r.p[k])) << p.name << " [" << k << "]";
      // Five steps of at most lr each, every one off by the moments' rounding (≤ ~2^-8).
      ASSERT_NEAR(got[k], r.f32[k].p, 5 * 3e-2 * 0.01) << p.name << " [" << k << "]";
    }
  }
}

// Moments saved in one dtype load into an optimizer of the other: bf16 → f32 exactly, f32 → bf16
// rounded to nearest even.
// bf16 gradients: the step reads them as their f32 values (the same masters and moments as f32
// gradients holding those values), Σ g² and the clip's scaling take them too, and
// ParamSet::bf16_expert_grads gives them to the routed experts' matrices only.
TEST(Optimizer, Bf16GradientsStepLikeTheirF32Values) {
  std::mt19937 rng(23);
  ParamSet a = make_params(rng);
  std::mt19937 same(23);
  ParamSet b = make_params(same);
  for (Param& p : b.all())
    if (p.trainable) p.grad = Tensor::zeros(p.grad.shape(), DType::BF16);
  AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  AdamW opt_a(a, config), opt_b(b, config);
  for (int t = 0; t < 3; ++t) {
    std::vector<Tensor> ga, gb;
    for (Param& p : a.all()) {
      if (!p.trainable) continue;
      const Tensor g =
          Tensor::from_vector(random_values(size_t(p.value.numel()), rng, 0.5f), p.value.shape())
              .to(DType::BF16);
      copy_values(p.grad, g, p.name);
      copy_values(b.at(p.name).grad, g, p.name);
      ga.push_back(p.grad);
      gb.push_back(b.at(p.name).grad);
    }
    EXPECT_EQ(ops::sum_of_squares(ga), ops::sum_of_squares(gb));
    ops::scale_inplace(gb, 0.7f);  // rounded back to bf16
    ops::scale_inplace(ga, 0.7f);
    for (Tensor& g : ga) g.copy_from(g.to(DType::BF16).to(DType::F32));
    opt_a.step(1e-2);
    opt_b.step(1e-2);
    for (const Param& p : a.all())
      EXPECT_EQ(p.value.to_vector(), b.at(p.name).value.to_vector()) << p.name << " step " << t;
  }

  ParamSet experts;
  experts.add("model.layers.1.mlp.experts.0.gate_proj.weight", Tensor::zeros({4, 8}), true, true);
  experts.add("model.layers.1.mlp.experts.3.down_proj.weight", Tensor::zeros({8, 4}), true, true);
  experts.add("model.layers.1.mlp.shared_experts.up_proj.weight", Tensor::zeros({4, 8}), true,
              true);
  experts.add("model.layers.1.mlp.gate.weight", Tensor::zeros({2, 8}), true, true);
  EXPECT_EQ(experts.bf16_expert_grads(), 2);
  EXPECT_EQ(experts.at("model.layers.1.mlp.experts.0.gate_proj.weight").grad.dtype(), DType::BF16);
  EXPECT_EQ(experts.at("model.layers.1.mlp.experts.3.down_proj.weight").grad.dtype(), DType::BF16);
  EXPECT_EQ(experts.at("model.layers.1.mlp.shared_experts.up_proj.weight").grad.dtype(),
            DType::F32);
  EXPECT_EQ(experts.at("model.layers.1.mlp.gate.weight").grad.dtype(), DType::F32);
  EXPECT_EQ(experts.bf16_expert_grads(), 0);  // already bf16

  // bf16_matrix_grads: also every other matrix with a bf16 compute copy (the shared expert, the
  // head, an attention projection), not the router, the norm or the embeddings (untied: no copy;
  // tied: its scatter-add needs f32).
  ParamSet all;
  all.add("model.embed_tokens.weight", Tensor::zeros({16, 8}), true, true);
  all.add("model.layers.1.self_attn.q_proj.weight", Tensor::zeros({8, 8}), true, true);
  all.add("model.layers.1.input_layernorm.weight", Tensor::zeros({8}), true, false);
  all.add("model.layers.1.mlp.experts.0.gate_proj.weight", Tensor::zeros({4, 8}), true, true);
  all.add("model.layers.1.mlp.shared_experts.up_proj.weight", Tensor::zeros({4, 8}), true, true);
  all.add("model.layers.1.mlp.gate.weight", Tensor::zeros({2, 8}), true, true);
  all.add("lm_head.weight", Tensor::zeros({16, 8}), true, true);
  all.set_compute_dtype(DType::BF16);  // copies for all matrices but the router
  ASSERT_TRUE(all.at("model.embed_tokens.weight").compute.defined());  // as if tied
  EXPECT_EQ(all.bf16_matrix_grads(), 4);
  for (const char* name :
       {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight", "lm_head.weight"})
    EXPECT_EQ(all.at(name).grad.dtype(), DType::BF16) << name;
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.input_layernorm.weight",
                           "model.layers.1.mlp.gate.weight"})
    EXPECT_EQ(all.at(name).grad.dtype(), DType::F32) << name;
  EXPECT_EQ(all.bf16_matrix_grads(), 0);
}

TEST(Optimizer, StateLoadsAcrossMomentDtypes) {
  std::mt19937 rng(19);
  ParamSet a = make_params(rng);
  AdamWConfig bf16_config;
  bf16_config.moment_dtype = DType::BF16;
  AdamW opt_a(a, bf16_config);
  for (Param& p : a.all())
    if (p.trainable) set_grad(p, random_values(size_t(p.value.numel()), rng));
  opt_a.step(1e-2);
  std::map<std::string, Tensor> saved;
  for (const auto& [name, t] : opt_a.state_tensors()) saved[name] = t.clone();

  ParamSet b;
  for (const Param& p : a.all()) b.add(p.name, p.value.clone(), p.trainable, p.decay);
  AdamW opt_b(b, AdamWConfig{});  // f32 moments
  opt_b.load_state(saved, 1);
  for (const auto& [name, t] : opt_b.state_tensors())
    EXPECT_EQ(t.to_vector(), saved.at(name).to_vector()) << name;
  ParamSet c;
  for (const Param& p : a.all()) c.add(p.name, p.value.clone(), p.trainable, p.decay);
  AdamW opt_c(c, bf16_config);
  std::map<std::string, Tensor> f32_state;
  for (const auto& [name, t] : opt_b.state_tensors()) {
    std::vector<float> v = t.to_vector();
    for (float& x : v) x *= 1.0009765625f;  // off the bf16 grid: the load must round
    f32_state[name] = Tensor::from_vector(v, t.shape());
  }
  opt_c.load_state(f32_state, 1);
  for (const auto& [name, t] : opt_c.state_tensors())
    EXPECT_EQ(t.to_vector(), f32_state.at(name).to(DType::BF16).to_vector()) << name;
}

TEST(Optimizer, AdamWDecayOnlyWhereFlagged) {
  // Zero gradient: the Adam update vanishes (m = v = 0 → 0/(0+ε)), so only decay moves values.
  ParamSet ps;
  ps.add("w", Tensor::from_vector({2.0f, -4.0f}, {2}), true, true);
  ps.add("n", Tensor::from_vector({2.0f, -4.0f}, {2}), true, false);
  AdamW opt(ps, AdamWConfig{0.9, 0.95, 1e-8, 0.5});
  opt.step(0.1);  // factor 1 − 0.1·0.5 = 0.95
  EXPECT_FLOAT_EQ(ps.value("w").to_vector()[0], 1.9f);
  EXPECT_FLOAT_EQ(ps.value("w").to_vector()[1], -3.8f);
  EXPECT_EQ(ps.value("n").to_vector(), (std::vector<float>{2.0f, -4.0f}));
}

TEST(Optimizer, AdamWFirstStepIsSignTimesLr) {
  // After one step m̂ = g and √v̂ = |g|, so the update is lr·sign(g) (ε negligible).
  ParamSet ps;
  ps.add("w", Tensor::from_vector({1.0f, 1.0f, 1.0f}, {3}), true, false);
  set_grad(ps.at("w"), {3.0f, -0.25f, 1e3f});
  AdamW opt(ps, AdamWConfig{});
  opt.step(0.01);
  const std::vector<float> v = ps.value("w").to_vector();
  EXPECT_NEAR(v[0], 0.99, 2e-7);
  EXPECT_NEAR(v[1], 1.01, 2e-7);
  EXPECT_NEAR(v[2], 0.99, 2e-7);
}

TEST(Optimizer, AdamWRejectsBadConfigAndLr) {
  ParamSet ps;
  ps.add("w", Tensor::from_vector({1.0f}, {1}), true, true);
  EXPECT_THROW(AdamW(ps, AdamWConfig{1.0, 0.95, 1e-8, 0.1}), Error);
  EXPECT_THROW(AdamW(ps, AdamWConfig{0.9, -0.1, 1e-8, 0.1}), Error);
  EXPECT_THROW(AdamW(ps, AdamWConfig{0.9, 0.95, 0.0, 0.1}), Error);
  EXPECT_THROW(AdamW(ps, AdamWConfig{0.9, 0.95, 1e-8, -1.0}), Error);
  AdamW opt(ps, AdamWConfig{});
  EXPECT_THROW(opt.step(-1e-3), Error);
  EXPECT_THROW(opt.step(std::nan("")), Error);
  ps.add("late", Tensor::from_vector({1.0f}, {1}), true, true);
  try {
    opt.step(1e-3);
    FAIL() << "expected an error for a parameter added after construction";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer was built for 1"), std::string::npos)
        << e.what();
  }
}

TEST(Optimizer, ClipGradNorm) {
  ParamSet ps;
  ps.add("a", Tensor::from_vector({0, 0}, {2}), true, true);
  ps.add("b", Tensor::from_vector({0}, {1}), true, false);
  ps.add("buf", Tensor::from_vector({0}, {1}), false, false);
  set_grad(ps.at("a"), {3.0f, 4.0f});
  set_grad(ps.at("b"), {12.0f});
  // √(9 + 16 + 144) = 13.
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 100.0), 13.0);  // under the limit: unchanged
  EXPECT_EQ(ps.grad("a").to_vector(), (std::vector<float>{3.0f, 4.0f}));
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 0.0), 13.0);  // max_norm 0: no clipping
  EXPECT_EQ(ps.grad("b").to_vector(), (std::vector<float>{12.0f}));

  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 1.0), 13.0);
  const float scale = float(1.0 / (13.0 + 1e-6));
  EXPECT_FLOAT_EQ(ps.grad("a").to_vector()[0], 3.0f * scale);
  EXPECT_FLOAT_EQ(ps.grad("a").to_vector()[1], 4.0f * scale);
  EXPECT_FLOAT_EQ(ps.grad("b").to_vector()[0], 12.0f * scale);
  EXPECT_NEAR(clip_grad_norm(ps, 1.0), 1.0, 1e-6);  // now at the limit
}

// The trainer's fused step: clip_factor as AdamW::step's grad_scale, the bf16 compute copies
// re-rounded by the step, gives the same bits as clip_grad_norm + step + refresh_compute.
TEST(Optimizer, FusedClipAndComputeCopiesEqualTheUnfusedStep) {
  std::mt19937 rng(21);
  ParamSet a = make_params(rng);
  std::mt19937 rng2(21);
  ParamSet b = make_params(rng2);
  a.set_compute_dtype(DType::BF16);
  b.set_compute_dtype(DType::BF16);
  AdamW opt_a(a, AdamWConfig{}), opt_b(b, AdamWConfig{});
  std::mt19937 grads(22);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int t = 0; t < 3; ++t) {
    for (Param& p : a.all()) {
      if (!p.trainable) continue;
      std::vector<float> g(size_t(p.value.numel()));
      for (float& x : g) x = normal(grads);
      set_grad(p, g);
      set_grad(b.at(p.name), g);
    }
    const double norm = clip_grad_norm(a, 0.5);
    opt_a.step(1e-2);
    a.refresh_compute();
    EXPECT_EQ(train::grad_norm(b), norm);
    const float factor = train::clip_factor(norm, 0.5);
    ASSERT_LT(factor, 1.0f);
    opt_b.step(1e-2, factor);
    int copies = 0;
    for (const Param& p : a.all()) {
      EXPECT_EQ(b.value(p.name).to_vector(), p.value.to_vector()) << p.name;
      ASSERT_EQ(b.at(p.name).compute.defined(), p.compute.defined()) << p.name;
      if (!p.compute.defined()) continue;
      ++copies;
      const Tensor& got = b.at(p.name).compute;
      ASSERT_EQ(got.nbytes(), p.compute.nbytes());
      EXPECT_EQ(std::memcmp(got.raw(), p.compute.raw(), got.nbytes()), 0) << p.name;
    }
    EXPECT_GT(copies, 0);
  }
  EXPECT_EQ(train::clip_factor(0.4, 0.5), 1.0f);
  EXPECT_EQ(train::clip_factor(7.0, 0.0), 1.0f);
  EXPECT_EQ(train::clip_factor(INFINITY, 0.5), 1.0f);
}

// Split masters (ops/split_master.h): the halves give back every f32 bit pattern (a NaN as a NaN
// of its sign); the high half is Tensor::to(BF16)'s round-to-nearest-even except on exact ties,
// which round away from zero; and AdamW on a split set steps its masters exactly as on whole ones
// (step and step_async, clipping on), its copies always the new masters' high halves. A split
// master is read through master_value (ParamSet::value refuses it), written through
// set_master_value, and join_masters gives the f32 value back.
TEST(Optimizer, SplitMastersKeepEveryBitAndStepLikeWholeOnes) {
  std::mt19937 rng(91);
  const std::vector<float> values = dseek::testing::split_master_cases(92, 200000);
  const Tensor value = Tensor::from_vector(values, {int64_t(values.size())});
  const Tensor high = Tensor::poisoned(value.shape(), DType::BF16);
  const Tensor low = Tensor::poisoned(value.shape(), DType::BF16);
  ops::split_master(value, high, low);
  const Tensor rne = value.to(DType::BF16);
  const Tensor joined = ops::join_master(high, low);
  const auto* h = static_cast<const uint16_t*>(high.raw());
  const auto* r = static_cast<const uint16_t*>(rne.raw());
  const auto* l = static_cast<const uint16_t*>(low.raw());
  const float* back = joined.data<float>();
  dseek::testing::expect_masters_back(values, back);
  int ties = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) {
      EXPECT_TRUE(std::isnan(bits_to_f32(uint32_t(h[i]) << 16))) << i;
      continue;
    }
    if (l[i] == 0x8000) {  // a tie: away from zero (the magnitude's bits up by one)
      ++ties;
      EXPECT_EQ(h[i], uint16_t((f32_to_bits(values[i]) >> 16) + 1)) << i;
    } else {
      EXPECT_EQ(h[i], r[i]) << "element " << i;
    }
  }
  EXPECT_GE(ties, 2);
  EXPECT_THROW(ops::split_master(value, Tensor::empty({3}, DType::BF16), low), Error);
  EXPECT_THROW((void)ops::join_master(high, Tensor::empty(value.shape(), DType::F32)), Error);
  {  // A split entry of AdamW's table: no f32 value, the copy as its high half, halves alike.
    const Shape sh = {2, 4};
    const auto table = [&](const Tensor& v, const Tensor& copy, const Tensor& lo) {
      return ops::adamw_tensors({v}, {Tensor::zeros(sh)}, {Tensor::zeros(sh)}, {Tensor::zeros(sh)},
                                {1}, {copy}, {}, Tensor(), {}, {lo});
    };
    const Tensor copy = Tensor::zeros(sh, DType::BF16), lo = Tensor::zeros(sh, DType::BF16);
    EXPECT_NO_THROW((void)table(Tensor(), copy, lo));
    EXPECT_THROW((void)table(Tensor::zeros(sh), copy, lo), Error);  // a value beside the halves
    EXPECT_THROW((void)table(Tensor(), Tensor(), lo), Error);       // no high half
    EXPECT_THROW((void)table(Tensor(), copy, Tensor::zeros({4, 2}, DType::BF16)), Error);
  }

  std::mt19937 ra(93), rb(93);
  ParamSet a = make_params(ra), b = make_params(rb);
  a.set_compute_dtype(DType::BF16);
  b.set_compute_dtype(DType::BF16);
  EXPECT_EQ(b.split_masters(), 2);  // the up projection and the embedding (tied: a copy)
  EXPECT_TRUE(b.masters_split());
  AdamW opt_a(a, AdamWConfig{}), opt_b(b, AdamWConfig{});
  std::mt19937 grads(94);
  for (int t = 0; t < 3; ++t) {
    for (Param& p : a.all()) {
      if (!p.trainable) continue;
      const std::vector<float> g = random_values(size_t(p.numel()), grads, 3.0f);
      set_grad(p, g);
      set_grad(b.at(p.name), g);
    }
    const float factor = train::clip_factor(train::grad_norm(a), 0.5);
    ASSERT_LT(factor, 1.0f);
    opt_a.step(1e-2, factor);
    if (t == 1)
      opt_b.step_async(1e-2, factor, false);
    else
      opt_b.step(1e-2, factor);
    for (const Param& p : a.all()) {
      const Param& q = b.at(p.name);
      EXPECT_EQ(master_value(q).to_vector(), p.value.to_vector()) << p.name;
      if (!q.split()) continue;
      const std::vector<float> m = master_value(q).to_vector();
      const auto* qh = static_cast<const uint16_t*>(q.compute.raw());
      for (size_t i = 0; i < m.size(); ++i) {
        uint32_t mb;
        std::memcpy(&mb, &m[i], 4);
        EXPECT_EQ(qh[i], ops::split_high(mb)) << p.name << " " << i;
      }
    }
  }
  const auto sa = opt_a.state_tensors(), sb = opt_b.state_tensors();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i)
    EXPECT_EQ(sa[i].second.to_vector(), sb[i].second.to_vector()) << sa[i].first;

  const std::string up = "model.layers.0.mlp.up_proj.weight";
  EXPECT_THROW((void)b.value(up), Error);
  EXPECT_EQ(b.at(up).shape(), Shape({3, 4}));
  EXPECT_EQ(b.numel(), a.numel());
  const Tensor fresh = Tensor::from_vector(random_values(12, rng), {3, 4});
  set_master_value(b.at(up), fresh, up);
  EXPECT_EQ(master_value(b.at(up)).to_vector(), fresh.to_vector());
  EXPECT_THROW(set_master_value(b.at(up), Tensor::zeros({4, 3}), up), Error);
  b.join_masters();
  EXPECT_FALSE(b.masters_split());
  EXPECT_EQ(b.value(up).to_vector(), fresh.to_vector());
}

// AdamW::step_async's groups (a layer's update is what its forward waits for) and its CPU form:
// step() then zero_grad(), with zero_grad's flags. The GPU's background form is tested against
// both in tests/backend (BackendOptim.StepAsyncMatchesStepAndWaitsForReaders).
TEST(Optimizer, UpdateGroupsAreLayersAndModules) {
  EXPECT_EQ(update_group("model.layers.12.mlp.experts.3.up_proj.weight"), "model.layers.12");
  EXPECT_EQ(update_group("model.layers.0.input_layernorm.weight"), "model.layers.0");
  EXPECT_EQ(update_group("model.embed_tokens.weight"), "model.embed_tokens");
  EXPECT_EQ(update_group("model.norm.weight"), "model.norm");
  EXPECT_EQ(update_group("lm_head.weight"), "lm_head");
  EXPECT_EQ(update_group("bias"), "bias");
}

TEST(Optimizer, StepAsyncOnTheCpuIsStepThenZeroGrad) {
  std::mt19937 rng(61), rng2(61);
  ParamSet a = make_params(rng), b = make_params(rng2);
  AdamW opt_a(a, AdamWConfig{}), opt_b(b, AdamWConfig{});
  std::mt19937 grads(62);
  for (int t = 0; t < 2; ++t) {
    for (Param& p : a.all()) {
      if (!p.trainable) continue;
      const std::vector<float> g = random_values(size_t(p.value.numel()), grads);
      set_grad(p, g);
      set_grad(b.at(p.name), g);
    }
    b.at("model.embed_tokens.weight").grad_overwritten = true;  // its zeros may be deferred
    opt_a.step(1e-2, 0.5f);
    a.zero_grad(/*defer_overwritten=*/false);
    if (t == 0) {
      opt_b.step_async(1e-2, 0.5f, /*defer_overwritten=*/false);
    } else {  // a GradClip of host values (BackwardGradNorm::clip on the CPU): the same
      const train::GradClip clip(3.25, 0.5f);
      EXPECT_EQ(clip.factor_on_device(), nullptr);
      EXPECT_EQ(clip.norm(), 3.25);
      opt_b.step_async(1e-2, clip, /*defer_overwritten=*/false);
    }
    EXPECT_FALSE(b.pending());  // nothing in flight on the CPU
    for (const Param& p : a.all()) {
      EXPECT_EQ(b.value(p.name).to_vector(), p.value.to_vector()) << p.name;
      if (!p.grad.defined()) continue;
      EXPECT_EQ(b.grad(p.name).to_vector(), std::vector<float>(size_t(p.grad.numel()), 0.0f));
      EXPECT_TRUE(b.at(p.name).grad_zero) << p.name;
      EXPECT_FALSE(b.at(p.name).grad_stale) << p.name;
    }
  }
  // Deferred: the overwritten gradient is left stale (its memory unwritten), as zero_grad(true).
  opt_b.step_async(1e-2, 1.0f, /*defer_overwritten=*/true);
  EXPECT_TRUE(b.at("model.embed_tokens.weight").grad_stale);
  EXPECT_FALSE(b.at("model.layers.0.mlp.up_proj.weight").grad_stale);
  EXPECT_EQ(opt_b.step_count(), 3);
}

// ops::adamw_step_rows (AdamW::step_async's next lookup's rows first): a table stepped in two
// parts by rows — the listed rows, then the rest, or the other way round — holds the whole step's
// bits (masters, moments, compute copies) with f32 and bf16 moments, whole and split masters. A
// table that cannot be cut by rows and a row set that does not fit are errors naming them.
TEST(Optimizer, RowPartsStepLikeTheWholeTable) {
  const Shape sh = {50, 8};
  const std::vector<int32_t> listed = {17, 3, 49, 4};  // unique, in range, any order
  std::vector<uint8_t> flag_bytes(50, 0);
  for (int32_t r : listed) flag_bytes[size_t(r)] = 1;
  ops::AdamWRowSet set;
  set.rows = Tensor::from_ids(listed);
  set.flags = Tensor::empty({50}, DType::U8);
  std::memcpy(set.flags.raw(), flag_bytes.data(), flag_bytes.size());
  set.count = int64_t(listed.size());
  for (const DType moments : {DType::F32, DType::BF16})
    for (const bool split : {false, true})
      for (const bool listed_first : {true, false}) {
        SCOPED_TRACE(std::string(dtype_name(moments)) + (split ? " split" : " whole") +
                     (listed_first ? ", listed rows first" : ", the rest first"));
        std::mt19937 rng(71);
        const Tensor value = Tensor::from_vector(random_values(400, rng), sh);
        const Tensor grad = Tensor::from_vector(random_values(400, rng, 0.1f), sh);
        // A table of its own copies: master (or its halves), moments, compute copy.
        const auto table = [&] {
          const Tensor m = Tensor::zeros(sh, moments), v = Tensor::zeros(sh, moments);
          if (!split)
            return ops::adamw_tensors({value.clone()}, {grad}, {m}, {v}, {1},
                                      {Tensor::poisoned(sh, DType::BF16)});
          const Tensor high = Tensor::poisoned(sh, DType::BF16),
                       low = Tensor::poisoned(sh, DType::BF16);
          ops::split_master(value, high, low);
          return ops::adamw_tensors({Tensor()}, {grad}, {m}, {v}, {1}, {high}, {}, Tensor(), {},
                                    {low});
        };
        const ops::AdamWTensors whole = table(), parts = table();
        ASSERT_TRUE(ops::adamw_steps_rows(parts));
        for (int64_t t = 1; t <= 3; ++t) {
          const ops::AdamWStep s = train::adamw_step_scalars(AdamWConfig{}, 1e-2, t);
          ops::adamw_step(whole, s, 0.75f);
          const auto part = [&](ops::AdamWRowPart which) {
            ops::adamw_step_rows(parts, s, set, which, 0.75f);
          };
          part(listed_first ? ops::AdamWRowPart::listed : ops::AdamWRowPart::rest);
          part(listed_first ? ops::AdamWRowPart::rest : ops::AdamWRowPart::listed);
          const auto same = [](const Tensor& a, const Tensor& b) {
            return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
          };
          if (split) {
            EXPECT_TRUE(same(parts.lows[0], whole.lows[0])) << "step " << t;
          } else {
            EXPECT_TRUE(same(parts.values[0], whole.values[0])) << "step " << t;
          }
          EXPECT_TRUE(same(parts.computes[0], whole.computes[0])) << "step " << t;
          EXPECT_TRUE(same(parts.exp_avgs[0], whole.exp_avgs[0])) << "step " << t;
          EXPECT_TRUE(same(parts.exp_avg_sqs[0], whole.exp_avg_sqs[0])) << "step " << t;
        }
      }
  // Tables that cannot be cut by rows: two tensors, rows of 3 elements, one dimension.
  const auto plain = [](const Shape& shape) {
    return ops::adamw_tensors({Tensor::zeros(shape)}, {Tensor::zeros(shape)},
                              {Tensor::zeros(shape)}, {Tensor::zeros(shape)}, {1});
  };
  const Tensor a = Tensor::zeros(sh);
  EXPECT_FALSE(ops::adamw_steps_rows(ops::adamw_tensors({a, a}, {a, a}, {a, a}, {a, a}, {1, 1})));
  EXPECT_FALSE(ops::adamw_steps_rows(plain({50, 3})));
  EXPECT_FALSE(ops::adamw_steps_rows(plain({400})));
  const ops::AdamWStep s = train::adamw_step_scalars(AdamWConfig{}, 1e-2, 1);
  expect_error(
      [&] {
        ops::adamw_step_rows(plain({50, 3}), s, set, ops::AdamWRowPart::listed);
      },
      "rows a multiple of 4 long");
  ops::AdamWRowSet short_flags = set;
  short_flags.flags = Tensor::zeros({49}, DType::U8);
  expect_error([&] { ops::adamw_step_rows(plain(sh), s, short_flags, ops::AdamWRowPart::rest); },
               "49 u8 flags on cpu for a [50, 8] tensor");
  ops::AdamWRowSet unflagged = set;
  unflagged.flags = Tensor::zeros({50}, DType::U8);
  expect_error([&] { ops::adamw_step_rows(plain(sh), s, unflagged, ops::AdamWRowPart::listed); },
               "row 17 is out of [0, 50) or not flagged");
}

// ParamSet's record of an embedding whose next lookup's rows are updated first
// (set_lookup_ready, AdamW::step_async's next_lookup on the GPU): named by lookup_ready until a
// reader takes it — the lookup of those ids, a lookup of other ids, at(), await_all() — and
// at_for_lookup returns the parameter either way. (On the CPU nothing is in flight, so no reader
// waits; the GPU tests check the waits.)
TEST(Optimizer, LookupRecordIsClearedByItsReaders) {
  std::mt19937 rng(77);
  ParamSet ps = make_params(rng);
  const std::string embed = "model.embed_tokens.weight";
  size_t index = 0;
  for (const Param& p : ps.all()) {
    if (p.name == embed) break;
    ++index;
  }
  const std::vector<int32_t> ids = {3, 1, 3, 399};
  const auto readers = std::vector<std::function<void()>>{
      [&] { EXPECT_EQ(&ps.at_for_lookup(embed, ids), &ps.at(embed)); },
      [&] {
        (void)ps.at_for_lookup(embed, {1, 2});
      },
      [&] { (void)ps.at(embed); }, [&] { ps.await_all(); }};
  for (size_t r = 0; r < readers.size(); ++r) {
    ps.set_lookup_ready(index, 1, ids);
    EXPECT_TRUE(ps.lookup_ready(embed)) << "reader " << r;
    EXPECT_FALSE(ps.lookup_ready("model.layers.0.mlp.up_proj.weight"));
    readers[r]();
    EXPECT_FALSE(ps.lookup_ready(embed)) << "reader " << r;
  }
  EXPECT_THROW(ps.set_lookup_ready(ps.size(), 1, ids), Error);
  EXPECT_THROW((void)ps.at_for_lookup("model.no_such.weight", ids), Error);
}

// The CPU side of the step with FP8 images (ops/adamw.h's AdamWImage; the GPU kernel is compared
// with it in tests/backend/test_backend_optim.cpp): the masters and moments of the plain step bit
// for bit, and images — written into poisoned buffers — that are quantize_fp8's 128×128 blocks of
// the new masters (partial blocks at the edges), Wᵀ's codes and scales the same transposed. The
// images' checks name the tensor at fault; a NaN master is an error naming it.
TEST(Optimizer, AdamWImagesAreTheNewMastersBlocks) {
  std::mt19937 rng(81);
  const std::vector<Shape> shapes = {{132, 200}, {4, 8}, {37}};
  std::vector<Tensor> v1, v2, g, m1, m2, s1, s2;
  std::vector<ops::AdamWImage> images;
  for (const Shape& sh : shapes) {
    int64_t n = 1;
    for (int64_t d : sh) n *= d;
    const Tensor start = Tensor::from_vector(random_values(size_t(n), rng), sh);
    v1.push_back(start.clone());
    v2.push_back(start.clone());
    g.push_back(Tensor::from_vector(random_values(size_t(n), rng), sh));
    for (auto* list : {&m1, &m2, &s1, &s2}) list->push_back(Tensor::zeros(sh));
    ops::AdamWImage im;
    if (sh.size() == 2) {
      const int64_t R = sh[0], C = sh[1], RB = (R + 127) / 128, CB = (C + 127) / 128;
      im = {Tensor::poisoned({R, C}, DType::F8_E4M3), Tensor::poisoned({RB, CB}),
            Tensor::poisoned({C, R}, DType::F8_E4M3), Tensor::poisoned({CB, RB})};
    }
    images.push_back(im);
  }
  const std::vector<uint8_t> decay = {1, 0, 1};
  const ops::AdamWTensors plain = ops::adamw_tensors(v1, g, m1, s1, decay);
  const ops::AdamWTensors with = ops::adamw_tensors(v2, g, m2, s2, decay, {}, images, Tensor());
  for (int64_t t = 1; t <= 2; ++t) {
    const ops::AdamWStep s = ops::adamw_step_scalars(0.9, 0.95, 1e-8, 0.1, 1e-2, t);
    ops::adamw_step(plain, s, 0.5f);
    ops::adamw_step(with, s, 0.5f);
    for (size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_EQ(v2[i].to_vector(), v1[i].to_vector()) << i;
      EXPECT_EQ(m2[i].to_vector(), m1[i].to_vector()) << i;
      if (shapes[i].size() != 2) continue;
      const ops::Fp8Tensor want =
          ops::quantize_fp8(v2[i], ops::Fp8Layout::Block128x128, false, "w");
      const ops::AdamWImage& im = images[i];
      EXPECT_EQ(0, std::memcmp(im.q.raw(), want.data.raw(), want.data.nbytes())) << i;
      EXPECT_EQ(im.scale.to_vector(), want.scale.to_vector()) << i;
      EXPECT_EQ(im.scale_t.to_vector(), want.scale.transpose(0, 1).contiguous().to_vector()) << i;
      const int64_t R = shapes[i][0], C = shapes[i][1];
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c)
          ASSERT_EQ(im.q_t.data<uint8_t>()[c * R + r], want.data.data<uint8_t>()[r * C + c]);
    }
  }
  auto error_of = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  // Wrong image layouts and images of a vector are errors naming the tensor.
  ops::AdamWImage bad = images[0];
  bad.scale = Tensor::zeros({1, 1});
  std::vector<ops::AdamWImage> bad_images = images;
  bad_images[0] = bad;
  EXPECT_NE(error_of([&] {
              ops::adamw_tensors(v2, g, m2, s2, decay, {}, bad_images, Tensor());
            }).find("tensor 0: image scales must be contiguous f32 [2, 2]"),
            std::string::npos);
  bad_images = images;
  bad_images[2] = images[0];
  EXPECT_NE(error_of([&] {
              ops::adamw_tensors(v2, g, m2, s2, decay, {}, bad_images, Tensor());
            }).find("tensor 2: an FP8 image needs a matrix"),
            std::string::npos);
  // A NaN master with an image: an error naming it; its image is not written.
  std::vector<float> host = v2[0].to_vector();
  host[7] = std::nanf("");
  std::memcpy(v2[0].raw(), host.data(), host.size() * sizeof(float));
  const std::string e = error_of(
      [&] { ops::adamw_step(with, ops::adamw_step_scalars(0.9, 0.95, 1e-8, 0.1, 1e-2, 3), 0.5f); });
  EXPECT_NE(e.find("tensor 0 [132, 200]: element 7 is NaN or Inf"), std::string::npos) << e;
}

TEST(Optimizer, ClipGradNormLargeParamDoubleAccumulation) {
  // 2^20 gradients of 1e-3: an f32 running sum would drift; the norm is exactly √(2^20)·1e-3.
  ParamSet ps;
  const int64_t n = int64_t(1) << 20;
  ps.add("w", Tensor::zeros({n}), true, true);
  std::vector<float> g(size_t(n), 1e-3f);
  set_grad(ps.at("w"), g);
  const double expected = std::sqrt(double(n)) * double(1e-3f);
  EXPECT_NEAR(clip_grad_norm(ps, 0.0), expected, 1e-9 * expected);
}

TEST(Optimizer, StateRoundTripGivesIdenticalNextStep) {
  std::mt19937 rng(11);
  ParamSet a = make_params(rng);
  AdamW opt_a(a, AdamWConfig{});
  for (int t = 0; t < 3; ++t) {
    for (Param& p : a.all())
      if (p.trainable) set_grad(p, random_values(size_t(p.value.numel()), rng));
    opt_a.step(1e-2);
  }
  // Save: names and deep copies, as a checkpoint would.
  std::map<std::string, Tensor> saved;
  for (const auto& [name, t] : opt_a.state_tensors()) saved[name] = t.clone();
  EXPECT_EQ(saved.size(), 6u);  // 3 trainable parameters × 2 moments, no buffer
  EXPECT_TRUE(saved.count("exp_avg.model.embed_tokens.weight"));
  EXPECT_TRUE(saved.count("exp_avg_sq.model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(saved.count("exp_avg.model.layers.0.mlp.gate.e_score_correction_bias"));

  ParamSet b;
  for (const Param& p : a.all()) b.add(p.name, p.value, p.trainable, p.decay);
  AdamW opt_b(b, AdamWConfig{});
  opt_b.load_state(saved, opt_a.step_count());
  EXPECT_EQ(opt_b.step_count(), 3);

  for (Param& p : a.all()) {
    if (!p.trainable) continue;
    const std::vector<float> g = random_values(size_t(p.value.numel()), rng);
    set_grad(p, g);
    set_grad(b.at(p.name), g);
  }
  opt_a.step(2e-2);
  opt_b.step(2e-2);
  for (const Param& p : a.all())
    EXPECT_EQ(p.value.to_vector(), b.value(p.name).to_vector()) << p.name;
}

TEST(Optimizer, LoadStateErrorsNameTheTensor) {
  ParamSet ps;
  ps.add("w", Tensor::zeros({2, 3}), true, true);
  ps.add("buf", Tensor::zeros({2}), false, false);
  AdamW opt(ps, AdamWConfig{});
  std::map<std::string, Tensor> state{{"exp_avg.w", Tensor::zeros({2, 3})}};
  try {
    opt.load_state(state, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'exp_avg_sq.w'"), std::string::npos)
        << e.what();
  }
  state["exp_avg_sq.w"] = Tensor::zeros({3, 2});
  try {
    opt.load_state(state, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'exp_avg_sq.w' has shape [3, 2]"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(opt.step_count(), 0);  // nothing changed by the failed loads
  state["exp_avg_sq.w"] = Tensor::zeros({2, 3});
  EXPECT_THROW(opt.load_state(state, -1), Error);
  opt.load_state(state, 4);
  EXPECT_EQ(opt.step_count(), 4);
}

TEST(Optimizer, DecayRule) {
  EXPECT_TRUE(decays("model.embed_tokens.weight"));
  EXPECT_TRUE(decays("lm_head.weight"));
  EXPECT_TRUE(decays("model.layers.0.self_attn.kv_b_proj.weight"));
  EXPECT_TRUE(decays("model.layers.3.mlp.experts.7.down_proj.weight"));
  EXPECT_FALSE(decays("model.norm.weight"));
  EXPECT_FALSE(decays("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(decays("model.layers.0.self_attn.kv_a_layernorm.weight"));
  EXPECT_FALSE(decays("model.layers.61.enorm.weight"));
  EXPECT_FALSE(decays("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(decays("model.layers.3.mlp.gate.e_score_correction_bias"));
}

namespace {

}  // namespace

TEST(Optimizer, FusedOpChecksItsTensors) {
  const Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({3, 2});
  expect_error([&] { ops::adamw_tensors({a}, {a}, {a}, {}, {1}); },
               "[adamw] 1 values, 1 grads, 1 exp_avgs, 0 exp_avg_sqs, 1 decay flags");
  expect_error([&] { ops::adamw_tensors({a}, {b}, {a}, {a}, {1}); },
               "[adamw] tensor 0: value [2, 3], grad [3, 2]");
  // The moments share one dtype (the first exp_avg's), f32 or bf16.
  expect_error([&] { ops::adamw_tensors({a}, {a}, {a.to(DType::BF16)}, {a}, {1}); },
               "[adamw] exp_avg_sq 0: must be a defined bf16 contiguous tensor (the moments share "
               "one dtype, f32 or bf16), got f32 [2, 3]");
  expect_error([&] { ops::adamw_tensors({a}, {a}, {a.to(DType::F16)}, {a.to(DType::F16)}, {1}); },
               "[adamw] moments must be f32 or bf16, got f16");
  expect_error([&] { ops::adamw_tensors({a}, {a}, {a}, {b.transpose(0, 1)}, {0}); },
               "[adamw] exp_avg_sq 0: must be a defined f32 contiguous tensor");
  // The optional bf16 compute copies: one per tensor, bf16, the value's shape.
  expect_error(
      [&] {
        ops::adamw_tensors({a}, {a}, {a}, {a}, {1}, {Tensor(), Tensor()});
      },
      "2 compute copies: one each");
  expect_error([&] { ops::adamw_tensors({a}, {a}, {a}, {a}, {1}, {a}); },
               "[adamw] compute copy 0: must be bf16 contiguous [2, 3], got f32 [2, 3]");
  expect_error([&] { ops::adamw_tensors({a}, {a}, {a}, {a}, {1}, {b.to(DType::BF16)}); },
               "[adamw] compute copy 0: must be bf16 contiguous [2, 3], got bf16 [3, 2]");
  expect_error(
      [&] {
        ops::sum_of_squares({a, Tensor()});
      },
      "[sum_of_squares] tensor 1: must be a defined f32 or bf16 contiguous tensor, got undefined");
  expect_error([&] { ops::scale_inplace({a.to(DType::F16)}, 2.0f); },
               "[scale_inplace] tensor 0: must be a defined f32 or bf16");
}

// SumOfSquaresParts::external: the sum of some tensors comes from their writer (here: the grouped
// wgrad's squares, an expert group written by ops::grouped_linear_backward_dw), the rest are
// added in parts or at finish; the total is sum_of_squares's up to the order of the sums. A
// tensor given to a writer cannot be added again. (The GPU twin: BackendOptim.
// SumOfSquaresInPartsIsSumOfSquares.)
TEST(Optimizer, SumOfSquaresPartsTakesWritersSums) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  auto random = [&](Shape shape) {
    Tensor t = Tensor::empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = normal(rng);
    return t;
  };
  const int64_t T = 9, in = 6, out = 5;
  std::vector<Tensor> tensors = {random({4, 3}), Tensor::poisoned({out, in}), random({7}),
                                 Tensor::poisoned({out, in}), random({2, 2})};
  const Tensor x = random({T, in}), dy = random({T, out});
  const Tensor offsets = Tensor::from_i64({0, 4, 9});
  ops::SumOfSquaresParts parts(tensors);
  parts.add(0, 1);
  double* slot = parts.external({1, 3});  // the two experts, written below
  ops::grouped_linear_backward_dw(x, dy, offsets, ops::expert_matrices({tensors[1], tensors[3]}),
                                  false, slot);
  EXPECT_TRUE(std::isfinite(*slot));
  EXPECT_GT(*slot, 0.0);
  expect_error([&] { parts.add(3, 5); }, "[sum_of_squares] tensor 3 added twice");
  expect_error([&] { parts.external({0}); }, "[sum_of_squares] tensor 0 added twice");
  expect_error([&] { parts.external({5}); }, "[sum_of_squares] tensor 5 of 5");
  const double got = parts.finish(), want = ops::sum_of_squares(tensors);
  EXPECT_NEAR(got, want, 1e-13 * want);
  // matrices_sum_of_squares, the ops' second pass: the experts' share alone.
  double experts = NAN;
  ops::matrices_sum_of_squares(ops::expert_matrices({tensors[1], tensors[3]}), &experts);
  EXPECT_NEAR(experts, ops::sum_of_squares({tensors[1], tensors[3]}), 1e-13 * experts);
  EXPECT_NEAR(*slot, experts, 1e-13 * experts);
  expect_error(
      [&] {
        ops::matrices_sum_of_squares(ops::expert_matrices(std::vector<Tensor>{x.to(DType::F16)}),
                                     &experts);
      },
      "[sum_of_squares] expert matrices must be contiguous f32 or bf16, got f16");
}

// A parameter whose tensors are replaced between steps (as ParamSet::to does) is updated in its
// new storage: the optimizer rebuilds its multi-tensor table instead of writing to the old one.
TEST(Optimizer, AdamWFollowsReplacedParameterTensors) {
  ParamSet ps, ref;
  for (ParamSet* p : {&ps, &ref}) {
    p->add("w", Tensor::from_vector({1.0f, -2.0f, 3.0f}, {3}), true, true);
    p->add("n", Tensor::from_vector({0.5f}, {1}), true, false);
  }
  AdamW opt(ps, AdamWConfig{}), opt_ref(ref, AdamWConfig{});
  for (ParamSet* p : {&ps, &ref}) {
    set_grad(p->at("w"), {0.1f, 0.2f, -0.3f});
    set_grad(p->at("n"), {1.0f});
  }
  opt.step(1e-2);
  opt_ref.step(1e-2);
  const Tensor old_value = ps.at("w").value;
  ps.at("w").value = old_value.clone();  // new storage, same values
  ps.at("w").grad = ps.at("w").grad.clone();
  const std::vector<float> old_before = old_value.to_vector();
  for (ParamSet* p : {&ps, &ref}) set_grad(p->at("w"), {-0.4f, 0.5f, 0.6f});
  opt.step(2e-2);
  opt_ref.step(2e-2);
  EXPECT_EQ(ps.value("w").to_vector(), ref.value("w").to_vector());
  EXPECT_EQ(ps.value("n").to_vector(), ref.value("n").to_vector());
  EXPECT_EQ(old_value.to_vector(), old_before);  // the replaced tensor is left alone
}

TEST(Optimizer, CopyValuesConvertsAndChecks) {
  const Tensor dst = Tensor::poisoned({2, 2});
  copy_values(dst, Tensor::from_vector({1.0f, 2.5f, -3.0f, 1.00390625f}, {2, 2}).to(DType::BF16),
              "w");
  // bf16 holds 1, 2.5 and −3 exactly; 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even → 1.
  EXPECT_EQ(dst.to_vector(), (std::vector<float>{1.0f, 2.5f, -3.0f, 1.0f}));
  const Tensor strided = Tensor::from_vector({1, 2, 3, 4}, {2, 2}).transpose(0, 1);
  copy_values(dst, strided, "w");
  EXPECT_EQ(dst.to_vector(), (std::vector<float>{1, 3, 2, 4}));
  expect_error([&] { copy_values(dst, Tensor::zeros({4}), "model.norm.weight"); },
               "[train] model.norm.weight: source [4], expected [2, 2]");
  const Tensor bf16 = Tensor::poisoned({2, 2}, DType::BF16);  // rounded to nearest even
  copy_values(bf16, Tensor::from_vector({1.0f, 2.5f, -3.0f, 1.01171875f}, {2, 2}), "m");
  EXPECT_EQ(bf16.to_vector(), (std::vector<float>{1.0f, 2.5f, -3.0f, 1.015625f}));
  expect_error(
      [&] {
        copy_values(dst.to(DType::F16), Tensor::zeros({2, 2}), "m");
      },
      "[train] m: the destination must be f32 or bf16 contiguous");
}

TEST(Optimizer, ParamSetStartsOnTheCpu) {
  ParamSet ps;
  ps.add("w", Tensor::from_vector({1.0f, 2.0f}, {2}), true, true);
  EXPECT_EQ(ps.device(), Device::CPU);
  const void* before = ps.value("w").raw();
  ps.to(Device::CPU);  // already there: the same storage
  EXPECT_EQ(ps.value("w").raw(), before);
  ps.at("w").grad.copy_from(Tensor::poisoned({2}));
  ps.zero_grad();
  EXPECT_EQ(ps.grad("w").to_vector(), (std::vector<float>{0.0f, 0.0f}));
  if (!cuda::available()) {
    expect_error([&] { ps.to(Device::CUDA); }, "[cuda] ParamSet::to(cuda) needs");
    EXPECT_EQ(ps.device(), Device::CPU);
  }
}
