// rms_norm, embedding, softmax, rope and causal attention against naive double-precision
// references, on awkward shapes (1, 7, 19, 111), every stored weight dtype, strided views and
// poisoned outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"
#include "ops/argmax.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/mla_decode.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/rows.h"
#include "ops/softmax.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::max_abs_diff;
using dseek::testing::random_tensor;

TEST(Ops, RmsNormMatchesReference) {
  std::mt19937 rng(1);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int64_t T : {1, 7, 19}) {
      for (int64_t D : {1, 7, 111, 128}) {
        Tensor x = random_tensor({T, D}, DType::F32, rng, 3.0f);
        Tensor w = random_tensor({D}, dt, rng);
        const double eps = 1e-6;
        Tensor y = ops::rms_norm(x, w, eps);
        std::vector<float> xv = x.to_vector(), wv = w.to_vector();
        std::vector<double> ref(xv.size());
        for (int64_t t = 0; t < T; ++t) {
          double ss = 0;
          for (int64_t i = 0; i < D; ++i)
            ss += double(xv[size_t(t * D + i)]) * xv[size_t(t * D + i)];
          const double inv = 1.0 / std::sqrt(ss / double(D) + eps);
          for (int64_t i = 0; i < D; ++i)
            ref[size_t(t * D + i)] = wv[size_t(i)] * xv[size_t(t * D + i)] * inv;
        }
        EXPECT_LE(max_abs_diff(y, ref), 1e-5) << dtype_name(dt) << " T=" << T << " D=" << D;
      }
    }
  }
  // Strided input (a column slice) gives the same as its contiguous copy.
  Tensor big = random_tensor({5, 40}, DType::F32, rng);
  Tensor w = random_tensor({19}, DType::BF16, rng);
  EXPECT_EQ(max_abs_diff(ops::rms_norm(big.slice(1, 3, 22), w, 1e-5),
                         ops::rms_norm(big.slice(1, 3, 22).contiguous(), w, 1e-5)),
            0.0);
  EXPECT_THROW(ops::rms_norm(big, w, 1e-6), Error);
}

TEST(Ops, EmbeddingGathersRowsInEveryDtype) {
  std::mt19937 rng(2);
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
    Tensor table = random_tensor({19, 7}, dt, rng, 2.0f);
    const std::vector<int32_t> ids = {0, 18, 5, 5, 11};
    Tensor out = ops::embedding(table, ids);
    ASSERT_EQ(out.shape(), (Shape{5, 7}));
    const std::vector<float> tv = table.to_vector();
    std::vector<double> ref;
    for (int32_t id : ids)
      for (int64_t j = 0; j < 7; ++j) ref.push_back(tv[size_t(id * 7 + j)]);
    EXPECT_EQ(max_abs_diff(out, ref), 0.0) << dtype_name(dt);
  }
  Tensor table = random_tensor({4, 3}, DType::BF16, rng);
  try {
    ops::embedding(table, {1, 4});
    ADD_FAILURE() << "out-of-range id accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 4 at position 1"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ops::embedding(table, {-1}), Error);
  EXPECT_EQ(ops::embedding(table, {}).shape(), (Shape{0, 3}));
}

TEST(Ops, SoftmaxMatchesReference) {
  std::mt19937 rng(3);
  for (int64_t n : {1, 7, 19, 111}) {
    Tensor x = random_tensor({3, n}, DType::F32, rng, 30.0f);
    std::vector<float> xv = x.to_vector();
    std::vector<double> ref(xv.size());
    for (int64_t r = 0; r < 3; ++r) {
      double m = -1e300, s = 0;
      for (int64_t i = 0; i < n; ++i) m = std::max(m, double(xv[size_t(r * n + i)]));
      for (int64_t i = 0; i < n; ++i) s += std::exp(xv[size_t(r * n + i)] - m);
      for (int64_t i = 0; i < n; ++i)
        ref[size_t(r * n + i)] = std::exp(xv[size_t(r * n + i)] - m) / s;
    }
    EXPECT_LE(max_abs_diff(ops::softmax(x), ref), 1e-6);
  }
}

TEST(Ops, RopeMatchesReferenceBothLayouts) {
  std::mt19937 rng(4);
  for (bool interleaved : {false, true}) {
    for (int64_t d : {2, 8, 64}) {
      const int64_t T = 7, H = 3, pos0 = 19;
      std::vector<float> inv_freq(size_t(d / 2));
      for (int64_t j = 0; j < d / 2; ++j)
        inv_freq[size_t(j)] = float(std::pow(10000.0, -2.0 * j / d));
      const float scaling = 1.25f;
      // A strided view: the rope part of a wider row, as q_pe inside q.
      Tensor wide = random_tensor({T, H, d + 5}, DType::F32, rng);
      Tensor x = wide.slice(2, 5, d + 5);
      const std::vector<float> before = x.to_vector();
      const std::vector<float> prefix = wide.slice(2, 0, 5).to_vector();
      ops::rope_inplace(x, pos0, inv_freq, scaling, interleaved);
      std::vector<double> ref(before.size());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
          const float* in = &before[size_t((t * H + h) * d)];
          std::vector<double> v(static_cast<size_t>(d));
          for (int64_t j = 0; j < d / 2; ++j) {
            v[size_t(j)] = interleaved ? in[2 * j] : in[j];
            v[size_t(d / 2 + j)] = interleaved ? in[2 * j + 1] : in[d / 2 + j];
          }
          for (int64_t j = 0; j < d / 2; ++j) {
            const double a = double(inv_freq[size_t(j)]) * double(pos0 + t);
            const double c = std::cos(a) * scaling, s = std::sin(a) * scaling;
            ref[size_t((t * H + h) * d + j)] = v[size_t(j)] * c - v[size_t(d / 2 + j)] * s;
            ref[size_t((t * H + h) * d + d / 2 + j)] = v[size_t(d / 2 + j)] * c + v[size_t(j)] * s;
          }
        }
      EXPECT_LE(max_abs_diff(x, ref), 2e-5) << "d=" << d << " interleaved=" << interleaved;
      EXPECT_EQ(wide.slice(2, 0, 5).to_vector(), prefix);  // the rest of the row is untouched
    }
  }
  Tensor x = Tensor::zeros({1, 1, 6});
  EXPECT_THROW(ops::rope_inplace(x, 0, {1.0f, 1.0f}, 1.0f, false), Error);
}

// Per-row positions (continuous batching): the same as rotating each row alone at its position.
TEST(Ops, RopeAtPerRowPositionsEqualsOneCallPerRow) {
  std::mt19937 rng(14);
  const int64_t T = 6, H = 2, d = 16;
  std::vector<float> inv_freq(size_t(d / 2));
  for (int64_t j = 0; j < d / 2; ++j) inv_freq[size_t(j)] = float(std::pow(500.0, -2.0 * j / d));
  const std::vector<int64_t> pos = {0, 1, 2, 37, 38, 4095};  // two sequences' rows, unordered
  for (bool interleaved : {false, true}) {
    const Tensor x = random_tensor({T, H, d}, DType::F32, rng);
    Tensor got = x.clone();
    ops::rope_inplace(got, Tensor::from_i64(pos), inv_freq, 0.75f, interleaved);
    Tensor want = x.clone();
    for (int64_t t = 0; t < T; ++t)
      ops::rope_inplace(want.slice(0, t, t + 1), pos[size_t(t)], inv_freq, 0.75f, interleaved);
    EXPECT_EQ(got.to_vector(), want.to_vector()) << "interleaved=" << interleaved;
  }
  Tensor x = random_tensor({2, 1, 4}, DType::F32, rng);
  EXPECT_THROW(ops::rope_inplace(x, Tensor::from_i64({0, -1}), {1.0f, 0.5f}, 1.0f, false), Error);
  EXPECT_THROW(ops::rope_inplace(x, Tensor::from_i64({0}), {1.0f, 0.5f}, 1.0f, false), Error);
}

TEST(Ops, ScatterRowsWritesEachRowToItsSlot) {
  std::mt19937 rng(15);
  const Tensor pool = random_tensor({8, 10}, DType::F32, rng);
  const std::vector<float> before = pool.to_vector();
  const Tensor src = random_tensor({3, 4}, DType::F32, rng);
  const std::vector<int64_t> slots = {5, 0, 7};
  // A column view of the pool, as MLA writes the latent and the rope key into one row.
  ops::scatter_rows(pool.slice(1, 3, 7), src, Tensor::from_i64(slots));
  std::vector<float> want = before;
  const std::vector<float> s = src.to_vector();
  for (size_t i = 0; i < slots.size(); ++i)
    for (size_t c = 0; c < 4; ++c) want[size_t(slots[i]) * 10 + 3 + c] = s[i * 4 + c];
  EXPECT_EQ(pool.to_vector(), want);
  EXPECT_THROW(
      ops::scatter_rows(pool, random_tensor({2, 10}, DType::F32, rng), Tensor::from_i64({1, 8})),
      Error);  // outside the pool
  EXPECT_THROW(
      ops::scatter_rows(pool, random_tensor({2, 10}, DType::F32, rng), Tensor::from_i64({4, 4})),
      Error);  // one slot twice
  EXPECT_THROW(
      ops::scatter_rows(pool, random_tensor({2, 9}, DType::F32, rng), Tensor::from_i64({0, 1})),
      Error);  // width
}

// The greedy pick: the first largest value of each row (a tie goes to the smaller index), NaN
// skipped but flagged, -inf rows and NaN-only rows giving 0; f32 and bf16, rows of a wider
// buffer; the outputs are poisoned first.
TEST(Ops, ArgmaxRowsPicksTheFirstLargest) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const std::vector<std::vector<float>> rows = {{1, 3, 2, 3, -1},
                                                {nan, -5, 7, 7, nan},
                                                {-inf, -inf, -inf, -inf, -inf},
                                                {nan, nan, nan, nan, nan},
                                                {-2, -1, -3, -1, inf}};
  const std::vector<int32_t> want = {1, 2, 0, 0, 4}, want_nan = {0, 1, 0, 1, 0};
  std::vector<float> wide;
  for (const auto& r : rows) {
    wide.insert(wide.end(), r.begin(), r.end());
    wide.insert(wide.end(), {100.0f, nan});  // past each row's end: never read
  }
  for (DType dtype : {DType::F32, DType::BF16}) {
    const Tensor x = Tensor::from_vector(wide, {5, 7}).to(dtype).slice(1, 0, 5);
    Tensor out = Tensor::from_ids({-7, -7, -7, -7, -7});
    Tensor nans = Tensor::from_ids({9, 9, 9, 9, 9});
    ops::argmax_rows(x, out, nans);
    EXPECT_EQ(std::vector<int32_t>(out.data<int32_t>(), out.data<int32_t>() + 5), want);
    EXPECT_EQ(std::vector<int32_t>(nans.data<int32_t>(), nans.data<int32_t>() + 5), want_nan);
  }
  const Tensor x = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  EXPECT_THROW(ops::argmax_rows(x, Tensor::from_ids({0})), Error);                     // rows
  EXPECT_THROW(ops::argmax_rows(x, Tensor::from_i64({0, 0})), Error);                  // dtype
  EXPECT_THROW(ops::argmax_rows(x.transpose(0, 1), Tensor::from_ids({0, 0})), Error);  // strides
  EXPECT_THROW(ops::argmax_rows(x, Tensor::from_ids({0, 0}), Tensor::from_ids({0})), Error);
}

// Per-head products out[t, h] = x[t, h] · w[h], from a strided x (MLA's q_nope inside q) into a
// fresh tensor and into the first N columns of a wider one (whose other columns keep their NaN).
TEST(Ops, HeadMatmulMatchesReferenceIntoViews) {
  std::mt19937 rng(31);
  const int64_t T = 3, H = 4, K = 5, N = 6;
  const Tensor x_wide = random_tensor({T, H, K + 2}, DType::F32, rng);
  const Tensor x = x_wide.slice(2, 0, K), w = random_tensor({H, K, N}, DType::F32, rng);
  const std::vector<float> xv = x.contiguous().to_vector(), wv = w.to_vector();
  std::vector<double> want(size_t(T * H * N), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          want[size_t((t * H + h) * N + n)] +=
              double(xv[size_t((t * H + h) * K + k)]) * wv[size_t((h * K + k) * N + n)];
  EXPECT_LE(max_abs_diff(ops::head_matmul(x, w), want), 1e-5);
  const Tensor wide = Tensor::poisoned({T, H, N + 3});
  ops::head_matmul_into(x, w, wide.slice(2, 0, N));
  EXPECT_LE(max_abs_diff(wide.slice(2, 0, N).contiguous(), want), 1e-5);
  for (float v : wide.slice(2, N, N + 3).contiguous().to_vector()) EXPECT_TRUE(std::isnan(v));
  EXPECT_THROW(ops::head_matmul_into(x, w, wide.slice(2, 0, N - 1)), Error);
}

TEST(Ops, CausalAttentionMatchesReference) {
  std::mt19937 rng(5);
  struct Shape5 {
    int64_t T, S, H, Hk, dk, dv;
  };
  for (const Shape5& s :
       {Shape5{1, 1, 1, 1, 7, 7}, Shape5{7, 7, 4, 2, 19, 5}, Shape5{3, 19, 6, 1, 8, 111},
        Shape5{19, 19, 2, 2, 16, 16}, Shape5{1, 111, 4, 4, 9, 3},
        // Several query tiles and key blocks of the CPU kernel (64 × 256), ragged ends.
        Shape5{150, 300, 2, 1, 24, 20}, Shape5{70, 600, 3, 3, 40, 33}}) {
    Tensor q = random_tensor({s.T, s.H, s.dk}, DType::F32, rng, 2.0f);
    Tensor k = random_tensor({s.S, s.Hk, s.dk}, DType::F32, rng, 2.0f);
    // Values as a strided view (part of a wider row), as MLA's latent values are.
    Tensor vwide = random_tensor({s.S, s.Hk, s.dv + 3}, DType::F32, rng);
    Tensor v = vwide.slice(2, 0, s.dv);
    const float scale = 0.3f;
    Tensor out = ops::causal_attention(q, k, v, scale);
    ASSERT_EQ(out.shape(), (Shape{s.T, s.H, s.dv}));
    std::vector<float> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
    std::vector<double> ref(size_t(s.T * s.H * s.dv));
    const int64_t g = s.H / s.Hk;
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t n = s.S - s.T + t + 1, hk = h / g;
        std::vector<double> p(static_cast<size_t>(n));
        double m = -1e300, sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0;
          for (int64_t i = 0; i < s.dk; ++i)
            dot += double(qv[size_t((t * s.H + h) * s.dk + i)]) *
                   kv[size_t((j * s.Hk + hk) * s.dk + i)];
          p[size_t(j)] = dot * scale;
          m = std::max(m, p[size_t(j)]);
        }
        for (auto& x : p) sum += (x = std::exp(x - m));
        for (int64_t c = 0; c < s.dv; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j)
            acc += p[size_t(j)] / sum * vv[size_t((j * s.Hk + hk) * s.dv + c)];
          ref[size_t((t * s.H + h) * s.dv + c)] = acc;
        }
      }
    EXPECT_LE(max_abs_diff(out, ref), 1e-5) << "T=" << s.T << " S=" << s.S << " H=" << s.H;
  }
  Tensor q = Tensor::zeros({2, 3, 4}), k = Tensor::zeros({2, 2, 4}), v = Tensor::zeros({2, 2, 4});
  EXPECT_THROW(ops::causal_attention(q, k, v, 1.0f), Error);  // 3 heads over 2 kv heads
  EXPECT_THROW(ops::causal_attention(Tensor::zeros({3, 1, 4}), Tensor::zeros({2, 1, 4}),
                                     Tensor::zeros({2, 1, 4}), 1.0f),
               Error);  // more queries than keys
}
