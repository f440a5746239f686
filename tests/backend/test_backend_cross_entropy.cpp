// cross_entropy on CUDA against the CPU op: forward (lse, loss, count), backward into a new buffer
// and in place over strided logits, the weighted forms, ignored rows, DeepSeek-V3's vocabulary.
//
// Tolerances. Both sides compute lse in f32 from the same (act-rounded) logits; the CPU sums in
// f64, the GPU in f32 (a thread adds ~V/1024 terms ≤ 1, then a tree over 1024 partial sums), so
// log S differs by at most ~(V/1024 + 10)·2^-24 ≈ 8e-6 at V = 129280, plus the f32 rounding of lse
// itself (2^-24·|lse|): abs 1e-5 + rel 1e-6. The loss inherits that per row. The gradient
// w·(exp(x − lse) − [v = target]) is computed with the same f32 operations on both sides, so it
// differs by the lse difference, relatively (2e-5), plus one bf16 rounding (2^-8) in bf16; near
// the target's cancellation (p close to 1) that is taken absolutely, relative to w.
#include <cmath>

#include "backend/backend_harness.h"
#include "ops/cross_entropy.h"

namespace dseek::backend_test {
namespace {

struct Case {
  int64_t T, V, pad;  // logits rows V + pad apart
};

const std::vector<Case> kCases = {
    {1, 7, 0}, {3, 1000, 0}, {17, 32000, 5}, {64, 129280, 0}, {5, 129280, 64}};

// Every fourth row (from the second) ignored; targets spread over the whole vocabulary.
std::vector<int32_t> make_targets(int64_t T, int64_t V, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, int32_t(V - 1));
  std::vector<int32_t> t(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) t[size_t(i)] = i % 4 == 1 ? ops::kIgnoreIndex : dist(rng);
  return t;
}

void poison_pool(const Shape& shape, DType dtype) {
  (void)Tensor::poisoned(shape, dtype, Device::CUDA);
}

Tolerance grad_tolerance(double w, DType act) {
  return {2e-5 * w, act == DType::BF16 ? std::ldexp(1.0, -8) + 2e-5 : 2e-5};
}

void expect_loss_near(const std::string& what, const Case& c, DType act, double want, double got,
                      double tol) {
  std::printf("[backend] %-28s [%lld, %lld] %-4s want %.9f got %.9f diff %.2e (tol %.0e) %s\n",
              what.c_str(), (long long)c.T, (long long)c.V, std::string(dtype_name(act)).c_str(),
              want, got, std::abs(got - want), tol, std::abs(got - want) <= tol ? "ok" : "FAIL");
  EXPECT_NEAR(got, want, tol) << what << " T=" << c.T << " V=" << c.V << " " << dtype_name(act);
}

// Gradient rows of ignored targets must be exactly zero.
void expect_ignored_rows_zero(const Tensor& d, const std::vector<int32_t>& targets) {
  const std::vector<float> v = d.to_vector();
  const int64_t V = d.size(1);
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] != ops::kIgnoreIndex) continue;
    size_t nonzero = 0;
    for (int64_t j = 0; j < V; ++j) nonzero += v[t * size_t(V) + size_t(j)] != 0.0f;
    EXPECT_EQ(nonzero, 0u) << "ignored row " << t;
  }
}

TEST(BackendOps, CrossEntropy) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(31);
  for (DType act : kActDtypes) {
    for (const Case& c : kCases) {
      const Shape shape{c.T, c.V};
      const Tensor full = rand({c.T, c.V + c.pad}, rng, 4.0f);
      const std::vector<int32_t> targets = make_targets(c.T, c.V, rng);
      const Tensor ref = rounded(full, act).slice(1, 0, c.V);
      const Tensor gpu = on_gpu(full, act).slice(1, 0, c.V);

      const ops::CrossEntropyResult want = ops::cross_entropy_forward(ref, targets);
      poison_pool({c.T}, DType::F32);
      const ops::CrossEntropyResult got = ops::cross_entropy_forward(gpu, targets);
      EXPECT_EQ(got.count, want.count);
      EXPECT_TRUE(got.lse.is_cuda());
      expect_close("cross_entropy lse", shape, act, want.lse, got.lse, {1e-5, 1e-6});
      expect_loss_near("cross_entropy loss", c, act, want.loss, got.loss, 2e-5);

      // Into a new buffer, with an upstream gradient ≠ 1.
      const float dloss = 1.7f;
      const Tensor want_d = ops::cross_entropy_backward(ref, targets, want, dloss);
      poison_pool(shape, act);
      const Tensor got_d = ops::cross_entropy_backward(gpu, targets, got, dloss);
      EXPECT_EQ(got_d.dtype(), act);
      const Tolerance tol = grad_tolerance(dloss / double(want.count), act);
      expect_close("cross_entropy_backward", shape, act, want_d, got_d, tol);
      expect_ignored_rows_zero(got_d, targets);

      // In place over the strided logits: the gradient replaces them, the padding stays.
      Tensor inplace_full = on_gpu(full, act);
      const Tensor inplace = inplace_full.slice(1, 0, c.V);
      ops::cross_entropy_backward_inplace(inplace, targets, got, dloss);
      expect_close("cross_entropy_backward in place", shape, act, want_d, inplace, tol);
      if (c.pad > 0)
        expect_close("cross_entropy in place padding", shape, act,
                     rounded(full, act).slice(1, c.V, c.V + c.pad),
                     inplace_full.slice(1, c.V, c.V + c.pad), {0, 0});
    }
  }
}

// The per-token weighted loss and gradient (DPO), and another ignore_index.
TEST(BackendOps, CrossEntropyWeighted) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(32);
  const int32_t ignore = -1;
  for (DType act : kActDtypes) {
    for (const Case& c : kCases) {
      const Shape shape{c.T, c.V};
      const Tensor full = rand({c.T, c.V + c.pad}, rng, 4.0f);
      std::vector<int32_t> targets = make_targets(c.T, c.V, rng);
      for (int32_t& t : targets)
        if (t == ops::kIgnoreIndex) t = ignore;
      std::uniform_real_distribution<float> wdist(0.1f, 1.0f);
      std::vector<float> weights(size_t(c.T));
      for (float& w : weights) w = wdist(rng);
      const Tensor ref = rounded(full, act).slice(1, 0, c.V);
      const ops::CrossEntropyResult want = ops::cross_entropy_forward(ref, targets, ignore);
      Tensor gpu_full = on_gpu(full, act);
      const Tensor gpu = gpu_full.slice(1, 0, c.V);
      const ops::CrossEntropyResult got = ops::cross_entropy_forward(gpu, targets, ignore);
      EXPECT_EQ(got.count, want.count);

      const double loss_want =
          ops::weighted_cross_entropy_loss(ref, targets, want, weights, ignore);
      const double loss_got = ops::weighted_cross_entropy_loss(gpu, targets, got, weights, ignore);
      expect_loss_near("weighted_cross_entropy_loss", c, act, loss_want, loss_got,
                       2e-5 * double(c.T));

      const Tensor want_d = ref.contiguous();
      ops::weighted_cross_entropy_backward_inplace(want_d, targets, want, weights, ignore);
      ops::weighted_cross_entropy_backward_inplace(gpu, targets, got, weights, ignore);
      expect_close("weighted_cross_entropy_backward", shape, act, want_d, gpu,
                   grad_tolerance(1.0, act));
    }
  }
}

// Every target ignored: loss 0, count 0, gradient 0 (not NaN, unlike torch).
TEST(BackendOps, CrossEntropyAllIgnored) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(33);
  for (DType act : kActDtypes) {
    const Tensor logits = on_gpu(rand({4, 50}, rng, 4.0f), act);
    const std::vector<int32_t> targets(4, ops::kIgnoreIndex);
    const ops::CrossEntropyResult r = ops::cross_entropy_forward(logits, targets);
    EXPECT_EQ(r.count, 0);
    EXPECT_EQ(r.loss, 0.0);
    poison_pool({4, 50}, act);
    const Tensor d = ops::cross_entropy_backward(logits, targets, r);
    expect_close("cross_entropy all ignored", {4, 50}, act, Tensor::zeros({4, 50}), d, {0, 0});
  }
}

TEST(BackendOps, CrossEntropyRejectsBadInput) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(34);
  const Tensor logits = on_gpu(rand({2, 10}, rng), DType::BF16);
  try {
    ops::cross_entropy_forward(logits, {3, 10});
    FAIL() << "target 10 of V = 10 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[cross_entropy]", 0), 0u) << e.what();
  }
  // The forward result of other logits on another device.
  const ops::CrossEntropyResult cpu = ops::cross_entropy_forward(rand({2, 10}, rng), {1, 2});
  EXPECT_THROW(ops::cross_entropy_backward(logits, {1, 2}, cpu), Error);
}

}  // namespace
}  // namespace dseek::backend_test
