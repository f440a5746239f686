#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/sampler.h"

using namespace dseek;

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::vector<float> log_probs(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(float(std::log(p)));
  return out;
}

std::string error_of(const SamplingParams& params) {
  try {
    params.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeOncePerId) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f};
  const std::vector<int32_t> history = {0, 1, 1, 0};
  apply_repetition_penalty(logits, history, 2.0f);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -4.0f, 1.0f, 0.5f}));
  const std::vector<int32_t> bad = {7};
  EXPECT_THROW(apply_repetition_penalty(logits, bad, 2.0f), Error);
}

TEST(Sampler, TemperatureScales) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f};
  apply_temperature(logits, 0.5f);
  EXPECT_EQ(logits, (std::vector<float>{4.0f, -2.0f, 1.0f}));
}

TEST(Sampler, TopKKeepsTiesAtThreshold) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  apply_top_k(logits, 2);
  EXPECT_EQ(logits, (std::vector<float>{kNegInf, 3.0f, kNegInf, 3.0f, kNegInf}));
  std::vector<float> small = {1.0f, 2.0f};
  apply_top_k(small, 5);  // k beyond V keeps everything
  EXPECT_EQ(small, (std::vector<float>{1.0f, 2.0f}));
}

TEST(Sampler, TopPMatchesHandComputedNucleus) {
  // probabilities 0.5, 0.3, 0.15, 0.05 (ascending cumulative: 0.05, 0.20, 0.50, 1.0)
  const std::vector<float> base = log_probs({0.3, 0.05, 0.5, 0.15});
  std::vector<float> a = base;
  apply_top_p(a, 0.75f);  // removes cumulative <= 0.25: the 0.05 and 0.15 tokens
  EXPECT_EQ(a[1], kNegInf);
  EXPECT_EQ(a[3], kNegInf);
  EXPECT_EQ(a[0], base[0]);
  EXPECT_EQ(a[2], base[2]);
  std::vector<float> b = base;
  apply_top_p(b, 0.9f);  // removes cumulative <= 0.1: only the 0.05 token
  EXPECT_EQ(b[1], kNegInf);
  EXPECT_EQ(b[3], base[3]);
  std::vector<float> c = base;
  apply_top_p(c, 0.01f);  // the most likely token always stays
  EXPECT_EQ(c[2], base[2]);
  EXPECT_EQ(c[0], kNegInf);
}

TEST(Sampler, MinPRelativeToMaxProbability) {
  const std::vector<float> base = log_probs({0.5, 0.3, 0.15, 0.05});
  std::vector<float> a = base;
  apply_min_p(a, 0.2f);  // threshold 0.1
  EXPECT_EQ(a[3], kNegInf);
  EXPECT_EQ(a[2], base[2]);
  std::vector<float> b = base;
  apply_min_p(b, 0.7f);  // threshold 0.35: only the top token
  EXPECT_EQ(b[0], base[0]);
  EXPECT_EQ(b[1], kNegInf);
}

TEST(Sampler, GreedyIsArgmaxAfterRepetitionPenalty) {
  Rng rng(7);
  std::vector<float> logits(1000);
  for (float& x : logits) x = float(rng.normal());
  size_t argmax = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[argmax]) argmax = i;
  }
  SamplingParams params;
  params.temperature = 0.0f;
  Sampler greedy(params);
  EXPECT_EQ(greedy.sample(logits, {}), int32_t(argmax));
  // Penalising the winner heavily moves the choice elsewhere.
  params.repetition_penalty = 1000.0f;
  Sampler penalised(params);
  const std::vector<int32_t> history = {int32_t(argmax)};
  EXPECT_NE(penalised.sample(logits, history), int32_t(argmax));
}

TEST(Sampler, DrawFrequenciesMatchFilteredDistribution) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.9f, -3.0f, 1.5f, 0.0f};
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 6;
  params.top_p = 0.9f;
  params.min_p = 0.05f;
  params.repetition_penalty = 1.3f;
  params.seed = 1234;
  Sampler sampler(params);
  const std::vector<int32_t> history = {3, 7};
  const std::vector<double> probs = sampler.distribution(logits, history);
  double total = 0.0;
  int filtered = 0;
  for (double p : probs) {
    total += p;
    filtered += p == 0.0;
  }
  EXPECT_NEAR(total, 1.0, 1e-12);
  EXPECT_GE(filtered, 2);  // top-k removed two, top-p/min-p maybe more
  constexpr int kDraws = 20000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < kDraws; ++i) counts[size_t(sampler.sample(logits, history))]++;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double freq = double(counts[i]) / kDraws;
    const double sigma = std::sqrt(probs[i] * (1 - probs[i]) / kDraws);
    if (probs[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "filtered id " << i << " was drawn";
    } else {
      EXPECT_NEAR(freq, probs[i], 5 * sigma + 1e-3) << "id " << i;
    }
  }
}

TEST(Sampler, SeedDeterminesTheStream) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i)));
  SamplingParams params;
  params.seed = 42;
  Sampler a(params), b(params);
  params.seed = 43;
  Sampler c(params);
  std::vector<int32_t> sa, sb, sc;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.sample(logits, {}));
    sb.push_back(b.sample(logits, {}));
    sc.push_back(c.sample(logits, {}));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

TEST(Sampler, RngNormalHasUnitMoments) {
  Rng rng(99);
  constexpr int kN = 100000;
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < kN; ++i) {
    const double x = rng.normal();
    sum += x;
    sum_sq += x * x;
  }
  EXPECT_NEAR(sum / kN, 0.0, 0.02);
  EXPECT_NEAR(sum_sq / kN, 1.0, 0.02);
}

TEST(Sampler, RejectsInvalidParameters) {
  SamplingParams p;
  p.temperature = -0.5f;
  EXPECT_NE(error_of(p).find("[sampler] temperature"), std::string::npos);
  p = {};
  p.top_p = 0.0f;
  EXPECT_NE(error_of(p).find("[sampler] top_p"), std::string::npos);
  p.top_p = 1.5f;
  EXPECT_NE(error_of(p).find("[sampler] top_p"), std::string::npos);
  p = {};
  p.min_p = -0.1f;
  EXPECT_NE(error_of(p).find("[sampler] min_p"), std::string::npos);
  p = {};
  p.top_k = -1;
  EXPECT_NE(error_of(p).find("[sampler] top_k"), std::string::npos);
  p = {};
  p.repetition_penalty = 0.0f;
  EXPECT_NE(error_of(p).find("[sampler] repetition_penalty"), std::string::npos);
  p = {};
  EXPECT_EQ(error_of(p), "");
  p.temperature = std::nanf("");
  EXPECT_THROW(Sampler{p}, Error);
}

TEST(Sampler, RejectsNaNLogits) {
  Sampler sampler(SamplingParams{});
  const std::vector<float> logits = {0.0f, std::nanf(""), 1.0f};
  EXPECT_THROW(sampler.sample(logits, {}), Error);
}
