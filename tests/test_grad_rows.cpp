// Gradient row flags (ops/grad_rows.h, Param::grad_rows): which rows of a matrix's gradient may be
// non-zero, so that the step reads, sums and zeros only the rows a batch wrote (the embedding's).
// The CPU ops against plain loops over poisoned memory, bad flags as errors, the embedding's
// backward flagging its rows, and TrainModel keeping the rule "a row whose flag is 0 holds zeros"
// through forward_backward, zero_grad and the step's zeroing. The GPU twins:
// BackendOptim.GradRowsOpsMatchCpu and BackendOptim.AdamWSkipsUnflaggedGradientRows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "ops/embedding.h"
#include "ops/grad_rows.h"
#include "train/param.h"
#include "train/train_config.h"
#include "train/train_model.h"

namespace dseek {
namespace {

Tensor random_matrix(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(size_t(rows * cols));
  for (float& x : v) x = n(rng);
  return Tensor::from_vector(v, {rows, cols});
}

Tensor flags_of(const std::vector<uint8_t>& f) {
  Tensor t = Tensor::empty({int64_t(f.size())}, DType::U8);
  std::memcpy(t.raw(), f.data(), f.size());
  return t;
}

std::vector<uint8_t> flags_vector(const Tensor& t) {
  const uint8_t* p = t.data<uint8_t>();
  return std::vector<uint8_t>(p, p + t.numel());
}

// Zeroing: the flagged rows become zeros and their flags 0; an unflagged row is not written (it
// still holds its NaN poison). Sum: Σ g² over the flagged rows only (the NaN rows not read).
TEST(GradRows, ZeroAndSumTouchOnlyFlaggedRows) {
  std::mt19937 rng(7);
  const int64_t rows = 37, cols = 13;
  Tensor g = random_matrix(rows, cols, rng);
  std::vector<uint8_t> f(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) f[size_t(r)] = r % 3 == 1;
  float* gp = g.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    if (!f[size_t(r)])
      for (int64_t j = 0; j < cols; ++j) gp[r * cols + j] = std::numeric_limits<float>::quiet_NaN();
  double want = 0.0;
  for (int64_t r = 0; r < rows; ++r)
    if (f[size_t(r)])
      for (int64_t j = 0; j < cols; ++j) want += double(gp[r * cols + j]) * gp[r * cols + j];
  const Tensor flags = flags_of(f);
  double got = -1.0;
  ops::sum_of_squares_flagged_rows(g, flags, &got);
  EXPECT_GT(want, 0.0);
  EXPECT_NEAR(got, want, 1e-12 * want);
  ops::zero_flagged_rows(g, flags);
  EXPECT_EQ(flags_vector(flags), std::vector<uint8_t>(size_t(rows), 0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      if (f[size_t(r)]) {
        EXPECT_EQ(gp[r * cols + j], 0.0f) << r << "," << j;
      } else {
        EXPECT_TRUE(std::isnan(gp[r * cols + j])) << r << "," << j;
      }
    }
  ops::sum_of_squares_flagged_rows(g, flags, &got);  // nothing flagged now
  EXPECT_EQ(got, 0.0);
}

TEST(GradRows, BadFlagsAreErrors) {
  const Tensor g = Tensor::zeros({4, 3});
  const auto message = [&](const Tensor& flags) {
    try {
      ops::zero_flagged_rows(g, flags);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message(Tensor::zeros({3}, DType::U8)).find("row flags must be u8 contiguous [4]"),
            std::string::npos)
      << message(Tensor::zeros({3}, DType::U8));
  EXPECT_NE(message(Tensor::zeros({4}, DType::I32)).find("got i32"), std::string::npos)
      << message(Tensor::zeros({4}, DType::I32));
  EXPECT_NE(message(Tensor()).find("got undefined"), std::string::npos);
  double out = 0.0;
  EXPECT_THROW(
      ops::sum_of_squares_flagged_rows(Tensor::zeros({4}), Tensor::zeros({4}, DType::U8), &out),
      std::exception);  // a vector, not a matrix
}

// The embedding's backward sets the flag of every row it adds to, and no other.
TEST(GradRows, EmbeddingBackwardFlagsItsRows) {
  std::mt19937 rng(9);
  const int64_t V = 50, D = 8;
  const std::vector<int32_t> ids = {3, 17, 3, 49, 0, 17, 17};
  Tensor dy = random_matrix(int64_t(ids.size()), D, rng);
  Tensor dtable = Tensor::zeros({V, D});
  Tensor flags = Tensor::zeros({V}, DType::U8);
  ops::embedding_backward_accumulate(ids, dy, dtable, flags);
  const std::set<int32_t> rows(ids.begin(), ids.end());
  const std::vector<uint8_t> f = flags_vector(flags);
  for (int64_t r = 0; r < V; ++r) EXPECT_EQ(f[size_t(r)], rows.count(int32_t(r)) ? 1 : 0) << r;
  EXPECT_THROW(
      ops::embedding_backward_accumulate(ids, dy, dtable, Tensor::zeros({V - 1}, DType::U8)),
      std::exception);
}

// TrainModel flags the embedding's gradient; through a step the rule holds: zero_grad zeros every
// row and sets every flag, the step's zeroing (write_grad_zeros) zeros the flagged rows and clears
// them, and forward_backward flags exactly the rows of the batch's tokens, every other row zero.
TEST(GradRows, TrainModelKeepsTheEmbeddingsRule) {
  const ModelConfig cfg = train::preset_model_config("tiny", 300);
  ASSERT_FALSE(cfg.tie_word_embeddings);
  train::ParamSet params;
  train::TrainModel::init_params(cfg, 21, 0.1, params);
  train::TrainModel model(cfg, params);
  train::Param& e = params.at("model.embed_tokens.weight");
  ASSERT_TRUE(e.grad_rows.defined());
  const int64_t V = e.grad.size(0), D = e.grad.size(1);
  EXPECT_EQ(flags_vector(e.grad_rows), std::vector<uint8_t>(size_t(V), 1));
  params.zero_grad();
  EXPECT_EQ(flags_vector(e.grad_rows), std::vector<uint8_t>(size_t(V), 1));
  train::write_grad_zeros(e);  // as AdamW::step_async does after the embedding's update
  EXPECT_EQ(flags_vector(e.grad_rows), std::vector<uint8_t>(size_t(V), 0));
  std::vector<int32_t> inputs, targets;
  for (int32_t i = 0; i < 64; ++i) {
    inputs.push_back(i * 7 % 100 + 5);
    targets.push_back(i * 11 % 300);
  }
  model.forward_backward(inputs, targets, train::LossOptions{}, 1.0f, 32);
  const std::set<int32_t> rows(inputs.begin(), inputs.end());
  const std::vector<uint8_t> f = flags_vector(e.grad_rows);
  const float* g = e.grad.data<float>();
  int64_t nonzero_rows = 0;
  for (int64_t r = 0; r < V; ++r) {
    EXPECT_EQ(f[size_t(r)], rows.count(int32_t(r)) ? 1 : 0) << r;
    bool nonzero = false;
    for (int64_t j = 0; j < D; ++j) nonzero = nonzero || g[r * D + j] != 0.0f;
    nonzero_rows += nonzero;
    if (!f[size_t(r)]) {
      EXPECT_FALSE(nonzero) << "row " << r << " is not flagged but not zero";
    }
  }
  EXPECT_EQ(nonzero_rows, int64_t(rows.size()));
  // A writer of any rows (a tied head, a pipeline's shared copy) sets every flag.
  train::grad_to_add(e);
  EXPECT_EQ(flags_vector(e.grad_rows), std::vector<uint8_t>(size_t(V), 1));
}

}  // namespace
}  // namespace dseek
