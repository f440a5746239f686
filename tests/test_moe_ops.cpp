// The MoE ops (ops/moe.h) on the CPU: moe_route follows the routing rules for every gate variant
// (the model's route_from_logits runs it); dispatch is a stable counting sort; permute/combine and
// the grouped GEMMs (forward and backward) equal per-token and per-expert loops over the plain ops;
// and route → dispatch → permute → grouped_linear (gate, up) → silu_mul → grouped_linear (down) →
// combine (+ shared experts) equals MoE::forward. route_params (model/gate.h) is the bridge from a
// config to the op. The CUDA twins are compared with these in tests/backend/test_backend_moe.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/gate.h"
#include "model/mlp.h"
#include "model/moe.h"
#include "ops/activation.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::max_abs_diff;
using dseek::testing::random_tensor;

namespace {

struct Variant {
  std::string name, model_type, scoring_func, topk_method;
  int64_t E, K, n_group, topk_group;
  bool norm;
  double scale;
  bool bias;
};

const Variant kVariants[] = {
    {"DeepSeekMoE", "deepseek", "softmax", "greedy", 16, 4, 1, 1, false, 1.0, false},
    {"DeepSeekMoENorm", "deepseek", "softmax", "greedy", 16, 4, 1, 1, true, 1.0, false},
    {"DeepSeekMoETop1", "deepseek", "softmax", "greedy", 8, 1, 1, 1, true, 1.0, false},
    {"V2Greedy", "deepseek_v2", "softmax", "greedy", 64, 6, 1, 1, false, 1.0, false},
    {"V2GroupLimited", "deepseek_v2", "softmax", "group_limited_greedy", 32, 6, 8, 3, false, 16.0,
     false},
    {"V3NoauxTc", "deepseek_v3", "sigmoid", "noaux_tc", 256, 8, 8, 4, true, 2.5, true},
    {"V3NoBias", "deepseek_v3", "sigmoid", "noaux_tc", 64, 6, 4, 2, true, 2.5, false},
    {"V3Unnormalised", "deepseek_v3", "sigmoid", "noaux_tc", 16, 3, 4, 1, false, 1.5, true},
};

ModelConfig config_of(const Variant& v) {
  ModelConfig c;
  c.model_type = v.model_type;
  c.hidden_size = 16;
  c.n_routed_experts = v.E;
  c.num_experts_per_tok = v.K;
  c.moe_intermediate_size = 8;
  c.n_shared_experts = 1;
  c.scoring_func = v.scoring_func;
  c.topk_method = v.topk_method;
  c.n_group = v.n_group;
  c.topk_group = v.topk_group;
  c.norm_topk_prob = v.norm;
  c.routed_scaling_factor = v.scale;
  return c;
}

std::vector<float> random_values(int64_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

std::vector<int64_t> longs(const Tensor& t) {
  const int64_t* p = t.data<int64_t>();
  return std::vector<int64_t>(p, p + t.numel());
}

Tensor ids_tensor(const std::vector<int32_t>& ids, int64_t T, int64_t K) {
  return Tensor::from_ids(ids).reshape({T, K});
}

// Ragged routing: distinct experts per token, expert 0 in most tokens, the upper half of the
// experts never chosen (K ≤ E/2 - 1).
std::vector<int32_t> ragged_ids(int64_t T, int64_t E, int64_t K, std::mt19937& rng) {
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> pool;
    for (int32_t e = 1; e < E / 2; ++e) pool.push_back(e);
    std::shuffle(pool.begin(), pool.end(), rng);
    const bool hot = t % 5 != 0;
    for (int64_t k = 0; k < K; ++k) ids.push_back(hot && k == K / 2 ? 0 : pool[size_t(k)]);
  }
  return ids;
}

class MoeRouteVariant : public ::testing::TestWithParam<Variant> {};

// moe_route against the rules of ops/moe.h worked out plainly here, in double with full sorts
// (the op, which route_from_logits also runs, uses partial sorts in float): the scores, the kept
// groups, the chosen experts in order and their weights. Random logits leave no near-ties.
TEST_P(MoeRouteVariant, FollowsTheRoutingRules) {
  const Variant& v = GetParam();
  const ModelConfig c = config_of(v);
  std::mt19937 rng(7);
  const int64_t T = 37, E = v.E, K = v.K;
  // Strided logits (every other column of a wider tensor) exercise the op's contiguous copy.
  const Tensor wide = Tensor::from_vector(random_values(T * 2 * E, rng, -4, 4), {T, E, 2});
  const Tensor logits = wide.select(2, 1);
  const std::vector<float> z = logits.to_vector();
  const std::vector<float> bias = random_values(E, rng, -0.3f, 0.3f);
  const ops::MoeRouting got =
      ops::moe_route(logits, route_params(c), v.bias ? Tensor::from_vector(bias, {E}) : Tensor());
  ASSERT_EQ(got.ids.shape(), (Shape{T, K}));
  const std::vector<int32_t> ids = ints(got.ids);
  const std::vector<float> weights = got.weights.to_vector(), scores = got.scores.to_vector();
  const bool noaux = v.topk_method == "noaux_tc", grouped = v.topk_method != "greedy";
  const int64_t group_size = E / v.n_group;
  for (int64_t t = 0; t < T; ++t) {
    SCOPED_TRACE("token " + std::to_string(t));
    std::vector<double> s(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
    double max = -INFINITY, sum = 0.0;
    for (int64_t e = 0; e < E; ++e) max = std::max(max, double(z[size_t(t * E + e)]));
    for (int64_t e = 0; e < E; ++e) {
      const double x = z[size_t(t * E + e)];
      s[size_t(e)] = v.scoring_func == "softmax" ? std::exp(x - max) : 1.0 / (1.0 + std::exp(-x));
      sum += s[size_t(e)];
    }
    for (int64_t e = 0; e < E; ++e) {
      if (v.scoring_func == "softmax") s[size_t(e)] /= sum;
      EXPECT_NEAR(scores[size_t(t * E + e)], s[size_t(e)], 1e-6 * s[size_t(e)] + 1e-12);
      sel[size_t(e)] = s[size_t(e)] + (noaux && v.bias ? bias[size_t(e)] : 0.0);
    }
    auto best_first = [](const std::vector<double>& x) {
      std::vector<int64_t> order(x.size());
      for (size_t i = 0; i < x.size(); ++i) order[i] = int64_t(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return x[size_t(a)] > x[size_t(b)]; });
      return order;
    };
    if (grouped) {  // the topk_group best groups kept, the other groups' experts masked to 0
      std::vector<double> group_score(static_cast<size_t>(v.n_group));
      for (int64_t g = 0; g < v.n_group; ++g) {
        std::vector<double> in(sel.begin() + g * group_size, sel.begin() + (g + 1) * group_size);
        std::sort(in.rbegin(), in.rend());
        group_score[size_t(g)] = noaux ? in[0] + in[1] : in[0];
      }
      const std::vector<int64_t> groups = best_first(group_score);
      std::vector<bool> kept(static_cast<size_t>(v.n_group), false);
      for (int64_t i = 0; i < v.topk_group; ++i) kept[size_t(groups[size_t(i)])] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!kept[size_t(e / group_size)]) sel[size_t(e)] = 0.0;
    }
    const std::vector<int64_t> chosen = best_first(sel);
    std::vector<double> w(static_cast<size_t>(K));
    double w_sum = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      EXPECT_EQ(ids[size_t(t * K + k)], chosen[size_t(k)]) << "k " << k;
      w[size_t(k)] = noaux ? s[size_t(chosen[size_t(k)])] : sel[size_t(chosen[size_t(k)])];
      w_sum += w[size_t(k)];
    }
    const bool normalise = v.model_type == "deepseek_v3"   ? v.norm
                           : v.model_type == "deepseek_v2" ? false
                                                           : v.norm && K > 1;
    const bool scale = v.model_type != "deepseek";
    for (int64_t k = 0; k < K; ++k) {
      double want = w[size_t(k)];
      if (normalise) want /= w_sum + 1e-20;
      if (scale) want *= v.scale;
      EXPECT_NEAR(weights[size_t(t * K + k)], want, 1e-6 * std::abs(want) + 1e-12) << "k " << k;
    }
  }
}

// moe_route_backward against central differences of L(z) = Σ rw ⊙ w(z) + Σ rs ⊙ s(z), whose
// gradient is moe_route_backward(dweights = rw, extra = rs). The selection is piecewise constant:
// elements whose ±eps step changes any token's ids are skipped (few). Also checks linearity in
// the two upstream gradients (extra undefined = zeros).
TEST_P(MoeRouteVariant, BackwardMatchesFiniteDifferences) {
  const Variant& v = GetParam();
  const ModelConfig c = config_of(v);
  const ops::MoeRouteParams p = route_params(c);
  std::mt19937 rng(13);
  const int64_t T = 5, E = v.E, K = v.K;
  const std::vector<float> z = random_values(T * E, rng, -2, 2);
  const Tensor bias = v.bias ? Tensor::from_vector(random_values(E, rng, -0.3f, 0.3f), {E}) : Tensor();
  auto signed_values = [&](int64_t n) {
    std::vector<float> x = random_values(n, rng, 0.2f, 1.0f);
    for (size_t i = 0; i < x.size(); i += 2) x[i] = -x[i];
    return x;
  };
  const std::vector<float> rw = signed_values(T * K), rs = signed_values(T * E);
  auto loss = [&](const std::vector<float>& zv, std::vector<int32_t>& ids) {
    const ops::MoeRouting r = ops::moe_route(Tensor::from_vector(zv, {T, E}), p, bias);
    const std::vector<float> w = r.weights.to_vector(), sc = r.scores.to_vector();
    double L = 0;
    for (size_t i = 0; i < w.size(); ++i) L += double(rw[i]) * double(w[i]);
    for (size_t i = 0; i < sc.size(); ++i) L += double(rs[i]) * double(sc[i]);
    ids = ints(r.ids);
    return L;
  };
  const ops::MoeRouting r0 = ops::moe_route(Tensor::from_vector(z, {T, E}), p, bias);
  const std::vector<int32_t> ids0 = ints(r0.ids);
  const Tensor dw = Tensor::from_vector(rw, {T, K}), ds = Tensor::from_vector(rs, {T, E});
  const std::vector<float> dz = ops::moe_route_backward(r0.scores, r0.ids, dw, p, ds).to_vector();
  double scale = 0;
  for (float g : dz) scale = std::max(scale, double(std::abs(g)));
  ASSERT_GT(scale, 0.0);

  const float eps = 1e-2f;
  double worst = 0;
  int64_t checked = 0;
  for (int64_t i = 0; i < T * E; ++i) {
    std::vector<float> zp = z, zm = z;
    zp[size_t(i)] += eps;
    zm[size_t(i)] -= eps;
    std::vector<int32_t> ip, im;
    const double lp = loss(zp, ip), lm = loss(zm, im);
    if (ip != ids0 || im != ids0) continue;
    const double numeric = (lp - lm) / (double(zp[size_t(i)]) - double(zm[size_t(i)]));
    worst = std::max(worst, std::abs(numeric - double(dz[size_t(i)])) / scale);
    ++checked;
  }
  std::printf("moe_route_backward %s: %lld of %lld logits checked, worst error %.2e of %.2e\n",
              v.name.c_str(), (long long)checked, (long long)(T * E), worst, scale);
  EXPECT_GE(checked * 4, T * E * 3);
  EXPECT_LT(worst, 2e-3);

  const Tensor dz_w = ops::moe_route_backward(r0.scores, r0.ids, dw, p);
  const Tensor dz_s = ops::moe_route_backward(r0.scores, r0.ids, Tensor::zeros({T, K}), p, ds);
  const std::vector<float> a = dz_w.to_vector(), b = dz_s.to_vector();
  for (size_t i = 0; i < dz.size(); ++i) EXPECT_NEAR(a[i] + b[i], dz[i], 1e-6 * scale) << i;
}

TEST(MoeOps, RouteBackwardRejectsBadInputs) {
  ops::MoeRouteParams p;
  p.experts = 4;
  p.top_k = 2;
  const Tensor s = Tensor::from_vector({0.1f, 0.2f, 0.3f, 0.4f}, {1, 4});
  const Tensor g = Tensor::from_vector({1.0f, -1.0f}, {1, 2});
  EXPECT_NO_THROW(ops::moe_route_backward(s, ids_tensor({3, 2}, 1, 2), g, p));
  EXPECT_THROW(ops::moe_route_backward(s, ids_tensor({4, 2}, 1, 2), g, p), Error);  // id ≥ E
  EXPECT_THROW(ops::moe_route_backward(s, ids_tensor({3, 2}, 1, 2), s, p), Error);  // dweights
  EXPECT_THROW(ops::moe_route_backward(s, ids_tensor({3, 2}, 1, 2), g, p, g), Error);  // extra
}

INSTANTIATE_TEST_SUITE_P(Gates, MoeRouteVariant, ::testing::ValuesIn(kVariants),
                         [](const auto& info) { return info.param.name; });

TEST(MoeOps, RouteRejectsBadParams) {
  ops::MoeRouteParams p;
  p.experts = 8;
  p.top_k = 9;
  const Tensor logits = Tensor::from_vector(std::vector<float>(8, 0.5f), {1, 8});
  EXPECT_THROW(ops::moe_route(logits, p), Error);
  p.top_k = 2;
  p.method = ops::MoeTopK::GroupLimitedGreedy;
  p.n_group = 3;  // does not divide 8
  EXPECT_THROW(ops::moe_route(logits, p), Error);
  p.n_group = 4;
  p.topk_group = 5;
  EXPECT_THROW(ops::moe_route(logits, p), Error);
  p.topk_group = 2;
  EXPECT_NO_THROW(ops::moe_route(logits, p));
  EXPECT_THROW(ops::moe_route(Tensor::from_vector(std::vector<float>(7, 0.5f), {1, 7}), p), Error);
}

TEST(MoeOps, DispatchIsAStableCountingSort) {
  std::mt19937 rng(8);
  for (auto [T, E, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 6},
                         {257, 64, 6},
                         {100, 16, 3},
                         {33, 256, 8}}) {
    const std::vector<int32_t> ids = ragged_ids(T, E, K, rng);
    const ops::MoeDispatch d = ops::moe_dispatch(ids_tensor(ids, T, K), E);
    const std::vector<int64_t> offsets = longs(d.offsets);
    const std::vector<int32_t> order = ints(d.order), position = ints(d.position);
    ASSERT_EQ(offsets.size(), size_t(E + 1));
    EXPECT_EQ(offsets[0], 0);
    EXPECT_EQ(offsets[size_t(E)], T * K);
    int64_t empty = 0;
    for (int64_t e = 0; e < E; ++e) {
      std::vector<int32_t> slots;  // e's slots in slot order: what the rows must hold
      for (int64_t s = 0; s < T * K; ++s) {
        if (ids[size_t(s)] == e) slots.push_back(int32_t(s));
      }
      ASSERT_EQ(offsets[size_t(e + 1)] - offsets[size_t(e)], int64_t(slots.size())) << e;
      empty += slots.empty();
      for (size_t j = 0; j < slots.size(); ++j) {
        EXPECT_EQ(order[size_t(offsets[size_t(e)]) + j], slots[j]) << "expert " << e;
      }
    }
    EXPECT_GE(empty, E / 2);  // the ragged case has empty experts
    for (int64_t i = 0; i < T * K; ++i) EXPECT_EQ(position[size_t(order[size_t(i)])], i);
  }
  // Ids out of range are an error on the CPU.
  EXPECT_THROW(ops::moe_dispatch(ids_tensor({0, 4}, 1, 2), 4), Error);
  EXPECT_THROW(ops::moe_dispatch(ids_tensor({-1, 2}, 1, 2), 4), Error);
}

TEST(MoeOps, PermuteAndCombineEqualTokenLoops) {
  std::mt19937 rng(9);
  const int64_t T = 29, E = 16, K = 3, D = 24;
  const std::vector<int32_t> ids = ragged_ids(T, E, K, rng);
  const ops::MoeDispatch d = ops::moe_dispatch(ids_tensor(ids, T, K), E);
  const std::vector<int32_t> order = ints(d.order), position = ints(d.position);
  const Tensor x = random_tensor({T, D}, DType::F32, rng);
  const std::vector<float> xv = x.to_vector();

  const std::vector<float> x_perm = ops::moe_permute(x, d).to_vector();
  for (int64_t i = 0; i < T * K; ++i) {
    for (int64_t j = 0; j < D; ++j) {
      ASSERT_EQ(x_perm[size_t(i * D + j)], xv[size_t(order[size_t(i)] / K * D + j)]);
    }
  }
  const Tensor g = random_tensor({T * K, D}, DType::F32, rng);
  const std::vector<float> gv = g.to_vector(), dx = ops::moe_permute_backward(g, d).to_vector();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < D; ++j) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) want += gv[size_t(position[size_t(t * K + k)] * D + j)];
      EXPECT_NEAR(dx[size_t(t * D + j)], want, 1e-5);
    }
  }

  const Tensor y = random_tensor({T * K, D}, DType::F32, rng);
  const Tensor w = random_tensor({T, K}, DType::F32, rng);
  const Tensor add = random_tensor({T, D}, DType::F32, rng);
  const std::vector<float> yv = y.to_vector(), wv = w.to_vector(), av = add.to_vector();
  const std::vector<float> out = ops::moe_combine(y, w, d, add).to_vector();
  const std::vector<float> plain = ops::moe_combine(y, w, d).to_vector();
  const Tensor dout = random_tensor({T, D}, DType::F32, rng);
  const std::vector<float> dv = dout.to_vector();
  const ops::MoeCombineGrads grads = ops::moe_combine_backward(y, w, d, dout);
  const std::vector<float> dy = grads.dy_perm.to_vector(), dw = grads.dweights.to_vector();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < D; ++j) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) {
        want += double(wv[size_t(t * K + k)]) * yv[size_t(position[size_t(t * K + k)] * D + j)];
      }
      EXPECT_NEAR(plain[size_t(t * D + j)], want, 1e-5);
      EXPECT_NEAR(out[size_t(t * D + j)], want + av[size_t(t * D + j)], 1e-5);
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = position[size_t(t * K + k)];
      double want = 0;
      for (int64_t j = 0; j < D; ++j) {
        want += double(dv[size_t(t * D + j)]) * yv[size_t(row * D + j)];
        EXPECT_FLOAT_EQ(dy[size_t(row * D + j)], wv[size_t(t * K + k)] * dv[size_t(t * D + j)]);
      }
      EXPECT_NEAR(dw[size_t(t * K + k)], want, 1e-5);
    }
  }
}

// bf16 weight gradients (ParamSet::bf16_expert_grads): the f32 dW rounded once to nearest even,
// an accumulating one's old value added in f32 first; the squares are those of the stored values.
TEST(MoeOps, GroupedDwIntoBf16IsTheF32OneRounded) {
  std::mt19937 rng(12);
  const int64_t T = 37, E = 6, K = 2, in = 16, out = 12;
  const ops::MoeDispatch d = ops::moe_dispatch(ids_tensor(ragged_ids(T, E, K, rng), T, K), E);
  const Tensor x = random_tensor({T * K, in}, DType::F32, rng);
  const Tensor dy = random_tensor({T * K, out}, DType::F32, rng);
  const Tensor base = random_tensor({E, out, in}, DType::F32, rng).to(DType::BF16);
  for (const bool accumulate : {false, true}) {
    const Tensor dw32 = accumulate ? base.to(DType::F32) : Tensor::poisoned({E, out, in});
    const Tensor dw16 = accumulate ? base.clone() : Tensor::poisoned({E, out, in}, DType::BF16);
    ops::grouped_linear_backward_dw(x, dy, d.offsets, ops::expert_matrices(dw32), accumulate);
    double squares = std::nan("");
    ops::grouped_linear_backward_dw(x, dy, d.offsets, ops::expert_matrices(dw16), accumulate,
                                    &squares);
    EXPECT_EQ(dw16.to(DType::F32).to_vector(), dw32.to(DType::BF16).to(DType::F32).to_vector())
        << (accumulate ? "accumulated" : "overwritten");
    double want = 0.0;
    for (float v : dw16.to(DType::F32).to_vector()) want += double(v) * v;
    EXPECT_NEAR(squares, want, 1e-12 * want);
  }
  // An f16 gradient is an error naming the dtypes it takes.
  const Tensor f16 = Tensor::zeros({E, out, in}, DType::F16);
  try {
    ops::grouped_linear_backward_dw(x, dy, d.offsets, ops::expert_matrices(f16), false);
    ADD_FAILURE() << "an f16 dW was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f32 or bf16"), std::string::npos) << e.what();
  }
}

TEST(MoeOps, GroupedLinearEqualsLinearPerExpert) {
  std::mt19937 rng(10);
  const int64_t T = 41, E = 8, K = 2, in = 24, out = 20;
  const std::vector<int32_t> ids = ragged_ids(T, E, K, rng);  // experts 4..7 empty
  const ops::MoeDispatch d = ops::moe_dispatch(ids_tensor(ids, T, K), E);
  const std::vector<int64_t> offsets = longs(d.offsets);
  for (DType w_dtype : {DType::F32, DType::BF16}) {
    // Separate tensors (as in checkpoints) and one stacked tensor give the same result.
    std::vector<Tensor> experts;
    for (int64_t e = 0; e < E; ++e) experts.push_back(random_tensor({out, in}, w_dtype, rng, 0.5f));
    const Tensor stacked = Tensor::empty({E, out, in}, w_dtype);
    for (int64_t e = 0; e < E; ++e) {
      std::memcpy(static_cast<char*>(stacked.raw()) + size_t(e) * experts[0].nbytes(),
                  experts[size_t(e)].raw(), experts[0].nbytes());
    }
    const ops::ExpertMatrices w = ops::expert_matrices(experts);
    const ops::ExpertMatrices ws = ops::expert_matrices(stacked);
    const Tensor x = random_tensor({T * K, in}, DType::F32, rng);
    const Tensor y = ops::grouped_linear(x, w, d.offsets);
    EXPECT_EQ(y.to_vector(), ops::grouped_linear(x, ws, d.offsets).to_vector());
    const Tensor dy = random_tensor({T * K, out}, DType::F32, rng);
    const Tensor dx = ops::grouped_linear_backward_dx(dy, w, d.offsets);
    std::vector<Tensor> dw;
    for (int64_t e = 0; e < E; ++e) dw.push_back(Tensor::poisoned({out, in}));
    ops::grouped_linear_backward_dw(x, dy, d.offsets, ops::expert_matrices(dw), false);
    // Accumulating into a stacked gradient adds to what it held.
    const Tensor base = random_tensor({E, out, in}, DType::F32, rng);
    const Tensor acc = base.clone();
    ops::grouped_linear_backward_dw(x, dy, d.offsets, ops::expert_matrices(acc), true);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t b = offsets[size_t(e)], n = offsets[size_t(e + 1)] - b;
      const Tensor want_dw = n > 0 ? ops::linear_backward(x.slice(0, b, b + n), experts[size_t(e)],
                                                          dy.slice(0, b, b + n))
                                         .dweight
                                   : Tensor::zeros({out, in});
      EXPECT_LT(max_abs_diff(dw[size_t(e)], want_dw), 1e-5) << e;
      std::vector<float> want_acc = want_dw.to_vector();
      const std::vector<float> bv = base.select(0, e).to_vector();
      for (size_t i = 0; i < want_acc.size(); ++i) want_acc[i] += bv[i];
      EXPECT_LT(
          max_abs_diff(acc.select(0, e), std::vector<double>(want_acc.begin(), want_acc.end())),
          1e-5);
      if (n == 0) continue;
      const Tensor xe = x.slice(0, b, b + n), dye = dy.slice(0, b, b + n);
      EXPECT_EQ(y.slice(0, b, b + n).to_vector(), ops::linear(xe, experts[size_t(e)]).to_vector());
      const ops::LinearGrads g = ops::linear_backward(xe, experts[size_t(e)], dye);
      EXPECT_LT(max_abs_diff(dx.slice(0, b, b + n), g.dx), 1e-5) << e;
    }
  }
  // Mismatched experts and offsets are errors.
  EXPECT_THROW(ops::expert_matrices({Tensor::zeros({4, 3}), Tensor::zeros({3, 4})}), Error);
  const ops::ExpertMatrices w =
      ops::expert_matrices({Tensor::zeros({4, 3}), Tensor::zeros({4, 3})});
  EXPECT_THROW(ops::grouped_linear(Tensor::zeros({5, 3}), w, Tensor::zeros({3}, DType::I64)),
               Error);  // offsets end at 0, not 5
}

class MoeComposition : public ::testing::TestWithParam<Variant> {};

// The routed experts as device-style ops, plus the shared experts through combine's add, equal the
// model's MoE::forward.
TEST_P(MoeComposition, EqualsMoeForward) {
  const Variant& v = GetParam();
  ModelConfig c = config_of(v);
  std::mt19937 rng(11);
  const int64_t D = c.hidden_size, I = c.moe_intermediate_size, E = v.E;
  std::vector<float> bias;
  if (c.topk_method == "noaux_tc" && v.bias) bias = random_values(E, rng, -0.2f, 0.2f);
  Gate gate(c, random_tensor({E, D}, DType::F32, rng), bias);
  std::vector<Mlp> experts;
  std::vector<Tensor> gate_w, up_w, down_w;
  for (int64_t e = 0; e < E; ++e) {
    gate_w.push_back(random_tensor({I, D}, DType::BF16, rng, 0.5f));
    up_w.push_back(random_tensor({I, D}, DType::BF16, rng, 0.5f));
    down_w.push_back(random_tensor({D, I}, DType::BF16, rng, 0.5f));
    experts.emplace_back(gate_w.back(), up_w.back(), down_w.back(), "expert");
  }
  Mlp shared(random_tensor({I, D}, DType::BF16, rng, 0.5f),
             random_tensor({I, D}, DType::BF16, rng, 0.5f),
             random_tensor({D, I}, DType::BF16, rng, 0.5f), "shared");
  const MoE moe(gate, std::move(experts), shared);

  for (int64_t T : {1, 3, 19}) {
    const Tensor x = random_tensor({T, D}, DType::F32, rng);
    const Tensor want = moe.forward(x);

    const ops::MoeRouting r = ops::moe_route(
        gate.logits(x), route_params(c), bias.empty() ? Tensor() : Tensor::from_vector(bias, {E}));
    const ops::MoeDispatch d = ops::moe_dispatch(r.ids, E);
    const Tensor x_perm = ops::moe_permute(x, d);
    const Tensor h =
        ops::silu_mul(ops::grouped_linear(x_perm, ops::expert_matrices(gate_w), d.offsets),
                      ops::grouped_linear(x_perm, ops::expert_matrices(up_w), d.offsets));
    const Tensor y_perm = ops::grouped_linear(h, ops::expert_matrices(down_w), d.offsets);
    const Tensor got = ops::moe_combine(y_perm, r.weights, d, shared.forward(x));
    EXPECT_LT(max_abs_diff(got, want), 1e-6) << "T = " << T;
    const std::vector<int64_t> load = longs(d.offsets);
    for (int64_t e = 0; e < E; ++e) {
      EXPECT_EQ(load[size_t(e + 1)] - load[size_t(e)], moe.last_expert_load()[size_t(e)]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gates, MoeComposition,
                         ::testing::Values(kVariants[0], kVariants[4], kVariants[5], kVariants[7]),
                         [](const auto& info) { return info.param.name; });

}  // namespace
