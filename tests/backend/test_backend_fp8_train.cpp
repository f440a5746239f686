// FP8 training on CUDA against the CPU twins (ops/fp8_train.h): column-tile quantisation bit for
// bit (ragged groups, f32 and bf16 inputs; the transposed tiles the tensor-core wgrad reads, from
// the activations and from the cached row tiles), deferred NaN checks, the FP8 linear's forward, dgrad and wgrad (shapes on
// and off cuBLASLt's block-scaled path, poisoned outputs, accumulation), the grouped expert GEMMs
// over ragged offsets, and NaN inputs as errors naming the tensor. Both sides quantise the same
// act-rounded inputs to the same codes, so outputs differ only by f32 summation order (and the
// bf16 rounding of y and dx).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "backend/backend_harness.h"
#include "backend/grouped_kernels.h"
#include "ops/fp8_nan_check.h"
#include "ops/fp8_train.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/fp8_train_kernels.h"
#endif

namespace dseek::backend_test {
namespace {

Tensor offsets_of(const std::vector<int64_t>& o, Device device) {
  Tensor t = Tensor::empty({int64_t(o.size())}, DType::I64);
  std::copy(o.begin(), o.end(), t.data<int64_t>());
  return device == Device::CPU ? t : t.to(device);
}

// max over outputs of Σ_k |a[m, k]|·|b[n, k]| (a [M, K], b [N, K] on the CPU): the scale of a GEMM's
// accumulation error.
double max_abs_sum(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  const std::vector<float> av = a.to_vector(), bv = b.to_vector();
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::abs(double(av[size_t(m * K + k)]) * bv[size_t(n * K + k)]);
      worst = std::max(worst, s);
    }
  return worst;
}

// Both sides multiply the same E4M3 codes; they differ by accumulation: f32 sums in other orders
// (2^-16 of the largest Σ|a·b| covers K ≤ 2^8 roundings of 2^-24 with margin), or the FP8 tensor
// cores' accumulation within each 128-block — cuBLASLt's or the wgmma kernels'
// (fp8_wgmma_kernels.cuh), both held to 2^-8 of Σ|a·b| by test_backend_fp8.cpp, which says why;
// a bf16 output adds one rounding.
Tolerance sum_tolerance(DType out, double abs_sum, bool tensor_cores) {
  return {std::ldexp(abs_sum, tensor_cores ? -8 : -16), out == DType::BF16 ? 1.0 / 256 : 1e-6};
}

// Whether the grouped FP8 GEMM with reduction K and output width N (or the wgrad of dW [N, K])
// runs on the wgmma kernels under the current kernel choice.
bool fp8_on_wgmma([[maybe_unused]] int64_t K, [[maybe_unused]] int64_t N) {
#ifdef DSEEK_HAS_CUDA
  return ops::cuda::fp8_wgmma_takes(K, N);
#else
  return false;
#endif
}

// Whether two tensors hold the same bytes (copied to the CPU).
bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ac = a.to(Device::CPU), bc = b.to(Device::CPU);
  return ac.shape() == bc.shape() && ac.dtype() == bc.dtype() &&
         std::memcmp(ac.raw(), bc.raw(), ac.nbytes()) == 0;
}

Tensor dequant_rows(const Tensor& x) {
  return ops::dequantize_fp8(ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x"));
}

TEST(BackendOps, QuantizeFp8ColsBitExact) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(61);
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{1, 7}, {}},
      {{300, 33}, {}},
      {{420, 37}, {0, 0, 1, 129, 258, 410}},  // empty group, 1 row, 128, 129, rows past the end
      {{1000, 130}, {0, 500, 501, 1000}}};
  for (DType act : kActDtypes)
    for (const auto& [shape, o] : cases) {
      const Tensor x = rand(shape, rng, 3.0f);
      const Tensor off_cpu = offsets_of(o, Device::CPU), off_gpu = offsets_of(o, Device::CUDA);
      const ops::Fp8ColTiles want =
          ops::quantize_fp8_cols(rounded(x, act), o.empty() ? nullptr : &off_cpu, "x");
      const ops::Fp8ColTiles got =
          ops::quantize_fp8_cols(on_gpu(x, act), o.empty() ? nullptr : &off_gpu, "x");
      const Tensor gd = got.data.to(Device::CPU), gs = got.scale.to(Device::CPU);
      ASSERT_EQ(gd.shape(), want.data.shape());
      ASSERT_EQ(gs.shape(), want.scale.shape());
      size_t bad_codes = 0, bad_scales = 0;
      for (int64_t i = 0; i < gd.numel(); ++i)
        bad_codes += gd.data<uint8_t>()[i] != want.data.data<uint8_t>()[i];
      for (int64_t i = 0; i < gs.numel(); ++i)
        bad_scales += std::memcmp(&gs.data<float>()[i], &want.scale.data<float>()[i], 4) != 0;
      std::printf("[backend] %-28s %-22s %-4s codes differ %zu/%lld scales differ %zu/%lld %s\n",
                  "quantize_fp8_cols", describe_shape(shape).c_str(),
                  std::string(dtype_name(act)).c_str(), bad_codes, (long long)gd.numel(),
                  bad_scales, (long long)gs.numel(), bad_codes + bad_scales ? "FAIL" : "ok");
      EXPECT_EQ(bad_codes, 0u) << describe_shape(shape);
      EXPECT_EQ(bad_scales, 0u) << describe_shape(shape);
    }
}

// The CPU's column tiles (codes in x's layout [rows, cols]) in the transposed layout of
// quantize_fp8_cols_transposed: [cols, 128·slots], tile j of group e in slot floor(o[e]/128) + e + j,
// zeros elsewhere.
std::vector<uint8_t> transposed_tiles(const Tensor& codes, const std::vector<int64_t>& o) {
  const int64_t rows = codes.size(0), cols = codes.size(1), G = int64_t(o.size()) - 1;
  const int64_t P = ops::fp8_col_tile_rows(rows, G) * 128;
  std::vector<uint8_t> t(size_t(cols * P), 0);
  for (int64_t e = 0; e < G; ++e)
    for (int64_t r = o[size_t(e)]; r < o[size_t(e) + 1]; ++r) {
      const int64_t j = (r - o[size_t(e)]) / 128, slot = o[size_t(e)] / 128 + e + j;
      const int64_t at = slot * 128 + (r - o[size_t(e)]) % 128;
      for (int64_t c = 0; c < cols; ++c)
        t[size_t(c * P + at)] = codes.data<uint8_t>()[r * cols + c];
    }
  return t;
}

// Leaves freed blocks of the outputs' sizes full of 0xAB in the stream-ordered pool, which hands
// them to the next allocations of those sizes: padding the kernel fails to zero then shows.
void poison_pool(int64_t rows, int64_t cols, int64_t G) {
  const int64_t slots = ops::fp8_col_tile_rows(rows, G);
  Tensor::poisoned({cols, slots * 128}, DType::U8, Device::CUDA);
  Tensor::poisoned({slots, cols}, DType::I32, Device::CUDA);
}

// quantize_fp8_cols_transposed against the CPU's quantize_fp8_cols, code for code and scale for
// scale: from x (f32, bf16) and from x's 1×128 row tiles (the wgrad's x̂ = Q_col(Q_row(x))); 136
// columns end in a partial 64-column tile, 1408 are 22 whole ones.
TEST(BackendOps, QuantizeFp8ColsTransposedBitExact) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(65);
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{1, 7}, {0, 1}},
      {{300, 33}, {0, 300}},
      {{420, 37}, {0, 0, 1, 129, 258, 410}},  // empty group, 1 row, 128, 129, rows past the end
      {{1000, 130}, {0, 500, 501, 1000}},
      {{777, 256}, {0, 0, 128, 256, 257, 640, 700, 700}},  // 128-aligned groups, empty last
      {{420, 136}, {0, 0, 1, 129, 258, 410}},
      {{530, 1408}, {0, 3, 200, 200, 331, 530}}};
  for (bool from_rows : {false, true})
    for (DType act : kActDtypes)
      for (const auto& [shape, o] : cases) {
        if (from_rows && act == DType::BF16) continue;  // row tiles hold codes: one case suffices
        const Tensor x = rand(shape, rng, 3.0f);
        const Tensor off_cpu = offsets_of(o, Device::CPU), off_gpu = offsets_of(o, Device::CUDA);
        const int64_t G = int64_t(o.size()) - 1;
        ops::Fp8ColTiles want, got;
        if (from_rows) {
          const ops::Fp8Tensor rows = ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x");
          want = ops::quantize_fp8_cols(ops::dequantize_fp8(rows, DType::F32), &off_cpu, "x");
          ops::Fp8Tensor rows_gpu = rows;
          rows_gpu.data = rows.data.to(Device::CUDA);
          rows_gpu.scale = rows.scale.to(Device::CUDA);
          poison_pool(shape[0], shape[1], G);
          got = ops::quantize_fp8_cols_transposed(rows_gpu, off_gpu);
        } else {
          want = ops::quantize_fp8_cols(rounded(x, act), &off_cpu, "x");
          poison_pool(shape[0], shape[1], G);
          got = ops::quantize_fp8_cols_transposed(on_gpu(x, act), off_gpu, "x");
        }
        const std::vector<uint8_t> want_t = transposed_tiles(want.data, o);
        const Tensor gd = got.data.to(Device::CPU), gs = got.scale.to(Device::CPU);
        ASSERT_EQ(gd.numel(), int64_t(want_t.size()));
        ASSERT_EQ(gs.shape(), want.scale.shape());
        size_t bad_codes = 0, bad_scales = 0;
        for (int64_t i = 0; i < gd.numel(); ++i)
          bad_codes += gd.data<uint8_t>()[i] != want_t[size_t(i)];
        for (int64_t i = 0; i < gs.numel(); ++i)
          bad_scales += std::memcmp(&gs.data<float>()[i], &want.scale.data<float>()[i], 4) != 0;
        std::printf("[backend] %-28s %-22s %-4s codes differ %zu/%lld scales differ %zu/%lld %s\n",
                    from_rows ? "quantize_fp8_cols_t (rows)" : "quantize_fp8_cols_t",
                    describe_shape(shape).c_str(), std::string(dtype_name(act)).c_str(), bad_codes,
                    (long long)gd.numel(), bad_scales, (long long)gs.numel(),
                    bad_codes + bad_scales ? "FAIL" : "ok");
        EXPECT_EQ(bad_codes, 0u) << describe_shape(shape) << " from rows " << from_rows;
        EXPECT_EQ(bad_scales, 0u) << describe_shape(shape) << " from rows " << from_rows;
      }
}

// quantize_fp8_expert_weights: W's blocks as the CPU quantises them, Wᵀ's their exact transpose,
// in one pass (rows and columns multiples of 4) or by a transposition after it (otherwise).
TEST(BackendOps, QuantizeFp8ExpertWeightsBothOrientations) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(67);
  for (auto [E, R, C] : std::vector<std::array<int64_t, 3>>{{3, 256, 136}, {2, 130, 7}, {5, 4, 300}})
    for (DType wt : kActDtypes) {
      std::vector<Tensor> ws, ws_gpu;
      for (int64_t e = 0; e < E; ++e) {
        ws.push_back(rounded(rand({R, C}, rng, 5.0f), wt));
        ws_gpu.push_back(on_gpu(ws.back(), wt));
      }
      const ops::Fp8ExpertWeights want = ops::quantize_fp8_expert_weights(ops::expert_matrices(ws));
      Tensor::poisoned({E, R, C}, DType::U8, Device::CUDA);  // freed blocks the outputs reuse
      Tensor::poisoned({E, C, R}, DType::U8, Device::CUDA);
      const ops::Fp8ExpertWeights got =
          ops::quantize_fp8_expert_weights(ops::expert_matrices(ws_gpu));
      const Tensor d = got.data.to(Device::CPU), s = got.scale.to(Device::CPU);
      const Tensor dt = got.data_t.to(Device::CPU), st = got.scale_t.to(Device::CPU);
      ASSERT_EQ(d.shape(), want.data.shape());
      ASSERT_EQ(s.shape(), want.scale.shape());
      ASSERT_EQ(dt.shape(), (Shape{E, C, R}));
      ASSERT_EQ(st.shape(), (Shape{E, s.size(2), s.size(1)}));
      const uint8_t* wd = want.data.data<uint8_t>();
      const float* ws_ = want.scale.data<float>();
      size_t bad = 0;
      for (int64_t e = 0; e < E; ++e)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < C; ++c) {
            const uint8_t code = wd[(e * R + r) * C + c];
            bad += d.data<uint8_t>()[(e * R + r) * C + c] != code;
            bad += dt.data<uint8_t>()[(e * C + c) * R + r] != code;
          }
      const int64_t SR = s.size(1), SC = s.size(2);
      for (int64_t e = 0; e < E; ++e)
        for (int64_t i = 0; i < SR; ++i)
          for (int64_t j = 0; j < SC; ++j) {
            const float v = ws_[(e * SR + i) * SC + j];
            bad += std::memcmp(&s.data<float>()[(e * SR + i) * SC + j], &v, 4) != 0;
            bad += std::memcmp(&st.data<float>()[(e * SC + j) * SR + i], &v, 4) != 0;
          }
      const Shape shape{E, R, C};
      std::printf("[backend] %-28s %-22s %-4s codes and scales differ %zu %s\n",
                  "quantize_fp8_expert_weights", describe_shape(shape).c_str(),
                  std::string(dtype_name(wt)).c_str(), bad, bad ? "FAIL" : "ok");
      EXPECT_EQ(bad, 0u) << describe_shape(shape);
    }
}

// Inside a Fp8WeightCacheScope the dense FP8 linear quantises its weight once (W's and Wᵀ's blocks
// in the forward) and the backward reuses them: the same codes, so the same results bit for bit as
// without the scope; a weight of another shape at the same address is not confused with it.
TEST(BackendOps, LinearFp8TrainWeightCacheScopeGivesTheSameResults) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(68);
  const std::vector<std::array<int64_t, 3>> shapes = {{64, 256, 384}, {5, 130, 7}};
  for (const std::array<int64_t, 3>& tio : shapes) {
    const int64_t T = tio[0], in = tio[1], out = tio[2];  // named copies: the lambda captures them
    const Tensor x = on_gpu(rand({T, in}, rng), DType::BF16), w = on_gpu(rand({out, in}, rng));
    const Tensor dy = on_gpu(rand({T, out}, rng), DType::BF16);
    auto run = [&](Tensor& y, Tensor& dx, Tensor& dw) {
      ops::Fp8LinearCache cache;
      y = ops::linear_fp8_train_forward(x, w, &cache);
      dx = Tensor::poisoned({T, in}, DType::BF16, Device::CUDA);
      dw = Tensor::poisoned({out, in}, DType::F32, Device::CUDA);
      ops::linear_fp8_train_backward(cache, w, dy, &dx, &dw, false);
    };
    Tensor y0, dx0, dw0, y1, dx1, dw1;
    run(y0, dx0, dw0);
    const Tensor wv = w.reshape({in, out}), xv = on_gpu(rand({T, out}, rng), DType::BF16);
    const Tensor yv_want = ops::linear_fp8_train_forward(xv, wv);
    {
      ops::Fp8WeightCacheScope scope;
      run(y1, dx1, dw1);
      Tensor y2, dx2, dw2;
      run(y2, dx2, dw2);  // from the cache
      EXPECT_TRUE(same_bits(y1, y2) && same_bits(dx1, dx2) && same_bits(dw1, dw2));
      // A view of the same storage in another shape gets blocks of its own.
      EXPECT_TRUE(same_bits(yv_want, ops::linear_fp8_train_forward(xv, wv))) << "view";
    }
    const bool same = same_bits(y0, y1) && same_bits(dx0, dx1) && same_bits(dw0, dw1);
    std::printf("[backend] %-28s %-22s bf16 scope vs none: %s\n", "linear_fp8_train cache",
                describe_shape({T, in, out}).c_str(), same ? "same bits ok" : "differ FAIL");
    EXPECT_TRUE(same) << describe_shape({T, in, out});
  }
}

// Inside a DeferredFp8Checks scope a NaN input does not stop the quantisation: check() reports the
// first offending tensor by name, once, and a nested scope defers to the outer one's check.
TEST(BackendOps, DeferredFp8ChecksReportTheFirstNanAtCheck) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(66);
  const Tensor good = on_gpu(rand({4, 200}, rng));
  std::vector<float> v = rand({4, 200}, rng).to_vector();
  v[333] = std::nanf("");
  const Tensor nan = on_gpu(Tensor::from_vector(v, {4, 200}));
  v[333] = 1.0f;
  v[5] = INFINITY;
  const Tensor inf = on_gpu(Tensor::from_vector(v, {4, 200}));
  const Tensor off = offsets_of({0, 4}, Device::CUDA);
  const auto expect_error = [](auto&& f, const std::string& want) {
    try {
      f();
      ADD_FAILURE() << "no error, expected one naming " << want;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  {
    ops::DeferredFp8Checks checks;
    ops::quantize_fp8(good, ops::Fp8Layout::Tile1x128, false, "good");
    ops::quantize_fp8(nan, ops::Fp8Layout::Tile1x128, false, "first bad");  // no throw yet
    {
      ops::DeferredFp8Checks inner;  // joins the outer scope
      ops::quantize_fp8_cols(inf, &off, "second bad");
      ops::quantize_fp8_cols_transposed(inf, off, "third bad");
      inner.check();  // a no-op: the outer scope reads the flags
    }
    expect_error([&] { checks.check(); }, "'first bad'");
    checks.check();  // the flags were read and cleared: nothing to report
    ops::quantize_fp8_cols_transposed(nan, off, "after the check");
    expect_error([&] { checks.check(); }, "'after the check'");
  }
  {
    // More quantisations than the scope has flags: it checks the full set on the way.
    ops::DeferredFp8Checks checks;
    ops::quantize_fp8(nan, ops::Fp8Layout::Tile1x128, false, "early");
    expect_error(
        [&] {
          for (int i = 0; i < 1100; ++i)
            ops::quantize_fp8(good, ops::Fp8Layout::Tile1x128, false, "good");
        },
        "'early'");
  }
  // Outside a scope the check is immediate.
  expect_error([&] { ops::quantize_fp8(nan, ops::Fp8Layout::Tile1x128, false, "now"); }, "'now'");
}

TEST(BackendOps, LinearFp8TrainMatchesCpu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(62);
  // {T, in, out}: odd sizes (plain kernel), and multiples of 128 with T % 4 = 0 (cuBLASLt's
  // block-scaled path for the forward and the dgrad).
  for (const GroupedKernel& k : grouped_kernels())
  for (DType act : kActDtypes)
    for (auto [T, in, out] : std::vector<std::array<int64_t, 3>>{
             {5, 130, 7}, {64, 256, 384}, {130, 64, 129}, {257, 300, 200}, {300, 272, 144}}) {
      const UseGroupedKernel use(k);
      const Shape shape{T, in, out};
      const Tensor x = rand({T, in}, rng), w = rand({out, in}, rng), dy = rand({T, out}, rng);
      const Tensor init = rand({out, in}, rng);
      // CPU reference on the act-rounded activations (the weight is the f32 master on both).
      ops::Fp8LinearCache cc;
      const Tensor y_want = ops::linear_fp8_train_forward(rounded(x, act), w, &cc);
      Tensor dx_want = Tensor::poisoned({T, in}), dw_want = Tensor::poisoned({out, in});
      ops::linear_fp8_train_backward(cc, w, rounded(dy, act), &dx_want, &dw_want, false);
      Tensor acc_want = init.to(DType::F32);
      ops::linear_fp8_train_backward(cc, w, rounded(dy, act), nullptr, &acc_want, true);

      const Tensor wg = on_gpu(w);
      ops::Fp8LinearCache gc;
      const Tensor y = ops::linear_fp8_train_forward(on_gpu(x, act), wg, &gc);
      Tensor dx = Tensor::poisoned({T, in}, act, Device::CUDA);
      Tensor dw = Tensor::poisoned({out, in}, DType::F32, Device::CUDA);
      ops::linear_fp8_train_backward(gc, wg, on_gpu(dy, act), &dx, &dw, false);
      Tensor acc = on_gpu(init);
      ops::linear_fp8_train_backward(gc, wg, on_gpu(dy, act), nullptr, &acc, true);
      EXPECT_EQ(y.dtype(), act);
      // cuBLASLt takes the forward and dgrad when K and N are multiples of 128 and T of 4, else
      // the wgmma kernel where both are multiples of 16 (on a Hopper): the tensor cores either way.
      const bool lt = T % 4 == 0 && in % 128 == 0 && out % 128 == 0;
      const bool tc_y = lt || fp8_on_wgmma(in, out), tc_dx = lt || fp8_on_wgmma(out, in);
      const Tensor w_hat =
          ops::dequantize_fp8(ops::quantize_fp8(w, ops::Fp8Layout::Block128x128, false, "w"));
      const double y_sum = max_abs_sum(dequant_rows(rounded(x, act)), w_hat);
      const double dx_sum =
          max_abs_sum(dequant_rows(rounded(dy, act)), w_hat.transpose(0, 1).contiguous());
      // The wgrad sums T products of column-tile values, each ≤ 1.07·max|v|; it runs on the wgmma
      // kernel where out and in are multiples of 16 on a Hopper.
      const double dw_sum = double(T) * 1.07 * 1.07 * 1.07;  // |x|, |dy| ≤ 1; x̃ quantised twice
      const bool tc_dw = fp8_on_wgmma(in, out);
      expect_close(labelled("linear_fp8_train y", k), shape, act, y_want, y,
                   sum_tolerance(act, y_sum, tc_y));
      expect_close(labelled("linear_fp8_train dx", k), shape, act, dx_want, dx,
                   sum_tolerance(act, dx_sum, tc_dx));
      expect_close(labelled("linear_fp8_train dW", k), shape, act, dw_want, dw,
                   sum_tolerance(DType::F32, dw_sum, tc_dw));
      expect_close(labelled("linear_fp8_train dW (accumulate)", k), shape, act, acc_want, acc,
                   sum_tolerance(DType::F32, dw_sum + 1.0, tc_dw));
    }
}

TEST(BackendOps, GroupedLinearFp8MatchesCpu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(63);
  struct Case {
    int64_t in, out;
    std::vector<int64_t> offsets;
  };
  const std::vector<Case> cases = {
      // Widths off the multiples of 16 (the CUDA-core kernels on every GPU). An empty expert, one
      // of one row, one over 128 rows, offsets off the 128 grid.
      {136, 130, {0, 130, 130, 131, 200, 333}},
      // Multiples of 16 (the wgmma kernels on a Hopper) with tails in k (272 = 2·128 + 16) and n
      // (144), empty experts first and last, an expert over several row tiles and column tiles.
      {272, 144, {0, 0, 130, 131, 400, 533, 533}},
  };
  for (const GroupedKernel& k : grouped_kernels())
    for (const Case& c : cases)
      for (DType act : kActDtypes) {
        const UseGroupedKernel use(k);
        const std::vector<int64_t>& o = c.offsets;
        const int64_t in = c.in, out = c.out, E = int64_t(o.size()) - 1, N = o.back();
        const Shape shape{N, in, out};
        const Tensor x = rand({N, in}, rng), dy = rand({N, out}, rng);
        std::vector<Tensor> ws, ws_gpu, gw, gw_gpu;
        for (int64_t e = 0; e < E; ++e) {
          ws.push_back(rand({out, in}, rng));
          ws_gpu.push_back(on_gpu(ws.back()));  // f32 masters, whatever the activations
          gw.push_back(Tensor::poisoned({out, in}));
          gw_gpu.push_back(Tensor::poisoned({out, in}, DType::F32, Device::CUDA));
        }
        const Tensor off_cpu = offsets_of(o, Device::CPU), off_gpu = offsets_of(o, Device::CUDA);
        ops::Fp8GroupedCache cc, gc;
        const ops::ExpertMatrices wc = ops::expert_matrices(ws), wg = ops::expert_matrices(ws_gpu);
        const Tensor y_want = ops::grouped_linear_fp8_forward(rounded(x, act), wc, off_cpu, &cc);
        const Tensor dx_want = ops::grouped_linear_fp8_backward_dx(rounded(dy, act), wc, off_cpu);
        ops::grouped_linear_fp8_backward_dw(cc, rounded(dy, act), off_cpu, ops::expert_matrices(gw),
                                            false);
        const Tensor y = ops::grouped_linear_fp8_forward(on_gpu(x, act), wg, off_gpu, &gc);
        const Tensor dx = ops::grouped_linear_fp8_backward_dx(on_gpu(dy, act), wg, off_gpu);
        const Tensor squares = nan_double_on_gpu();
        ops::grouped_linear_fp8_backward_dw(gc, on_gpu(dy, act), off_gpu,
                                            ops::expert_matrices(gw_gpu), false, nullptr,
                                            static_cast<double*>(squares.raw()));
        // The squares of what was written (the TMA kernel sums them as it stores): Σ dW² of the
        // GPU's dW up to the order of the sums. Then the adding form over those dW.
        expect_relative(labelled("grouped_linear_fp8 dW squares", k), double_of(squares),
                        squares_of(gw_gpu), 1e-12);
        std::vector<Tensor> twice;
        for (const Tensor& g : gw_gpu) twice.push_back(g.clone());
        ops::grouped_linear_fp8_backward_dw(gc, on_gpu(dy, act), off_gpu,
                                            ops::expert_matrices(twice), true, nullptr,
                                            static_cast<double*>(squares.raw()));
        expect_relative(labelled("grouped_linear_fp8 dW (+=) squares", k), double_of(squares),
                        squares_of(twice), 1e-12);
        // |x|, |dy|, |W| ≤ 1, quantised values ≤ 1.07 of that.
        const double q = 1.07 * 1.07;
        expect_close(labelled("grouped_linear_fp8 y", k), shape, act, y_want, y,
                     sum_tolerance(act, double(in) * q, fp8_on_wgmma(in, out)));
        expect_close(labelled("grouped_linear_fp8 dx", k), shape, act, dx_want, dx,
                     sum_tolerance(act, double(out) * q, fp8_on_wgmma(out, in)));
        for (int64_t e = 0; e < E; ++e)
          expect_close(labelled(("grouped_linear_fp8 dW_" + std::to_string(e)).c_str(), k), shape,
                       act, gw[size_t(e)], gw_gpu[size_t(e)],
                       sum_tolerance(DType::F32, double(N) * q * 1.07, fp8_on_wgmma(in, out)));
      }
}

TEST(BackendOps, LinearFp8TrainNanIsAnErrorNamingTheTensor) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(64);
  const Tensor x = rand({3, 140}, rng), w = rand({5, 140}, rng);
  std::vector<float> v = rand({3, 5}, rng).to_vector();
  v[7] = std::nanf("");
  const Tensor dy_nan = on_gpu(Tensor::from_vector(v, {3, 5}));
  ops::Fp8LinearCache cache;
  ops::linear_fp8_train_forward(on_gpu(x), on_gpu(w), &cache);
  Tensor dx = Tensor::poisoned({3, 140}, DType::F32, Device::CUDA);
  Tensor dw = Tensor::poisoned({5, 140}, DType::F32, Device::CUDA);
  for (bool wgrad : {false, true}) {
    try {
      ops::linear_fp8_train_backward(cache, on_gpu(w), dy_nan, wgrad ? nullptr : &dx,
                                     wgrad ? &dw : nullptr, false);
      ADD_FAILURE() << "no error for a NaN dy (wgrad " << wgrad << ")";
    } catch (const Error& e) {
      const std::string want =
          wgrad ? "'linear_fp8_train dy (column tiles)'" : "'linear_fp8_train dy'";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace dseek::backend_test
