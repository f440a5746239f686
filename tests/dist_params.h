// The small ParamSet and per-rank gradients of the ZeRO-1 tests (tests/test_train_dist.cpp on MPI
// ranks, tests/backend/test_backend_dist.cpp on NCCL ranks), and a bitwise comparison of
// checkpoint tensor lists; the MoE tests' random rows.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "train/param.h"

namespace dseek::testing {

// [rows, cols] f32 of standard normals from `seed` (the expert-parallel MoE tests' inputs).
inline Tensor random_rows(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(size_t(rows * cols));
  for (float& x : v) x = normal(rng);
  return Tensor::from_vector(v, {rows, cols});
}

// A small ParamSet: matrices, norms, a buffer, main blocks 0–1 and an "MTP" block 2.
inline void make_params(train::ParamSet& ps) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto add = [&](const char* name, Shape shape, bool trainable, bool decay) {
    Tensor t = Tensor::empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = normal(rng);
    ps.add(name, t, trainable, decay);
  };
  add("model.embed_tokens.weight", {37, 5}, true, true);
  add("model.layers.0.input_layernorm.weight", {5}, true, false);
  add("model.layers.0.mlp.gate.e_score_correction_bias", {4}, false, false);
  add("model.layers.0.mlp.gate_proj.weight", {11, 5}, true, true);
  add("model.layers.1.self_attn.o_proj.weight", {5, 13}, true, true);
  add("model.layers.2.mlp.up_proj.weight", {7, 5}, true, true);
  add("model.norm.weight", {5}, true, false);
  add("lm_head.weight", {37, 5}, true, true);
}

// Rank r's gradients at a step: normal, seeded by (step, r).
inline void rank_gradients(train::ParamSet& ps, int rank, int step) {
  std::mt19937 rng(uint32_t(100 * step + rank));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (train::Param& p : ps.all())
    if (p.trainable)
      for (int64_t i = 0; i < p.grad.numel(); ++i) p.grad.data<float>()[i] = normal(rng);
}

// Into `sum`'s gradients: every rank's rank_gradients at `step` added in rank order 0..ranks−1
// (the reference the data-parallel reductions must give); `scratch` is a make_params set.
inline void summed_gradients(train::ParamSet& sum, train::ParamSet& scratch, int ranks, int step) {
  for (int r = 0; r < ranks; ++r) {
    rank_gradients(scratch, r, step);
    for (size_t i = 0; i < sum.size(); ++i) {
      if (!sum.all()[i].trainable) continue;
      float* g = sum.all()[i].grad.data<float>();
      const float* t = scratch.all()[i].grad.data<float>();
      for (int64_t k = 0; k < sum.all()[i].grad.numel(); ++k) g[k] = r == 0 ? t[k] : g[k] + t[k];
    }
  }
}

inline void expect_tensors_identical(const std::vector<std::pair<std::string, Tensor>>& a,
                                     const std::vector<std::pair<std::string, Tensor>>& b,
                                     const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].first, b[i].first) << what;
    ASSERT_EQ(a[i].second.nbytes(), b[i].second.nbytes()) << a[i].first;
    EXPECT_EQ(
        std::memcmp(a[i].second.data<float>(), b[i].second.data<float>(), a[i].second.nbytes()), 0)
        << what << ": " << a[i].first << " differs";
  }
}

}  // namespace dseek::testing
