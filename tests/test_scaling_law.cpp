// DeepSeek LLM scaling-law choices against numbers worked out by hand (Python, double precision).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/error.h"
#include "train/scaling_law.h"

using namespace dseek;
using namespace dseek::train;

TEST(ScalingLaw, FlopsPerToken) {
  // 72·12·768² + 6·12·768·1024 = 509'607'936 + 56'623'104.
  EXPECT_DOUBLE_EQ(flops_per_token(12, 768, 1024), 566'231'040.0);
  EXPECT_DOUBLE_EQ(flops_per_token(1, 1, 1), 78.0);
}

TEST(ScalingLaw, GPT2SmallShapeAt1e17) {
  // C = 1e17, 12 layers, d_model 768, 1024-token sequences:
  //   lr = 0.3118·10^(−17/8) = 0.3118·0.0074989 = 0.0023381701
  //   B_opt = 0.2920·10^(17·0.3271) = 0.2920·363'663.7 = 106'189.81 tokens = 103.70 sequences → 104
  //   D = 1e17 / 566'231'040 = 176'606'354.9 tokens; steps = ⌈D / (104·1024)⌉ = ⌈1658.34⌉ = 1659
  const ComputeBudgetChoice c = choose_from_compute_budget(1e17, 12, 768, 1024);
  EXPECT_DOUBLE_EQ(c.compute, 1e17);
  EXPECT_DOUBLE_EQ(c.flops_per_token, 566'231'040.0);
  EXPECT_NEAR(c.lr, 0.0023381701446985974, 1e-15);
  EXPECT_NEAR(c.batch_tokens, 106189.81188460746, 1e-6);
  EXPECT_NEAR(c.tokens, 176606354.8900463, 1e-4);
  EXPECT_EQ(c.batch_sequences, 104);
  EXPECT_EQ(c.steps, 1659);
  const std::string text = c.describe();
  EXPECT_NE(text.find("104 sequences/step, 1659 steps"), std::string::npos) << text;
  EXPECT_NE(text.find("lr=0.00234"), std::string::npos) << text;
}

TEST(ScalingLaw, LargerAndTinyBudgets) {
  // C = 1e20, 24 layers, d 2048, seq 4096: M = 8'455'716'864, lr = 0.000985998,
  // B_opt = 1'017'144.96 tokens = 248.33 sequences → 248, D = 1.18263e10, steps ⌈11642.28⌉.
  const ComputeBudgetChoice big = choose_from_compute_budget(1e20, 24, 2048, 4096);
  EXPECT_DOUBLE_EQ(big.flops_per_token, 8'455'716'864.0);
  EXPECT_NEAR(big.lr, 0.0009859981744405008, 1e-15);
  EXPECT_EQ(big.batch_sequences, 248);
  EXPECT_EQ(big.steps, 11643);

  // C = 1e12, 2 layers, d 64, seq 512: M = 983'040, B_opt = 2458.0 tokens = 4.80 sequences → 5,
  // D = 1'017'252.6 tokens, steps ⌈397.36⌉ = 398.
  const ComputeBudgetChoice small = choose_from_compute_budget(1e12, 2, 64, 512);
  EXPECT_NEAR(small.lr, 0.009859981744405007, 1e-15);
  EXPECT_EQ(small.batch_sequences, 5);
  EXPECT_EQ(small.steps, 398);

  // B_opt of a 1e6-FLOP budget is ~27 tokens, far below one 1024-token sequence: still 1.
  const ComputeBudgetChoice tiny = choose_from_compute_budget(1e6, 1, 8, 1024);
  EXPECT_EQ(tiny.batch_sequences, 1);
  EXPECT_GE(tiny.steps, 1);
}

TEST(ScalingLaw, InvalidInputNamesTheArgument) {
  auto message = [](double c, int64_t l, int64_t d, int64_t s) -> std::string {
    try {
      choose_from_compute_budget(c, l, d, s);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(message(0.0, 12, 768, 1024).find("compute budget"), std::string::npos);
  EXPECT_NE(message(-1e17, 12, 768, 1024).find("compute budget"), std::string::npos);
  EXPECT_NE(message(std::nan(""), 12, 768, 1024).find("compute budget"), std::string::npos);
  EXPECT_NE(message(1e17, 0, 768, 1024).find("n_layer"), std::string::npos);
  EXPECT_NE(message(1e17, 12, 0, 1024).find("d_model"), std::string::npos);
  EXPECT_NE(message(1e17, 12, 768, -4).find("seq_len"), std::string::npos);
  EXPECT_NE(message(1e300, 1, 1, 1).find("out of range"), std::string::npos);
}
