// cross_entropy: loss against a double-precision reference (including logits near 1e4 and a
// 100K vocabulary), ignore_index, the N = 0 convention, and the gradient against finite
// differences; the in-place backward equals the out-of-place one.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "gradcheck.h"
#include "ops/cross_entropy.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::check_gradients;
using dseek::testing::GradReport;
using dseek::testing::has_non_finite;
using dseek::testing::max_abs_diff;
using dseek::testing::nonzero_tensor;

namespace {

// Mean NLL in double: log Σ exp(x − m) + m − x[target].
double reference_loss(const Tensor& logits, const std::vector<int32_t>& targets) {
  const std::vector<float> x = logits.to_vector();
  const int64_t V = logits.size(1);
  double sum = 0;
  int64_t n = 0;
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] == ops::kIgnoreIndex) continue;
    const float* row = x.data() + t * size_t(V);
    double m = row[0];
    for (int64_t v = 0; v < V; ++v) m = std::max(m, double(row[v]));
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
    sum += m + std::log(s) - row[targets[t]];
    ++n;
  }
  return sum / double(n);
}

}  // namespace

TEST(Grad, CrossEntropyMatchesReferenceAndFiniteDifferences) {
  std::mt19937 rng(31);
  for (auto [T, V] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {7, 19}, {19, 3}}) {
    Tensor logits = nonzero_tensor({T, V}, rng, 4.0f);
    std::vector<int32_t> targets(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) targets[size_t(t)] = int32_t(rng() % uint32_t(V));
    if (T > 2) targets[1] = ops::kIgnoreIndex;
    const ops::CrossEntropyResult fwd = ops::cross_entropy_forward(logits, targets);
    EXPECT_EQ(fwd.count, T > 2 ? T - 1 : T);
    EXPECT_NEAR(fwd.loss, reference_loss(logits, targets), 1e-5) << "T=" << T << " V=" << V;

    const float dloss = 0.7f;
    const Tensor d = ops::cross_entropy_backward(logits, targets, fwd, dloss);
    // L = dloss · loss: the harness's r is the scalar dloss.
    const Tensor r = Tensor::from_vector({dloss}, {1});
    auto forward = [&] {
      return Tensor::from_vector({float(ops::cross_entropy_forward(logits, targets).loss)}, {1});
    };
    const GradReport rep = check_gradients(forward, r, {{"logits", logits, d}}, 1e-2f, 64);
    EXPECT_LE(rep.worst, 2e-2) << "T=" << T << " V=" << V << " " << rep.where;
    if (T > 2) {  // the ignored row gets no gradient
      for (float v : d.select(0, 1).to_vector()) EXPECT_EQ(v, 0.0f);
    }
    // Each counted row's gradient sums to 0 (softmax sums to 1, minus the one-hot).
    for (int64_t t = 0; t < T; ++t) {
      double s = 0;
      for (float v : d.select(0, t).to_vector()) s += v;
      EXPECT_NEAR(s, 0.0, 1e-6);
    }
    // In place over a copy of the logits gives the same.
    Tensor inplace = logits.clone();
    ops::cross_entropy_backward_inplace(inplace, targets, fwd, dloss);
    EXPECT_EQ(max_abs_diff(inplace, d), 0.0);
  }
}

TEST(Grad, CrossEntropyIsStableForLargeLogitsAndLargeVocabularies) {
  std::mt19937 rng(32);
  // Logits near 1e4 (exp would overflow without the max): shifting a row changes nothing.
  Tensor base = nonzero_tensor({3, 19}, rng, 3.0f);
  std::vector<float> shifted = base.to_vector();
  for (float& v : shifted) v += 1.0e4f;
  Tensor big = Tensor::from_vector(shifted, {3, 19});
  const std::vector<int32_t> targets = {4, 18, 0};
  const ops::CrossEntropyResult a = ops::cross_entropy_forward(base, targets);
  const ops::CrossEntropyResult b = ops::cross_entropy_forward(big, targets);
  ASSERT_TRUE(std::isfinite(b.loss));
  EXPECT_NEAR(b.loss, reference_loss(big, targets), 2e-3);  // 1e4 in f32 keeps ~1e-3
  EXPECT_NEAR(a.loss, b.loss, 2e-3);
  const Tensor db = ops::cross_entropy_backward(big, targets, b);
  EXPECT_FALSE(has_non_finite(db));
  EXPECT_LE(max_abs_diff(db, ops::cross_entropy_backward(base, targets, a)), 1e-3);

  // A 100K-entry vocabulary, strided rows (a slice of wider logits).
  const int64_t V = 102400;
  Tensor wide = nonzero_tensor({2, V + 5}, rng, 8.0f);
  Tensor logits = wide.slice(1, 5, V + 5);
  const std::vector<int32_t> tg = {int32_t(V - 1), 17};
  const ops::CrossEntropyResult r = ops::cross_entropy_forward(logits, tg);
  EXPECT_NEAR(r.loss, reference_loss(logits.contiguous(), tg), 1e-4);
  const Tensor d = ops::cross_entropy_backward(logits, tg, r);
  EXPECT_LE(max_abs_diff(d, ops::cross_entropy_backward(logits.contiguous(), tg, r)), 0.0);
  double s = 0;
  for (float v : d.select(0, 0).to_vector()) s += v;
  EXPECT_NEAR(s, 0.0, 1e-5);
}

TEST(Grad, CrossEntropyIgnoredTargetsAndErrors) {
  std::mt19937 rng(33);
  Tensor logits = nonzero_tensor({3, 5}, rng);
  const std::vector<int32_t> none(3, ops::kIgnoreIndex);
  const ops::CrossEntropyResult r = ops::cross_entropy_forward(logits, none);
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.loss, 0.0);  // torch gives NaN; see ops/cross_entropy.h
  const Tensor d = ops::cross_entropy_backward(logits, none, r);
  for (float v : d.to_vector()) EXPECT_EQ(v, 0.0f);
  // A custom ignore_index.
  const ops::CrossEntropyResult c = ops::cross_entropy_forward(logits, {2, -1, 0}, -1);
  EXPECT_EQ(c.count, 2);
  EXPECT_NEAR(c.loss,
              reference_loss(logits.slice(0, 0, 1), {2}) / 2 +
                  reference_loss(logits.slice(0, 2, 3), {0}) / 2,
              1e-6);
  EXPECT_THROW(ops::cross_entropy_forward(logits, {0, 5, 1}), Error);
  EXPECT_THROW(ops::cross_entropy_forward(logits, {0, 1}), Error);
  EXPECT_THROW(ops::cross_entropy_forward(logits.reshape({15}), {0}), Error);
  EXPECT_THROW(ops::cross_entropy_backward(logits, {0, 1, 2}, ops::CrossEntropyResult{}), Error);
}
