// The absorbed MLA's cache append (ops/mla_cache.h) and rope_copy (ops/rope.h) on the CPU, against
// naive double-precision references: the latent part RMS-normalised, the rope part rotated at each
// token's own position, each written to its slot of a poisoned cache whose other rows stay as they
// were; rope_copy leaving its source alone. Bad shapes, dtypes and indices are errors naming the
// op.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "ops/mla_cache.h"
#include "ops/rope.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::max_abs_diff;
using dseek::testing::random_tensor;

namespace {

std::vector<float> inv_freq_for(int64_t d) {
  std::vector<float> f(size_t(d / 2));
  for (int64_t j = 0; j < d / 2; ++j) f[size_t(j)] = float(std::pow(10000.0, -2.0 * j / d));
  return f;
}

// The rotation of one row of d values at position pos, in double (ops/rope.h's formula).
std::vector<double> rotated(const float* in, int64_t d, int64_t pos, const std::vector<float>& f,
                            double scaling, bool interleaved) {
  const int64_t half = d / 2;
  std::vector<double> out(static_cast<size_t>(d));
  for (int64_t j = 0; j < half; ++j) {
    const double a = interleaved ? in[2 * j] : in[j];
    const double b = interleaved ? in[2 * j + 1] : in[half + j];
    const double angle = double(f[size_t(j)] * float(pos));
    const double c = std::cos(angle) * scaling, s = std::sin(angle) * scaling;
    out[size_t(j)] = a * c - b * s;
    out[size_t(half + j)] = b * c + a * s;
  }
  return out;
}

}  // namespace

TEST(Ops, MlaCacheAppendNormalisesRotatesAndWritesEachTokensSlot) {
  std::mt19937 rng(61);
  const int64_t T = 3, r = 12, d = 8, R = 7;
  const double eps = 1e-6;
  const std::vector<int64_t> pos = {5, 0, 4093}, slots = {6, 2, 3};
  const std::vector<float> f = inv_freq_for(d);
  for (bool interleaved : {false, true}) {
    // kv_a as a view with a wider row (the projection's output may be a column window).
    const Tensor wide = random_tensor({T, r + d + 3}, DType::F32, rng, 2.0f);
    const Tensor kv_a = wide.slice(1, 0, r + d);
    const Tensor w = random_tensor({r}, DType::BF16, rng);
    const Tensor rows = random_tensor({R, r + d}, DType::F32, rng);
    const std::vector<float> before = rows.to_vector(), x = kv_a.contiguous().to_vector(),
                             wv = w.to_vector(), kv_before = wide.to_vector();
    ops::mla_cache_append(kv_a, w, eps, Tensor::from_i64(pos), f, 1.25f, interleaved, rows,
                          Tensor::from_i64(slots));
    std::vector<double> want(before.begin(), before.end());
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = &x[size_t(t * (r + d))];
      double ss = 0;
      for (int64_t j = 0; j < r; ++j) ss += double(xt[j]) * xt[j];
      const double inv = 1.0 / std::sqrt(ss / double(r) + eps);
      double* row = &want[size_t(slots[size_t(t)] * (r + d))];
      for (int64_t j = 0; j < r; ++j) row[j] = wv[size_t(j)] * xt[j] * inv;
      const std::vector<double> pe = rotated(xt + r, d, pos[size_t(t)], f, 1.25, interleaved);
      for (int64_t j = 0; j < d; ++j) row[r + j] = pe[size_t(j)];
    }
    EXPECT_LE(max_abs_diff(rows, want), 2e-5) << "interleaved=" << interleaved;
    EXPECT_EQ(wide.to_vector(), kv_before);  // the input is read only
  }
}

TEST(Ops, MlaCacheAppendRejectsBadInputs) {
  std::mt19937 rng(62);
  const int64_t r = 4, d = 4;
  const std::vector<float> f = inv_freq_for(d);
  const Tensor kv_a = random_tensor({2, r + d}, DType::F32, rng);
  const Tensor w = random_tensor({r}, DType::F32, rng);
  const Tensor rows = random_tensor({5, r + d}, DType::F32, rng);
  const Tensor pos = Tensor::from_i64({0, 1}), slots = Tensor::from_i64({3, 4});
  auto expect_error = [](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // The rope width from the frequencies disagrees with kv_a's columns.
  expect_error(
      [&] { ops::mla_cache_append(kv_a, w, 1e-6, pos, inv_freq_for(6), 1, false, rows, slots); },
      "[mla_cache_append] kv_a");
  expect_error(
      [&] {
        ops::mla_cache_append(kv_a, w, 1e-6, pos, f, 1, false,
                              random_tensor({5, r + d + 1}, DType::F32, rng), slots);
      },
      "[mla_cache_append] rows");
  expect_error(
      [&] {
        ops::mla_cache_append(kv_a, w, 1e-6, Tensor::from_i64({0}), f, 1, false, rows, slots);
      },
      "positions");
  expect_error(
      [&] {
        ops::mla_cache_append(kv_a, w, 1e-6, pos, f, 1, false, rows, Tensor::from_i64({1, 5}));
      },
      "outside");  // slot past the cache (scatter_rows' check)
  expect_error(
      [&] {
        ops::mla_cache_append(kv_a, w, 1e-6, pos, f, 1, false, rows, Tensor::from_i64({2, 2}));
      },
      "twice");
  expect_error(
      [&] {
        ops::mla_cache_append(kv_a, w, 1e-6, Tensor::from_i64({0, -3}), f, 1, false, rows, slots);
      },
      "negative position");
  expect_error([&] { ops::mla_cache_append(kv_a, w, -1.0, pos, f, 1, false, rows, slots); },
               "negative eps");
}

TEST(Ops, RopeCopyRotatesIntoAnotherViewAndLeavesTheSource) {
  std::mt19937 rng(63);
  const int64_t T = 4, H = 3, d = 16;
  const std::vector<float> f = inv_freq_for(d);
  const std::vector<int64_t> pos = {7, 0, 300, 2};
  for (bool interleaved : {false, true}) {
    // q_pe inside q → its place inside a wider q_abs, as the absorbed decode does.
    const Tensor q = random_tensor({T, H, 5 + d}, DType::F32, rng);
    const Tensor src = q.slice(2, 5, 5 + d);
    const Tensor dst_wide = Tensor::poisoned({T, H, 9 + d});
    const Tensor dst = dst_wide.slice(2, 9, 9 + d);
    const std::vector<float> q_before = q.to_vector();
    ops::rope_copy(src, dst, Tensor::from_i64(pos), f, 0.5f, interleaved);
    const std::vector<float> x = src.contiguous().to_vector();
    std::vector<double> want;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const std::vector<double> row =
            rotated(&x[size_t((t * H + h) * d)], d, pos[size_t(t)], f, 0.5, interleaved);
        want.insert(want.end(), row.begin(), row.end());
      }
    EXPECT_LE(max_abs_diff(dst.contiguous(), want), 2e-5) << "interleaved=" << interleaved;
    EXPECT_EQ(q.to_vector(), q_before);
    for (float v : dst_wide.slice(2, 0, 9).to_vector()) EXPECT_TRUE(std::isnan(v));  // untouched
    // The same bits as a copy and the in-place rotation.
    Tensor copied = src.contiguous();
    ops::rope_inplace(copied, Tensor::from_i64(pos), f, 0.5f, interleaved);
    EXPECT_EQ(dst.contiguous().to_vector(), copied.to_vector());
  }
  const Tensor src = random_tensor({2, 1, 4}, DType::F32, rng);
  EXPECT_THROW(ops::rope_copy(src, Tensor::zeros({2, 2, 4}), Tensor::from_i64({0, 1}),
                              inv_freq_for(4), 1, false),
               Error);
  EXPECT_THROW(ops::rope_copy(src, Tensor::zeros({2, 1, 4}, DType::BF16), Tensor::from_i64({0, 1}),
                              inv_freq_for(4), 1, false),
               Error);
}
